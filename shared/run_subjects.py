"""The subjects of RunEvents: `<prefix>.run.<run_id>.<type>`, the event's type as its last
token (`submitted`, `queued`, `started`, `log`, `heartbeat`, `finished`, `retried`,
`dead_lettered`), so a consumer can take only the types it needs by its filter subjects
(the scheduler's: `SCHEDULER_APPLIES`) while one that wants them all still subscribes
`<prefix>.run.>` (or `<prefix>.>`).

Up to 0.2.0 every RunEvent of a run went on `<prefix>.run.<run_id>` (no type token): a
producer not yet upgraded still publishes there, so the scheduler's filters keep
`<prefix>.run.*` (docs/upgrades.md).

From 0.3.0 an event the scheduler already applied from the run link (an executor's
ExecutorService.Link) goes on `<prefix>.run.<run_id>.<type>.applied` (`APPLIED`): still in
the stream for every other reader (alerting's `<prefix>.>`), outside the scheduler's filters."""

from __future__ import annotations

from collections.abc import Iterable

from runbox.events.v1 import events_pb2

ET = events_pb2.RunEventType


def _token(kind: int) -> str:
    try:
        return ET.Name(kind).removeprefix("RUN_EVENT_TYPE_").lower()  # type: ignore[arg-type]
    except ValueError:  # a type this build does not know (a newer producer's)
        return str(kind)


# Built once: one dict lookup per event published.
TOKENS: dict[int, str] = {kind: _token(kind) for kind in ET.values()}

# The types the scheduler's consumer applies: what an executor reports that the scheduler
# does not know otherwise. Not its own events (SUBMITTED, RETRIED, DEAD_LETTERED; its own
# FINISHED of a cancelled, failed or lost run shares the executor's token and comes back
# to it, ignored, as before), and not QUEUED: the Execute answer that accepted a run says
# the same (executor id, accepted), recorded in the transaction that marks it dispatched;
# when that answer is lost, the run's heartbeats (state QUEUED, every 5 s), its STARTED
# and the dispatch round's idempotent repeat of Execute to the same executor move it.
SCHEDULER_APPLIES: tuple[int, ...] = (
    events_pb2.RUN_EVENT_TYPE_STARTED,
    events_pb2.RUN_EVENT_TYPE_LOG,
    events_pb2.RUN_EVENT_TYPE_HEARTBEAT,
    events_pb2.RUN_EVENT_TYPE_FINISHED,
)


# The suffix of the subject of an event the scheduler applied over the run link.
APPLIED = ".applied"


def run_subject(prefix: str, run_id: str, kind: int) -> str:
    """The subject of a run's event of type `kind`."""
    token = TOKENS.get(kind)
    return f"{prefix}.run.{run_id}.{token if token is not None else _token(kind)}"


def run_filters(prefix: str, kinds: Iterable[int]) -> list[str]:
    """Filter subjects for the RunEvents of types `kinds`, and for every RunEvent on the
    subject of producers of 0.2.0 and earlier (`<prefix>.run.<run_id>`, types not told apart)."""
    return [f"{prefix}.run.*", *(f"{prefix}.run.*.{TOKENS[kind]}" for kind in kinds)]
