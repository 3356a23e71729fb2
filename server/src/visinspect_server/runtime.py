"""The transport-free service: backend, model registry, batching, pipeline, call admission and health state.

A front door (``visinspect_server.grpc``; a REST or KServe-v2 endpoint would be a sibling) converts its
messages, calls :attr:`InspectionRuntime.pipeline` and :attr:`InspectionRuntime.registry` through
:attr:`InspectionRuntime.gate`, maps :class:`~visinspect_server.errors.ErrorKind` to its statuses, and
publishes :class:`HealthState` in its own protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from visinspect_api.model_repository import ModelMetadata
from visinspect_server.backends import create_backend
from visinspect_server.backends.base import Backend, BackendFactory, Readiness
from visinspect_server.batching import BatchingOptions, MicroBatcher, Upstream
from visinspect_server.drain import CallGate, DrainOutcome
from visinspect_server.observability import Metrics
from visinspect_server.pipeline import InspectionPipeline, PipelineLimits
from visinspect_server.registry import Loaded, ModelRegistry
from visinspect_server.settings import ServerSettings

log = logging.getLogger(__name__)

BACKEND_CHECK_INTERVAL_S = 1.0  # longest time between two readiness checks of a remote model server


@dataclass(frozen=True)
class HealthState:
    """What the service can do now: ``serving`` when some loaded model can answer; per served model whether it
    can; whether the model repository can be read."""

    serving: bool = False
    models: Mapping[str, bool] = field(default_factory=dict)
    repository: bool = True


HealthListener = Callable[[HealthState], Awaitable[None]]


def batched(factory: BackendFactory, options: BatchingOptions, upstream: Upstream, metrics: Metrics) -> BackendFactory:
    """Wrap every backend ``factory`` builds in a :class:`MicroBatcher` (one batch per free backend slot)."""

    def build(folder: Path, metadata: ModelMetadata) -> MicroBatcher:
        backend = factory(folder, metadata)
        return MicroBatcher(backend, options, backend.jobs, upstream, metrics.batch_size.observe)

    return build


class InspectionRuntime:
    """Everything that serves detections except the transport. ``start`` loads the models and keeps them in step
    with the repository and the backend; ``close`` releases what is left once the front doors have drained.

    ``backend`` is the one ``--backend`` names when not given; ``backend_factory`` replaces how it loads
    versions (tests).
    """

    def __init__(
        self,
        settings: ServerSettings,
        backend_factory: BackendFactory | None = None,
        backend: Backend | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = Metrics() if metrics is None else metrics
        self.backend = create_backend(settings) if backend is None else backend
        self.gate = CallGate(on_count=self.metrics.calls_in_flight.set)
        upstream = Upstream()
        self.registry = ModelRegistry(
            settings.model_repository,
            batched(
                backend_factory or self.backend.load,
                BatchingOptions(settings.max_batch_size, settings.batch_wait_ms),
                upstream,
                self.metrics,
            ),
            versions_per_model=settings.versions_per_model,
            only_models=settings.models,
            on_change=self._on_models_changed,
            on_rejected=lambda name: self.metrics.versions_rejected.labels(name).inc(),
            on_repository=self._on_repository,
            served_versions=self.backend.served_versions,
        )
        self._executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="visinspect")
        limits = PipelineLimits(settings.max_pixels, settings.max_file_bytes, settings.image_root)
        self.pipeline = InspectionPipeline(self.registry, self._executor, limits, upstream, self.metrics)
        self._listeners: list[HealthListener] = []
        self._poller: asyncio.Task[None] | None = None
        self._served_models: set[str] = set()
        self._readiness = Readiness()

    def on_health(self, listener: HealthListener) -> None:
        """Call ``listener`` with the health state now and whenever it may have changed."""
        self._listeners.append(listener)

    @property
    def health(self) -> HealthState:
        """The health state from the loaded models and the backend's readiness."""
        loaded = self.registry.loaded
        readiness = self._readiness
        models = {
            name: name in loaded and readiness.server and readiness.models.get(name, True)
            for name in self._served_models
        }
        return HealthState(any(models.values()), models, self.registry.repository_readable)

    async def start(self) -> None:
        """Load the models (when the backend is ready), then follow the repository and the backend."""
        await self.publish_health()
        if await self._check_backend():
            await self.registry.refresh()
        self._poller = asyncio.create_task(self._watch_backend())

    async def stop_watching(self) -> None:
        """Stop following the repository and the backend (the drain has begun)."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

    async def drained(self, deadline: float) -> DrainOutcome:
        """Once :attr:`gate` is closed: wait until the admitted calls finished and callers went quiet."""
        in_flight = self.gate.in_flight
        outcome = await self.gate.drained(deadline)
        if outcome.cut_short:
            log.warning("grace period over: %d calls still running were ended UNAVAILABLE", outcome.cut_short)
        log.info("drained (%d calls were in flight at the start)", in_flight)
        return outcome

    async def close(self) -> None:
        """Let the work of cancelled calls end, then close every version and the backend."""
        # Work of cancelled calls may still run in threads and in OpenVINO's callbacks: let it end
        # before the interpreter does, or native code aborts the process at exit.
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        for versions in self.registry.loaded.values():
            for model in versions.values():
                await asyncio.to_thread(model.backend.close)
        await self.backend.close()

    async def publish_health(self) -> None:
        """Tell every listener the current health state."""
        state = self.health
        for listener in self._listeners:
            await listener(state)

    async def _on_repository(self, readable: bool) -> None:
        self.metrics.repository_readable.set(1 if readable else 0)
        await self.publish_health()

    async def _on_models_changed(self, loaded: Loaded) -> None:
        for name in self._served_models - set(loaded):
            self.metrics.versions_loaded.labels(name).set(0)
        for name, versions in loaded.items():
            self.metrics.versions_loaded.labels(name).set(len(versions))
        self._served_models |= set(loaded)
        await self.publish_health()

    async def _check_backend(self) -> bool:
        """Ask the backend whether it, and each served model's newest loaded version, can answer now."""
        before = self._readiness
        now = await self.backend.readiness(self.registry.loaded)
        where = self.backend.location
        if now.server != before.server:
            if now.server:
                log.info("%s is ready", where)
            else:
                log.warning("%s is unavailable: health is NOT_SERVING", where)
        for name, up in now.models.items():
            if not up and before.models.get(name, True):
                log.warning("%s reports model %s not ready", where, name)
        self._readiness = now
        await self.publish_health()
        return now.server

    async def _watch_backend(self) -> None:
        """Rescan the repository every poll interval; a backend that probes readiness (a model server) is
        probed often, and the repository is rescanned only while it is ready: scanning while it is down would
        reject new versions until their files change. A failed scan is logged and the next one runs."""
        interval = self.settings.poll_interval_s
        check_every = min(interval, BACKEND_CHECK_INTERVAL_S) if self.backend.probes_readiness else interval
        next_refresh = time.monotonic() + interval
        was_ready = self._readiness.server
        while True:
            await asyncio.sleep(check_every)
            ready = await self._check_backend()
            due = not self.backend.probes_readiness or not was_ready or time.monotonic() >= next_refresh
            if ready and due:
                try:
                    await self.registry.refresh()
                except Exception:
                    log.exception("repository scan failed; the loaded versions keep serving")
                next_refresh = time.monotonic() + interval
            was_ready = ready
