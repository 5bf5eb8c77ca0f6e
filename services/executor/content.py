"""Script content for a run: inline or streamed from the catalogue, and always
verified against the SHA-256 the scheduler pinned."""

from __future__ import annotations

import hashlib

import grpc

from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from shared.status import from_rpc_error


class ContentError(Exception):
    """Content could not be fetched or did not match its digest."""


class ContentSource:
    """Fetches and verifies content, caching verified content by digest."""

    def __init__(
        self, channel: grpc.aio.Channel | None, max_cache_bytes: int = 64 * 1024 * 1024
    ) -> None:
        self._stub = catalogue_pb2_grpc.CatalogueServiceStub(channel) if channel else None
        self._cache: dict[str, bytes] = {}
        self._cache_bytes = 0
        self._max = max_cache_bytes

    async def get(self, *, name: str, version: str, sha256: str, inline: bytes) -> bytes:
        if inline:
            return self._verify(inline, sha256)
        if sha256 in self._cache:
            return self._cache[sha256]
        if self._stub is None:
            raise ContentError("no catalogue configured and no inline content")
        try:
            parts = [
                m.chunk
                async for m in self._stub.GetContent(
                    catalogue_pb2.GetContentRequest(
                        script_name=name, version=version, sha256=sha256
                    ),
                    timeout=30,
                )
            ]
        except grpc.aio.AioRpcError as exc:
            raise ContentError(
                f"catalogue GetContent failed: {from_rpc_error(exc).message}"
            ) from None
        content = self._verify(b"".join(parts), sha256)
        if len(content) + self._cache_bytes <= self._max:
            self._cache[sha256] = content
            self._cache_bytes += len(content)
        return content

    @staticmethod
    def _verify(content: bytes, sha256: str) -> bytes:
        digest = hashlib.sha256(content).hexdigest()
        if not sha256 or digest != sha256.lower():
            raise ContentError(
                f"content digest {digest} does not match the pinned sha256 {sha256 or '(none)'}"
            )
        return content
