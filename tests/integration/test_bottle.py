"""Acceptance on real MVTec AD bottle images: the default offline backbone reaches image AUROC >= 0.99."""

from __future__ import annotations

from pathlib import Path

from visinspect_training.api import DatasetSpec, TrainConfig, export_run, train


def test_default_offline_backbone_on_bottle(mvtec_bottle: Path, tmp_path: Path) -> None:
    config = TrainConfig(model_name="bottle", dataset=DatasetSpec(kind="mvtec", root=mvtec_bottle, category="bottle"))
    run = train(config, tmp_path / "runs")
    result = export_run(run, tmp_path / "repository")
    evaluation = result.metadata.evaluation
    assert evaluation is not None
    assert evaluation.inference_precision == result.metadata.inference_precision
    assert evaluation.num_images == run.counts["test"] and evaluation.num_anomalous > 0
    assert evaluation.image_auroc is not None and evaluation.image_auroc >= 0.99
    assert evaluation.pixel_auroc is None  # this copy of bottle has no masks
    assert evaluation.max_rel_score_diff_vs_torch is not None and evaluation.max_rel_score_diff_vs_torch <= 1e-3
    assert result.metadata.calibration.overlaps_test is False
