"""RunEvent subjects: the type as the last token, and the scheduler's filters."""

from __future__ import annotations

from runbox.events.v1 import events_pb2
from shared.run_subjects import SCHEDULER_APPLIES, run_filters, run_subject

ET = events_pb2


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching ('*' one token, '>' the rest)."""
    want, got = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(got) > i
        if i >= len(got) or (token != "*" and token != got[i]):
            return False
    return len(want) == len(got)


def test_each_type_has_its_token() -> None:
    assert run_subject("p", "r1", ET.RUN_EVENT_TYPE_SUBMITTED) == "p.run.r1.submitted"
    assert run_subject("p", "r1", ET.RUN_EVENT_TYPE_QUEUED) == "p.run.r1.queued"
    assert run_subject("p", "r1", ET.RUN_EVENT_TYPE_DEAD_LETTERED) == "p.run.r1.dead_lettered"
    assert run_subject("p", "r1", 99) == "p.run.r1.99"  # a newer producer's type


def test_scheduler_filters_take_what_it_applies_and_old_subjects() -> None:
    filters = run_filters("runbox.events", SCHEDULER_APPLIES)
    taken = {
        kind
        for kind in ET.RunEventType.values()
        if any(_matches(f, run_subject("runbox.events", "r1", kind)) for f in filters)
    }
    assert taken == {
        ET.RUN_EVENT_TYPE_STARTED,
        ET.RUN_EVENT_TYPE_LOG,
        ET.RUN_EVENT_TYPE_HEARTBEAT,
        ET.RUN_EVENT_TYPE_FINISHED,
    }
    # A producer before 0.4.0 (no type token): every event is taken, as before.
    assert any(_matches(f, "runbox.events.run.r1") for f in filters)
    # Nothing else of the stream.
    assert not any(_matches(f, "runbox.events.schedule.s1") for f in filters)
    # Filters of one consumer must not overlap (nats-server refuses them).
    for i, a in enumerate(filters):
        for b in filters[i + 1 :]:
            assert not _matches(a, b.replace("*", "x")) and not _matches(b, a.replace("*", "x"))
