"""A local run's work directory: made fresh for the run (or an emptied one reused), emptied
after it.

Most runs leave nothing but what the runner put there, so the end of a run checks for that
first (a few system calls on the loop) and walks the directory, on a thread, only when the
run left a result, an artifact or anything else.

Making and removing two directories per run (the work dir and its artifacts dir) costs
~0.1 ms of CPU and, on a file system that discards freed blocks (ext4 `discard`), ~2 ms of
blocking `rmdir` on the event loop. A run that left its directory exactly as it was made (its
artifacts dir empty, no other entry, same modes and owner once the runner's own input files
are unlinked) hands it back as a spare; the next run takes it under its own name (one
`rename`). A run therefore still starts in a directory holding nothing but its artifacts dir
and its own inputs. Whatever else a run left, the whole directory is removed as before."""

from __future__ import annotations

import itertools
import os
import shutil
import stat
import tempfile
from pathlib import Path

ARTIFACTS = "artifacts"  # the run's artifacts directory (RUNBOX_ARTIFACTS_DIR)
RESULT = "result.json"
# Spare directories kept for reuse, at most (a few per run slot is plenty).
SPARES = 64


def make(base: Path, run_id: str) -> Path:
    """A fresh directory for the run under base (made if missing), with its artifacts dir."""
    try:
        work = Path(tempfile.mkdtemp(prefix=f"run-{run_id[:12]}-", dir=base))
    except FileNotFoundError:
        base.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"run-{run_id[:12]}-", dir=base))
    (work / ARTIFACTS).mkdir()
    return work


def nothing_to_collect(work: Path) -> bool:
    """True when the run left no result.json and its artifacts directory is an empty
    directory (or gone): collection would find nothing. Anything else (a symlink in its
    place, a file in it) is for the collector to judge."""
    if os.path.lexists(work / RESULT):
        return False
    try:
        st = os.lstat(work / ARTIFACTS)
    except FileNotFoundError:
        return True
    if not stat.S_ISDIR(st.st_mode):
        return False
    with os.scandir(work / ARTIFACTS) as entries:
        return next(entries, None) is None


def remove(work: Path, files: tuple[str, ...]) -> None:
    """Remove the work dir: the runner's own `files` and the artifacts dir one by one, and
    the whole tree (never following a symlink) when the run changed or left anything."""
    try:
        for name in files:
            os.unlink(work / name)
        os.rmdir(work / ARTIFACTS)
        os.rmdir(work)
    except OSError:
        shutil.rmtree(work, ignore_errors=True)


class WorkDirs:
    """The work directories of one runner's runs under `base`: `make` gives a run one holding
    only an empty artifacts dir (a spare when there is one, else a new one), `release`
    empties it after the run and keeps it as a spare if the run left it as it was made,
    else removes it."""

    def __init__(self, base: Path, spares: int = SPARES) -> None:
        self._base = base
        self._most = spares
        self._spares: list[Path] = []
        # Modes and owner of a directory as `make` creates them (mkdtemp: 0700; the
        # artifacts dir: 0777 less the umask), to tell a directory the run changed.
        self._modes: tuple[int, int] | None = None
        # Names of reused directories: never one mkdtemp makes (its names have no "."), so a
        # rename never lands on another run's directory.
        self._names = itertools.count()
        self._tag = f"{os.getpid():x}"
        self._uid = os.getuid()

    def make(self, run_id: str) -> Path:
        while self._spares:
            spare = self._spares.pop()
            work = self._base / f"run-{run_id[:12]}-{self._tag}.{next(self._names):x}"
            try:
                os.rename(spare, work)
            except OSError:
                shutil.rmtree(spare, ignore_errors=True)
                continue
            if self.untouched(work):  # again: a process the run left may have written since
                return work
            shutil.rmtree(work, ignore_errors=True)
        work = make(self._base, run_id)
        if self._modes is None:
            self._modes = (_mode(os.lstat(work)), _mode(os.lstat(work / ARTIFACTS)))
        return work

    def release(self, work: Path, files: tuple[str, ...], *, untouched: bool = False) -> None:
        """After the run: unlink the runner's `files`; keep the directory as a spare if it is
        as it was made, else remove all of it (never following a symlink). `untouched`: the
        caller found it so (`untouched`) with no await since, so it is not looked at again."""
        try:
            for name in files:
                os.unlink(work / name)
        except OSError:
            shutil.rmtree(work, ignore_errors=True)
            return
        if len(self._spares) < self._most and (untouched or self.untouched(work)):
            self._spares.append(work)
            return
        remove(work, ())

    def untouched(self, work: Path, files: tuple[str, ...] = ()) -> bool:
        """The directory is as made: only the artifacts dir (and `files`) is left, the
        artifacts dir empty, and neither directory changed mode or owner (a run that changed
        them gets a new directory next time). At the end of a run, with the runner's input
        files: nothing to collect, and `release(..., untouched=True)` keeps it without looking
        again (one look instead of two: the collector's and the release's)."""
        if self._modes is None:
            return False
        try:
            with os.scandir(work) as entries:
                names = {entry.name for entry in itertools.islice(entries, len(files) + 2)}
            if names != {ARTIFACTS, *files}:  # one entry more than these is read, if any
                return False
            artifacts_dir = os.path.join(work, ARTIFACTS)
            top, artifacts = os.lstat(work), os.lstat(artifacts_dir)
            if not stat.S_ISDIR(top.st_mode) or not stat.S_ISDIR(artifacts.st_mode):
                return False
            if top.st_uid != self._uid or artifacts.st_uid != self._uid:
                return False
            if (_mode(top), _mode(artifacts)) != self._modes:
                return False
            with os.scandir(artifacts_dir) as entries:
                return next(entries, None) is None
        except OSError:
            return False

    def close(self) -> None:
        """Remove the spare directories."""
        spares, self._spares = self._spares, []
        for spare in spares:
            remove(spare, ())


def _mode(st: os.stat_result) -> int:
    return stat.S_IMODE(st.st_mode)
