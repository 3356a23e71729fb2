"""What every inference backend provides: the Protocols, their data and their errors (no backend imported here)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from visinspect_api.model_repository import ModelMetadata


class ModelLoadError(Exception):
    """A model version cannot be served: bad IR, contract mismatch, compile failure."""


class ModelNotReadyError(ModelLoadError):
    """The model server has not loaded the version yet (or is unreachable): worth trying again later."""


@dataclass(frozen=True)
class RawOutput:
    """Raw model outputs for a batch: anomaly maps [N, H, W] and image scores [N], float32."""

    anomaly_maps: np.ndarray
    scores: np.ndarray


@dataclass(frozen=True)
class ServedVersions:
    """Of a model's versions on disk, those a model server serves, and the configuration it compiles them
    with: when that changes between two scans the model server reloads them, so they are checked again."""

    versions: list[int]
    config: object = None


@dataclass(frozen=True)
class Readiness:
    """Whether the backend can answer now, and (for a model server) whether each model's newest version can."""

    server: bool = True
    models: Mapping[str, bool] = field(default_factory=dict)


class InferenceBackend(Protocol):
    """Runs one model version. ``infer`` takes a uint8 NHWC RGB batch at the model's input size."""

    @property
    def jobs(self) -> int:
        """Batches it runs at once (its capacity: the batcher keeps this many in flight)."""
        ...

    async def infer(self, images: np.ndarray) -> RawOutput:
        """Run the batch and return its raw outputs."""
        ...

    def warm_up(self, max_batch: int = 1) -> None:
        """Prepare every batch size up to ``max_batch`` before the first request (blocking; worker thread)."""
        ...

    def close(self) -> None:
        """Release resources; in-flight calls may still complete."""
        ...


# (version folder, its metadata) -> the loaded version; called in a worker thread, raises ModelLoadError
BackendFactory = Callable[[Path, ModelMetadata], InferenceBackend]
# (repository, versions on disk by model) -> what the backend serves of them, by model
ServedVersionsView = Callable[[Path, Mapping[str, list[int]]], Mapping[str, ServedVersions]]


class Backend(Protocol):
    """One kind of backend for the whole process (``--backend``): loads versions, says what it serves and
    whether it is ready. A module under ``visinspect_server.backends`` plus an entry in its factory table."""

    @property
    def location(self) -> str:
        """Where inference runs, for log lines (e.g. ``inference backend at host:port``)."""
        ...

    @property
    def probes_readiness(self) -> bool:
        """Whether :meth:`readiness` asks a remote server (then the repository is rescanned only while it is ready)."""
        ...

    def load(self, version_dir: Path, metadata: ModelMetadata) -> InferenceBackend:
        """Load one version (in a worker thread); raise :class:`ModelLoadError` or :class:`ModelNotReadyError`."""
        ...

    def served_versions(self, repository: Path, on_disk: Mapping[str, list[int]]) -> Mapping[str, ServedVersions]:
        """Of the versions on disk, those this backend serves, by model."""
        ...

    async def readiness(self, loaded: Mapping[str, Collection[int]]) -> Readiness:
        """Probe whether the backend, and each loaded model's newest version, can answer now."""
        ...

    async def close(self) -> None:
        """Release what the process-wide backend holds (channels); the versions are closed before."""
        ...


def all_versions(_repository: Path, on_disk: Mapping[str, list[int]]) -> dict[str, ServedVersions]:
    """A backend that serves every version on disk (the in-process backends)."""
    return {name: ServedVersions(list(versions)) for name, versions in on_disk.items()}
