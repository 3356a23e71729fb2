"""The HTML evaluation report: self-contained, escaped, and its numbers are the inputs' numbers."""

from __future__ import annotations

import ast
import base64
import dataclasses
import re
from dataclasses import dataclass
from html import escape
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from visinspect_api.calibration import ScoreSample, threshold_for_false_reject_rate
from visinspect_api.model_repository import Calibration, DefectTypeRecall, Evaluation
from visinspect_training.report import _curve_points, write_report

DEFECT_TYPES = ("crack", "hole", "scratch")
ODD_NAME = "a&b<c>.png"
WARNING = "some warning: <fewer> than 99 good images & more"
IMG_SRC = re.compile(r'<img src="([^"]*)"')


@dataclass(frozen=True)
class Predictions:
    """Stands in for ``visinspect_training.evaluate.TestPredictions``, whose module loads torch (about 9 s)."""

    paths: tuple[str, ...]
    labels: np.ndarray
    defect_types: tuple[str, ...]
    raw_scores: np.ndarray
    scores: np.ndarray
    anomaly_maps: np.ndarray
    masks: np.ndarray | None


@dataclass(frozen=True)
class Inputs:
    calibration: Calibration
    evaluation: Evaluation
    predictions: Predictions


def build_inputs(folder: Path, n_good: int = 20, n_defective: int = 15, size: int = 32, seed: int = 0) -> Inputs:
    """Synthetic test images written as PNG files, their scores, maps and masks, and a matching calibration.

    The two highest good scores lie above the threshold (false rejects; the highest is the file ``a&b<c>.png``)
    and the three lowest defect scores below it (escapes).
    """
    rng = np.random.default_rng(seed)
    calibration_good = rng.normal(10.0, 1.0, 30)
    good_sample = ScoreSample.of(calibration_good)
    threshold = threshold_for_false_reject_rate(good_sample, 0.01)
    good_scores = np.minimum(rng.normal(9.0, 1.0, n_good), threshold - 0.1)
    good_scores[:2] = [threshold + 2.0, threshold + 1.0][: min(2, n_good)]
    defect_scores = np.maximum(rng.normal(threshold + 4.0, 1.0, n_defective), threshold + 0.1)
    defect_scores[:3] = [threshold - 3.0, threshold - 2.0, threshold - 1.0][: min(3, n_defective)]
    raw = np.r_[good_scores, defect_scores].astype(np.float32)
    labels = np.r_[np.zeros(n_good, bool), np.ones(n_defective, bool)]
    types = ("good",) * n_good + tuple(DEFECT_TYPES[i % len(DEFECT_TYPES)] for i in range(n_defective))

    paths = []
    for index, defect_type in enumerate(types):
        name = ODD_NAME if index == 0 else f"{index:03d}.png"
        path = folder / defect_type / name
        path.parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(path), rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        paths.append(str(path))

    masks = np.zeros((raw.size, size, size), bool)
    masks[labels, 8:16, 8:16] = True
    maps = rng.normal(2.0, 0.5, masks.shape).astype(np.float32) + 6.0 * masks

    calibration = Calibration(
        image_threshold=float(threshold),
        pixel_threshold=5.0,
        image_min=float(min(raw.min(), calibration_good.min())),
        image_max=float(max(raw.max(), calibration_good.max())),
        pixel_min=float(maps.min()),
        pixel_max=float(maps.max()),
        source="12 held-out good images",
        overlaps_test=False,
        method="false_reject_rate",
        target_false_reject_rate=0.01,
        good_scores=good_sample,
        defect_scores=ScoreSample.of(rng.normal(threshold + 3.0, 2.0, 10)),
        warnings=(WARNING,),
    )
    predictions = Predictions(
        paths=tuple(paths),
        labels=labels,
        defect_types=types,
        raw_scores=raw,
        scores=np.array([calibration.normalized(float(s)) for s in raw], np.float32),
        anomaly_maps=maps,
        masks=masks,
    )
    return Inputs(calibration, evaluate(predictions, calibration), predictions)


def evaluate(predictions: Predictions, calibration: Calibration) -> Evaluation:
    """The metrics ``visinspect_training.evaluate.summarise`` would give for these predictions."""
    labels = predictions.labels
    rejected = predictions.raw_scores > calibration.image_threshold
    by_type: dict[str, DefectTypeRecall] = {}
    for name, is_bad, caught in zip(predictions.defect_types, labels, rejected, strict=True):
        if is_bad:
            before = by_type.get(name, DefectTypeRecall(0, 0))
            by_type[name] = DefectTypeRecall(before.caught + int(caught), before.total + 1)
    good, bad = predictions.raw_scores[~labels], predictions.raw_scores[labels]
    image_auroc = float((bad[:, None] > good[None, :]).mean()) if good.size and bad.size else None
    return Evaluation(
        split="test",
        num_images=int(labels.size),
        num_anomalous=int(labels.sum()),
        image_auroc=image_auroc,
        image_f1=None,
        pixel_auroc=0.9123 if labels.any() and predictions.masks is not None else None,
        max_abs_score_diff_vs_torch=None,
        max_rel_score_diff_vs_torch=None,
        inference_precision="f32",
        notes=("no torch model given: export fidelity not measured",),
        false_reject_rate=float(rejected[~labels].mean()) if (~labels).any() else None,
        defect_recall=float(rejected[labels].mean()) if labels.any() else None,
        good_rejected=int(rejected[~labels].sum()),
        defects_caught=int(rejected[labels].sum()),
        recall_by_defect_type=dict(sorted(by_type.items())),
        pixel_aupro=0.8456 if labels.any() and predictions.masks is not None else None,
    )


def subset(inputs: Inputs, keep: np.ndarray, **changes) -> Inputs:
    """The inputs restricted to the images where ``keep`` is True (and ``changes`` applied to the predictions)."""
    p = inputs.predictions
    predictions = dataclasses.replace(
        p,
        paths=tuple(path for path, k in zip(p.paths, keep, strict=True) if k),
        labels=p.labels[keep],
        defect_types=tuple(t for t, k in zip(p.defect_types, keep, strict=True) if k),
        raw_scores=p.raw_scores[keep],
        scores=p.scores[keep],
        anomaly_maps=p.anomaly_maps[keep],
        masks=None if p.masks is None else p.masks[keep],
    )
    predictions = dataclasses.replace(predictions, **changes)
    return Inputs(inputs.calibration, evaluate(predictions, inputs.calibration), predictions)


def report(inputs: Inputs, path: Path, title: str = "Brick <PaDiM> & friends", worst: int = 6) -> str:
    written = write_report(
        path,
        title=title,
        calibration=inputs.calibration,
        evaluation=inputs.evaluation,
        predictions=inputs.predictions,  # type: ignore[arg-type]
        worst=worst,
    )
    assert written == path
    return path.read_text(encoding="utf-8")


def decoded_images(text: str) -> list[np.ndarray]:
    images = []
    for src in IMG_SRC.findall(text):
        assert src.startswith("data:image/png;base64,"), src[:40]
        image = cv2.imdecode(np.frombuffer(base64.b64decode(src.split(",", 1)[1], validate=True), np.uint8), -1)
        assert image is not None
        images.append(image)
    return images


def table_row(text: str, heading: str) -> list[str]:
    match = re.search(rf"<tr><th>{re.escape(heading)}</th>(.*?)</tr>", text)
    assert match, heading
    return [re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", match.group(1))]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    return build_inputs(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def page(inputs: Inputs, tmp_path_factory: pytest.TempPathFactory) -> str:
    return report(inputs, tmp_path_factory.mktemp("report") / "report.html")


def test_the_stand_in_has_the_fields_of_test_predictions() -> None:
    source = (REPO_ROOT / "training/src/visinspect_training/evaluate.py").read_text(encoding="utf-8")
    (cls,) = [n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "TestPredictions"]
    fields = [n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
    assert fields == [f.name for f in dataclasses.fields(Predictions)]


def test_the_roc_points_give_the_mann_whitney_auroc_with_ties() -> None:
    raw = np.array([4.0, 1.0, 2.0, 2.0, 3.0, 4.0, 5.0])
    defective = np.array([True, False, False, True, False, True, True])
    fpr, tpr, precision = _curve_points(raw, defective)
    good, bad = raw[~defective], raw[defective]
    pairs = (bad[:, None] > good[None, :]) + 0.5 * (bad[:, None] == good[None, :])
    assert np.trapezoid(tpr, fpr) == pytest.approx(pairs.mean())
    assert fpr.tolist() == [0.0, 0.0, 0.0, 1 / 3, 2 / 3, 1.0]
    assert precision.tolist() == [1.0, 1.0, 0.75, 4 / 6, 4 / 7]


def test_every_image_is_an_embedded_png_and_nothing_is_fetched(page: str) -> None:
    images = decoded_images(page)
    assert len(images) == page.count("<img") > 0
    assert not re.search(r"https?://", page)
    assert "<script" not in page and "<link" not in page and "url(" not in page
    assert {image.shape[:2] for image in images} >= {(32, 32), (315, 450)}  # thumbnails, 5 x 3.5 in at 90 dpi
    assert re.search(r"<title>Brick &lt;PaDiM&gt; &amp; friends</title>", page)


def test_header_names_the_method_and_shows_warnings_and_notes(page: str) -> None:
    assert (
        "threshold at a 1.0 % false-reject rate on 30 good images, each scored by a model that did not fit it" in page
    )
    assert '<div class="warning">Warning: some warning: &lt;fewer&gt; than 99 good images &amp; more</div>' in page
    assert "no torch model given: export fidelity not measured" in page


def test_the_f1_method_is_named(inputs: Inputs, tmp_path: Path) -> None:
    f1 = dataclasses.replace(inputs.calibration, method="f1", target_false_reject_rate=None, warnings=())
    text = report(dataclasses.replace(inputs, calibration=f1), tmp_path / "f1.html")
    assert "F1-adaptive threshold on a labelled validation split" in text
    assert 'class="warning"' not in text


def test_headline_rates_are_the_counts_at_the_threshold(inputs: Inputs, page: str) -> None:
    raw, labels = inputs.predictions.raw_scores, inputs.predictions.labels
    rejected = raw > inputs.calibration.image_threshold
    good_rejected, caught = int(rejected[~labels].sum()), int(rejected[labels].sum())
    assert (good_rejected, caught) == (2, 12)
    assert table_row(page, "False-reject rate") == ["10.0 % (2 of 20 good)", "3.2 %"]  # 1 / (30 + 1) expected
    expected_recall = inputs.calibration.expected_rates(0.5).defect_recall
    assert expected_recall is not None
    assert table_row(page, "Defect recall") == ["80.0 % (12 of 15 defective)", f"{100 * expected_recall:.1f} %"]
    assert table_row(page, "Image AUROC")[0] == f"{inputs.evaluation.image_auroc:.3f}"
    assert table_row(page, "Pixel AUROC")[0] == "0.912"
    assert table_row(page, "Pixel AUPRO (to a false-positive rate of 0.3)")[0] == "0.846"


def test_recall_by_defect_type_and_confusion_matrix(inputs: Inputs, page: str) -> None:
    rows = re.findall(r'<tr class="defect-type">(.*?)</tr>', page)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in rows]
    # escapes are the first three defective images: one of each type
    assert cells == [["crack", "4", "5", "80.0 %"], ["hole", "4", "5", "80.0 %"], ["scratch", "4", "5", "80.0 %"]]
    good = re.search(r'<tr class="good"><th>good \(20\)</th>(.*?)</tr>', page)
    defective = re.search(r'<tr class="defective"><th>defective \(15\)</th>(.*?)</tr>', page)
    assert good and defective
    assert re.findall(r"<td[^>]*>(.*?)</td>", good.group(1)) == ["18", "2", "10.0 % rejected"]
    assert re.findall(r"<td[^>]*>(.*?)</td>", defective.group(1)) == ["3", "12", "80.0 % rejected"]


def test_the_six_worst_examples_are_the_extreme_scores_in_order(inputs: Inputs, page: str) -> None:
    check_worst_examples(inputs, page, 6)


@pytest.mark.parametrize("worst", [1, 50])
def test_fewer_or_more_worst_examples(inputs: Inputs, tmp_path: Path, worst: int) -> None:
    check_worst_examples(inputs, report(inputs, tmp_path / "report.html", worst=worst), worst)


def check_worst_examples(inputs: Inputs, text: str, worst: int) -> None:
    false_rejects = re.findall(r'<div class="example false-reject">(.*?)</div></div>', text)
    escapes = re.findall(r'<div class="example escape">(.*?)</div></div>', text)
    assert len(false_rejects) == min(worst, 20)
    assert len(escapes) == min(worst, 15)
    for example in false_rejects + escapes:
        assert example.count("<img") == 3
    raw, labels, paths = inputs.predictions.raw_scores, inputs.predictions.labels, inputs.predictions.paths
    good = np.flatnonzero(~labels)
    bad = np.flatnonzero(labels)
    highest_good = [Path(paths[i]).name for i in good[np.argsort(-raw[good], kind="stable")][:worst]]
    lowest_bad = [Path(paths[i]).name for i in bad[np.argsort(raw[bad], kind="stable")][:worst]]
    names = [re.search(r"<b[^>]*>(.*?)</b>", example).group(1) for example in false_rejects]  # type: ignore[union-attr]
    assert names == [escape(name) for name in highest_good]
    assert [re.search(r"<b[^>]*>(.*?)</b>", e).group(1) for e in escapes] == lowest_bad  # type: ignore[union-attr]
    assert false_rejects[0].count("above the threshold: rejected") == 1
    assert sum("above the threshold: rejected" in e for e in false_rejects) == min(worst, 2)
    assert sum("not above the threshold: accepted" in e for e in escapes) == min(worst, 3)
    assert all(f"&middot; {t} &middot;" in e for t, e in zip(["crack", "hole", "scratch"], escapes, strict=False))


def test_paths_are_escaped(inputs: Inputs, page: str) -> None:
    assert "a&amp;b&lt;c&gt;.png" in page
    assert ODD_NAME not in page
    assert f'<b title="{escape(inputs.predictions.paths[0])}">a&amp;b&lt;c&gt;.png</b>' in page


def test_the_heat_map_is_the_pixel_map_normalised_like_the_server(inputs: Inputs, page: str) -> None:
    example = re.search(r'<div class="example escape">(.*?)</div></div>', page).group(1)  # type: ignore[union-attr]
    image, heat, mask = (decoded_images(f'<img src="{src}"')[0] for src in IMG_SRC.findall(example))
    index = int(np.argmin(np.where(inputs.predictions.labels, inputs.predictions.raw_scores, np.inf)))
    c = inputs.calibration
    normalised = np.clip(
        (inputs.predictions.anomaly_maps[index] - c.pixel_threshold) / (c.pixel_max - c.pixel_min) + 0.5, 0, 1
    )
    jet = matplotlib.colormaps["jet"](normalised)[..., :3] * 255
    rgb = cv2.cvtColor(cv2.imread(inputs.predictions.paths[index]), cv2.COLOR_BGR2RGB)
    expected = np.round(0.5 * jet + 0.5 * rgb)
    assert np.abs(cv2.cvtColor(heat, cv2.COLOR_BGR2RGB).astype(float) - expected).max() <= 1
    assert np.array_equal(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), rgb)
    assert np.array_equal(mask[..., 0] > 0, inputs.predictions.masks[index])  # type: ignore[index]


def test_only_good_images(inputs: Inputs, tmp_path: Path) -> None:
    text = report(subset(inputs, ~inputs.predictions.labels), tmp_path / "good.html")
    assert len(decoded_images(text)) == text.count("<img") > 0
    assert "n/a: no defective test images" in text
    assert "n/a (no defective test images)" in text
    assert "n/a: the curves need both good and defective test images." in text
    assert text.count('class="example false-reject"') == 6
    assert 'class="example escape"' not in text
    assert table_row(text, "False-reject rate")[0] == "10.0 % (2 of 20 good)"


def test_only_defective_images(inputs: Inputs, tmp_path: Path) -> None:
    text = report(subset(inputs, inputs.predictions.labels), tmp_path / "defective.html")
    assert len(decoded_images(text)) == text.count("<img") > 0
    assert "n/a: no good test images" in text
    assert "n/a (no good test images)" in text
    assert "n/a: the curves need both good and defective test images." in text
    assert text.count('class="example escape"') == 6
    assert table_row(text, "Defect recall")[0] == "80.0 % (12 of 15 defective)"
    assert table_row(text, "Image AUROC")[0] == "n/a (needs good and defective test images)"


def test_without_masks_or_readable_images(inputs: Inputs, tmp_path: Path) -> None:
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a PNG")
    paths = (str(tmp_path / "missing.png"), str(not_an_image), *inputs.predictions.paths[2:])
    changed = subset(inputs, np.ones(len(paths), bool), masks=None, paths=paths)
    text = report(changed, tmp_path / "bare.html")
    assert len(decoded_images(text)) == text.count("<img") > 0
    assert text.count('<div class="empty">no mask</div>') == 12
    assert text.count("image unreadable: grey placeholder") == 2 * 2  # the caption and the alt text
    first = re.search(r'<div class="example false-reject">(.*?)</div></div>', text).group(1)  # type: ignore[union-attr]
    assert "missing.png" in first
    placeholder = decoded_images(first)[0]
    assert placeholder.shape == (32, 32, 3) and (placeholder == 128).all()
    assert "Pixel AUROC" not in text


def test_no_images_at_all(inputs: Inputs, tmp_path: Path) -> None:
    empty = subset(inputs, np.zeros(inputs.predictions.labels.size, bool))
    text = report(
        dataclasses.replace(empty, calibration=dataclasses.replace(inputs.calibration, good_scores=None)),
        tmp_path / "e.html",
    )
    assert "n/a: no good test images" in text and "n/a: no defective test images" in text
    assert "n/a (no good calibration scores)" in text
