"""Tests for the offline synthetic MVTec-AD-layout dataset generator."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest
from anomalib.data import MVTecAD

from visinspect_training import synthetic
from visinspect_training.synthetic import (
    DEFECT_TYPES,
    MIN_VISIBLE_CHANGE,
    TEXTURES,
    SyntheticSpec,
    SyntheticSpecError,
    generate_synthetic_dataset,
    make_good_image,
    render_defect,
)

SMALL = SyntheticSpec(texture="gravel", image_size=64, n_train=4, n_test_good=3, n_test_per_defect=2, seed=3)
PNG_GREYSCALE, PNG_RGB = 0, 2


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), SMALL)


def _files(folder: Path) -> dict[str, bytes]:
    files = (path for path in folder.rglob("*") if path.is_file())
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in files}


def _png_depth_and_colour_type(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:26]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return header[24], header[25]


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)


def _read_mask(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _render(texture: str, defect: str, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng([11, index])
    clean = make_good_image(texture, 128, rng)
    defective, mask = render_defect(clean, defect, rng)
    return clean, defective, mask


# --- layout and file formats ---------------------------------------------------------------------


def test_layout_and_counts_match_spec(small_dataset: Path) -> None:
    expected = {"manifest.json"}
    expected |= {f"train/good/{i:03d}.png" for i in range(SMALL.n_train)}
    expected |= {f"test/good/{i:03d}.png" for i in range(SMALL.n_test_good)}
    for defect in DEFECT_TYPES:
        expected |= {f"test/{defect}/{i:03d}.png" for i in range(SMALL.n_test_per_defect)}
        expected |= {f"ground_truth/{defect}/{i:03d}_mask.png" for i in range(SMALL.n_test_per_defect)}

    assert small_dataset == small_dataset.parent / "gravel"
    assert set(_files(small_dataset)) == expected
    assert [p.name for p in small_dataset.parent.iterdir()] == ["gravel"]  # no staging leftovers


def test_manifest_records_spec_and_counts(small_dataset: Path) -> None:
    manifest = json.loads((small_dataset / "manifest.json").read_text())

    assert manifest["spec"] == json.loads(json.dumps(asdict(SMALL)))
    assert manifest["counts"]["train/good"] == 4
    assert manifest["counts"]["test/good"] == 3
    assert all(manifest["counts"][f"test/{d}"] == 2 for d in DEFECT_TYPES)
    assert all(manifest["counts"][f"ground_truth/{d}"] == 2 for d in DEFECT_TYPES)


def test_images_are_8bit_rgb_pngs_of_the_requested_size(small_dataset: Path) -> None:
    images = [*(small_dataset / "train").rglob("*.png"), *(small_dataset / "test").rglob("*.png")]

    assert len(images) == 4 + 3 + 5 * 2
    for path in images:
        assert _png_depth_and_colour_type(path) == (8, PNG_RGB)
        image = _read_rgb(path)
        assert image.shape == (64, 64, 3)
        assert image.dtype == np.uint8


def test_masks_are_binary_single_channel_nonempty_and_within_area_bounds(small_dataset: Path) -> None:
    masks = sorted((small_dataset / "ground_truth").rglob("*_mask.png"))

    assert len(masks) == 5 * 2
    for path in masks:
        assert _png_depth_and_colour_type(path) == (8, PNG_GREYSCALE)
        mask = _read_mask(path)
        assert mask.shape == (64, 64)
        assert set(np.unique(mask)) == {0, 255}
        assert 0.001 <= np.count_nonzero(mask) / mask.size <= 0.15


def test_written_defect_images_differ_from_their_clean_version_only_inside_the_mask(
    small_dataset: Path,
) -> None:
    for defect in DEFECT_TYPES:
        for index in range(SMALL.n_test_per_defect):
            clean, _, _ = synthetic._defect_sample(SMALL, defect, index)
            written = _read_rgb(small_dataset / "test" / defect / f"{index:03d}.png")
            inside = _read_mask(small_dataset / "ground_truth" / defect / f"{index:03d}_mask.png") > 0
            change = np.abs(written.astype(int) - clean.astype(int))

            assert np.array_equal(written[~inside], clean[~inside]), (defect, index)
            assert change[inside].max(axis=1).min() > MIN_VISIBLE_CHANGE, (defect, index)
            assert change[inside].mean() > 10, (defect, index)


@pytest.mark.parametrize("texture", TEXTURES)
def test_good_images_are_coloured_with_channels_in_rgb_order(tmp_path: Path, texture: str) -> None:
    spec = SyntheticSpec(texture=texture, image_size=64, n_train=1, n_test_good=1, n_test_per_defect=1)
    image = _read_rgb(generate_synthetic_dataset(tmp_path, spec) / "train" / "good" / "000.png").astype(float)
    red, green, blue = (image[..., c].mean() for c in range(3))

    assert np.abs(image[..., 0] - image[..., 2]).mean() > 5  # tinted, not grey
    if texture == "brick":
        assert red > green > blue
    elif texture == "grass":
        assert green > red > blue
    else:
        assert red > blue


def test_good_images_vary_mildly_like_one_product(tmp_path: Path) -> None:
    spec = SyntheticSpec(texture="brick", image_size=64, n_train=12, n_test_good=1, n_test_per_defect=1)
    folder = generate_synthetic_dataset(tmp_path, spec)
    images = [_read_rgb(p).astype(float) for p in sorted((folder / "train" / "good").glob("*.png"))]
    channel_means = np.array([image.mean(axis=(0, 1)) for image in images])

    assert len({image.tobytes() for image in images}) == 12
    assert np.all(np.abs(channel_means / channel_means.mean(axis=0) - 1) < 0.15)


# --- render_defect -------------------------------------------------------------------------------


@pytest.mark.parametrize("texture", TEXTURES)
@pytest.mark.parametrize("defect", DEFECT_TYPES)
def test_render_defect_changes_exactly_the_masked_pixels(texture: str, defect: str) -> None:
    for index in range(8):
        clean, defective, mask = _render(texture, defect, index)
        inside = mask > 0
        change = np.abs(defective.astype(int) - clean.astype(int))

        assert defective.shape == clean.shape and defective.dtype == np.uint8
        assert mask.shape == clean.shape[:2] and mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 255}
        assert 0.001 <= inside.mean() <= 0.15
        assert np.array_equal(defective[~inside], clean[~inside])
        assert change[inside].max(axis=1).min() > MIN_VISIBLE_CHANGE
        assert change[inside].mean() > 10


def test_render_defect_leaves_its_input_untouched() -> None:
    clean = make_good_image("brick", 96, np.random.default_rng(1))
    before = clean.copy()

    render_defect(clean, "missing", np.random.default_rng(2))

    assert np.array_equal(clean, before)


def test_render_defect_is_deterministic_for_a_given_rng() -> None:
    first = _render("grass", "crack", 4)
    second = _render("grass", "crack", 4)

    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_thin_defects_are_thin_and_blob_defects_are_not() -> None:
    for defect, thin in [
        ("scratch", True),
        ("crack", True),
        ("stain", False),
        ("hole", False),
        ("missing", False),
    ]:
        for index in range(6):
            _, _, mask = _render("gravel", defect, index)
            half_width = cv2.distanceTransform(mask, cv2.DIST_L2, 5).max()
            assert (half_width < 4) == thin, (defect, index, half_width)


def test_defects_have_their_described_appearance() -> None:
    for index in range(6):
        clean, defective, mask = _render("brick", "hole", index)
        assert defective[mask > 0].mean() < 0.6 * clean[mask > 0].mean()

        clean, defective, mask = _render("brick", "crack", index)
        assert defective[mask > 0].mean() < 0.8 * clean[mask > 0].mean()

        clean, defective, mask = _render("gravel", "stain", index)
        shift = defective[mask > 0].astype(float).mean(axis=0) - clean[mask > 0].astype(float).mean(axis=0)
        assert np.all(shift < 0) and shift[2] < shift[0]  # darker, and more so in blue: brownish/yellowish

        clean, defective, mask = _render("grass", "missing", index)
        core = cv2.erode(mask, np.ones((5, 5), np.uint8)) > 0
        assert defective[core].std(axis=0).max() < 4 < clean[core].std(axis=0).max()  # flat background


def test_render_defect_rejects_unknown_defect() -> None:
    clean = make_good_image("brick", 64, np.random.default_rng(0))

    with pytest.raises(SyntheticSpecError, match="valid defects: scratch, crack, stain, hole, missing"):
        render_defect(clean, "dent", np.random.default_rng(0))


# --- determinism, idempotence, atomicity ---------------------------------------------------------


def test_same_spec_gives_byte_identical_files(tmp_path: Path, small_dataset: Path) -> None:
    again = generate_synthetic_dataset(tmp_path, SMALL)

    assert _files(again) == _files(small_dataset)


def test_different_seed_gives_different_images(tmp_path: Path, small_dataset: Path) -> None:
    other = _files(generate_synthetic_dataset(tmp_path, SyntheticSpec(**{**asdict(SMALL), "seed": 4})))
    original = _files(small_dataset)

    pngs = [name for name in original if name.endswith(".png")]
    assert all(other[name] != original[name] for name in pngs)


def test_second_call_with_same_spec_does_not_rewrite(tmp_path: Path) -> None:
    folder = generate_synthetic_dataset(tmp_path, SMALL)
    mtimes = {path: path.stat().st_mtime_ns for path in folder.rglob("*")}

    assert generate_synthetic_dataset(tmp_path, SMALL) == folder
    assert {path: path.stat().st_mtime_ns for path in folder.rglob("*")} == mtimes


def test_changed_spec_regenerates_in_place(tmp_path: Path) -> None:
    generate_synthetic_dataset(tmp_path, SMALL)
    changed = SyntheticSpec(**{**asdict(SMALL), "n_train": 6, "defects": ("hole",)})

    folder = generate_synthetic_dataset(tmp_path, changed)

    assert len(list((folder / "train" / "good").glob("*.png"))) == 6
    assert sorted(p.name for p in (folder / "test").iterdir()) == ["good", "hole"]
    assert json.loads((folder / "manifest.json").read_text())["spec"]["n_train"] == 6
    assert [p.name for p in tmp_path.iterdir()] == ["gravel"]


def test_failed_regeneration_keeps_previous_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = generate_synthetic_dataset(tmp_path, SMALL)
    before = _files(folder)

    def fail_to_write(path: Path, image: np.ndarray) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(synthetic, "_write_png", fail_to_write)
    with pytest.raises(OSError, match="disk full"):
        generate_synthetic_dataset(tmp_path, SyntheticSpec(**{**asdict(SMALL), "seed": 9}))

    assert _files(folder) == before
    assert [p.name for p in tmp_path.iterdir()] == ["gravel"]


def test_refuses_to_replace_a_folder_it_did_not_write(tmp_path: Path) -> None:
    foreign = tmp_path / "brick" / "notes.txt"
    foreign.parent.mkdir()
    foreign.write_text("keep me")

    with pytest.raises(FileExistsError):
        generate_synthetic_dataset(tmp_path, SyntheticSpec(image_size=64, n_train=1))

    assert foreign.read_text() == "keep me"


# --- spec validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"texture": "marble"}, "valid textures: brick, grass, gravel"),
        ({"defects": ("scratch", "dent")}, "valid defects: scratch, crack, stain, hole, missing"),
        ({"defects": ()}, "non-empty"),
        ({"defects": ("hole", "hole")}, "without repeats"),
        ({"defects": "hole"}, "sequence of names"),
        ({"image_size": 63}, "image_size must be an integer >= 64"),
        ({"image_size": 128.0}, "image_size must be an integer >= 64"),
        ({"n_train": 0}, "n_train must be an integer >= 1"),
        ({"n_test_good": 0}, "n_test_good must be an integer >= 1"),
        ({"n_test_per_defect": 0}, "n_test_per_defect must be an integer >= 1"),
        ({"n_train": True}, "n_train must be an integer >= 1"),
        ({"seed": -1}, "seed must be an integer >= 0"),
    ],
)
def test_invalid_spec_is_rejected_with_a_one_line_message(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(SyntheticSpecError, match=message) as error:
        SyntheticSpec(**overrides)  # type: ignore[arg-type]

    assert isinstance(error.value, ValueError)
    assert "\n" not in str(error.value)


def test_defects_given_as_a_list_are_stored_as_a_tuple() -> None:
    assert SyntheticSpec(defects=["hole", "stain"]).defects == ("hole", "stain")  # type: ignore[arg-type]


# --- anomalib compatibility ----------------------------------------------------------------------


def test_anomalib_mvtecad_datamodule_reads_the_dataset(small_dataset: Path) -> None:
    datamodule = MVTecAD(root=small_dataset.parent, category=SMALL.texture, num_workers=0)
    datamodule.setup()

    assert len(datamodule.train_data) == SMALL.n_train
    assert len(datamodule.test_data) == SMALL.n_test_good + len(DEFECT_TYPES) * SMALL.n_test_per_defect
    samples = datamodule.test_data.samples
    abnormal = samples[samples.label_index == 1]
    assert len(abnormal) == len(DEFECT_TYPES) * SMALL.n_test_per_defect
    for row in abnormal.itertuples():
        assert Path(row.mask_path).is_file()
        assert Path(row.mask_path).name == f"{Path(row.image_path).stem}_mask.png"
        assert Path(row.mask_path).parent.name == Path(row.image_path).parent.name
    assert not samples[samples.label_index == 0].mask_path.astype(bool).any()

    item = datamodule.test_data[int(abnormal.index[0])]
    assert tuple(item.image.shape) == (3, 64, 64)
    assert tuple(item.gt_mask.shape) == (64, 64)
    assert 0 < int(item.gt_mask.sum()) < 64 * 64
