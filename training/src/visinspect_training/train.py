"""Fit a model family with anomalib's Engine and keep the result as a run folder (tensors and JSON, no pickles).

A run folder holds ``<family>.pt`` (the torch model's state dict, e.g. ``padim.pt``, ``patchcore.pt``)
and ``run.json`` (the configuration,
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
from typing import Any, Protocol, runtime_checkable

import torch
from anomalib.data.utils.tiler import Tiler
from anomalib.models.components import AnomalibModule
from anomalib.models.components.feature_extractors import TimmFeatureExtractor
from anomalib.post_processing import PostProcessor
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import Callback
from rich.progress import Progress
from torch import nn

from visinspect_api.model_repository import ArchitectureName, Calibration, file_sha256, is_valid_model_name
from visinspect_training.data import DatasetSpec, build_datamodule, split_counts
from visinspect_training.defaults import (
    DEFAULT_BACKBONE,
    DEFAULT_CORESET_RATIO,
    DEFAULT_IMAGE_SCORE,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_LAYERS_BY_MODEL,
    DEFAULT_MODEL,
    DEFAULT_N_FEATURES,
    DEFAULT_NUM_NEIGHBORS,
    DEFAULT_TILES,
    IMAGE_SCORES,
    MODEL_FAMILIES,
    ImageScoreName,
)
from visinspect_training.errors import ConfigError, TrainingError
from visinspect_training.families import ModelFamily, family
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

RUN_INFO_FILENAME = "run.json"
# anomalib's calibration: the F1-adaptive thresholds and the normalisation range of the post-processor.
_F1_NUMBERS = ("image_threshold", "pixel_threshold", "image_min", "image_max", "pixel_min", "pixel_max")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a trained model."""

    model_name: str
    dataset: DatasetSpec
    model: ArchitectureName = DEFAULT_MODEL  # the family
    backbone: str = DEFAULT_BACKBONE
    layers: tuple[str, ...] = ()  # empty: the family's default layers
    n_features: int = DEFAULT_N_FEATURES  # PaDiM
    coreset_ratio: float = DEFAULT_CORESET_RATIO  # PatchCore
    num_neighbors: int = DEFAULT_NUM_NEIGHBORS  # PatchCore
    image_score: ImageScoreName = DEFAULT_IMAGE_SCORE  # PatchCore; PaDiM's is always the map's maximum
    image_size: int = DEFAULT_IMAGE_SIZE
    tiles: int = DEFAULT_TILES  # per side: the backbone embeds tiles x tiles tiles of the input, stitched back
    seed: int = 0
    weights: WeightsSpec = field(default_factory=WeightsSpec)
    batch_size: int = 32
    num_workers: int = 0

    def __post_init__(self) -> None:
        if not self.layers and self.model in DEFAULT_LAYERS_BY_MODEL:
            object.__setattr__(self, "layers", DEFAULT_LAYERS_BY_MODEL[self.model])

    @property
    def family(self) -> ModelFamily:
        """The model family's implementation."""
        return family(self.model)

    @property
    def tile_size(self) -> int:
        """The side of one tile (the whole input when untiled)."""
        return self.image_size // self.tiles

    @property
    def state_filename(self) -> str:
        """The run folder's tensor file: ``<family>.pt``."""
        return f"{self.model}.pt"


@dataclass
class TrainedRun:
    """A fitted model (anomalib's torch model of the family) with anomalib's F1 calibration (None without a
    labelled validation split)."""

    config: TrainConfig
    model: nn.Module
    f1_calibration: Calibration | None
    counts: dict[str, int]
    weights_sha256: str | None
    run_dir: Path
    fit_seconds: float


def train(config: TrainConfig, runs_root: Path, progress: Progress | None = None) -> TrainedRun:
    """Fit the model family on ``config.dataset`` and save the run under ``runs_root/<model>/<timestamp>``."""
    _check_config(config)
    seed_everything(config.seed, verbose=False)
    image_size = (config.image_size, config.image_size)
    data = build_datamodule(config.dataset, image_size, config.batch_size, config.num_workers)
    model = build_module(config)
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
        model=model.model.eval(),
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
    if config.model not in MODEL_FAMILIES:
        raise ConfigError(f"model family must be one of {', '.join(MODEL_FAMILIES)}, got {config.model!r}")
    if not 0.0 < config.coreset_ratio <= 1.0:
        raise ConfigError(f"coreset ratio must be in (0, 1], got {config.coreset_ratio}")
    if config.num_neighbors < 1:
        raise ConfigError(f"the number of neighbours must be at least 1, got {config.num_neighbors}")
    if config.image_score not in IMAGE_SCORES:
        raise ConfigError(f"image score must be one of {', '.join(IMAGE_SCORES)}, got {config.image_score!r}")
    if config.model == "padim" and config.image_score != "map_max":
        raise ConfigError("PaDiM's image score is the anomaly map's maximum: --image-score reweighted is PatchCore's")
    if config.image_size < 32 or config.image_size % 32:
        raise ConfigError(f"image size must be a positive multiple of 32, got {config.image_size}")
    if config.tiles < 1 or config.image_size % config.tiles or config.tile_size % 32:
        raise ConfigError(
            f"{config.tiles} tiles per side must split the image size {config.image_size} into tiles whose side "
            "is a multiple of 32 (e.g. --image-size 512 --tiles 2: four 256x256 tiles)"
        )
    check_backbone(config.backbone, config.weights.source)


@runtime_checkable
class _Tileable(Protocol):
    """anomalib's torch models that tile their input when given a ``tiler`` (PaDiM's and PatchCore's)."""

    tiler: Tiler | None


def build_module(config: TrainConfig, pre_trained: bool | None = None) -> AnomalibModule:
    """anomalib's Lightning module of the run's family (hub weights only when the run asks for them)."""
    hub = config.weights.source == "hub" if pre_trained is None else pre_trained
    try:
        module = config.family.build(config, pre_trained=hub)
    except (OSError, RuntimeError) as exc:
        if hub:
            raise TrainingError(
                f"could not fetch ImageNet weights for {config.backbone} from the model hub ({exc}); "
                "offline, use --weights builtin or --weights-file PATH"
            ) from exc
        raise
    if config.tiles > 1:  # anomalib's models tile their input, embed every tile and stitch the embeddings
        model = module.model
        if not isinstance(model, _Tileable):
            raise ConfigError(f"{config.model} models cannot be tiled")
        model.tiler = Tiler(tile_size=config.tile_size, stride=config.tile_size)
    return module


def post_processor(module: AnomalibModule) -> PostProcessor:
    """anomalib's post-processor of ``module``: its thresholds and normalisation range are the run's F1 calibration."""
    post = module.post_processor
    if not isinstance(post, PostProcessor):
        raise TrainingError(f"{type(module).__name__} has no anomalib PostProcessor (it has {type(post).__name__})")
    return post


def _load_weights(model: nn.Module, config: TrainConfig) -> str | None:
    """Load non-hub weights into the backbone; return the weights file's sha256 (None for hub/random)."""
    spec = config.weights
    if spec.source in ("hub", "random"):
        return None
    path = fetch_builtin_weights(config.backbone) if spec.source == "builtin" else spec.file
    assert path is not None  # WeightsSpec guarantees a file for source 'file'
    state = load_state_dict(path, spec.file_sha256)
    extractor = model.feature_extractor
    if not isinstance(extractor, TimmFeatureExtractor):
        raise TrainingError(f"the {config.model} model has no timm feature extractor to load weights into")
    used = load_into_backbone(extractor.feature_extractor, config.backbone, state)
    log.info("loaded %d backbone tensors from %s", used, path)
    return file_sha256(path)


def _engine(run_dir: Path, callbacks: list[Callback]) -> Any:
    from anomalib.engine import Engine  # noqa: PLC0415 - heavy import, only when fitting

    return Engine(
        default_root_dir=run_dir / "lightning",
        accelerator="cpu",
        devices=1,
        logger=False,
        barebones=True,  # no checkpoint files: the run keeps its tensors in <family>.pt
        callbacks=callbacks,
    )


def _f1_calibration(model: AnomalibModule, dataset: DatasetSpec) -> Calibration | None:
    post = post_processor(model)
    source = (
        f"{dataset.val_split} validation split (ratio {dataset.val_ratio}, seed {dataset.seed})"
        if dataset.val_split == "from_test"
        else "the test split itself (same_as_test)"
    )
    calibration = Calibration(
        image_threshold=float(post.image_threshold),
        pixel_threshold=float(post.pixel_threshold),
        image_min=float(post.image_min),
        image_max=float(post.image_max),
        pixel_min=float(post.pixel_min),
        pixel_max=float(post.pixel_max),
        source=source,
        overlaps_test=dataset.calibration_overlaps_test,
    )
    missing = [name for name in _F1_NUMBERS if math.isnan(getattr(calibration, name))]  # never fitted
    if missing:
        log.info("no F1 calibration (%s not computed): no labelled validation split", ", ".join(missing))
        return None
    return calibration


def _new_run_dir(runs_root: Path, model_name: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    run_dir = runs_root / model_name / stamp
    run_dir.mkdir(parents=True)
    return run_dir


def save_run(run: TrainedRun) -> None:
    """Write ``<family>.pt`` and ``run.json`` into the run folder."""
    torch.save(run.model.state_dict(), run.run_dir / run.config.state_filename)
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
        model = build_module(config, pre_trained=False).model
        state = torch.load(run_dir / config.state_filename, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise TrainingError(f"{run_dir} is not a complete training run ({exc}): train again") from exc
    return TrainedRun(
        config=config,
        model=model.eval(),
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
    return Calibration(
        image_threshold=float(data["image_threshold"]),
        pixel_threshold=float(data["pixel_threshold"]),
        image_min=float(data["image_min"]),
        image_max=float(data["image_max"]),
        pixel_min=float(data["pixel_min"]),
        pixel_max=float(data["pixel_max"]),
        source=data["source"],
        overlaps_test=data["overlaps_test"],
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
    data = {"model": "padim", **data}  # runs saved before model families have no "model": they are PaDiM
    # PatchCore runs saved before the choice of image score scored with anomalib's re-weighted distance.
    data.setdefault("image_score", "reweighted" if data["model"] == "patchcore" else "map_max")
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
