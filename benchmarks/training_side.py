"""The benchmark's torch side, run in child processes so torch never loads into the measuring process.

``prepare``: train PaDiM on MVTec bottle (default backbone) and export the same run three ways: our IR
at f32 (model ``bottle``), our IR at bf16 (model ``bottle_bf16``), and anomalib's own OpenVINO export
with anomalib's default pre-processing (resize to 256x256 inside the graph), what a user would deploy.
Then train PatchCore (its defaults) on the same images and export it at f32 (model ``bottle_patchcore``).

``anchor``: what a user would write instead of the facade: ``OpenVINOInferencer.predict(path)`` in a
loop on anomalib's export; prints per-image latencies and scores as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path

CATEGORY = "bottle"
BF16_MODEL = "bottle_bf16"
PATCHCORE_MODEL = "bottle_patchcore"


def prepare(dataset_root: Path, repository: Path, scratch: Path) -> dict[str, object]:
    """Train PaDiM once and export it three ways, train and export PatchCore; return where everything is."""
    from anomalib.models import Padim  # noqa: PLC0415 - torch stays in this child

    from visinspect_training.anomalib_export import anomalib_module  # noqa: PLC0415
    from visinspect_training.api import DatasetSpec, ExportOptions, TrainConfig, export_run, train  # noqa: PLC0415

    started = time.monotonic()
    spec = DatasetSpec(kind="mvtec", root=dataset_root, category=CATEGORY)
    run = train(TrainConfig(model_name=CATEGORY, dataset=spec, model="padim"), scratch / "runs")
    fit_s = time.monotonic() - started
    f32 = export_run(run, repository)
    bf16_run = dataclasses.replace(run, config=dataclasses.replace(run.config, model_name=BF16_MODEL))
    bf16 = export_run(bf16_run, repository, ExportOptions(inference_precision="bf16"))
    module = anomalib_module(run, f32.metadata.calibration)
    module.pre_processor = Padim.configure_pre_processor()  # anomalib's default: Resize(256) + Normalize
    anomalib_xml = Path(module.to_openvino(export_root=scratch / "anomalib"))
    started = time.monotonic()
    patchcore_run = train(TrainConfig(model_name=PATCHCORE_MODEL, dataset=spec, model="patchcore"), scratch / "runs")
    patchcore_fit_s = time.monotonic() - started
    patchcore = export_run(patchcore_run, repository)
    exports = ((CATEGORY, f32), (BF16_MODEL, bf16), (PATCHCORE_MODEL, patchcore))
    return {
        "fit_seconds": fit_s,
        "fit_seconds_by_model": {CATEGORY: fit_s, PATCHCORE_MODEL: patchcore_fit_s},
        "anomalib_xml": str(anomalib_xml),
        "anomalib_pre_processor": str(module.pre_processor.export_transform).replace("\n", " "),
        "versions": {name: result.version for name, result in exports},
        "evaluation": {
            name: dataclasses.asdict(result.metadata.evaluation)
            for name, result in exports
            if result.metadata.evaluation is not None
        },
    }


def anchor(xml: Path, images: list[str], config: dict[str, str], warmup: int) -> dict[str, object]:
    """``OpenVINOInferencer.predict(path)`` per image, after ``warmup`` calls: latencies (ms) and scores."""
    from anomalib.deploy import OpenVINOInferencer  # noqa: PLC0415

    os.chdir(xml.parent)  # the inferencer writes an openvino_cache folder into the working directory
    inferencer = OpenVINOInferencer(path=xml, device="CPU", config=config or None)
    for path in images[:warmup]:
        inferencer.predict(path)
    latencies, scores = [], []
    for path in images:
        started = time.perf_counter()
        prediction = inferencer.predict(path)
        latencies.append((time.perf_counter() - started) * 1e3)
        scores.append(float(prediction.pred_score.reshape(-1)[0]))
    compiled = inferencer.model
    return {
        "latency_ms": latencies,
        "scores": scores,
        "config": config,
        "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
        "performance_hint": str(compiled.get_property("PERFORMANCE_HINT")),
    }


def main() -> int:
    """``prepare`` or ``anchor``; the result is one JSON line on stdout, chatter goes to stderr."""
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare")
    prep.add_argument("--dataset-root", type=Path, required=True)
    prep.add_argument("--repository", type=Path, required=True)
    prep.add_argument("--scratch", type=Path, required=True)
    anc = commands.add_parser("anchor")
    anc.add_argument("--xml", type=Path, required=True)
    anc.add_argument("--images", type=Path, required=True, help="a file with one image path per line")
    anc.add_argument("--precision", default="", help="INFERENCE_PRECISION_HINT; empty: OpenVINO's default")
    anc.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    result_fd = os.dup(1)
    os.dup2(2, 1)  # libraries print to stdout; keep it for the result
    warnings.filterwarnings("ignore")
    if args.command == "prepare":
        result = prepare(args.dataset_root, args.repository, args.scratch)
    else:
        config = {"INFERENCE_PRECISION_HINT": args.precision} if args.precision else {}
        images = args.images.read_text().split()
        result = anchor(args.xml, images, config, args.warmup)
    with os.fdopen(result_fd, "w") as out:
        out.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
