"""How a run's artifact files are taken and kept: names sanitised so a file can
only land inside the run's own storage directory, only regular files stored,
count and size caps enforced on the bytes actually read, and a bounded list of
warnings for everything skipped. Sources (a tar stream, a directory walked by
file descriptor) feed one ArtifactStore; artifacts.py says where they come from.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import stat
import tarfile
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import IO

from services.executor.config import ArtifactSettings
from services.executor.output import Redactor
from services.executor.runners.base import ArtifactFile

# Sub-directories an artifact name may have; deeper entries are skipped.
MAX_NAME_DEPTH = 16
# Warnings kept per run; a script leaving a million symlinks gets a count, not a million lines.
MAX_WARNINGS = 20
CHUNK = 64 * 1024
REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE)
# Called for tar entries outside the artifacts root (result.json in a combined stream).
OtherEntry = Callable[[tarfile.TarFile, tarfile.TarInfo], None]


class UnsafeName(ValueError):
    """An artifact name that cannot be made safe (absolute, `..`, too long)."""


def sanitize_name(raw: str, max_bytes: int) -> str:
    """A relative POSIX name that stays inside its directory, or UnsafeName.

    Backslashes count as separators, empty and `.` parts are dropped, control,
    format and undecodable characters become `_`; absolute names and `..`
    are refused rather than guessed at."""
    text = raw.replace("\\", "/")
    if text.startswith("/"):
        raise UnsafeName("absolute name")
    parts: list[str] = []
    for part in text.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise UnsafeName("'..' in the name")
        parts.append("".join("_" if unicodedata.category(c)[0] == "C" else c for c in part))
    if not parts:
        raise UnsafeName("empty name")
    if len(parts) > MAX_NAME_DEPTH:
        raise UnsafeName(f"more than {MAX_NAME_DEPTH} directory levels")
    name = "/".join(parts)
    if len(name.encode()) > max_bytes:
        raise UnsafeName(f"name longer than {max_bytes} bytes")
    return name


class Warnings:
    """Bounded, redacted list of what collection skipped and why."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._items: list[str] = []
        self._dropped = 0

    def add(self, message: str, *, always: bool = False) -> None:
        """Keep a warning while there is room; one that says collection stopped
        is always kept, since it explains every file that is missing."""
        if always or len(self._items) < MAX_WARNINGS:
            self._items.append(self._redactor.text(message))
        else:
            self._dropped += 1

    def items(self) -> list[str]:
        more = [f"... and {self._dropped} more artifact warnings"] if self._dropped else []
        return [*self._items, *more]


class ArtifactStore:
    """One run's artifacts on their way into <storage_dir>/<run_id>/."""

    def __init__(self, settings: ArtifactSettings, run_id: str, redactor: Redactor) -> None:
        self._settings = settings
        self._root = Path(settings.storage_dir).absolute() / _safe_run_id(run_id)
        self._redactor = redactor
        self._names: set[str] = set()
        self._total = 0
        self._entries = 0
        self._prepared = False
        self.files: list[ArtifactFile] = []
        self.warnings = Warnings(redactor)
        # A cap was reached: callers stop reading their source.
        self.full = False

    def skip(self, raw: str, why: str) -> None:
        self.warnings.add(f"artifact {_display(self._redactor.text(raw))} skipped: {why}")

    def entry(self) -> bool:
        """Count one directory entry seen; False once too many were seen to go on."""
        if self.full:
            return False
        self._entries += 1
        if self._entries > 10 * self._settings.max_files + 100:
            self._stop(f"more than {self._entries - 1} entries under the artifacts directory")
        return not self.full

    def add(self, raw: str, size: int, src: IO[bytes]) -> None:
        """Store one regular file of the declared size, read from src."""
        s = self._settings
        if len(self.files) >= s.max_files:
            return self._stop(f"the limit of {s.max_files} artifact files was reached")
        try:
            name = sanitize_name(self._redactor.text(raw), s.max_name_bytes)
        except UnsafeName as exc:
            return self.skip(raw, str(exc))
        if name in self._names:
            return self.skip(raw, "another artifact has the same sanitised name")
        if size > s.max_file_bytes:
            return self.skip(raw, f"larger than the {s.max_file_bytes} bytes allowed per file")
        if self._total + size > s.max_total_bytes:
            return self._stop(f"the limit of {s.max_total_bytes} artifact bytes was reached")
        self._names.add(name)
        try:
            self._copy(name, src)
        except OSError as exc:
            self.skip(raw, f"could not be stored ({exc.strerror or type(exc).__name__})")

    def _stop(self, why: str) -> None:
        self.full = True
        self.warnings.add(f"{why}; the remaining artifacts were not collected", always=True)

    def _copy(self, name: str, src: IO[bytes]) -> None:
        """Copy with the caps applied to what is read, not to what was declared:
        a file can grow between listing and reading."""
        limit = min(self._settings.max_file_bytes, self._settings.max_total_bytes - self._total)
        path = self._target(name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        digest, size = hashlib.sha256(), 0
        fd = os.open(path, flags, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := src.read(min(CHUNK, limit - size + 1)):
                    size += len(chunk)
                    if size > limit:
                        break
                    digest.update(chunk)
                    out.write(chunk)
        except BaseException:  # a source cut mid-file leaves no partial copy
            path.unlink(missing_ok=True)
            raise
        if size > limit:
            path.unlink()
            if limit == self._settings.max_file_bytes:
                return self.skip(name, f"grew past the {limit} bytes allowed per file")
            return self._stop(
                f"the limit of {self._settings.max_total_bytes} artifact bytes was reached"
            )
        self._total += size
        self.files.append(ArtifactFile(name, size, digest.hexdigest(), path.as_uri()))

    def _target(self, name: str) -> Path:
        if not self._prepared:
            # A directory left by an earlier attempt of the same run is replaced.
            shutil.rmtree(self._root, ignore_errors=True)
            self._root.mkdir(parents=True, mode=0o700)
            self._prepared = True
        path = self._root / name
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.parent.resolve().is_relative_to(self._root.resolve()):
            raise OSError(errno.EPERM, "outside the run's storage directory")
        return path

    def read_tar(self, stream: IO[bytes], root: str, on_other: OtherEntry | None = None) -> None:
        """Store the regular files of a tar stream, read once front to back.

        Artifacts are the entries named '<root>/<name>', as Docker archives a
        directory. Any other entry goes to on_other when given; without it, it
        is taken as an artifact name as it stands (and sanitised like any)."""
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    if not self.entry():
                        break
                    head, _, name = member.name.partition("/")
                    if head != root:
                        if on_other is not None:
                            on_other(tar, member)
                            continue
                        name = member.name
                    if name and not member.isdir():
                        self._add_member(tar, member, name)
        except tarfile.TarError as exc:
            self.warnings.add(f"the artifacts archive could not be read to the end ({exc})")

    def _add_member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, name: str) -> None:
        if member.type not in REGULAR:
            return self.skip(name, tar_kind(member))
        src = tar.extractfile(member)
        if src is not None:
            self.add(name, member.size, src)

    def read_directory(self, parent_fd: int, dirname: str) -> None:
        """Store the regular files under dirname (relative to parent_fd),
        walking by file descriptor so no symlink is ever followed."""
        try:
            fd = os.open(dirname, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            return self.skip(dirname, f"the artifacts directory cannot be opened ({exc.strerror})")
        try:
            self._walk(fd, "", 1)
        finally:
            os.close(fd)

    def _walk(self, dir_fd: int, prefix: str, depth: int) -> None:
        with os.scandir(dir_fd) as entries:
            for entry in entries:
                if not self.entry():
                    return
                name = prefix + entry.name
                try:
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        self._walk_into(dir_fd, entry.name, name, depth)
                    elif stat.S_ISREG(st.st_mode):
                        self._add_file(dir_fd, entry.name, name)
                    else:
                        self.skip(name, mode_kind(st.st_mode))
                except OSError as exc:
                    self.skip(name, f"could not be read ({exc.strerror or type(exc).__name__})")

    def _walk_into(self, dir_fd: int, entry: str, name: str, depth: int) -> None:
        if depth >= MAX_NAME_DEPTH:
            return self.skip(name, f"more than {MAX_NAME_DEPTH} directory levels")
        fd = os.open(entry, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd)
        try:
            self._walk(fd, name + "/", depth + 1)
        finally:
            os.close(fd)

    def _add_file(self, dir_fd: int, entry: str, name: str) -> None:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        with os.fdopen(os.open(entry, flags, dir_fd=dir_fd), "rb") as src:
            st = os.fstat(src.fileno())  # what was opened, not what was listed
            if not stat.S_ISREG(st.st_mode):
                return self.skip(name, mode_kind(st.st_mode))
            if st.st_nlink > 1:  # a hardlink may name a file outside the run
                return self.skip(name, "a hardlink")
            self.add(name, st.st_size, src)


def tar_kind(member: tarfile.TarInfo) -> str:
    """What a non-regular tar entry is, for a warning."""
    if member.issym():
        return "a symlink"
    if member.islnk():
        return "a hardlink"
    if member.ischr() or member.isblk():
        return "a device"
    if member.isfifo():
        return "a fifo"
    return "not a regular file"


def mode_kind(mode: int) -> str:
    """What a non-regular file is, for a warning."""
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _safe_run_id(run_id: str) -> str:
    """Run ids come from callers: one that is not a plain file name is hashed."""
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", run_id):
        return run_id
    return "run-" + hashlib.sha256(run_id.encode()).hexdigest()[:32]


def _display(raw: str) -> str:
    """A name as a warning may show it: escaped, and short."""
    text = raw if len(raw) <= 120 else raw[:117] + "..."
    return repr(text)
