"""The filesystem blob store: content addressed, atomic, verified on every read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from services.catalogue.blobs import FilesystemBlobStore
from shared.errors import DataLoss


def _path(root: Path, digest: str) -> Path:
    return root / digest[:2] / digest[2:4] / digest


def _files(root: Path) -> list[str]:
    return [p.name for p in root.rglob("*") if p.is_file()]


async def test_put_then_get_returns_content_under_its_digest(tmp_path: Path) -> None:
    """put returns the SHA-256 and stores the bytes under ab/cd/<sha>, leaving no temp files."""
    store = FilesystemBlobStore(tmp_path)
    digest = await store.put(b"print('hi')\n")
    assert digest == hashlib.sha256(b"print('hi')\n").hexdigest()
    assert await store.get(digest) == b"print('hi')\n"
    assert _files(tmp_path) == [digest]


async def test_put_is_idempotent_for_the_same_content(tmp_path: Path) -> None:
    """Storing the same content twice keeps one blob."""
    store = FilesystemBlobStore(tmp_path)
    assert await store.put(b"same") == await store.put(b"same")
    assert len(_files(tmp_path)) == 1


async def test_get_raises_data_loss_when_blob_is_corrupt(tmp_path: Path) -> None:
    """A blob changed on disk is never served."""
    store = FilesystemBlobStore(tmp_path)
    digest = await store.put(b"original")
    _path(tmp_path, digest).write_bytes(b"tampered")
    with pytest.raises(DataLoss):
        await store.get(digest)


async def test_get_raises_data_loss_when_blob_is_missing(tmp_path: Path) -> None:
    """A recorded digest whose blob is gone is DATA_LOSS, not NOT_FOUND."""
    store = FilesystemBlobStore(tmp_path)
    digest = await store.put(b"gone soon")
    _path(tmp_path, digest).unlink()
    with pytest.raises(DataLoss):
        await store.get(digest)


async def test_put_repairs_a_corrupt_blob(tmp_path: Path) -> None:
    """Publishing content again rewrites a corrupt copy of it."""
    store = FilesystemBlobStore(tmp_path)
    digest = await store.put(b"heal me")
    _path(tmp_path, digest).write_bytes(b"rot")
    await store.put(b"heal me")
    assert await store.get(digest) == b"heal me"


def test_content_limit_must_fit_in_a_grpc_message() -> None:
    """A content limit gRPC would refuse first is a configuration error at start."""
    import pytest
    from pydantic import ValidationError

    from services.catalogue.config import CatalogueSettings

    with pytest.raises(ValidationError, match="RUNBOX_GRPC__MAX_MESSAGE_BYTES"):
        CatalogueSettings(max_content_bytes=8 * 1024 * 1024)
    ok = CatalogueSettings(
        max_content_bytes=8 * 1024 * 1024,
        grpc={"max_message_bytes": 9 * 1024 * 1024},  # type: ignore[arg-type]
    )
    assert ok.max_content_bytes == 8 * 1024 * 1024
