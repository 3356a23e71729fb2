"""Bad datasets fail before training with a message that names the problem and the file."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest

from visinspect_training import data
from visinspect_training.data import DatasetSpec, build_datamodule
from visinspect_training.errors import ConfigError, DatasetError

SIZE = (64, 64)


def write_images(folder: Path, count: int, size: int = 80) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = folder / f"{index:03d}.png"
        cv2.imwrite(str(path), rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        paths.append(path)
    return paths


def folder_spec(root: Path, **changes) -> DatasetSpec:
    values = {
        "kind": "folder",
        "normal_dir": root / "good",
        "abnormal_dirs": (root / "bad",),
        "normal_test_dir": root / "good_test",
        "name": "parts",
    }
    return DatasetSpec(**{**values, **changes})


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    write_images(tmp_path / "good", 6)
    write_images(tmp_path / "good_test", 4)
    write_images(tmp_path / "bad", 4)
    return tmp_path


def test_a_valid_folder_dataset_builds(folders: Path) -> None:
    data = build_datamodule(folder_spec(folders), SIZE)
    datamodule = data.datamodule
    assert len(datamodule.train_data) == 6 and data.calibration is None  # out-of-fold calibration holds none out
    assert len(datamodule.val_data) + len(datamodule.test_data) == 8


def test_missing_folder(folders: Path) -> None:
    with pytest.raises(DatasetError, match=f"dataset folder {folders / 'nope'} does not exist"):
        build_datamodule(folder_spec(folders, normal_dir=folders / "nope"), SIZE)


def test_empty_folder(folders: Path) -> None:
    (folders / "empty").mkdir()
    with pytest.raises(DatasetError, match="has no images"):
        build_datamodule(folder_spec(folders, normal_dir=folders / "empty"), SIZE)


def test_corrupt_training_image_is_named(folders: Path) -> None:
    broken = folders / "good" / "003.png"
    broken.write_bytes(broken.read_bytes()[:60])
    with pytest.raises(DatasetError, match=f"cannot decode image {broken}"):
        build_datamodule(folder_spec(folders), SIZE)


def test_mask_that_does_not_match_its_image(folders: Path) -> None:
    masks = folders / "masks"
    masks.mkdir()
    for index in range(4):
        side = 50 if index == 2 else 80
        cv2.imwrite(str(masks / f"{index:03d}.png"), np.zeros((side, side), np.uint8))
    with pytest.raises(DatasetError, match=r"mask .*masks/002.png is 50x50 but its image .*bad/002.png is 80x80"):
        build_datamodule(folder_spec(folders, mask_dirs=(masks,)), SIZE)


def test_one_mask_folder_per_abnormal_folder(folders: Path) -> None:
    with pytest.raises(ConfigError, match="one --mask-dir per --abnormal-dir"):
        build_datamodule(folder_spec(folders, mask_dirs=(folders / "good", folders / "bad")), SIZE)


def test_folder_dataset_needs_a_normal_folder(folders: Path) -> None:
    with pytest.raises(ConfigError, match="--normal-dir"):
        build_datamodule(folder_spec(folders, normal_dir=None), SIZE)


@pytest.fixture
def mvtec_downloads(monkeypatch) -> list[tuple[Path, str]]:
    """Stands in for anomalib's MVTecAD in data.py: records each ``prepare_data`` (the download) and, instead of
    downloading, writes a small category without masks there (so the Folder datamodule reads it)."""
    downloads: list[tuple[Path, str]] = []

    class RecordingMVTecAD:
        def __init__(self, root: Path, category: str, **_: object) -> None:
            self.root, self.category = Path(root), category

        def prepare_data(self) -> None:
            downloads.append((self.root, self.category))
            write_images(self.root / self.category / "train" / "good", 6)
            write_images(self.root / self.category / "test" / "good", 4)
            write_images(self.root / self.category / "test" / "broken", 4)

    monkeypatch.setattr(data, "MVTecAD", RecordingMVTecAD)
    return downloads


def probe_download_server_at(monkeypatch, port: int) -> None:
    """Point the reachability probe at a local port instead of MVTec's download host."""
    local = dataclasses.replace(data.DOWNLOAD_INFO, url=f"http://127.0.0.1:{port}/mvtec_anomaly_detection.tar.xz")
    monkeypatch.setattr(data, "DOWNLOAD_INFO", local)


def test_absent_mvtec_category_fails_fast_offline(tmp_path: Path, monkeypatch, mvtec_downloads) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connecting is refused, and the port stays ours
        probe_download_server_at(monkeypatch, closed.getsockname()[1])
        spec = DatasetSpec(kind="mvtec", root=tmp_path, category="bottle")
        with pytest.raises(
            DatasetError, match=r"MVTec AD category 'bottle' is not under .* 127\.0\.0\.1 is unreachable"
        ):
            build_datamodule(spec, SIZE)
    assert mvtec_downloads == []


def test_absent_mvtec_category_is_downloaded_when_reachable(tmp_path: Path, monkeypatch, mvtec_downloads) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        probe_download_server_at(monkeypatch, server.getsockname()[1])
        data = build_datamodule(DatasetSpec(kind="mvtec", root=tmp_path, category="bottle"), SIZE)
    assert mvtec_downloads == [(tmp_path, "bottle")]
    assert len(data.datamodule.train_data) == 6  # the "downloaded" category is the one read


def test_unknown_synthetic_texture(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="marble"):
        build_datamodule(DatasetSpec(kind="synthetic", root=tmp_path, category="marble"), SIZE)


def test_validation_ratio_must_be_a_fraction(folders: Path) -> None:
    with pytest.raises(ConfigError, match="val ratio"):
        build_datamodule(folder_spec(folders, val_ratio=1.5), SIZE)
