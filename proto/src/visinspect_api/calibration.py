"""Thresholds at a chosen false-reject rate, and the rates to expect at any threshold.

The rules (derived and discussed in ``docs/calibration.md``, the one place they are written down):

* A part is rejected when its raw score is strictly greater than the raw threshold ``t``.
* ``g_(1) <= ... <= g_(n)`` are the raw scores of ``n`` good calibration images, each scored by a
  model that did not fit it. For a new good image from the same process,
  ``P(score > g_(j)) = (n + 1 - j) / (n + 1)`` whatever the score distribution (exchangeability; ties
  only lower it; out-of-fold scores make it approximate, on the conservative side).
* :func:`expected_false_reject_rate` of a threshold ``t`` is therefore ``(n + 1 - j) / (n + 1)`` with
  ``j = #{g_i <= t}``: an upper bound for thresholds between two calibration scores.
* :func:`threshold_for_false_reject_rate` returns the lowest calibration score whose expected rate is
  at most the target: ``g_(n - k)`` with ``k = floor(rate * (n + 1)) - 1`` good scores above it.
* Rates below ``1 / (n + 1)`` cannot be met with ``n`` images (:func:`smallest_resolvable_rate`):
  the threshold is then the largest good score and the expected rate is ``1 / (n + 1)``.
* :func:`defect_recall` is the plain fraction of labelled defect scores above ``t``.

Large samples are stored as a bounded sketch (:data:`MAX_STORED_SCORES` evenly spaced order
statistics, the minimum and maximum included); the rules then use the nearest kept order statistic on
the conservative side (a higher threshold, a higher expected rate).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass

MAX_STORED_SCORES = 1001
"""Most scores a :class:`ScoreSample` keeps; larger samples keep this many order statistics."""


@dataclass(frozen=True)
class ScoreSample:
    """Raw image scores of ``count`` images, ascending: all of them, or a sketch of order statistics.

    ``values[i]`` is the order statistic of 0-based rank :meth:`rank` ``(i)``; ``exact`` is True when
    every score is kept (``len(values) == count``).
    """

    count: int
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.count < 1 or not self.values or len(self.values) > self.count:
            raise ValueError("a score sample needs 1 <= len(values) <= count")
        if len(self.values) < self.count and len(self.values) < 2:
            raise ValueError("a sketch keeps at least the minimum and the maximum")
        if any(not math.isfinite(v) for v in self.values):
            raise ValueError("scores must be finite")
        if any(b < a for a, b in zip(self.values, self.values[1:], strict=False)):
            raise ValueError("scores must be in ascending order")

    @classmethod
    def of(cls, scores: Iterable[float], limit: int = MAX_STORED_SCORES) -> ScoreSample:
        """Sort ``scores``; keep all when there are at most ``limit``, else ``limit`` order statistics."""
        ordered = sorted(float(s) for s in scores)
        if not ordered:
            raise ValueError("no scores")
        if limit < 2:
            raise ValueError("a sketch keeps at least 2 scores")
        n = len(ordered)
        if n <= limit:
            return cls(count=n, values=tuple(ordered))
        return cls(count=n, values=tuple(ordered[_sketch_rank(i, n, limit)] for i in range(limit)))

    @property
    def exact(self) -> bool:
        """True when every score is kept."""
        return len(self.values) == self.count

    def rank(self, index: int) -> int:
        """0-based rank in the full sample of ``values[index]``."""
        return index if self.exact else _sketch_rank(index, self.count, len(self.values))

    def count_at_most(self, threshold: float) -> int:
        """``#{scores <= threshold}``, rounded down to a kept order statistic for a sketch."""
        kept = bisect.bisect_right(self.values, threshold)
        if kept == 0:
            return 0
        if self.exact:
            return kept
        return self.rank(kept - 1) + 1

    def count_above(self, threshold: float) -> int:
        """``#{scores > threshold}``, rounded down to a kept order statistic for a sketch."""
        kept = bisect.bisect_right(self.values, threshold)
        if kept == len(self.values):
            return 0
        if self.exact:
            return self.count - kept
        return self.count - self.rank(kept)


def _sketch_rank(index: int, count: int, kept: int) -> int:
    return round(index * (count - 1) / (kept - 1))


def smallest_resolvable_rate(num_good: int) -> float:
    """The lowest false-reject rate ``num_good`` good calibration images can vouch for: ``1 / (n + 1)``."""
    return 1.0 / (num_good + 1)


def expected_false_reject_rate(good: ScoreSample, raw_threshold: float) -> float:
    """Expected share of new good parts with a raw score above ``raw_threshold`` (an upper bound)."""
    n = good.count
    return (n + 1 - good.count_at_most(raw_threshold)) / (n + 1)


def threshold_for_false_reject_rate(good: ScoreSample, rate: float) -> float:
    """The lowest good calibration score whose :func:`expected_false_reject_rate` is at most ``rate``.

    Below :func:`smallest_resolvable_rate` this is the largest good score (expected ``1 / (n + 1)``).
    """
    if not 0.0 < rate < 1.0:
        raise ValueError(f"a false-reject rate must be between 0 and 1 (exclusive), got {rate!r}")
    n = good.count
    above = max(math.floor(rate * (n + 1) + 1e-9) - 1, 0)  # good scores allowed above the threshold
    wanted_rank = n - 1 - min(above, n - 1)  # 0-based rank of g_(n - above)
    if good.exact:
        return good.values[wanted_rank]
    index = next(i for i in range(len(good.values)) if good.rank(i) >= wanted_rank)
    return good.values[index]


def defect_recall(defects: ScoreSample, raw_threshold: float) -> float:
    """Share of the labelled defective calibration images with a raw score above ``raw_threshold``."""
    return defects.count_above(raw_threshold) / defects.count


def normalize_score(raw: float, threshold: float, minimum: float, maximum: float) -> float:
    """anomalib's normalisation ``clamp((raw - threshold) / (maximum - minimum) + 0.5, 0, 1)``."""
    value_range = maximum - minimum
    if value_range == 0:
        return 1.0 if raw > threshold else 0.0 if raw < threshold else 0.5
    return min(max((raw - threshold) / value_range + 0.5, 0.0), 1.0)


def raw_from_normalized(normalized: float, threshold: float, minimum: float, maximum: float) -> float:
    """The raw score that normalises to ``normalized`` (inside the clamp): the inverse of :func:`normalize_score`."""
    return threshold + (normalized - 0.5) * (maximum - minimum)
