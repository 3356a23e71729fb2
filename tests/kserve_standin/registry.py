"""The stand-in's model manager: model versions loaded, reloaded and retired by a watcher thread, as OVMS does.

Follows OpenVINO Model Server (openvinotoolkit/model_server), cited by path:

- src/modelmanager.cpp ``watcher``: every ``--file_system_poll_wait_seconds`` (docs/model_version_policy.md: default 1,
  0 disables) re-read config.json when its content changed (``configFileReloadNeeded`` compares an MD5), unload models
  no longer listed (``retireModelsRemovedFromConfigFile``), then rescan each model's versions
  (``reloadModelWithVersions``): start new versions, then reload changed ones, then retire the unwanted ones, one
  version at a time; a version that fails to load is dropped from that poll's candidates.
- src/model.cpp: a version is registered just before it loads (``addVersion``); the default version is the highest
  AVAILABLE one, recomputed after a load and before a retirement (``updateDefaultVersion``); retired versions and
  models removed from the config stay registered, in state END.
- src/modelinstance.cpp: a (re)load sets LOADING and waits for in-flight inferences before compiling with the
  config's ``plugin_config`` (``reloadModel``); a retirement sets UNLOADING, waits for them, then END
  (``retireModel``); a request waits for a LOADING version up to a timeout (``waitForLoaded``): after it, still
  loading is MODEL_VERSION_NOT_LOADED_YET, unloading or unloaded MODEL_VERSION_NOT_LOADED_ANYMORE.
- src/modelmanager.cpp ``getModelInstance``: unknown name MODEL_NAME_MISSING, unknown version (or no default
  version) MODEL_VERSION_MISSING. src/status.cpp gives the messages (``message - details``, src/status.hpp) and
  src/grpc_utils.cpp the gRPC codes: all four are NOT_FOUND, a malformed version INVALID_ARGUMENT.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import openvino as ov

from tests.kserve_standin.policy import (
    ConfigError,
    ModelSpec,
    State,
    fallback_specs,
    parse_config,
    plan,
    versions_on_disk,
)

_PRECISIONS = ("f32", "bf16", "f16")


class Status(Enum):
    """(gRPC code name, message) of the OVMS statuses a model lookup can end in."""

    MODEL_NAME_MISSING = ("NOT_FOUND", "Model with requested name is not found")
    MODEL_VERSION_MISSING = ("NOT_FOUND", "Model with requested version is not found")
    MODEL_VERSION_NOT_LOADED_ANYMORE = ("NOT_FOUND", "Model with requested version is retired")
    MODEL_VERSION_NOT_LOADED_YET = ("NOT_FOUND", "Model with requested version is not loaded yet")
    MODEL_VERSION_INVALID_FORMAT = ("INVALID_ARGUMENT", "invalid model version format in request")


class OvmsError(Exception):
    def __init__(self, status: Status, details: str) -> None:
        self.status, self.code = status, status.value[0]
        self.message = f"{status.value[1]} - {details}"  # OVMS's own details are fewer; these name the version
        super().__init__(self.message)


@dataclass
class Version:
    model: str
    number: int
    spec: ModelSpec
    state: State = State.START
    failed: bool = False
    ir: ov.Model | None = None
    compiled: ov.CompiledModel | None = None
    in_flight: int = 0


@dataclass
class Model:
    versions: dict[int, Version] = field(default_factory=dict)
    default: int = 0

    def update_default(self, ignored: int = 0) -> None:
        available = (n for n, v in self.versions.items() if n != ignored and v.state == State.AVAILABLE)
        self.default = max(available, default=0)


def metadata_precision(version_dir: Path) -> str:
    try:
        precision = json.loads((version_dir / "visinspect-metadata.json").read_text()).get("inference_precision")
    except (OSError, ValueError, AttributeError):
        return "f32"
    return precision if precision in _PRECISIONS else "f32"


class Registry:
    """All models and versions; requests run on other threads than the watcher, under one condition variable."""

    def __init__(self, repository: Path, config_path: Path, load_delay_s: float, emit: Callable[[str], None]) -> None:
        self._repository, self._config_path = repository, config_path
        self._load_delay_s, self._emit = load_delay_s, emit
        self._core = ov.Core()
        self._lock = threading.Condition()
        self._models: dict[str, Model] = {}
        self._specs: dict[str, ModelSpec] = {}
        self._config_digest = b""
        self._fallback = not config_path.is_file()
        self.started = False
        if self._fallback:
            emit(
                f"no config at {config_path}: serving every model folder, all versions, at each version's "
                "inference_precision (real OVMS needs a config.json or --model_path)"
            )

    # The watcher side: one thread calls poll().

    def poll(self) -> None:
        self._read_config()
        for spec in list(self._specs.values()):
            self._apply(spec)

    def watch(self, interval_s: float) -> None:
        while True:
            time.sleep(interval_s)
            try:
                self.poll()
            except OSError as exc:  # e.g. a folder removed while scanned: the next poll sees the new state
                self._emit(f"poll failed: {exc}")

    def _read_config(self) -> None:
        if self._fallback:
            self._specs.update(fallback_specs(self._repository))
            return
        try:
            data = self._config_path.read_bytes()
        except OSError:
            return  # unreadable or deleted: OVMS keeps what it serves
        digest = hashlib.sha256(data).digest()
        if digest == self._config_digest:
            return
        first, self._config_digest = not self._config_digest, digest
        try:
            specs = parse_config(data.decode(), self._config_path.parent)
        except (ConfigError, ValueError) as exc:
            self._emit(f"config {self._config_path} rejected, nothing changed: {exc}")
            return
        self._specs = specs
        for name in sorted(self._models.keys() - specs.keys()):
            for number in sorted(self._models[name].versions):
                self._retire(name, number, "model removed from config")
        self._emit(f"config {'loaded' if first else 'reloaded'}: {', '.join(sorted(specs)) or 'no models'}")

    def _apply(self, spec: ModelSpec) -> None:
        registered = self._registered(spec.name)  # the model exists from here on, even without versions
        on_disk = versions_on_disk(spec.base_path)
        if on_disk is None:
            return
        changes = plan(spec.policy.filter(on_disk), registered, spec)
        failed = {n for n in changes.start if not self._load(spec, n, reload=False)}
        failed |= {n for n in changes.reload if not self._load(spec, n, reload=True)}
        candidates = [n for n in on_disk if n not in failed]
        for number in plan(spec.policy.filter(candidates), self._registered(spec.name), spec).retire:
            if number not in failed:
                self._retire(spec.name, number, "retired by policy")

    def _registered(self, name: str) -> dict[int, tuple[State, ModelSpec]]:
        with self._lock:
            model = self._models.setdefault(name, Model())
            return {n: (v.state, v.spec) for n, v in model.versions.items()}

    def _load(self, spec: ModelSpec, number: int, reload: bool) -> bool:
        with self._lock:
            model = self._models[spec.name]
            version = model.versions.setdefault(number, Version(spec.name, number, spec))
            version.state, version.failed, version.spec = State.LOADING, False, spec
            self._emit(f"version {spec.name}/{number} LOADING{' (reload)' if reload else ''}")
            self._lock.wait_for(lambda: version.in_flight == 0)
        time.sleep(self._load_delay_s)
        version_dir = spec.base_path / str(number)
        properties = dict(spec.plugin_config or {})
        if spec.plugin_config is None:
            properties["INFERENCE_PRECISION_HINT"] = metadata_precision(version_dir)
        try:
            ir = self._core.read_model(version_dir / "model.xml")
            compiled = self._core.compile_model(ir, spec.target_device, properties)
            hints = {k: compiled.get_property(k) for k in ("INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT")}
        except Exception as exc:  # noqa: BLE001 - any load error leaves the version failed, as in OVMS
            with self._lock:
                version.failed = True
                self._lock.notify_all()
            self._emit(f"version {spec.name}/{number} FAILED: {exc}")
            return False
        precision = hints["INFERENCE_PRECISION_HINT"]
        with self._lock:
            version.ir, version.compiled, version.state = ir, compiled, State.AVAILABLE
            model.update_default()
            self._lock.notify_all()
            self._emit(
                f"loaded {spec.name} version {number} with INFERENCE_PRECISION_HINT="
                f"{precision.get_type_name() if isinstance(precision, ov.Type) else precision} "
                f"PERFORMANCE_HINT={hints['PERFORMANCE_HINT']}"
            )
            self._emit(f"version {spec.name}/{number} AVAILABLE")
        return True

    def _retire(self, name: str, number: int, reason: str) -> None:
        with self._lock:
            model = self._models[name]
            version = model.versions[number]
            if version.state >= State.UNLOADING:
                return
            model.update_default(ignored=number)
            version.state = State.UNLOADING
            self._lock.wait_for(lambda: version.in_flight == 0)
            version.ir, version.compiled, version.state = None, None, State.END
            self._lock.notify_all()
            self._emit(f"version {name}/{number} UNLOADED ({reason})")

    # The request side: any thread.

    def _find(self, name: str, version: str) -> Version:
        model = self._models.get(name)
        if model is None:
            raise OvmsError(Status.MODEL_NAME_MISSING, f"model {name!r}")
        if version and not re.fullmatch(r"[+-]?\d+", version):
            raise OvmsError(Status.MODEL_VERSION_INVALID_FORMAT, f"model {name!r} version {version!r}")
        number = int(version) if version else model.default
        found = model.versions.get(number)
        if found is None:
            details = f"model {name!r} version {number}" if version else f"model {name!r} has no available version"
            raise OvmsError(Status.MODEL_VERSION_MISSING, details)
        return found

    def _loaded(self, found: Version, wait_s: float) -> None:
        self._lock.wait_for(lambda: found.state >= State.AVAILABLE, timeout=wait_s)
        details = f"model {found.model!r} version {found.number}"
        if found.state > State.AVAILABLE:
            raise OvmsError(Status.MODEL_VERSION_NOT_LOADED_ANYMORE, details)
        if found.state < State.AVAILABLE:
            raise OvmsError(Status.MODEL_VERSION_NOT_LOADED_YET, details)

    def ready(self, name: str, version: str) -> bool:
        """ModelReady (src/kfs_frontend/kfs_grpc_inference_service.cpp): known versions answer, AVAILABLE or not."""
        with self._lock:
            return self._find(name, version).state == State.AVAILABLE

    def metadata(self, name: str, version: str) -> tuple[ov.Model, list[int]]:
        """The version's IR (not waiting for it to load) and the model's AVAILABLE versions (``addReadyVersions``)."""
        with self._lock:
            found = self._find(name, version)
            self._loaded(found, 0)
            assert found.ir is not None
            versions = self._models[name].versions
            return found.ir, sorted(n for n, v in versions.items() if v.state == State.AVAILABLE or v is found)

    def acquire(self, name: str, version: str, wait_s: float) -> Version:
        """For ModelInfer: wait up to ``wait_s`` for the version to load; release() it when the inference is done."""
        with self._lock:
            found = self._find(name, version)
            self._loaded(found, wait_s)
            found.in_flight += 1
            return found

    def release(self, version: Version) -> None:
        with self._lock:
            version.in_flight -= 1
            self._lock.notify_all()
