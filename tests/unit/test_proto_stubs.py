"""The checked-in gRPC stubs are exactly what grpcio-tools generates from the .proto."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.conftest import REPO_ROOT

GENERATED = ("inspection_pb2.py", "inspection_pb2.pyi", "inspection_pb2_grpc.py")


def test_checked_in_stubs_match_the_proto(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("generate", REPO_ROOT / "proto" / "generate.py")
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    generate.generate(tmp_path)
    checked_in = REPO_ROOT / "proto" / "src" / "visinspect_api" / "v1"
    for name in GENERATED:
        fresh = tmp_path / "visinspect_api" / "v1" / name
        assert fresh.read_bytes() == (checked_in / name).read_bytes(), (
            f"{name} is stale: run `.venv/bin/python proto/generate.py` and commit the result"
        )


def test_every_message_field_is_documented() -> None:
    proto = (REPO_ROOT / "proto" / "src" / "visinspect_api" / "v1" / "inspection.proto").read_text().splitlines()
    undocumented = []
    for index, line in enumerate(proto):
        stripped = line.strip()
        is_field = stripped.endswith(";") and "=" in stripped and not stripped.startswith(("//", "option", "syntax"))
        is_rpc = stripped.startswith("rpc ")
        if (is_field or is_rpc) and not _documented(proto, index):
            undocumented.append(stripped)
    assert undocumented == []


def _documented(lines: list[str], index: int) -> bool:
    previous = lines[index - 1].strip() if index else ""
    return previous.startswith("//") or "//" in lines[index]
