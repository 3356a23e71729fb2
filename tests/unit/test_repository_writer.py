"""Atomic version publishing, abandoned staging clean-up, and the generated OVMS config.json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sample_metadata import make_metadata
from visinspect_api.model_repository import list_versions, write_metadata
from visinspect_api.ovms_config import read_ovms_config
from visinspect_training.errors import RepositoryError
from visinspect_training.repository import check_model_precision, publish, staging_folder, write_ovms_config


def stage_and_publish(repository: Path, name: str = "bottle") -> int:
    with staging_folder(repository, name) as staged:
        (staged / "model.xml").write_text("<net/>")
        return publish(staged, repository / name)


def test_versions_increase_and_staging_is_emptied(tmp_path: Path) -> None:
    assert [stage_and_publish(tmp_path) for _ in range(3)] == [1, 2, 3]
    assert list_versions(tmp_path / "bottle") == [1, 2, 3]
    assert (tmp_path / "bottle" / "3" / "model.xml").read_text() == "<net/>"
    assert list((tmp_path / ".staging").iterdir()) == []


def test_a_failure_while_staging_leaves_no_version(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="conversion failed"), staging_folder(tmp_path, "bottle") as staged:
        (staged / "model.xml").write_text("<half")
        raise RuntimeError("conversion failed")
    assert list_versions(tmp_path / "bottle") == []
    assert list((tmp_path / ".staging").iterdir()) == []


def test_publish_skips_numbers_already_taken(tmp_path: Path) -> None:
    (tmp_path / "bottle" / "1").mkdir(parents=True)
    (tmp_path / "bottle" / "1" / "model.xml").write_text("old")
    assert stage_and_publish(tmp_path) == 2
    assert (tmp_path / "bottle" / "1" / "model.xml").read_text() == "old"


def test_staging_of_a_dead_process_is_removed(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    abandoned = tmp_path / ".staging" / f"bottle.{int(dead.stdout)}.deadbeef"
    abandoned.mkdir(parents=True)
    alive = tmp_path / ".staging" / f"bottle.{os.getpid()}.cafecafe"
    alive.mkdir()
    stage_and_publish(tmp_path)
    assert not abandoned.exists()
    assert alive.exists()


def test_unwritable_repository_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(RepositoryError, match="cannot create model repository"):
        stage_and_publish(blocker / "repository")


def test_ovms_config_lists_models_with_valid_versions(tmp_path: Path) -> None:
    for name, precision in (("bottle", "f32"), ("brick", "bf16")):
        version = tmp_path / name / "1"
        version.mkdir(parents=True)
        write_metadata(version, make_metadata(model_name=name, inference_precision=precision))
    (tmp_path / "broken" / "1").mkdir(parents=True)  # no metadata: left out
    (tmp_path / "empty").mkdir()  # no version: left out
    config = json.loads(write_ovms_config(tmp_path, {"brick": "THROUGHPUT"}).read_text())
    entries = {entry["config"]["name"]: entry["config"] for entry in config["model_config_list"]}
    assert sorted(entries) == ["bottle", "brick"]
    assert entries["brick"] == {
        "name": "brick",
        "base_path": "brick",
        "target_device": "CPU",
        "model_version_policy": {"latest": {"num_versions": 2}},
        "plugin_config": {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "bf16"},
    }
    assert entries["bottle"]["plugin_config"] == {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}


def test_a_models_performance_hint_survives_other_models_exports(tmp_path: Path) -> None:
    """The hint belongs to the model (OVMS applies it to all its versions): exporting bottle leaves brick's."""
    for name in ("bottle", "brick"):
        (tmp_path / name / "1").mkdir(parents=True)
        write_metadata(tmp_path / name / "1", make_metadata(model_name=name))
    write_ovms_config(tmp_path, {"brick": "THROUGHPUT"})
    write_ovms_config(tmp_path, {"bottle": "LATENCY"})
    served = read_ovms_config(tmp_path)
    assert served is not None
    assert served["brick"].plugin_config["PERFORMANCE_HINT"] == "THROUGHPUT"
    assert served["bottle"].plugin_config["PERFORMANCE_HINT"] == "LATENCY"
    write_ovms_config(tmp_path, {"brick": "LATENCY"})  # changed explicitly: every version of brick follows
    assert read_ovms_config(tmp_path)["brick"].plugin_config["PERFORMANCE_HINT"] == "LATENCY"


def test_a_version_at_another_precision_is_refused_with_the_way_out(tmp_path: Path) -> None:
    check_model_precision(tmp_path, "brick", "bf16")  # a new model takes any precision
    (tmp_path / "brick" / "1").mkdir(parents=True)
    write_metadata(tmp_path / "brick" / "1", make_metadata(model_name="brick", inference_precision="f32"))
    check_model_precision(tmp_path, "brick", "f32")
    with pytest.raises(RepositoryError) as refused:
        check_model_precision(tmp_path, "brick", "bf16")
    message = str(refused.value)
    assert "one plugin_config" in message and "--inference-precision f32" in message and "--model-name" in message
    (tmp_path / "brick" / "2").mkdir()  # a newer version without readable metadata does not speak for the model
    with pytest.raises(RepositoryError, match="version 1"):
        check_model_precision(tmp_path, "brick", "bf16")


def test_ovms_config_refuses_unknown_hint(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="performance hint"):
        write_ovms_config(tmp_path, {"bottle": "FASTEST"})
