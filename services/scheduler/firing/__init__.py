"""Firing: turns due schedules into runs, exactly once per (schedule, nominal time).

Each round takes up to `batch` ACTIVE schedules whose `next_fire_at` has passed and
records the next due nominal time of each, all in one transaction: per nominal time
the fire row (primary key (schedule id, nominal time)), the run it creates (its
idempotency key is `schedule:<id>:<nominal time>`, also unique), the schedule's
advanced `next_fire_at` and the events in the outbox commit together or not at all.
A second claim of the same nominal time, by a racing loop, a restarted scheduler or
another replica, fails on a key and creates nothing (the round is then redone one
schedule at a time, so the others still fire).

The schedule rows are taken with SELECT ... FOR UPDATE SKIP LOCKED on servers that
have it, so replicas share due schedules instead of queueing on one; on SQLite (one
replica) it is a plain read and the keys alone decide.

Each fire's script and stored parameters are checked through the catalogue client,
whose answers are cached until the catalogue publishes a change to the script (see
catalogue.py); a lookahead warms that cache, the parsed schedules and their next
times for fires due in the next seconds, so a round seldom waits on the network. A
fire whose parameters no longer validate, or whose script is gone, is recorded SKIPPED
with the reason. An unreachable catalogue leaves the fire due: it is retried on the
next tick.

Missed fires (nominal time older than the grace) follow the schedule's
catch-up policy; fires older than its catch-up deadline are one MISSED row
that counts them. Policies are documented in docs/scheduler.md.

The package, by responsibility:
- planning.py: pure decisions (plan, jitter, run keys, catch-up counting); no I/O.
- bases.py: what the fires of one version of a schedule share, cached.
- events.py: the one builder of a fire's events.
- records.py: the materialisation path (bulk and general inserts).
- loop.py: the firing loop (rounds, the lookahead).
- run_end.py: run-end handling (queued fires released, failure actions).
"""

from services.scheduler.firing.loop import FiresFirst, Firing
from services.scheduler.firing.planning import (
    ACTIVE_STATES,
    FAILED_STATES,
    HELD_UNTIL,
    FiringSettings,
    Plan,
    count_expired,
    iso,
    jitter,
    plan,
    run_key,
)

__all__ = [
    "ACTIVE_STATES",
    "FAILED_STATES",
    "HELD_UNTIL",
    "FiresFirst",
    "Firing",
    "FiringSettings",
    "Plan",
    "count_expired",
    "iso",
    "jitter",
    "plan",
    "run_key",
]
