"""Overlay rendering and result parsing on synthetic arrays (no server)."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_client import DetectionResult, Region, Timing
from visinspect_client._protocol import detection_result
from visinspect_client.overlay import BOX_COLOR, render


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def blend(image: np.ndarray, heat: np.ndarray, alpha: float) -> np.ndarray:
    return np.rint(image.astype(np.float64) * (1 - alpha) + heat.astype(np.float64) * alpha).astype(np.uint8)


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)


def test_blend_without_regions_is_the_weighted_mean(image: np.ndarray) -> None:
    heat = np.zeros_like(image)
    heat[..., 2] = 200  # blue
    out = render(image, heat, (), (40, 60), alpha=0.45)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert np.abs(out.astype(int) - blend(image, heat, 0.45)).max() <= 1
    assert np.array_equal(render(image, heat, (), (40, 60), alpha=0.0), image)
    assert np.array_equal(render(image, heat, (), (40, 60), alpha=1.0), heat)


def test_region_boxes_are_outlined_and_scaled(image: np.ndarray) -> None:
    heat = np.zeros_like(image)
    region = Region(x=10, y=5, width=20, height=10, area=150, peak_score=0.9, mean_score=0.7)
    out = render(image, heat, (region,), (40, 60), alpha=0.5)
    color = np.array(BOX_COLOR, np.uint8)
    assert (out[5, 10:30] == color).all() and (out[14, 10:30] == color).all()  # top and bottom edges
    assert (out[5:15, 10] == color).all() and (out[5:15, 29] == color).all()  # left and right edges
    assert not (out[10, 20] == color).all()  # the inside is not filled
    assert np.array_equal(out[20:, :], blend(image, heat, 0.5)[20:, :])  # nothing drawn elsewhere
    # The same region on an image twice as large (boxes are in the scored image's pixels).
    big = np.zeros((80, 120, 3), np.uint8)
    scaled = render(big, np.zeros((40, 60, 3), np.uint8), (region,), (40, 60), alpha=0.5)
    assert (scaled[10, 20:60] == color).all() and (scaled[29, 20:60] == color).all()


def test_heat_map_is_resized_to_the_image(image: np.ndarray) -> None:
    heat = np.zeros((4, 6, 3), np.uint8)
    heat[..., 0] = 255
    out = render(image, heat, (), (40, 60), alpha=1.0)
    assert out.shape == image.shape and (out[..., 0] == 255).all() and (out[..., 1:] == 0).all()


def test_alpha_must_be_a_fraction(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="alpha"):
        render(image, image, (), (40, 60), alpha=1.5)


def response_with_extras(heat: np.ndarray, mask: np.ndarray) -> pb.DetectResponse:
    return pb.DetectResponse(
        request_id="r",
        is_anomalous=True,
        score=0.75,
        confidence=0.75,
        raw_score=12.5,
        threshold=0.5,
        model="brick",
        model_version=2,
        anomaly_map_png=png(heat),
        mask_png=png(mask),
        regions=[pb.Region(box=pb.BoundingBox(x=1, y=2, width=3, height=4), area=9, peak_score=0.9, mean_score=0.6)],
        timing=pb.Timing(decode_ms=1, preprocess_ms=2, inference_ms=3, postprocess_ms=4, total_ms=10),
        image_width=60,
        image_height=40,
    )


def test_response_parsing_decodes_maps_and_is_immutable(image: np.ndarray, tmp_path: Path) -> None:
    mask = np.zeros((40, 60), np.uint8)
    mask[2:6, 1:4] = 255
    result = detection_result(response_with_extras(image, mask), latency_ms=12.0)
    assert np.array_equal(result.anomaly_map, image)
    assert result.mask is not None and result.mask.dtype == bool and result.mask.sum() == 12
    assert result.regions == (Region(1, 2, 3, 4, 9, pytest.approx(0.9), pytest.approx(0.6)),)
    assert result.timing == Timing(1.0, 2.0, 3.0, 4.0, 10.0)
    assert (result.model, result.version, result.image_width, result.image_height) == ("brick", 2, 60, 40)
    assert result.verdict == "anomalous" and result.latency_ms == 12.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.score = 0.1  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        result.anomaly_map[0, 0, 0] = 1  # type: ignore[index]
    data = result.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["regions"][0]["area"] == 9 and data["timing"]["total_ms"] == 10.0
    assert data["has_anomaly_map"] and data["has_mask"] and "anomaly_map" not in data
    result.save_overlay(image, tmp_path / "sub" / "overlay.png")
    saved = np.asarray(Image.open(tmp_path / "sub" / "overlay.png"))
    assert np.array_equal(saved, result.overlay(image))


def test_overlay_needs_the_anomaly_map(image: np.ndarray) -> None:
    result = DetectionResult(
        request_id="r", is_anomalous=False, score=0.1, confidence=0.9, raw_score=1.0, threshold=0.5, model="m",
        version=1, regions=(), image_width=60, image_height=40, timing=Timing(0, 0, 0, 0, 0),
    )  # fmt: skip
    with pytest.raises(ValueError, match="anomaly_map=True"):
        result.overlay(image)
