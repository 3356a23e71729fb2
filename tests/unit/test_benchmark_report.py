"""The committed benchmark report is what the suite's report code makes of the committed results."""

from __future__ import annotations

import copy
import json

import pytest

from benchmarks import report
from tests.conftest import REPO_ROOT

RESULTS = REPO_ROOT / "docs" / "benchmarks"


def test_committed_markdown_matches_the_committed_results() -> None:
    results = report.load((RESULTS / "suite.json").read_text())
    results["targets"] = report.targets(results)
    assert report.markdown(results) == (RESULTS / "suite.md").read_text()


def test_every_target_is_a_ratio_from_the_run_with_a_verdict() -> None:
    results = report.load((RESULTS / "suite.json").read_text())
    targets = report.targets(results)
    assert len(targets) >= 12
    for target in targets:
        assert target["value"] == target["value"], target  # not NaN: every number was measured
        assert target["goal"].startswith(("<=", ">=", ">"))
        limit = float(target["goal"].split()[-1])
        expected = {
            "<=": target["value"] <= limit,
            ">=": target["value"] >= limit,
            ">": target["value"] > limit,
        }[target["goal"].split()[0]]
        assert target["met"] == expected, target


def test_patchcore_section_and_target_when_measured() -> None:
    results = report.load((RESULTS / "suite.json").read_text())
    padim = results["latency"]["png"]
    patchcore = copy.deepcopy(padim)
    patchcore["facade"]["p50_ms"] = 1.5 * padim["facade"]["p50_ms"]
    results["model"]["layers"] = ["blocks.1", "blocks.2", "blocks.4"]
    results["patchcore"] = {
        "model": {
            "name": "bottle_patchcore",
            "backbone": "mobilenetv2_100",
            "layers": ["blocks.2", "blocks.4"],
            "parameters": {
                "coreset_ratio": 0.01,
                "num_neighbors": 9.0,
                "memory_bank_size": 2140.0,
                "embedding_dim": 128.0,
            },
            "image_size": 256,
            "inference_precision": "f32",
            "ir_precision": "FP32",
            "ir_bin_mb": 9.0,
            "fit_seconds": 60.0,
            "evaluation": results["model"]["evaluation"]["bottle"],
        },
        "anchors": {key: results["anchors"][key] for key in ("app_served_latency", "app_served_throughput")},
        "profile": results["profile"],
        "memory": dict.fromkeys(("idle_both_models", "idle", "after_load"), results["memory"]["idle"]),
        "latency": {kind: {"padim": padim, "patchcore": patchcore} for kind in ("png", "raw")},
        "throughput": {
            kind: {c: results["throughput"]["embedded"][kind][c] for c in (1, 8)} for kind in ("png", "raw")
        },
    }
    results = report.load(json.dumps(results))  # the client counts come back as integers
    results["targets"] = report.targets(results)
    last = results["targets"][-1]
    assert last["name"].startswith("PatchCore facade p50 / PaDiM facade p50")
    assert last["value"] == pytest.approx(1.5)
    assert last["met"]
    text = report.markdown(results)
    assert "## Model families: PaDiM and PatchCore" in text
    assert "| images/s, 8 clients, raw |" in text
    assert "memory bank 2140 × 128 (coreset 1%)" in text
