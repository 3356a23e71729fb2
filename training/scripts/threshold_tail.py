"""Where PatchCore's default threshold sits against held-out good and defective test scores, per input size.

For one MVTec category and each size: the threshold against the held-out good images' median score, the
highest held-out good score, and the defect recall at the threshold against the recall a threshold just
above the highest held-out good score would give (the default recipe at each size; one fit per size):

    .venv/bin/python training/scripts/threshold_tail.py --category screw --sizes 256,320,384
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np

from visinspect_training.api import DatasetSpec, TrainConfig, export_run, train

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "mvtec_ad"


def describe(category: str, size: int, root: Path) -> str:
    """One line for ``category`` at ``size``."""
    with tempfile.TemporaryDirectory(prefix="visinspect-tail-") as folder:
        work = Path(folder)
        dataset = DatasetSpec(kind="mvtec", root=root, category=category)
        run = train(TrainConfig(model_name=category, dataset=dataset, image_size=size), work / "runs")
        result = export_run(run, work / "repository")
    calibration, predictions = result.metadata.calibration, result.predictions
    assert predictions is not None and calibration.good_scores is not None
    good = predictions.raw_scores[~predictions.labels]
    defects = predictions.raw_scores[predictions.labels]
    pooled = np.asarray(calibration.good_scores.values)
    threshold, median = calibration.image_threshold, float(np.median(good))
    return (
        f"| {size} | {pooled.size} | {threshold / median:.2f} | {np.median(pooled) / median:.2f} "
        f"| {good.max() / median:.2f} | {int((defects > threshold).sum())}/{defects.size} "
        f"| {int((defects > good.max()).sum())}/{defects.size} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", default="screw")
    parser.add_argument("--sizes", default="256,320,384")
    parser.add_argument("--root", type=Path, default=SHARED)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    print(
        "| size | calibration images | threshold / held-out good median | calibration median / held-out median "
        "| held-out good max / median | recall at the threshold | recall above the held-out good max |"
    )
    print("|---|---|---|---|---|---|---|")
    for size in (int(value) for value in args.sizes.split(",")):
        print(describe(args.category, size, args.root), flush=True)


if __name__ == "__main__":
    main()
