"""Out-of-fold scores of the good training images: calibration without holding images out of the served model.

The training images are split into seeded folds. For each fold, the model family fits a copy of the
model on the other folds' embeddings (PaDiM: the Gaussian; PatchCore: the memory bank's coreset) and
that copy scores the fold's images, so every training image is scored by a model that did not fit it,
while the served model fits them all. Each fold model fits ``(k - 1) / k`` of the images: it is a little
weaker than the served model, so its scores of good images run a little high and a threshold set on
them errs towards fewer false rejects (docs/calibration.md).

The backbone is the served model's, so the embeddings are computed once. With FP32 weights at ``f32``
the fold models score with their serving graph in torch (the exported IR matches it to float rounding);
at any lower precision each fold model is exported and scored by OpenVINO the way the served model is,
so the scores carry the same rounding.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import openvino as ov
import torch
from anomalib.data.datasets.base.image import AnomalibDataset
from torch import nn

from visinspect_api.model_repository import InferencePrecision, IrPrecision
from visinspect_training import ir
from visinspect_training.data import PreparedData, fold_assignment
from visinspect_training.evaluate import Scored, score_images, to_uint8_nhwc

if TYPE_CHECKING:
    from visinspect_training.train import TrainConfig


def out_of_fold_scores(
    model: nn.Module,
    data: PreparedData,
    config: TrainConfig,
    *,
    folds: int,
    ir_precision: IrPrecision = "FP32",
    precision: InferencePrecision = "f32",
) -> Scored:
    """Score every good training image with a model fitted on the other folds (see the module docstring)."""
    family = config.family
    dataset = data.datamodule.train_data
    fold_of = fold_assignment(dataset, folds, config.dataset.seed)
    embeddings = _embeddings(model, data, dataset, config)
    scored = Scored()
    for fold in range(int(fold_of.max()) + 1):
        held = np.flatnonzero(fold_of == fold)
        fold_model = family.fitted_on(model, embeddings[torch.from_numpy(fold_of != fold)], config)
        graph = family.serving_graph(fold_model, config).eval()
        loader = data.loader(dataset.subsample(held.tolist()))
        if ir_precision == "FP32" and precision == "f32":
            scored.extend(score_images(functools.partial(ir.torch_outputs, graph), loader))
        else:
            scored.extend(score_images(_compiled(graph, config.image_size, ir_precision, precision), loader))
    return scored


def _embeddings(model: nn.Module, data: PreparedData, dataset: AnomalibDataset, config: TrainConfig) -> torch.Tensor:
    """The family's embeddings [N, ...] of ``dataset`` in order, from the uint8 images the server would get."""
    normalise = ir.ContractInput()
    embeddings: torch.Tensor | None = None
    start = 0
    with torch.no_grad():
        for batch in data.loader(dataset):
            images = torch.from_numpy(to_uint8_nhwc(batch.image))
            part = config.family.embed(model, normalise(images))
            if embeddings is None:  # one allocation: the embeddings of every training image can run to gigabytes
                embeddings = torch.empty((len(dataset), *part.shape[1:]), dtype=part.dtype)
            embeddings[start : start + part.shape[0]] = part
            start += part.shape[0]
    assert embeddings is not None and start == len(dataset)
    return embeddings


def _compiled(
    graph: nn.Module, image_size: int, ir_precision: IrPrecision, precision: InferencePrecision
) -> ov.CompiledModel:
    """The fold model saved and compiled at the served model's precisions."""
    model, _, _ = ir.convert(graph, image_size)
    with tempfile.TemporaryDirectory(prefix="visinspect-fold-") as folder:
        xml_path = Path(folder) / "fold.xml"
        ir.save(model, xml_path, ir_precision)
        return ir.compile_ir(xml_path, precision)
