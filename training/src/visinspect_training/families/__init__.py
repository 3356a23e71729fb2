"""Model families behind one interface: each builds, fits and exports its model the same way.

A family is one module (``padim.py``, ``patchcore.py``) with a :class:`ModelFamily` instance. Every
family's serving graph keeps the shared IR contract (``ir.py``): uint8 RGB NHWC in, the raw anomaly
map and raw image score out, so servers, the SDK and the CLI treat every family alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from visinspect_api.model_repository import ArchitectureName

if TYPE_CHECKING:
    import torch
    from anomalib.models.components import AnomalibModule
    from torch import nn

    from visinspect_training.train import TrainConfig


class ModelFamily(Protocol):
    """What training, calibration and export need from a model family."""

    name: ArchitectureName

    def build(self, config: TrainConfig, pre_trained: bool) -> AnomalibModule:
        """anomalib's Lightning module for ``config``, ready for ``Engine.fit`` (``.model`` is the torch model)."""
        ...

    def serving_graph(self, model: nn.Module, config: TrainConfig) -> nn.Module:
        """The exported graph: the contract's uint8 NHWC input to (raw anomaly map [N,1,H,W], raw score [N])."""
        ...

    def embed(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """What the model fits on, per image [N, ...], from ImageNet-normalised float NCHW images."""
        ...

    def fitted_on(self, model: nn.Module, embeddings: torch.Tensor, config: TrainConfig) -> nn.Module:
        """A copy of ``model`` (same backbone) fitted on ``embeddings`` only: the out-of-fold models."""
        ...

    def parameters(self, model: nn.Module, config: TrainConfig) -> dict[str, float]:
        """The fitted model's own numeric parameters, recorded in the metadata."""
        ...

    def feature_dimensions(self, model: nn.Module, config: TrainConfig) -> int:
        """Feature dimensions per position the model scores with."""
        ...

    def images_per_call(self, model: nn.Module, config: TrainConfig) -> int:
        """The most images one scoring call may take while its working memory stays bounded."""
        ...


def scoring_batch_size(model: nn.Module, config: TrainConfig) -> int:
    """The batch size of export's and evaluation's loaders: the training batch, bounded by the family."""
    return max(1, min(config.batch_size, config.family.images_per_call(model, config)))


def family(name: str) -> ModelFamily:
    """The family called ``name`` (``padim`` or ``patchcore``)."""
    from visinspect_training.families.padim import PADIM  # noqa: PLC0415 - families import torch
    from visinspect_training.families.patchcore import PATCHCORE  # noqa: PLC0415

    families: dict[str, ModelFamily] = {PADIM.name: PADIM, PATCHCORE.name: PATCHCORE}
    try:
        return families[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}: choose one of {', '.join(families)}") from None
