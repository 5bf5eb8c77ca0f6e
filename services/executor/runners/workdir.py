"""A local run's work directory: made fresh for the run, emptied and removed after it.

Most runs leave nothing but what the runner put there, so the end of a run checks for that
first (a few system calls on the loop) and walks the directory, on a thread, only when the
run left a result, an artifact or anything else."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

ARTIFACTS = "artifacts"  # the run's artifacts directory (RUNBOX_ARTIFACTS_DIR)
RESULT = "result.json"


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
