"""The input contract's pre-processing, applied identically in training, calibration and evaluation.

The exported IR takes 8-bit RGB images already resized to the model size (``InputContract``), and the
server resizes with OpenCV's area interpolation. Training applies the very same resize and 8-bit
rounding to every sample, so the calibration thresholds hold for what the server will feed the IR.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import Transform


def resize_rgb(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an HxWx3 uint8 image to the model size with the contract's interpolation."""
    if image.shape[:2] == (height, width):
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


class ContractResize(Transform):
    """Anomalib augmentation that turns a float image into the contract's resized 8-bit form.

    Images are rounded to 8 bits, resized with area interpolation and returned as float in [0, 1];
    masks are resized with nearest-neighbour so they stay binary.
    """

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        self.height = height
        self.width = width

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:  # noqa: ARG002 - torchvision signature
        if isinstance(inpt, tv_tensors.Mask):
            mask = inpt.numpy()
            resized = cv2.resize(mask, (self.width, self.height), interpolation=cv2.INTER_NEAREST)
            return tv_tensors.Mask(torch.from_numpy(resized))
        if isinstance(inpt, tv_tensors.Image):
            pixels = (inpt.permute(1, 2, 0).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
            resized = resize_rgb(np.ascontiguousarray(pixels), self.height, self.width)
            return tv_tensors.Image(torch.from_numpy(resized).permute(2, 0, 1).float().div_(255.0))
        return inpt
