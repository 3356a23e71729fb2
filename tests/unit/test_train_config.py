"""Training settings that only the Python API can get wrong (the CLI's choices refuse them first)."""

from __future__ import annotations

from pathlib import Path

import pytest

from visinspect_training.api import DatasetSpec, TrainConfig, train
from visinspect_training.errors import ConfigError


def test_an_unknown_image_score_is_refused_before_any_work(tmp_path: Path) -> None:
    config = TrainConfig(
        model_name="brick",
        dataset=DatasetSpec(kind="synthetic", root=tmp_path / "never-generated", category="brick"),
        model="patchcore",
        image_score="mean",  # type: ignore[arg-type]
    )
    with pytest.raises(ConfigError, match="image score must be one of map_max, reweighted, got 'mean'"):
        train(config, tmp_path / "runs")
    assert not (tmp_path / "never-generated").exists() and not (tmp_path / "runs").exists()
