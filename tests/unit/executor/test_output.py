"""Output budget, redaction and trailer parsing: pure logic."""

from __future__ import annotations

import base64
import urllib.parse

from hypothesis import given
from hypothesis import strategies as st

from services.executor.capture import StreamCapture
from services.executor.output import OutputBuffer, Redactor
from services.executor.runners.protocol import TrailerSplitter


def test_output_within_budget_is_kept_whole() -> None:
    """Output under the budget is returned unchanged and not marked truncated."""
    buf = OutputBuffer(100)
    buf.write(b"a" * 40)
    buf.write(b"b" * 40)
    assert buf.value() == b"a" * 40 + b"b" * 40
    assert not buf.truncated


def test_output_over_budget_keeps_head_and_tail_with_marker() -> None:
    """Past the budget the head and tail survive and the gap is stated."""
    buf = OutputBuffer(20)
    for i in range(100):
        buf.write(bytes([65 + i % 26]) * 10)
    value = buf.value()
    assert buf.truncated and buf.total == 1000
    assert value.startswith(b"A" * 10 + b"\n[...")
    assert value.endswith(b"V" * 10)
    assert b"980 bytes truncated" in value


def test_redactor_covers_raw_base64_and_url_forms() -> None:
    """Every encoding of a secret is replaced."""
    secret = "p@ss/word 1"
    red = Redactor([secret])
    text = b" ".join(
        [
            secret.encode(),
            base64.b64encode(secret.encode()),
            urllib.parse.quote(secret, safe="").encode(),
            urllib.parse.quote_plus(secret).encode(),
        ]
    )
    assert red(text) == b"*** *** *** ***"


@given(st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=30))
def test_secret_split_across_reads_is_still_redacted(sizes: list[int]) -> None:
    """However output is chunked, a secret never survives capture."""
    secret = "topsecret-value"
    data = (b"x" * 5 + secret.encode() + b"y" * 3) * 3
    capture = StreamCapture(Redactor([secret]), budget=10_000)
    pos = 0
    for size in sizes * 20:
        if pos >= len(data):
            break
        capture.feed(data[pos : pos + size])
        pos += size
    capture.feed(data[pos:])
    capture.close()
    value = capture.summary()[0]
    assert secret.encode() not in value
    assert value == (b"x" * 5 + b"***" + b"y" * 3) * 3


def test_trailer_is_cut_from_stdout() -> None:
    """The agent's usage trailer is removed from stdout and parsed."""
    splitter = TrailerSplitter("abc123")
    emitted = splitter.feed(b"x" * 5000) + splitter.feed(b"end\n\nabc123" + b'{"exit_code": 3}\n')
    rest, trailer = splitter.finish()
    assert emitted + rest == b"x" * 5000 + b"end\n"
    assert trailer == {"exit_code": 3}
