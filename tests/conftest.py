"""Session fixtures: one tiny synthetic dataset and one PaDiM model trained and exported once."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
MVTEC_ROOT = REPO_ROOT.parent / "shared" / "datasets" / "mvtec_ad"
TINY_IMAGE_SIZE = 128


@pytest.fixture(scope="session", autouse=True)
def _quiet_training_libraries() -> None:
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning_fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory: pytest.TempPathFactory):
    from visinspect_training.api import DatasetSpec, SyntheticSpec, TrainConfig

    synthetic = SyntheticSpec(
        texture="brick", image_size=TINY_IMAGE_SIZE, n_train=24, n_test_good=8, n_test_per_defect=4
    )
    dataset = DatasetSpec(
        kind="synthetic", root=tmp_path_factory.mktemp("synthetic"), category="brick", synthetic=synthetic
    )
    return TrainConfig(model_name="brick", dataset=dataset, image_size=TINY_IMAGE_SIZE, n_features=50)


@pytest.fixture(scope="session")
def trained_run(tiny_config, tmp_path_factory: pytest.TempPathFactory):
    from visinspect_training.api import train

    return train(tiny_config, tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="session")
def exported(trained_run, tmp_path_factory: pytest.TempPathFactory):
    from visinspect_training.api import export_run

    return export_run(trained_run, tmp_path_factory.mktemp("repository"))


@pytest.fixture(scope="session")
def mvtec_bottle() -> Path:
    if not (MVTEC_ROOT / "bottle" / "train" / "good").is_dir():
        pytest.skip(f"MVTec AD bottle is not at {MVTEC_ROOT / 'bottle'} (it ships only in this workplace's ../shared)")
    return MVTEC_ROOT
