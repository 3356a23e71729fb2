"""False-reject rate and defect recall at the default threshold, before and after thresholds by rate.

For each MVTec AD category in ../shared and each synthetic texture, trains PaDiM once (every good training
image fits the model; PaDiM was the default when thresholds by rate came, and docs/model-comparison.md
has PatchCore at the same threshold) and exports twice:

* before: anomalib's F1-adaptive threshold on the validation split (half of the test images, defects
  and good mixed);
* after: the default: the threshold at a 1 % false-reject rate on good images no scoring model fitted:
  the training images out of fold and the validation split's good images (see docs/calibration.md).

Both are evaluated on the same held-out half of the test images, with the exported IR at f32.

    .venv/bin/python training/scripts/threshold_table.py --out docs/thresholds.md
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import platform
import tempfile
import warnings
from datetime import UTC, datetime
from pathlib import Path

from scipy.stats import binom

from visinspect_api.model_repository import Calibration, Evaluation
from visinspect_training.api import DatasetSpec, ExportOptions, TrainConfig, export_run, train
from visinspect_training.defaults import DEFAULT_CALIBRATION_FOLDS, DEFAULT_TARGET_FALSE_REJECT_RATE

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "mvtec_ad"
MVTEC_CATEGORIES = ("bottle", "screw", "transistor")
TEXTURES = ("brick", "grass", "gravel")
SIGNIFICANCE = 0.05


def datasets(synthetic_root: Path) -> list[DatasetSpec]:
    """The shared MVTec categories that are present, then the synthetic textures."""
    found = [
        DatasetSpec(kind="mvtec", root=SHARED, category=category)
        for category in MVTEC_CATEGORIES
        if (SHARED / category).is_dir()
    ]
    found += [DatasetSpec(kind="synthetic", root=synthetic_root, category=texture) for texture in TEXTURES]
    return found


def measure(dataset: DatasetSpec, work: Path) -> dict[bool, tuple[Calibration, Evaluation]]:
    """Train once; export before (F1) and after (the default); each version's calibration and evaluation."""
    config = TrainConfig(model_name=dataset.display_name, dataset=dataset, model="padim", seed=dataset.seed)
    run = train(config, work / "runs")
    results = {}
    for after in (False, True):
        options = ExportOptions()
        if not after:
            options = dataclasses.replace(options, threshold=dataclasses.replace(options.threshold, method="f1"))
        metadata = export_run(run, work / "repo", options).metadata
        assert metadata.evaluation is not None
        results[after] = (metadata.calibration, metadata.evaluation)
    return results


def consistent(rejected: int, good: int, rate: float) -> bool:
    """True unless ``rejected`` of ``good`` is significantly more than ``rate`` (one-sided binomial test)."""
    return bool(binom.sf(rejected - 1, good, rate) >= SIGNIFICANCE)


def _count(part: int | None, whole: int, value: float | None) -> str:
    return "n/a" if value is None or part is None else f"{part}/{whole} ({value:.1%})"


def _auroc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/thresholds.md"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    target = DEFAULT_TARGET_FALSE_REJECT_RATE
    rows = [
        "| dataset | recipe | good images calibrating | expected FRR | FRR on good test images | "
        f"≤ 2 × {target:.0%}? | defect recall | image AUROC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_type = ["| dataset | defect type | recall before | recall after |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for dataset in datasets(work / "synthetic"):
            results = measure(dataset, work)
            for after, (calibration, metrics) in results.items():
                good = metrics.num_images - metrics.num_anomalous
                expected = calibration.expected_rates().false_reject_rate
                rejected = metrics.good_rejected or 0
                verdict = "yes" if consistent(rejected, good, 2 * target) else "**no**"
                pool = calibration.good_scores.count if calibration.good_scores else 0
                recipe = f"after: {target:.0%} FRR on good images" if after else "before: F1 on test mix"
                cells = [
                    dataset.display_name,
                    recipe,
                    str(pool),
                    "n/a" if expected is None else f"{expected:.1%}",
                    _count(metrics.good_rejected, good, metrics.false_reject_rate),
                    verdict if after else "",
                    _count(metrics.defects_caught, metrics.num_anomalous, metrics.defect_recall),
                    _auroc(metrics.image_auroc),
                ]
                rows.append("| " + " | ".join(cells) + " |")
            before, after_metrics = results[False][1], results[True][1]
            for name, found in after_metrics.recall_by_defect_type.items():
                old = before.recall_by_defect_type.get(name)
                old_text = "n/a" if old is None else f"{old.caught}/{old.total}"
                by_type.append(f"| {dataset.display_name} | {name} | {old_text} | {found.caught}/{found.total} |")
            print(f"{dataset.display_name}: done", flush=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    text = "\n".join(
        [
            "# Thresholds: false rejects and recall at the default threshold, before and after",
            "",
            f"Made by `.venv/bin/python training/scripts/threshold_table.py` on {stamp} ({platform.machine()}, "
            "OpenVINO f32). Each dataset is trained once with the default backbone (every good training "
            "image fits the model, so the image AUROC is the same before and after) and exported twice; both "
            "versions are evaluated on the same held-out half of the test images (the other half is the "
            "validation split). The rules behind the thresholds are in [calibration.md](calibration.md).",
            "",
            "- **before**: anomalib's F1-adaptive threshold on the validation split (defects and good images mixed).",
            f"- **after** (the default): the score at a {target:.0%} false-reject rate on good images no "
            f"scoring model fitted: every training image scored out of fold ({DEFAULT_CALIBRATION_FOLDS} "
            "folds) and the validation split's good images.",
            "- *good images calibrating*: n, the good scores the threshold is set on (the F1 threshold does "
            "not use them; they give its expected FRR).",
            "- *expected FRR*: what the calibration promises for new good parts, 1/(n+1) at best with n "
            "good calibration images.",
            f"- *≤ 2 × {target:.0%}?*: whether the false rejects on good test images are consistent with a "
            f"rate of at most {2 * target:.0%} (one-sided binomial test at {SIGNIFICANCE}): with about 20 good "
            "test images per category a single false reject is 5 %, so this is what the test set can resolve.",
            "",
            *rows,
            "",
            "## Recall per defect type (test split)",
            "",
            *by_type,
            "",
        ]
    )
    args.out.write_text(text, encoding="utf-8")
    print(args.out)


if __name__ == "__main__":
    main()
