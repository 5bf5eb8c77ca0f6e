"""Scheduler settings (RUNBOX_ prefix, nested with __)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from shared.settings import DatabaseSettings, ServiceSettings


class ClientSettings(BaseModel):
    """Where another Runbox service listens."""

    address: str = "127.0.0.1:50051"
    timeout_s: float = 10.0


class SchedulerSettings(ServiceSettings):
    """Settings of the scheduler service."""

    database: DatabaseSettings = Field(
        default_factory=lambda: DatabaseSettings(url="sqlite+aiosqlite:///var/scheduler.db")
    )
    catalogue: ClientSettings = Field(default_factory=ClientSettings)
    # How long a script's resolution and parameter validation may be reused for runs and fires
    # with the same inputs; the catalogue's ScriptEvents drop it at once (0 = ask every time).
    catalogue_cache_ttl_s: float = Field(default=30.0, ge=0, le=3600)
    # How a submit naming no exact version ("latest", a range) sees a version published just
    # before it (docs/scheduler.md, "Read-your-writes without a catalogue call"): "nats" by
    # the catalogue's change notes and a NATS flush (needs the catalogue and this scheduler
    # on one nats-server); "rpc" by a ResolveVersion call per submit; "auto": "nats" unless
    # the server is clustered or several are configured.
    catalogue_read_your_writes: Literal["auto", "nats", "rpc"] = "auto"
    # Executor addresses (JSON list in RUNBOX_EXECUTORS), and/or a DNS name (host:port) whose
    # addresses are all executors, resolved again every executors_dns_refresh_s.
    executors: list[str] = Field(default_factory=list)
    executors_dns: str = ""
    executors_dns_refresh_s: float = Field(default=10.0, gt=0)
    # Most runs held by executors at once (0 = no limit): in all, per script, and per script
    # by name (JSON object in RUNBOX_SCRIPT_MAX_ACTIVE_RUNS).
    max_active_runs: int = Field(default=0, ge=0, le=1_000_000)
    max_active_runs_per_script: int = Field(default=0, ge=0, le=1_000_000)
    script_max_active_runs: dict[str, Annotated[int, Field(ge=0, le=1_000_000)]] = Field(
        default_factory=dict
    )
    dispatch_interval_s: float = 1.0
    # How long a replica's dispatch round holds the runs it took (longer than an Execute call).
    dispatch_claim_s: float = Field(default=30.0, gt=0, le=3600)
    # How long a run with secret parameters waits for the replica holding their values.
    secret_handoff_grace_s: float = Field(default=30.0, ge=0, le=3600)
    # Runs claimed per dispatch round, and Execute calls in flight at once within one.
    dispatch_batch: int = Field(default=1000, ge=1, le=10_000)
    dispatch_parallel: int = Field(default=16, ge=1, le=1000)
    # Backoff for an executor that answered RESOURCE_EXHAUSTED / UNAVAILABLE.
    executor_backoff_s: float = 0.5
    executor_backoff_max_s: float = 10.0
    # A run link (ExecutorService.Link) to each executor: Execute and the runs' events go
    # over it rather than unary calls and JetStream deliveries (docs/scheduler.md, "The run
    # link"); off: unary Execute and JetStream only, as before 0.3.0.
    run_links: bool = True
    watch_poll_s: float = 1.0
    # Schedule firing (docs/scheduler.md, "Schedules and fires"): how often due schedules are
    # looked for (a schedule change wakes the loop at once); how late a fire may be claimed
    # and still count as on time rather than missed; the catch-up window of schedules without
    # catch_up_deadline; and the bounds of one tick.
    fire_tick_s: float = Field(default=0.5, gt=0, le=60)
    misfire_grace_s: float = Field(default=15.0, ge=0, le=3600)
    catch_up_default_window_s: float = Field(default=3600.0, ge=0, le=7 * 86400)
    fire_batch: int = Field(default=500, ge=1, le=100_000)
    fires_per_schedule_per_tick: int = Field(default=100, ge=1, le=100_000)
    fire_lookahead_s: float = Field(default=30.0, ge=0, le=300)
    # Fires of ALLOW schedules due within this are recorded ahead, their runs SCHEDULED until
    # due (capped by the lookahead); 0: every fire is recorded at its time. 25 s: at 10,000
    # fires a minute, Execute received p99 13.3 s vs 23.4 s at 5 s (docs/benchmarks.md).
    fire_ahead_s: float = Field(default=25.0, ge=0, le=300)
    # A fire recorded ahead is claimed and sent at its due second by the replica that recorded
    # it; what that replica's memory lost goes to dispatch rounds this long after its time.
    fire_handover_grace_s: float = Field(default=2.0, ge=0, le=60)
    # A QUEUED or RUNNING run whose executor sent nothing (heartbeat, log, state) for this long
    # ends LOST: 3 x the executor's default heartbeat interval (5 s) + 5 s for delivery lag.
    # Keep it above 3 x the executors' RUNBOX_HEARTBEAT_INTERVAL_S.
    lease_s: float = Field(default=20.0, gt=0, le=86400)
    lease_sweep_interval_s: float = Field(default=1.0, gt=0, le=300)
    # How long the durable consumer "scheduler" waits for an event's ack before delivering it
    # again (applies when the consumer is created). After a restart the lease sweeper waits
    # lease_s + this before its first sweep: events a killed process held unacked come back
    # by then (docs/scheduler.md, "Leases").
    events_ack_wait_s: float = Field(default=30.0, gt=0, le=3600)
    # TEST ONLY, off (empty) by default: a file path; the event consumer writes the run id of
    # the first FINISHED event it receives there and then holds it forever, unapplied and
    # unacked (tests/e2e/test_scheduler_faults.py kills the process at that point).
    fault_hold_finished_file: str = ""
    # A script whose last `quarantine_failures` runs all failed within the window is quarantined
    # (its PENDING runs wait until ReleaseQuarantine); 0 turns quarantine off.
    quarantine_failures: int = Field(default=5, ge=0, le=1000)
    quarantine_window_s: float = Field(default=600.0, gt=0)
