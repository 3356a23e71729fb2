"""Offline synthetic anomaly dataset in the MVTec AD layout.

Good images are tinted, mildly augmented crops of scikit-image's bundled CC0 textures (no download);
defect images add one drawn defect each, with a ground-truth mask that is exactly the set of pixels
the defect changed.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import skimage.data
from numpy.typing import NDArray

TEXTURES: tuple[str, ...] = ("brick", "grass", "gravel")
DEFECT_TYPES: tuple[str, ...] = ("scratch", "crack", "stain", "hole", "missing")

MIN_IMAGE_SIZE = 64
MIN_DEFECT_AREA_FRACTION = 0.001
MAX_DEFECT_AREA_FRACTION = 0.15
# A pixel belongs to a defect mask only if some channel changed by more than this many grey levels.
MIN_VISIBLE_CHANGE = 4
# Bump when the rendering changes, so cached datasets from an older generator are regenerated.
GENERATOR_VERSION = 1

_MANIFEST_NAME = "manifest.json"
_MAX_RENDER_ATTEMPTS = 25
_SUBPIXEL_SHIFT = 4
_SUBPIXEL_SCALE = 1 << _SUBPIXEL_SHIFT
_SPLIT_TRAIN_GOOD = 0
_SPLIT_TEST_GOOD = 1
_SPLIT_FIRST_DEFECT = 2

# Piecewise-linear grey -> RGB colour maps, as (grey level, (r, g, b)) control points.
_TINTS: dict[str, tuple[tuple[int, tuple[int, int, int]], ...]] = {
    "brick": ((0, (40, 15, 10)), (100, (140, 62, 48)), (150, (172, 112, 92)), (255, (228, 214, 198))),
    "grass": ((0, (8, 20, 5)), (120, (78, 122, 42)), (255, (192, 226, 142))),
    "gravel": ((0, (20, 18, 15)), (130, (138, 127, 112)), (255, (236, 229, 216))),
}
_MISSING_BACKGROUNDS: tuple[tuple[int, int, int], ...] = ((10, 10, 12), (40, 48, 60), (228, 228, 222))
_STAIN_TINTS: tuple[tuple[float, float, float], ...] = (
    (0.72, 0.58, 0.42),
    (0.95, 0.84, 0.45),
    (0.6, 0.55, 0.5),
)

Image = NDArray[np.uint8]
FloatImage = NDArray[np.float32]
Points = NDArray[np.float64]  # (x, y) pairs, or a single (x, y)
Shape = tuple[int, int]  # (height, width)
DefectRenderer = Callable[[FloatImage, np.random.Generator], FloatImage]


class SyntheticSpecError(ValueError):
    """The synthetic dataset spec names an unknown texture/defect or has a size or count out of range."""


def _validate_spec(spec: SyntheticSpec) -> None:
    if spec.texture not in TEXTURES:
        raise SyntheticSpecError(f"unknown texture {spec.texture!r}; valid textures: {', '.join(TEXTURES)}")
    unknown = [name for name in spec.defects if name not in DEFECT_TYPES]
    if unknown:
        raise SyntheticSpecError(f"unknown defects {unknown}; valid defects: {', '.join(DEFECT_TYPES)}")
    if not spec.defects or len(set(spec.defects)) != len(spec.defects):
        raise SyntheticSpecError(
            f"defects must be a non-empty list without repeats, chosen from: {', '.join(DEFECT_TYPES)}"
        )
    size = spec.image_size
    if not _is_int_at_least(size, MIN_IMAGE_SIZE):
        raise SyntheticSpecError(f"image_size must be an integer >= {MIN_IMAGE_SIZE}, got {size!r}")
    for field in ("n_train", "n_test_good", "n_test_per_defect"):
        value = getattr(spec, field)
        if not _is_int_at_least(value, 1):
            raise SyntheticSpecError(f"{field} must be an integer >= 1, got {value!r}")
    if not _is_int_at_least(spec.seed, 0):
        raise SyntheticSpecError(f"seed must be an integer >= 0, got {spec.seed!r}")


def _is_int_at_least(value: object, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate; validated on construction."""

    texture: str = "brick"
    image_size: int = 256
    n_train: int = 60
    n_test_good: int = 12
    n_test_per_defect: int = 6
    defects: tuple[str, ...] = DEFECT_TYPES
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.defects, str):
            raise SyntheticSpecError(f"defects must be a sequence of names from: {', '.join(DEFECT_TYPES)}")
        object.__setattr__(self, "defects", tuple(self.defects))
        _validate_spec(self)


def generate_synthetic_dataset(root: Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write the dataset to root/<texture>/ and return that folder."""
    root = Path(root)
    target = root / spec.texture
    if _manifest_matches(target, spec):
        return target
    if target.exists() and not _is_replaceable(target):
        raise FileExistsError(f"{target} exists but has no {_MANIFEST_NAME}, so it is not replaced")
    root.mkdir(parents=True, exist_ok=True)
    staging = _make_hidden_sibling(target, "tmp")
    try:
        _write_dataset(staging, spec)
        _swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def make_good_image(texture: str, image_size: int, rng: np.random.Generator) -> Image:
    """Return one defect-free RGB image: a tinted texture crop with mild random augmentation."""
    source = _tinted_texture(texture)
    crop = _random_crop(source, rng)
    image = np.asarray(cv2.resize(crop, (image_size, image_size), interpolation=cv2.INTER_AREA), dtype=np.float32)
    if rng.random() < 0.5:
        image = image[:, ::-1]
    if rng.random() < 0.5:
        image = image[::-1, :]
    image = _jitter_brightness_contrast(image, rng)
    image = image + 2.0 * rng.standard_normal(image.shape, dtype=np.float32)
    return _to_uint8(image)


def render_defect(image: Image, defect: str, rng: np.random.Generator) -> tuple[Image, Image]:
    """Draw one defect on a copy of an RGB uint8 image; return (defective image, 0/255 mask).

    The mask is exactly the set of pixels that changed, each by more than MIN_VISIBLE_CHANGE grey levels
    in some channel; every pixel outside it is identical to the input.
    """
    if defect not in _RENDERERS:
        raise SyntheticSpecError(f"unknown defect {defect!r}; valid defects: {', '.join(DEFECT_TYPES)}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image.dtype} {image.shape}")
    pixels = image.shape[0] * image.shape[1]
    min_area = max(1, int(np.ceil(MIN_DEFECT_AREA_FRACTION * pixels)))
    max_area = int(MAX_DEFECT_AREA_FRACTION * pixels)
    original = image.astype(np.float32)
    for _ in range(_MAX_RENDER_ATTEMPTS):
        rendered, mask = _keep_visible_changes(image, _RENDERERS[defect](original, rng))
        if min_area <= np.count_nonzero(mask) <= max_area:
            return rendered, mask
    raise RuntimeError(f"could not render a {defect!r} covering {min_area}..{max_area} pixels")


# --- spec and manifest -----------------------------------------------------------------------------


def _manifest(spec: SyntheticSpec) -> dict[str, Any]:
    counts = {"train/good": spec.n_train, "test/good": spec.n_test_good}
    for defect in spec.defects:
        counts[f"test/{defect}"] = spec.n_test_per_defect
        counts[f"ground_truth/{defect}"] = spec.n_test_per_defect
    return {"generator_version": GENERATOR_VERSION, "spec": asdict(spec), "counts": counts}


def _manifest_json(spec: SyntheticSpec) -> str:
    return json.dumps(_manifest(spec), indent=2, sort_keys=True) + "\n"


def _manifest_matches(folder: Path, spec: SyntheticSpec) -> bool:
    try:
        existing = json.loads((folder / _MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return existing == json.loads(_manifest_json(spec))


def _is_replaceable(folder: Path) -> bool:
    """Only replace folders this generator wrote (they have a manifest) or empty ones."""
    return (folder / _MANIFEST_NAME).is_file() or (folder.is_dir() and not any(folder.iterdir()))


# --- writing ---------------------------------------------------------------------------------------


def _write_dataset(folder: Path, spec: SyntheticSpec) -> None:
    width = max(3, len(str(max(spec.n_train, spec.n_test_good, spec.n_test_per_defect) - 1)))
    for index in range(spec.n_train):
        image = make_good_image(spec.texture, spec.image_size, _rng(spec, _SPLIT_TRAIN_GOOD, index))
        _write_png(folder / "train" / "good" / f"{index:0{width}d}.png", image)
    for index in range(spec.n_test_good):
        image = make_good_image(spec.texture, spec.image_size, _rng(spec, _SPLIT_TEST_GOOD, index))
        _write_png(folder / "test" / "good" / f"{index:0{width}d}.png", image)
    for defect in spec.defects:
        for index in range(spec.n_test_per_defect):
            _, image, mask = _defect_sample(spec, defect, index)
            _write_png(folder / "test" / defect / f"{index:0{width}d}.png", image)
            _write_png(folder / "ground_truth" / defect / f"{index:0{width}d}_mask.png", mask)
    (folder / _MANIFEST_NAME).write_text(_manifest_json(spec), encoding="utf-8")


def _defect_sample(spec: SyntheticSpec, defect: str, index: int) -> tuple[Image, Image, Image]:
    """Return (clean image, defective image, mask) for test/<defect>/<index>."""
    rng = _rng(spec, _SPLIT_FIRST_DEFECT + DEFECT_TYPES.index(defect), index)
    clean = make_good_image(spec.texture, spec.image_size, rng)
    return clean, *render_defect(clean, defect, rng)


def _rng(spec: SyntheticSpec, split_id: int, index: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, TEXTURES.index(spec.texture), split_id, index])


def _write_png(path: Path, image: Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    if not cv2.imwrite(str(path), pixels):
        raise OSError(f"could not write {path}")


def _make_hidden_sibling(target: Path, purpose: str) -> Path:
    """Create a uniquely named hidden folder next to target (same filesystem, so renames are atomic)."""
    folder = target.parent / f".{target.name}.{purpose}-{uuid.uuid4().hex}"
    folder.mkdir()  # unlike tempfile.mkdtemp, honours the umask, so the final dataset is not owner-only
    return folder


def _swap_into_place(staging: Path, target: Path) -> None:
    """Rename the finished staging folder onto target; an existing target is moved aside first."""
    if not target.exists():
        os.replace(staging, target)
        return
    retired = _make_hidden_sibling(target, "old")
    os.replace(target, retired / target.name)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(retired / target.name, target)
        raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)


# --- good images -----------------------------------------------------------------------------------


@cache
def _tinted_texture(texture: str) -> FloatImage:
    grey = getattr(skimage.data, texture)()
    levels = np.arange(256, dtype=np.float32)
    stops = _TINTS[texture]
    grey_stops = [grey_level for grey_level, _ in stops]
    lut = np.stack(
        [np.interp(levels, grey_stops, [rgb[channel] for _, rgb in stops]) for channel in range(3)], axis=1
    ).astype(np.float32)
    tinted = lut[grey]
    tinted.setflags(write=False)
    return tinted


def _random_crop(source: FloatImage, rng: np.random.Generator) -> FloatImage:
    height, width = source.shape[:2]
    side = round(rng.uniform(0.6, 0.8) * min(height, width))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    return source[top : top + side, left : left + side]


def _jitter_brightness_contrast(image: FloatImage, rng: np.random.Generator) -> FloatImage:
    mean = image.mean(axis=(0, 1), dtype=np.float32)
    contrast, brightness = rng.uniform(0.92, 1.08, size=2)
    return (((image - mean) * contrast + mean) * brightness).astype(np.float32)


def _to_uint8(image: FloatImage) -> Image:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# --- defects ---------------------------------------------------------------------------------------


def _keep_visible_changes(original: Image, rendered: FloatImage) -> tuple[Image, Image]:
    """Round the rendering; revert pixels that barely changed; mask the rest."""
    result = _to_uint8(rendered)
    change = np.abs(result.astype(np.int16) - original.astype(np.int16)).max(axis=2)
    visible = change > MIN_VISIBLE_CHANGE
    result[~visible] = original[~visible]
    return result, visible.astype(np.uint8) * 255


def _blend(image: FloatImage, appearance: NDArray[np.float32], alpha: FloatImage) -> FloatImage:
    weight = alpha[..., None]
    return (image * (1.0 - weight) + appearance * weight).astype(np.float32)


def _render_scratch(image: FloatImage, rng: np.random.Generator) -> FloatImage:
    """Thin, slightly bowed bright or dark line whose strength varies along its length."""
    height, width = image.shape[:2]
    size = min(height, width)
    length = rng.uniform(0.25, 0.6) * size
    angle = rng.uniform(0.0, np.pi)
    direction = np.array([np.cos(angle), np.sin(angle)])
    centre = _centre_keeping_inside(rng, width, height, np.abs(direction) * length / 2 + 0.03 * size)
    start, end = centre - direction * length / 2, centre + direction * length / 2
    bow = np.array([-direction[1], direction[0]]) * rng.uniform(-0.15, 0.15) * length
    points = _quadratic_bezier(start, centre + bow, end, samples=48)
    alpha = _draw_polyline(points, (height, width), thickness=int(rng.integers(1, 3)))
    alpha *= rng.uniform(0.65, 0.9) * (0.6 + 0.4 * _smooth_noise(rng, (height, width), cells=6))
    colour = (240.0, 236.0, 228.0) if rng.random() < 0.5 else (30.0, 26.0, 22.0)
    return _blend(image, np.array(colour, dtype=np.float32), alpha)


def _render_crack(image: FloatImage, rng: np.random.Generator) -> FloatImage:
    """Dark jagged random-walk line with one or two shorter branches, thinning towards its tip."""
    height, width = image.shape[:2]
    size = min(height, width)
    step = max(1.5, size / 128)
    start = rng.uniform(0.25, 0.75, size=2) * (width, height)
    length = rng.uniform(0.25, 0.45) * size
    trunk, headings = _random_walk(start, rng.uniform(0, 2 * np.pi), length, step, rng)
    thickness = int(rng.integers(1, 3))
    half = len(trunk) // 2
    alpha = _draw_polyline(trunk[: half + 1], (height, width), thickness)
    alpha = np.maximum(alpha, _draw_polyline(trunk[half:], (height, width), max(1, thickness - 1)))
    for _ in range(int(rng.integers(1, 3))):
        fork = int(rng.integers(len(trunk) // 5, max(len(trunk) // 5 + 1, 4 * len(trunk) // 5)))
        heading = headings[fork] + rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 1.1)
        branch, _ = _random_walk(trunk[fork], heading, rng.uniform(0.15, 0.35) * len(trunk) * step, step, rng)
        alpha = np.maximum(alpha, _draw_polyline(branch, (height, width), max(1, thickness - 1)))
    alpha *= rng.uniform(0.85, 0.95)
    return _blend(image, image * 0.22, alpha)


def _render_stain(image: FloatImage, rng: np.random.Generator) -> FloatImage:
    """Irregular soft-edged blob with a brownish/yellowish darkening and a slightly darker dried rim."""
    height, width = image.shape[:2]
    size = min(height, width)
    radius = rng.uniform(0.07, 0.14) * size
    centre = _centre_keeping_inside(rng, width, height, np.full(2, 1.6 * radius))
    field = _sum_of_gaussians((height, width), centre, radius, rng)
    field *= 0.45 + 1.1 * _smooth_noise(rng, (height, width), cells=max(4, round(size / (0.6 * radius))))
    peak = float(field.max())
    ramp = _smoothstep((field - rng.uniform(0.3, 0.4) * peak) / (0.2 * peak))
    rim = 4.0 * ramp * (1.0 - ramp)
    mottling = 0.75 + 0.25 * _smooth_noise(rng, (height, width), cells=max(4, round(size / (0.3 * radius))))
    alpha = np.clip(rng.uniform(0.6, 0.9) * (ramp * mottling + 0.4 * rim), 0.0, 1.0).astype(np.float32)
    tint = np.array(_STAIN_TINTS[int(rng.integers(len(_STAIN_TINTS)))], dtype=np.float32)
    return _blend(image, image * tint - 8.0, alpha)


def _render_hole(image: FloatImage, rng: np.random.Generator) -> FloatImage:
    """Slightly irregular elliptical hole: near-black core shading up to a lighter (still dark) rim."""
    height, width = image.shape[:2]
    size = min(height, width)
    radius = rng.uniform(0.04, 0.10) * size
    radii = np.array([radius, radius * rng.uniform(0.75, 1.0)])
    centre = _centre_keeping_inside(rng, width, height, np.full(2, radius + 0.02 * size))
    distance = _elliptical_distance((height, width), centre, radii, rng.uniform(0, np.pi))
    distance *= 0.93 + 0.14 * _smooth_noise(rng, (height, width), cells=12)
    # Shading stays below 1 until the outer edge, so there is no unchanged ring inside the hole.
    shading = 0.08 + rng.uniform(0.45, 0.6) * _smoothstep((distance - 0.3) / 0.6)
    darkening = shading + (1.0 - shading) * _smoothstep((distance - 0.94) / 0.06)
    return (image * darkening[..., None]).astype(np.float32)


def _render_missing(image: FloatImage, rng: np.random.Generator) -> FloatImage:
    """Polygonal piece broken off at an edge, or a patch punched out, showing flat background."""
    height, width = image.shape[:2]
    size = min(height, width)
    radius = rng.uniform(0.08, 0.16) * size
    if rng.random() < 0.5:
        centre = _point_near_edge(rng, width, height, radius)
    else:
        centre = _centre_keeping_inside(rng, width, height, np.full(2, radius + 0.03 * size))
    alpha = _draw_filled_polygon(_irregular_polygon(centre, radius, rng), (height, width))
    background = np.array(_MISSING_BACKGROUNDS[rng.integers(len(_MISSING_BACKGROUNDS))], dtype=np.float32)
    appearance = background + 2.0 * rng.standard_normal(image.shape, dtype=np.float32)
    return _blend(image, appearance, alpha)


_RENDERERS: dict[str, DefectRenderer] = {
    "scratch": _render_scratch,
    "crack": _render_crack,
    "stain": _render_stain,
    "hole": _render_hole,
    "missing": _render_missing,
}


# --- geometry helpers ------------------------------------------------------------------------------


def _centre_keeping_inside(rng: np.random.Generator, width: int, height: int, half_extent: Points) -> Points:
    """Random centre such that a shape reaching half_extent (x, y) from it stays inside the image."""
    low = np.minimum(half_extent, np.array([width, height]) / 2)
    high = np.array([width, height]) - low
    return rng.uniform(low, high)


def _point_near_edge(rng: np.random.Generator, width: int, height: int, radius: float) -> Points:
    along = rng.uniform(0.2, 0.8)
    depth = rng.uniform(0.1, 0.5) * radius
    edge = int(rng.integers(4))
    if edge == 0:
        return np.array([along * width, depth])
    if edge == 1:
        return np.array([along * width, height - 1 - depth])
    if edge == 2:
        return np.array([depth, along * height])
    return np.array([width - 1 - depth, along * height])


def _quadratic_bezier(start: Points, control: Points, end: Points, samples: int) -> Points:
    t = np.linspace(0.0, 1.0, samples)[:, None]
    return (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end


def _random_walk(
    start: Points, heading: float, length: float, step: float, rng: np.random.Generator
) -> tuple[Points, NDArray[np.float64]]:
    """Jagged path that keeps a general direction; returns its points and the heading at each point."""
    points, headings = [np.asarray(start, dtype=np.float64)], [heading]
    current = heading
    for _ in range(max(2, int(length / step))):
        current += rng.normal(0.0, 0.3) - 0.25 * (current - heading)
        points.append(points[-1] + step * np.array([np.cos(current), np.sin(current)]))
        headings.append(current)
    return np.array(points), np.array(headings)


def _irregular_polygon(centre: Points, radius: float, rng: np.random.Generator) -> Points:
    count = int(rng.integers(6, 11))
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=count))
    radii = radius * rng.uniform(0.6, 1.0, size=count)
    return centre + np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii[:, None]


def _sum_of_gaussians(shape: Shape, centre: Points, radius: float, rng: np.random.Generator) -> FloatImage:
    """Lumpy positive field: several randomly placed and sized gaussian bumps around centre."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    field = np.zeros(shape, dtype=np.float32)
    for _ in range(int(rng.integers(5, 10))):
        bump_x, bump_y = centre + rng.normal(0.0, 0.6 * radius, size=2)
        sigma = rng.uniform(0.25, 0.55) * radius
        field += rng.uniform(0.5, 1.0) * np.exp(-((xs - bump_x) ** 2 + (ys - bump_y) ** 2) / (2 * sigma**2))
    return field


def _elliptical_distance(shape: Shape, centre: Points, radii: Points, angle: float) -> FloatImage:
    """Distance from centre in units of the rotated ellipse's radii (1.0 on its boundary)."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    dx, dy = xs - centre[0], ys - centre[1]
    along = dx * np.cos(angle) + dy * np.sin(angle)
    across = -dx * np.sin(angle) + dy * np.cos(angle)
    return np.sqrt((along / radii[0]) ** 2 + (across / radii[1]) ** 2).astype(np.float32)


def _subpixel(points: Points) -> NDArray[np.int32]:
    return np.rint(points * _SUBPIXEL_SCALE).astype(np.int32).reshape(-1, 1, 2)


def _draw_polyline(points: Points, shape: Shape, thickness: int) -> FloatImage:
    canvas = np.zeros(shape, dtype=np.uint8)
    cv2.polylines(canvas, [_subpixel(points)], False, 255, thickness, cv2.LINE_AA, _SUBPIXEL_SHIFT)
    return canvas.astype(np.float32) / 255.0


def _draw_filled_polygon(points: Points, shape: Shape) -> FloatImage:
    canvas = np.zeros(shape, dtype=np.uint8)
    cv2.fillPoly(canvas, [_subpixel(points)], 255, cv2.LINE_AA, _SUBPIXEL_SHIFT)
    return canvas.astype(np.float32) / 255.0


def _smooth_noise(rng: np.random.Generator, shape: Shape, cells: int) -> FloatImage:
    """Low-frequency random field in [0, 1] with about `cells` blobs across the image."""
    grid = rng.random((cells, cells), dtype=np.float32)
    return np.clip(cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


def _smoothstep(x: NDArray[np.float32]) -> FloatImage:
    t = np.clip(x, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)
