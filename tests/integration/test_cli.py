"""The CLI: a whole run on the synthetic dataset, and one-line errors with a non-zero status."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_IMAGE_SIZE
from tests.sample_metadata import make_metadata
from visinspect_api.model_repository import list_versions, read_metadata, write_metadata
from visinspect_training.cli import main


def test_run_trains_exports_and_prints_the_evaluation(tmp_path: Path, capsys) -> None:
    # Its own data root: generating with the command's defaults must not rewrite the session's dataset.
    status = main([
        "run", "--model", "padim", "--dataset", "synthetic", "--data-root", str(tmp_path / "synthetic"),
        "--category", "brick", "--image-size", str(TINY_IMAGE_SIZE), "--n-features", "50", "--runs", str(tmp_path / "runs"),
        "--repository", str(tmp_path / "repository"),
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert status == 0
    assert captured.out.strip().endswith(str(tmp_path / "repository" / "brick" / "1"))
    for text in (
        "training run brick",
        "image AUROC",
        "pixel AUROC",
        "max |score - torch|",
        "builtin sha256 b03531047ffa",
        "good parts rejected",
        "defects caught",
        "expected false-reject rate",
        "report: ",
    ):
        assert text in captured.err
    (report,) = (tmp_path / "runs" / "brick").glob("*/report-brick-v1.html")
    assert "data:image/png;base64," in report.read_text(encoding="utf-8")
    metadata = read_metadata(tmp_path / "repository" / "brick" / "1")
    assert metadata.input.height == TINY_IMAGE_SIZE
    assert metadata.backbone.n_features == 50


def test_run_exports_a_patchcore_by_default(tmp_path: Path, capsys) -> None:
    status = main([
        "run", "--coreset-ratio", "0.05", "--dataset", "synthetic",
        "--data-root", str(tmp_path / "synthetic"), "--category", "brick", "--image-size", str(TINY_IMAGE_SIZE),
        "--runs", str(tmp_path / "runs"), "--repository", str(tmp_path / "repository"), "--no-report",
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "patchcore" in captured.err and "memory_bank_size" in captured.err  # the run table
    metadata = read_metadata(tmp_path / "repository" / "brick" / "1")
    assert metadata.architecture == "patchcore"
    assert metadata.backbone.layers == ("blocks.2", "blocks.4")
    assert metadata.parameters["coreset_ratio"] == 0.05
    assert metadata.evaluation is not None and metadata.evaluation.max_rel_score_diff_vs_torch <= 1e-3
    (run_dir,) = (tmp_path / "runs" / "brick").iterdir()
    assert (run_dir / "patchcore.pt").is_file() and not (run_dir / "padim.pt").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--backbone", "resnet_9000"], "unknown backbone 'resnet_9000'"),
        (["--backbone", "resnet18"], "no built-in weights for 'resnet18'"),
        (["--model", "padim", "--layers", "blocks.1,blocks.99"], "invalid PaDiM settings"),
        (["--model", "padim", "--n-features", "5000"], "invalid PaDiM settings"),
        (["--model", "patchcore", "--layers", "blocks.2,blocks.99"], "invalid PatchCore settings"),
        (["--model", "patchcore", "--coreset-ratio", "0"], "coreset ratio must be in (0, 1], got 0.0"),
        (["--model", "patchcore", "--coreset-ratio", "1.5"], "coreset ratio must be in (0, 1], got 1.5"),
        (["--model", "patchcore", "--num-neighbors", "0"], "the number of neighbours must be at least 1, got 0"),
        (["--model", "padim", "--image-score", "reweighted"], "PaDiM's image score is the anomaly map's maximum"),
        (["--model-name", "../up"], "model name '../up' is not valid"),
        (["--image-size", "100"], "multiple of 32"),
        (["--image-size", "256", "--tiles", "3"], "3 tiles per side must split the image size 256 into tiles"),
        (["--image-size", "256", "--tiles", "16"], "16 tiles per side must split the image size 256 into tiles"),
        (["--tiles", "0"], "0 tiles per side must split"),
        (["--ir-precision", "INT8"], "INT8 export is not supported"),
        (["--target-false-reject-rate", "0"], "target false-reject rate must be between 0 and 1"),
        (["--calibration-fraction", "1"], "calibration fraction must be in [0, 1)"),
        (["--calibration-folds", "1"], "calibration folds must be 0 (off) or at least 2, got 1"),
        (["--calibration-folds", "-1"], "calibration folds must be 0 (off) or at least 2, got -1"),
        (["--calibration-dir", "/nonexistent/cal"], "dataset folder /nonexistent/cal does not exist"),
        (
            ["--dataset", "folder", "--normal-dir", "/nonexistent/good"],
            "dataset folder /nonexistent/good does not exist",
        ),
        (["--weights", "file"], "give a weights file exactly when"),
        (["--weights-file", "/nonexistent.pth"], "weights file /nonexistent.pth does not exist"),
    ],
)
def test_bad_options_give_one_line_errors(tmp_path: Path, capsys, arguments, message) -> None:
    status = main([
        "run", "--data-root", str(tmp_path / "synthetic"), "--image-size", str(TINY_IMAGE_SIZE),
        "--runs", str(tmp_path / "runs"), "--repository", str(tmp_path / "repository"), *arguments,
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1
    assert list_versions(tmp_path / "repository" / "brick") == []


def test_run_refuses_another_precision_for_a_published_model_before_training(tmp_path: Path, capsys) -> None:
    """OVMS compiles all of a model's versions with one plugin_config: a bf16 version of an f32 model would
    recompile the f32 ones at bf16. Refused before any training, with the way out."""
    published = tmp_path / "repository" / "brick" / "1"
    published.mkdir(parents=True)
    write_metadata(published, make_metadata(model_name="brick", inference_precision="f32"))
    status = main([
        "run", "--data-root", str(tmp_path / "synthetic"), "--image-size", str(TINY_IMAGE_SIZE),
        "--runs", str(tmp_path / "runs"), "--repository", str(tmp_path / "repository"), "--inference-precision", "bf16",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2
    assert "model 'brick' is served at inference precision f32" in err and "one plugin_config" in err
    assert "--inference-precision f32" in err and "--model-name" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "synthetic").exists()
    assert list_versions(tmp_path / "repository" / "brick") == [1]


def test_weights_file_with_wrong_hash(tmp_path: Path, capsys) -> None:
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"not what you expected")
    status = main([
        "train", "--data-root", str(tmp_path / "synthetic"), "--runs", str(tmp_path / "runs"),
        "--weights-file", str(weights), "--weights-sha256", "0" * 64,
    ])  # fmt: skip
    assert status == 2
    assert "expected 0000" in capsys.readouterr().err


def test_unwritable_repository_from_the_command_line(trained_run, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "visinspect_training.cli", "export", str(trained_run.run_dir), "--repository",
         str(blocker / "repository")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: cannot create model repository {blocker / 'repository'}: Not a directory"
    ]


def test_evaluate_prints_the_metrics_and_writes_the_report(trained_run, exported, capsys) -> None:
    status = main(["evaluate", str(exported.version_dir), "--run", str(trained_run.run_dir), "--json"])
    captured = capsys.readouterr()
    assert status == 0
    metrics = json.loads(captured.out)
    published = exported.metadata.evaluation
    assert metrics["false_reject_rate"] == published.false_reject_rate
    assert metrics["recall_by_defect_type"] == {
        name: {"caught": found.caught, "total": found.total} for name, found in published.recall_by_defect_type.items()
    }
    report = trained_run.run_dir / "report-brick-v1.html"
    assert f"report: {report}" in captured.err
    assert "false-reject rate" in report.read_text(encoding="utf-8")
