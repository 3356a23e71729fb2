"""The metadata schema: round trip, and every kind of invalid file is refused with the field named."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tests.sample_metadata import as_dict, make_metadata
from visinspect_api.calibration import ScoreSample
from visinspect_api.model_repository import (
    METADATA_FILENAME,
    MetadataError,
    ModelMetadata,
    list_models,
    list_versions,
    read_metadata,
    write_metadata,
)


def test_round_trip_through_a_version_folder(tmp_path: Path) -> None:
    metadata = make_metadata()
    write_metadata(tmp_path, metadata)
    assert read_metadata(tmp_path) == metadata
    assert (tmp_path / METADATA_FILENAME).is_file()


def test_version_1_metadata_still_loads_as_an_f1_calibration() -> None:
    """A file written before thresholds by rate: schema 1, no method, no distributions, no new metrics."""
    data = as_dict(make_metadata())
    data["schema_version"] = 1
    for name in ("method", "target_false_reject_rate", "good_scores", "defect_scores", "warnings"):
        del data["calibration"][name]
    for name in ("false_reject_rate", "defect_recall", "good_rejected", "defects_caught", "recall_by_defect_type",
                 "pixel_aupro"):  # fmt: skip
        del data["evaluation"][name]
    metadata = ModelMetadata.from_json(json.dumps(data))
    assert metadata.schema_version == 1
    calibration = metadata.calibration
    assert (calibration.method, calibration.good_scores, calibration.defect_scores) == ("f1", None, None)
    assert calibration.image_threshold == 51.9
    assert calibration.expected_rates(0.5).false_reject_rate is None
    with pytest.raises(ValueError, match="no good calibration scores"):
        calibration.threshold_for_false_reject_rate(0.01)


def test_expected_rates_and_threshold_for_a_rate_on_the_normalised_scale() -> None:
    calibration = make_metadata().calibration  # threshold 51.9, range 492 - 19.5; good 20, 30, 40, 51.9
    assert calibration.expected_rates(0.5).false_reject_rate == pytest.approx(1 / 5)
    assert calibration.expected_rates(0.5).defect_recall == pytest.approx(2 / 3)
    normalised = calibration.threshold_for_false_reject_rate(0.4)  # k = floor(0.4 * 5) - 1 = 1: threshold g_(3) = 40
    assert normalised == pytest.approx((40.0 - 51.9) / (492.0 - 19.5) + 0.5)
    rates = calibration.expected_rates(normalised)
    assert rates.false_reject_rate == pytest.approx(2 / 5)
    assert rates.defect_recall == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        calibration.expected_rates(1.2)


def test_a_large_calibration_sample_keeps_the_file_small(tmp_path: Path) -> None:
    scores = [float(i) for i in range(200_000)]
    calibration = dataclasses.replace(
        make_metadata().calibration, good_scores=ScoreSample.of(scores), defect_scores=ScoreSample.of(scores)
    )
    write_metadata(tmp_path, make_metadata(calibration=calibration))
    assert (tmp_path / METADATA_FILENAME).stat().st_size < 60_000
    reread = read_metadata(tmp_path).calibration
    assert reread.good_scores == calibration.good_scores and reread.good_scores.count == 200_000


def test_evaluation_is_optional() -> None:
    metadata = make_metadata(evaluation=None)
    assert ModelMetadata.from_json(metadata.to_json()).evaluation is None


def mutate(path: str, value, delete: bool = False) -> str:
    data = as_dict(make_metadata())
    *parents, leaf = path.split(".")
    target = data
    for key in parents:
        target = target[key]
    if delete:
        del target[leaf]
    else:
        target[leaf] = value
    return json.dumps(data)


@pytest.mark.parametrize(
    ("path", "value", "delete", "message"),
    [
        ("calibration.image_threshold", None, True, "missing field calibration.image_threshold"),
        ("calibration.image_threshold", "high", False, "calibration.image_threshold must be a number"),
        ("input.height", 25.5, False, "input.height must be an integer"),
        ("input.height", True, False, "input.height must be an integer"),
        ("input.layout", "NCHW", False, "input.layout must be one of ['NHWC']"),
        ("inference_precision", "int4", False, "inference_precision must be one of"),
        ("backbone.layers", "blocks.1", False, "backbone.layers must be a list"),
        ("input.value_range", [0, 1, 2], False, "input.value_range must have 2 items"),
        ("dataset.counts", [1], False, "dataset.counts must be an object"),
        ("calibration.overlaps_test", 1, False, "calibration.overlaps_test must be true or false"),
        ("surprise", 1, False, "unknown field surprise"),
        ("calibration.surprise", 1, False, "unknown field calibration.surprise"),
        ("evaluation", "good", False, "evaluation must be an object"),
        ("schema_version", 4, False, "unsupported schema_version 4"),
        ("calibration.good_scores", {"count": 2, "values": [2.0, 1.0]}, False, "calibration.good_scores: .*ascending"),
        ("calibration.good_scores", {"count": 2}, False, "missing field calibration.good_scores.values"),
        ("calibration.target_false_reject_rate", 1.5, False, "target_false_reject_rate must be between 0 and 1"),
        ("calibration.good_scores", None, False, "needs target_false_reject_rate and good_scores"),
        ("calibration.method", "median", False, "calibration.method must be one of"),
        ("ir_bin_sha256", "xyz", False, "ir_bin_sha256 must be 64 lowercase hex digits"),
        ("backbone.weights_sha256", "F" * 64, False, "backbone.weights_sha256 must be 64 lowercase hex digits"),
        ("calibration.image_min", 1e9, False, "calibration min must not exceed max"),
        ("input.width", 0, False, "input.height and input.width must be positive"),
        ("model_name", "../escape", False, "is not a valid model name"),
        ("backbone.layers", [], False, "backbone needs at least one layer"),
    ],
)
def test_invalid_metadata_names_the_field(path: str, value, delete: bool, message: str) -> None:
    with pytest.raises(MetadataError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        ModelMetadata.from_json(mutate(path, value, delete))


def test_non_finite_calibration_is_refused() -> None:
    text = mutate("calibration.pixel_threshold", float("nan"))
    with pytest.raises(MetadataError, match="calibration.pixel_threshold must be a finite number"):
        ModelMetadata.from_json(text)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_malformed_json_is_refused(text: str) -> None:
    with pytest.raises(MetadataError):
        ModelMetadata.from_json(text)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match=str(tmp_path / METADATA_FILENAME)):
        read_metadata(tmp_path)


def test_write_refuses_invalid_metadata(tmp_path: Path) -> None:
    with pytest.raises(MetadataError):
        write_metadata(tmp_path, make_metadata(ir_bin_sha256="short"))
    assert not (tmp_path / METADATA_FILENAME).exists()


def test_versions_are_positive_integer_folders(tmp_path: Path) -> None:
    for name in ("1", "10", "2", "0", "tmp", ".3", "-4"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert list_versions(tmp_path) == [1, 2, 10]
    assert list_versions(tmp_path / "absent") == []


def test_models_exclude_hidden_folders(tmp_path: Path) -> None:
    for name in ("bottle", "brick", ".staging"):
        (tmp_path / name).mkdir()
    (tmp_path / "config.json").write_text("{}")
    assert list_models(tmp_path) == ["bottle", "brick"]
