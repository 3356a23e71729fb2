"""Reading the model server's config.json: which versions OVMS serves under each version policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from visinspect_api.model_repository import MetadataError
from visinspect_api.ovms_config import ModelServingConfig, read_ovms_config


def write(repository: Path, *configs: dict) -> None:
    entries = [{"config": {"name": f"m{i}", "base_path": f"m{i}", **c}} for i, c in enumerate(configs)]
    (repository / "config.json").write_text(json.dumps({"model_config_list": entries}))


def test_policies_pick_the_versions_ovms_loads(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "model_version_policy": {"latest": {"num_versions": 2}},
            "plugin_config": {"INFERENCE_PRECISION_HINT": "bf16"},
        },
        {"model_version_policy": {"specific": {"versions": [1, 3, 9]}}},
        {"model_version_policy": {"all": {}}},
        {},  # no policy: OVMS serves the newest version
    )
    served = read_ovms_config(tmp_path)
    assert served is not None
    on_disk = [4, 1, 3, 2]
    assert served["m0"].served_versions(on_disk) == [3, 4]
    assert served["m1"].served_versions(on_disk) == [1, 3]
    assert served["m2"].served_versions(on_disk) == [1, 2, 3, 4]
    assert served["m3"].served_versions(on_disk) == [4]
    assert served["m0"].inference_precision == "bf16" and served["m3"].inference_precision is None
    assert served["m1"].served_versions([]) == []


def test_round_trip_of_what_training_writes(tmp_path: Path) -> None:
    config = ModelServingConfig("brick", "brick", "latest", 2, (), {"PERFORMANCE_HINT": "LATENCY"})
    (tmp_path / "config.json").write_text(json.dumps({"model_config_list": [config.to_json()]}))
    assert read_ovms_config(tmp_path) == {"brick": config}


def test_absent_and_malformed_files(tmp_path: Path) -> None:
    assert read_ovms_config(tmp_path) is None
    for text in ("{", '{"model_config_list": [{"config": {"name": "x"}}]}', '{"other": []}'):
        (tmp_path / "config.json").write_text(text)
        with pytest.raises(MetadataError, match="config.json"):
            read_ovms_config(tmp_path)
    write(tmp_path, {"model_version_policy": {"newest": {}}})
    with pytest.raises(MetadataError, match="newest"):
        read_ovms_config(tmp_path)
