"""Metrics for a labelled batch, in numpy: image AUROC (Mann-Whitney U, ties averaged), F1, latency percentiles."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NORMAL_FOLDER = "good"


def mvtec_label(path: str | Path) -> int:
    """MVTec-style label from the parent folder: ``good`` → 0 (normal), any other folder → 1 (defect)."""
    return 0 if Path(path).parent.name == NORMAL_FOLDER else 1


def average_ranks(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, tied values sharing the mean of their ranks."""
    array = np.asarray(values, dtype=np.float64)
    _, inverse, counts = np.unique(array, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # rank of each distinct value's last occurrence
    return (last - (counts - 1) / 2.0)[inverse.reshape(-1)]


def auroc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve, ``U / (n_pos * n_neg)`` from the positives' rank sum (ties count one half).

    Labels are 1 (positive, defect) or 0. Raises ValueError unless both classes are present.
    """
    truth = np.asarray(labels, dtype=bool)
    values = np.asarray(scores, dtype=np.float64)
    if truth.shape != values.shape:
        raise ValueError(f"{truth.size} labels for {values.size} scores")
    positives = int(truth.sum())
    negatives = truth.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError("AUROC needs both normal and defective images")
    ranks = average_ranks(values)
    u = ranks[truth].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def f1(labels: Sequence[int] | np.ndarray, predictions: Sequence[bool] | np.ndarray) -> float:
    """F1 of binary predictions (positive = defect): ``2 TP / (2 TP + FP + FN)``; 0 when there is nothing to find."""
    truth = np.asarray(labels, dtype=bool)
    predicted = np.asarray(predictions, dtype=bool)
    tp = int(np.sum(truth & predicted))
    fp = int(np.sum(~truth & predicted))
    fn = int(np.sum(truth & ~predicted))
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


@dataclass(frozen=True)
class Evaluation:
    """Image-level metrics of a labelled batch."""

    n_normal: int
    n_defect: int
    auroc: float
    f1: float
    true_positives: int
    false_positives: int
    false_negatives: int
    true_negatives: int


def evaluate(labels: Sequence[int], scores: Sequence[float], verdicts: Sequence[bool]) -> Evaluation:
    """AUROC of ``scores`` and F1 of ``verdicts`` against ``labels`` (1 = defect)."""
    truth = np.asarray(labels, dtype=bool)
    predicted = np.asarray(verdicts, dtype=bool)
    return Evaluation(
        n_normal=int((~truth).sum()),
        n_defect=int(truth.sum()),
        auroc=auroc(truth, scores),
        f1=f1(truth, predicted),
        true_positives=int(np.sum(truth & predicted)),
        false_positives=int(np.sum(~truth & predicted)),
        false_negatives=int(np.sum(truth & ~predicted)),
        true_negatives=int(np.sum(~truth & ~predicted)),
    )


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> dict[str, float]:
    """``{"p50": ..., "p95": ..., "p99": ...}`` (linear interpolation); empty when there are no values."""
    if not values:
        return {}
    result = np.percentile(np.asarray(values, dtype=np.float64), qs)
    return {f"p{q:g}": float(v) for q, v in zip(qs, result, strict=True)}
