"""ContractResize: training's resize is the server's resize, bit for bit, on the 8-bit grid."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2.functional import to_dtype, to_image

from visinspect_server.imaging import resize_to_model
from visinspect_training.preprocess import ContractResize

# (source height, source width, model height, model width)
RESIZES = [
    pytest.param(757, 1001, 128, 128, id="757x1001-down"),
    pytest.param(1001, 757, 128, 128, id="1001x757-down"),
    pytest.param(757, 1001, 96, 160, id="757x1001-down-nonsquare-model"),
    pytest.param(45, 71, 128, 128, id="45x71-up"),
    pytest.param(71, 45, 96, 160, id="71x45-up-nonsquare-model"),
]


def random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def as_float_image(pixels: np.ndarray) -> tv_tensors.Image:
    """What anomalib's read_image gives: to_dtype(to_image(rgb), float32, scale=True)."""
    return to_dtype(to_image(pixels), torch.float32, scale=True)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """CxHxW float in [0, 1] -> HxWx3 uint8, asserting the values lie on the 8-bit grid."""
    scaled = image.permute(1, 2, 0).numpy().astype(np.float64) * 255.0
    levels = np.rint(scaled)
    assert np.abs(scaled - levels).max() < 1e-3, "the transform's output is not on the 8-bit grid"
    return levels.astype(np.uint8)


@pytest.mark.parametrize(("height", "width", "model_height", "model_width"), RESIZES)
def test_image_resize_equals_server_resize_bit_for_bit(
    height: int, width: int, model_height: int, model_width: int
) -> None:
    pixels = random_rgb(height, width)
    out = ContractResize(model_height, model_width)(as_float_image(pixels))
    assert isinstance(out, tv_tensors.Image)
    assert out.dtype == torch.float32
    assert tuple(out.shape) == (3, model_height, model_width)
    trained_on = to_uint8(out)
    served = resize_to_model(pixels, model_height, model_width)
    np.testing.assert_array_equal(trained_on, served)
    np.testing.assert_array_equal(
        trained_on, cv2.resize(pixels, (model_width, model_height), interpolation=cv2.INTER_AREA)
    )


def test_off_grid_floats_are_rounded_to_8_bits_before_the_resize() -> None:
    """Each pixel is rounded to its nearest 8-bit level first, then area-resized as uint8.

    The input is the 8-bit image plus per-pixel offsets of up to +-0.45 of a level (and a few values
    just outside [0, 1]); the output must be the server's resize of the 8-bit image. Resizing the
    floats first and rounding after would average the offsets and land on other levels.
    """
    pixels = random_rgb(757, 1001, seed=1)
    offsets = np.random.default_rng(2).uniform(-0.45, 0.45, size=pixels.shape)
    off_grid = (pixels.astype(np.float64) + offsets) / 255.0
    off_grid[0, 0] = (-0.01, 1.01, 0.5 / 255.0 - 1e-4)  # clipped to 0 and 255; just under half a level -> 0
    pixels[0, 0] = (0, 255, 0)
    image = tv_tensors.Image(torch.from_numpy(off_grid.astype(np.float32)).permute(2, 0, 1))
    out = to_uint8(ContractResize(128, 128)(image))
    np.testing.assert_array_equal(out, resize_to_model(pixels, 128, 128))
    # The check discriminates: the float-first resize, then rounding, gives other pixels.
    float_first = cv2.resize(off_grid.astype(np.float32), (128, 128), interpolation=cv2.INTER_AREA)
    assert (np.rint(float_first * 255.0).clip(0, 255).astype(np.uint8) != out).any()


def test_off_grid_floats_at_model_size_are_rounded_to_the_nearest_level() -> None:
    levels = np.array([[0, 1, 127, 254, 255, 200]], dtype=np.float64)
    nudges = np.array([[0.49, 0.3, -0.49, 0.4, -0.2, 0.51]])  # the last one rounds up to the next level
    image = tv_tensors.Image(
        torch.from_numpy(np.repeat(((levels + nudges) / 255.0)[..., None], 3, axis=2).astype(np.float32)).permute(
            2, 0, 1
        )
    )
    out = to_uint8(ContractResize(1, 6)(image))
    np.testing.assert_array_equal(out[..., 0], [[0, 1, 127, 254, 255, 201]])


def test_same_size_image_passes_through_unchanged() -> None:
    pixels = random_rgb(128, 96, seed=3)
    image = as_float_image(pixels)
    out = ContractResize(128, 96)(image)
    assert isinstance(out, tv_tensors.Image)
    assert out.dtype == torch.float32 and tuple(out.shape) == (3, 128, 96)
    np.testing.assert_array_equal(to_uint8(out), pixels)  # the same 8-bit pixels ...
    # ... and the same floats up to one ulp (the transform divides by 255, anomalib multiplies by 1/255).
    torch.testing.assert_close(out.as_subclass(torch.Tensor), image.as_subclass(torch.Tensor), rtol=0, atol=6e-8)
    divided = tv_tensors.Image(torch.from_numpy(pixels).permute(2, 0, 1).float().div(255.0))
    assert torch.equal(ContractResize(128, 96)(divided), divided)


@pytest.mark.parametrize(("height", "width", "model_height", "model_width"), RESIZES)
def test_mask_is_resized_nearest_neighbour_and_stays_binary(
    height: int, width: int, model_height: int, model_width: int
) -> None:
    rows, cols = np.mgrid[0:height, 0:width]
    blob = ((rows - height * 0.4) ** 2 / (height * 0.2) ** 2 + (cols - width * 0.6) ** 2 / (width * 0.15) ** 2) < 1
    stripes = (cols % 7 == 0) & (rows < height // 3)  # thin lines: any averaging would leave fractions
    binary = (blob | stripes).astype(np.uint8)
    mask = tv_tensors.Mask(torch.from_numpy(binary))  # as anomalib's read_mask: HxW uint8 in {0, 1}
    image = as_float_image(random_rgb(height, width, seed=4))
    out_image, out_mask = ContractResize(model_height, model_width)(image, mask)  # anomalib passes both
    assert isinstance(out_mask, tv_tensors.Mask)
    assert out_mask.dtype == torch.uint8
    assert tuple(out_mask.shape) == (model_height, model_width)
    assert tuple(out_image.shape) == (3, model_height, model_width)
    resized = out_mask.numpy()
    assert set(np.unique(resized)) == {0, 1}
    np.testing.assert_array_equal(
        resized, cv2.resize(binary, (model_width, model_height), interpolation=cv2.INTER_NEAREST)
    )


def test_other_inputs_pass_through_untouched() -> None:
    transform = ContractResize(128, 128)
    label = torch.tensor(1)
    plain = torch.rand(3, 40, 50)  # a pure tensor is not an image to this transform
    image = as_float_image(random_rgb(40, 50, seed=5))
    out_image, out_label, out_plain, out_text = transform(image, label, plain, "bottle/000.png")
    assert tuple(out_image.shape) == (3, 128, 128)
    assert out_label is label and torch.equal(out_label, torch.tensor(1))
    assert out_plain is plain and tuple(out_plain.shape) == (3, 40, 50)
    assert out_text == "bottle/000.png"
    assert transform.transform(label, {}) is label
    assert transform.transform(plain, {}) is plain
