"""The model registry: which model versions are loaded, and hot swaps when the repository changes.

The registry polls the repository. A new version folder is validated (metadata, weights hash, IR
contract), compiled and warmed up off the event loop, then published by replacing one immutable
mapping, so every request resolves a consistent set of versions. A request keeps the
:class:`LoadedModel` it resolved until it finishes: in-flight requests complete on the version they
started on even after a swap. An invalid version is logged, counted and skipped while the versions
already loaded keep serving; it is retried only if its files change (so a folder still being
written is rejected until it is complete, then loaded). When the repository cannot be read (deleted,
renamed away, replaced by a file, unmounted) the loaded versions keep serving, the state is reported
through ``on_repository`` and scanning resumes by itself once it is readable again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from visinspect_api.model_repository import (
    IR_BIN_FILENAME,
    IR_XML_FILENAME,
    METADATA_FILENAME,
    MetadataError,
    ModelMetadata,
    file_sha256,
    list_models,
    list_versions,
    read_metadata,
)
from visinspect_server.backend import InferenceBackend, ModelLoadError
from visinspect_server.errors import InvalidInputError, NotFoundError, UnavailableError
from visinspect_server.postprocess import Calibration

log = logging.getLogger(__name__)

BackendFactory = Callable[[Path, ModelMetadata], InferenceBackend]
Loaded = Mapping[str, Mapping[int, "LoadedModel"]]


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One servable model version."""

    name: str
    version: int
    metadata: ModelMetadata
    calibration: Calibration
    backend: InferenceBackend


class ModelRegistry:
    """Loads and hot-swaps model versions from an OVMS-layout repository."""

    def __init__(
        self,
        repository: Path,
        backend_factory: BackendFactory,
        *,
        versions_per_model: int = 2,
        only_models: tuple[str, ...] = (),
        on_change: Callable[[Loaded], Awaitable[None]] | None = None,
        on_rejected: Callable[[str], None] | None = None,
        on_repository: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        self._repository = repository
        self._factory = backend_factory
        self._keep = versions_per_model
        self._only = set(only_models)
        self._on_change = on_change
        self._on_rejected = on_rejected
        self._on_repository = on_repository
        self._readable: bool | None = None  # unknown until the first scan
        self._loaded: Loaded = MappingProxyType({})
        self._rejected: dict[tuple[str, int], tuple] = {}
        self._refresh_lock = asyncio.Lock()

    @property
    def loaded(self) -> Loaded:
        """The current mapping name -> version -> model (replaced, never mutated)."""
        return self._loaded

    @property
    def repository_readable(self) -> bool:
        """False while the last scan could not read the repository (True before the first scan)."""
        return self._readable is not False

    def resolve(self, name: str, version: int = 0) -> LoadedModel:
        """The model version a request asks for; version 0 is the newest loaded."""
        loaded = self._loaded  # one read: a concurrent swap cannot mix two states
        if not loaded:
            raise UnavailableError("no model is loaded yet: the server is starting or the repository is empty")
        if not name:
            if len(loaded) != 1:
                raise InvalidInputError(f"several models are served ({', '.join(sorted(loaded))}): name one")
            name = next(iter(loaded))
        versions = loaded.get(name)
        if versions is None:
            raise NotFoundError(f"model {name!r} is not served; served models: {', '.join(sorted(loaded))}")
        if version == 0:
            return versions[max(versions)]
        model = versions.get(version)
        if model is None:
            raise NotFoundError(f"model {name!r} has no loaded version {version}; loaded: {sorted(versions)}")
        return model

    async def refresh(self) -> None:
        """Scan the repository once: load new versions, drop versions that left, publish atomically."""
        async with self._refresh_lock:
            try:
                wanted = self._scan()
            except OSError as exc:
                if self._readable is not False:
                    log.error(
                        "cannot read model repository %s: %s; the loaded versions keep serving", self._repository, exc
                    )
                await self._set_readable(False)
                return
            if self._readable is False:
                log.info("model repository %s is readable again", self._repository)
            await self._set_readable(True)
            current = self._loaded
            updated: dict[str, dict[int, LoadedModel]] = {}
            for name, versions in wanted.items():
                kept = dict(current.get(name, {}))
                for version in versions:
                    if version not in kept:
                        model = await self._load(name, version)
                        if model is not None:
                            kept[version] = model
                newest = sorted((v for v in kept if v in versions), reverse=True)[: self._keep]
                if newest:
                    updated[name] = {v: kept[v] for v in sorted(newest)}
            frozen = MappingProxyType({name: MappingProxyType(v) for name, v in updated.items()})
            if _summary(frozen) != _summary(current):
                self._loaded = frozen
                log.info("serving %s", _summary(frozen) or "no models")
                if self._on_change is not None:
                    await self._on_change(frozen)

    async def run(self, interval_s: float) -> None:
        """Refresh forever, every ``interval_s`` seconds; a failed scan is logged and the next one runs."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh()
            except Exception:
                log.exception("repository scan failed; the loaded versions keep serving")

    async def _set_readable(self, readable: bool) -> None:
        if readable == self._readable:
            return
        self._readable = readable
        if self._on_repository is not None:
            await self._on_repository(readable)

    def _scan(self) -> dict[str, list[int]]:
        """Versions on disk worth serving: the newest few per model, best first."""
        if not self._repository.is_dir():
            raise OSError(f"{self._repository} is not a folder")
        names = [n for n in list_models(self._repository) if not self._only or n in self._only]
        return {name: list_versions(self._repository / name)[::-1] for name in names}

    async def _load(self, name: str, version: int) -> LoadedModel | None:
        folder = self._repository / name / str(version)
        signature = _signature(folder)
        if self._rejected.get((name, version)) == signature:
            return None
        try:
            model = await asyncio.to_thread(self._build, name, version, folder)
        except (MetadataError, ModelLoadError, OSError) as exc:
            self._rejected[(name, version)] = signature
            log.error("rejected %s version %d: %s", name, version, exc)
            if self._on_rejected is not None:
                self._on_rejected(name)
            return None
        self._rejected.pop((name, version), None)
        log.info("loaded %s version %d", name, version)
        return model

    def _build(self, name: str, version: int, folder: Path) -> LoadedModel:
        metadata = read_metadata(folder)
        if metadata.model_name != name:
            raise ModelLoadError(f"metadata names model {metadata.model_name!r} but the folder is {name!r}")
        digest = file_sha256(folder / IR_BIN_FILENAME)
        if digest != metadata.ir_bin_sha256:
            raise ModelLoadError(f"{IR_BIN_FILENAME} does not match the metadata's sha256 (truncated or replaced)")
        backend = self._factory(folder, metadata)
        warm_up = getattr(backend, "warm_up", None)
        if warm_up is not None:
            warm_up()
        c = metadata.calibration
        calibration = Calibration(
            image_threshold=c.image_threshold,
            pixel_threshold=c.pixel_threshold,
            image_min=c.image_min,
            image_max=c.image_max,
            pixel_min=c.pixel_min,
            pixel_max=c.pixel_max,
        )
        return LoadedModel(name=name, version=version, metadata=metadata, calibration=calibration, backend=backend)


def _summary(loaded: Loaded) -> dict[str, list[int]]:
    return {name: sorted(versions) for name, versions in loaded.items()}


def _signature(folder: Path) -> tuple:
    """What identifies a version folder's content cheaply: sizes and mtimes of its files."""
    entries = []
    for filename in (IR_XML_FILENAME, IR_BIN_FILENAME, METADATA_FILENAME):
        try:
            stat = (folder / filename).stat()
            entries.append((filename, stat.st_size, stat.st_mtime_ns))
        except OSError:
            entries.append((filename, None, None))
    return tuple(entries)
