"""Content-addressed blob store: content is stored under its SHA-256 and
verified on every read, so a corrupt blob is reported, never served."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Protocol

from shared.errors import DataLoss


class BlobStore(Protocol):
    """Where script content lives; keys are SHA-256 hex digests."""

    async def put(self, content: bytes) -> str:
        """Store content (idempotently) and return its SHA-256 hex digest."""
        ...

    async def get(self, sha256: str) -> bytes:
        """Content by digest, verified; DataLoss if missing or corrupt."""
        ...


class FilesystemBlobStore:
    """Blobs as files under root/ab/cd/<sha256>, written atomically."""

    def __init__(self, root: Path) -> None:
        self._root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, sha256: str) -> Path:
        return self._root / sha256[:2] / sha256[2:4] / sha256

    async def put(self, content: bytes) -> str:
        return await asyncio.to_thread(self._put, content)

    def _put(self, content: bytes) -> str:
        digest = hashlib.sha256(content).hexdigest()
        path = self._path(digest)
        if path.exists() and self._digest_of(path) == digest:
            return digest
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(content)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    async def get(self, sha256: str) -> bytes:
        return await asyncio.to_thread(self._get, sha256)

    def _get(self, sha256: str) -> bytes:
        path = self._path(sha256)
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            raise DataLoss(f"content {sha256} is missing from the blob store") from None
        if hashlib.sha256(content).hexdigest() != sha256:
            raise DataLoss(f"content {sha256} is corrupt (digest mismatch); refusing to serve it")
        return content

    @staticmethod
    def _digest_of(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()
