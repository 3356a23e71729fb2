"""The SDK's thresholds by false-reject rate and expected rates, from a hand-made ModelDescription (no server)."""

from __future__ import annotations

import asyncio
import json

import pytest

from visinspect_api.calibration import ScoreSample
from visinspect_api.model_repository import Calibration, DefectTypeRecall
from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_client import AsyncInspectionClient, ExpectedRates, InspectionClient, ModelDetails
from visinspect_client._protocol import model_details

GOOD = [float(score) for score in range(1, 100)]  # n = 99: rates resolve in steps of 1 / 100
DEFECTS = [50.0, 90.0, 97.0, 98.5, 120.0, 150.0]
IMAGE_THRESHOLD, IMAGE_MIN, IMAGE_MAX = 99.0, 1.0, 150.0  # 99 = g_(99): the threshold for a 1 % rate


def description(with_distributions: bool = True) -> pb.ModelDescription:
    calibration = pb.CalibrationSpec(
        image_threshold=IMAGE_THRESHOLD,
        pixel_threshold=0.4,
        image_min=IMAGE_MIN,
        image_max=IMAGE_MAX,
        pixel_min=0.0,
        pixel_max=1.0,
        source="good calibration images",
        overlaps_test=False,
    )
    evaluation = pb.EvaluationMetrics(num_images=20, num_anomalous=12, inference_precision="f32", image_auroc=0.97)
    if with_distributions:
        calibration.method = "false_reject_rate"
        calibration.target_false_reject_rate = 0.01
        calibration.good_scores.CopyFrom(pb.ScoreDistribution(count=len(GOOD), values=GOOD))
        calibration.defect_scores.CopyFrom(pb.ScoreDistribution(count=len(DEFECTS), values=DEFECTS))
        calibration.warnings.append("only 99 good calibration images")
        evaluation.false_reject_rate = 0.125
        evaluation.defect_recall = 0.75
        evaluation.pixel_aupro = 0.61
        evaluation.recall_by_defect_type.extend(
            [
                pb.DefectTypeRecall(name="hole", caught=5, total=6),
                pb.DefectTypeRecall(name="scratch", caught=4, total=6),
            ]
        )
    return pb.ModelDescription(
        name="brick",
        version=3,
        architecture="padim",
        input=pb.InputSpec(height=128, width=128),
        calibration=calibration,
        default_threshold=0.5,
        backbone="resnet18",
        layers=["layer1", "layer2"],
        n_features=50,
        weights="random",
        inference_precision="f32",
        ir_precision="FP32",
        dataset="brick",
        evaluation=evaluation,
        created_at="2024-01-01T00:00:00Z",
    )


def normalized(raw: float) -> float:
    return (raw - IMAGE_THRESHOLD) / (IMAGE_MAX - IMAGE_MIN) + 0.5


def test_the_new_fields_are_converted() -> None:
    details = model_details(description())
    calibration = details.calibration
    assert isinstance(calibration, Calibration)  # the contract's type, not a copy of it
    assert (calibration.method, calibration.target_false_reject_rate) == ("false_reject_rate", 0.01)
    assert calibration.good_scores == ScoreSample(count=99, values=tuple(GOOD))
    assert calibration.defect_scores == ScoreSample(count=6, values=tuple(DEFECTS))
    assert calibration.warnings == ("only 99 good calibration images",)
    assert calibration.smallest_resolvable_rate == pytest.approx(0.01)
    assert (details.false_reject_rate, details.defect_recall, details.pixel_aupro) == (0.125, 0.75, 0.61)
    assert details.recall_by_defect_type == {"hole": DefectTypeRecall(5, 6), "scratch": DefectTypeRecall(4, 6)}
    assert details.image_auroc == 0.97 and details.pixel_auroc is None


def test_threshold_for_a_rate_round_trips() -> None:
    details = model_details(description())
    threshold = details.threshold_for_false_reject_rate(0.05)
    # k = floor(0.05 * 100) - 1 = 4 good scores above the threshold: g_(95) = 95.
    assert threshold == pytest.approx(normalized(95.0))
    rates = details.expected_rates(threshold)
    assert isinstance(rates, ExpectedRates) and rates.threshold == threshold
    assert 0.05 - 1 / 100 < rates.false_reject_rate <= 0.05
    assert rates.defect_recall == pytest.approx(sum(score > 95.0 for score in DEFECTS) / len(DEFECTS))
    for rate in (0.01, 0.02, 0.1, 0.25, 0.5):
        rates = details.expected_rates(details.threshold_for_false_reject_rate(rate))
        assert rate - 1 / 100 < rates.false_reject_rate <= rate


def test_expected_rates_at_the_default_threshold() -> None:
    details = model_details(description())
    rates = details.expected_rates()
    assert rates.threshold == 0.5
    assert rates.false_reject_rate == pytest.approx(1 / 100)  # only the score 99 ties the threshold: not rejected
    assert rates.defect_recall == pytest.approx(2 / 6)  # 120 and 150 exceed 99
    assert details.expected_rates(1.0).false_reject_rate == pytest.approx(1 / 100)
    assert details.expected_rates(0.0).false_reject_rate == pytest.approx(76 / 100)  # raw 24.5: 1..24 pass


@pytest.mark.parametrize(
    ("rate", "words"),
    [
        (0.0, "between 0 and 1"),
        (1.5, "between 0 and 1"),
        (float("nan"), "between 0 and 1"),
        (0.9, "outside the normalised scale"),  # g_(10) = 10 is below the normalised 0
    ],
)
def test_rates_the_model_cannot_answer(rate: float, words: str) -> None:
    details = model_details(description())
    with pytest.raises(ValueError, match=words) as caught:
        details.threshold_for_false_reject_rate(rate)
    assert "model brick version 3" in str(caught.value)
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        details.expected_rates(1.5)


def test_a_model_without_distributions() -> None:
    details = model_details(description(with_distributions=False))
    calibration = details.calibration
    assert (calibration.method, calibration.target_false_reject_rate) == ("f1", None)
    assert calibration.good_scores is None and calibration.defect_scores is None and calibration.warnings == ()
    assert details.false_reject_rate is None and details.recall_by_defect_type == {}
    with pytest.raises(ValueError, match="model brick version 3: .*no good calibration scores.*export it again"):
        details.threshold_for_false_reject_rate(0.05)
    assert details.expected_rates() == ExpectedRates(0.5, None, None)


def test_an_empty_distribution_is_none() -> None:
    empty = description()
    empty.calibration.good_scores.CopyFrom(pb.ScoreDistribution(count=0))
    assert model_details(empty).calibration.good_scores is None
    assert model_details(empty).calibration.defect_scores is not None


def test_to_dict_is_json() -> None:
    data = json.loads(json.dumps(model_details(description()).to_dict()))
    calibration = data["calibration"]
    assert calibration["good_scores"] == {"count": 99, "values": GOOD}
    assert calibration["defect_scores"]["count"] == 6 and calibration["warnings"] == ["only 99 good calibration images"]
    assert (calibration["method"], calibration["target_false_reject_rate"]) == ("false_reject_rate", 0.01)
    assert data["recall_by_defect_type"] == {"hole": {"caught": 5, "total": 6}, "scratch": {"caught": 4, "total": 6}}
    assert data["layers"] == ["layer1", "layer2"] and data["pixel_aupro"] == 0.61
    old = json.loads(json.dumps(model_details(description(with_distributions=False)).to_dict()))
    assert old["calibration"]["good_scores"] is None


def test_the_clients_delegate_to_one_description(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int]] = []
    details = model_details(description())

    def model(name: str = "", version: int = 0, *, timeout: float | None = None) -> ModelDetails:
        calls.append((name, version))
        return details

    async def async_model(name: str = "", version: int = 0, *, timeout: float | None = None) -> ModelDetails:
        return model(name, version, timeout=timeout)

    with InspectionClient("127.0.0.1:1", retry=None) as client:  # nothing listens: model() is replaced
        monkeypatch.setattr(client, "model", model)
        assert client.threshold_for_false_reject_rate(0.05, "brick", 3) == pytest.approx(normalized(95.0))
        assert client.expected_rates() == details.expected_rates(0.5)
        with pytest.raises(ValueError, match="between 0 and 1"):
            client.threshold_for_false_reject_rate(1.5)
    assert calls == [("brick", 3), ("", 0), ("", 0)]

    async def main() -> None:
        async with AsyncInspectionClient("127.0.0.1:1", retry=None) as client:
            monkeypatch.setattr(client, "model", async_model)
            assert await client.threshold_for_false_reject_rate(0.05) == pytest.approx(normalized(95.0))
            assert (await client.expected_rates(0.4, "brick")).false_reject_rate == details.expected_rates(
                0.4
            ).false_reject_rate

    asyncio.run(main())
