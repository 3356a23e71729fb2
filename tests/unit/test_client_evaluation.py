"""AUROC (Mann-Whitney, ties averaged), F1, percentiles and MVTec labels, against brute-force definitions."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from visinspect_client.evaluation import auroc, average_ranks, evaluate, f1, mvtec_label, percentiles


def pairwise_auroc(labels: list[int], scores: list[float]) -> float:
    """P(score of a defect > score of a normal image), ties counting one half: the definition."""
    positives = [s for label, s in zip(labels, scores, strict=True) if label]
    negatives = [s for label, s in zip(labels, scores, strict=True) if not label]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(positives, negatives))
    return wins / (len(positives) * len(negatives))


def test_average_ranks_share_ties() -> None:
    assert average_ranks([10, 20, 20, 5, 20]).tolist() == [2.0, 4.0, 4.0, 1.0, 4.0]


@pytest.mark.parametrize(
    ("labels", "scores", "expected"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 1.0),
        ([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], 0.0),
        ([0, 1], [0.5, 0.5], 0.5),
        ([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9], 0.875),
    ],
)
def test_auroc_known_values(labels: list[int], scores: list[float], expected: float) -> None:
    assert auroc(labels, scores) == pytest.approx(expected)


@given(
    st.lists(
        st.tuples(st.integers(0, 1), st.integers(0, 6).map(float)),  # few distinct scores: many ties
        min_size=2,
        max_size=40,
    ).filter(lambda items: len({label for label, _ in items}) == 2)
)
def test_auroc_matches_the_pairwise_definition(items: list[tuple[int, float]]) -> None:
    labels = [label for label, _ in items]
    scores = [score for _, score in items]
    assert auroc(labels, scores) == pytest.approx(pairwise_auroc(labels, scores))


def test_auroc_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both"):
        auroc([1, 1], [0.2, 0.3])


def test_f1_and_confusion_counts() -> None:
    labels = [1, 1, 1, 0, 0]
    verdicts = [True, True, False, True, False]  # TP 2, FN 1, FP 1, TN 1
    assert f1(labels, verdicts) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    metrics = evaluate(labels, [0.9, 0.8, 0.1, 0.7, 0.2], verdicts)
    assert (metrics.true_positives, metrics.false_negatives, metrics.false_positives, metrics.true_negatives) == (
        2, 1, 1, 1,
    )  # fmt: skip
    assert (metrics.n_normal, metrics.n_defect) == (2, 3)
    assert f1([0, 0], [False, False]) == 0.0


def test_percentiles() -> None:
    values = list(range(1, 101))
    assert percentiles(values) == {
        "p50": pytest.approx(np.percentile(values, 50)),
        "p95": pytest.approx(np.percentile(values, 95)),
        "p99": pytest.approx(np.percentile(values, 99)),
    }
    assert percentiles([]) == {}


def test_mvtec_labels_come_from_the_parent_folder() -> None:
    assert mvtec_label(Path("bottle/test/good/000.png")) == 0
    assert mvtec_label("bottle/test/broken_large/000.png") == 1
    assert mvtec_label("line/good_ones/1.png") == 1
