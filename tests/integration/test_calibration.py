"""Thresholds from good images no scoring model fitted: out of fold (default), held out, a folder; the rule."""

from __future__ import annotations

import copy
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch

from tests.conftest import TINY_IMAGE_SIZE
from visinspect_api.calibration import expected_false_reject_rate, threshold_for_false_reject_rate
from visinspect_api.model_repository import IR_XML_FILENAME
from visinspect_training.api import ExportOptions, export_run, train
from visinspect_training.calibrate import ThresholdOptions, resolution_warnings
from visinspect_training.crossfit import out_of_fold_scores
from visinspect_training.data import build_datamodule, fold_assignment
from visinspect_training.errors import ConfigError, TrainingError
from visinspect_training.evaluate import score_images, to_uint8_nhwc
from visinspect_training.families.padim import PADIM
from visinspect_training.ir import ContractInput, compile_ir, convert

SIZE = (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
FOLDS = 10  # the default
TRAIN_IMAGES = 24  # tiny_config's good training images
GOOD_VALIDATION = 4  # tiny_config's good images in the validation split


def fold_model_ir_scores(trained_run, fold: int) -> dict[str, float]:
    """Raw IR scores of one fold's images under a PaDiM fitted, by anomalib's own code, on the other folds."""
    data = build_datamodule(trained_run.config.dataset, SIZE)
    train_data = data.datamodule.train_data
    fold_of = fold_assignment(train_data, FOLDS, trained_run.config.dataset.seed)
    fold_model = copy.deepcopy(trained_run.model).train()
    fold_model.memory_bank = []
    normalise = ContractInput()
    with torch.no_grad():
        for batch in data.loader(train_data.subsample(np.flatnonzero(fold_of != fold).tolist())):
            fold_model(normalise(torch.from_numpy(to_uint8_nhwc(batch.image))))  # training mode: into the bank
    fold_model.fit()
    ir_model, _, _ = convert(PADIM.serving_graph(fold_model.eval(), trained_run.config), TINY_IMAGE_SIZE)
    compiled = compile_ir_in_memory(ir_model)
    held = train_data.subsample(np.flatnonzero(fold_of == fold).tolist())
    scored = score_images(compiled, data.loader(held))
    return dict(zip(scored.paths, scored.raw_scores.tolist(), strict=True))


def compile_ir_in_memory(model: ov.Model) -> ov.CompiledModel:
    return ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def validation_good_scores(version_dir: Path, config) -> np.ndarray:
    """The served IR's raw scores of the validation split's good images."""
    data = build_datamodule(config.dataset, SIZE)
    validation = score_images(compile_ir(version_dir / IR_XML_FILENAME, "f32"), data.datamodule.val_dataloader())
    return validation.raw_scores[~validation.is_anomalous]


def test_folds_are_seeded_balanced_and_independent_of_listing_order(trained_run) -> None:
    train_data = build_datamodule(trained_run.config.dataset, SIZE).datamodule.train_data
    fold_of = fold_assignment(train_data, FOLDS, seed=0)
    assert sorted(np.bincount(fold_of).tolist()) == [2, 2, 2, 2, 2, 2, 3, 3, 3, 3]
    reversed_listing = train_data.subsample(list(range(len(train_data)))[::-1])
    paths = train_data.samples["image_path"].tolist()
    again = dict(zip(reversed_listing.samples["image_path"], fold_assignment(reversed_listing, FOLDS, 0), strict=True))
    assert [again[path] for path in paths] == fold_of.tolist()
    assert fold_assignment(train_data, FOLDS, seed=1).tolist() != fold_of.tolist()


def test_every_training_image_fits_the_served_model_and_is_scored_out_of_fold(trained_run, exported) -> None:
    counts = exported.metadata.dataset.counts
    assert (counts["train"], counts["calibration"]) == (TRAIN_IMAGES, 0)
    data = build_datamodule(trained_run.config.dataset, SIZE)
    oof = out_of_fold_scores(trained_run.model, data, trained_run.config, folds=FOLDS)
    scores = dict(zip(oof.paths, oof.raw_scores.tolist(), strict=True))
    assert len(scores) == TRAIN_IMAGES
    for fold in (0, 3):
        expected = fold_model_ir_scores(trained_run, fold)
        got = np.array([scores[path] for path in expected])
        np.testing.assert_allclose(got, list(expected.values()), rtol=1e-5)
    # Each image scores higher out of fold than under the served model, which fitted it.
    served = score_images(
        compile_ir(exported.version_dir / IR_XML_FILENAME, "f32"), data.loader(data.datamodule.train_data)
    )
    in_fold = dict(zip(served.paths, served.raw_scores.tolist(), strict=True))
    assert all(scores[path] > in_fold[path] for path in scores)


def test_out_of_fold_scores_at_a_lower_precision_come_from_fold_irs(trained_run) -> None:
    data = build_datamodule(trained_run.config.dataset, SIZE)
    exact = out_of_fold_scores(trained_run.model, data, trained_run.config, folds=FOLDS)
    rounded = out_of_fold_scores(trained_run.model, data, trained_run.config, folds=FOLDS, ir_precision="FP16")
    by_path = dict(zip(exact.paths, exact.raw_scores.tolist(), strict=True))
    got = dict(zip(rounded.paths, rounded.raw_scores.tolist(), strict=True))
    assert got.keys() == by_path.keys()
    differences = np.array([abs(got[path] / by_path[path] - 1.0) for path in by_path])
    assert 0.0 < differences.max() < 5e-3  # FP16 weights round the scores a little, never more


def test_default_threshold_is_the_score_at_one_percent_on_good_images(trained_run, exported) -> None:
    calibration = exported.metadata.calibration
    assert calibration.method == "false_reject_rate"
    assert calibration.target_false_reject_rate == 0.01
    good = calibration.good_scores
    n = TRAIN_IMAGES + GOOD_VALIDATION
    assert good is not None and good.exact and good.count == n
    data = build_datamodule(trained_run.config.dataset, SIZE)
    oof = out_of_fold_scores(trained_run.model, data, trained_run.config, folds=FOLDS).raw_scores
    validation = validation_good_scores(exported.version_dir, trained_run.config)
    np.testing.assert_allclose(good.values, np.sort(np.concatenate([oof, validation])), rtol=1e-6)
    assert f"{TRAIN_IMAGES} good training images, each scored by a model fitted on the other 9 of 10 folds" in (
        calibration.source
    )
    # 28 images cannot resolve 1 %: the threshold is the highest good score, expected rate 1/29, and it says so.
    assert calibration.image_threshold == threshold_for_false_reject_rate(good, 0.01) == good.values[-1]
    assert calibration.pixel_threshold == calibration.image_threshold
    assert calibration.smallest_resolvable_rate == pytest.approx(1 / (n + 1))
    assert calibration.expected_rates().false_reject_rate == pytest.approx(1 / (n + 1))
    (warning,) = calibration.warnings
    assert f"below what {n} good calibration images can resolve (3.45% = 1/(n+1))" in warning
    assert calibration.defect_scores is not None and calibration.defect_scores.count == 10  # validation defects
    assert calibration.image_min <= good.values[0] and calibration.image_max >= calibration.defect_scores.values[-1]


def test_a_resolvable_rate_lands_on_its_order_statistic(trained_run, tmp_path: Path) -> None:
    options = ExportOptions(threshold=ThresholdOptions(target_false_reject_rate=0.3))
    calibration = export_run(trained_run, tmp_path, options).metadata.calibration
    good = calibration.good_scores
    assert good is not None
    # n = 28: k = floor(0.3 * 29) - 1 = 7 good scores may lie above; expected rate (k + 1) / (n + 1) = 8/29.
    assert sum(score > calibration.image_threshold for score in good.values) == 7
    assert calibration.image_threshold == good.values[-8]
    assert expected_false_reject_rate(good, calibration.image_threshold) == pytest.approx(8 / 29)
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
    assert calibration.good_scores is not None and calibration.good_scores.count == TRAIN_IMAGES + GOOD_VALIDATION
    assert calibration.expected_rates().false_reject_rate is not None


def test_a_held_out_fraction_fits_neither_the_served_model_nor_anything_else(tiny_config, tmp_path: Path) -> None:
    dataset = dataclasses.replace(tiny_config.dataset, calibration_fraction=0.15)
    run = train(dataclasses.replace(tiny_config, dataset=dataset), tmp_path / "runs")
    assert run.counts["calibration"] == round(0.15 * 24) == 4
    assert run.counts["train"] == 20  # recorded after fitting: the trainer's own setup kept the split
    data = build_datamodule(dataset, SIZE)
    fitted = set(data.datamodule.train_data.samples["image_path"])
    held_out = set(data.calibration.samples["image_path"])
    assert len(fitted) == 20 and len(held_out) == 4 and not fitted & held_out
    assert set(build_datamodule(dataset, SIZE).calibration.samples["image_path"]) == held_out  # seeded
    calibration = export_run(run, tmp_path / "repository").metadata.calibration
    assert calibration.good_scores is not None and calibration.good_scores.count == 4 + GOOD_VALIDATION
    compiled = compile_ir_in_memory(convert(PADIM.serving_graph(run.model, run.config), TINY_IMAGE_SIZE)[0])
    held = score_images(compiled, data.calibration_loader()).raw_scores
    pool = np.sort(np.concatenate([held, validation_good_scores(tmp_path / "repository" / "brick" / "1", run.config)]))
    np.testing.assert_allclose(calibration.good_scores.values, pool, rtol=1e-5)
    assert "4 good training images held out from fitting (fraction 0.15, seed 0)" in calibration.source


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
        ({"calibration_folds": 1}, "calibration folds must be 0 .off. or at least 2, got 1"),
        ({"calibration_folds": -2}, "calibration folds must be 0 .off. or at least 2, got -2"),
    ],
)
def test_bad_calibration_settings_are_refused(tiny_config, changes: dict, message: str) -> None:
    with pytest.raises(TrainingError, match=message):
        build_datamodule(dataclasses.replace(tiny_config.dataset, **changes), SIZE)


def test_folds_become_leave_one_out_below_their_count_and_too_few_images_are_refused(trained_run) -> None:
    train_data = build_datamodule(trained_run.config.dataset, SIZE).datamodule.train_data
    assert sorted(fold_assignment(train_data.subsample([0, 1, 2]), FOLDS, seed=0).tolist()) == [0, 1, 2]
    assert sorted(fold_assignment(train_data.subsample([0, 1, 2, 3]), 2, seed=0).tolist()) == [0, 0, 1, 1]
    with pytest.raises(ConfigError, match="2 good training images are too few for 2 calibration folds"):
        fold_assignment(train_data.subsample([0, 1]), FOLDS, seed=0)
    with pytest.raises(ConfigError, match="3 good training images are too few for 2 calibration folds"):
        fold_assignment(train_data.subsample([0, 1, 2]), 2, seed=0)


def test_leave_one_out_calibration_on_three_training_images(tiny_config, tmp_path: Path) -> None:
    synthetic = dataclasses.replace(tiny_config.dataset.synthetic, n_train=3)
    dataset = dataclasses.replace(tiny_config.dataset, root=tmp_path / "synthetic", synthetic=synthetic)
    run = train(dataclasses.replace(tiny_config, dataset=dataset), tmp_path / "runs")
    calibration = export_run(run, tmp_path / "repository").metadata.calibration
    assert calibration.good_scores is not None and calibration.good_scores.count == 3 + GOOD_VALIDATION
    assert "3 good training images, each scored by a model fitted on the other 2 of 3 folds" in calibration.source


def test_without_folds_or_held_out_images_only_the_validation_split_calibrates(trained_run, tmp_path: Path) -> None:
    dataset = dataclasses.replace(trained_run.config.dataset, calibration_folds=0)
    run = dataclasses.replace(trained_run, config=dataclasses.replace(trained_run.config, dataset=dataset))
    calibration = export_run(run, tmp_path).metadata.calibration
    assert calibration.good_scores is not None and calibration.good_scores.count == GOOD_VALIDATION
    assert "training images" not in calibration.source


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
