"""The run link (ExecutorService.Link, docs/scheduler.md "The run link"): Execute over it
answers exactly as the unary Execute; a run's events come back over it, are applied and
acked, and reach JetStream on `.applied` subjects (alerting still reads them); a link
dropped on either side leaves the run to JetStream; an executor without Link gets unary
Execute; Link needs the execute permission."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest

from runbox.common.v1 import common_pb2
from runbox.events.v1 import events_pb2
from runbox.executor.v1 import executor_pb2, executor_pb2_grpc
from runbox.scheduler.v1 import scheduler_pb2
from services.alerting.events import parse
from services.executor import server as executor_server
from services.executor.link import Links
from services.scheduler import server as scheduler_server
from services.scheduler.link import Applier, ExecutorLink, RunLinks
from shared.clients import bearer, open_channel, open_stream_channel
from shared.run_subjects import APPLIED
from shared.status import from_rpc_error
from tests.integration.scheduler.test_run_event_subjects import PREFIX, eventually
from tests.integration.scheduler.test_runs import submit_request, wait_terminal
from tests.integration.stack import start_executor, start_run_path

RS = common_pb2
ET = events_pb2
SLOW = b"import time\ntime.sleep(2)\n"


@pytest.fixture
async def js(nats_server: Any) -> AsyncIterator[Any]:
    nc = await nats.connect(nats_server.url)
    yield nc.jetstream()
    await nc.close()


async def _subjects(js: Any, run_id: str, want: int, wait_s: float = 20) -> dict[str, str]:
    """Event type token -> subject of the run's events in the stream, once `want` are there."""

    async def read() -> dict[str, str]:
        sub = await js.subscribe(f"{PREFIX}.run.{run_id}.>", ordered_consumer=True)
        found: dict[str, str] = {}
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=0.5)
                except TimeoutError:
                    return found
                found[msg.subject.split(".")[4]] = msg.subject
        finally:
            await sub.unsubscribe()

    return await eventually(read, lambda found: len(found) >= want, wait_s)  # type: ignore[no-any-return]


def _request(run_id: str, **fields: Any) -> executor_pb2.ExecuteRequest:
    return executor_pb2.ExecuteRequest(
        run_id=run_id,
        attempt=1,
        script_name="slow",
        script_version="1",
        execution_type=RS.EXECUTION_TYPE_PYTHON,
        **fields,
    )


class _Events:
    """An Applier's apply that records what it was given."""

    def __init__(self) -> None:
        self.events: list[events_pb2.RunEvent] = []

    async def __call__(self, events: list[events_pb2.RunEvent]) -> None:
        self.events.extend(events)


async def _link(address: str, token: str, events: _Events) -> tuple[ExecutorLink, Any]:
    channel = open_channel(address, token=token)
    applier = Applier(events)
    applier.start()
    link = ExecutorLink(executor_pb2_grpc.ExecutorServiceStub(channel), "test", applier)
    link.start()
    return link, (channel, applier)


async def _outcome(call: Any) -> tuple[Any, ...]:
    """What a caller sees of an Execute: the reply's fields, or the error as mapped back."""
    try:
        reply = await call
    except grpc.aio.AioRpcError as exc:
        error = from_rpc_error(exc)
        return (exc.code(), exc.details(), type(error), getattr(error, "violations", None))
    return (reply.run_id, reply.executor_id, reply.newly_accepted, reply.accepted_at)


async def test_execute_over_the_link_answers_as_unary_execute(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """Accept, idempotent repeat, INVALID_ARGUMENT, FAILED_PRECONDITION (with its subjects)
    and RESOURCE_EXHAUSTED (with its quota details): the same over the link as unary."""
    path = await start_run_path(
        tmp_path,
        nats_server.url,
        tokens,
        executor={"max_concurrent_runs": 1, "max_queued_runs": 0},
    )
    assert path.executor is not None
    events = _Events()
    link, (channel, applier) = await _link(path.executor.address, tokens.service, events)
    stub = executor_pb2_grpc.ExecutorServiceStub(channel)
    try:
        await eventually(lambda: asyncio.sleep(0, link.up), bool)
        slow = _request("link-slow", content=SLOW, sha256=hashlib.sha256(SLOW).hexdigest())
        accepted = await _outcome(link.execute(slow, 10))
        assert accepted[0] == "link-slow" and accepted[2] is True
        assert await _outcome(link.execute(slow, 10)) == await _outcome(stub.Execute(slow))
        assert (await _outcome(stub.Execute(slow)))[2] is False
        cases = [
            _request(""),  # INVALID_ARGUMENT
            _request("link-full"),  # RESOURCE_EXHAUSTED: one slot, taken
            executor_pb2.ExecuteRequest(  # FAILED_PRECONDITION or INVALID_ARGUMENT config
                run_id="link-bad", attempt=1, execution_type=RS.EXECUTION_TYPE_CONTAINER
            ),
        ]
        codes = set()
        for request in cases:
            over_link = await _outcome(link.execute(request, 10))
            assert over_link == await _outcome(stub.Execute(request))
            codes.add(over_link[0])
        assert grpc.StatusCode.INVALID_ARGUMENT in codes
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
        await _no_sandbox_refusal(path, tokens)
    finally:
        await link.stop()
        await applier.stop()
        await channel.close()
        await path.close()


async def _no_sandbox_refusal(path: Any, tokens: Any) -> None:
    """An executor without a sandbox refuses a python run FAILED_PRECONDITION with the
    sandbox.allow_unsandboxed subject, over the link as unary (dispatch reads it)."""
    executor = await start_executor(
        path.tmp,
        path.nats_url,
        tokens,
        path.catalogue,
        name="nosandbox",
        sandbox={"backend": "local", "allow_unsandboxed": False},
    )
    link, (channel, applier) = await _link(executor.address, tokens.service, _Events())
    try:
        await eventually(lambda: asyncio.sleep(0, link.up), bool)
        request = _request("link-nosandbox", content=SLOW, sha256=hashlib.sha256(SLOW).hexdigest())
        over_link = await _outcome(link.execute(request, 10))
        assert over_link == await _outcome(
            executor_pb2_grpc.ExecutorServiceStub(channel).Execute(request)
        )
        assert over_link[0] == grpc.StatusCode.FAILED_PRECONDITION
        assert [v.field for v in over_link[3]] == ["sandbox.allow_unsandboxed"]
    finally:
        await link.stop()
        await applier.stop()
        await channel.close()
        await executor.stop()


async def test_a_runs_events_come_over_the_link_and_go_to_jetstream_as_applied(
    tmp_path: Path, nats_server: Any, tokens: Any, js: Any
) -> None:
    """A run dispatched over the link ends SUCCEEDED; its STARTED and FINISHED reach the
    stream on `.applied` subjects (the scheduler acked them), QUEUED on its own; alerting
    reads an `.applied` subject as the run's event."""
    path = await start_run_path(tmp_path, nats_server.url, tokens)
    try:
        await path.publish("quiet", "x = 1\n")
        stub = path.scheduler_stub()
        await asyncio.sleep(0.5)  # the link's handshake
        run = await stub.SubmitRun(submit_request("quiet"))
        final = await wait_terminal(stub, run.id)
        assert final.state == RS.RUN_STATE_SUCCEEDED
        subjects = await _subjects(js, run.id, 4)
        assert subjects["finished"].endswith(APPLIED), subjects
        assert subjects["started"].endswith(APPLIED), subjects
        assert not subjects["queued"].endswith(APPLIED)
        msg = await js.get_last_msg("RUNBOX_EVENTS", subjects["finished"])
        event = parse(msg.subject, msg.data, msg.headers, PREFIX)
        assert event.kind == "run" and event.message.run_id == run.id  # type: ignore[attr-defined]
        assert event.message.type == ET.RUN_EVENT_TYPE_FINISHED  # type: ignore[attr-defined]
    finally:
        await path.close()


@pytest.mark.parametrize("side", ["executor", "scheduler"])
async def test_a_run_whose_link_drops_mid_run_ends_through_jetstream(
    tmp_path: Path,
    nats_server: Any,
    tokens: Any,
    js: Any,
    monkeypatch: pytest.MonkeyPatch,
    side: str,
) -> None:
    """The link closed by the executor or stopped by the scheduler while the run sleeps:
    its FINISHED goes to JetStream on the normal subject and the scheduler's consumer
    applies it."""
    made: list[Any] = []

    class Kept(Links):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    class KeptRunLinks(RunLinks):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(executor_server, "Links", Kept)
    monkeypatch.setattr(scheduler_server, "RunLinks", KeptRunLinks)
    path = await start_run_path(tmp_path, nats_server.url, tokens)
    try:
        links = next(m for m in made if isinstance(m, Links))
        run_links = next(m for m in made if isinstance(m, RunLinks))
        await path.publish("nap", "import time\ntime.sleep(1.5)\n")
        stub = path.scheduler_stub()
        await eventually(lambda: asyncio.sleep(0, run_links._links), bool)
        await eventually(lambda: asyncio.sleep(0, run_links._links[0].up), bool)
        run = await stub.SubmitRun(submit_request("nap"))
        await eventually(lambda: asyncio.sleep(0, links._runs), bool)
        await eventually(
            lambda: stub.GetRun(scheduler_pb2.GetRunRequest(id=run.id)),
            lambda r: r.state == RS.RUN_STATE_RUNNING,
        )
        if side == "executor":
            for link in set(links._runs.values()):
                links.close(link)
        else:
            await run_links._links[0].stop()
        final = await wait_terminal(stub, run.id)
        assert final.state == RS.RUN_STATE_SUCCEEDED
        subjects = await _subjects(js, run.id, 4)
        assert not subjects["finished"].endswith(APPLIED), subjects
    finally:
        await path.close()


async def test_a_scheduler_falls_back_to_execute_when_the_executor_has_no_link(
    tmp_path: Path, nats_server: Any, tokens: Any, js: Any
) -> None:
    """Against an executor answering Link UNIMPLEMENTED, runs go by unary Execute and their
    events by JetStream, as before the link."""
    path = await start_run_path(tmp_path, nats_server.url, tokens, executor={"run_links": False})
    try:
        await path.publish("quiet", "x = 1\n")
        stub = path.scheduler_stub()
        await asyncio.sleep(0.5)
        run = await stub.SubmitRun(submit_request("quiet"))
        final = await wait_terminal(stub, run.id)
        assert final.state == RS.RUN_STATE_SUCCEEDED
        subjects = await _subjects(js, run.id, 4)
        assert not any(s.endswith(APPLIED) for s in subjects.values()), subjects
    finally:
        await path.close()


async def test_link_is_denied_without_the_execute_permission(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """A token with script_execution:read only (not manage) cannot open a link."""
    path = await start_run_path(tmp_path, nats_server.url, tokens)
    assert path.executor is not None
    channel = open_channel(path.executor.address, token=tokens.reader)
    try:
        call = executor_pb2_grpc.ExecutorServiceStub(channel).Link(None)
        await call.write(executor_pb2.LinkRequest(replica_id="reader"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await channel.close()
        await path.close()


async def test_a_link_on_a_channel_without_interceptors_sends_its_own_token(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """The scheduler's link stream goes on a channel without interceptors: with the
    service token in its call metadata it comes up and Execute answers; with a token
    lacking the execute permission, or none, the executor refuses it and it never comes up."""
    path = await start_run_path(tmp_path, nats_server.url, tokens)
    assert path.executor is not None
    channel = open_stream_channel(path.executor.address)
    applier = Applier(_Events())
    links = {
        name: ExecutorLink(
            executor_pb2_grpc.ExecutorServiceStub(channel), name, applier, metadata=metadata
        )
        for name, metadata in [
            ("service", bearer(tokens.service)),
            ("reader", bearer(tokens.reader)),
            ("none", ()),
        ]
    }
    try:
        for link in links.values():
            link.start()
        await eventually(lambda: asyncio.sleep(0, links["service"].up), bool)
        slow = _request("bare-slow", content=SLOW, sha256=hashlib.sha256(SLOW).hexdigest())
        accepted = await _outcome(links["service"].execute(slow, 10))
        assert accepted[0] == "bare-slow" and accepted[2] is True
        refused = {
            "reader": grpc.StatusCode.PERMISSION_DENIED,
            "none": grpc.StatusCode.UNAUTHENTICATED,
        }
        for name, code in refused.items():
            call = executor_pb2_grpc.ExecutorServiceStub(channel).Link(
                None, metadata=links[name]._metadata
            )
            await call.write(executor_pb2.LinkRequest(replica_id=name))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call.read()
            assert caught.value.code() == code
            assert not links[name].up
    finally:
        for link in links.values():
            await link.stop()
        await channel.close()
        await path.close()


async def test_executor_without_link_answers_unimplemented(
    tmp_path: Path, nats_server: Any, tokens: Any
) -> None:
    """run_links off: Link is UNIMPLEMENTED, which a scheduler link remembers."""
    path = await start_run_path(tmp_path, nats_server.url, tokens, with_executor=False)
    executor = await start_executor(
        tmp_path, nats_server.url, tokens, path.catalogue, run_links=False
    )
    events = _Events()
    link, (channel, applier) = await _link(executor.address, tokens.service, events)
    try:
        await eventually(lambda: asyncio.sleep(0, link.unimplemented), bool)
        assert not link.up
    finally:
        await link.stop()
        await applier.stop()
        await channel.close()
        await executor.stop()
        await path.close()


class _OlderExecutor(executor_pb2_grpc.ExecutorServiceServicer):
    """An executor service of a build before the run link: Link is the generated
    servicer's UNIMPLEMENTED, answered before the stream's first message is read."""


async def test_an_executor_of_an_older_build_is_remembered_unlinked_without_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The call to an older executor ends before the link's hello is written: that is
    UNIMPLEMENTED (asked again only every UNLINKED_RETRY_S), not a failure logged at ERROR
    and retried at the reconnect backoff."""
    server = grpc.aio.server()
    executor_pb2_grpc.add_ExecutorServiceServicer_to_server(
        _OlderExecutor(),  # type: ignore[abstract]
        server,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    events = _Events()
    link, (channel, applier) = await _link(f"127.0.0.1:{port}", "", events)
    try:
        await eventually(lambda: asyncio.sleep(0, link.unimplemented), bool)
        await asyncio.sleep(0.5)  # several reconnect backoffs, were it retried as a failure
        assert link.unimplemented and not link.up
        errors = [
            r
            for r in caplog.records
            if r.levelno >= logging.ERROR and r.name.startswith("services")
        ]
        assert not errors, [r.getMessage() for r in errors]
    finally:
        await link.stop()
        await applier.stop()
        await channel.close()
        await server.stop(None)


class _EndedCall:
    """A Link call that ended before its first write, as grpc.aio shows one."""

    async def write(self, request: Any) -> None:
        raise asyncio.InvalidStateError("RPC already finished.")

    async def read(self) -> Any:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.UNIMPLEMENTED,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            "Method not found!",
            None,
        )

    def cancel(self) -> bool:
        return False


class _EndedStub:
    def Link(self, _: Any, metadata: Any = ()) -> _EndedCall:
        return _EndedCall()


async def test_a_link_call_ended_before_its_hello_is_unimplemented_not_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The race seen against the benchmark's executor under load: the write of the hello
    raises InvalidStateError because the call already ended; its status (UNIMPLEMENTED)
    decides, as when read() had raised it, and nothing is logged as a failure."""
    applier = Applier(_Events())
    link = ExecutorLink(_EndedStub(), "test", applier)  # type: ignore[arg-type]
    assert await link._serve() is False
    assert link.unimplemented
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
