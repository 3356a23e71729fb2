"""Export names the good calibration images that set the threshold, so a user can review them."""

from __future__ import annotations

import numpy as np

from visinspect_training.calibrate import threshold_setters
from visinspect_training.evaluate import Scored


def scored(paths: list[str], scores: list[float], anomalous: list[bool]) -> Scored:
    part = Scored()
    count = len(paths)
    part.record(paths, np.array(scores, np.float32), np.array(anomalous), np.zeros(count, np.float32), (0.0, 1.0))
    return part


def test_good_images_at_or_above_the_threshold_highest_first() -> None:
    out_of_fold = scored(["a.png", "b.png", "c.png"], [1.0, 3.0, 2.0], [False, False, False])
    validation = scored(["d.png", "e.png", "f.png"], [2.5, 9.0, 2.0], [False, True, False])
    got = threshold_setters((out_of_fold, None, validation), 2.0)
    assert got == [("b.png", 3.0), ("d.png", 2.5), ("c.png", 2.0), ("f.png", 2.0)]  # e.png is defective


def test_none_above_the_threshold() -> None:
    assert threshold_setters((scored(["a.png"], [1.0], [False]),), 1.5) == []
    assert threshold_setters((None,), 0.0) == []
