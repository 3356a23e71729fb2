"""Model families and recipes compared on real data: the table behind the default recipe (docs/model-comparison.md).

For each recipe and each MVTec AD category in ../shared (plus the synthetic textures with
``--synthetic``), trains on every good training image, exports with the default threshold (1 % false
rejects on good images no scoring model fitted) and evaluates the exported IR at f32 on the held-out
half of the test split (the other half is the validation split). Columns:

* image / pixel AUROC on the held-out half;
* false rejects of good images and defect recall at the default threshold;
* localised: defective images whose returned mask (anomaly map above the pixel threshold, as the
  server returns it) touches the true defect, of those with a true mask;
* fit and export seconds (export includes out-of-fold calibration and evaluation), the IR's size,
  and the median latency of one image through the compiled IR (batch 1, after warm-up).

The table behind the default (docs/model-comparison-table.md), and the input sizes
(docs/model-comparison-sizes.md):

    .venv/bin/python training/scripts/compare_models.py --synthetic \\
        --recipes padim,patchcore,patchcore-reweighted,patchcore-blocks246,patchcore-lite0 \\
        --out docs/model-comparison-table.md
    .venv/bin/python training/scripts/compare_models.py --categories screw,transistor \\
        --recipes patchcore-320,patchcore-384,padim-384 --out docs/model-comparison-sizes.md
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from visinspect_api.model_repository import IR_BIN_FILENAME, IR_XML_FILENAME, ArchitectureName
from visinspect_training.api import DatasetSpec, TrainConfig, export_run, train
from visinspect_training.defaults import DEFAULT_BACKBONE, DEFAULT_IMAGE_SCORE, ImageScoreName
from visinspect_training.evaluate import TestPredictions
from visinspect_training.ir import compile_ir

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "mvtec_ad"
MVTEC_CATEGORIES = ("bottle", "screw", "transistor")
TEXTURES = ("brick", "grass", "gravel")
LATENCY_RUNS = 30


@dataclass(frozen=True)
class Recipe:
    """One family with its settings."""

    label: str
    model: ArchitectureName
    image_size: int = 256
    layers: tuple[str, ...] = ()
    coreset_ratio: float = 0.01
    tiles: int = 1
    image_score: ImageScoreName = DEFAULT_IMAGE_SCORE
    backbone: str = DEFAULT_BACKBONE


RECIPES = {
    "padim": Recipe("PaDiM", "padim"),
    "patchcore": Recipe("PatchCore 1 % (default)", "patchcore"),
    "patchcore-reweighted": Recipe(
        "PatchCore 1 %, anomalib's re-weighted score", "patchcore", image_score="reweighted"
    ),
    "patchcore-lite0": Recipe("PatchCore 1 %, tf_efficientnet_lite0", "patchcore", backbone="tf_efficientnet_lite0"),
    **{
        f"patchcore-{size}": Recipe(f"PatchCore 1 % at {size}", "patchcore", image_size=size)
        for size in (320, 384, 512)
    },
    **{f"padim-{size}": Recipe(f"PaDiM at {size}", "padim", image_size=size) for size in (320, 384)},
    "patchcore-512-tiles2": Recipe("PatchCore 1 % at 512, 2 x 2 tiles of 256", "patchcore", image_size=512, tiles=2),
    "patchcore-blocks246": Recipe(
        "PatchCore 1 %, blocks.2+4+6", "patchcore", layers=("blocks.2", "blocks.4", "blocks.6")
    ),
}


def datasets(names: list[str], synthetic_root: Path | None) -> list[DatasetSpec]:
    """The shared MVTec categories that are present, then the synthetic textures when asked for."""
    found = [DatasetSpec(kind="mvtec", root=SHARED, category=c) for c in names if (SHARED / c).is_dir()]
    if synthetic_root is not None:
        found += [DatasetSpec(kind="synthetic", root=synthetic_root, category=t) for t in TEXTURES]
    return found


def localised(predictions: TestPredictions, pixel_threshold: float) -> tuple[int, int]:
    """Defective images whose mask above ``pixel_threshold`` touches the true defect, of those with a true mask."""
    if predictions.masks is None:
        return 0, 0
    touched = total = 0
    for anomaly_map, mask, bad in zip(predictions.anomaly_maps, predictions.masks, predictions.labels, strict=True):
        if bad and mask.any():
            total += 1
            touched += int((anomaly_map[mask] > pixel_threshold).any())
    return touched, total


def latency_ms(xml_path: Path, size: int) -> float:
    """Median milliseconds of one image through the IR compiled for latency at f32."""
    compiled = compile_ir(xml_path, "f32", hint="LATENCY")
    image = np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    request = compiled.create_infer_request()
    for _ in range(3):
        request.infer(image)
    times = []
    for _ in range(LATENCY_RUNS):
        started = time.perf_counter()
        request.infer(image)
        times.append(time.perf_counter() - started)
    return 1000.0 * float(np.median(times))


def measure(recipe: Recipe, dataset: DatasetSpec, work: Path) -> dict[str, str]:
    """Train, export and evaluate one recipe on one dataset; one table row."""
    config = TrainConfig(
        model_name=f"{dataset.display_name}-{recipe.model}",
        dataset=dataset,
        model=recipe.model,
        layers=recipe.layers,
        image_size=recipe.image_size,
        tiles=recipe.tiles,
        coreset_ratio=recipe.coreset_ratio,
        image_score=recipe.image_score,
        backbone=recipe.backbone,
    )
    run = train(config, work / "runs")
    started = time.perf_counter()
    result = export_run(run, work / "repository")
    export_seconds = time.perf_counter() - started
    evaluation = result.metadata.evaluation
    assert evaluation is not None and result.predictions is not None
    touched, with_mask = localised(result.predictions, result.metadata.calibration.pixel_threshold)
    good = evaluation.num_images - evaluation.num_anomalous
    return {
        "dataset": dataset.display_name,
        "recipe": recipe.label,
        "image AUROC": _value(evaluation.image_auroc),
        "pixel AUROC": _value(evaluation.pixel_auroc),
        "good rejected": f"{evaluation.good_rejected}/{good}",
        "defect recall": f"{evaluation.defects_caught}/{evaluation.num_anomalous}",
        "localised": f"{touched}/{with_mask}" if with_mask else "n/a",
        "fit s": f"{run.fit_seconds:.0f}",
        "export s": f"{export_seconds:.0f}",
        "IR MB": f"{(result.version_dir / IR_BIN_FILENAME).stat().st_size / 1e6:.1f}",
        "latency ms": f"{latency_ms(result.version_dir / IR_XML_FILENAME, recipe.image_size):.1f}",
    }


def _value(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def table(rows: list[dict[str, str]]) -> str:
    """Markdown table of ``rows``."""
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row[column] for column in header) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write the table (with how it was made) to this markdown file")
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, of {', '.join(RECIPES)}")
    parser.add_argument("--categories", default=",".join(MVTEC_CATEGORIES))
    parser.add_argument("--synthetic", action="store_true", help="add the synthetic textures")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory(prefix="compare-models-") as folder:
        work = Path(folder)
        chosen = datasets(args.categories.split(","), work / "synthetic" if args.synthetic else None)
        for dataset in chosen:
            for name in args.recipes.split(","):
                rows.append(measure(RECIPES[name], dataset, work / name))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows)
    print(text)
    if args.out:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d")
        machine = f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores"
        command = shlex.join([".venv/bin/python", "training/scripts/compare_models.py", *sys.argv[1:]])
        args.out.write_text(
            f"# Model families compared\n\nMade by `{command}` on {stamp} ({machine}).\n\n{text}\n",
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
