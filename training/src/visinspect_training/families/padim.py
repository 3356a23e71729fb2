"""PaDiM: a Gaussian per feature position, scored by Mahalanobis distance (anomalib's ``Padim``).

The exported graph computes what anomalib's ``PadimModel`` computes, in a cheaper form (profiled with
OpenVINO's per-layer counters on the default backbone, 256x256, f32, 2 cores):

* The Gaussian blur of the anomaly map runs as two 1-D passes instead of one 33x33 convolution. The
  kernel is separable, so the result is the same up to float rounding; this took 12 of 30 ms.
* The Mahalanobis step reads every position's C x C inverse covariance on each call (164 MB at C = 100)
  and is memory bound. The matrix is symmetric, so the graph keeps only its upper block triangle,
  off-diagonal blocks doubled (62.5 % of the bytes with 4 blocks); batching shares the read further.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from anomalib.models import Padim
from anomalib.models.components.stats import MultiVariateGaussian
from anomalib.models.image.padim.torch_model import PadimModel
from anomalib.pre_processing import PreProcessor
from torch import nn
from torch.nn import functional
from torchvision.transforms.v2 import Normalize

from visinspect_api.model_repository import ArchitectureName
from visinspect_training import ir
from visinspect_training.errors import ConfigError

if TYPE_CHECKING:
    from visinspect_training.train import TrainConfig

# Blocks of about this many features made the scoring step fastest (C = 100: 4 blocks, 13 ms at
# batch 1 against 18-20 ms for 1 block, 16-17 ms for 2, 5, 6 or 10 blocks; benchmarks/README.md).
_FEATURES_PER_BLOCK = 25


class BlockTriangularMahalanobis(nn.Module):
    """Squared Mahalanobis distance per position, ``d = delta^T A delta``, from A's upper block triangle.

    For row block i the buffer holds ``[A_ii, 2 A_i(i+1), ..., 2 A_ik]``, so
    ``d = sum_i delta_i^T [A_ii, 2 A_i(i+1), ...] delta_(i..k)``: the same sum as the full product.
    """

    def __init__(self, inv_covariance: torch.Tensor, blocks: int) -> None:
        super().__init__()
        features = inv_covariance.shape[-1]
        blocks = max(1, min(blocks, features))
        self.bounds = [round(index * features / blocks) for index in range(blocks + 1)]
        matrix = inv_covariance.double()
        for index, (start, stop) in enumerate(zip(self.bounds, self.bounds[1:], strict=False)):
            row_block = matrix[:, start:stop, start:].clone()
            row_block[:, :, stop - start :] *= 2.0
            self.register_buffer(f"row_block_{index}", row_block.float())

    def forward(self, delta: torch.Tensor) -> torch.Tensor:
        """``delta``: [positions, batch, C] -> squared distances [positions, batch]."""
        total = torch.zeros(delta.shape[:2], dtype=delta.dtype)
        for index, (start, stop) in enumerate(zip(self.bounds, self.bounds[1:], strict=False)):
            weights = getattr(self, f"row_block_{index}")
            total = total + (torch.matmul(delta[:, :, start:stop], weights) * delta[:, :, start:]).sum(2)
        return total


def position_embedding(model: PadimModel, images: torch.Tensor) -> torch.Tensor:
    """PaDiM's embedding [N, C, h, w]: the selected features of every position (of every tile, stitched, when tiled)."""
    return ir.embed_in_tiles(model, images, lambda tiles: model.generate_embedding(model.feature_extractor(tiles)))


class ServingPadim(nn.Module):
    """The exported graph: anomalib's PaDiM computation with separable blur and block-triangular scoring."""

    def __init__(self, padim: PadimModel, blocks: int | None = None) -> None:
        super().__init__()
        ir.grid_tile_size(padim)  # refuses tilings the graph cannot reproduce
        self.padim = padim.eval()
        self.normalise = ir.ContractInput()
        inv_covariance = padim.gaussian.inv_covariance
        features = inv_covariance.shape[-1]
        self.distance = BlockTriangularMahalanobis(
            inv_covariance, blocks or max(1, round(features / _FEATURES_PER_BLOCK))
        )
        self.blur = ir.SeparableGaussianBlur(padim.anomaly_map_generator.blur)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tensor = self.normalise(images)
        embedding = position_embedding(self.padim, tensor)
        batch, features, height, width = embedding.shape
        delta = (embedding.reshape(batch, features, height * width) - self.padim.gaussian.mean).permute(2, 0, 1)
        distances = self.distance(delta).permute(1, 0).reshape(batch, 1, height, width).clamp(0).sqrt()
        upsampled = functional.interpolate(distances, size=tensor.shape[-2:], mode="bilinear", align_corners=False)
        anomaly_map = self.blur(upsampled)
        return anomaly_map, torch.amax(anomaly_map, dim=(-2, -1)).reshape(-1)


class PadimFamily:
    """PaDiM as a :class:`~visinspect_training.families.ModelFamily`."""

    name: ArchitectureName = "padim"

    def build(self, config: TrainConfig, pre_trained: bool) -> Padim:
        """anomalib's ``Padim`` with ``config``'s backbone, layers and feature count."""
        try:
            return Padim(
                backbone=config.backbone,
                layers=list(config.layers),
                pre_trained=pre_trained,
                n_features=config.n_features,
                pre_processor=PreProcessor(transform=Normalize(mean=ir.IMAGENET_MEAN, std=ir.IMAGENET_STD)),
                evaluator=False,
                visualizer=False,
            )
        except ValueError as exc:
            raise ConfigError(f"invalid PaDiM settings for {config.backbone}: {exc}") from exc

    def serving_graph(self, model: nn.Module, config: TrainConfig) -> nn.Module:
        """:class:`ServingPadim` (its image score is the map's maximum, as anomalib's)."""
        del config
        assert isinstance(model, PadimModel)
        return ServingPadim(model)

    def embed(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """:func:`position_embedding`."""
        assert isinstance(model, PadimModel)
        return position_embedding(model, images)

    def fitted_on(self, model: nn.Module, embeddings: torch.Tensor, config: TrainConfig) -> nn.Module:
        """A copy whose Gaussian is fitted on ``embeddings`` [N, C, h, w]."""
        del config  # PaDiM's fit has no parameters beyond the embedding
        gaussian = MultiVariateGaussian()
        gaussian.fit(embeddings)
        fold = copy.deepcopy(model)
        fold.gaussian = gaussian
        return fold

    def parameters(self, model: nn.Module, config: TrainConfig) -> dict[str, float]:
        """The feature count kept per position."""
        return {"n_features": float(self.feature_dimensions(model, config))}

    def feature_dimensions(self, model: nn.Module, config: TrainConfig) -> int:
        """``n_features``."""
        del model
        return config.n_features

    def images_per_call(self, model: nn.Module, config: TrainConfig) -> int:
        """The training batch: PaDiM's scoring memory per image is one embedding, small next to the model."""
        del model
        return config.batch_size


PADIM = PadimFamily()
