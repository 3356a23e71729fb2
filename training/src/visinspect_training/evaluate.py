"""Evaluate an exported IR with OpenVINO on the test split, at the precision the server will use."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import cv2
import numpy as np
import openvino as ov
import torch
from scipy.stats import rankdata
from torch import nn

from visinspect_api.model_repository import Calibration, DefectTypeRecall, Evaluation, InferencePrecision
from visinspect_training.data import PreparedData, build_datamodule
from visinspect_training.families import scoring_batch_size
from visinspect_training.ir import AnomalibReference, compile_ir, infer, torch_infer
from visinspect_training.train import TrainConfig

log = logging.getLogger(__name__)

# What scores images: a compiled IR, or any function with ``ir.infer``'s signature (a graph in torch).
ImageScorer: TypeAlias = ov.CompiledModel | Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

AUPRO_MAX_FPR = 0.3
_AUPRO_STEPS = 200


@dataclass
class Scored:
    """Per-image IR outputs over one split (maps kept only when asked for)."""

    paths: list[str] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)
    map_maxima: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    torch_scores: list[np.ndarray] = field(default_factory=list)
    map_min: float = float("inf")
    map_max: float = float("-inf")

    def record(
        self,
        paths: Iterable[str],
        scores: np.ndarray,
        labels: np.ndarray,
        map_maxima: np.ndarray,
        map_range: tuple[float, float],
    ) -> None:
        """Add a batch: its paths, raw scores, labels, each anomaly map's maximum and the maps' value range."""
        self.paths.extend(paths)
        self.scores.append(scores)
        self.map_maxima.append(map_maxima)
        self.labels.append(labels)
        self.map_min = min(self.map_min, map_range[0])
        self.map_max = max(self.map_max, map_range[1])

    def extend(self, other: Scored) -> None:
        """Add every image of ``other`` (its scores, labels, map maxima and map range; not its maps)."""
        self.record(
            other.paths, other.raw_scores, other.is_anomalous, other.raw_map_maxima, (other.map_min, other.map_max)
        )

    @property
    def raw_scores(self) -> np.ndarray:
        """All raw image scores, float32 [N]."""
        return np.concatenate(self.scores) if self.scores else np.zeros(0, np.float32)

    @property
    def raw_map_maxima(self) -> np.ndarray:
        """Every anomaly map's maximum, float32 [N] (the score, unless PatchCore's is re-weighted)."""
        return np.concatenate(self.map_maxima) if self.map_maxima else np.zeros(0, np.float32)

    @property
    def is_anomalous(self) -> np.ndarray:
        """Labels, bool [N]."""
        return np.concatenate(self.labels) if self.labels else np.zeros(0, bool)


@dataclass(frozen=True)
class TestPredictions:
    """Per-image results of the IR on the test split (for the report, plots and error analysis)."""

    paths: tuple[str, ...]
    labels: np.ndarray  # bool [N], True = anomalous
    defect_types: tuple[str, ...]  # "good" for good images, else the defect folder's name
    raw_scores: np.ndarray  # float32 [N]
    scores: np.ndarray  # normalised [N], 0.5 at the calibrated threshold
    anomaly_maps: np.ndarray  # raw float32 [N, H, W]
    masks: np.ndarray | None  # bool [N, H, W] where the dataset has masks


def score_images(
    scorer: ImageScorer,
    batches: Iterable[Any],
    reference: AnomalibReference | None = None,
    keep_maps: bool = False,
) -> Scored:
    """Run every batch of an anomalib loader through the IR (and anomalib's torch model when given)."""
    got = Scored()
    for batch in batches:
        images = to_uint8_nhwc(batch.image)
        maps, scores = infer(scorer, images) if isinstance(scorer, ov.CompiledModel) else scorer(images)
        labels = batch.gt_label.numpy().astype(bool)
        maxima = maps.reshape(maps.shape[0], -1).max(axis=1)
        got.record(map(str, batch.image_path), scores, labels, maxima, (float(maps.min()), float(maps.max())))
        if keep_maps:
            got.maps.append(maps)
            if batch.gt_mask is not None:
                got.masks.append(batch.gt_mask.numpy().reshape(maps.shape).astype(bool))
        if reference is not None:
            got.torch_scores.append(torch_infer(reference, images))
    return got


def anomalib_reference(model: nn.Module, config: TrainConfig) -> AnomalibReference:
    """anomalib's forward of ``model`` with the image score ``config`` exports (the map's maximum or anomalib's)."""
    return AnomalibReference(model, score_from_map=config.image_score == "map_max")


def to_uint8_nhwc(images: torch.Tensor) -> np.ndarray:
    """anomalib's float [0, 1] NCHW batch as the uint8 NHWC batch the served IR takes."""
    pixels = images.permute(0, 2, 3, 1).mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return np.ascontiguousarray(pixels.numpy())


def evaluate_ir(
    xml_path: Path,
    config: TrainConfig,
    calibration: Calibration,
    precision: InferencePrecision,
    model: nn.Module | None = None,
) -> Evaluation:
    """Score the test split with the IR; compare with anomalib's torch model on identical inputs when given."""
    evaluation, _ = evaluate_test_split(
        compile_ir(xml_path, precision),
        _prepare(config, config.batch_size if model is None else scoring_batch_size(model, config)),
        calibration,
        precision,
        None if model is None else anomalib_reference(model, config),
    )
    return evaluation


def evaluate_test_split(
    compiled: ov.CompiledModel,
    data: PreparedData,
    calibration: Calibration,
    precision: InferencePrecision,
    reference: AnomalibReference | None = None,
) -> tuple[Evaluation, TestPredictions]:
    """The metrics and the per-image predictions of the test split, scored once (and by ``reference``)."""
    got = score_images(compiled, data.datamodule.test_dataloader(), reference, keep_maps=True)
    return summarise(got, calibration, precision), _predictions(got, calibration)


def predict_test_split(
    xml_path: Path, config: TrainConfig, calibration: Calibration, precision: InferencePrecision
) -> TestPredictions:
    """Every test image's raw and normalised score and raw anomaly map, from the IR."""
    loader = _prepare(config, config.batch_size).datamodule.test_dataloader()
    got = score_images(compile_ir(xml_path, precision), loader, keep_maps=True)
    return _predictions(got, calibration)


def _prepare(config: TrainConfig, batch_size: int) -> PreparedData:
    size = (config.image_size, config.image_size)
    return build_datamodule(config.dataset, size, batch_size, config.num_workers)


def _predictions(got: Scored, calibration: Calibration) -> TestPredictions:
    raw = got.raw_scores
    labels = got.is_anomalous
    return TestPredictions(
        paths=tuple(got.paths),
        labels=labels,
        defect_types=tuple(
            "good" if not bad else Path(p).parent.name for p, bad in zip(got.paths, labels, strict=True)
        ),
        raw_scores=raw,
        scores=np.array([calibration.normalized(float(s)) for s in raw], dtype=np.float32),
        anomaly_maps=np.concatenate(got.maps),
        masks=_full_masks(got),
    )


def _full_masks(got: Scored) -> np.ndarray | None:
    """Masks for every image (good ones all-false), or None when the dataset has none."""
    if not got.masks or sum(m.shape[0] for m in got.masks) != len(got.paths):
        return None
    return np.concatenate(got.masks)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties averaged); None unless both classes occur."""
    positives = labels.astype(bool)
    n_pos = int(positives.sum())
    n_neg = positives.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def f1_score(predicted: np.ndarray, labels: np.ndarray) -> float | None:
    """F1 of the anomalous class; None when there is nothing anomalous to find."""
    truth = labels.astype(bool)
    if not truth.any():
        return None
    true_pos = int((predicted & truth).sum())
    denominator = int(predicted.sum()) + int(truth.sum())
    return 2.0 * true_pos / denominator


def aupro(maps: np.ndarray, masks: np.ndarray, max_fpr: float = AUPRO_MAX_FPR) -> float | None:
    """Area under the per-region-overlap curve up to ``max_fpr`` (normalised to [0, 1]), as in MVTec AD.

    Each connected defect region counts equally, whatever its size; the false-positive rate is over
    the good pixels of all images. None without any defect pixel.
    """
    if not masks.any():
        return None
    region_ids, region_sizes = [], []
    for index, mask in enumerate(masks):
        count, labelled = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        for region in range(1, count):
            region_ids.append((index, labelled == region))
            region_sizes.append(int((labelled == region).sum()))
    good_pixels = maps[~masks]
    thresholds = np.quantile(good_pixels, 1.0 - np.linspace(0.0, max_fpr, _AUPRO_STEPS))
    fprs = np.array([(good_pixels > t).mean() for t in thresholds])
    overlaps = np.zeros(len(thresholds))
    for (index, region), size in zip(region_ids, region_sizes, strict=True):
        values = np.sort(maps[index][region])
        above = size - np.searchsorted(values, thresholds, side="right")
        overlaps += above / size
    overlaps /= len(region_ids)
    keep = fprs <= max_fpr
    return float(np.trapezoid(overlaps[keep], fprs[keep]) / max_fpr)


def summarise(got: Scored, calibration: Calibration, precision: InferencePrecision) -> Evaluation:
    """The test split's metrics at the calibrated threshold."""
    scores = got.raw_scores
    labels = got.is_anomalous
    masks = _full_masks(got)
    pixel_auroc = pixel_aupro = None
    if masks is not None and masks.any():
        maps = np.concatenate(got.maps)
        pixel_auroc = auroc(maps.ravel(), masks.ravel())
        pixel_aupro = aupro(maps, masks)
    max_abs: float | None = None
    max_rel: float | None = None
    if got.torch_scores:
        reference = np.concatenate(got.torch_scores)
        difference = np.abs(scores - reference)
        max_abs = float(difference.max())
        max_rel = float((difference / np.maximum(np.abs(reference), 1e-12)).max())
    notes = []
    if calibration.overlaps_test:
        notes.append("thresholds were fitted on the evaluated images: F1 is optimistic")
    if not got.torch_scores:
        notes.append("no torch model given: export fidelity not measured")
    rejected = scores > calibration.image_threshold
    good = ~labels
    by_type: dict[str, DefectTypeRecall] = {}
    for path, is_bad, caught in zip(got.paths, labels, rejected, strict=True):
        if is_bad:
            name = Path(path).parent.name
            before = by_type.get(name, DefectTypeRecall(0, 0))
            by_type[name] = DefectTypeRecall(before.caught + int(caught), before.total + 1)
    return Evaluation(
        split="test",
        num_images=int(labels.size),
        num_anomalous=int(labels.sum()),
        image_auroc=auroc(scores, labels),
        image_f1=f1_score(rejected, labels),
        pixel_auroc=pixel_auroc,
        max_abs_score_diff_vs_torch=max_abs,
        max_rel_score_diff_vs_torch=max_rel,
        inference_precision=precision,
        notes=tuple(notes),
        false_reject_rate=float(rejected[good].mean()) if good.any() else None,
        defect_recall=float(rejected[labels].mean()) if labels.any() else None,
        good_rejected=int(rejected[good].sum()),
        defects_caught=int(rejected[labels].sum()),
        recall_by_defect_type=dict(sorted(by_type.items())),
        pixel_aupro=pixel_aupro,
    )
