"""The three services of the run path in-process (real gRPC on port 0, real
SQLite, real nats-server), for integration tests."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from runbox.common.v1 import common_pb2
from runbox.scheduler.v1 import scheduler_pb2_grpc
from services.catalogue.config import CatalogueSettings
from services.catalogue.server import build as build_catalogue
from services.executor.config import ExecutorSettings
from services.executor.server import build as build_executor
from services.scheduler.config import SchedulerSettings
from services.scheduler.server import build as build_scheduler
from shared.clients import open_channel
from shared.runtime import Running, build_runtime, launch
from tests.integration.helpers import settings_for


@dataclass
class RunPath:
    """catalogue + executor + scheduler, and clients for them."""

    tmp: Path
    nats_url: str
    tokens: Any
    catalogue: Running
    executor: Running | None
    scheduler: Running
    channels: list[grpc.aio.Channel]
    # Scheduler settings beyond the defaults, kept for restarts.
    scheduler_settings: dict[str, Any] = field(default_factory=dict)

    def scheduler_stub(self, token: str | None = None) -> scheduler_pb2_grpc.SchedulerServiceStub:
        channel = open_channel(self.scheduler.address, token=token or self.tokens.admin)
        self.channels.append(channel)
        return scheduler_pb2_grpc.SchedulerServiceStub(channel)

    async def publish(
        self,
        name: str,
        content: str,
        params: list[Any] | None = None,
        kind: int = common_pb2.EXECUTION_TYPE_PYTHON,
        version: str = "1.0.0",
    ) -> None:
        async with open_channel(self.catalogue.address, token=self.tokens.admin) as channel:
            stub = catalogue_pb2_grpc.CatalogueServiceStub(channel)
            try:
                await stub.CreateScript(
                    catalogue_pb2.CreateScriptRequest(
                        script=catalogue_pb2.Script(name=name, execution_type=kind)
                    )
                )
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.ALREADY_EXISTS
            data = content.encode()
            await stub.PublishVersion(
                catalogue_pb2.PublishVersionRequest(
                    script_name=name,
                    version=version,
                    content=data,
                    sha256=hashlib.sha256(data).hexdigest(),
                    parameters=params or [],
                )
            )

    async def restart_scheduler(self, pause_s: float = 0.0) -> None:
        """Stop the scheduler, wait, and start a new one on the same database."""
        await self.scheduler.stop()
        await asyncio.sleep(pause_s)
        self.scheduler = await start_scheduler(
            self.tmp,
            self.nats_url,
            self.tokens,
            self.catalogue,
            self.executor,
            **self.scheduler_settings,
        )

    async def restart_scheduler_with(self, **settings: Any) -> None:
        """Restart the scheduler with these settings changed (kept for later restarts)."""
        self.scheduler_settings.update(settings)
        await self.restart_scheduler()

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
        await self.scheduler.stop()
        if self.executor is not None:
            await self.executor.stop()
        await self.catalogue.stop()


def _common(tmp: Path, name: str, nats_url: str, tokens: Any, cls: type, **extra: Any) -> Any:
    return settings_for(
        cls, tmp, name, nats_url=nats_url, principals_file=tokens.principals_file, **extra
    )


async def start_scheduler(
    tmp: Path,
    nats_url: str,
    tokens: Any,
    catalogue: Running,
    executor: Running | None,
    **extra: Any,
) -> Running:
    """A scheduler on the catalogue and executor; `extra`: more of its settings."""
    defaults: dict[str, Any] = {
        "catalogue": {"address": catalogue.address},
        "executors": [executor.address] if executor else [],
        "dispatch_interval_s": 0.2,
        "watch_poll_s": 0.2,
        "executor_backoff_s": 0.2,
    }
    # settings_for sets these two itself: given here, they replace its values.
    replaced = {k: extra.pop(k) for k in ("database", "instance_id") if k in extra}
    settings = _common(tmp, "scheduler", nats_url, tokens, SchedulerSettings, **(defaults | extra))
    auth = {"principals_file": str(tokens.principals_file), "service_token": tokens.service}
    settings = SchedulerSettings.model_validate(settings.model_dump() | {"auth": auth} | replaced)
    return await launch(build_runtime("scheduler", settings), build_scheduler)


async def start_executor(
    tmp: Path,
    nats_url: str,
    tokens: Any,
    catalogue: Running,
    *,
    name: str = "executor",
    **extra: Any,
) -> Running:
    """An executor on the local backend (`name` keeps its files apart from another's)."""
    auth = {"principals_file": str(tokens.principals_file), "service_token": tokens.service}
    settings = _common(
        tmp,
        name,
        nats_url,
        tokens,
        ExecutorSettings,
        **{
            "sandbox": {"backend": "local", "timeout_s": 30, "allow_unsandboxed": True},
            "work_dir": str(tmp / ("work" if name == "executor" else f"work-{name}")),
            "catalogue": {"address": catalogue.address},
            **extra,
        },
    )
    settings = ExecutorSettings.model_validate(settings.model_dump() | {"auth": auth})
    return await launch(build_runtime("executor", settings), build_executor)


async def start_run_path(
    tmp: Path,
    nats_url: str,
    tokens: Any,
    *,
    with_executor: bool = True,
    executor: dict[str, Any] | None = None,
    catalogue: dict[str, Any] | None = None,
    scheduler: dict[str, Any] | None = None,
) -> RunPath:
    catalogue_settings = _common(
        tmp,
        "catalogue",
        nats_url,
        tokens,
        CatalogueSettings,
        blob_dir=str(tmp / "blobs"),
        **(catalogue or {}),
    )
    running_catalogue = await launch(
        build_runtime("catalogue", catalogue_settings), build_catalogue
    )
    running_executor = None
    if with_executor:
        running_executor = await start_executor(
            tmp, nats_url, tokens, running_catalogue, **(executor or {})
        )
    running = await start_scheduler(
        tmp, nats_url, tokens, running_catalogue, running_executor, **(scheduler or {})
    )
    return RunPath(
        tmp,
        nats_url,
        tokens,
        running_catalogue,
        running_executor,
        running,
        [],
        dict(scheduler or {}),
    )
