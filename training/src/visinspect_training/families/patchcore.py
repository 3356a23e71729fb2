"""PatchCore: a memory bank of good patch features, scored by nearest-neighbour distance (anomalib's ``Patchcore``).

Fitting keeps a greedy k-center coreset of the training patches (``coreset.py``: the same selection as
anomalib's ``KCenterGreedy``, fast enough for 2 cores). The exported graph computes what anomalib's
``PatchcoreModel`` computes, leaner:

* the bank is float32 and stored transposed with its squared norms, so every patch-to-bank distance is
  one matmul (``|x|^2 - 2 x.b + |b|^2``) and the nearest neighbour a reduction over it;
* the anomaly map's 33x33 Gaussian blur runs as two 1-D passes (``ir.SeparableGaussianBlur``);
* the image score is, by default, the anomaly map's maximum (``image_score="map_max"``, as PaDiM's), so
  a part is rejected exactly when its mask is not empty; or anomalib's own (``"reweighted"``): the largest
  patch distance, re-weighted by how far that patch lies from the nearest bank entry's own neighbours
  (``num_neighbors``). docs/model-comparison.md measures both.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from anomalib.models import Patchcore
from anomalib.models.image.patchcore.torch_model import PatchcoreModel
from anomalib.pre_processing import PreProcessor
from torch import nn
from torch.nn import functional
from torchvision.transforms.v2 import Normalize

from visinspect_api.model_repository import ArchitectureName
from visinspect_training import ir
from visinspect_training.coreset import greedy_coreset
from visinspect_training.defaults import ImageScoreName
from visinspect_training.errors import ConfigError

if TYPE_CHECKING:
    from visinspect_training.train import TrainConfig


# One scoring call's patch-to-bank distance matrix (float32: images x patches x bank entries) stays
# under this; 384x384 inputs at a 1 % coreset run to 68 MB per image, 512x512 to 215 MB.
SCORING_BYTES_PER_CALL = 1 << 30


def coreset_size(patches: int, ratio: float) -> int:
    """How many of ``patches`` training patches the memory bank keeps at ``ratio`` (at least one)."""
    return max(1, int(patches * ratio))


def memory_bank(patches: torch.Tensor, ratio: float, seed: int) -> torch.Tensor:
    """The greedy k-center coreset of ``patches`` [M, D] at ``ratio``, float32."""
    chosen = greedy_coreset(patches, coreset_size(patches.shape[0], ratio), seed=seed)
    return patches[chosen].float().contiguous()


def patch_embedding(model: PatchcoreModel, images: torch.Tensor) -> torch.Tensor:
    """PatchCore's locally averaged patch features [N, D, h, w] (of every tile, stitched, when tiled)."""

    def embed(tensor: torch.Tensor) -> torch.Tensor:
        features = model.feature_extractor(tensor)
        return model.generate_embedding({k: model.feature_pooler(v) for k, v in features.items()})

    return ir.embed_in_tiles(model, images, embed)


class FastCoresetPatchcore(Patchcore):
    """anomalib's ``Patchcore`` with its coreset selected by :func:`memory_bank` (seeded)."""

    def __init__(
        self,
        *,
        seed: int,
        backbone: str,
        layers: Sequence[str],
        pre_trained: bool,
        coreset_sampling_ratio: float,
        num_neighbors: int,
        pre_processor: nn.Module | bool = True,
        evaluator: bool = True,
        visualizer: bool = True,
    ) -> None:
        super().__init__(
            backbone=backbone,
            layers=layers,
            pre_trained=pre_trained,
            coreset_sampling_ratio=coreset_sampling_ratio,
            num_neighbors=num_neighbors,
            pre_processor=pre_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self.seed = seed

    def fit(self) -> None:
        """Keep the coreset of every training patch collected by the training steps."""
        store = self.model.embedding_store
        if not store:
            raise ValueError("no training patches were collected: the training split is empty")
        patches = torch.vstack(store)
        store.clear()
        self.model.memory_bank = memory_bank(patches, self.coreset_sampling_ratio, self.seed)


class ServingPatchcore(nn.Module):
    """The exported graph: anomalib's PatchCore computation with a matmul nearest-neighbour search."""

    bank_transposed: torch.Tensor  # buffers
    bank_squared: torch.Tensor

    def __init__(self, model: PatchcoreModel, image_score: ImageScoreName) -> None:
        super().__init__()
        self.score_is_map_max = image_score == "map_max"
        ir.grid_tile_size(model)  # refuses tilings the graph cannot reproduce
        bank = model.memory_bank.detach().float()
        if bank.shape[0] == 0:
            raise ValueError("the PatchCore memory bank is empty: fit the model first")
        self.model = model.eval()
        self.normalise = ir.ContractInput()
        self.register_buffer("bank_transposed", bank.t().contiguous())  # [D, M]: the only copy in the graph
        self.register_buffer("bank_squared", bank.pow(2).sum(1))
        self.neighbors = min(model.num_neighbors, bank.shape[0])
        self.blur = ir.SeparableGaussianBlur(model.anomaly_map_generator.blur)

    def _squared_distances(self, queries: torch.Tensor) -> torch.Tensor:
        """Squared distances [..., M] from queries [..., D] to every bank entry."""
        return (queries.pow(2).sum(-1, keepdim=True) - 2.0 * torch.matmul(queries, self.bank_transposed)).add(
            self.bank_squared
        )

    def _entries(self, indices: torch.Tensor) -> torch.Tensor:
        """Bank entries [len(indices), D]."""
        return self.bank_transposed.index_select(1, indices).t()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tensor = self.normalise(images)
        embedding = patch_embedding(self.model, tensor)
        batch, dimensions, height, width = embedding.shape
        patches = embedding.permute(0, 2, 3, 1).reshape(batch, height * width, dimensions)
        nearest_squared, location = self._squared_distances(patches).min(dim=-1)
        patch_scores = nearest_squared.clamp(min=0).sqrt()  # [N, P]
        anomaly_map = self.blur(
            functional.interpolate(patch_scores.reshape(batch, 1, height, width), size=tensor.shape[-2:])
        )
        if self.score_is_map_max:
            return anomaly_map, anomaly_map.amax(dim=(1, 2, 3))
        score, worst = patch_scores.max(dim=1)
        if self.neighbors == 1:
            return anomaly_map, score
        worst_patch = torch.gather(patches, 1, worst.view(batch, 1, 1).expand(batch, 1, dimensions)).squeeze(1)
        nearest_entry = self._entries(torch.gather(location, 1, worst.view(batch, 1)).view(batch))
        _, support = torch.topk(self._squared_distances(nearest_entry), self.neighbors, dim=1, largest=False)
        support_entries = self._entries(support.reshape(-1)).reshape(batch, self.neighbors, dimensions)
        support_distances = (
            (
                worst_patch.pow(2).sum(-1, keepdim=True)
                - 2.0 * torch.matmul(support_entries, worst_patch.unsqueeze(-1)).squeeze(-1)
                + support_entries.pow(2).sum(-1)
            )
            .clamp(min=0)
            .sqrt()
        )
        weights = 1.0 - functional.softmax(support_distances, dim=1)[:, 0]
        return anomaly_map, weights * score


class PatchcoreFamily:
    """PatchCore as a :class:`~visinspect_training.families.ModelFamily`."""

    name: ArchitectureName = "patchcore"

    def build(self, config: TrainConfig, pre_trained: bool) -> FastCoresetPatchcore:
        """anomalib's ``Patchcore`` with ``config``'s backbone, layers, coreset ratio and neighbours."""
        try:
            module = FastCoresetPatchcore(
                seed=config.seed,
                backbone=config.backbone,
                layers=list(config.layers),
                pre_trained=pre_trained,
                coreset_sampling_ratio=config.coreset_ratio,
                num_neighbors=config.num_neighbors,
                pre_processor=PreProcessor(transform=Normalize(mean=ir.IMAGENET_MEAN, std=ir.IMAGENET_STD)),
                evaluator=False,
                visualizer=False,
            )
        except ValueError as exc:
            raise ConfigError(f"invalid PatchCore settings for {config.backbone}: {exc}") from exc
        found = list(module.model.feature_extractor.layers)  # anomalib drops unknown layers with a warning
        if found != list(config.layers):
            missing = ", ".join(layer for layer in config.layers if layer not in found)
            raise ConfigError(f"invalid PatchCore settings for {config.backbone}: no layer {missing}")
        return module

    def serving_graph(self, model: nn.Module, config: TrainConfig) -> nn.Module:
        """:class:`ServingPatchcore` with ``config``'s image score."""
        assert isinstance(model, PatchcoreModel)
        return ServingPatchcore(model, config.image_score)

    def embed(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """:func:`patch_embedding`."""
        assert isinstance(model, PatchcoreModel)
        return patch_embedding(model, images)

    def fitted_on(self, model: nn.Module, embeddings: torch.Tensor, config: TrainConfig) -> nn.Module:
        """A copy whose memory bank is the coreset of the patches of ``embeddings`` [N, D, h, w]."""
        assert isinstance(model, PatchcoreModel)
        patches = PatchcoreModel.reshape_embedding(embeddings)
        fold = copy.deepcopy(model)
        fold.memory_bank = memory_bank(patches, config.coreset_ratio, config.seed)
        return fold

    def parameters(self, model: nn.Module, config: TrainConfig) -> dict[str, float]:
        """Coreset ratio, neighbours of the score re-weighting and whether it is used, bank size, patch dimensions."""
        assert isinstance(model, PatchcoreModel)
        return {
            "coreset_ratio": config.coreset_ratio,
            "num_neighbors": float(config.num_neighbors),
            "reweighted_score": float(config.image_score == "reweighted"),
            "memory_bank_size": float(model.memory_bank.shape[0]),
            "embedding_dim": float(self.feature_dimensions(model, config)),
        }

    def feature_dimensions(self, model: nn.Module, config: TrainConfig) -> int:
        """The patch feature length: the channels of every layer, concatenated."""
        del config
        assert isinstance(model, PatchcoreModel)
        return int(model.memory_bank.shape[1])

    def images_per_call(self, model: nn.Module, config: TrainConfig) -> int:
        """As many images as keep one call's distance matrix under :data:`SCORING_BYTES_PER_CALL` (at least one)."""
        assert isinstance(model, PatchcoreModel)
        per_image = 4 * patches_per_image(model, config.image_size) * int(model.memory_bank.shape[0])
        return max(1, SCORING_BYTES_PER_CALL // per_image)


def patches_per_image(model: PatchcoreModel, image_size: int) -> int:
    """Patches the embedding of one ``image_size`` square image has (every layer is resized to the first's grid)."""
    with torch.no_grad():
        features = model.feature_extractor(torch.zeros(1, 3, image_size, image_size))
    return max(feature.shape[-2] * feature.shape[-1] for feature in features.values())


PATCHCORE = PatchcoreFamily()
