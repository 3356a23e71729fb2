"""Regenerate the Python stubs (messages, gRPC services and .pyi type stubs) from the .proto files.

.venv/bin/python proto/generate.py            # rewrite the checked-in stubs
.venv/bin/python proto/generate.py --out DIR  # write them elsewhere (the drift test compares)
"""

from __future__ import annotations

import argparse
import sys
from importlib.resources import files
from pathlib import Path

from grpc_tools import protoc

SOURCE_ROOT = Path(__file__).resolve().parent / "src"
PROTOS = ("visinspect_api/v1/inspection.proto",)


def generate(out: Path) -> None:
    """Run grpcio-tools' protoc for every proto, writing ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py``."""
    include = str(files("grpc_tools") / "_proto")
    for proto in PROTOS:
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{SOURCE_ROOT}",
                f"-I{include}",
                f"--python_out={out}",
                f"--pyi_out={out}",
                f"--grpc_python_out={out}",
                str(SOURCE_ROOT / proto),
            ]
        )
        if status != 0:
            raise SystemExit(f"protoc failed on {proto} (status {status})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=SOURCE_ROOT)
    generate(parser.parse_args().out)


if __name__ == "__main__":
    sys.exit(main())
