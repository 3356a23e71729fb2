"""Where PatchCore's default threshold sits against held-out good and defective test scores, per input size.

For one MVTec category and each size: the threshold against the held-out good images' median score, the
highest held-out good score, and the defect recall at the threshold against the recall a threshold just
above the highest held-out good score would give, and the good images that set the threshold (export
names them in its log; the default recipe at each size; one fit per size):

    .venv/bin/python training/scripts/threshold_tail.py --category screw --sizes 256,320,384
"""

from __future__ import annotations

import argparse
import logging
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np

from visinspect_training.api import DatasetSpec, TrainConfig, export_run, train

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "mvtec_ad"


class _Setters(logging.Handler):
    """Keeps the good images export names as setting the threshold (``calibrate.py``'s log line)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "is set by the good calibration images" in message:
            listed = message.split("): ", 1)[1]
            self.names = [
                f"{Path(path).parent.parent.name}/{Path(path).stem}" for path in re.findall(r"(\S+) \(", listed)
            ]


def describe(category: str, size: int, root: Path) -> str:
    """One line for ``category`` at ``size``."""
    setters = _Setters()
    calibrate_log = logging.getLogger("visinspect_training.calibrate")
    calibrate_log.addHandler(setters)
    calibrate_log.setLevel(logging.INFO)
    try:
        with tempfile.TemporaryDirectory(prefix="visinspect-tail-") as folder:
            work = Path(folder)
            dataset = DatasetSpec(kind="mvtec", root=root, category=category)
            run = train(TrainConfig(model_name=category, dataset=dataset, image_size=size), work / "runs")
            result = export_run(run, work / "repository")
    finally:
        calibrate_log.removeHandler(setters)
    calibration, predictions = result.metadata.calibration, result.predictions
    assert predictions is not None and calibration.good_scores is not None
    good = predictions.raw_scores[~predictions.labels]
    defects = predictions.raw_scores[predictions.labels]
    pooled = np.asarray(calibration.good_scores.values)
    threshold, median = calibration.image_threshold, float(np.median(good))
    return (
        f"| {size} | {pooled.size} | {threshold / median:.2f} | {np.median(pooled) / median:.2f} "
        f"| {good.max() / median:.2f} | {int((defects > threshold).sum())}/{defects.size} "
        f"| {int((defects > good.max()).sum())}/{defects.size} | {', '.join(setters.names)} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--category", default="screw")
    parser.add_argument("--sizes", default="256,320,384")
    parser.add_argument("--root", type=Path, default=SHARED)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.DEBUG)  # export's INFO line names the images that set the threshold
    print(
        "| size | calibration images | threshold / held-out good median | calibration median / held-out median "
        "| held-out good max / median | recall at the threshold | recall above the held-out good max "
        "| good images at or above the threshold |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for size in (int(value) for value in args.sizes.split(",")):
        print(describe(args.category, size, args.root), flush=True)


if __name__ == "__main__":
    main()
