"""The scheduler's method -> permission map."""

from __future__ import annotations

from runbox.scheduler.v1 import scheduler_pb2
from services.scheduler.server import PERMISSIONS, SERVICE
from shared.auth import PERMISSIONS as KNOWN


def test_every_method_needs_known_permissions_and_submit_and_watch_needs_both() -> None:
    """Each RPC of SchedulerService is in the map (none closed by omission), every name in it
    is a real permission, and SubmitAndWatchRun needs what SubmitRun and WatchRun need."""
    methods = scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].methods
    assert set(PERMISSIONS) == {f"/{SERVICE}/{m.name}" for m in methods}
    for needs in PERMISSIONS.values():
        assert set((needs,) if isinstance(needs, str) else needs) <= KNOWN
    assert PERMISSIONS[f"/{SERVICE}/SubmitAndWatchRun"] == (
        PERMISSIONS[f"/{SERVICE}/SubmitRun"],
        PERMISSIONS[f"/{SERVICE}/WatchRun"],
    )
