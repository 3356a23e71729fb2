"""Post-processing: anomalib's normalisation, the verdict and its confidence, heat map, mask and regions."""

from __future__ import annotations

import io
import itertools
import math

import cv2
import numpy as np
import pytest
import torch
from anomalib.post_processing.post_processor import PostProcessor
from PIL import Image

from visinspect_api.detection import Region
from visinspect_api.model_repository import Calibration
from visinspect_server.postprocess import (
    MAX_REGIONS,
    Verdict,
    confidence,
    find_regions,
    heatmap_png,
    mask_png,
    normalize,
    normalized_pixel_map,
    verdict,
)

CALIBRATION = Calibration(
    image_threshold=50.0,
    pixel_threshold=40.0,
    image_min=20.0,
    image_max=120.0,
    pixel_min=0.0,
    pixel_max=80.0,
    source="test",
    overlaps_test=False,
)
JET_LOW_BGR = (128, 0, 0)  # COLORMAP_JET at level 0: dark blue
JET_HIGH_BGR = (0, 0, 128)  # COLORMAP_JET at level 255: dark red


def anomalib_normalize(raw: np.ndarray, threshold: float, minimum: float, maximum: float) -> np.ndarray:
    dtype = torch.float32 if raw.dtype == np.float32 else torch.float64
    as_tensor = lambda v: torch.tensor(v, dtype=dtype)  # noqa: E731
    out = PostProcessor._normalize(torch.from_numpy(raw), as_tensor(minimum), as_tensor(maximum), as_tensor(threshold))
    return out.numpy()


def f32(value: float) -> float:
    """The float32 nearest to ``value``, as a Python float (what a float32 map stores)."""
    return float(np.float32(value))


def decode(png: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(png, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    assert image is not None
    return image


# --- normalize ------------------------------------------------------------------------------------

# (threshold, min, max): ordinary, threshold at an end of the range, tiny and huge ranges, degenerate.
CALIBRATIONS = [
    (50.0, 20.0, 120.0),
    (0.3, 0.1, 0.7),
    (20.0, 20.0, 120.0),
    (3.0, 2.999, 3.001),
    (1e4, -5e4, 5e4),
    (7.5, 7.5, 7.5),
    (7.0, 7.5, 7.5),
    (0.0, 0.0, 0.0),
]


@pytest.mark.parametrize(("threshold", "minimum", "maximum"), CALIBRATIONS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalize_array_matches_anomalib_bit_for_bit(threshold, minimum, maximum, dtype) -> None:
    rng = np.random.default_rng(0)
    span = max(maximum - minimum, 1.0)
    raw = rng.uniform(minimum - 2 * span, maximum + 2 * span, size=(37, 41)).astype(dtype)
    raw[0, :4] = [threshold, minimum, maximum, np.nan]  # exactly at the threshold and the ends; NaN
    original = raw.copy()

    ours = normalize(raw, threshold, minimum, maximum)

    assert isinstance(ours, np.ndarray)
    assert ours.dtype == dtype
    assert ours.shape == raw.shape
    np.testing.assert_array_equal(ours, anomalib_normalize(raw, threshold, minimum, maximum))
    np.testing.assert_array_equal(raw, original)  # input untouched
    finite = ours[~np.isnan(raw)]
    assert finite.min() >= 0.0
    assert finite.max() <= 1.0


@pytest.mark.parametrize(("threshold", "minimum", "maximum"), CALIBRATIONS)
def test_normalize_scalar_matches_anomalib_in_float64(threshold, minimum, maximum) -> None:
    span = max(maximum - minimum, 1.0)
    values = [threshold, minimum, maximum, minimum - 3 * span, maximum + 3 * span]
    values += [threshold + d * span for d in (-0.7, -0.25, -1e-9, 1e-9, 0.25, 0.7)]
    for value in values:
        ours = normalize(value, threshold, minimum, maximum)
        theirs = anomalib_normalize(np.array([value]), threshold, minimum, maximum)[0]
        assert type(ours) is float
        assert ours == theirs, value


def test_normalize_known_values() -> None:
    assert normalize(50.0, 50.0, 20.0, 120.0) == 0.5
    assert normalize(70.0, 50.0, 20.0, 120.0) == pytest.approx(0.7, abs=1e-15)
    assert normalize(30.0, 50.0, 20.0, 120.0) == pytest.approx(0.3, abs=1e-15)
    assert normalize(1000.0, 50.0, 20.0, 120.0) == 1.0  # clamped
    assert normalize(-1000.0, 50.0, 20.0, 120.0) == 0.0
    assert normalize(np.float32(70.0), 50.0, 20.0, 120.0) == pytest.approx(0.7, abs=1e-15)  # numpy scalar


def test_normalize_degenerate_range_is_a_step_at_the_threshold() -> None:
    assert normalize(5.0, 5.0, 5.0, 5.0) == 0.5
    assert normalize(5.000001, 5.0, 5.0, 5.0) == 1.0
    assert normalize(4.999999, 5.0, 5.0, 5.0) == 0.0
    raw = np.array([[4.0, 5.0, 6.0, np.nan]], dtype=np.float32)
    np.testing.assert_array_equal(normalize(raw, 5.0, 5.0, 5.0), [[0.0, 0.5, 1.0, 0.5]])


def test_normalize_integer_arrays_become_float32() -> None:
    out = normalize(np.array([0, 40, 80, 200]), 40.0, 0.0, 80.0)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [0.0, 0.5, 1.0, 1.0])


# --- verdict --------------------------------------------------------------------------------------


def test_verdict_at_the_calibrated_threshold_is_normal_with_confidence_half() -> None:
    assert verdict(50.0, CALIBRATION) == Verdict(
        score=0.5, raw_score=50.0, threshold=0.5, is_anomalous=False, confidence=0.5
    )


def test_verdict_just_above_and_below_the_calibrated_threshold() -> None:
    above = verdict(50.0 + 1e-9, CALIBRATION)
    below = verdict(50.0 - 1e-9, CALIBRATION)
    assert above.is_anomalous
    assert above.score > 0.5
    assert above.confidence > 0.5
    assert not below.is_anomalous
    assert below.score < 0.5
    assert below.confidence > 0.5


def test_verdict_values() -> None:
    v = verdict(70.0, CALIBRATION)  # range 100: score 0.7
    assert v.is_anomalous
    assert v.score == pytest.approx(0.7, abs=1e-15)
    assert v.confidence == pytest.approx(0.7, abs=1e-15)
    v = verdict(np.float32(35.0), CALIBRATION)
    assert not v.is_anomalous
    assert v.raw_score == 35.0
    assert v.score == pytest.approx(0.35, abs=1e-15)
    assert v.confidence == pytest.approx(0.65, abs=1e-15)
    v = verdict(1e6, CALIBRATION)
    assert (v.score, v.is_anomalous, v.confidence) == (1.0, True, 1.0)
    v = verdict(-1e6, CALIBRATION)
    assert (v.score, v.is_anomalous, v.confidence) == (0.0, False, 1.0)


def test_verdict_with_a_custom_threshold() -> None:
    at = verdict(70.0, CALIBRATION, threshold=0.7)  # score 0.7 (not exactly: compare the score itself)
    assert at.is_anomalous == (at.score > 0.7)
    assert at.threshold == 0.7
    just_above = verdict(70.0 + 1e-9, CALIBRATION, threshold=0.7)
    just_below = verdict(70.0 - 1e-9, CALIBRATION, threshold=0.7)
    assert just_above.is_anomalous
    assert not just_below.is_anomalous
    v = verdict(60.0, CALIBRATION, threshold=0.7)  # score 0.6: anomalous at 0.5, not at 0.7
    assert not v.is_anomalous
    assert v.confidence == pytest.approx(0.5 + 0.5 * 0.1 / 0.7)
    v = verdict(85.0, CALIBRATION, threshold=0.7)  # score 0.85
    assert v.is_anomalous
    assert v.confidence == pytest.approx(0.75)


def test_verdict_at_threshold_edges() -> None:
    assert verdict(20.0, CALIBRATION, threshold=1.0).is_anomalous is False
    assert verdict(1e6, CALIBRATION, threshold=1.0).is_anomalous is False  # score 1 is not > 1
    zero = verdict(-1e6, CALIBRATION, threshold=0.0)  # score 0 is not > 0
    assert (zero.is_anomalous, zero.confidence) == (False, 0.5)
    assert verdict(0.1, CALIBRATION, threshold=0.0).is_anomalous  # score 0.001


@pytest.mark.parametrize("threshold", [-0.01, 1.01, math.nan])
def test_verdict_refuses_a_threshold_outside_unit_interval(threshold) -> None:
    with pytest.raises(ValueError, match="threshold must be in"):
        verdict(50.0, CALIBRATION, threshold=threshold)


@pytest.mark.parametrize("raw", [math.nan, math.inf, -math.inf])
def test_verdict_refuses_a_non_finite_raw_score(raw) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        verdict(raw, CALIBRATION)


# --- confidence -----------------------------------------------------------------------------------


@pytest.mark.parametrize("h", [0.0, 1e-12, 0.1, 0.25, 0.5, 0.7, 0.99, 1.0])
def test_confidence_is_half_at_the_threshold(h) -> None:
    assert confidence(h, h) == 0.5


def test_confidence_at_default_threshold_is_score_or_its_complement() -> None:
    for s in np.linspace(0.0, 1.0, 1001).tolist():
        expected = s if s > 0.5 else 1.0 - s
        assert confidence(s, 0.5) == pytest.approx(expected, abs=1e-15), s


def test_confidence_known_values() -> None:
    assert confidence(1.0, 0.2) == 1.0
    assert confidence(0.0, 0.2) == 1.0
    assert confidence(0.6, 0.2) == pytest.approx(0.75)
    assert confidence(0.1, 0.2) == pytest.approx(0.75)
    assert confidence(0.3, 0.0) == pytest.approx(0.65)  # h = 0: every s > 0 is anomalous
    assert confidence(0.0, 0.0) == 0.5
    assert confidence(0.2, 1.0) == pytest.approx(0.9)  # h = 1: nothing is anomalous
    assert confidence(1.0, 1.0) == 0.5
    assert confidence(0.0, 1.0) == 1.0


def test_confidence_is_in_range_and_monotonic_away_from_the_threshold() -> None:
    scores = np.linspace(0.0, 1.0, 401).tolist()
    thresholds = [*np.linspace(0.0, 1.0, 41).tolist(), 1e-9, 1 - 1e-9, 0.3333333333]
    for h in thresholds:
        values = [confidence(s, h) for s in scores]
        assert all(0.5 <= c <= 1.0 for c in values), h
        above = [c for s, c in zip(scores, values, strict=True) if s >= h]
        below = [c for s, c in zip(scores, values, strict=True) if s <= h][::-1]  # moving away from h
        for side in (above, below):
            assert all(b > a for a, b in itertools.pairwise(side)), h  # strictly, on this grid
        if h < 1:
            assert values[-1] == 1.0
        if h > 0:
            assert values[0] == 1.0


def test_confidence_is_monotonic_on_random_pairs() -> None:
    rng = np.random.default_rng(1)
    for h, a, b in rng.random((20000, 3)).tolist():
        near, far = sorted((a, b), key=lambda s: abs(s - h))
        if (near > h) == (far > h):  # same side of the threshold
            assert confidence(far, h) >= confidence(near, h)


@pytest.mark.parametrize(("score", "threshold"), [(-0.1, 0.5), (1.1, 0.5), (math.nan, 0.5), (0.5, 1.5)])
def test_confidence_refuses_values_outside_unit_interval(score, threshold) -> None:
    with pytest.raises(ValueError, match="must be in"):
        confidence(score, threshold)


# --- normalised pixel map -------------------------------------------------------------------------


def test_normalized_pixel_map_uses_the_pixel_calibration() -> None:
    raw = np.array([[0.0, 40.0, 60.0], [80.0, 200.0, -5.0]], dtype=np.float32)
    out = normalized_pixel_map(raw, CALIBRATION)  # threshold 40, range 80
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([[0.0, 0.5, 0.75], [1.0, 1.0, 0.0]], dtype=np.float32))
    np.testing.assert_array_equal(out, anomalib_normalize(raw, 40.0, 0.0, 80.0))


def test_normalized_pixel_map_returns_float32_for_float64_input() -> None:
    out = normalized_pixel_map(np.array([[40.0, 60.0]]), CALIBRATION)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0.5, 0.75]])


def test_normalized_pixel_map_refuses_non_2d() -> None:
    with pytest.raises(ValueError, match="2-D"):
        normalized_pixel_map(np.zeros((1, 1, 4, 4), dtype=np.float32), CALIBRATION)


# --- heat map -------------------------------------------------------------------------------------


def blob_map(shape: tuple[int, int] = (256, 256)) -> np.ndarray:
    """Zero map with one block of ones at rows 64:96, columns 128:192."""
    scores = np.zeros(shape, dtype=np.float32)
    scores[64:96, 128:192] = 1.0
    return scores


def test_heatmap_is_red_where_high_and_blue_where_low() -> None:
    image = decode(heatmap_png(blob_map()))
    assert image.shape == (256, 256, 3)
    assert image.dtype == np.uint8
    assert tuple(image[80, 160]) == JET_HIGH_BGR
    assert tuple(image[10, 10]) == JET_LOW_BGR
    assert (image[64:96, 128:192] == JET_HIGH_BGR).all()
    outside = np.ones((256, 256), dtype=bool)
    outside[64:96, 128:192] = False
    assert (image[outside] == JET_LOW_BGR).all()


def test_heatmap_file_is_rgb_for_ordinary_viewers() -> None:
    image = Image.open(io.BytesIO(heatmap_png(blob_map())))
    assert image.mode == "RGB"
    assert image.getpixel((160, 80)) == (128, 0, 0)  # (x, y): red
    assert image.getpixel((10, 10)) == (0, 0, 128)  # blue


def test_heatmap_scales_scores_to_levels_with_rounding() -> None:
    levels = np.arange(256, dtype=np.uint8)
    scores = np.tile(levels.astype(np.float32) / 255, (4, 1))  # one column per level
    scores[1, :3] = [0.5, 0.2 / 255, 0.7 / 255]  # 127.5 → 128 (to even), 0.2 → 0, 0.7 → 1
    expected = np.tile(levels, (4, 1))
    expected[1, :3] = [128, 0, 1]
    image = decode(heatmap_png(scores))
    np.testing.assert_array_equal(image, cv2.applyColorMap(expected, cv2.COLORMAP_JET))
    assert tuple(image[0, 128]) == (126, 255, 130)  # the middle of the scale is green


def test_heatmap_at_original_size_puts_the_blob_at_the_scaled_place() -> None:
    image = decode(heatmap_png(blob_map(), size=(600, 900)))  # (height, width)
    assert image.shape == (600, 900, 3)
    # The block covers rows 64:96 → 150:225 and columns 128:192 → 450:675 of the 600 x 900 image.
    assert (image[155:220, 455:670] == JET_HIGH_BGR).all()
    assert tuple(image[100, 300]) == JET_LOW_BGR
    assert tuple(image[300, 800]) == JET_LOW_BGR
    red = (image[:, :, 2] > image[:, :, 0]).nonzero()
    assert (red[0].min(), red[0].max(), red[1].min(), red[1].max()) == pytest.approx((150, 224, 450, 674), abs=2)


def test_heatmap_size_equal_to_map_size_is_the_same_image() -> None:
    assert heatmap_png(blob_map(), size=(256, 256)) == heatmap_png(blob_map())


# --- mask -----------------------------------------------------------------------------------------


def png_header(png: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from the IHDR chunk."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert png[12:16] == b"IHDR"
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big"), png[24], png[25]


def test_mask_at_model_size() -> None:
    scores = blob_map() * np.float32(0.9)
    scores[0:8, 0:8] = 0.4  # below the threshold
    png = mask_png(scores, 0.5)
    assert png_header(png) == (256, 256, 8, 0)  # 8-bit greyscale
    mask = decode(png)
    assert mask.shape == (256, 256)
    assert mask.dtype == np.uint8
    expected = np.zeros((256, 256), dtype=np.uint8)
    expected[64:96, 128:192] = 255
    np.testing.assert_array_equal(mask, expected)


def test_mask_at_original_size_lines_up_with_the_scaled_blob_and_the_heat_map() -> None:
    png = mask_png(blob_map(), 0.5, size=(600, 900))
    assert png_header(png) == (900, 600, 8, 0)
    mask = decode(png)
    assert mask.shape == (600, 900)
    assert set(np.unique(mask).tolist()) == {0, 255}
    # A 0/1 step resized bilinearly crosses 0.5 exactly at the scaled edge: rows 150:225, cols 450:675.
    # At the four corner pixels both weights are below 1 (0.71 x 0.64 < 0.5): bilinear rounds corners.
    expected = np.zeros((600, 900), dtype=np.uint8)
    expected[150:225, 450:675] = 255
    expected[[150, 150, 224, 224], [450, 674, 450, 674]] = 0
    np.testing.assert_array_equal(mask, expected)
    heat = decode(heatmap_png(blob_map(), size=(600, 900))).astype(int)
    warm = heat[:, :, 2] > heat[:, :, 0]  # more red than blue: level > 127
    np.testing.assert_array_equal(warm, mask == 255)


def test_mask_threshold_is_strict_and_exact() -> None:
    value = np.float32(0.3)  # 0.300000011920929 > 0.3
    scores = np.full((4, 4), value, dtype=np.float32)
    assert (decode(mask_png(scores, 0.3)) == 255).all()
    assert (decode(mask_png(scores, float(value))) == 0).all()  # equal is not above
    assert (decode(mask_png(scores, 0.30000002)) == 0).all()
    assert (decode(mask_png(np.ones((4, 4), dtype=np.float32), 1.0)) == 0).all()
    assert (decode(mask_png(np.zeros((4, 4), dtype=np.float32), 0.0)) == 0).all()
    assert (decode(mask_png(np.full((4, 4), 1e-6, dtype=np.float32), 0.0)) == 255).all()


def test_mask_refuses_bad_threshold_and_size() -> None:
    with pytest.raises(ValueError, match="threshold must be in"):
        mask_png(blob_map(), 1.5)
    with pytest.raises(ValueError, match="size must be"):
        mask_png(blob_map(), 0.5, size=(0, 10))


# --- regions --------------------------------------------------------------------------------------


def two_blob_map() -> np.ndarray:
    scores = np.full((256, 256), 0.1, dtype=np.float32)
    scores[10:42, 20:84] = 0.9  # 32 x 64 = 2048 pixels
    scores[30, 50] = 0.95
    scores[150:166, 200:216] = 0.7  # 16 x 16 = 256 pixels
    return scores


def test_two_blobs_give_two_regions_in_original_pixels() -> None:
    regions = find_regions(two_blob_map(), 0.5, original_size=(600, 900))  # height 600, width 900
    # Scales: x 900/256 = 3.515625, y 600/256 = 2.34375, area 8.23974609375.
    # Big: cols 20:84 → 70.3125:295.3125 → 70:296; rows 10:42 → 23.4375:98.4375 → 23:99; 2048 px → 16875.
    # Small: cols 200:216 → 703.125:759.375 → 703:760; rows 150:166 → 351.5625:389.0625 → 351:390;
    # 256 px → 2109.375 → 2109.
    assert regions == [
        Region(
            x=70,
            y=23,
            width=226,
            height=76,
            area=16875,
            peak_score=f32(0.95),
            mean_score=pytest.approx((2047 * f32(0.9) + f32(0.95)) / 2048, rel=1e-12),
        ),
        Region(x=703, y=351, width=57, height=39, area=2109, peak_score=f32(0.7), mean_score=pytest.approx(f32(0.7))),
    ]
    assert isinstance(regions[0].x, int)
    assert isinstance(regions[0].area, int)
    assert isinstance(regions[0].peak_score, float)


def test_region_scores_are_peak_and_mean_of_the_component() -> None:
    scores = np.zeros((8, 8), dtype=np.float32)
    scores[2, 2:5] = [0.5625, 0.75, 1.0]  # exact in binary: mean 0.770833…
    regions = find_regions(scores, 0.5, original_size=(8, 8))
    assert regions == [Region(x=2, y=2, width=3, height=1, area=3, peak_score=1.0, mean_score=2.3125 / 3)]


def test_no_regions_for_an_empty_mask() -> None:
    assert find_regions(np.full((256, 256), 0.5, dtype=np.float32), 0.5, (600, 900)) == []
    assert find_regions(np.ones((256, 256), dtype=np.float32), 1.0, (600, 900)) == []


def test_diagonal_neighbours_are_one_region() -> None:
    scores = np.zeros((16, 16), dtype=np.float32)
    scores[2:4, 2:4] = 0.8
    scores[4:6, 4:6] = 0.9  # touches the first block only at a corner
    regions = find_regions(scores, 0.5, (16, 16))
    assert len(regions) == 1
    assert (regions[0].x, regions[0].y, regions[0].width, regions[0].height, regions[0].area) == (2, 2, 4, 4, 8)
    assert regions[0].peak_score == pytest.approx(0.9)


def test_regions_are_ordered_by_area_then_peak_then_position() -> None:
    scores = np.zeros((64, 64), dtype=np.float32)
    scores[40:44, 40:44] = 0.6  # 16 px, peak 0.6, lower right
    scores[2:6, 50:54] = 0.6  # 16 px, peak 0.6, upper right
    scores[50:54, 2:6] = 0.8  # 16 px, peak 0.8, lowest of all: the peak outranks position
    scores[20:25, 20:25] = 0.55  # 25 px, lowest peak
    regions = find_regions(scores, 0.5, (64, 64))
    assert [(r.area, r.peak_score, r.y, r.x) for r in regions] == [
        (25, pytest.approx(0.55), 20, 20),
        (16, pytest.approx(0.8), 50, 2),
        (16, pytest.approx(0.6), 2, 50),
        (16, pytest.approx(0.6), 40, 40),
    ]


def test_region_boxes_reach_the_image_edge_but_not_past_it() -> None:
    scores = np.zeros((256, 256), dtype=np.float32)
    scores[250:256, 0:3] = 0.9  # bottom-left corner
    [region] = find_regions(scores, 0.5, (600, 900))
    # cols 0:3 → 0:10.546875 → 0:11; rows 250:256 → 585.9375:600 → 585:600
    assert (region.x, region.y, region.width, region.height) == (0, 585, 11, 15)
    assert region.y + region.height == 600


def test_region_area_rounds_half_up_and_is_at_least_one() -> None:
    scores = np.zeros((4, 4), dtype=np.float32)
    scores[0, 0] = 0.9  # 1 px x 2.25 = 2.25 → 2
    scores[2, 2:4] = 0.8  # 2 px x 2.25 = 4.5 → 5
    regions = find_regions(scores, 0.5, (6, 6))
    assert [(r.x, r.y, r.width, r.height, r.area) for r in regions] == [(3, 3, 3, 2, 5), (0, 0, 2, 2, 2)]
    tiny = np.zeros((256, 256), dtype=np.float32)
    tiny[100, 100] = 0.9
    [region] = find_regions(tiny, 0.5, (50, 100))  # downscaled: 1 px x 0.076 → at least 1
    assert region.area == 1
    assert (region.x, region.y, region.width, region.height) == (39, 19, 1, 1)


def test_regions_use_the_normalised_threshold() -> None:
    scores = two_blob_map()
    assert len(find_regions(scores, 0.7, (256, 256))) == 1  # 0.7 is not above 0.7
    assert len(find_regions(scores, 0.95, (256, 256))) == 0
    assert len(find_regions(scores, 0.0, (256, 256))) == 1  # everything, one component


def test_regions_at_the_most_components_a_model_size_map_can_have_are_capped() -> None:
    scores = np.zeros((256, 256), dtype=np.float32)
    scores[::2, ::2] = 0.9  # isolated pixels: 128 x 128 components (16-bit labels)
    scores[100, 100] = 0.95  # the highest peak among equal areas comes first
    regions = find_regions(scores, 0.5, (256, 256))
    assert len(regions) == MAX_REGIONS == 100
    assert regions[0] == Region(x=100, y=100, width=1, height=1, area=1, peak_score=f32(0.95), mean_score=f32(0.95))
    assert regions[1] == Region(x=0, y=0, width=1, height=1, area=1, peak_score=f32(0.9), mean_score=f32(0.9))
    assert regions[-1] == Region(x=196, y=0, width=1, height=1, area=1, peak_score=f32(0.9), mean_score=f32(0.9))
    everything = find_regions(scores, 0.5, (256, 256), max_regions=128 * 128)
    assert len(everything) == 128 * 128
    assert everything[-1] == Region(x=254, y=254, width=1, height=1, area=1, peak_score=f32(0.9), mean_score=f32(0.9))
    assert everything[:MAX_REGIONS] == regions


def test_region_cap_keeps_the_largest_regions() -> None:
    scores = np.zeros((64, 64), dtype=np.float32)
    scores[0:32:4, ::4] = 0.9  # 128 specks of one pixel
    scores[40:44, 40:50] = 0.8  # a 4 x 10 block, the largest region
    scores[50:52, 20:23] = 0.7  # a 2 x 3 block, the second largest
    regions = find_regions(scores, 0.5, (64, 64), max_regions=3)
    assert [(r.x, r.y, r.width, r.height, r.area) for r in regions] == [
        (40, 40, 10, 4, 40),
        (20, 50, 3, 2, 6),
        (0, 0, 1, 1, 1),
    ]


@pytest.mark.parametrize("max_regions", [0, -1])
def test_region_cap_must_be_positive(max_regions: int) -> None:
    with pytest.raises(ValueError, match="max_regions must be at least 1"):
        find_regions(np.zeros((4, 4), np.float32), 0.5, (4, 4), max_regions=max_regions)


def test_regions_on_a_map_too_large_for_16_bit_labels() -> None:
    scores = np.zeros((520, 520), dtype=np.float32)
    scores[500:510, 0:20] = 0.8
    scores[0:5, 510:520] = 0.9
    assert find_regions(scores, 0.5, (520, 520)) == [
        Region(x=0, y=500, width=20, height=10, area=200, peak_score=f32(0.8), mean_score=pytest.approx(f32(0.8))),
        Region(x=510, y=0, width=10, height=5, area=50, peak_score=f32(0.9), mean_score=pytest.approx(f32(0.9))),
    ]
