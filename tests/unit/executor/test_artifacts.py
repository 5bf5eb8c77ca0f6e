"""Artifact collection and result.json: real tar streams built in memory (as the
in-sandbox agent sends them) and real directories, hostile entries included."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.executor.artifact_store import sanitize_name
from services.executor.artifacts import collect_from_directory, collect_from_tar
from services.executor.config import ArtifactSettings, ExecutorSettings
from services.executor.output import Redactor
from services.executor.results import ResultError, parse_result, redact_result, result_struct

RUN = "run-1"
SECRET = "hunter2-s3cr3t/+value"


class Entry:
    """One tar member to build: a regular file unless `kind` says otherwise."""

    def __init__(
        self, name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE, link: str = ""
    ) -> None:
        self.name, self.data, self.kind, self.link = name, data, kind, link


def tar_bytes(entries: list[Entry], root: str | None = "artifacts") -> bytes:
    """A tar stream with the artifacts directory's own entry first, as tarfile packs it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if root:
            info = tarfile.TarInfo(root)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type = entry.kind
            info.linkname = entry.link
            if entry.kind == tarfile.REGTYPE:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


class Chunks:
    """A tar stream handed over in small chunks, counting how many were taken."""

    def __init__(self, data: bytes, chunk: int = 4096) -> None:
        self.data, self.chunk, self.taken = data, chunk, 0

    def __iter__(self) -> Iterator[bytes]:
        for at in range(0, len(self.data), self.chunk):
            self.taken += 1
            yield self.data[at : at + self.chunk]


def settings(tmp_path: Path, **caps: int) -> ArtifactSettings:
    return ArtifactSettings(storage_dir=str(tmp_path / "store"), **caps)


def collect(
    tmp_path: Path, entries: list[Entry], result: bytes | None = None, **caps: int
) -> tuple[dict[str, Any] | None, list[Any], list[str]]:
    """One stream as the agent packs it: result.json (when given), then artifacts/..."""
    head = [Entry("result.json", result)] if result is not None else []
    data = tar_bytes([*head, Entry("artifacts", kind=tarfile.DIRTYPE), *entries], root=None)
    return collect_from_tar(io.BytesIO(data), RUN, settings(tmp_path, **caps), secrets=[SECRET])


def stored(tmp_path: Path) -> list[str]:
    """Every path under the storage dir, relative to it."""
    root = tmp_path / "store"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_collect_stores_regular_and_nested_files_with_sha256(tmp_path: Path) -> None:
    """Regular files, nested ones included, are stored under <storage>/<run_id>/ with their digest."""
    result, files, warnings = collect(
        tmp_path, [Entry("artifacts/report.txt", b"hello"), Entry("artifacts/sub/d.csv", b"1,2\n")]
    )
    assert result is None and warnings == []
    by_name = {f.name: f for f in files}
    assert set(by_name) == {"report.txt", "sub/d.csv"}
    report = by_name["report.txt"]
    assert report.size_bytes == 5
    assert report.sha256 == hashlib.sha256(b"hello").hexdigest()
    path = tmp_path / "store" / RUN / "report.txt"
    assert report.uri == path.as_uri()
    assert path.read_bytes() == b"hello"
    assert (tmp_path / "store" / RUN / "sub" / "d.csv").read_bytes() == b"1,2\n"


def test_collect_skips_symlink_to_host_file(tmp_path: Path) -> None:
    """A symlink to /etc/passwd is reported and never followed or stored."""
    _, files, warnings = collect(
        tmp_path,
        [
            Entry("artifacts/passwd", kind=tarfile.SYMTYPE, link="/etc/passwd"),
            Entry("artifacts/ok", b"ok"),
        ],
    )
    assert [f.name for f in files] == ["ok"]
    assert any("'passwd'" in w and "symlink" in w for w in warnings), warnings
    assert stored(tmp_path) == [RUN, f"{RUN}/ok"]


def test_collect_skips_hardlink(tmp_path: Path) -> None:
    """A hardlink entry is reported and skipped; its target stays the only copy."""
    _, files, warnings = collect(
        tmp_path,
        [
            Entry("artifacts/a", b"data"),
            Entry("artifacts/b", kind=tarfile.LNKTYPE, link="artifacts/a"),
        ],
    )
    assert [f.name for f in files] == ["a"]
    assert any("'b'" in w and "hardlink" in w for w in warnings), warnings


def test_collect_skips_device_and_fifo_entries(tmp_path: Path) -> None:
    """Device nodes and fifos are never opened."""
    _, files, warnings = collect(
        tmp_path,
        [
            Entry("artifacts/null", kind=tarfile.CHRTYPE),
            Entry("artifacts/disk", kind=tarfile.BLKTYPE),
            Entry("artifacts/pipe", kind=tarfile.FIFOTYPE),
        ],
    )
    assert files == []
    assert sum("device" in w for w in warnings) == 2 and any("fifo" in w for w in warnings)
    assert stored(tmp_path) == []


def test_collect_refuses_names_escaping_the_run_dir(tmp_path: Path) -> None:
    """`..` and absolute names are refused; nothing lands outside the run's directory."""
    _, files, warnings = collect(
        tmp_path,
        [
            Entry("../escape", b"x"),
            Entry("/etc/absolute", b"x"),
            Entry("artifacts/../../escape2", b"x"),
            Entry("artifacts/sub/../../../escape3", b"x"),
            Entry("artifacts//etc/absolute2", b"x"),
            Entry("artifacts/fine", b"x"),
        ],
    )
    assert [f.name for f in files] == ["fine"]
    assert warnings == [
        "artifact '../escape' skipped: outside the artifacts directory",
        "artifact '/etc/absolute' skipped: outside the artifacts directory",
        "artifact '../../escape2' skipped: '..' in the name",
        "artifact 'sub/../../../escape3' skipped: '..' in the name",
        "artifact '/etc/absolute2' skipped: absolute name",
    ]
    assert not (tmp_path / "escape").exists() and not (tmp_path / "store" / "escape2").exists()
    assert not (tmp_path / "escape3").exists() and not (tmp_path / "store" / "escape3").exists()
    assert stored(tmp_path) == [RUN, f"{RUN}/fine"]


def test_collect_sanitises_control_characters_in_names(tmp_path: Path) -> None:
    """NUL (cut by tar), newline and backslash never reach a stored name."""
    _, files, _ = collect(
        tmp_path,
        [Entry("artifacts/new\nline\x07.txt", b"1"), Entry("artifacts/a\x00b", b"2")],
    )
    names = sorted(f.name for f in files)
    assert names == ["a", "new_line_.txt"]
    for name in names:
        assert (tmp_path / "store" / RUN / name).is_file()


def test_sanitize_name_normalises_and_refuses() -> None:
    """Separators are normalised, control characters replaced, escapes and long names refused."""
    assert sanitize_name("a\\b/./c", 255) == "a/b/c"
    assert sanitize_name("x\x00y\nz\u202e", 255) == "x_y_z_"
    for bad in ("../x", "a/../../x", "/abs", "\\abs", "", "./", "a" * 300):
        with pytest.raises(ValueError):
            sanitize_name(bad, 255)
    with pytest.raises(ValueError):
        sanitize_name("/".join(["d"] * 20), 255)


def test_collect_stops_at_the_file_count_cap(tmp_path: Path) -> None:
    """101 files with a cap of 100: 100 stored, a warning, and the stream is not read on."""
    entries = [Entry(f"artifacts/f{i:03}", b"x" * 10) for i in range(101)]
    _, files, warnings = collect(tmp_path, entries, max_files=100)
    assert len(files) == 100
    assert any("100 artifact files" in w for w in warnings), warnings
    assert len(list((tmp_path / "store" / RUN).iterdir())) == 100


def test_collect_skips_a_file_over_the_size_cap(tmp_path: Path) -> None:
    """A file over the per-file cap is skipped (no partial copy); later files still come."""
    _, files, warnings = collect(
        tmp_path,
        [Entry("artifacts/big", b"b" * 2000), Entry("artifacts/small", b"s" * 10)],
        max_file_bytes=1000,
    )
    assert [f.name for f in files] == ["small"]
    assert any("'big'" in w and "1000 bytes" in w for w in warnings), warnings
    assert not (tmp_path / "store" / RUN / "big").exists()


def test_collect_stops_reading_past_the_total_cap(tmp_path: Path) -> None:
    """Once the total byte cap is reached the rest of the stream is not read."""
    entries = [Entry(f"artifacts/f{i}", b"z" * 10_000) for i in range(50)]
    stream = Chunks(tar_bytes(entries), chunk=1024)
    _, files, warnings = collect_from_tar(stream, RUN, settings(tmp_path, max_total_bytes=25_000))
    assert [f.name for f in files] == ["f0", "f1"]
    assert any("25000 artifact bytes" in w for w in warnings), warnings
    assert 0 < stream.taken < len(stream.data) // 1024 // 2
    assert stored(tmp_path) == [RUN, f"{RUN}/f0", f"{RUN}/f1"]


def test_collect_warnings_are_bounded(tmp_path: Path) -> None:
    """A thousand symlinks give a bounded list of warnings with a count of the rest."""
    entries = [Entry(f"artifacts/l{i}", kind=tarfile.SYMTYPE, link="/") for i in range(1000)]
    _, files, warnings = collect(tmp_path, entries)
    assert files == []
    assert len(warnings) == 21
    assert warnings[-1] == "... and 980 more artifact warnings"


def test_collect_redacts_secrets_from_artifact_names(tmp_path: Path) -> None:
    """A secret in a file name is replaced before the file is stored or reported."""
    secret = "tok-abc123+x"
    b64 = base64.b64encode(secret.encode()).decode()
    url = urllib.parse.quote(secret, safe="")
    data = tar_bytes(
        [
            Entry(f"artifacts/key-{secret}.txt", b"x"),
            Entry(f"artifacts/{b64}", b"y"),
            Entry(f"artifacts/{url}", kind=tarfile.SYMTYPE, link="/"),
        ]
    )
    _, files, warnings = collect_from_tar(
        io.BytesIO(data), RUN, settings(tmp_path), secrets=[secret]
    )
    assert sorted(f.name for f in files) == ["***", "key-***.txt"]
    assert warnings == ["artifact '***' skipped: a symlink"]
    assert sorted(p.name for p in (tmp_path / "store" / RUN).iterdir()) == ["***", "key-***.txt"]


def test_collect_is_empty_when_the_stream_has_nothing(tmp_path: Path) -> None:
    """An empty artifacts directory and no result.json: nothing stored, no warnings."""
    for data in (tar_bytes([]), tar_bytes([], root=None)):
        result, files, warnings = collect_from_tar(io.BytesIO(data), RUN, settings(tmp_path))
        assert (result, files, warnings) == (None, [], [])
        assert stored(tmp_path) == []


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"this is not a tar stream\n" * 100, "invalid header"),
        (b"\x00" * 100 + b"garbage" * 200, "invalid header"),
        (b"", "empty file"),
    ],
)
def test_collect_reports_an_unreadable_stream_as_a_warning(
    tmp_path: Path, data: bytes, why: str
) -> None:
    """A stream that is no tar at all becomes a warning, never an exception."""
    result, files, warnings = collect_from_tar(
        io.BytesIO(data), RUN, settings(tmp_path), secrets=[SECRET]
    )
    assert result is None and files == [] and stored(tmp_path) == []
    assert warnings == [f"the artifacts archive could not be read to the end ({why})"]


def test_collect_replaces_an_earlier_attempts_files(tmp_path: Path) -> None:
    """A second collection for the same run id starts from an empty directory."""
    collect(tmp_path, [Entry("artifacts/old", b"1")])
    _, files, _ = collect(tmp_path, [Entry("artifacts/new", b"2")])
    assert [f.name for f in files] == ["new"]
    assert stored(tmp_path) == [RUN, f"{RUN}/new"]


def test_collect_hashes_an_unsafe_run_id(tmp_path: Path) -> None:
    """A run id that is not a plain file name cannot steer the storage path."""
    data = tar_bytes([Entry("artifacts/a", b"1")])
    _, files, _ = collect_from_tar(io.BytesIO(data), "../../etc", settings(tmp_path))
    [run_dir] = (tmp_path / "store").iterdir()
    assert run_dir.name.startswith("run-") and files[0].uri == (run_dir / "a").as_uri()


def test_combined_stream_gives_result_and_artifacts(tmp_path: Path) -> None:
    """One tar stream (as the agent may send it): result.json plus artifacts/..., rest refused."""
    data = tar_bytes(
        [
            Entry("result.json", b'{"ok": true}'),
            Entry("artifacts/a.txt", b"A"),
            Entry("artifacts/link", kind=tarfile.SYMTYPE, link="/etc/shadow"),
            Entry("etc/passwd", b"root:x:0:0"),
            Entry("../up", b"x"),
        ]
    )
    chunks = [data[i : i + 700] for i in range(0, len(data), 700)]
    result, files, warnings = collect_from_tar(chunks, RUN, settings(tmp_path), secrets=[SECRET])
    assert result == {"ok": True}
    assert [f.name for f in files] == ["a.txt"]
    assert warnings == [
        "artifact 'link' skipped: a symlink",
        "artifact 'etc/passwd' skipped: outside the artifacts directory",
        "artifact '../up' skipped: outside the artifacts directory",
    ]
    assert stored(tmp_path) == [RUN, f"{RUN}/a.txt"]


def test_combined_stream_ignores_a_linked_or_second_result(tmp_path: Path) -> None:
    """A symlinked result.json is not a result, and a second one never replaces the first."""
    data = tar_bytes(
        [
            Entry("result.json", kind=tarfile.SYMTYPE, link="/etc/passwd"),
            Entry("result.json", b'{"late": 1}'),
        ],
        root=None,
    )
    result, files, warnings = collect_from_tar(io.BytesIO(data), RUN, settings(tmp_path))
    assert result is None and files == []
    assert warnings == [
        "result.json ignored: it is a symlink",
        "artifact 'result.json' skipped: outside the artifacts directory",
    ]


def test_truncated_stream_keeps_what_was_complete(tmp_path: Path) -> None:
    """A stream cut mid-file keeps the files before it and says the archive was cut."""
    data = tar_bytes([Entry("artifacts/first", b"1" * 600), Entry("artifacts/second", b"2" * 5000)])
    _, files, warnings = collect_from_tar(data[:3000], RUN, settings(tmp_path))
    assert [f.name for f in files] == ["first"]
    assert len(warnings) == 1 and "could not be read to the end" in warnings[0]
    assert not (tmp_path / "store" / RUN / "second").exists()


# result.json


def test_result_json_object_becomes_the_result(tmp_path: Path) -> None:
    """A JSON object is the run's result and fits a Struct."""
    value = {"rows": 3, "ok": True, "nested": {"list": [1, "two", None]}, "ratio": 0.5}
    result, _, warnings = collect(tmp_path, [], json.dumps(value).encode())
    assert result == value and warnings == []
    assert result_struct(result)["nested"]["list"][1] == "two"


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"[1, 2]", "must hold a JSON object, not an array"),
        (b'"text"', "not a string"),
        (b"{not json", "not valid JSON"),
        (b'{"x": NaN}', "not valid JSON"),
        (b'{"x": 1e400}', "not valid JSON"),
        (b'{"x": ' + b"9" * 400 + b"}", "cannot carry"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b'{"a":' * 40 + b"1" + b"}" * 40, "nested deeper"),
    ],
)
def test_result_json_that_is_no_object_is_ignored(tmp_path: Path, data: bytes, why: str) -> None:
    """Anything but a Struct-compatible JSON object gives no result and a warning saying why."""
    result, _, warnings = collect(tmp_path, [], data)
    assert result is None
    assert len(warnings) == 1 and why in warnings[0], warnings


def test_result_json_over_the_cap_is_ignored(tmp_path: Path) -> None:
    """result.json larger than max_result_bytes is not read."""
    data = json.dumps({"blob": "x" * 2000}).encode()
    result, _, warnings = collect(tmp_path, [], data, max_result_bytes=1000)
    assert result is None
    assert warnings == ["result.json ignored: larger than 1000 bytes"]


def test_result_json_symlink_is_ignored(tmp_path: Path) -> None:
    """A result.json that is a symlink is not followed."""
    result, _, warnings = collect(
        tmp_path, [Entry("result.json", kind=tarfile.SYMTYPE, link="/etc/passwd")]
    )
    assert result is None and warnings == ["result.json ignored: it is a symlink"]


def test_redact_result_covers_plain_base64_and_url_forms() -> None:
    """Secret values in keys and strings, in every encoding, are replaced."""
    b64 = base64.b64encode(SECRET.encode()).decode()
    url = urllib.parse.quote(SECRET, safe="")
    value = parse_result(
        json.dumps(
            {
                "plain": f"token={SECRET}",
                "b64": [b64, {"deep": f"Basic {b64}"}],
                "url": f"https://x/?t={url}",
                SECRET: 1,
                "n": 2.5,
            }
        ).encode()
    )
    redacted = redact_result(value, Redactor([SECRET]))
    text = json.dumps(redacted)
    assert SECRET not in text and b64 not in text and url not in text
    assert redacted["plain"] == "token=***" and redacted["***"] == 1 and redacted["n"] == 2.5


def test_parse_result_rejects_infinity_constants() -> None:
    """Infinity and -Infinity are not JSON a Struct can carry."""
    for data in (b'{"x": Infinity}', b'{"x": -Infinity}'):
        with pytest.raises(ResultError):
            parse_result(data)


# a local run's work directory


def make_work(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    (work / "artifacts" / "sub").mkdir(parents=True)
    return work


def collect_dir(tmp_path: Path, work: Path, **caps: int) -> tuple[Any, list[Any], list[str]]:
    return collect_from_directory(work, RUN, settings(tmp_path, **caps), secrets=[SECRET])


def test_directory_collection_takes_only_regular_unlinked_files(tmp_path: Path) -> None:
    """Symlinks, hardlinks to host files, fifos and symlinked dirs are skipped; regular files kept."""
    work = make_work(tmp_path)
    host = tmp_path / "host-secret"
    host.write_text("host data")
    art = work / "artifacts"
    (art / "a.txt").write_bytes(b"alpha")
    (art / "sub" / "b.bin").write_bytes(b"\x00\x01")
    (art / "passwd").symlink_to("/etc/passwd")
    (art / "hostdir").symlink_to(tmp_path)
    os.link(host, art / "hard")
    os.mkfifo(art / "pipe")
    (work / "result.json").write_text('{"answer": 42}')
    result, files, warnings = collect_dir(tmp_path, work)
    assert result == {"answer": 42}
    assert {f.name: f.sha256 for f in files} == {
        "a.txt": hashlib.sha256(b"alpha").hexdigest(),
        "sub/b.bin": hashlib.sha256(b"\x00\x01").hexdigest(),
    }
    joined = "\n".join(warnings)
    assert "'passwd' skipped: a symlink" in joined and "'hostdir' skipped: a symlink" in joined
    assert "'hard' skipped: a hardlink" in joined and "'pipe' skipped: a fifo" in joined
    assert host.read_text() == "host data"


def test_directory_collection_refuses_a_symlinked_artifacts_dir(tmp_path: Path) -> None:
    """An artifacts directory replaced by a symlink to a host directory is not walked."""
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "host").mkdir()
    (tmp_path / "host" / "private").write_text("x")
    (work / "artifacts").symlink_to(tmp_path / "host")
    _, files, warnings = collect_dir(tmp_path, work)
    assert files == [] and len(warnings) == 1 and "cannot be opened" in warnings[0]


def test_directory_collection_ignores_a_linked_result_json(tmp_path: Path) -> None:
    """result.json as a symlink or a hardlink to a host file gives no result."""
    work = make_work(tmp_path)
    host = tmp_path / "host.json"
    host.write_text('{"host": true}')
    (work / "result.json").symlink_to(host)
    result, _, warnings = collect_dir(tmp_path, work)
    assert result is None and warnings == ["result.json ignored: it is a symlink"]
    (work / "result.json").unlink()
    os.link(host, work / "result.json")
    result, _, warnings = collect_dir(tmp_path, work)
    assert result is None and warnings == ["result.json ignored: it is a hardlink"]


def test_directory_collection_applies_count_and_size_caps(tmp_path: Path) -> None:
    """The same caps hold for a directory: count, per-file size."""
    work = make_work(tmp_path)
    for i in range(101):
        (work / "artifacts" / f"f{i:03}").write_bytes(b"x")
    (work / "artifacts" / "sub" / "big").write_bytes(b"y" * 5000)
    _, files, warnings = collect_dir(tmp_path, work, max_files=100, max_file_bytes=1000)
    assert len(files) == 100
    assert any("100 artifact files" in w for w in warnings), warnings
    assert all(f.size_bytes == 1 for f in files)


def test_directory_collection_stops_after_too_many_entries(tmp_path: Path) -> None:
    """Thousands of links spread over directories: a bounded walk, and the stop is reported."""
    work = make_work(tmp_path)
    for d in range(3):
        sub = work / "artifacts" / f"d{d}"
        sub.mkdir()
        for i in range(60):
            (sub / f"l{i}").symlink_to("/etc/passwd")
    _, files, warnings = collect_dir(tmp_path, work, max_files=1)
    assert files == []
    stops = [w for w in warnings if "entries under the artifacts directory" in w]
    assert stops == [
        "more than 110 entries under the artifacts directory; the remaining artifacts were not collected"
    ]
    assert len(warnings) == 22 and warnings[-1].startswith("... and ")


def test_artifact_storage_defaults_under_the_work_dir(tmp_path: Path) -> None:
    """With no storage_dir configured, artifacts go to <work_dir>/artifacts."""
    settings_ = ExecutorSettings(work_dir=str(tmp_path / "w"))
    assert settings_.artifacts.storage_dir == str(tmp_path / "w" / "artifacts")
    explicit = ExecutorSettings(artifacts=ArtifactSettings(storage_dir="/srv/a"))
    assert explicit.artifacts.storage_dir == "/srv/a"
