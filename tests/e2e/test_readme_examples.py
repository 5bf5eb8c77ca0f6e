"""The README's "Templates and alerts against this machine" section, run as printed: its
settings file, its `runbox up` line, its template and alerting commands, against a webhook
receiver and ports on loopback."""

from __future__ import annotations

import json
import re
import shlex
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from services.alerting.channels import verify_signature
from tests.conftest import docker_available, require, sandbox_image_available
from tests.e2e import user_shell
from tests.e2e.user_shell import REPO

# The receiver the README's alert example names, and a port its scan finds closed.
HOOK_PORT, CLOSED_PORT = 8099, 8443
_BLOCK = re.compile(r"<!-- readme-test: (\w+)[^>]*-->\n```\w*\n(.*?)```", re.S)


def readme_blocks() -> dict[str, str]:
    """The README's fenced blocks marked `<!-- readme-test: NAME -->`, by NAME."""
    return dict(_BLOCK.findall((REPO / "README.md").read_text()))


def commands(block: str) -> list[str]:
    """A block's shell lines, without blank lines and comments after the command."""
    lines = [line.split("  #", 1)[0].rstrip() for line in block.splitlines()]
    return [line for line in lines if line]


@dataclass
class Receiver:
    """A webhook receiver on loopback recording each POST (headers and body)."""

    server: ThreadingHTTPServer
    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    posts: list[tuple[dict[str, str], bytes]] = []
    arrived = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            posts.append((dict(self.headers.items()), body))
            arrived.set()
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    try:
        server = ThreadingHTTPServer(("127.0.0.1", HOOK_PORT), Handler)
    except OSError as exc:
        pytest.fail(f"the README's receiver port 127.0.0.1:{HOOK_PORT} is taken: {exc}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Receiver(server, posts, arrived)
    server.shutdown()
    server.server_close()


def _port_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.timeout(420)
def test_readme_template_and_alert_examples_work_on_loopback(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Scan finds the receiver's port open; a failed run reaches it as a signed alert."""
    require(docker_available() and sandbox_image_available(), "Docker and the sandbox image")
    blocks = readme_blocks()
    assert {"settings", "up", "template", "alert"} <= set(blocks), sorted(blocks)
    (tmp_path / "local.yaml").write_text(blocks["settings"])
    env = user_shell.user_env() | {
        "PATH": f"{REPO / '.venv' / 'bin'}:{user_shell.user_env()['PATH']}",  # activated
        "PYTHONPATH": str(REPO),
        "COLUMNS": "160",  # a terminal's width, not a pipe's 80: tables keep their names
    }
    (up_line,) = commands(blocks["up"])
    up = user_shell.start(shlex.split(up_line), tmp_path / "up.log", cwd=tmp_path, env=env)
    try:
        up.wait_for(user_shell.HINT_END, timeout=120)
        ran = user_shell.run_shell(commands(blocks["template"]), cwd=tmp_path, env=env)
        _check_scan(ran)
        alert = commands(blocks["alert"])
        # After the README's lines: keep the secret the shell made, to check the signature.
        ran = user_shell.run_shell(
            [*alert, 'printf %s "$HOOK_SECRET" > hook.secret'], tmp_path, env
        )
        codes = [ran[c].code for c in alert]
        assert codes == [0, 0, 0, 0, 0, 3, 0], {c: ran[c] for c in alert}
        assert "-> FAILED" in ran["runbox run fail --follow"].output
        assert receiver.arrived.wait(60), "no notification reached the receiver"
        headers, body = receiver.posts[0]
        secret = (tmp_path / "hook.secret").read_text()
        assert verify_signature(secret, headers["X-Runbox-Signature"], body)
        notice = json.loads(body)
        assert notice["rule_name"] == "fail-failed"
        assert "fail" in notice["title"] + notice["text"]
        listed = ran["runbox alert list"].output
        assert "FIRING" in listed and "of fail ended FAILED" in listed
    finally:
        if up.proc.poll() is None:
            up.proc.send_signal(signal.SIGINT)
        code = up.proc.wait(60)
    assert code == 0, up.text()[-4000:]


def _check_scan(ran: dict[str, user_shell.Ran]) -> None:
    """The template's run found the receiver's port open (and the other closed)."""
    assert all(r.code == 0 for r in ran.values()), ran
    run = next(r for c, r in ran.items() if c.startswith("runbox run scan-lab"))
    assert "-> SUCCEEDED" in run.output
    report = json.loads(run.output[run.output.index("--- stdout ---") + 14 :].split("\n---")[0])
    states = {r["port"]: r["state"] for r in report["results"] if r["host"] == "127.0.0.1"}
    assert states[HOOK_PORT] == "open"
    if _port_closed(CLOSED_PORT):
        assert states[CLOSED_PORT] == "closed"
