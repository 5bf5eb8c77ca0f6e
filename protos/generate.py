"""Generate the one Python package `runbox` from protos/ (make protos).

Output lands at the repository root so that the folder path of every module
equals its import path (runbox/<svc>/v1/<svc>_pb2.py). Generated files are
committed; `make check` regenerates and fails on any difference.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "runbox"
BIN = Path(sys.executable).parent


def main() -> int:
    if OUT.exists():
        shutil.rmtree(OUT)
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        # Typed stubs for the generated gRPC modules (mypy-protobuf).
        f"--plugin=protoc-gen-mypy_grpc={BIN / 'protoc-gen-mypy_grpc'}",
        f"--mypy_grpc_out={ROOT}",
        *sources,
    ]
    if protoc.main(args) != 0:
        print("protoc failed", file=sys.stderr)
        return 1
    for folder in [OUT, *(p for p in OUT.rglob("*") if p.is_dir())]:
        (folder / "__init__.py").touch()
    (OUT / "py.typed").touch()
    print(f"generated {len(sources)} protos into {OUT.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
