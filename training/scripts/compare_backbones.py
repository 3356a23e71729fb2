"""Measure offline backbones x n_features on several datasets, to choose the training defaults.

Writes a Markdown table (image AUROC, image F1, pixel AUROC where masks exist, fit time) measured
from the exported IR at f32 with OpenVINO. MVTec bottle is used when ../shared has it.

    .venv/bin/python training/scripts/compare_backbones.py --out docs/backbone-comparison.md
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import warnings
from pathlib import Path

from visinspect_training.api import DatasetSpec, ExportOptions, TrainConfig, export_run, train

CANDIDATES = {
    "tf_efficientnet_lite0": ("blocks.1", "blocks.2", "blocks.4"),
    "mobilenetv2_100": ("blocks.1", "blocks.2", "blocks.4"),
}
N_FEATURES = (50, 100)
BOTTLE = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "mvtec_ad"


def datasets(synthetic_root: Path) -> list[DatasetSpec]:
    found = [DatasetSpec(kind="synthetic", root=synthetic_root, category=t) for t in ("brick", "grass", "gravel")]
    if (BOTTLE / "bottle").is_dir():
        found.append(DatasetSpec(kind="mvtec", root=BOTTLE, category="bottle"))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("docs/backbone-comparison.md"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    rows = [
        "| dataset | backbone | n_features | image AUROC | image F1 | pixel AUROC | fit s |",
        "|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for dataset in datasets(work / "synthetic"):
            for backbone, layers in CANDIDATES.items():
                for n_features in N_FEATURES:
                    config = TrainConfig(
                        model_name=dataset.display_name,
                        dataset=dataset,
                        model="padim",
                        backbone=backbone,
                        layers=layers,
                        n_features=n_features,
                    )
                    run = train(config, work / "runs")
                    metrics = export_run(run, work / "repo", ExportOptions()).metadata.evaluation
                    assert metrics is not None
                    cells = [metrics.image_auroc, metrics.image_f1, metrics.pixel_auroc]
                    text = ["n/a" if v is None else f"{v:.4f}" for v in cells]
                    row = f"| {dataset.display_name} | {backbone} | {n_features} | {' | '.join(text)} | {run.fit_seconds:.1f} |"
                    print(row, flush=True)
                    rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(rows) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
