"""A command's child watched from the loop: its exit (pidfd) and its pipes (add_reader)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from services.executor.runners import workdir
from services.executor.runners.children import Pipes, watch_exit


def spawn(script: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["/bin/sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


async def test_exit_gives_the_status_and_the_childs_own_usage_and_reaps_it() -> None:
    """The wait4 status and rusage of the child itself; it is reaped (no zombie left)."""
    proc = spawn("i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exit 3")
    chunks: list[tuple[str, bytes]] = []
    pipes = Pipes(
        {"stdout": proc.stdout, "stderr": proc.stderr},  # type: ignore[dict-item]
        lambda name, data: chunks.append((name, data)),
    )
    status, usage = await watch_exit(proc)
    await pipes.ended
    pipes.close()
    assert os.waitstatus_to_exitcode(status) == 3
    assert proc.returncode == 3
    assert usage.ru_utime + usage.ru_stime > 0
    with pytest.raises(ChildProcessError):  # already reaped
        os.waitpid(proc.pid, os.WNOHANG)  # noqa: ASYNC222 (WNOHANG: never blocks)


async def test_pipes_hand_on_every_chunk_by_stream_until_both_end() -> None:
    """stdout and stderr arrive apart and whole; the future ends when both pipes do."""
    proc = spawn("printf out1; printf err >&2; sleep 0.1; printf out2")
    chunks: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    def sink(name: str, data: bytes) -> None:
        chunks[name] += data

    pipes = Pipes(
        {"stdout": proc.stdout, "stderr": proc.stderr},  # type: ignore[dict-item]
        sink,
    )
    await pipes.ended
    assert proc.stdout is not None and proc.stdout.closed  # closed at EOF
    pipes.close()
    await watch_exit(proc)
    assert chunks == {"stdout": b"out1out2", "stderr": b"err"}


async def test_pipes_close_stops_reading_and_closes_what_is_open() -> None:
    """Closed before EOF (a run ended while a background child holds its output): the loop
    stops watching the pipes and they are closed; `ended` stays undone."""
    proc = spawn("sleep 5")
    pipes = Pipes(
        {"stdout": proc.stdout, "stderr": proc.stderr},  # type: ignore[dict-item]
        lambda name, data: None,
    )
    await asyncio.sleep(0.05)
    pipes.close()
    pipes.close()  # idempotent
    assert proc.stdout is not None and proc.stdout.closed
    assert proc.stderr is not None and proc.stderr.closed
    assert not pipes.ended.done()
    proc.kill()
    await watch_exit(proc)


def test_nothing_to_collect_only_for_an_untouched_or_empty_artifacts_dir(tmp_path: Path) -> None:
    """Collection is skipped only when it could find nothing: no result.json, and the
    artifacts dir empty or gone; a file, a symlink or a result means collect."""
    work = workdir.make(tmp_path / "base", "run-1")
    assert workdir.nothing_to_collect(work)
    (work / "artifacts" / "a").write_text("x")
    assert not workdir.nothing_to_collect(work)
    (work / "artifacts" / "a").unlink()
    (work / "result.json").symlink_to("/etc/passwd")
    assert not workdir.nothing_to_collect(work)
    (work / "result.json").unlink()
    (work / "artifacts").rmdir()
    assert workdir.nothing_to_collect(work)
    (work / "artifacts").symlink_to(tmp_path)
    assert not workdir.nothing_to_collect(work)


def test_remove_takes_the_whole_tree_without_following_symlinks(tmp_path: Path) -> None:
    """What the runner made goes file by file; anything else left makes it a full removal,
    which never follows a symlink out of the work dir."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    for left in ("", "extra", "symlink"):
        work = workdir.make(tmp_path / "base", f"run-{left}")
        (work / "in.json").write_text("{}")
        if left == "extra":
            (work / "artifacts" / "sub").mkdir()
        if left == "symlink":
            (work / "artifacts").rmdir()
            (work / "artifacts").symlink_to(outside)
        workdir.remove(work, ("in.json",))
        assert not work.exists(), left
    assert (outside / "keep").read_text() == "keep"


def test_work_dirs_reuse_only_a_directory_left_as_it_was_made(tmp_path: Path) -> None:
    """A run that left its directory as made hands it to the next run (renamed for it, holding
    only an empty artifacts dir); one that left a file, an artifact, or changed a mode gets
    it removed; a spare written into after its run is not handed out; close removes spares."""
    base = tmp_path / "base"
    dirs = workdir.WorkDirs(base)
    first = dirs.make("run-aaaaaaaaaaaa")
    (first / "in.json").write_text("{}")
    dirs.release(first, ("in.json",))
    assert first.exists()  # a spare
    second = dirs.make("run-bbbbbbbbbbbb")
    assert not first.exists() and second.name.startswith("run-run-bbbbbbb")
    assert sorted(p.name for p in second.iterdir()) == ["artifacts"]
    assert list((second / "artifacts").iterdir()) == []
    for change in ("file", "artifact", "mode", "artifacts mode"):
        work = dirs.make(f"run-{change}")
        if change == "file":
            (work / "left.txt").write_text("x")
        elif change == "artifact":
            (work / "artifacts" / "a").write_text("x")
        elif change == "mode":
            work.chmod(0o755)
        else:
            mode = (work / "artifacts").stat().st_mode & 0o777
            (work / "artifacts").chmod(0o750 if mode != 0o750 else 0o700)
        dirs.release(work, ())
        assert not work.exists(), change
    dirs.release(second, ())
    (second / "late.txt").write_text("a process the run left behind")
    third = dirs.make("run-cccccccccccc")
    assert not second.exists()
    assert sorted(p.name for p in third.iterdir()) == ["artifacts"]
    dirs.release(third, ())
    dirs.close()
    assert list(base.iterdir()) == []


def test_untouched_only_when_the_run_left_its_directory_as_made_with_the_runners_files(
    tmp_path: Path,
) -> None:
    """One look at the end of a run says both "nothing to collect" and "keep as a spare": only
    for a directory holding the runner's files and an empty artifacts dir, modes unchanged.
    A result, an artifact, another file, a missing input or a changed mode say no, and the
    release then looks again as before."""
    base = tmp_path / "base"
    dirs = workdir.WorkDirs(base)
    work = dirs.make("run-aaaaaaaaaaaa")
    (work / "in.json").write_text("{}")
    assert dirs.untouched(work, ("in.json",))
    dirs.release(work, ("in.json",), untouched=True)
    assert sorted(p.name for p in work.iterdir()) == ["artifacts"]  # a spare
    for change in ("result", "artifact", "file", "input gone", "mode"):
        work = dirs.make(f"run-{change}")
        (work / "in.json").write_text("{}")
        if change == "result":
            (work / "result.json").write_text("{}")
        elif change == "artifact":
            (work / "artifacts" / "a").write_text("x")
        elif change == "file":
            (work / "left.txt").write_text("x")
        elif change == "input gone":
            (work / "in.json").unlink()
        else:
            work.chmod(0o755)
        assert not dirs.untouched(work, ("in.json",)), change
        dirs.release(work, ("in.json",))
        assert not work.exists(), change
    dirs.close()
    assert list(base.iterdir()) == []
