"""The catalogue's engine reports pool use and statement latency on the service's registry."""

from __future__ import annotations

from runbox.catalogue.v1 import catalogue_pb2, catalogue_pb2_grpc
from shared.runtime import Running
from tests.integration.catalogue.support import publish


async def test_rpcs_move_the_database_metrics(
    catalogue: Running, stub: catalogue_pb2_grpc.CatalogueServiceStub
) -> None:
    """Publishing and reading count INSERTs, SELECTs and checkouts under service=catalogue."""
    registry = catalogue.runtime.registry

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, {"service": "catalogue", **labels}) or 0.0

    def queries(kind: str) -> float:
        return value("runbox_db_query_duration_seconds_count", statement=kind)

    inserts, selects = queries("INSERT"), queries("SELECT")
    checkouts = value("runbox_db_pool_checkouts_total", pool="main")
    await publish(stub, "metered", "1.0.0")
    await stub.GetScript(catalogue_pb2.GetScriptRequest(name="metered"))
    assert queries("INSERT") > inserts
    assert queries("SELECT") > selects
    assert value("runbox_db_pool_checkouts_total", pool="main") > checkouts
    assert value("runbox_db_pool_size_connections", pool="main") == 5
