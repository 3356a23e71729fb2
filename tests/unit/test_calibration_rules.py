"""The threshold-by-rate rules (visinspect_api.calibration) on data whose answer is known."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import norm

from visinspect_api.calibration import (
    MAX_STORED_SCORES,
    ScoreSample,
    defect_recall,
    expected_false_reject_rate,
    smallest_resolvable_rate,
    threshold_for_false_reject_rate,
)


def test_threshold_is_the_conservative_order_statistic() -> None:
    good = ScoreSample.of(range(1, 100))  # n = 99: g_(j) = j
    # k = floor(r * 100) - 1 good scores may lie above the threshold g_(99 - k).
    assert threshold_for_false_reject_rate(good, 0.05) == 95.0
    assert threshold_for_false_reject_rate(good, 0.059) == 95.0
    assert threshold_for_false_reject_rate(good, 0.06) == 94.0
    assert threshold_for_false_reject_rate(good, 0.5) == 50.0
    assert threshold_for_false_reject_rate(good, 0.01) == 99.0


def test_expected_rate_counts_good_scores_at_or_below_the_threshold() -> None:
    good = ScoreSample.of([3.0, 1.0, 2.0, 4.0])  # n = 4
    assert expected_false_reject_rate(good, 0.5) == 1.0  # below every good score
    assert expected_false_reject_rate(good, 1.0) == 4 / 5
    assert expected_false_reject_rate(good, 2.5) == 3 / 5  # between scores: the bound of the lower one
    assert expected_false_reject_rate(good, 4.0) == 1 / 5  # at the maximum: 1 / (n + 1), never 0
    assert expected_false_reject_rate(good, 1e9) == 1 / 5


@pytest.mark.parametrize("n", [1, 7, 49, 99, 100, 250, 999])
def test_threshold_and_expected_rate_round_trip(n: int) -> None:
    scores = np.random.default_rng(n).normal(size=n)
    good = ScoreSample.of(scores.tolist())
    for rate in np.linspace(0.001, 0.999, 181):
        threshold = threshold_for_false_reject_rate(good, float(rate))
        expected = expected_false_reject_rate(good, threshold)
        if rate >= smallest_resolvable_rate(n):
            assert expected <= rate + 1e-12
            assert expected > rate - 1 / (n + 1) - 1e-12  # the lowest threshold that meets the rate
        else:  # below the resolution: the largest good score, expected 1 / (n + 1)
            assert threshold == good.values[-1]
            assert expected == pytest.approx(1 / (n + 1))


def test_on_average_the_threshold_rejects_the_requested_share_of_new_good_parts() -> None:
    """Good scores ~ N(0, 1): the true false-reject rate of a threshold t is norm.sf(t), known exactly."""
    rng = np.random.default_rng(0)
    n, rate = 199, 0.05  # (k + 1) / (n + 1) = 0.05 exactly
    true_rates = [
        norm.sf(threshold_for_false_reject_rate(ScoreSample.of(rng.normal(size=n).tolist()), rate)) for _ in range(400)
    ]
    # Exchangeability makes the mean exactly 0.05; 400 draws of a Beta(10, 190) have a standard error of 0.0008.
    assert np.mean(true_rates) == pytest.approx(rate, abs=0.003)


def test_ties_never_raise_the_rate() -> None:
    good = ScoreSample.of([5.0] * 10)
    threshold = threshold_for_false_reject_rate(good, 0.2)
    assert threshold == 5.0
    assert expected_false_reject_rate(good, threshold) == pytest.approx(1 / 11)


def test_smallest_resolvable_rate() -> None:
    assert smallest_resolvable_rate(99) == 0.01
    assert smallest_resolvable_rate(48) == pytest.approx(1 / 49)


def test_defect_recall_is_the_share_above_the_threshold() -> None:
    defects = ScoreSample.of([10.0, 20.0, 30.0, 40.0])
    assert defect_recall(defects, 5.0) == 1.0
    assert defect_recall(defects, 20.0) == 0.5  # strictly above: 20 is not caught
    assert defect_recall(defects, 40.0) == 0.0


def test_a_large_sample_is_stored_as_a_bounded_sketch() -> None:
    scores = np.random.default_rng(3).gamma(2.0, size=100_000)
    sketch = ScoreSample.of(scores.tolist())
    exact = ScoreSample.of(scores.tolist(), limit=len(scores))
    assert sketch.count == 100_000
    assert len(sketch.values) == MAX_STORED_SCORES
    assert not sketch.exact and exact.exact
    assert sketch.values[0] == scores.min() and sketch.values[-1] == scores.max()
    assert len(json.dumps(sketch.values)) < 25_000
    for rate in (0.001, 0.005, 0.01, 0.1, 0.5):
        from_sketch = threshold_for_false_reject_rate(sketch, rate)
        exact_threshold = threshold_for_false_reject_rate(exact, rate)
        assert from_sketch >= exact_threshold  # conservative: a higher threshold
        true_rate = expected_false_reject_rate(exact, from_sketch)
        assert rate - 1.5 / MAX_STORED_SCORES <= true_rate <= rate
        # The sketch's own estimate never claims a lower rate than the full sample gives.
        assert expected_false_reject_rate(sketch, from_sketch) >= true_rate - 1e-12
    for threshold in np.quantile(scores, [0.1, 0.5, 0.9, 0.99]):
        assert abs(expected_false_reject_rate(sketch, threshold) - expected_false_reject_rate(exact, threshold)) < 2e-3
        assert defect_recall(sketch, threshold) <= defect_recall(exact, threshold) + 1e-12


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_rates_outside_zero_one_are_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        threshold_for_false_reject_rate(ScoreSample.of([1.0, 2.0]), rate)


@pytest.mark.parametrize(
    ("count", "values", "message"),
    [
        (0, (), "len"),
        (2, (2.0, 1.0), "ascending"),
        (2, (1.0, math.inf), "finite"),
        (1, (1.0, 2.0), "len"),
        (5, (1.0,), "minimum and the maximum"),
    ],
)
def test_invalid_samples_are_refused(count: int, values: tuple[float, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScoreSample(count=count, values=values)
