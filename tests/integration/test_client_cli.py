"""The ``visinspect`` command against the real server: output formats, overlays, evaluation, exit codes."""

from __future__ import annotations

import csv
import io
import itertools
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.server_harness import ServerProcess, copy_version, free_port, start_server
from visinspect_api.calibration import threshold_for_false_reject_rate
from visinspect_api.model_repository import METADATA_FILENAME
from visinspect_client import DetectionResult, InspectionClient
from visinspect_client.cli import CSV_COLUMNS, main

AUTH_TOKEN = "cli-test-token"


def pairwise_auroc(labels: list[int], scores: list[float]) -> float:
    positives = [s for label, s in zip(labels, scores, strict=True) if label]
    negatives = [s for label, s in zip(labels, scores, strict=True) if not label]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(positives, negatives))
    return wins / (len(positives) * len(negatives))


@pytest.fixture(scope="module")
def reference(served, synthetic_category: Path) -> dict[str, DetectionResult]:
    """Every test image scored through the SDK, by path."""
    paths = sorted((synthetic_category / "test").rglob("*.png"))
    with InspectionClient(served.address) as client:
        return {str(path): client.detect(path, regions=True) for path in paths}


def run_cli(capsys, *arguments: str) -> tuple[int, str, str]:
    status = main(list(arguments))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_predict_json_with_evaluation(served, synthetic_category: Path, reference, capsys) -> None:
    status, out, err = run_cli(
        capsys,
        "predict",
        str(synthetic_category / "test"),
        "--server",
        served.address,
        "--format",
        "json",
        "--evaluate",
    )
    assert status == 0, err
    report = json.loads(out)
    rows = report["results"]
    assert [row["path"] for row in rows] == sorted(reference)  # the folder, recursively, in order
    for row in rows:
        expected = reference[row["path"]]
        # The CLI's concurrent calls share batched inferences: the last bits may differ from one-at-a-time.
        assert row["raw_score"] == pytest.approx(expected.raw_score, rel=1e-5)
        assert row["score"] == pytest.approx(expected.score, abs=1e-5)
        assert row["confidence"] == pytest.approx(expected.confidence, abs=1e-5)
        assert row["verdict"] == ("anomalous" if expected.score > 0.5 else "normal")
        assert row["regions"] == len(expected.regions)
        largest = expected.regions[0] if expected.regions else None
        assert row["largest_region"] == (
            None
            if largest is None
            else {
                "x": largest.x,
                "y": largest.y,
                "width": largest.width,
                "height": largest.height,
                "area": largest.area,
            }
        )
        assert row["error"] is None and row["model"] == "brick" and row["version"] == 1
        assert row["label"] == (0 if Path(row["path"]).parent.name == "good" else 1)
    summary = report["summary"]
    anomalous = sum(r.is_anomalous for r in reference.values())
    assert (summary["images"], summary["scored"], summary["failed"]) == (len(rows), len(rows), 0)
    assert (summary["anomalous"], summary["normal"]) == (anomalous, len(rows) - anomalous)
    assert summary["anomaly_rate"] == pytest.approx(anomalous / len(rows))
    latency = summary["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    assert latency["p99"] <= max(row["latency_ms"] for row in rows)

    evaluation = summary["evaluation"]
    labels = [row["label"] for row in rows]
    assert evaluation["image_auroc"] == pytest.approx(pairwise_auroc(labels, [row["raw_score"] for row in rows]))
    tp = sum(1 for row in rows if row["label"] and row["verdict"] == "anomalous")
    fp = sum(1 for row in rows if not row["label"] and row["verdict"] == "anomalous")
    fn = sum(1 for row in rows if row["label"] and row["verdict"] == "normal")
    assert evaluation["image_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert (evaluation["true_positives"], evaluation["false_positives"], evaluation["false_negatives"]) == (tp, fp, fn)
    assert (evaluation["normal_images"], evaluation["defective_images"]) == (labels.count(0), labels.count(1))
    assert evaluation["image_auroc"] > 0.8  # the tiny model separates the synthetic defects
    assert "scoring" in err  # the progress bar, on stderr


def test_predict_csv_and_globs(served, synthetic_category: Path, reference, capsys) -> None:
    pattern = str(synthetic_category / "test" / "*" / "00[01].png")
    status, out, err = run_cli(capsys, "predict", pattern, "--server", served.address, "--format", "csv")
    assert status == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 12 and {Path(row["path"]).name for row in rows} == {"000.png", "001.png"}
    for row in rows:
        expected = reference[row["path"]]
        assert float(row["score"]) == pytest.approx(expected.score, abs=1e-5)
        assert float(row["raw_score"]) == pytest.approx(expected.raw_score, rel=1e-5)
        assert row["verdict"] == ("anomalous" if expected.is_anomalous else "normal")
        assert int(row["regions"]) == len(expected.regions)
        if expected.regions:
            box = expected.regions[0]
            assert [int(row[f"box_{k}"]) for k in ("x", "y", "width", "height")] == [
                box.x,
                box.y,
                box.width,
                box.height,
            ]
        else:
            assert row["box_x"] == row["box_width"] == ""
        assert row["error"] == ""
    assert "anomaly rate" in err and "p95" in err  # the summary goes to stderr, keeping stdout CSV


def test_predict_table_and_threshold(served, synthetic_category: Path, capsys) -> None:
    folder = synthetic_category / "test" / "good"
    status, out, _ = run_cli(capsys, "predict", str(folder), "--server", served.address, "--threshold", "0.0")
    assert status == 0
    for path in sorted(folder.glob("*.png")):
        assert str(path) in out
    assert "anomalous" in out and "8 images: 8 scored, 0 failed" in out
    assert "latency (client-side) p50" in out and "model brick version 1" in out


def test_predict_overlays(served, synthetic_category: Path, tmp_path: Path, capsys) -> None:
    test = synthetic_category / "test"
    inputs = [test / "good" / "000.png", test / "hole" / "000.png", test / "hole" / "001.png"]
    out_dir = tmp_path / "overlays"
    status, out, err = run_cli(
        capsys, "predict", *map(str, inputs), "--server", served.address, "--overlays", str(out_dir), "--format", "json"
    )
    assert status == 0, err
    written = sorted(p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*.png"))
    assert written == ["good/000.png", "hole/000.png", "hole/001.png"]  # structure mirrored below the common folder
    rows = json.loads(out)["results"]
    assert [row["overlay"] for row in rows] == [
        str(out_dir / "good/000.png"),
        *(str(out_dir / f"hole/00{i}.png") for i in (0, 1)),
    ]
    with InspectionClient(served.address) as client:
        result = client.detect(inputs[1], anomaly_map=True, regions=True)
    saved = np.asarray(Image.open(out_dir / "hole" / "000.png"))
    assert saved.shape == (128, 128, 3)
    assert np.array_equal(saved, result.overlay(inputs[1]))


def test_predict_by_false_reject_rate(served, synthetic_category: Path, reference, capsys) -> None:
    # 0.3 of 8 good calibration scores: g_(7), below the calibrated g_(8); 0.2 would give g_(8), the default.
    with InspectionClient(served.address) as client:
        threshold = client.threshold_for_false_reject_rate(0.3)
        calibration = client.model().calibration
        assert calibration.good_scores is not None
        rates = client.expected_rates(threshold)
        default_rates = client.expected_rates()
    assert threshold < 0.5 and rates.false_reject_rate is not None and rates.defect_recall is not None
    folder = str(synthetic_category / "test")
    status, out, err = run_cli(
        capsys, "predict", folder, "--server", served.address, "--false-reject-rate", "0.3", "--format", "json"
    )
    assert status == 0, err
    report = json.loads(out)
    rows = report["results"]
    assert len(rows) == len(reference)
    assert [row["threshold"] for row in rows] == pytest.approx([threshold] * len(rows))  # a float in the response
    raw_threshold = threshold_for_false_reject_rate(calibration.good_scores, 0.3)
    for row in rows:
        assert row["verdict"] == ("anomalous" if row["raw_score"] > raw_threshold else "normal")
    summary = report["summary"]
    assert (summary["threshold"], summary["requested_false_reject_rate"]) == (threshold, 0.3)
    assert summary["expected_false_reject_rate"] == rates.false_reject_rate
    assert summary["expected_defect_recall"] == rates.defect_recall

    status, out, _ = run_cli(capsys, "predict", folder, "--server", served.address, "--false-reject-rate", "0.3")
    assert status == 0
    assert f"threshold {threshold:.4f} (for a false-reject rate of 30.00%)" in out
    assert f"false-reject rate {rates.false_reject_rate:.2%}, defect recall {rates.defect_recall:.2%}" in out

    status, out, err = run_cli(capsys, "predict", folder, "--server", served.address, "--format", "csv")
    assert status == 0 and out.splitlines()[0] == ",".join(CSV_COLUMNS)  # the rows as they were
    assert (
        f"threshold 0.5000; expected from calibration: false-reject rate {default_rates.false_reject_rate:.2%}" in err
    )

    one = str(synthetic_category / "test" / "good" / "000.png")
    status, out, err = run_cli(
        capsys, "predict", one, "--server", served.address, "--false-reject-rate", "0.001", "--format", "json"
    )
    assert status == 0 and f"is below the {calibration.smallest_resolvable_rate:.2%}" in err
    assert json.loads(out)["summary"]["threshold"] == calibration.threshold_for_false_reject_rate(0.001)


@pytest.fixture(scope="module")
def old_metadata_server(exported, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of the same model with schema 1 metadata: an F1 threshold, no calibration score distributions."""
    metadata = json.loads((exported.version_dir / METADATA_FILENAME).read_text())
    calibration = {
        key: value
        for key, value in metadata["calibration"].items()
        if key not in ("method", "target_false_reject_rate", "good_scores", "defect_scores", "warnings")
    }
    evaluation = {
        key: value
        for key, value in metadata["evaluation"].items()
        if key
        not in ("false_reject_rate", "defect_recall", "good_rejected", "defects_caught", "recall_by_defect_type",
                "pixel_aupro")
    }  # fmt: skip
    repository = tmp_path_factory.mktemp("schema-1-repository")
    (repository / "brick").mkdir()
    copy_version(
        exported.version_dir,
        repository / "brick" / "1",
        schema_version=1,
        calibration=calibration,
        evaluation=evaluation,
    )
    server = start_server(repository)
    yield server
    server.stop()


def test_a_model_without_calibration_scores(old_metadata_server: ServerProcess, synthetic_category: Path, capsys):
    folder = str(synthetic_category / "test" / "good")
    address = old_metadata_server.address
    status, out, err = run_cli(capsys, "predict", folder, "--server", address, "--false-reject-rate", "0.05")
    assert (status, out) == (2, "")
    assert "--false-reject-rate 0.05: model brick version 1: this model version has no good calibration scores" in err
    status, out, _ = run_cli(capsys, "predict", folder, "--server", address, "--format", "json")
    summary = json.loads(out)["summary"]
    assert status == 0 and summary["threshold"] == 0.5 and summary["expected_false_reject_rate"] is None
    status, out, _ = run_cli(capsys, "predict", folder, "--server", address)
    assert status == 0 and "expected from calibration: false-reject rate unknown, defect recall unknown" in out
    status, out, _ = run_cli(capsys, "models", "--server", address)
    assert status == 0 and "F1" in out


def test_overlays_never_overwrite_inputs(served, synthetic_category: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "good"
    folder.mkdir()
    shutil.copy(synthetic_category / "test" / "good" / "000.png", folder / "000.png")
    status, _, err = run_cli(capsys, "predict", str(folder), "--server", served.address, "--overlays", str(folder))
    assert status == 2 and "overwrite" in err
    assert (folder / "000.png").read_bytes() == (synthetic_category / "test" / "good" / "000.png").read_bytes()


def test_a_bad_file_among_good_ones_exits_1(served, synthetic_category: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "batch" / "good"
    folder.mkdir(parents=True)
    for name in ("000.png", "001.png"):
        shutil.copy(synthetic_category / "test" / "good" / name, folder / name)
    (folder / "broken.png").write_bytes(b"this is not a PNG")
    status, out, err = run_cli(
        capsys, "predict", str(tmp_path / "batch"), "--server", served.address, "--format", "json"
    )
    assert status == 1
    report = json.loads(out)
    verdicts = {Path(row["path"]).name: row["verdict"] for row in report["results"]}
    assert verdicts["broken.png"] == "error" and verdicts["000.png"] != "error" and verdicts["001.png"] != "error"
    broken = next(row for row in report["results"] if row["path"].endswith("broken.png"))
    assert broken["error"].startswith("INVALID_ARGUMENT") and "decode" in broken["error"]
    assert report["summary"]["failed"] == 1 and report["summary"]["scored"] == 2
    assert f"failed: {folder / 'broken.png'}: INVALID_ARGUMENT" in err


def test_evaluate_needs_both_classes(served, synthetic_category: Path, capsys) -> None:
    status, out, _ = run_cli(
        capsys, "predict", str(synthetic_category / "test" / "good"), "--server", served.address, "--evaluate"
    )
    assert status == 0 and "cannot evaluate" in out


@pytest.mark.parametrize(
    "case",
    [
        (["predict", "{missing}"], "no such file or folder"),
        (["predict", "{folder}/*.nothing"], "matches no file"),
        (["predict", "{folder}", "--model", "nope"], "nope"),
        (["predict", "{folder}", "--concurrency", "0"], "--concurrency"),
        (["predict", "{folder}", "--ca-cert", "{missing}"], "cannot read the PEM file"),
        (["predict", "{folder}", "--format", "xml"], "invalid choice"),
        (["predict", "{folder}", "--false-reject-rate", "0.2", "--threshold", "0.5"], "not allowed with argument"),
        (["predict", "{folder}", "--false-reject-rate", "0"], "--false-reject-rate 0: model brick version 1: a false"),
        (["predict", "{folder}", "--false-reject-rate", "1.5"], "between 0 and 1 (exclusive), got 1.5"),
    ],
)
def test_usage_errors_exit_2(served, synthetic_category: Path, tmp_path: Path, capsys, case) -> None:
    arguments, words = case
    values = {"missing": str(tmp_path / "missing"), "folder": str(synthetic_category / "test" / "good")}
    argv = [argument.format(**values) for argument in arguments] + ["--server", served.address]
    try:
        status, _, err = run_cli(capsys, *argv)
    except SystemExit as exit_:  # argparse's own errors
        status, err = int(exit_.code), capsys.readouterr().err  # type: ignore[arg-type]
    assert status == 2
    assert words in err


@pytest.mark.parametrize("command", [["predict", "{folder}"], ["models"], ["health"]])
def test_unreachable_server_exits_2(synthetic_category: Path, capsys, command) -> None:
    target = f"127.0.0.1:{free_port()}"
    argv = [c.format(folder=synthetic_category / "test" / "good") for c in command]
    status, out, err = run_cli(capsys, *argv, "--server", target, "--timeout", "5")
    assert status == 2
    assert f"the server at {target} is unavailable" in err and out == ""


@pytest.fixture(scope="module")
def token_server(exported) -> Iterator[ServerProcess]:
    """A second server over the same repository that requires ``authorization: Bearer <AUTH_TOKEN>``."""
    server = start_server(exported.version_dir.parents[1], env={"VISINSPECT_AUTH_TOKENS": f"other-token,{AUTH_TOKEN}"})
    yield server
    server.stop()


def test_server_and_token_from_the_environment(
    token_server: ServerProcess, synthetic_category: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("VISINSPECT_SERVER", token_server.address)
    monkeypatch.setenv("VISINSPECT_TOKEN", AUTH_TOKEN)
    status, out, err = run_cli(
        capsys, "predict", str(synthetic_category / "test" / "hole" / "000.png"), "--format", "json"
    )
    assert status == 0, err
    assert json.loads(out)["results"][0]["verdict"] == "anomalous"


@pytest.mark.parametrize("token", ["wrong-token", None], ids=["wrong-token", "no-token"])
def test_a_refused_token_from_the_environment_exits_2(
    token_server: ServerProcess, synthetic_category: Path, monkeypatch, capsys, token: str | None
) -> None:
    monkeypatch.setenv("VISINSPECT_SERVER", token_server.address)
    if token is None:
        monkeypatch.delenv("VISINSPECT_TOKEN", raising=False)
    else:
        monkeypatch.setenv("VISINSPECT_TOKEN", token)
    status, out, err = run_cli(
        capsys, "predict", str(synthetic_category / "test" / "hole" / "000.png"), "--format", "json"
    )
    assert status == 2 and out == ""
    assert f"the server at {token_server.address} refused the credentials" in err


def test_models(served, exported, capsys) -> None:
    status, out, _ = run_cli(capsys, "models", "--server", served.address, "--format", "json")
    assert status == 0
    (entry,) = json.loads(out)
    assert (entry["name"], entry["versions"], entry["default_version"]) == ("brick", [1], 1)
    assert entry["details"]["backbone"] == exported.metadata.backbone.name
    assert entry["details"]["image_auroc"] == pytest.approx(exported.metadata.evaluation.image_auroc)
    calibration = exported.metadata.calibration
    assert entry["details"]["calibration"]["method"] == calibration.method == "false_reject_rate"
    assert entry["details"]["calibration"]["good_scores"]["values"] == list(calibration.good_scores.values)
    status, out, _ = run_cli(capsys, "models", "--server", served.address)
    assert status == 0 and "brick" in out and exported.metadata.backbone.name in out
    assert f"false-reject rate {calibration.target_false_reject_rate:.2%}" in out
    for warning in calibration.warnings:
        assert f"warning: brick version 1: {warning}\n" in out  # unwrapped, one line per warning


def test_health(served, capsys) -> None:
    assert run_cli(capsys, "health", "--server", served.address) == (0, "SERVING\n", "")
    assert run_cli(capsys, "health", "--server", served.address, "--service", "model/brick")[:2] == (0, "SERVING\n")
    assert run_cli(capsys, "health", "--server", served.address, "--service", "model/nope")[:2] == (
        1,
        "SERVICE_UNKNOWN\n",
    )


def test_console_script(served) -> None:
    script = Path(sys.executable).parent / "visinspect"
    assert script.exists(), "reinstall the client: pip install -e 'client[cli]'"
    command = [str(script), "health", "--server", served.address]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    assert (completed.returncode, completed.stdout) == (0, "SERVING\n"), completed.stderr
