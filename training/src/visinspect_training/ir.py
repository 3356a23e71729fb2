"""Conversion of a fitted PaDiM module to an OpenVINO IR with raw outputs, and running that IR."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import openvino as ov
import torch
from anomalib.models.image.padim.torch_model import PadimModel
from torch import nn

from visinspect_api.model_repository import InputContract, OutputContract
from visinspect_training.train import IMAGENET_MEAN, IMAGENET_STD

INPUT_NAME = "image"
IrPrecisionName = Literal["FP32", "FP16"]
InferencePrecisionName = Literal["f32", "bf16", "f16"]


class RawPadim(nn.Module):
    """PaDiM with the contract's input: uint8 RGB NHWC in, raw anomaly map and raw score out.

    Normalisation (to float, ImageNet mean/std) happens inside the graph, so callers pass 8-bit
    pixels straight from the decoder: a quarter of the bytes of a float tensor.
    """

    def __init__(self, padim: PadimModel) -> None:
        super().__init__()
        self.padim = padim.eval()
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)))
        self.register_buffer(
            "shift", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tensor = images.permute(0, 3, 1, 2).float() * self.scale - self.shift
        result = self.padim(tensor)
        return result.anomaly_map, result.pred_score.reshape(-1)


def convert(padim: PadimModel, image_size: int) -> tuple[ov.Model, InputContract, OutputContract]:
    """Convert to an in-memory OpenVINO model with a dynamic batch and named input/outputs."""
    wrapper = RawPadim(padim).eval()
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


def torch_infer(wrapper: RawPadim, images: np.ndarray) -> np.ndarray:
    """The torch model's raw scores on the same uint8 NHWC batch, for the export fidelity check."""
    with torch.no_grad():
        _, scores = wrapper(torch.from_numpy(images))
    return scores.numpy().astype(np.float32)
