"""Out-of-fold scores of the good training images: calibration without holding images out of the served model.

The training images are split into seeded folds. For each fold, PaDiM's Gaussian is fitted on the
other folds' embeddings and scores that fold's images, so every training image is scored by a model
that did not fit it, while the served model fits them all. Each fold model fits ``(k - 1) / k`` of the
images: it is a little weaker than the served model, so its scores of good images run a little high and
a threshold set on them errs towards fewer false rejects (docs/calibration.md).

The backbone is the served model's, so the embeddings are computed once. With FP32 weights at ``f32``
the fold models score in torch with anomalib's own anomaly-map computation (the exported IR matches it
to float rounding); at any lower precision each fold model is exported and scored by OpenVINO the way
the served model is, so the scores carry the same rounding.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import openvino as ov
import torch
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.models.components.stats import MultiVariateGaussian
from anomalib.models.image.padim.torch_model import PadimModel

from visinspect_training import ir
from visinspect_training.data import PreparedData, fold_assignment
from visinspect_training.evaluate import Scored, score_images, to_uint8_nhwc
from visinspect_training.ir import InferencePrecisionName, IrPrecisionName


def out_of_fold_scores(
    padim: PadimModel,
    data: PreparedData,
    *,
    folds: int,
    seed: int,
    image_size: int,
    ir_precision: IrPrecisionName = "FP32",
    precision: InferencePrecisionName = "f32",
) -> Scored:
    """Score every good training image with a PaDiM fitted on the other folds (see the module docstring)."""
    dataset = data.datamodule.train_data
    fold_of = fold_assignment(dataset, folds, seed)
    embeddings = _embeddings(padim, data, dataset)
    paths = dataset.samples["image_path"].to_numpy(dtype=str)
    scored = Scored()
    for fold in range(int(fold_of.max()) + 1):
        held = np.flatnonzero(fold_of == fold)
        gaussian = MultiVariateGaussian()
        gaussian.fit(embeddings[torch.from_numpy(fold_of != fold)])
        if ir_precision == "FP32" and precision == "f32":
            _score_in_torch(
                padim, gaussian, embeddings=embeddings, indices=held, paths=paths, image_size=image_size, into=scored
            )
        else:
            compiled = _compiled_fold(padim, gaussian, image_size, ir_precision, precision)
            scored.extend(score_images(compiled, data.loader(dataset.subsample(held.tolist()))))
    return scored


def _embeddings(padim: PadimModel, data: PreparedData, dataset: AnomalibDataset) -> torch.Tensor:
    """PaDiM's embeddings [N, C, h, w] of ``dataset`` in order, from the uint8 images the server would get."""
    normalise = ir.ContractInput()
    embeddings: torch.Tensor | None = None
    start = 0
    with torch.no_grad():
        for batch in data.loader(dataset):
            images = torch.from_numpy(to_uint8_nhwc(batch.image))
            part = padim.generate_embedding(padim.feature_extractor(normalise(images)))
            if embeddings is None:  # one allocation: the embeddings of every training image can run to gigabytes
                embeddings = torch.empty((len(dataset), *part.shape[1:]), dtype=part.dtype)
            embeddings[start : start + part.shape[0]] = part
            start += part.shape[0]
    assert embeddings is not None and start == len(dataset)
    return embeddings


def _score_in_torch(
    padim: PadimModel,
    gaussian: MultiVariateGaussian,
    *,
    embeddings: torch.Tensor,
    indices: np.ndarray,
    paths: np.ndarray,
    image_size: int,
    into: Scored,
    batch: int = 32,
) -> None:
    """Score the images at ``indices`` under ``gaussian`` with anomalib's anomaly-map computation."""
    with torch.no_grad():
        for start in range(0, len(indices), batch):
            chosen = indices[start : start + batch]
            maps = padim.anomaly_map_generator(
                embedding=embeddings[torch.from_numpy(chosen)],
                mean=gaussian.mean,
                inv_covariance=gaussian.inv_covariance,
                image_size=(image_size, image_size),
            )
            scores = torch.amax(maps, dim=(-3, -2, -1)).numpy().astype(np.float32)
            labels = np.zeros(len(chosen), dtype=bool)
            into.record(paths[chosen].tolist(), scores, labels, float(maps.min()), float(maps.max()))


def _compiled_fold(
    padim: PadimModel,
    gaussian: MultiVariateGaussian,
    image_size: int,
    ir_precision: IrPrecisionName,
    precision: InferencePrecisionName,
) -> ov.CompiledModel:
    """The fold model saved and compiled at the served model's precisions."""
    fold_model = copy.deepcopy(padim)
    fold_model.gaussian = gaussian
    model, _, _ = ir.convert(fold_model, image_size)
    with tempfile.TemporaryDirectory(prefix="visinspect-fold-") as folder:
        xml_path = Path(folder) / "fold.xml"
        ir.save(model, xml_path, ir_precision)
        return ir.compile_ir(xml_path, precision)
