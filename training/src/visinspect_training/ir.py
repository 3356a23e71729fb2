"""Conversion of a fitted PaDiM module to an OpenVINO IR with raw outputs, and running that IR.

The exported graph computes what anomalib's ``PadimModel`` computes, in a cheaper form (profiled with
OpenVINO's per-layer counters on the default backbone, 256x256, f32, 2 cores):

* The Gaussian blur of the anomaly map runs as two 1-D passes instead of one 33x33 convolution. The
  kernel is separable, so the result is the same up to float rounding; this took 12 of 30 ms.
* The Mahalanobis step reads every position's C x C inverse covariance on each call (164 MB at C = 100)
  and is memory bound. The matrix is symmetric, so the graph keeps only its upper block triangle,
  off-diagonal blocks doubled (62.5 % of the bytes with 4 blocks); batching shares the read further.

:class:`AnomalibPadim` runs anomalib's own forward; the export fidelity check compares against it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import openvino as ov
import torch
from anomalib.models.components.filters import GaussianBlur2d
from anomalib.models.image.padim.torch_model import PadimModel
from torch import nn
from torch.nn import functional

from visinspect_api.model_repository import InputContract, OutputContract
from visinspect_training.train import IMAGENET_MEAN, IMAGENET_STD

INPUT_NAME = "image"
IrPrecisionName = Literal["FP32", "FP16"]
InferencePrecisionName = Literal["f32", "bf16", "f16"]


# Blocks of about this many features made the scoring step fastest (C = 100: 4 blocks, 13 ms at
# batch 1 against 18-20 ms for 1 block, 16-17 ms for 2, 5, 6 or 10 blocks; benchmarks/README.md).
_FEATURES_PER_BLOCK = 25


class ContractInput(nn.Module):
    """uint8 RGB NHWC in; ImageNet-normalised float NCHW for the backbone, computed inside the graph."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)))
        self.register_buffer(
            "shift", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.permute(0, 3, 1, 2).float() * self.scale - self.shift


class AnomalibPadim(nn.Module):
    """anomalib's own PaDiM forward with the contract's input: raw anomaly map [N,1,H,W] and raw score [N]."""

    def __init__(self, padim: PadimModel) -> None:
        super().__init__()
        self.padim = padim.eval()
        self.normalise = ContractInput()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result = self.padim(self.normalise(images))
        return result.anomaly_map, result.pred_score.reshape(-1)


class SeparableGaussianBlur(nn.Module):
    """anomalib's ``GaussianBlur2d`` (one channel) as a vertical then a horizontal 1-D convolution."""

    def __init__(self, blur: GaussianBlur2d) -> None:
        super().__init__()
        if blur.channels != 1 or blur.padding != "same":
            raise ValueError("only the single-channel, 'same'-padded blur of PaDiM's anomaly map is supported")
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


class ServingPadim(nn.Module):
    """The exported graph: anomalib's PaDiM computation with separable blur and block-triangular scoring."""

    def __init__(self, padim: PadimModel, blocks: int | None = None) -> None:
        super().__init__()
        if padim.tiler is not None:
            raise ValueError("tiled PaDiM models are not supported by the export")
        self.padim = padim.eval()
        self.normalise = ContractInput()
        inv_covariance = padim.gaussian.inv_covariance
        features = inv_covariance.shape[-1]
        self.distance = BlockTriangularMahalanobis(
            inv_covariance, blocks or max(1, round(features / _FEATURES_PER_BLOCK))
        )
        self.blur = SeparableGaussianBlur(padim.anomaly_map_generator.blur)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tensor = self.normalise(images)
        embedding = self.padim.generate_embedding(self.padim.feature_extractor(tensor))
        batch, features, height, width = embedding.shape
        delta = (embedding.reshape(batch, features, height * width) - self.padim.gaussian.mean).permute(2, 0, 1)
        distances = self.distance(delta).permute(1, 0).reshape(batch, 1, height, width).clamp(0).sqrt()
        upsampled = functional.interpolate(distances, size=tensor.shape[-2:], mode="bilinear", align_corners=False)
        anomaly_map = self.blur(upsampled)
        return anomaly_map, torch.amax(anomaly_map, dim=(-2, -1)).reshape(-1)


def convert(padim: PadimModel, image_size: int) -> tuple[ov.Model, InputContract, OutputContract]:
    """Convert to an in-memory OpenVINO model with a dynamic batch and named input/outputs."""
    wrapper = ServingPadim(padim).eval()
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


def save(model: ov.Model, xml_path: Path, precision: IrPrecisionName) -> None:
    """Write ``model.xml``/``model.bin``; FP16 compresses the weights, FP32 keeps them exact."""
    ov.save_model(model, xml_path, compress_to_fp16=precision == "FP16")


def compile_ir(xml_path: Path, precision: InferencePrecisionName, hint: str = "THROUGHPUT") -> ov.CompiledModel:
    """Compile for the CPU at an explicit inference precision (never the plugin's silent bf16 default)."""
    core = ov.Core()
    return core.compile_model(xml_path, "CPU", {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": hint})


def infer(compiled: ov.CompiledModel, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run a uint8 NHWC batch; return (anomaly maps [N, H, W], scores [N]) as float32."""
    result = compiled(images)
    anomaly_map = np.asarray(result[compiled.outputs[0]], dtype=np.float32)
    scores = np.asarray(result[compiled.outputs[1]], dtype=np.float32)
    return anomaly_map.reshape(anomaly_map.shape[0], *anomaly_map.shape[-2:]), scores.reshape(-1)


def torch_infer(wrapper: AnomalibPadim, images: np.ndarray) -> np.ndarray:
    """anomalib's own raw scores on the same uint8 NHWC batch, for the export fidelity check."""
    with torch.no_grad():
        _, scores = wrapper(torch.from_numpy(images))
    return scores.numpy().astype(np.float32)
