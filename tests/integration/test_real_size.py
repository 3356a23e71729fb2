"""Images not at the model size: the facade's raw scores equal training's own evaluation of the same files.

Both sides resize with the input contract (training: ContractResize over Pillow-decoded pixels; the server:
resize_to_model over OpenCV-decoded pixels) before the same exported IR, so the scores must agree.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY_IMAGE_SIZE
from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_training.api import DatasetSpec, predict_test_split

ODD_SIZES = ((757, 1001), (1001, 757))  # (height, width)
BOTTLE_SIZE = (900, 900)
REL = 1e-5


def folder_dataset(root: Path, train_good: Path) -> tuple[Path, Path, Path]:
    """Create root/train/good (copies of a few training images), root/test/good and root/test/defect."""
    normal = root / "train" / "good"
    normal.mkdir(parents=True)
    for source in sorted(train_good.glob("*.png"))[:6]:
        shutil.copy(source, normal / source.name)
    good, defect = root / "test" / "good", root / "test" / "defect"
    good.mkdir(parents=True)
    defect.mkdir(parents=True)
    return normal, good, defect


def write_upscaled(source: Path, target_dir: Path, prefix: str) -> None:
    image = cv2.imread(str(source), cv2.IMREAD_COLOR)
    assert image.shape[:2] == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    for height, width in ODD_SIZES:
        resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)
        assert cv2.imwrite(str(target_dir / f"{prefix}_{source.stem}_{height}x{width}.png"), resized)


def assert_facade_matches_training(
    served, exported, tiny_config, *, normal: Path, good: Path, defect: Path, sizes: set[tuple[int, int]]
) -> None:
    """Score every test file with predict_test_split and with the facade; compare raw scores per path."""
    files = sorted([*good.glob("*.png"), *defect.glob("*.png")])
    for path in files:  # the files really are not the model size, so both sides resize
        with Image.open(path) as image:
            assert (image.height, image.width) in sizes
            assert (image.height, image.width) != (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    spec = DatasetSpec(
        kind="folder",
        normal_dir=normal,
        abnormal_dirs=(defect,),
        normal_test_dir=good,
        name="real-size",
        val_split="same_as_test",
    )
    config = dataclasses.replace(tiny_config, dataset=spec)
    assert config.image_size == TINY_IMAGE_SIZE == exported.metadata.input.height == exported.metadata.input.width
    metadata = exported.metadata
    predictions = predict_test_split(
        exported.version_dir / "model.xml", config, metadata.calibration, metadata.inference_precision
    )
    scored = {Path(path).resolve(): i for i, path in enumerate(predictions.paths)}
    assert sorted(scored) == [path.resolve() for path in files]  # every test file scored, once

    training_raw, facade_raw = [], []
    with served.channel() as channel:
        stub = served.stub(channel)
        for path in files:
            response = stub.Detect(pb.DetectRequest(image=pb.ImageInput(encoded=path.read_bytes())), timeout=60)
            with Image.open(path) as image:
                assert (response.image_height, response.image_width) == (image.height, image.width)
            i = scored[path.resolve()]
            assert bool(predictions.labels[i]) == (path.parent == defect)
            training_raw.append(float(predictions.raw_scores[i]))
            facade_raw.append(response.raw_score)
    training, facade = np.array(training_raw), np.array(facade_raw)
    relative = np.abs(facade - training) / np.abs(training)
    print(
        f"\n{len(files)} files, raw scores {training.min():.4f}..{training.max():.4f}, "
        f"max |facade - training| / |training| = {relative.max():.3e}"
    )
    # The comparison discriminates: the scores differ from each other far more than the tolerance.
    assert len(set(training_raw)) == len(files)
    assert np.ptp(training) > 1000 * REL * np.abs(training).max()
    for path, expected, got in zip(files, training_raw, facade_raw, strict=True):
        assert got == pytest.approx(expected, rel=REL), path.name


def test_odd_size_upscales_score_as_in_training(served, exported, tiny_config, synthetic_category, tmp_path) -> None:
    normal, good, defect = folder_dataset(tmp_path / "data", synthetic_category / "train" / "good")
    test_dir = synthetic_category / "test"
    for source in sorted((test_dir / "good").glob("*.png"))[:3]:
        write_upscaled(source, good, "good")
    defect_types = sorted(d for d in test_dir.iterdir() if d.is_dir() and d.name != "good")
    assert defect_types
    for defect_type in defect_types[:3]:
        write_upscaled(min(defect_type.glob("*.png")), defect, defect_type.name)
    assert_facade_matches_training(
        served, exported, tiny_config, normal=normal, good=good, defect=defect, sizes=set(ODD_SIZES)
    )


def test_bottle_at_900x900_scores_as_in_training(mvtec_bottle: Path, served, exported, tiny_config, tmp_path) -> None:
    bottle = mvtec_bottle / "bottle"
    normal, good, defect = folder_dataset(tmp_path / "data", bottle / "train" / "good")
    bottle_test = bottle / "test"
    for source in sorted((bottle_test / "good").glob("*.png"))[:3]:
        shutil.copy(source, good / f"good_{source.name}")
    for defect_type in ("broken_large", "broken_small", "contamination"):
        source = min((bottle_test / defect_type).glob("*.png"))
        shutil.copy(source, defect / f"{defect_type}_{source.name}")
    assert_facade_matches_training(
        served, exported, tiny_config, normal=normal, good=good, defect=defect, sizes={BOTTLE_SIZE}
    )
