"""`runbox-health [ADDRESS]` (`python -m shared.healthcheck`): exit 0 when the gRPC
server at ADDRESS answers grpc.health.v1 Check with SERVING, 1 otherwise with a
one-line reason on stderr. The service image's HEALTHCHECK and compose's health
checks run it; Kubernetes uses its native gRPC probes instead.

ADDRESS defaults to 127.0.0.1:$RUNBOX_GRPC__PORT (the service's own port in
its container). The check is public: no token needed."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEADLINE_S = 2.0
SERVING = health_pb2.HealthCheckResponse.SERVING


def default_address(environ: Mapping[str, str]) -> str:
    """127.0.0.1 and the port the service was told to listen on."""
    port = environ.get("RUNBOX_GRPC__PORT", "").strip()
    if not port.isdigit() or int(port) == 0:
        raise ValueError("no ADDRESS given and RUNBOX_GRPC__PORT is not a fixed port")
    return f"127.0.0.1:{int(port)}"


def check(address: str, *, service: str = "", deadline_s: float = DEADLINE_S) -> str | None:
    """None when the server reports SERVING, else why not (one line)."""
    request = health_pb2.HealthCheckRequest(service=service)
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(request, timeout=deadline_s)
        except grpc.RpcError as exc:
            return f"{address}: {_describe(exc)}"
    if response.status == SERVING:
        return None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return f"{address}: {status}"


def _describe(exc: grpc.RpcError) -> str:
    """The status code and the first line of the details of a failed call."""
    if not isinstance(exc, grpc.Call):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    details = (exc.details() or "").strip().splitlines()
    return f"{exc.code().name}: {details[0]}" if details else exc.code().name


def run(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    """The command: 0 on SERVING, 1 otherwise, 2 on a usage error."""
    parser = argparse.ArgumentParser(
        prog="runbox-health", description="Exit 0 when a Runbox gRPC server is SERVING."
    )
    parser.add_argument(
        "address", nargs="?", help="host:port (default 127.0.0.1:$RUNBOX_GRPC__PORT)"
    )
    parser.add_argument("--service", default="", help="health service name ('' = the server)")
    parser.add_argument("--timeout", type=float, default=DEADLINE_S, help="deadline in seconds")
    args = parser.parse_args(argv)
    try:
        address = args.address or default_address(environ)
    except ValueError as exc:
        print(f"runbox-health: {exc}", file=sys.stderr)
        return 2
    reason = check(address, service=args.service, deadline_s=args.timeout)
    if reason is None:
        return 0
    print(f"runbox-health: not serving: {reason}", file=sys.stderr)
    return 1


def main() -> None:
    """Console script entry point (runbox-health)."""
    sys.exit(run(sys.argv[1:], os.environ))


if __name__ == "__main__":
    main()
