"""Catalogue and scheduler wired both ways (RUNBOX_SCHEDULER__ADDRESS): a script
used by a live schedule cannot be soft-deleted unless forced by script:manage."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from cli import natsd
from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from runbox.common.v1 import common_pb2
from runbox.scheduler.v1 import scheduler_pb2 as pb
from runbox.scheduler.v1 import scheduler_pb2_grpc
from services.catalogue.config import CatalogueSettings
from services.catalogue.server import build as build_catalogue
from services.scheduler.config import SchedulerSettings
from services.scheduler.server import build as build_scheduler
from shared.clients import open_channel
from shared.runtime import Running, build_runtime, launch
from tests.integration.helpers import settings_for


@dataclass
class Linked:
    """A catalogue that asks the scheduler, and a scheduler that asks the catalogue."""

    tokens: Any
    catalogue: Running
    scheduler: Running
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def _channel(self, address: str, token: str) -> grpc.aio.Channel:
        channel = open_channel(address, token=token)
        self.channels.append(channel)
        return channel

    def catalogue_stub(self, token: str) -> catalogue_pb2_grpc.CatalogueServiceStub:
        return catalogue_pb2_grpc.CatalogueServiceStub(self._channel(self.catalogue.address, token))

    def scheduler_stub(self) -> scheduler_pb2_grpc.SchedulerServiceStub:
        channel = self._channel(self.scheduler.address, self.tokens.admin)
        return scheduler_pb2_grpc.SchedulerServiceStub(channel)


def _with(settings: Any, cls: type, **overrides: Any) -> Any:
    return cls.model_validate(settings.model_dump() | overrides)


@pytest.fixture
async def linked(tmp_path: Path, nats_server: Any, tokens: Any) -> AsyncIterator[Linked]:
    # The scheduler's port is picked first so the catalogue can be told where it is.
    scheduler_port = natsd.free_port()
    auth = {"principals_file": str(tokens.principals_file), "service_token": tokens.service}
    common = {"nats_url": nats_server.url, "principals_file": tokens.principals_file}
    catalogue_settings = settings_for(
        CatalogueSettings,
        tmp_path,
        "catalogue",
        blob_dir=str(tmp_path / "blobs"),
        scheduler={"address": f"127.0.0.1:{scheduler_port}"},
        **common,
    )
    catalogue = await launch(
        build_runtime("catalogue", _with(catalogue_settings, CatalogueSettings, auth=auth)),
        build_catalogue,
    )
    scheduler_settings = settings_for(
        SchedulerSettings,
        tmp_path,
        "scheduler",
        catalogue={"address": catalogue.address},
        **common,
    )
    scheduler_settings = _with(
        scheduler_settings,
        SchedulerSettings,
        auth=auth,
        grpc={"host": "127.0.0.1", "port": scheduler_port},
    )
    scheduler = await launch(build_runtime("scheduler", scheduler_settings), build_scheduler)
    stack = Linked(tokens, catalogue, scheduler)
    yield stack
    for channel in stack.channels:
        await channel.close()
    await scheduler.stop()
    await catalogue.stop()


async def publish(stack: Linked, name: str) -> None:
    stub = stack.catalogue_stub(stack.tokens.admin)
    await stub.CreateScript(
        catalogue_pb2.CreateScriptRequest(
            script=catalogue_pb2.Script(name=name, execution_type=common_pb2.EXECUTION_TYPE_PYTHON)
        )
    )
    data = b"print('report')\n"
    await stub.PublishVersion(
        catalogue_pb2.PublishVersionRequest(
            script_name=name, version="1.0.0", content=data, sha256=hashlib.sha256(data).hexdigest()
        )
    )


async def schedule_for(stack: Linked, script: str) -> pb.Schedule:
    return await stack.scheduler_stub().CreateSchedule(
        pb.CreateScheduleRequest(
            schedule=pb.Schedule(
                name=f"{script}-nightly",
                script=common_pb2.ScriptRef(name=script),
                trigger=pb.Trigger(cron=pb.CronSpec(expression="0 2 * * *")),
                time_zone="Europe/Paris",
            )
        )
    )


async def delete_fails(stack: Linked, name: str, token: str, code: grpc.StatusCode) -> str:
    stub = stack.catalogue_stub(token)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.DeleteScript(catalogue_pb2.DeleteScriptRequest(name=name))
    assert err.value.code() == code, err.value.details()
    return err.value.details() or ""


async def test_delete_refused_while_schedule_exists_even_paused_then_forced(
    linked: Linked,
) -> None:
    """DeleteScript names the schedule (active or paused); force needs script:manage and works."""
    await publish(linked, "report")
    schedule = await schedule_for(linked, "report")
    precondition = grpc.StatusCode.FAILED_PRECONDITION
    details = await delete_fails(linked, "report", linked.tokens.editor, precondition)
    assert "report-nightly" in details and schedule.id in details
    await linked.scheduler_stub().PauseSchedule(pb.PauseScheduleRequest(id=schedule.id))
    details = await delete_fails(linked, "report", linked.tokens.editor, precondition)
    assert schedule.id in details
    editor = linked.catalogue_stub(linked.tokens.editor)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await editor.DeleteScript(catalogue_pb2.DeleteScriptRequest(name="report", force=True))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    admin = linked.catalogue_stub(linked.tokens.admin)
    deleted = await admin.DeleteScript(catalogue_pb2.DeleteScriptRequest(name="report", force=True))
    assert deleted.name == "report"


async def test_delete_works_once_the_schedule_is_deleted(linked: Linked) -> None:
    """After DeleteSchedule, a plain DeleteScript by script:delete succeeds."""
    await publish(linked, "cleanup")
    schedule = await schedule_for(linked, "cleanup")
    await delete_fails(linked, "cleanup", linked.tokens.editor, grpc.StatusCode.FAILED_PRECONDITION)
    await linked.scheduler_stub().DeleteSchedule(pb.DeleteScheduleRequest(id=schedule.id))
    editor = linked.catalogue_stub(linked.tokens.editor)
    deleted = await editor.DeleteScript(catalogue_pb2.DeleteScriptRequest(name="cleanup"))
    assert deleted.name == "cleanup"


async def test_schedules_of_other_scripts_do_not_block(linked: Linked) -> None:
    """Only schedules of the deleted script count."""
    await publish(linked, "kept")
    await publish(linked, "dropped")
    await schedule_for(linked, "kept")
    editor = linked.catalogue_stub(linked.tokens.editor)
    deleted = await editor.DeleteScript(catalogue_pb2.DeleteScriptRequest(name="dropped"))
    assert deleted.name == "dropped"
