"""The model registry: which model versions are loaded, and hot swaps when the repository changes.

The registry polls the repository. A new version folder is validated (metadata, weights hash, IR
contract), compiled and warmed up off the event loop, then published by replacing one immutable
mapping, so every request resolves a consistent set of versions. A request keeps the
:class:`LoadedModel` it resolved until it finishes: in-flight requests complete on the version they
started on even after a swap. An invalid version is logged, counted and skipped while the versions
already loaded keep serving; it is retried only if its files (or the repository's ``config.json``)
change, so a folder still being written is rejected until it is complete, then loaded. With a model
server, only the versions it serves by its version policy are offered (``served_versions``); one it has
not loaded yet is not rejected but tried again with back-off until it is ready, while the versions
already loaded keep serving; one its policy retires is no longer offered, and calls naming it get
NOT_FOUND saying so. When the repository cannot be read (deleted,
renamed away, replaced by a file, unmounted) the loaded versions keep serving, the state is reported
through ``on_repository`` and scanning resumes by itself once it is readable again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from visinspect_api.model_repository import (
    IR_BIN_FILENAME,
    IR_XML_FILENAME,
    METADATA_FILENAME,
    OVMS_CONFIG_FILENAME,
    Calibration,
    MetadataError,
    ModelMetadata,
    file_sha256,
    list_models,
    list_versions,
    read_metadata,
)
from visinspect_server.backends.base import (
    BackendFactory,
    InferenceBackend,
    ModelLoadError,
    ModelNotReadyError,
    ServedVersionsView,
)
from visinspect_server.errors import InvalidInputError, NotFoundError, UnavailableError

log = logging.getLogger(__name__)

Loaded = Mapping[str, Mapping[int, "LoadedModel"]]
RETRY_FIRST_S = 1.0  # a version the model server has not loaded yet: first retry, doubled up to RETRY_MAX_S
RETRY_MAX_S = 30.0


@dataclass
class _Retry:
    attempts: int
    due: float  # time.monotonic() of the next attempt


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One servable model version."""

    name: str
    version: int
    metadata: ModelMetadata
    backend: InferenceBackend

    @property
    def calibration(self) -> Calibration:
        """How its raw scores become verdicts (the metadata's, checked finite with min <= max when read)."""
        return self.metadata.calibration


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
        served_versions: ServedVersionsView | None = None,
    ) -> None:
        self._repository = repository
        self._factory = backend_factory
        self._keep = versions_per_model
        self._only = set(only_models)
        self._on_change = on_change
        self._on_rejected = on_rejected
        self._on_repository = on_repository
        self._served_versions = served_versions
        self._readable: bool | None = None  # unknown until the first scan
        self._loaded: Loaded = MappingProxyType({})
        self._rejected: dict[tuple[str, int], _Signature] = {}
        self._waiting: dict[tuple[str, int], _Retry] = {}
        self._retired: Mapping[str, frozenset[int]] = {}
        self._configs: dict[str, object] = {}
        self._recheck: set[str] = set()  # the model server's configuration of each model, as last seen
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
            if version in self._retired.get(name, ()):
                raise NotFoundError(
                    f"model {name!r} version {version} was retired by the model server's version policy; "
                    f"loaded: {sorted(versions)}"
                )
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
            wanted = self._served(wanted)
            current = self._loaded
            updated = {
                name: await self._servable(name, versions, current.get(name, {})) for name, versions in wanted.items()
            }
            frozen = MappingProxyType({name: MappingProxyType(v) for name, v in updated.items() if v})
            if _summary(frozen) != _summary(current):
                self._loaded = frozen
                log.info("serving %s", _summary(frozen) or "no models")
                if self._on_change is not None:
                    await self._on_change(frozen)

    def _served(self, on_disk: dict[str, list[int]]) -> dict[str, list[int]]:
        """The versions worth loading, newest first: those the model server serves, when there is one. The
        loaded versions of a model whose configuration changed are checked again (the model server reloads them)."""
        if self._served_versions is None:
            return on_disk
        served = self._served_versions(self._repository, on_disk)
        retired = {
            name: frozenset(v) - frozenset(served[name].versions if name in served else ())
            for name, v in on_disk.items()
        }
        for name, versions in self._loaded.items():
            for version in sorted(set(versions) & retired.get(name, frozenset())):
                log.info("%s version %d retired by the model server's version policy: no longer offered", name, version)
        self._retired = retired
        configs = {name: s.config for name, s in served.items()}
        self._recheck = {
            name for name in self._loaded if name in configs and configs[name] != self._configs.get(name, configs[name])
        }
        for name in sorted(self._recheck):
            log.info("the model server's configuration of %s changed: checking its versions again", name)
        self._configs = configs
        wanted = {name: sorted(s.versions, reverse=True) for name, s in served.items()}
        self._waiting = {key: r for key, r in self._waiting.items() if key[1] in wanted.get(key[0], ())}
        return wanted

    async def _servable(
        self, name: str, versions: list[int], current: Mapping[int, LoadedModel]
    ) -> dict[int, LoadedModel]:
        """The newest ``versions_per_model`` servable versions: loaded ones kept, missing ones loaded, newest first."""
        kept = {} if name in self._recheck else {v: model for v, model in current.items() if v in versions}
        servable = 0
        for version in versions:
            if servable >= self._keep:
                break
            if version not in kept:
                model = await self._load(name, version)
                if model is None:
                    continue
                kept[version] = model
            servable += 1
        return {v: kept[v] for v in sorted(sorted(kept, reverse=True)[: self._keep])}

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
        key = (name, version)
        retry = self._waiting.get(key)
        if retry is not None and time.monotonic() < retry.due:
            return None
        folder = self._repository / name / str(version)
        signature = _signature(folder)
        if self._rejected.get(key) == signature:
            return None
        try:
            model = await asyncio.to_thread(self._build, name, version, folder)
        except ModelNotReadyError as exc:
            attempts = 1 if retry is None else retry.attempts + 1
            delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (attempts - 1))
            self._waiting[key] = _Retry(attempts, time.monotonic() + delay)
            if retry is None:
                log.info("waiting for %s version %d: %s; trying again with back-off", name, version, exc)
            return None
        except (MetadataError, ModelLoadError, OSError) as exc:
            self._waiting.pop(key, None)
            self._rejected[key] = signature
            log.error("rejected %s version %d: %s", name, version, exc)
            if self._on_rejected is not None:
                self._on_rejected(name)
            return None
        self._rejected.pop(key, None)
        self._waiting.pop(key, None)
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
        backend.warm_up()
        return LoadedModel(name=name, version=version, metadata=metadata, backend=backend)


def _summary(loaded: Loaded) -> dict[str, list[int]]:
    return {name: sorted(versions) for name, versions in loaded.items()}


_Signature = tuple[tuple[str, int | None, int | None], ...]


def _signature(folder: Path) -> _Signature:
    """What identifies a version folder's content cheaply: sizes and mtimes of its files and of the
    repository's config.json (which sets the precision a model server compiles it at)."""
    entries: list[tuple[str, int | None, int | None]] = []
    for path in (
        *(folder / name for name in (IR_XML_FILENAME, IR_BIN_FILENAME, METADATA_FILENAME)),
        folder.parent.parent / OVMS_CONFIG_FILENAME,
    ):
        filename = path.name
        try:
            stat = path.stat()
            entries.append((filename, stat.st_size, stat.st_mtime_ns))
        except OSError:
            entries.append((filename, None, None))
    return tuple(entries)
