"""What a run leaves behind, collected after it ends: result.json (a JSON object
that travels in the FINISHED event) and the files under its artifacts
directory, which the executor copies into its own storage (artifact_store.py
says how: only regular files, sanitised names, caps).

Two sources, one store:

- `collect_from_directory`: a local run's work dir on the host, walked by
  file descriptor without following any link;
- `collect_from_tar`: one tar stream holding `result.json` and
  `artifacts/...`, whoever produced it (the in-sandbox agent writes one over
  its output stream): it is read as hostile input.

The Docker engine's archive API is not used: it cannot see tmpfs mounts made
with HostConfig.Tmpfs, where a sandbox keeps /work and /artifacts
(moby/moby#22020: it archives the empty directory below).
"""

from __future__ import annotations

import errno
import io
import os
import stat
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from services.executor.artifact_store import (
    CHUNK,
    REGULAR,
    ArtifactStore,
    Warnings,
    mode_kind,
    tar_kind,
)
from services.executor.config import ArtifactSettings
from services.executor.output import Redactor
from services.executor.results import ResultError, parse_result
from services.executor.runners.base import ArtifactFile

RESULT_NAME = "result.json"

# (result, stored artifacts, warnings to log and show the user)
Collection = tuple[dict[str, Any] | None, list[ArtifactFile], list[str]]


def collect_from_directory(
    work_dir: Path,
    run_id: str,
    settings: ArtifactSettings,
    *,
    artifacts: str = "artifacts",
    secrets: Iterable[str] = (),
) -> Collection:
    """A local run's result.json (in work_dir) and artifacts (work_dir/<artifacts>).
    Blocking: call it through asyncio.to_thread."""
    store = ArtifactStore(settings, run_id, Redactor(secrets))
    work_fd = os.open(work_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        result = _result_from_directory(work_fd, settings.max_result_bytes, store.warnings)
        store.read_directory(work_fd, artifacts)
    finally:
        os.close(work_fd)
    return result, store.files, store.warnings.items()


def collect_from_tar(
    stream: IO[bytes] | Iterable[bytes],
    run_id: str,
    settings: ArtifactSettings,
    *,
    secrets: Iterable[str] = (),
    artifacts_root: str = "artifacts",
) -> Collection:
    """result.json and '<artifacts_root>/...' entries from one tar stream (a file
    object, bytes or an iterable of byte chunks). Blocking: call it through asyncio.to_thread.

    Reading stops at a cap: a caller reading a framed stream drains the rest."""
    store = ArtifactStore(settings, run_id, Redactor(secrets))
    found: list[dict[str, Any] | None] = []

    def other(tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        if member.name in (RESULT_NAME, f"./{RESULT_NAME}") and not found:
            found.append(_result_member(tar, member, settings.max_result_bytes, store.warnings))
        elif not member.isdir():
            store.skip(member.name, "outside the artifacts directory")

    store.read_tar(_as_stream(stream), artifacts_root, on_other=other)
    return (found[0] if found else None), store.files, store.warnings.items()


def _result_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, max_bytes: int, warnings: Warnings
) -> dict[str, Any] | None:
    if member.type not in REGULAR:
        warnings.add(f"{RESULT_NAME} ignored: it is {tar_kind(member)}")
        return None
    if member.size > max_bytes:
        warnings.add(f"{RESULT_NAME} ignored: larger than {max_bytes} bytes")
        return None
    src = tar.extractfile(member)
    return _parse_or_warn(src.read(max_bytes + 1) if src else b"", max_bytes, warnings)


def _result_from_directory(
    work_fd: int, max_bytes: int, warnings: Warnings
) -> dict[str, Any] | None:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(RESULT_NAME, flags, dir_fd=work_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        why = "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror
        warnings.add(f"{RESULT_NAME} ignored: {why}")
        return None
    with os.fdopen(fd, "rb") as src:
        st = os.fstat(fd)  # what was opened, not what was listed
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
            kind = "a hardlink" if stat.S_ISREG(st.st_mode) else mode_kind(st.st_mode)
            warnings.add(f"{RESULT_NAME} ignored: it is {kind}")
            return None
        return _parse_or_warn(src.read(max_bytes + 1), max_bytes, warnings)


def _parse_or_warn(data: bytes, max_bytes: int, warnings: Warnings) -> dict[str, Any] | None:
    if len(data) > max_bytes:
        warnings.add(f"{RESULT_NAME} ignored: larger than {max_bytes} bytes")
        return None
    try:
        return parse_result(data)
    except ResultError as exc:
        warnings.add(f"{exc}: ignored")
        return None


class _ChunkReader(io.RawIOBase):
    """A readable stream over an iterable of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = chunk
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def _as_stream(source: IO[bytes] | Iterable[bytes]) -> IO[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(source)
    if hasattr(source, "read"):
        return source  # type: ignore[return-value]
    return io.BufferedReader(_ChunkReader(iter(source)), buffer_size=CHUNK)
