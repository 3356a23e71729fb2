"""How far out-of-fold calibration scores sit from the scores of good parts the served model never saw.

For each shared MVTec AD category and seed: fit PaDiM on a seeded two thirds of the good training
images; score those images out of fold (5 and 10 folds) and set the 1 % threshold as export does (with
the validation split's good images); then score the unseen good images (the other third and the test
split's good images) with the served model. Prints one JSON line per category, seed and fold count:
the medians of both score sets, the threshold, and how many unseen good images it rejects.

    .venv/bin/python training/scripts/out_of_fold_bias.py [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np

from visinspect_api.calibration import ScoreSample, threshold_for_false_reject_rate
from visinspect_training import ir
from visinspect_training.api import DatasetSpec, TrainConfig, train
from visinspect_training.crossfit import out_of_fold_scores
from visinspect_training.data import build_datamodule
from visinspect_training.defaults import DEFAULT_IMAGE_SIZE, DEFAULT_TARGET_FALSE_REJECT_RATE
from visinspect_training.evaluate import score_images

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "mvtec_ad"
CATEGORIES = ("screw", "transistor", "bottle")
FOLD_COUNTS = (5, 10)


def measure(category: str, seed: int, work: Path) -> list[dict[str, object]]:
    """One fit on two thirds of the good training images; one row per fold count."""
    dataset = DatasetSpec(kind="mvtec", root=SHARED, category=category, seed=seed, calibration_fraction=1 / 3)
    run = train(TrainConfig(model_name=category, dataset=dataset, model="padim", seed=seed), work / "runs")
    size = DEFAULT_IMAGE_SIZE
    data = build_datamodule(dataset, (size, size))
    model, _, _ = ir.convert(run.config.family.serving_graph(run.model, run.config), size)
    ir.save(model, work / "model.xml", "FP32")
    compiled = ir.compile_ir(work / "model.xml", "f32")
    validation = score_images(compiled, data.datamodule.val_dataloader())
    test = score_images(compiled, data.datamodule.test_dataloader())
    held_out = data.calibration_loader()
    assert held_out is not None  # calibration_fraction holds a third of the good training images out
    unseen_third = score_images(compiled, held_out).raw_scores
    unseen = np.concatenate([unseen_third, test.raw_scores[~test.is_anomalous]])
    rows = []
    for folds in FOLD_COUNTS:
        oof = out_of_fold_scores(run.model, data, run.config, folds=folds).raw_scores
        pool = np.concatenate([oof, validation.raw_scores[~validation.is_anomalous]])
        threshold = threshold_for_false_reject_rate(ScoreSample.of(pool.tolist()), DEFAULT_TARGET_FALSE_REJECT_RATE)
        rows.append({
            "category": category,
            "seed": seed,
            "folds": folds,
            "calibration_images": len(pool),
            "out_of_fold_median": round(float(np.median(oof)), 3),
            "unseen_good_median": round(float(np.median(unseen)), 3),
            "threshold": round(float(threshold), 3),
            "unseen_good_rejected": f"{int((unseen > threshold).sum())}/{len(unseen)}",
        })  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    for seed in args.seeds:
        for category in CATEGORIES:
            if not (SHARED / category).is_dir():
                print(f"{category}: not in {SHARED}, skipped", flush=True)
                continue
            with tempfile.TemporaryDirectory() as scratch:
                for row in measure(category, seed, Path(scratch)):
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
