"""Calibrate an exported IR: the thresholds, the normalisation range and the score distributions.

Good scores come from images the scoring model did not fit: the training images out of fold
(``crossfit.py``, the default), or held-out training images, or a calibration folder, plus the
validation split's good images. Scores carry the rounding of the precision servers run the IR at, so
the thresholds hold for the scores servers compute. The rules are in
:mod:`visinspect_api.calibration` and ``docs/calibration.md``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import openvino as ov
from torch import nn

from visinspect_api.calibration import ScoreSample, smallest_resolvable_rate, threshold_for_false_reject_rate
from visinspect_api.model_repository import Calibration, InferencePrecision, IrPrecision, ThresholdMethod
from visinspect_training.crossfit import out_of_fold_scores
from visinspect_training.data import DatasetSpec, PreparedData
from visinspect_training.defaults import DEFAULT_TARGET_FALSE_REJECT_RATE, DEFAULT_THRESHOLD_METHOD, THRESHOLD_METHODS
from visinspect_training.errors import ConfigError
from visinspect_training.evaluate import Scored, score_images

if TYPE_CHECKING:
    from visinspect_training.train import TrainConfig

log = logging.getLogger(__name__)

# Export names this many of the good images that set the threshold, highest score first.
THRESHOLD_SETTERS_SHOWN = 5


@dataclass(frozen=True)
class ThresholdOptions:
    """How the default threshold is chosen."""

    method: ThresholdMethod = DEFAULT_THRESHOLD_METHOD
    target_false_reject_rate: float = DEFAULT_TARGET_FALSE_REJECT_RATE

    def __post_init__(self) -> None:
        if self.method not in THRESHOLD_METHODS:
            raise ConfigError(f"threshold method must be false_reject_rate or f1, got {self.method!r}")
        if not 0.0 < self.target_false_reject_rate < 1.0:
            raise ConfigError(
                f"target false-reject rate must be between 0 and 1 (0.01 = 1 %), got {self.target_false_reject_rate}"
            )


@dataclass(frozen=True)
class ServedModel:
    """The exported IR compiled as servers run it, the torch model and configuration it came from, its precisions."""

    compiled: ov.CompiledModel
    model: nn.Module
    config: TrainConfig
    ir_precision: IrPrecision = "FP32"
    inference_precision: InferencePrecision = "f32"


def calibrate(
    served: ServedModel,
    data: PreparedData,
    dataset: DatasetSpec,
    options: ThresholdOptions,
    f1_calibration: Calibration | None,
) -> Calibration:
    """Score good images no scoring model fitted and the labelled validation split; set the thresholds.

    The good scores are the training images' out-of-fold scores (or the held-out or calibration-folder
    images' scores) and the validation split's good images' scores. The defect scores are the
    validation split's defective images'.

    ``f1_calibration`` is anomalib's F1-adaptive calibration of the run (None when the run had no
    labelled validation images); the ``f1`` method keeps its thresholds and normalisation.
    """
    good = _good_calibration_scores(served, data, dataset)
    compiled = served.compiled
    validation = score_images(compiled, data.datamodule.val_dataloader()) if len(data.datamodule.val_data) else None
    defect_scores = _pooled((validation,), anomalous=True)
    good_scores = _pooled((good, validation), anomalous=False)
    good_map_maxima = _pooled((good, validation), anomalous=False, maxima=True)
    if options.method == "f1":
        if f1_calibration is None:
            raise ConfigError(
                "the F1 threshold needs a labelled validation split with good and defective images; "
                "this run has none: use --threshold-method false_reject_rate"
            )
        return dataclasses.replace(
            f1_calibration,
            method="f1",
            target_false_reject_rate=None,
            good_scores=good_scores,
            defect_scores=defect_scores,
            warnings=(),
        )
    if good_scores is None:
        raise ConfigError(
            "a threshold by false-reject rate needs good images scored by a model that did not fit them: "
            "keep --calibration-folds at 2 or more, set --calibration-fraction above 0, pass --calibration-dir, "
            "or add good test images"
        )
    rate = options.target_false_reject_rate
    threshold = threshold_for_false_reject_rate(good_scores, rate)
    setters = threshold_setters((good, validation), threshold)
    log.info(
        "the threshold %.4g is set by the good calibration images scoring at or above it; a defect or an "
        "oddity among them raises it for every part (review them, and remove any that are not good parts): %s",
        threshold,
        ", ".join(f"{path} ({score:.4g})" for path, score in setters[:THRESHOLD_SETTERS_SHOWN]),
    )
    assert good_map_maxima is not None  # the same images as good_scores
    scored = [s for s in (good, validation) if s is not None]  # ranges over every calibration image
    all_scores = np.concatenate([s.raw_scores for s in scored])
    return Calibration(
        image_threshold=threshold,
        # The same rate on the good images' map maxima: a good image within the rate has an empty mask.
        # Where the image score is the map's maximum (PaDiM; PatchCore by default), both thresholds are
        # equal and every rejected image has a non-empty mask.
        pixel_threshold=threshold_for_false_reject_rate(good_map_maxima, rate),
        image_min=float(all_scores.min()),
        image_max=float(all_scores.max()),
        pixel_min=min(s.map_min for s in scored),
        pixel_max=max(s.map_max for s in scored),
        source=_source(dataset, good, validation),
        overlaps_test=dataset.calibration_overlaps_test and validation is not None,
        method="false_reject_rate",
        target_false_reject_rate=rate,
        good_scores=good_scores,
        defect_scores=defect_scores,
        warnings=resolution_warnings(good_scores.count, rate),
    )


def _good_calibration_scores(served: ServedModel, data: PreparedData, dataset: DatasetSpec) -> Scored | None:
    loader = data.calibration_loader()
    if loader is not None:
        return score_images(served.compiled, loader)
    if not dataset.cross_fitted:
        return None
    return out_of_fold_scores(
        served.model,
        data,
        served.config,
        folds=dataset.calibration_folds,
        ir_precision=served.ir_precision,
        precision=served.inference_precision,
    )


def threshold_setters(parts: tuple[Scored | None, ...], threshold: float) -> list[tuple[str, float]]:
    """The good images of ``parts`` scoring at or above ``threshold``, as (path, raw score), highest first."""
    found = [
        (path, float(score))
        for part in parts
        if part is not None
        for path, score, anomalous in zip(part.paths, part.raw_scores, part.is_anomalous, strict=True)
        if not anomalous and score >= threshold
    ]
    return sorted(found, key=lambda item: -item[1])


def resolution_warnings(num_good: int, rate: float) -> tuple[str, ...]:
    """A warning when ``num_good`` images cannot vouch for ``rate`` (below ``1 / (n + 1)``)."""
    smallest = smallest_resolvable_rate(num_good)
    if rate >= smallest:
        return ()
    needed = int(np.ceil(1.0 / rate)) - 1
    return (
        f"the target false-reject rate {rate:.2%} is below what {num_good} good calibration images can resolve "
        f"({smallest:.2%} = 1/(n+1)): the threshold is the highest good calibration score and about "
        f"{smallest:.1%} of good parts are expected to be rejected; give at least {needed} good calibration "
        "images (more good training images, or --calibration-dir) to reach the target",
    )


def _pooled(parts: tuple[Scored | None, ...], anomalous: bool, maxima: bool = False) -> ScoreSample | None:
    """Raw scores (or map maxima) of the good (or defective) images of every scored part; None when there are none."""
    pools = [
        (s.raw_map_maxima if maxima else s.raw_scores)[s.is_anomalous == anomalous] for s in parts if s is not None
    ]
    scores = np.concatenate(pools) if pools else np.zeros(0)
    return ScoreSample.of(scores.tolist()) if scores.size else None


def _source(dataset: DatasetSpec, good: Scored | None, validation: Scored | None) -> str:
    parts = []
    if good is not None:
        count = len(good.paths)
        if dataset.cross_fitted:
            folds = min(dataset.calibration_folds, count)  # leave one out below that many images
            parts.append(
                f"{count} good training images, each scored by a model fitted on the other {folds - 1} of "
                f"{folds} folds (seed {dataset.seed}); the served model fits all of them"
            )
        elif dataset.calibration_dir is not None:
            parts.append(f"{count} good images in {dataset.calibration_dir}")
        else:
            parts.append(
                f"{count} good training images held out from fitting "
                f"(fraction {dataset.calibration_fraction}, seed {dataset.seed})"
            )
    if validation is not None:
        labels = validation.is_anomalous
        what = "the test split (same_as_test)" if dataset.calibration_overlaps_test else "the validation split"
        parts.append(f"{int((~labels).sum())} good and {int(labels.sum())} defective images of {what}")
    return "; ".join(parts)
