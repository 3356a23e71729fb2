"""Datasets: MVTec AD categories, the user's own folders, and the built-in synthetic textures.

Every source becomes an anomalib datamodule whose samples pass through :class:`ContractResize`, and
every image and mask is decoded once up front so a bad file is named before training starts.
"""

from __future__ import annotations

import logging
import socket
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import pandas as pd
from anomalib.data import Folder, MVTecAD
from anomalib.data.datamodules.base.image import AnomalibDataModule
from anomalib.data.datamodules.image.mvtecad import DOWNLOAD_INFO
from anomalib.data.datasets.base.image import AnomalibDataset
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader

from visinspect_api.model_repository import DatasetKind
from visinspect_training.defaults import DEFAULT_CALIBRATION_FOLDS, DEFAULT_CALIBRATION_FRACTION
from visinspect_training.errors import ConfigError, DatasetError
from visinspect_training.preprocess import ContractResize
from visinspect_training.synthetic import SyntheticSpec, SyntheticSpecError, generate_synthetic_dataset

log = logging.getLogger(__name__)

ValSplitName = Literal["from_test", "same_as_test"]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# anomalib's Folder annotates ``extensions`` as ``tuple[str]``; its docstring and code take ``tuple[str, ...]``.
_FOLDER_EXTENSIONS: tuple[str] = IMAGE_EXTENSIONS  # type: ignore[assignment]
_DOWNLOAD_PROBE_TIMEOUT_S = 5.0
_DEFAULT_ROOTS = {"synthetic": "data/synthetic", "mvtec": "datasets/MVTecAD"}


@dataclass(frozen=True)
class DatasetSpec:
    """Which images to train, calibrate and evaluate on.

    ``val_split`` decides where the calibration thresholds are fitted: ``from_test`` moves a seeded
    half of the test images into a validation split that evaluation never scores (honest F1);
    ``same_as_test`` fits them on the test images themselves (anomalib's MVTec default; optimistic F1).

    Good calibration scores (for thresholds by false-reject rate) come from images a model did not fit.
    By default every good training image is scored out of fold: ``calibration_folds`` models, each
    fitted on the other folds (``calibrate.py``), while the served model fits every training image.
    Instead, a seeded ``calibration_fraction`` of the good training images can be held out from the
    served model too, or, when ``calibration_dir`` is given, its images are scored by the served model.
    """

    kind: DatasetKind
    root: Path | None = None
    category: str | None = None
    normal_dir: Path | None = None
    abnormal_dirs: tuple[Path, ...] = ()
    normal_test_dir: Path | None = None
    mask_dirs: tuple[Path, ...] = ()
    name: str | None = None
    val_split: ValSplitName = "from_test"
    val_ratio: float = 0.5
    seed: int = 0
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)
    calibration_fraction: float = DEFAULT_CALIBRATION_FRACTION
    calibration_dir: Path | None = None
    calibration_folds: int = DEFAULT_CALIBRATION_FOLDS

    @property
    def display_name(self) -> str:
        """A short name for reports: the category, the folder's name, or the given name."""
        if self.name:
            return self.name
        if self.category:
            return self.category
        return self.normal_dir.name if self.normal_dir else self.kind

    @property
    def location(self) -> str:
        """Where the images are, for the metadata."""
        if self.kind == "folder":
            return str(self.normal_dir)
        return str(self.resolved_root / (self.category or ""))

    @property
    def resolved_root(self) -> Path:
        """The dataset root, with each kind's default."""
        return self.root or Path(_DEFAULT_ROOTS.get(self.kind, "."))

    @property
    def calibration_overlaps_test(self) -> bool:
        """True when the thresholds are fitted on the images evaluation scores."""
        return self.val_split == "same_as_test"

    @property
    def cross_fitted(self) -> bool:
        """True when the good training images are scored out of fold (no hold-out, no calibration folder)."""
        return self.calibration_dir is None and self.calibration_fraction == 0.0 and self.calibration_folds > 0


@dataclass(frozen=True)
class PreparedData:
    """The datamodule (its training split without held-out calibration images) and those images."""

    datamodule: AnomalibDataModule
    calibration: AnomalibDataset | None

    def calibration_loader(self) -> DataLoader | None:
        """Batches of the held-out good calibration images, as the test loader makes them."""
        return None if self.calibration is None else self.loader(self.calibration)

    def loader(self, dataset: AnomalibDataset) -> DataLoader:
        """Batches of ``dataset`` in order, as the test loader makes them."""
        template = self.datamodule.test_dataloader()
        return DataLoader(
            dataset,
            batch_size=template.batch_size,
            shuffle=False,
            num_workers=template.num_workers,
            collate_fn=dataset.collate_fn,
        )


def build_datamodule(
    spec: DatasetSpec, image_size: tuple[int, int], batch_size: int = 32, num_workers: int = 0
) -> PreparedData:
    """Create, set up and check the datamodule for ``spec``; set the good calibration images apart."""
    if not 0.0 < spec.val_ratio < 1.0:
        raise ConfigError(f"val ratio must be between 0 and 1, got {spec.val_ratio}")
    if not 0.0 <= spec.calibration_fraction < 1.0:
        raise ConfigError(f"calibration fraction must be in [0, 1), got {spec.calibration_fraction}")
    if spec.calibration_folds == 1 or spec.calibration_folds < 0:
        raise ConfigError(f"calibration folds must be 0 (off) or at least 2, got {spec.calibration_folds}")
    if spec.calibration_dir is not None:
        _require_images(spec.calibration_dir)
    common = {
        "train_batch_size": batch_size,
        "eval_batch_size": batch_size,
        "num_workers": num_workers,
        "augmentations": ContractResize(*image_size),
        "val_split_mode": spec.val_split,
        "val_split_ratio": spec.val_ratio,
        "seed": spec.seed,
    }
    if spec.kind == "synthetic":
        datamodule = _mvtec_layout(_synthetic_root(spec), spec.display_name, common)
    elif spec.kind == "mvtec":
        datamodule = _mvtec_layout(_mvtec_root(spec), spec.display_name, common)
    else:
        datamodule = _folder(spec, common)
    datamodule.setup(TrainerFn.FITTING)  # as the trainer does: its own setup call then keeps these splits
    calibration = _hold_out_calibration(datamodule, spec)
    if spec.cross_fitted:
        fold_assignment(datamodule.train_data, spec.calibration_folds, spec.seed)  # refuse too few images now
    check_samples(datamodule, calibration)
    return PreparedData(datamodule, calibration)


def _hold_out_calibration(datamodule: AnomalibDataModule, spec: DatasetSpec) -> AnomalibDataset | None:
    train = datamodule.train_data
    if spec.calibration_dir is not None:
        return _folder_like(train, spec.calibration_dir)
    total = len(train)
    held_out = round(spec.calibration_fraction * total)
    if held_out == 0:
        return None
    if held_out >= total:
        raise ConfigError(
            f"holding out {held_out} of {total} good training images for calibration leaves none to fit: "
            "lower --calibration-fraction or pass --calibration-dir"
        )
    shuffled = seeded_order(train, spec.seed)
    calibration = train.subsample(sorted(shuffled[:held_out].tolist()))
    datamodule.train_data = train.subsample(sorted(shuffled[held_out:].tolist()))
    return calibration


def seeded_order(dataset: AnomalibDataset, seed: int) -> np.ndarray:
    """A seeded permutation of ``dataset``'s indices that does not depend on the order files were listed in."""
    order = np.argsort(dataset.samples["image_path"].to_numpy(dtype=str), kind="stable")
    return order[np.random.default_rng(seed).permutation(len(order))]


def fold_assignment(dataset: AnomalibDataset, folds: int, seed: int) -> np.ndarray:
    """The fold of each image of ``dataset`` (int [N]): seeded, balanced, independent of listing order.

    With fewer images than ``folds`` every image is its own fold (leave one out).
    """
    total = len(dataset)
    if folds < 2:
        raise ConfigError(f"cross-fitting needs at least 2 folds, got {folds}")
    folds = min(folds, total)
    if total - -(-total // folds) < 2:
        raise ConfigError(
            f"{total} good training images are too few for {folds} calibration folds (each fold model must fit "
            "at least 2): add images, raise --calibration-folds, or pass --calibration-dir"
        )
    fold_of = np.empty(total, dtype=np.int64)
    fold_of[seeded_order(dataset, seed)] = np.arange(total) % folds
    return fold_of


def _folder_like(template: AnomalibDataset, folder: Path) -> AnomalibDataset:
    """``template`` (a dataset of good training images) with the good images of ``folder`` instead."""
    paths = sorted(str(p) for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    first = template.samples.iloc[0]
    rows = [{**first.to_dict(), "path": str(folder), "image_path": path} for path in paths]
    frame = pd.DataFrame(rows, columns=template.samples.columns)
    frame.attrs = dict(template.samples.attrs)  # anomalib keeps the task type there
    dataset = template.subsample([])
    dataset.samples = frame
    return dataset


def _synthetic_root(spec: DatasetSpec) -> Path:
    root = spec.resolved_root
    texture = spec.category or spec.synthetic.texture
    try:
        generate_synthetic_dataset(root, SyntheticSpec(**{**spec.synthetic.__dict__, "texture": texture}))
    except SyntheticSpecError as exc:
        raise ConfigError(str(exc)) from exc
    except OSError as exc:
        raise DatasetError(f"cannot write the synthetic dataset under {root}: {exc.strerror or exc}") from exc
    return root / texture


def _mvtec_root(spec: DatasetSpec) -> Path:
    if not spec.category:
        raise ConfigError("an MVTec AD dataset needs a category (--category bottle)")
    root = spec.resolved_root
    category_dir = root / spec.category
    if not category_dir.is_dir():
        _ensure_download_reachable(root, spec.category)
        datamodule = MVTecAD(root=root, category=spec.category)
        datamodule.prepare_data()
    return category_dir


def _ensure_download_reachable(root: Path, category: str) -> None:
    url = urllib.parse.urlsplit(DOWNLOAD_INFO.url)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=_DOWNLOAD_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise DatasetError(
            f"MVTec AD category {category!r} is not under {root} and its download server {url.hostname} "
            f"is unreachable ({exc.strerror or exc}): put the extracted dataset there or pass --data-root"
        ) from exc


def _mvtec_layout(category_dir: Path, name: str, common: dict) -> AnomalibDataModule:
    """MVTec's own datamodule when masks exist; anomalib's Folder over the same layout when they don't."""
    train_good = category_dir / "train" / "good"
    _require_images(train_good)
    test_dir = category_dir / "test"
    defects = sorted(d for d in test_dir.iterdir() if d.is_dir() and d.name != "good") if test_dir.is_dir() else []
    if (category_dir / "ground_truth").is_dir():
        return MVTecAD(root=category_dir.parent, category=category_dir.name, **common)
    log.info("%s has no ground_truth folder: image-level metrics only", category_dir)
    normal_test = test_dir / "good"
    return Folder(
        name=name,
        normal_dir=train_good,
        abnormal_dir=defects or None,
        normal_test_dir=normal_test if normal_test.is_dir() else None,
        extensions=_FOLDER_EXTENSIONS,
        **common,
    )


def _folder(spec: DatasetSpec, common: dict) -> AnomalibDataModule:
    if spec.normal_dir is None:
        raise ConfigError("a folder dataset needs --normal-dir (a folder of images of good parts)")
    _require_images(spec.normal_dir)
    for folder in (*spec.abnormal_dirs, *spec.mask_dirs, *([spec.normal_test_dir] if spec.normal_test_dir else [])):
        _require_images(folder)
    if spec.mask_dirs and len(spec.mask_dirs) != len(spec.abnormal_dirs):
        raise ConfigError("give one --mask-dir per --abnormal-dir, in the same order")
    return Folder(
        name=spec.display_name,
        normal_dir=spec.normal_dir,
        abnormal_dir=list(spec.abnormal_dirs) or None,
        normal_test_dir=spec.normal_test_dir,
        mask_dir=list(spec.mask_dirs) or None,
        extensions=_FOLDER_EXTENSIONS,
        **common,
    )


def _require_images(folder: Path) -> None:
    if not folder.is_dir():
        raise DatasetError(f"dataset folder {folder} does not exist")
    if not any(p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir() if p.is_file()):
        raise DatasetError(f"dataset folder {folder} has no images ({', '.join(IMAGE_EXTENSIONS)})")


def check_samples(datamodule: AnomalibDataModule, calibration: AnomalibDataset | None = None) -> None:
    """Decode every image and mask once; raise naming the first file that is unreadable or mismatched."""
    frames = [getattr(datamodule, split).samples for split in ("train_data", "val_data", "test_data")]
    if calibration is not None:
        frames.append(calibration.samples)
    if len(frames[0]) == 0:
        raise DatasetError("the training split is empty: the normal folder needs images of good parts")
    pairs: list[tuple[str, str | None]] = []
    for frame in frames:
        masks = frame["mask_path"] if "mask_path" in frame else [None] * len(frame)
        pairs.extend(
            (str(image), str(mask) if mask else None) for image, mask in zip(frame["image_path"], masks, strict=True)
        )
    with ThreadPoolExecutor(max_workers=2) as pool:
        for problem in pool.map(_sample_problem, pairs):
            if problem:
                raise DatasetError(problem)


def _sample_problem(pair: tuple[str, str | None]) -> str | None:
    image_path, mask_path = pair
    image = _decode(image_path, cv2.IMREAD_UNCHANGED)
    if image is None:
        return f"cannot decode image {image_path}: fix or remove the file"
    if mask_path is None:
        return None
    mask = _decode(mask_path, cv2.IMREAD_GRAYSCALE)
    if mask is None:
        return f"cannot decode mask {mask_path}: fix or remove the file"
    if mask.shape[:2] != image.shape[:2]:
        return (
            f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image {image_path} is "
            f"{image.shape[1]}x{image.shape[0]}: masks must match their images pixel for pixel"
        )
    return None


def _decode(path: str, flags: int) -> np.ndarray | None:
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    return cv2.imdecode(data, flags) if data.size else None


def split_counts(data: PreparedData) -> dict[str, int]:
    """Image counts per split (``calibration``: held-out good images); anomalous counts of val and test."""
    counts: dict[str, int] = {}
    for split in ("train", "val", "test"):
        samples = getattr(data.datamodule, f"{split}_data").samples
        counts[split] = len(samples)
        if split != "train":
            counts[f"{split}_anomalous"] = int((samples["label_index"] == 1).sum())
    counts["calibration"] = 0 if data.calibration is None else len(data.calibration)
    return counts
