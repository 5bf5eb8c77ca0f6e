"""SubmitRun validates against cached parameter schemas: counted catalogue RPCs, ScriptEvent
invalidation and read-your-writes for "latest", with real catalogue and scheduler servers."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from runbox.common.v1 import common_pb2
from runbox.scheduler.v1 import scheduler_pb2
from services.scheduler.catalogue import CatalogueClient
from shared.clients import open_channel
from shared.status import from_rpc_error
from tests.integration.stack import RunPath, start_run_path

PT = catalogue_pb2.ParameterType
PARAMS = [
    catalogue_pb2.ParameterDefinition(
        name="n",
        type=PT.PARAMETER_TYPE_INTEGER,
        required=True,
        rules=catalogue_pb2.ParameterRules(min_value=1, max_value=10),
    ),
    catalogue_pb2.ParameterDefinition(name="token", type=PT.PARAMETER_TYPE_PASSWORD),
]
CATALOGUE = "/runbox.catalogue.v1.CatalogueService/"
# What the scheduler asks at submit (the executor's GetContent is not counted).
SUBMIT_METHODS = ("ResolveVersion", "ValidateParameters", "GetScript")


@pytest.fixture
async def path(tmp_path: Path, nats_server, tokens) -> AsyncIterator[RunPath]:  # type: ignore[no-untyped-def]
    # No executor traffic matters here: runs stay PENDING or run a no-op.
    stack = await start_run_path(tmp_path, nats_server.url, tokens)
    yield stack
    await stack.close()


def catalogue_calls(path: RunPath) -> Counter[str]:
    """RPCs of SUBMIT_METHODS the catalogue has handled, by method."""
    calls: Counter[str] = Counter()
    for metric in path.catalogue.runtime.registry.collect():
        for sample in metric.samples:
            method = sample.labels.get("method", "")
            name = method.removeprefix(CATALOGUE)
            if sample.name == "runbox_catalogue_rpc_requests_total" and name in SUBMIT_METHODS:
                calls[name] += int(sample.value)
    return calls


def submit(name: str, version: str = "", **params: object) -> scheduler_pb2.SubmitRunRequest:
    values = struct_pb2.Struct()
    values.update(params)
    return scheduler_pb2.SubmitRunRequest(
        script=common_pb2.ScriptRef(name=name, version=version), parameters=values
    )


async def catalogue_admin(path: RunPath, call: Callable[..., Awaitable[object]]) -> None:
    async with open_channel(path.catalogue.address, token=path.tokens.admin) as channel:
        await call(catalogue_pb2_grpc.CatalogueServiceStub(channel))


async def warm(path: RunPath, request: scheduler_pb2.SubmitRunRequest) -> None:
    """Submit until a submit makes no catalogue call: the events of the script's publish
    (which drop its entries) have reached the scheduler and the cache is filled."""
    stub = path.scheduler_stub()

    async def probe() -> None:
        while True:
            before = catalogue_calls(path)
            await stub.SubmitRun(request)
            if catalogue_calls(path) == before:
                return

    await asyncio.wait_for(probe(), 10)


async def eventually_code(
    stub: object, request: scheduler_pb2.SubmitRunRequest, code: grpc.StatusCode
) -> None:
    """Submit until the scheduler answers `code` (an event on its way), at most 10 s."""

    async def probe() -> None:
        while True:
            try:
                await stub.SubmitRun(request)  # type: ignore[attr-defined]
            except grpc.aio.AioRpcError as exc:
                if exc.code() == code:
                    return
                raise
            await asyncio.sleep(0.05)

    await asyncio.wait_for(probe(), 10)


async def test_warm_pinned_submit_makes_no_catalogue_call(path: RunPath) -> None:
    """After one submit of a pinned version, valid and invalid submits of it are answered
    without a catalogue RPC, with the catalogue's values and field violations."""
    await path.publish("warm", "print(1)\n", params=PARAMS)
    stub = path.scheduler_stub()
    await warm(path, submit("warm", "1.0.0", n=3, token="s3cret"))
    before = catalogue_calls(path)
    runs = [await stub.SubmitRun(submit("warm", "1.0.0", n=n, token="x")) for n in (1, "7", 10)]
    assert [dict(r.parameters) for r in runs] == [
        {"n": 1, "token": "***"},
        {"n": 7, "token": "***"},
        {"n": 10, "token": "***"},
    ]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SubmitRun(submit("warm", "1.0.0", n=11, extra=1, token="x"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    error = from_rpc_error(err.value)
    assert {v.field for v in error.violations} == {"parameters.n", "parameters.extra"}  # type: ignore[attr-defined]
    assert "x" not in str(error)
    assert catalogue_calls(path) == before


async def test_missing_secret_is_validated_by_the_catalogue(path: RunPath) -> None:
    """A request leaving a secret parameter out asks the catalogue (its default is withheld)."""
    await path.publish("withheld", "print(1)\n", params=PARAMS)
    stub = path.scheduler_stub()
    await warm(path, submit("withheld", "1.0.0", n=2, token="t"))
    before = catalogue_calls(path)
    run = await stub.SubmitRun(submit("withheld", "1.0.0", n=2))
    assert dict(run.parameters) == {"n": 2}
    assert catalogue_calls(path) - before == Counter({"ValidateParameters": 1})


async def test_latest_submit_after_publish_gets_the_new_version(path: RunPath) -> None:
    """Publish-then-submit without a version gets the new version at once, with no
    catalogue call while the cache is warm (the catalogue's change note, flushed before its
    answer, and the submit's NATS flush: shared/script_notes.py)."""
    await path.publish("ryw", "print(1)\n", params=PARAMS)
    stub = path.scheduler_stub()
    await warm(path, submit("ryw", n=1, token="t"))
    before = catalogue_calls(path)
    assert (await stub.SubmitRun(submit("ryw", n=2, token="t"))).script_version == "1.0.0"
    assert catalogue_calls(path) == before
    await path.publish("ryw", "print(2)\n", params=PARAMS[:1], version="1.1.0")
    run = await stub.SubmitRun(submit("ryw", n=2))
    assert run.script_version == "1.1.0"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SubmitRun(submit("ryw", n=2, token="t"))  # 1.1.0 has no token
    assert {v.field for v in from_rpc_error(err.value).violations} == {"parameters.token"}  # type: ignore[attr-defined]


async def test_every_publish_is_seen_by_the_next_latest_submit(path: RunPath) -> None:
    """Many publishes, each followed at once by submits of "latest" (and of a range) in
    flight together: every submit gets the version published just before it."""
    await path.publish("each", "print(0)\n")
    stub = path.scheduler_stub()
    await warm(path, submit("each"))
    for minor in range(1, 8):
        version = f"1.{minor}.0"
        await path.publish("each", f"print({minor})\n", version=version)
        runs = await asyncio.gather(
            *(stub.SubmitRun(submit("each")) for _ in range(4)),
            stub.SubmitRun(submit("each", "^1")),
        )
        assert {run.script_version for run in runs} == {version}


async def test_yanked_latest_is_not_served_after_the_yank(path: RunPath) -> None:
    """A yank answered is seen by the next "latest" submit (its note drops the entry)."""
    await path.publish("yanked", "print(1)\n")
    await path.publish("yanked", "print(2)\n", version="1.0.1")
    stub = path.scheduler_stub()
    await warm(path, submit("yanked"))
    assert (await stub.SubmitRun(submit("yanked"))).script_version == "1.0.1"
    await catalogue_admin(
        path,
        lambda c: c.YankVersion(
            catalogue_pb2.YankVersionRequest(script_name="yanked", version="1.0.1", reason="x")
        ),
    )
    assert (await stub.SubmitRun(submit("yanked"))).script_version == "1.0.0"


@pytest.fixture
async def rpc_path(tmp_path: Path, nats_server, tokens) -> AsyncIterator[RunPath]:  # type: ignore[no-untyped-def]
    stack = await start_run_path(
        tmp_path,
        nats_server.url,
        tokens,
        with_executor=False,
        scheduler={"catalogue_read_your_writes": "rpc"},
    )
    yield stack
    await stack.close()


async def test_rpc_mode_resolves_latest_by_the_catalogue(rpc_path: RunPath) -> None:
    """With catalogue_read_your_writes=rpc (a clustered NATS) a "latest" submit asks the
    catalogue (one ResolveVersion) and gets a version published just before."""
    path = rpc_path
    await path.publish("rpc", "print(1)\n")
    stub = path.scheduler_stub()
    await warm(path, submit("rpc", "1.0.0"))
    before = catalogue_calls(path)
    assert (await stub.SubmitRun(submit("rpc"))).script_version == "1.0.0"
    assert catalogue_calls(path) - before == Counter({"ResolveVersion": 1})
    await path.publish("rpc", "print(2)\n", version="1.1.0")
    assert (await stub.SubmitRun(submit("rpc"))).script_version == "1.1.0"


async def test_latest_asks_the_catalogue_while_nats_is_down(path: RunPath) -> None:
    """Without the scheduler's NATS connection the barrier cannot answer: a "latest"
    submit is resolved by the catalogue (one ResolveVersion call)."""
    await path.publish("down", "print(1)\n")
    stub = path.scheduler_stub()
    await warm(path, submit("down"))
    runtime = path.scheduler.runtime
    assert runtime.nats is not None
    await runtime.nats.close()
    before = catalogue_calls(path)
    assert (await stub.SubmitRun(submit("down"))).script_version == "1.0.0"
    assert catalogue_calls(path) - before == Counter({"ResolveVersion": 1})


async def test_yank_and_delete_drop_cached_pinned_versions(path: RunPath) -> None:
    """ScriptEvents drop cached entries: a yanked pinned version and then a deleted script
    become NOT_FOUND (well before the cache's TTL)."""
    await path.publish("gone", "print(1)\n", params=PARAMS)
    await path.publish("gone", "print(2)\n", params=PARAMS, version="1.0.1")
    stub = path.scheduler_stub()
    await stub.SubmitRun(submit("gone", "1.0.0", n=1, token="t"))
    await stub.SubmitRun(submit("gone", "1.0.1", n=1, token="t"))
    await catalogue_admin(
        path,
        lambda c: c.YankVersion(
            catalogue_pb2.YankVersionRequest(script_name="gone", version="1.0.0", reason="bad")
        ),
    )
    await eventually_code(stub, submit("gone", "1.0.0", n=1, token="t"), grpc.StatusCode.NOT_FOUND)
    await catalogue_admin(
        path, lambda c: c.DeleteScript(catalogue_pb2.DeleteScriptRequest(name="gone"))
    )
    await eventually_code(stub, submit("gone", "1.0.1", n=1, token="t"), grpc.StatusCode.NOT_FOUND)


def _value(raw: object) -> struct_pb2.Value:
    holder = struct_pb2.Struct()
    holder.update({"v": raw})
    return holder.fields["v"]


CHOICES = catalogue_pb2.ParameterRules(allowed_values=[_value("a"), _value("b")])
EVERY_TYPE = [
    catalogue_pb2.ParameterDefinition(name=name, type=kind, rules=rules)
    for name, kind, rules in [
        ("s", PT.PARAMETER_TYPE_STRING, catalogue_pb2.ParameterRules(pattern="[a-z]+")),
        ("i", PT.PARAMETER_TYPE_INTEGER, catalogue_pb2.ParameterRules(min_value=0)),
        ("f", PT.PARAMETER_TYPE_FLOAT, None),
        ("b", PT.PARAMETER_TYPE_BOOLEAN, None),
        ("j", PT.PARAMETER_TYPE_JSON, None),
        ("e", PT.PARAMETER_TYPE_EMAIL, None),
        ("u", PT.PARAMETER_TYPE_URL, None),
        ("t", PT.PARAMETER_TYPE_TEXT, None),
        ("sel", PT.PARAMETER_TYPE_SELECT, CHOICES),
        ("multi", PT.PARAMETER_TYPE_MULTISELECT, CHOICES),
        ("file", PT.PARAMETER_TYPE_FILE, None),
        ("d", PT.PARAMETER_TYPE_DATE, None),
        ("dt", PT.PARAMETER_TYPE_DATETIME, None),
    ]
] + [
    catalogue_pb2.ParameterDefinition(name="p", type=PT.PARAMETER_TYPE_PASSWORD, required=True),
    catalogue_pb2.ParameterDefinition(
        name="when_b",
        type=PT.PARAMETER_TYPE_STRING,
        required=True,
        condition=catalogue_pb2.ParameterCondition(parameter="b", equals=_value(True)),
    ),
]
GOOD = {"p": "pw", "s": "abc", "i": "4", "f": "2.5", "b": "no", "j": '{"k": [1]}'}
CASES = [
    GOOD,
    {**GOOD, "e": "ops@example.com", "u": "https://example.com/x", "t": "a\nb", "sel": "a"},
    {**GOOD, "multi": "a, b", "d": "2026-11-24", "dt": "2026-11-24T10:30:00+01:00"},
    {**GOOD, "file": {"name": "x.txt", "content_type": "Text/Plain", "content_base64": "aGk="}},
    {**GOOD, "b": True, "when_b": "x"},
    {**GOOD, "b": True},
    {**GOOD, "when_b": "x"},
    {**GOOD, "s": "ABC", "i": -1, "f": "NaN", "e": "a@b@c", "u": "mailto:x", "sel": "z"},
    {**GOOD, "multi": ["a", "a"], "d": "2026-02-30", "dt": "yesterday", "j": "{no", "x": 1},
    {"s": "abc"},
]


async def answer(call: Awaitable[object]) -> object:
    """A validation's outcome, comparable: the response, or the error's code and fields."""
    try:
        result = await call
    except Exception as exc:
        violations = getattr(exc, "violations", [])
        return type(exc).__name__, sorted((v.field, v.description) for v in violations)
    validated = getattr(result, "validated", result)
    return validated.SerializeToString(deterministic=True)  # type: ignore[attr-defined]


@pytest.mark.parametrize("case", range(len(CASES)))
async def test_local_validation_gives_the_catalogues_answer(path: RunPath, case: int) -> None:
    """Every type, a condition and a secret: the cached local answer equals ValidateParameters'."""
    await path.publish("types", "print(1)\n", params=EVERY_TYPE)
    values = struct_pb2.Struct()
    values.update(CASES[case])
    ref = common_pb2.ScriptRef(name="types", version="1.0.0")
    async with open_channel(path.catalogue.address, token=path.tokens.admin) as channel:
        client = CatalogueClient(channel, cache_ttl_s=60, outage_ttl_s=60)
        await client.check(ref, struct_pb2.Struct(fields={"p": _value("x")}))  # cached
        local = await answer(client.check(ref, values, fresh=True))
        # The warm-up's ResolveVersion + GetScript, and ValidateParameters when p (a secret,
        # whose default the catalogue would not tell) is left out.
        assert client.calls == (2 if "p" in CASES[case] else 3)
        assert local == await answer(client.validate(ref, values))
