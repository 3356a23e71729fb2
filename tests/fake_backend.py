"""The fast tier's backend: deterministic outputs computed from the pixels, no IR and no training.

A version's anomaly map is its input's red channel / 255 and its score the map's maximum; with
:func:`publish_version`'s calibration (thresholds 0.5, min 0, max 1) the normalised score equals the raw
one, so a test knows every answer from the image it sends. Everything else is the real server: registry,
batching, pipeline, post-processing, the gRPC front door on a free port.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np

from tests.sample_metadata import make_metadata
from visinspect_api.model_repository import Calibration, InputContract, ModelMetadata, write_metadata
from visinspect_server.backends.base import RawOutput, Readiness, ServedVersions, all_versions

SIZE = 32  # the fake models' input height and width
CALIBRATION = Calibration(
    image_threshold=0.5,
    pixel_threshold=0.5,
    image_min=0.0,
    image_max=1.0,
    pixel_min=0.0,
    pixel_max=1.0,
    source="tests.fake_backend",
    overlaps_test=False,
)


class RedChannelModel:
    """One version: map = red / 255, score = the map's maximum (float32, like an IR's outputs)."""

    jobs = 2

    def __init__(self, metadata: ModelMetadata) -> None:
        self.metadata = metadata
        self.warmed_up_to = 0
        self.closed = False

    async def infer(self, images: np.ndarray) -> RawOutput:
        maps = images[..., 0].astype(np.float32) / np.float32(255)
        return RawOutput(anomaly_maps=maps, scores=maps.reshape(len(maps), -1).max(axis=1))

    def warm_up(self, max_batch: int = 1) -> None:
        self.warmed_up_to = max_batch

    def close(self) -> None:
        self.closed = True


class FakeBackend:
    """The process-wide part (``--backend`` plug-in shape): always ready, serves every version on disk."""

    location = "the fake backend"
    probes_readiness = False

    def __init__(self) -> None:
        self.loaded: list[RedChannelModel] = []
        self.closed = False

    def load(self, version_dir: Path, metadata: ModelMetadata) -> RedChannelModel:
        model = RedChannelModel(metadata)
        self.loaded.append(model)
        return model

    def served_versions(self, repository: Path, on_disk: Mapping[str, list[int]]) -> dict[str, ServedVersions]:
        return all_versions(repository, on_disk)

    async def readiness(self, loaded: Mapping[str, Collection[int]]) -> Readiness:
        return Readiness()

    async def close(self) -> None:
        self.closed = True


def publish_version(repository: Path, name: str, version: int) -> Path:
    """A version folder the registry accepts (metadata whose weights hash matches ``model.bin``); the folder."""
    folder = repository / name / str(version)
    staging = repository / f".{name}-{version}.partial"
    staging.mkdir(parents=True)
    (staging / "model.xml").write_text("<net/>")
    (staging / "model.bin").write_bytes(b"fake weights of %s version %d" % (name.encode(), version))
    metadata = make_metadata(
        model_name=name,
        input=InputContract(name="image", height=SIZE, width=SIZE),
        calibration=CALIBRATION,
        ir_bin_sha256=hashlib.sha256((staging / "model.bin").read_bytes()).hexdigest(),
    )
    write_metadata(staging, metadata)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(folder)  # appears complete, as an export publishes it
    return folder
