"""What a run leaves behind, collected after it ends: result.json (a JSON object
that travels in the FINISHED event) and the files under its artifacts
directory, which the executor copies into its own storage (artifact_store.py
says how: only regular files, sanitised names, caps).

Three sources, one store:

- `collect_from_directory`: a local run's work dir on the host, walked by
  file descriptor without following any link;
- `collect_from_tar`: one tar stream holding `result.json` and
  `artifacts/...`, whoever produced it (the in-sandbox agent can write one
  over its output stream): it is read as hostile input;
- `collect_from_container`: the Docker archive API. The engine archives the
  container's own filesystem and its volumes, NOT tmpfs mounts made with
  HostConfig.Tmpfs (moby/moby#22020: it sees the empty directory below), and a
  tmpfs volume loses its content once the container stops. Use it only while
  the container runs, with /artifacts and /work on volumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import os
import posixpath
import stat
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol

from docker.errors import DockerException, NotFound

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


class ArchiveSource(Protocol):
    """The part of a docker Container that collection uses."""

    def get_archive(self, path: str) -> tuple[Iterator[bytes], Any]: ...


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


async def collect_from_container(
    container: ArchiveSource,
    run_id: str,
    settings: ArtifactSettings,
    *,
    secrets: Iterable[str] = (),
    work_dir: str = "/work",
    artifacts_dir: str = "/artifacts",
) -> Collection:
    """A running sandbox's result.json and artifacts through the Docker archive
    API, before it is stopped (see the module docstring for what the engine sees)."""
    return await asyncio.to_thread(
        _collect_container, container, run_id, settings, list(secrets), work_dir, artifacts_dir
    )


def _collect_container(
    container: ArchiveSource,
    run_id: str,
    settings: ArtifactSettings,
    secrets: list[str],
    work_dir: str,
    artifacts_dir: str,
) -> Collection:
    store = ArtifactStore(settings, run_id, Redactor(secrets))
    path = posixpath.join(work_dir, RESULT_NAME)
    result = _result_from_archive(container, path, settings.max_result_bytes, store.warnings)
    chunks = _archive(container, artifacts_dir, store.warnings, "artifacts")
    if chunks is not None:
        try:
            store.read_tar(_as_stream(chunks), posixpath.basename(artifacts_dir.rstrip("/")))
        finally:
            _close(chunks)
    return result, store.files, store.warnings.items()


def _archive(
    container: ArchiveSource, path: str, warnings: Warnings, what: str
) -> Iterator[bytes] | None:
    """The tar stream of one path, or None when it does not exist."""
    try:
        chunks, _ = container.get_archive(path)
    except NotFound:
        return None
    except DockerException as exc:
        warnings.add(f"{what} could not be read from the sandbox ({_short(exc)})")
        return None
    return chunks


def _result_from_archive(
    container: ArchiveSource, path: str, max_bytes: int, warnings: Warnings
) -> dict[str, Any] | None:
    chunks = _archive(container, path, warnings, RESULT_NAME)
    if chunks is None:
        return None
    try:
        with tarfile.open(fileobj=_as_stream(chunks), mode="r|") as tar:
            member = tar.next()
            return _result_member(tar, member, max_bytes, warnings) if member else None
    except tarfile.TarError as exc:
        warnings.add(f"{RESULT_NAME} could not be read ({exc})")
        return None
    finally:
        _close(chunks)


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
    """A readable stream over byte chunks (what the Docker SDK yields)."""

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


def _close(chunks: Any) -> None:
    """Stop the archive download early: nothing past a cap is read."""
    close = getattr(chunks, "close", None)
    if close is not None:
        with contextlib.suppress(Exception):
            close()


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
