"""Thresholds from good images that fitted nothing: the held-out split, the rule, the recorded distributions."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_IMAGE_SIZE
from visinspect_api.calibration import expected_false_reject_rate, threshold_for_false_reject_rate
from visinspect_api.model_repository import IR_XML_FILENAME
from visinspect_training.api import ExportOptions, export_run, train
from visinspect_training.calibrate import ThresholdOptions, resolution_warnings
from visinspect_training.data import build_datamodule
from visinspect_training.errors import ConfigError, TrainingError
from visinspect_training.evaluate import score_images
from visinspect_training.ir import compile_ir

SIZE = (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)


def good_scores_from_the_ir(version_dir: Path, config) -> np.ndarray:
    """Raw IR scores of every good image that fitted nothing: the held-out ones and the validation split's good."""
    data = build_datamodule(config.dataset, SIZE)
    compiled = compile_ir(version_dir / IR_XML_FILENAME, "f32")
    held_out = score_images(compiled, data.calibration_loader()).raw_scores
    validation = score_images(compiled, data.datamodule.val_dataloader())
    return np.sort(np.concatenate([held_out, validation.raw_scores[~validation.is_anomalous]]))


def test_held_out_good_images_do_not_fit_the_model(trained_run, exported) -> None:
    counts = exported.metadata.dataset.counts
    assert counts["calibration"] == round(0.15 * 24) == 4
    assert counts["train"] == 20  # recorded after fitting: the trainer's own setup kept the split
    data = build_datamodule(trained_run.config.dataset, SIZE)
    fitted = set(data.datamodule.train_data.samples["image_path"])
    held_out = set(data.calibration.samples["image_path"])
    assert len(fitted) == 20 and len(held_out) == 4 and not fitted & held_out
    again = build_datamodule(trained_run.config.dataset, SIZE)
    assert set(again.calibration.samples["image_path"]) == held_out  # seeded: the export finds the same images


def test_default_threshold_is_the_score_at_one_percent_on_good_images(trained_run, exported) -> None:
    calibration = exported.metadata.calibration
    assert calibration.method == "false_reject_rate"
    assert calibration.target_false_reject_rate == 0.01
    good = calibration.good_scores
    assert good is not None and good.exact and good.count == 8  # 4 held out + 4 good validation images
    np.testing.assert_allclose(
        good.values, good_scores_from_the_ir(exported.version_dir, trained_run.config), rtol=1e-6
    )
    # 8 images cannot resolve 1 %: the threshold is the highest good score, expected rate 1/9, and it says so.
    assert calibration.image_threshold == threshold_for_false_reject_rate(good, 0.01) == good.values[-1]
    assert calibration.pixel_threshold == calibration.image_threshold
    assert calibration.smallest_resolvable_rate == pytest.approx(1 / 9)
    assert calibration.expected_rates().false_reject_rate == pytest.approx(1 / 9)
    (warning,) = calibration.warnings
    assert "below what 8 good calibration images can resolve (11.11% = 1/(n+1))" in warning
    assert calibration.defect_scores is not None and calibration.defect_scores.count == 10  # validation defects
    assert calibration.image_min <= good.values[0] and calibration.image_max >= calibration.defect_scores.values[-1]


def test_a_resolvable_rate_lands_on_its_order_statistic(trained_run, tmp_path: Path) -> None:
    options = ExportOptions(threshold=ThresholdOptions(target_false_reject_rate=0.3))
    calibration = export_run(trained_run, tmp_path, options).metadata.calibration
    good = calibration.good_scores
    assert good is not None
    # n = 8: k = floor(0.3 * 9) - 1 = 1 good score may lie above; expected rate (k + 1) / (n + 1) = 2/9.
    assert sum(score > calibration.image_threshold for score in good.values) == 1
    assert calibration.image_threshold == good.values[-2]
    assert expected_false_reject_rate(good, calibration.image_threshold) == pytest.approx(2 / 9)
    assert calibration.warnings == ()


def test_evaluation_counts_the_verdicts_at_the_threshold(exported) -> None:
    evaluation = exported.metadata.evaluation
    predictions = exported.predictions
    assert evaluation is not None and predictions is not None
    threshold = exported.metadata.calibration.image_threshold
    rejected = predictions.raw_scores > threshold
    good = ~predictions.labels
    assert evaluation.good_rejected == int(rejected[good].sum())
    assert evaluation.false_reject_rate == pytest.approx(rejected[good].mean())
    assert evaluation.defects_caught == int(rejected[predictions.labels].sum())
    by_type = evaluation.recall_by_defect_type
    assert sum(found.total for found in by_type.values()) == evaluation.num_anomalous
    for name, found in by_type.items():
        chosen = np.array([kind == name for kind in predictions.defect_types])
        assert (found.caught, found.total) == (int(rejected[chosen].sum()), int(chosen.sum()))
    np.testing.assert_array_equal(predictions.scores > 0.5, rejected)  # 0.5 is the calibrated threshold


def test_f1_method_keeps_anomalibs_threshold_and_records_the_scores(trained_run, tmp_path: Path) -> None:
    options = ExportOptions(threshold=ThresholdOptions(method="f1"))
    calibration = export_run(trained_run, tmp_path, options).metadata.calibration
    assert calibration.method == "f1"
    assert calibration.target_false_reject_rate is None
    assert calibration.image_threshold == trained_run.f1_calibration.image_threshold
    assert calibration.good_scores is not None and calibration.good_scores.count == 8
    assert calibration.expected_rates().false_reject_rate is not None


def test_a_calibration_folder_replaces_the_held_out_share(tiny_config, tmp_path: Path) -> None:
    chosen = tmp_path / "calibration"
    chosen.mkdir()
    source = tiny_config.dataset.root / "brick" / "test" / "good"
    for image in sorted(source.iterdir())[:3]:
        shutil.copy(image, chosen / f"extra-{image.name}")
    dataset = dataclasses.replace(tiny_config.dataset, calibration_dir=chosen)
    run = train(dataclasses.replace(tiny_config, dataset=dataset), tmp_path / "runs")
    assert (run.counts["train"], run.counts["calibration"]) == (24, 3)  # every training image fits
    calibration = export_run(run, tmp_path / "repository").metadata.calibration
    assert calibration.good_scores is not None and calibration.good_scores.count == 3 + 4
    assert str(chosen) in calibration.source


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"calibration_fraction": 1.0}, r"calibration fraction must be in \[0, 1\)"),
        ({"calibration_fraction": 0.99}, "leaves none to fit"),
        ({"calibration_dir": Path("/nonexistent/calibration")}, "/nonexistent/calibration does not exist"),
    ],
)
def test_bad_calibration_settings_are_refused(tiny_config, changes: dict, message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        build_datamodule(dataclasses.replace(tiny_config.dataset, **changes), SIZE)


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.5])
def test_target_rates_outside_zero_one_are_refused(rate: float) -> None:
    with pytest.raises(ConfigError, match="target false-reject rate must be between 0 and 1"):
        ThresholdOptions(target_false_reject_rate=rate)


def test_resolution_warning_fires_exactly_below_one_over_n_plus_one() -> None:
    assert resolution_warnings(99, 0.01) == ()
    (warning,) = resolution_warnings(98, 0.01)
    assert "at least 99 good calibration images" in warning
    assert resolution_warnings(9, 0.1) == ()
    assert len(resolution_warnings(8, 0.1)) == 1
