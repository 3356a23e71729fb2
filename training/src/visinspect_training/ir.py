"""The shared IR contract of every model family: uint8 RGB NHWC in, raw ``anomaly_map`` and ``pred_score`` out.

Each family (``families/``) builds a serving graph, a torch module from the contract's input to the two
outputs; this module converts it to OpenVINO with named, dynamic-batch inputs and outputs, saves it,
compiles it at an explicit precision and runs it. The pieces every graph shares are here too: the
in-graph normalisation of the uint8 input, the separable Gaussian blur of the anomaly map, and the tiling
of a tiled model's input (each tile embedded on its own, the embeddings stitched back).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import openvino as ov
import torch
from anomalib.models.components.filters import GaussianBlur2d
from torch import nn
from torch.nn import functional

from visinspect_api.model_repository import InferencePrecision, InputContract, IrPrecision, OutputContract

INPUT_NAME = "image"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ContractInput(nn.Module):
    """uint8 RGB NHWC in; ImageNet-normalised float NCHW for the backbone, computed inside the graph."""

    scale: torch.Tensor  # buffers
    shift: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)))
        self.register_buffer(
            "shift", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.permute(0, 3, 1, 2).float() * self.scale - self.shift


class AnomalibReference(nn.Module):
    """anomalib's own forward of a family's torch model with the contract's input: raw map [N,1,H,W], score [N].

    With ``score_from_map`` the score is the map's maximum (PatchCore's default image score; PaDiM's is
    that already), otherwise anomalib's ``pred_score``.
    """

    def __init__(self, model: nn.Module, score_from_map: bool = False) -> None:
        super().__init__()
        self.model = model.eval()
        self.normalise = ContractInput()
        self.score_from_map = score_from_map

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result = self.model(self.normalise(images))
        if self.score_from_map:
            return result.anomaly_map, result.anomaly_map.amax(dim=(1, 2, 3))
        return result.anomaly_map, result.pred_score.reshape(-1)


class SeparableGaussianBlur(nn.Module):
    """anomalib's ``GaussianBlur2d`` (one channel) as a vertical then a horizontal 1-D convolution."""

    vertical: torch.Tensor  # buffers
    horizontal: torch.Tensor

    def __init__(self, blur: GaussianBlur2d) -> None:
        super().__init__()
        if blur.channels != 1 or blur.padding != "same":
            raise ValueError("only the single-channel, 'same'-padded blur of an anomaly map is supported")
        kernel = blur.kernel[0, 0].double()
        # A normalised separable kernel is the outer product of its row sums and its column sums.
        vertical, horizontal = kernel.sum(dim=1), kernel.sum(dim=0)
        if not torch.allclose(torch.outer(vertical, horizontal), kernel, rtol=1e-6, atol=1e-12):
            raise ValueError("the blur kernel is not separable")
        self.register_buffer("vertical", vertical.float().view(1, 1, -1, 1))
        self.register_buffer("horizontal", horizontal.float().view(1, 1, 1, -1))
        self.padding = tuple(blur.padding_shape)
        self.border_type = blur.border_type

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        padded = functional.pad(maps, self.padding, mode=self.border_type)
        return functional.conv2d(functional.conv2d(padded, self.vertical), self.horizontal)


def grid_tile_size(model: nn.Module) -> int | None:
    """The tile side of a model fitted on a grid of square tiles (anomalib's ``tiler``), None when untiled.

    Only the grid this project fits with is served: square tiles, stride equal to the tile size, no
    border removal, so the tiles cover the input exactly once.
    """
    tiler = getattr(model, "tiler", None)
    if tiler is None:
        return None
    tile = tiler.tile_size_h
    if (tiler.tile_size_w, tiler.stride_h, tiler.stride_w, tiler.remove_border_count) != (tile, tile, tile, 0):
        raise ValueError("only a grid of square, non-overlapping tiles with no border removal is supported")
    return int(tile)


def split_tiles(images: torch.Tensor, tile: int) -> torch.Tensor:
    """[N, C, H, W] to its tiles [N * H/tile * W/tile, C, tile, tile]: per image, row by row (anomalib's order)."""
    channels, height, width = images.shape[1:]
    rows, columns = height // tile, width // tile
    grid = images.reshape(-1, channels, rows, tile, columns, tile).permute(0, 2, 4, 1, 3, 5)
    return grid.reshape(-1, channels, tile, tile)


def stitch_tiles(tiles: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """The inverse of :func:`split_tiles` for per-tile maps of any size: [N * rows * columns, C, h, w] to
    [N, C, rows * h, columns * w]."""
    channels, height, width = tiles.shape[1:]
    grid = tiles.reshape(-1, rows, columns, channels, height, width).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(-1, channels, rows * height, columns * width)


def embed_in_tiles(
    model: nn.Module, images: torch.Tensor, embed: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``embed(images)``; for a tiled model, ``embed`` of every tile on its own, stitched back into one embedding.

    This is what anomalib's tiled models compute (tile, embed, untile), as plain reshapes that export.
    """
    tile = grid_tile_size(model)
    if tile is None:
        return embed(images)
    rows, columns = images.shape[-2] // tile, images.shape[-1] // tile
    return stitch_tiles(embed(split_tiles(images, tile)), rows, columns)


def convert(graph: nn.Module, image_size: int) -> tuple[ov.Model, InputContract, OutputContract]:
    """Convert a family's serving graph to an in-memory OpenVINO model with a dynamic batch and named input/outputs."""
    wrapper = graph.eval()
    example = torch.zeros((1, image_size, image_size, 3), dtype=torch.uint8)
    with torch.no_grad():
        model = ov.convert_model(
            wrapper,
            example_input=example,
            input=[(ov.PartialShape([-1, image_size, image_size, 3]), ov.Type.u8)],
        )
    outputs = OutputContract()
    model.inputs[0].get_tensor().set_names({INPUT_NAME})
    model.outputs[0].get_tensor().set_names({outputs.anomaly_map})
    model.outputs[1].get_tensor().set_names({outputs.pred_score})
    contract = InputContract(name=INPUT_NAME, height=image_size, width=image_size)
    return model, contract, outputs


def save(model: ov.Model, xml_path: Path, precision: IrPrecision) -> None:
    """Write ``model.xml``/``model.bin``; FP16 compresses the weights, FP32 keeps them exact."""
    ov.save_model(model, xml_path, compress_to_fp16=precision == "FP16")


def compile_ir(xml_path: Path, precision: InferencePrecision, hint: str = "THROUGHPUT") -> ov.CompiledModel:
    """Compile for the CPU at an explicit inference precision (never the plugin's silent bf16 default)."""
    core = ov.Core()
    return core.compile_model(xml_path, "CPU", {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": hint})


def infer(compiled: ov.CompiledModel, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run a uint8 NHWC batch; return (anomaly maps [N, H, W], scores [N]) as float32."""
    result = compiled(images)
    anomaly_map = np.asarray(result[compiled.outputs[0]], dtype=np.float32)
    scores = np.asarray(result[compiled.outputs[1]], dtype=np.float32)
    return anomaly_map.reshape(anomaly_map.shape[0], *anomaly_map.shape[-2:]), scores.reshape(-1)


def torch_outputs(graph: nn.Module, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A serving graph run in torch on a uint8 NHWC batch: (anomaly maps [N, H, W], scores [N]), like :func:`infer`."""
    with torch.no_grad():
        maps, scores = graph(torch.from_numpy(images))
    return maps.numpy().reshape(maps.shape[0], *maps.shape[-2:]), scores.numpy().reshape(-1)


def torch_infer(reference: nn.Module, images: np.ndarray) -> np.ndarray:
    """A torch graph's raw scores on the same uint8 NHWC batch (anomalib's own forward: the fidelity check)."""
    with torch.no_grad():
        _, scores = reference(torch.from_numpy(images))
    return scores.numpy().astype(np.float32)
