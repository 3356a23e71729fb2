"""The exported graph's cheaper blur and scoring compute what anomalib computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from anomalib.models.components.filters import GaussianBlur2d
from anomalib.models.image.padim.anomaly_map import AnomalyMapGenerator

from visinspect_training.families.padim import BlockTriangularMahalanobis
from visinspect_training.ir import SeparableGaussianBlur


def _random_inverse_covariances(positions: int, features: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    samples = torch.randn(positions, 3 * features, features, generator=generator)
    covariance = samples.transpose(1, 2) @ samples / (3 * features) + 0.01 * torch.eye(features)
    return torch.linalg.inv(covariance)


@pytest.mark.parametrize("sigma", [1, 4])
def test_separable_blur_equals_anomalibs_2d_blur(sigma: int) -> None:
    blur = AnomalyMapGenerator(sigma=sigma).blur
    maps = torch.rand(3, 1, 70, 90, generator=torch.Generator().manual_seed(0)) * 100
    expected = blur(maps)
    got = SeparableGaussianBlur(blur)(maps)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(got, maps)  # it really blurs


def test_separable_blur_refuses_what_it_cannot_reproduce() -> None:
    with pytest.raises(ValueError, match="single-channel"):
        SeparableGaussianBlur(GaussianBlur2d(sigma=2.0, channels=3))
    with pytest.raises(ValueError, match="single-channel"):
        SeparableGaussianBlur(GaussianBlur2d(sigma=2.0, padding="valid"))


@pytest.mark.parametrize(("features", "blocks"), [(100, 4), (100, 1), (50, 3), (7, 7), (7, 20)])
def test_block_triangular_scoring_equals_the_full_quadratic_form(features: int, blocks: int) -> None:
    inv_covariance = _random_inverse_covariances(16, features, seed=features)
    delta = torch.randn(16, 5, features, generator=torch.Generator().manual_seed(1))
    expected = (torch.matmul(delta.double(), inv_covariance.double()) * delta.double()).sum(2)
    got = BlockTriangularMahalanobis(inv_covariance, blocks)(delta)
    assert got.shape == (16, 5)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4)


def test_block_triangular_storage_keeps_only_the_upper_block_triangle() -> None:
    module = BlockTriangularMahalanobis(_random_inverse_covariances(4, 100, seed=0), blocks=4)
    stored = sum(buffer.numel() for buffer in module.buffers())
    assert stored == 4 * (25 * 100 + 25 * 75 + 25 * 50 + 25 * 25)  # 62.5 % of 4 x 100 x 100
