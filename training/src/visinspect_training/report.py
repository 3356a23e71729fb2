"""A self-contained HTML evaluation report of the test split: rates at the threshold, curves, worst examples.

Every image is embedded as a PNG data URI and a content security policy forbids loading anything else, so the
file stands alone (mail it, archive it beside the run). Figures are drawn with matplotlib's Agg canvas on
``Figure`` objects; pyplot's global state is never touched.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from visinspect_api.model_repository import Calibration, Evaluation

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from visinspect_training.evaluate import TestPredictions

FIGURE_SIZE = (5.0, 3.5)
FIGURE_DPI = 90
_PLACEHOLDER_GREY = 128
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 70em; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 1.6em; }
.warning { background: #fff3cd; border: 2px solid #d39e00; padding: 0.6em 1em; margin: 0.8em 0; font-weight: 600; }
.notes { color: #555; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
.na { color: #777; font-style: italic; }
.example { margin: 0.5em 0; padding: 0.5em; border: 1px solid #ddd; width: 512px; font-size: 0.9em; }
.triple { display: flex; gap: 0.6em; flex-wrap: wrap; }
.triple figure { margin: 0; text-align: center; font-size: 0.85em; }
.examples { display: flex; flex-wrap: wrap; gap: 0 1em; }
.triple img, .triple .empty { width: 160px; height: 160px; object-fit: contain; image-rendering: pixelated; }
.triple .empty { display: flex; align-items: center; justify-content: center; background: #eee; color: #555; }
.rejected { color: #b00020; font-weight: 600; } .accepted { color: #1b5e20; font-weight: 600; }
"""


@dataclass(frozen=True)
class _Outcome:
    """The test split's raw scores and verdicts at the calibrated threshold (rejected: raw score above it)."""

    raw: np.ndarray
    defective: np.ndarray
    rejected: np.ndarray

    @classmethod
    def of(cls, calibration: Calibration, predictions: TestPredictions) -> _Outcome:
        raw = np.asarray(predictions.raw_scores, dtype=np.float64).reshape(-1)
        return cls(
            raw=raw,
            defective=np.asarray(predictions.labels, dtype=bool).reshape(-1),
            rejected=raw > calibration.image_threshold,
        )

    @property
    def num_good(self) -> int:
        return int((~self.defective).sum())

    @property
    def num_defective(self) -> int:
        return int(self.defective.sum())


def write_report(
    path: Path,
    *,
    title: str,
    calibration: Calibration,
    evaluation: Evaluation,
    predictions: TestPredictions,
    worst: int = 6,
) -> Path:
    """Write the evaluation report of the test split as one self-contained HTML file; return ``path``."""
    outcome = _Outcome.of(calibration, predictions)
    good = np.flatnonzero(~outcome.defective)
    defective = np.flatnonzero(outcome.defective)
    worst = max(worst, 0)
    false_rejects = good[np.argsort(-outcome.raw[good], kind="stable")][:worst]
    escapes = defective[np.argsort(outcome.raw[defective], kind="stable")][:worst]
    sections = [
        _header(title, calibration, evaluation),
        _headline(calibration, evaluation, outcome),
        _curves(calibration, evaluation, outcome),
        _histogram_section(calibration, outcome),
        _recall_by_type(evaluation),
        _confusion(outcome),
        _examples(
            "Worst false rejects: good images with the highest scores",
            "n/a: no good test images",
            [_example(int(i), "false-reject", calibration, predictions, outcome) for i in false_rejects],
        ),
        _examples(
            "Worst escapes: defective images with the lowest scores",
            "n/a: no defective test images",
            [_example(int(i), "escape", calibration, predictions, outcome) for i in escapes],
        ),
    ]
    path.write_text(_page(title, "\n".join(sections)), encoding="utf-8")
    return path


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _header(title: str, calibration: Calibration, evaluation: Evaluation) -> str:
    parts = [f"<h1>{escape(title)}</h1>", f"<p><b>Model threshold:</b> {escape(_method(calibration))}.</p>"]
    parts += [f'<div class="warning">Warning: {escape(text)}</div>' for text in calibration.warnings]
    parts.append(
        f"<p>Raw image threshold {calibration.image_threshold:.6g} (0.5 on the normalised scale); "
        f"calibration images: {escape(calibration.source)}. Evaluated on the {escape(evaluation.split)} split "
        f"({evaluation.num_images} images, {evaluation.num_anomalous} defective) with OpenVINO at "
        f"{escape(evaluation.inference_precision)}.</p>"
    )
    if evaluation.notes:
        items = "".join(f"<li>{escape(note)}</li>" for note in evaluation.notes)
        parts.append(f'<div class="notes"><b>Notes</b><ul>{items}</ul></div>')
    return "\n".join(parts)


def _method(calibration: Calibration) -> str:
    if calibration.method == "f1":
        return "F1-adaptive threshold on a labelled validation split"
    rate = calibration.target_false_reject_rate
    target = "a chosen" if rate is None else f"a {_percent(rate)}"
    images = "" if calibration.good_scores is None else f"{calibration.good_scores.count} "
    return f"threshold at {target} false-reject rate on {images}good images, each scored by a model that did not fit it"


def _headline(calibration: Calibration, evaluation: Evaluation, outcome: _Outcome) -> str:
    expected = calibration.expected_rates(0.5)
    n_good = evaluation.num_images - evaluation.num_anomalous
    n_defective = evaluation.num_anomalous
    rows = [
        (
            "False-reject rate",
            _measured(
                evaluation.false_reject_rate,
                evaluation.good_rejected,
                n_good,
                int(outcome.rejected[~outcome.defective].sum()),
                "good",
            ),
            _rate_or_na(expected.false_reject_rate, "no good calibration scores"),
        ),
        (
            "Defect recall",
            _measured(
                evaluation.defect_recall,
                evaluation.defects_caught,
                n_defective,
                int(outcome.rejected[outcome.defective].sum()),
                "defective",
            ),
            _rate_or_na(expected.defect_recall, "no labelled defective calibration images"),
        ),
        ("Image AUROC", _metric(evaluation.image_auroc, "needs good and defective test images"), ""),
    ]
    if evaluation.pixel_auroc is not None:
        rows.append(("Pixel AUROC", f"{evaluation.pixel_auroc:.3f}", ""))
    if evaluation.pixel_aupro is not None:
        rows.append(("Pixel AUPRO (to a false-positive rate of 0.3)", f"{evaluation.pixel_aupro:.3f}", ""))
    body = "".join(
        f'<tr><th>{name}</th><td class="number measured">{measured}</td><td class="number">{expected_text}</td></tr>'
        for name, measured, expected_text in rows
    )
    return (
        "<h2>At the calibrated threshold</h2>\n<table>"
        "<tr><th></th><th>measured on the test split</th><th>expected from the calibration images</th></tr>"
        f"{body}</table>"
    )


def _measured(rate: float | None, count: int | None, total: int, fallback_count: int, noun: str) -> str:
    if total <= 0:
        return f'<span class="na">n/a (no {noun} test images)</span>'
    count = fallback_count if count is None else count
    rate = count / total if rate is None else rate
    return f"{_percent(rate)} ({count} of {total} {noun})"


def _rate_or_na(rate: float | None, reason: str) -> str:
    return f'<span class="na">n/a ({reason})</span>' if rate is None else _percent(rate)


def _metric(value: float | None, reason: str) -> str:
    return f'<span class="na">n/a ({reason})</span>' if value is None else f"{value:.3f}"


def _percent(rate: float) -> str:
    return f"{100.0 * rate:.1f} %"


def _curves(calibration: Calibration, evaluation: Evaluation, outcome: _Outcome) -> str:
    heading = "<h2>ROC and precision-recall curves of the image scores</h2>"
    if outcome.num_good == 0 or outcome.num_defective == 0:
        return f'{heading}\n<p class="na">n/a: the curves need both good and defective test images.</p>'
    fpr, tpr, precision = _curve_points(outcome.raw, outcome.defective)
    caught = outcome.rejected & outcome.defective
    operating_fpr = float(outcome.rejected[~outcome.defective].mean())
    operating_tpr = float(caught.sum() / outcome.num_defective)
    operating_precision = float(caught.sum() / outcome.rejected.sum()) if outcome.rejected.any() else 1.0
    threshold_label = f"threshold {calibration.image_threshold:.4g}"

    roc, ax = _figure()
    auroc = "" if evaluation.image_auroc is None else f" (AUROC {evaluation.image_auroc:.3f})"
    ax.plot(fpr, tpr, color="tab:blue", label=f"ROC{auroc}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
    ax.plot([operating_fpr], [operating_tpr], "o", color="tab:red", label=threshold_label)
    _finish(ax, "false-positive rate (good rejected)", "true-positive rate (defect recall)", "ROC")

    pr, ax = _figure()
    recall = tpr[1:]
    average_precision = float(np.sum(np.diff(tpr) * precision))
    ax.plot(
        np.r_[0.0, recall],
        np.r_[precision[0], precision],
        drawstyle="steps-pre",
        color="tab:blue",
        label=f"precision-recall (AP {average_precision:.3f})",
    )
    ax.plot([operating_tpr], [operating_precision], "o", color="tab:red", label=threshold_label)
    _finish(ax, "recall", "precision", "Precision-recall")
    figures = _img(_figure_uri(roc), "ROC curve") + _img(_figure_uri(pr), "precision-recall curve")
    return f'{heading}\n<div class="figures">{figures}</div>'


def _curve_points(raw: np.ndarray, defective: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points from (0, 0), rejecting at or above each distinct score in turn, and the precision at each."""
    order = np.argsort(-raw, kind="stable")
    ordered, hits = raw[order], defective[order]
    last_of_each_score = np.r_[np.flatnonzero(np.diff(ordered)), ordered.size - 1]
    true_positives = np.cumsum(hits)[last_of_each_score]
    false_positives = np.cumsum(~hits)[last_of_each_score]
    fpr = np.r_[0.0, false_positives / max(int((~defective).sum()), 1)]
    tpr = np.r_[0.0, true_positives / max(int(defective.sum()), 1)]
    return fpr, tpr, true_positives / (true_positives + false_positives)


def _histogram_section(calibration: Calibration, outcome: _Outcome) -> str:
    heading = "<h2>Raw image scores</h2>"
    good = outcome.raw[~outcome.defective]
    defective = outcome.raw[outcome.defective]
    reference = np.asarray(calibration.good_scores.values) if calibration.good_scores is not None else np.zeros(0)
    if not (good.size or defective.size or reference.size):
        return f'{heading}\n<p class="na">n/a: no scores.</p>'
    edges = np.histogram_bin_edges(np.r_[good, defective, reference, calibration.image_threshold], bins=30).tolist()
    fig, ax = _figure()
    if good.size:
        ax.hist(good, bins=edges, density=True, color="tab:green", alpha=0.5, label=f"good test images ({good.size})")
    if defective.size:
        ax.hist(defective, bins=edges, density=True, color="tab:red", alpha=0.5, label=f"defective ({defective.size})")
    if calibration.good_scores is not None:
        ax.hist(
            reference,
            bins=edges,
            density=True,
            histtype="step",
            color="black",
            linewidth=1.2,
            label=f"good calibration images ({calibration.good_scores.count})",
        )
    expected = calibration.expected_rates(0.5)
    false_rejects = "n/a" if expected.false_reject_rate is None else _percent(expected.false_reject_rate)
    escapes = "n/a" if expected.defect_recall is None else _percent(1.0 - expected.defect_recall)
    ax.axvline(
        calibration.image_threshold,
        color="tab:blue",
        linestyle="--",
        label=f"threshold: expected {false_rejects} false rejects, {escapes} escapes",
    )
    _finish(ax, "raw image score", "density", "Image scores, good vs defective", legend_below=True)
    caption = (
        "<p>Densities; the threshold line's expected rates come from the calibration images "
        "(escape rate = 1 - defect recall).</p>"
    )
    return f"{heading}\n{_img(_figure_uri(fig), 'score histogram')}\n{caption}"


def _recall_by_type(evaluation: Evaluation) -> str:
    heading = "<h2>Defect recall by defect type</h2>"
    if not evaluation.recall_by_defect_type:
        return f'{heading}\n<p class="na">n/a: no defective test images.</p>'
    rows = "".join(
        f'<tr class="defect-type"><td>{escape(name)}</td><td class="number">{recall.caught}</td>'
        f'<td class="number">{recall.total}</td><td class="number">'
        f"{_percent(recall.caught / recall.total) if recall.total else 'n/a'}</td></tr>"
        for name, recall in sorted(evaluation.recall_by_defect_type.items())
    )
    return f"{heading}\n<table><tr><th>defect type</th><th>caught</th><th>images</th><th>recall</th></tr>{rows}</table>"


def _confusion(outcome: _Outcome) -> str:
    def row(name: str, members: np.ndarray, css: str) -> str:
        total = int(members.sum())
        rejected = int((outcome.rejected & members).sum())
        share = f"{_percent(rejected / total)} rejected" if total else "n/a"
        return (
            f'<tr class="{css}"><th>{name} ({total})</th><td class="number">{total - rejected}</td>'
            f'<td class="number">{rejected}</td><td class="number">{share}</td></tr>'
        )

    return (
        "<h2>Confusion matrix at the calibrated threshold</h2>\n<table>"
        "<tr><th>test images</th><th>accepted</th><th>rejected</th><th></th></tr>"
        f"{row('good', ~outcome.defective, 'good')}{row('defective', outcome.defective, 'defective')}</table>"
    )


def _examples(heading: str, empty: str, blocks: Sequence[str]) -> str:
    if not blocks:
        return f'<h2>{heading}</h2>\n<p class="na">{empty}</p>'
    return f'<h2>{heading}</h2>\n<div class="examples">\n' + "\n".join(blocks) + "\n</div>"


def _example(index: int, kind: str, calibration: Calibration, predictions: TestPredictions, outcome: _Outcome) -> str:
    path = str(predictions.paths[index])
    raw_map = np.squeeze(np.asarray(predictions.anomaly_maps[index], dtype=np.float32))
    height, width = raw_map.shape
    image = _read_rgb(path, (height, width))
    figures = []
    if image is None:
        image = np.full((height, width, 3), _PLACEHOLDER_GREY, np.uint8)
        figures.append(_thumbnail(image, "image unreadable: grey placeholder"))
    else:
        figures.append(_thumbnail(image, "image"))
    figures.append(_thumbnail(_heat_map(raw_map, image, calibration), "anomaly map"))
    if predictions.masks is None:
        figures.append('<figure><div class="empty">no mask</div><figcaption>true mask</figcaption></figure>')
    else:
        mask = np.squeeze(np.asarray(predictions.masks[index], dtype=bool))
        figures.append(_thumbnail(np.repeat((mask * 255).astype(np.uint8)[..., None], 3, axis=2), "true mask"))
    rejected = bool(outcome.rejected[index])
    verdict = (
        '<span class="rejected">above the threshold: rejected</span>'
        if rejected
        else '<span class="accepted">not above the threshold: accepted</span>'
    )
    score = float(outcome.raw[index])
    caption = (
        f'<div class="caption"><b title="{escape(path)}">{escape(Path(path).name)}</b> &middot; '
        f"{escape(predictions.defect_types[index])} &middot; raw score {score:.4g} "
        f"(normalised {calibration.normalized(score):.3f}) &middot; {verdict}</div>"
    )
    return f'<div class="example {kind}">{caption}<div class="triple">{"".join(figures)}</div></div>'


def _read_rgb(path: str, size: tuple[int, int]) -> np.ndarray | None:
    """The image at ``path`` as RGB resized to ``size`` (height, width), or None when it cannot be read."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except (OSError, ValueError):
        return None
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        return None
    resized = cv2.resize(bgr, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(cv2.cvtColor(resized, cv2.COLOR_BGR2RGB))


def _heat_map(raw_map: np.ndarray, image: np.ndarray, calibration: Calibration) -> np.ndarray:
    """The pixel map normalised like the server's (0.5 at the pixel threshold), jet-coloured over the image."""
    span = calibration.pixel_max - calibration.pixel_min
    if span > 0:
        normalised = np.clip((raw_map - calibration.pixel_threshold) / span + 0.5, 0.0, 1.0)
    else:
        normalised = np.sign(raw_map - calibration.pixel_threshold) * 0.5 + 0.5
    colours = matplotlib.colormaps["jet"](normalised)[..., :3] * 255.0
    return np.round(0.5 * colours + 0.5 * image).astype(np.uint8)


def _thumbnail(rgb: np.ndarray, caption: str) -> str:
    return f"<figure>{_img(_png_uri(rgb), caption)}<figcaption>{escape(caption)}</figcaption></figure>"


def _png_uri(rgb: np.ndarray) -> str:
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise ValueError("OpenCV could not encode a PNG")
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{escape(alt)}">'


def _figure() -> tuple[Figure, Axes]:
    fig = Figure(figsize=FIGURE_SIZE, dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _finish(ax: Axes, xlabel: str, ylabel: str, title: str, legend_below: bool = False) -> None:
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    if legend_below:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=1, frameon=False)
    else:
        ax.legend(fontsize=7, loc="best")


def _figure_uri(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
