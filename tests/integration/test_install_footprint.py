"""What installing the server or the client pulls in, resolved by pip itself (a dry run, nothing installed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.package_index  # pip resolves every dependency from the index

HEAVY = {"torch", "torchvision", "anomalib", "lightning", "timm"}


def resolved(distributions: list[str], tmp_path: Path) -> set[str]:
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed",
         "--report", str(report), *(str(REPO_ROOT / d) for d in distributions)],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, f"pip could not resolve {distributions}:\n{done.stderr[-3000:]}"
    return {item["metadata"]["name"].lower().replace("_", "-") for item in json.loads(report.read_text())["install"]}


def test_server_installs_without_torch_or_anomalib(tmp_path: Path) -> None:
    names = resolved(["proto", "server"], tmp_path)
    assert {"visinspect-server", "openvino", "grpcio", "opencv-python-headless"} <= names
    assert names & HEAVY == set()
    assert "tritonclient" not in names  # only --backend kserve needs it: the [kserve] extra


def test_the_kserve_extra_adds_the_model_server_client(tmp_path: Path) -> None:
    names = resolved(["proto", "server[kserve]"], tmp_path)
    assert {"visinspect-server", "tritonclient"} <= names
    assert names & HEAVY == set()


def test_client_installs_without_torch_or_openvino(tmp_path: Path) -> None:
    names = resolved(["proto", "client"], tmp_path)
    assert "visinspect-client" in names and "grpcio" in names
    assert names & (HEAVY | {"openvino"}) == set()
