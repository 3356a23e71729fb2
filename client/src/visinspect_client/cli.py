"""``visinspect``: score images from the command line (``predict``), list ``models``, check ``health``.

Exit status: 0 when everything succeeded, 1 when some images failed (they are listed), 2 for usage and
connection errors. Needs the ``cli`` extra (rich, Pillow).
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visinspect_api.model_repository import ExpectedRates
from visinspect_client.client import InspectionClient
from visinspect_client.connection import DEFAULT_TARGET, TlsConfig
from visinspect_client.errors import VisInspectError
from visinspect_client.evaluation import evaluate, mvtec_label, percentiles
from visinspect_client.results import DetectionFailure, DetectionResult, ModelDetails

EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif"})
CSV_COLUMNS = (
    "path", "verdict", "score", "confidence", "raw_score", "regions",
    "box_x", "box_y", "box_width", "box_height", "latency_ms", "model", "version", "label", "overlay", "error",
)  # fmt: skip


class UsageError(Exception):
    """A problem with the command line or the connection: exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``visinspect`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        import rich  # noqa: F401, PLC0415 - the cli extra; checked before any work
    except ImportError:
        print("error: the visinspect command needs: pip install 'visinspect-client[cli]'", file=sys.stderr)
        return EXIT_USAGE
    try:
        with connect(args) as client:
            return int(args.run(args, client))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except VisInspectError as exc:  # reaching the server, credentials, unknown model: nothing was scored
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (subcommands predict, models, health; connection options on each)."""
    connection = argparse.ArgumentParser(add_help=False)
    group = connection.add_argument_group("connection")
    group.add_argument(
        "--server",
        default=os.environ.get("VISINSPECT_SERVER", DEFAULT_TARGET),
        help="host:port of the server, or several separated by commas: calls are spread over those serving "
        "(env VISINSPECT_SERVER; default %(default)s)",
    )
    group.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default %(default)s)")
    group.add_argument("--tls", action="store_true", help="use TLS with the system's root certificates")
    group.add_argument("--ca-cert", type=Path, help="PEM file of the CA that signed the server's certificate (TLS)")
    group.add_argument("--client-cert", type=Path, help="PEM client certificate (mutual TLS; with --client-key)")
    group.add_argument("--client-key", type=Path, help="PEM client private key (mutual TLS)")
    group.add_argument("--server-name", help="name to verify in the server's certificate (TLS)")
    group.add_argument(
        "--token", default=os.environ.get("VISINSPECT_TOKEN"), help="bearer token (env VISINSPECT_TOKEN)"
    )

    parser = argparse.ArgumentParser(prog="visinspect", description="Client of the visual inspection service.")
    commands = parser.add_subparsers(dest="command", required=True)

    predict = commands.add_parser(
        "predict", parents=[connection], help="score image files, folders (recursive) or globs"
    )
    predict.add_argument("paths", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    predict.add_argument("--model", default="", help="model name (default: the server's only model)")
    predict.add_argument("--version", type=int, default=0, help="model version (default: the newest)")
    choice = predict.add_mutually_exclusive_group()
    choice.add_argument("--threshold", type=float, help="decision threshold on the normalised score, in [0, 1]")
    choice.add_argument(
        "--false-reject-rate",
        type=float,
        metavar="RATE",
        help="use the threshold at which this share of good parts is expected to be rejected (0.005 = 0.5 %%), "
        "from the model's calibration scores",
    )
    predict.add_argument("--concurrency", type=int, default=4, help="calls in flight (default %(default)s)")
    predict.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output on stdout")
    predict.add_argument("--overlays", type=Path, metavar="DIR", help="write one heat-map overlay PNG per image")
    predict.add_argument(
        "--evaluate", action="store_true", help="image AUROC and F1 from MVTec-style folders (good = normal)"
    )
    predict.set_defaults(run=run_predict)

    models = commands.add_parser("models", parents=[connection], help="list the served models")
    models.add_argument("--format", choices=("table", "json"), default="table")
    models.set_defaults(run=run_models)

    health = commands.add_parser("health", parents=[connection], help="print the server's health (exit 0 if SERVING)")
    health.add_argument("--service", default="", help='"" (the server), or model/<name> for one model')
    health.set_defaults(run=run_health)
    return parser


def connect(args: argparse.Namespace) -> InspectionClient:
    """The client the options describe."""
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be positive, got {args.timeout}")
    tls = None
    if args.tls or args.ca_cert or args.client_cert or args.client_key or args.server_name:
        try:
            tls = TlsConfig(args.ca_cert, args.client_cert, args.client_key, args.server_name)
            tls.credentials()  # read the PEM files now, to report a bad path as a usage error
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    try:
        return InspectionClient(args.server, tls=tls, token=args.token or None, timeout=args.timeout)
    except ValueError as exc:  # an unusable --server
        raise UsageError(str(exc)) from exc


# --- predict -------------------------------------------------------------------------------------


@dataclass
class Row:
    """One image's line of output."""

    path: str
    result: DetectionResult | None = None
    error: str | None = None
    label: int | None = None
    overlay: str | None = None

    def record(self) -> dict[str, Any]:
        result = self.result
        largest = max(result.regions, key=lambda r: r.area) if result and result.regions else None
        box = None if largest is None else {k: getattr(largest, k) for k in ("x", "y", "width", "height", "area")}
        return {
            "path": self.path,
            "verdict": result.verdict if result else "error",
            "score": result.score if result else None,
            "confidence": result.confidence if result else None,
            "raw_score": result.raw_score if result else None,
            "threshold": result.threshold if result else None,
            "regions": len(result.regions) if result else None,
            "largest_region": box,
            "latency_ms": result.latency_ms if result else None,
            "model": result.model if result else None,
            "version": result.version if result else None,
            "label": self.label,
            "overlay": self.overlay,
            "error": self.error,
        }


@dataclass
class Run:
    """What predict gathered."""

    rows: list[Row] = field(default_factory=list)
    wall_s: float = 0.0

    def summary(self, evaluate_labels: bool) -> dict[str, Any]:
        scored = [row.result for row in self.rows if row.result is not None]
        anomalous = sum(result.is_anomalous for result in scored)
        failed = [row for row in self.rows if row.error is not None]
        summary: dict[str, Any] = {
            "images": len(self.rows),
            "scored": len(scored),
            "failed": len(failed),
            "anomalous": anomalous,
            "normal": len(scored) - anomalous,
            "anomaly_rate": anomalous / len(scored) if scored else None,
            "latency_ms": percentiles([result.latency_ms for result in scored]),
            "wall_s": self.wall_s,
            "images_per_s": len(scored) / self.wall_s if self.wall_s > 0 else None,
        }
        if evaluate_labels:
            summary["evaluation"] = self._evaluation()
        return summary

    def _evaluation(self) -> dict[str, Any]:
        labelled = [(row.label, row.result) for row in self.rows if row.result is not None and row.label is not None]
        labels = [label for label, _ in labelled]
        if 0 not in labels or 1 not in labels:
            return {"error": "needs both normal images (in folders named 'good') and defective ones (other folders)"}
        metrics = evaluate(
            labels, [result.raw_score for _, result in labelled], [result.is_anomalous for _, result in labelled]
        )
        return {
            "image_auroc": metrics.auroc,
            "image_f1": metrics.f1,
            "normal_images": metrics.n_normal,
            "defective_images": metrics.n_defect,
            "true_positives": metrics.true_positives,
            "false_positives": metrics.false_positives,
            "false_negatives": metrics.false_negatives,
            "true_negatives": metrics.true_negatives,
            "scores": "raw",
        }


def run_predict(args: argparse.Namespace, client: InspectionClient) -> int:
    """``visinspect predict``."""
    from rich.console import Console  # noqa: PLC0415 - the cli extra
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn  # noqa: PLC0415

    if args.concurrency < 1:
        raise UsageError(f"--concurrency must be at least 1, got {args.concurrency}")
    paths = expand_paths(args.paths)
    overlay_targets = plan_overlays(paths, args.overlays) if args.overlays else {}
    details = client.model(args.model, args.version)  # checks the server, the model and the version up front
    threshold = chosen_threshold(args, details)
    run = Run(rows=[Row(str(path), label=mvtec_label(path) if args.evaluate else None) for path in paths])
    err = Console(stderr=True)
    started = time.perf_counter()
    columns = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=err.is_terminal) as progress:
        task = progress.add_task("scoring", total=len(paths))
        outcomes = client.detect_iter(
            paths,
            concurrency=args.concurrency,
            model=details.name,
            version=details.version,  # one version for the whole batch, even if a newer one appears
            threshold=threshold,
            regions=True,
            anomaly_map=bool(args.overlays),
        )
        for row, path, outcome in zip(run.rows, paths, outcomes, strict=True):
            if isinstance(outcome, DetectionFailure):
                row.error = f"{outcome.error.code.name}: {outcome.error}"
            else:
                row.result = outcome
                if args.overlays:
                    write_overlay(row, path, outcome, overlay_targets[path])
            progress.advance(task)
    run.wall_s = time.perf_counter() - started
    summary = run.summary(args.evaluate)
    summary["model"], summary["version"] = details.name, details.version
    summary.update(threshold_summary(details, threshold, args.false_reject_rate))
    print_predictions(args.format, run, summary)
    failed = [row for row in run.rows if row.error is not None]
    for row in failed:
        print(f"failed: {row.path}: {row.error}", file=sys.stderr)
    return EXIT_FAILURES if failed else EXIT_OK


def chosen_threshold(args: argparse.Namespace, details: ModelDetails) -> float | None:
    """``--threshold``, or the threshold for ``--false-reject-rate`` (UsageError when the model cannot answer)."""
    rate = args.false_reject_rate
    if rate is None:
        threshold: float | None = args.threshold
        return threshold
    try:
        threshold = details.threshold_for_false_reject_rate(rate)
    except ValueError as exc:
        raise UsageError(f"--false-reject-rate {rate:g}: {exc}") from exc
    smallest = details.calibration.smallest_resolvable_rate
    if smallest is not None and rate < smallest:
        print(
            f"warning: --false-reject-rate {rate:g} is below the {smallest:.2%} that model {details.name} version "
            f"{details.version}'s good calibration images can vouch for: using the highest good score's threshold",
            file=sys.stderr,
        )
    return threshold


def threshold_summary(details: ModelDetails, threshold: float | None, requested_rate: float | None) -> dict[str, Any]:
    """The threshold applied and the false-reject rate and defect recall the calibration expects at it."""
    applied = details.default_threshold if threshold is None else threshold
    try:
        rates = details.expected_rates(applied)
    except ValueError:  # a --threshold outside [0, 1]: the server refuses every image and says why
        rates = ExpectedRates(applied, None, None)
    return {
        "threshold": applied,
        "requested_false_reject_rate": requested_rate,
        "expected_false_reject_rate": rates.false_reject_rate,
        "expected_defect_recall": rates.defect_recall,
    }


def write_overlay(row: Row, path: Path, result: DetectionResult, target: Path) -> None:
    """Save the overlay of one image; a failure becomes the row's error (the score is kept)."""
    try:
        result.save_overlay(path, target)
    except (OSError, VisInspectError, ValueError) as exc:
        row.error = f"overlay not written: {exc}"
        return
    row.overlay = str(target)
    # Drop the decoded heat map: a batch keeps only the small per-image records.
    row.result = _without_arrays(result)


def _without_arrays(result: DetectionResult) -> DetectionResult:
    from dataclasses import replace  # noqa: PLC0415

    return replace(result, anomaly_map=None, mask=None)


def expand_paths(arguments: Sequence[str]) -> list[Path]:
    """Files as given, folders searched recursively for images, glob patterns expanded; sorted per argument,
    duplicates dropped. Raises UsageError for a path that does not exist or a pattern matching nothing."""
    found: list[Path] = []
    for argument in arguments:
        candidate = Path(argument)
        if candidate.is_dir():
            matches = images_in(candidate)
        elif candidate.exists():
            matches = [candidate]
        elif glob.has_magic(argument):
            matches = []
            for match in sorted(glob.glob(argument, recursive=True)):
                path = Path(match)
                if path.is_dir():
                    matches += images_in(path)
                elif path.is_file():
                    matches.append(path)
            if not matches:
                raise UsageError(f"the pattern {argument!r} matches no file")
        else:
            raise UsageError(f"no such file or folder: {argument}")
        found += matches
    unique = list(dict.fromkeys(found))
    if not unique:
        raise UsageError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {' '.join(arguments)}")
    return unique


def images_in(folder: Path) -> list[Path]:
    """The image files below ``folder``, recursively, sorted."""
    return [p for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]


def plan_overlays(paths: Sequence[Path], folder: Path) -> dict[Path, Path]:
    """Where each image's overlay goes: the images' folder structure (below their common folder) mirrored under
    ``folder``, ``.png`` names kept and other names suffixed with ``.png``. Refuses to overwrite an input."""
    resolved = {path: path.resolve() for path in paths}
    base = Path(os.path.commonpath([p.parent for p in resolved.values()]))
    inputs = set(resolved.values())
    targets: dict[Path, Path] = {}
    for path, absolute in resolved.items():
        relative = absolute.relative_to(base)
        if relative.suffix.lower() != ".png":
            relative = relative.with_name(relative.name + ".png")
        target = folder / relative
        if target.resolve() in inputs:
            raise UsageError(f"--overlays {folder} would overwrite the input {path}; choose another folder")
        targets[path] = target
    return targets


def print_predictions(output_format: str, run: Run, summary: dict[str, Any]) -> None:
    """The results on stdout (and the summary: in the JSON, after the table, or on stderr with CSV)."""
    records = [row.record() for row in run.rows]
    if output_format == "json":
        json.dump({"results": records, "summary": summary}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif output_format == "csv":
        sys.stdout.write(to_csv(records))
        print(summary_text(summary), file=sys.stderr)
    else:
        console = stdout_console()
        console.print(results_table(records))
        console.print(summary_text(summary), highlight=False)


def to_csv(records: Sequence[dict[str, Any]]) -> str:
    """CSV with :data:`CSV_COLUMNS` (the largest region's box in box_* columns; empty cells for missing values)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for record in records:
        box = record["largest_region"] or {}
        row = {name: record.get(name) for name in CSV_COLUMNS if name in record}
        row.update({f"box_{key}": box.get(key) for key in ("x", "y", "width", "height")})
        writer.writerow({key: "" if value is None else value for key, value in row.items()})
    return buffer.getvalue()


def results_table(records: Sequence[dict[str, Any]]) -> Any:
    """A rich Table of the records."""
    from rich.table import Table  # noqa: PLC0415

    table = Table(show_lines=False)
    for name, justify in (
        ("path", "left"),
        ("verdict", "left"),
        ("score", "right"),
        ("confidence", "right"),
        ("regions", "right"),
        ("largest box (x,y,w,h)", "left"),
    ):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    styles = {"anomalous": "bold red", "normal": "green", "error": "yellow"}
    for record in records:
        box = record["largest_region"]
        verdict = record["verdict"]
        table.add_row(
            record["path"],
            f"[{styles[verdict]}]{verdict}[/]",
            _number(record["score"]),
            _number(record["confidence"]),
            "" if record["regions"] is None else str(record["regions"]),
            "" if box is None else f"{box['x']},{box['y']},{box['width']},{box['height']}",
        )
    return table


def summary_text(summary: dict[str, Any]) -> str:
    """The summary as a few human-readable lines."""
    rate = summary["anomaly_rate"]
    lines = [
        f"{summary['images']} images: {summary['scored']} scored, {summary['failed']} failed; "
        f"{summary['anomalous']} anomalous, {summary['normal']} normal"
        + (f" (anomaly rate {rate:.1%})" if rate is not None else ""),
        f"model {summary.get('model', '?')} version {summary.get('version', '?')}",
    ]
    if "threshold" in summary:
        lines.append(threshold_text(summary))
    latency = summary["latency_ms"]
    if latency:
        lines.append(
            "latency (client-side) p50 {p50:.1f} ms, p95 {p95:.1f} ms, p99 {p99:.1f} ms".format(**latency)
            + (f"; {summary['images_per_s']:.1f} images/s" if summary["images_per_s"] else "")
        )
    evaluation = summary.get("evaluation")
    if evaluation is not None:
        if "error" in evaluation:
            lines.append(f"evaluation: cannot evaluate: {evaluation['error']}")
        else:
            lines.append(
                f"image AUROC {evaluation['image_auroc']:.4f}, F1 {evaluation['image_f1']:.4f} "
                f"({evaluation['normal_images']} good, {evaluation['defective_images']} defective; "
                f"TP {evaluation['true_positives']}, FP {evaluation['false_positives']}, "
                f"FN {evaluation['false_negatives']}, TN {evaluation['true_negatives']})"
            )
    return "\n".join(lines)


def threshold_text(summary: dict[str, Any]) -> str:
    """The threshold line: where the threshold came from and the rates the calibration expects at it."""
    requested = summary.get("requested_false_reject_rate")
    source = "" if requested is None else f" (for a false-reject rate of {requested:.2%})"
    expected = ", ".join(
        f"{name} {'unknown' if value is None else f'{value:.2%}'}"
        for name, value in (
            ("false-reject rate", summary["expected_false_reject_rate"]),
            ("defect recall", summary["expected_defect_recall"]),
        )
    )
    return f"threshold {summary['threshold']:.4f}{source}; expected from calibration: {expected}"


def stdout_console() -> Any:
    """A rich Console on stdout; when it is not a terminal (a pipe, a file), wide enough not to fold paths."""
    from rich.console import Console  # noqa: PLC0415

    piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
    return Console(width=200 if piped else None)


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


# --- models, health ------------------------------------------------------------------------------


def run_models(args: argparse.Namespace, client: InspectionClient) -> int:
    """``visinspect models``."""
    entries = []
    for info in client.models():
        details = client.model(info.name, info.default_version)
        entries.append({**info.to_dict(), "details": details.to_dict()})
    if args.format == "json":
        json.dump(entries, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    from rich.table import Table  # noqa: PLC0415

    table = Table()
    columns = (
        "model", "versions", "default", "architecture", "input", "backbone", "precision", "threshold", "image AUROC",
        "created",
    )  # fmt: skip
    for name in columns:
        table.add_column(name)
    parameters: list[str] = []
    warnings: list[str] = []
    for entry in entries:
        details = entry["details"]
        auroc = details["image_auroc"]
        table.add_row(
            entry["name"],
            ", ".join(map(str, entry["versions"])),
            str(entry["default_version"]),
            details["architecture"],
            f"{details['input_width']}x{details['input_height']}",
            details["backbone"],
            details["inference_precision"],
            threshold_method(details["calibration"]),
            "" if auroc is None else f"{auroc:.4f}",
            details["created_at"],
        )
        label = f"{entry['name']} version {details['version']}"
        if details["parameters"]:
            parameters.append(f"{label} ({details['architecture']}): {parameters_text(details['parameters'])}")
        warnings += [f"{label}: {w}" for w in details["calibration"]["warnings"]]
    console = stdout_console()
    console.print(table)
    for line in parameters:
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    for warning in warnings:
        console.print(f"warning: {warning}", highlight=False, soft_wrap=True)  # one line each, for grep
    return EXIT_OK


def parameters_text(parameters: dict[str, float]) -> str:
    """An architecture's parameters as ``name=value`` pairs, whole numbers without a decimal point."""
    return ", ".join(
        f"{name}={int(value) if float(value).is_integer() else value!r}" for name, value in parameters.items()
    )


def threshold_method(calibration: dict[str, Any]) -> str:
    """How the default threshold was set: ``false-reject rate 1.00%`` or ``F1``."""
    target = calibration["target_false_reject_rate"]
    if calibration["method"] == "false_reject_rate" and target is not None:
        return f"false-reject rate {target:.2%}"
    return "F1" if calibration["method"] == "f1" else str(calibration["method"])


def run_health(args: argparse.Namespace, client: InspectionClient) -> int:
    """``visinspect health``: prints the status; 0 only when SERVING."""
    status = client.health(args.service)
    print(status)
    return EXIT_OK if status == "SERVING" else EXIT_FAILURES


if __name__ == "__main__":
    sys.exit(main())
