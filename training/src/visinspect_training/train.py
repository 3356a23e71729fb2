"""Fit PaDiM with anomalib's Engine and keep the result as a run folder (tensors and JSON, no pickles).

A run folder holds ``padim.pt`` (the PaDiM module's state dict) and ``run.json`` (the configuration,
the F1-adaptive calibration anomalib's post-processor fitted on the labelled validation split, when
there is one, and the split counts). Export sets the served thresholds (``calibrate.py``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from anomalib.models import Padim
from anomalib.models.image.padim.torch_model import PadimModel
from anomalib.pre_processing import PreProcessor
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import Callback
from rich.progress import Progress
from torchvision.transforms.v2 import Normalize

from visinspect_api.model_repository import Calibration, file_sha256, is_valid_model_name
from visinspect_training.data import DatasetSpec, build_datamodule, split_counts
from visinspect_training.defaults import DEFAULT_BACKBONE, DEFAULT_IMAGE_SIZE, DEFAULT_LAYERS, DEFAULT_N_FEATURES
from visinspect_training.errors import ConfigError, TrainingError
from visinspect_training.progress import LightningProgress
from visinspect_training.synthetic import SyntheticSpec
from visinspect_training.weights import (
    WeightsSpec,
    check_backbone,
    fetch_builtin_weights,
    load_into_backbone,
    load_state_dict,
)

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RUN_STATE_FILENAME = "padim.pt"
RUN_INFO_FILENAME = "run.json"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a trained model."""

    model_name: str
    dataset: DatasetSpec
    backbone: str = DEFAULT_BACKBONE
    layers: tuple[str, ...] = DEFAULT_LAYERS
    n_features: int = DEFAULT_N_FEATURES
    image_size: int = DEFAULT_IMAGE_SIZE
    seed: int = 0
    weights: WeightsSpec = field(default_factory=WeightsSpec)
    batch_size: int = 32
    num_workers: int = 0


@dataclass
class TrainedRun:
    """A fitted PaDiM model with anomalib's F1 calibration (None without a labelled validation split)."""

    config: TrainConfig
    padim: PadimModel
    f1_calibration: Calibration | None
    counts: dict[str, int]
    weights_sha256: str | None
    run_dir: Path
    fit_seconds: float


def train(config: TrainConfig, runs_root: Path, progress: Progress | None = None) -> TrainedRun:
    """Fit PaDiM on ``config.dataset`` and save the run under ``runs_root/<model>/<timestamp>``."""
    _check_config(config)
    seed_everything(config.seed, verbose=False)
    image_size = (config.image_size, config.image_size)
    data = build_datamodule(config.dataset, image_size, config.batch_size, config.num_workers)
    model = _build_model(config)
    weights_sha256 = _load_weights(model.model, config)
    run_dir = _new_run_dir(runs_root, config.model_name)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        engine = _engine(run_dir, [LightningProgress(progress)] if progress else [])
        engine.fit(model=model, datamodule=data.datamodule)
    fit_seconds = time.perf_counter() - started
    run = TrainedRun(
        config=config,
        padim=model.model.eval(),
        f1_calibration=_f1_calibration(model, config.dataset),
        counts=split_counts(data),
        weights_sha256=weights_sha256,
        run_dir=run_dir,
        fit_seconds=fit_seconds,
    )
    save_run(run)
    return run


def _check_config(config: TrainConfig) -> None:
    if not is_valid_model_name(config.model_name):
        raise ConfigError(
            f"model name {config.model_name!r} is not valid: use letters, digits, '_', '.', '-' (at most 64)"
        )
    if config.image_size < 32 or config.image_size % 32:
        raise ConfigError(f"image size must be a positive multiple of 32, got {config.image_size}")
    check_backbone(config.backbone, config.weights.source)


def _build_model(config: TrainConfig, pre_trained: bool | None = None) -> Padim:
    hub = config.weights.source == "hub" if pre_trained is None else pre_trained
    try:
        return Padim(
            backbone=config.backbone,
            layers=list(config.layers),
            pre_trained=hub,
            n_features=config.n_features,
            pre_processor=PreProcessor(transform=Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)),
            evaluator=False,
            visualizer=False,
        )
    except ValueError as exc:
        raise ConfigError(f"invalid PaDiM settings for {config.backbone}: {exc}") from exc
    except (OSError, RuntimeError) as exc:
        if hub:
            raise TrainingError(
                f"could not fetch ImageNet weights for {config.backbone} from the model hub ({exc}); "
                "offline, use --weights builtin or --weights-file PATH"
            ) from exc
        raise


def _load_weights(padim: PadimModel, config: TrainConfig) -> str | None:
    """Load non-hub weights into the backbone; return the weights file's sha256 (None for hub/random)."""
    spec = config.weights
    if spec.source in ("hub", "random"):
        return None
    path = fetch_builtin_weights(config.backbone) if spec.source == "builtin" else spec.file
    assert path is not None  # WeightsSpec guarantees a file for source 'file'
    state = load_state_dict(path, spec.file_sha256)
    used = load_into_backbone(padim.feature_extractor.feature_extractor, config.backbone, state)
    log.info("loaded %d backbone tensors from %s", used, path)
    return file_sha256(path)


def _engine(run_dir: Path, callbacks: list[Callback]) -> Any:
    from anomalib.engine import Engine  # noqa: PLC0415 - heavy import, only when fitting

    return Engine(
        default_root_dir=run_dir / "lightning",
        accelerator="cpu",
        devices=1,
        logger=False,
        barebones=True,  # no checkpoint files: the run keeps its tensors in padim.pt
        callbacks=callbacks,
    )


def _f1_calibration(model: Padim, dataset: DatasetSpec) -> Calibration | None:
    post = model.post_processor
    values = {
        "image_threshold": float(post.image_threshold),
        "pixel_threshold": float(post.pixel_threshold),
        "image_min": float(post.image_min),
        "image_max": float(post.image_max),
        "pixel_min": float(post.pixel_min),
        "pixel_max": float(post.pixel_max),
    }
    missing = [name for name, value in values.items() if math.isnan(value)]  # never fitted
    if missing:
        log.info("no F1 calibration (%s not computed): no labelled validation split", ", ".join(missing))
        return None
    source = (
        f"{dataset.val_split} validation split (ratio {dataset.val_ratio}, seed {dataset.seed})"
        if dataset.val_split == "from_test"
        else "the test split itself (same_as_test)"
    )
    return Calibration(**values, source=source, overlaps_test=dataset.calibration_overlaps_test)


def _new_run_dir(runs_root: Path, model_name: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    run_dir = runs_root / model_name / stamp
    run_dir.mkdir(parents=True)
    return run_dir


def save_run(run: TrainedRun) -> None:
    """Write ``padim.pt`` and ``run.json`` into the run folder."""
    torch.save(run.padim.state_dict(), run.run_dir / RUN_STATE_FILENAME)
    info = {
        "config": _to_jsonable(dataclasses.asdict(run.config)),
        "calibration": None if run.f1_calibration is None else dataclasses.asdict(run.f1_calibration),
        "counts": run.counts,
        "weights_sha256": run.weights_sha256,
        "fit_seconds": run.fit_seconds,
    }
    (run.run_dir / RUN_INFO_FILENAME).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def load_run(run_dir: Path) -> TrainedRun:
    """Rebuild a run saved by :func:`train` (tensors only: nothing is unpickled)."""
    try:
        info = json.loads((run_dir / RUN_INFO_FILENAME).read_text(encoding="utf-8"))
        config = _config_from_dict(info["config"])
        padim = _build_model(config, pre_trained=False).model
        state = torch.load(run_dir / RUN_STATE_FILENAME, map_location="cpu", weights_only=True)
        padim.load_state_dict(state)
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise TrainingError(f"{run_dir} is not a complete training run ({exc}): train again") from exc
    return TrainedRun(
        config=config,
        padim=padim.eval(),
        f1_calibration=_f1_from_dict(info["calibration"]),
        counts=info["counts"],
        weights_sha256=info["weights_sha256"],
        run_dir=run_dir,
        fit_seconds=info["fit_seconds"],
    )


def _f1_from_dict(data: dict[str, Any] | None) -> Calibration | None:
    """The run's F1 calibration: its six numbers and where they came from (no score distributions)."""
    if data is None:
        return None
    names = ("image_threshold", "pixel_threshold", "image_min", "image_max", "pixel_min", "pixel_max")
    return Calibration(
        **{name: float(data[name]) for name in names}, source=data["source"], overlaps_test=data["overlaps_test"]
    )


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _to_jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_to_jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _config_from_dict(data: dict[str, Any]) -> TrainConfig:
    dataset = dict(data["dataset"])
    for key in ("root", "normal_dir", "normal_test_dir"):
        dataset[key] = Path(dataset[key]) if dataset[key] else None
    for key in ("abnormal_dirs", "mask_dirs"):
        dataset[key] = tuple(Path(p) for p in dataset[key])
    synthetic = dict(dataset["synthetic"])
    synthetic["defects"] = tuple(synthetic["defects"])
    dataset["synthetic"] = SyntheticSpec(**synthetic)
    weights = dict(data["weights"])
    weights["file"] = Path(weights["file"]) if weights["file"] else None
    return TrainConfig(
        **{
            **data,
            "dataset": DatasetSpec(**dataset),
            "layers": tuple(data["layers"]),
            "weights": WeightsSpec(**weights),
        }
    )
