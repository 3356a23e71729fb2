"""Assembles the server: registry, pipeline, servicer, health, reflection, metrics; start and drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import openvino as ov
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from visinspect_api.model_repository import ModelMetadata
from visinspect_api.v1 import inspection_pb2, inspection_pb2_grpc
from visinspect_server.backend import OpenVINOBackend, OpenVINOOptions
from visinspect_server.batching import BatchingOptions, MicroBatcher, Upstream
from visinspect_server.drain import CallGate
from visinspect_server.health import HealthService
from visinspect_server.observability import Metrics
from visinspect_server.pipeline import InspectionPipeline, PipelineLimits
from visinspect_server.registry import BackendFactory, Loaded, ModelRegistry
from visinspect_server.security import ServerSecurity
from visinspect_server.servicer import InspectionServicer
from visinspect_server.settings import ServerSettings

if TYPE_CHECKING:
    from visinspect_server.kserve_backend import KServeConnection

log = logging.getLogger(__name__)

SERVICE_NAME = inspection_pb2.DESCRIPTOR.services_by_name["InspectionService"].full_name
MODEL_HEALTH_PREFIX = "model/"  # per-model health: service name "model/<name>"
REPOSITORY_HEALTH = "repository"  # NOT_SERVING while the model repository cannot be read
BACKEND_CHECK_INTERVAL_S = 1.0  # longest time between two readiness checks of a remote model server


def embedded_backend_factory(settings: ServerSettings) -> BackendFactory:
    """The default backend: OpenVINO in this process."""
    core = ov.Core()
    options = OpenVINOOptions(performance_hint=settings.performance_hint, cache_dir=settings.cache_dir)
    return lambda folder, metadata: OpenVINOBackend(folder, metadata, options, core)


def batched(factory: BackendFactory, options: BatchingOptions, upstream: Upstream, metrics: Metrics) -> BackendFactory:
    """Wrap every backend ``factory`` builds in a :class:`MicroBatcher` (one batch per free backend slot)."""

    def build(folder: Path, metadata: ModelMetadata) -> MicroBatcher:
        backend = factory(folder, metadata)
        return MicroBatcher(backend, options, getattr(backend, "jobs", 1), upstream, metrics.batch_size.observe)

    return build


def kserve_connection(settings: ServerSettings) -> KServeConnection:
    """The shared channel to a KServe v2 gRPC model server (OVMS, Triton, KServe)."""
    from visinspect_server.kserve_backend import KServeConnection, KServeOptions  # noqa: PLC0415 - optional

    options = KServeOptions(settings.ovms_address, settings.ovms_timeout_s, settings.max_message_bytes)
    return KServeConnection(options)


class InspectionServer:
    """The running service. ``start`` binds and begins loading models; ``stop`` drains gracefully.

    ``security`` (TLS credentials, bearer tokens) is read from the settings' files when not given.
    """

    def __init__(
        self,
        settings: ServerSettings,
        backend_factory: BackendFactory | None = None,
        security: ServerSecurity | None = None,
    ) -> None:
        self.settings = settings
        self.security = ServerSecurity.from_settings(settings) if security is None else security
        self.metrics = Metrics()
        self.health = HealthService()
        self.gate = CallGate(on_count=self.metrics.calls_in_flight.set)
        self.connection = kserve_connection(settings) if settings.backend == "kserve" else None
        if backend_factory is None:
            if self.connection is not None:
                backend_factory = self.connection.backend_factory()
            else:
                backend_factory = embedded_backend_factory(settings)
        batching = BatchingOptions(settings.max_batch_size, settings.batch_wait_ms)
        upstream = Upstream()
        self.registry = ModelRegistry(
            settings.model_repository,
            batched(backend_factory, batching, upstream, self.metrics),
            versions_per_model=settings.versions_per_model,
            only_models=settings.models,
            on_change=self._on_models_changed,
            on_rejected=lambda name: self.metrics.versions_rejected.labels(name).inc(),
            on_repository=self._on_repository,
            served_versions=None if self.connection is None else self.connection.served_versions,
        )
        self._executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="visinspect")
        limits = PipelineLimits(settings.max_pixels, settings.max_file_bytes, settings.image_root)
        self._servicer = InspectionServicer(
            InspectionPipeline(self.registry, self._executor, limits, upstream),
            self.registry,
            self.metrics,
            settings.stream_max_in_flight,
            self.gate,
        )
        self._server: grpc.aio.Server | None = None
        self._poller: asyncio.Task[None] | None = None
        self._served_models: set[str] = set()
        self._backend_ready = True  # the embedded backend is always ready; a model server is probed
        self._models_ready: dict[str, bool] = {}
        self._published: dict[str, int] = {}
        self.port = 0
        self.metrics_port = 0

    async def start(self) -> None:
        """Bind the ports, report NOT_SERVING, load the models, then report SERVING per model."""
        settings = self.settings
        size = settings.max_message_bytes
        self._server = grpc.aio.server(
            interceptors=self.security.interceptors(self.metrics.registry),
            options=[
                ("grpc.max_receive_message_length", size),
                ("grpc.max_send_message_length", size),
                ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
            ],
        )
        inspection_pb2_grpc.add_InspectionServiceServicer_to_server(self._servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self._server,
        )
        address = f"{settings.host}:{settings.port}"
        if self.security.credentials is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, self.security.credentials)
        log.info("gRPC transport: %s", self.security.describe())
        if self.security.tokens and self.security.credentials is None:
            log.warning("bearer tokens travel unencrypted without TLS: set --tls-cert and --tls-key")
        await self._publish_health()
        await self._server.start()
        if settings.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(settings.host, settings.metrics_port)
        log.info("listening on port %d; metrics on port %d", self.port, self.metrics_port)
        if self.connection is None:
            await self.registry.refresh()
            self._poller = asyncio.create_task(self.registry.run(settings.poll_interval_s))
        else:
            if await self._check_backend():
                await self.registry.refresh()
            self._poller = asyncio.create_task(self._watch_backend())

    async def stop(self, *, abandon_busy_transport: bool = False) -> bool:
        """Drain, then stop: NOT_SERVING at once; new calls refused with UNAVAILABLE while the calls in flight
        finish (within the grace period, after which they end UNAVAILABLE); then the gRPC server stops.

        When callers were still arriving at the end of the grace period and ``abandon_busy_transport`` is set,
        the gRPC server is left running (stopping it would fail those callers' calls CANCELLED) and False is
        returned: the caller exits the process at once, which fails them UNAVAILABLE. True otherwise.
        """
        deadline = time.monotonic() + self.settings.shutdown_grace_s
        log.info("shutting down: draining in-flight requests for up to %.1f s", self.settings.shutdown_grace_s)
        self.gate.close()
        await self.health.enter_graceful_shutdown()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        in_flight = self.gate.in_flight
        outcome = await self.gate.drained(deadline)
        if outcome.cut_short:
            log.warning("grace period over: %d calls still running were ended UNAVAILABLE", outcome.cut_short)
        log.info("drained (%d calls were in flight at the start)", in_flight)
        stop_transport = outcome.quiet or not abandon_busy_transport
        if self._server is not None and stop_transport:
            await self._server.stop(0)  # what is left are health watches: nothing to wait for
        elif self._server is not None:
            log.warning("callers kept sending until the grace period ended: closing their connections with the process")
        # Work of cancelled calls may still run in threads and in OpenVINO's callbacks: let it end
        # before the interpreter does, or native code aborts the process at exit.
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        for versions in self.registry.loaded.values():
            for model in versions.values():
                await asyncio.to_thread(model.backend.close)
        if self.connection is not None:
            await self.connection.close()
        log.info("stopped")
        return stop_transport

    async def wait(self) -> None:
        """Until the gRPC server terminates."""
        if self._server is not None:
            await self._server.wait_for_termination()

    async def _on_repository(self, readable: bool) -> None:
        self.metrics.repository_readable.set(1 if readable else 0)
        await self._publish_health()

    async def _on_models_changed(self, loaded: Loaded) -> None:
        for name in self._served_models - set(loaded):
            self.metrics.versions_loaded.labels(name).set(0)
        for name, versions in loaded.items():
            self.metrics.versions_loaded.labels(name).set(len(versions))
        self._served_models |= set(loaded)
        await self._publish_health()

    async def _publish_health(self) -> None:
        """Health from the loaded models and, with a model server, its server and model readiness."""
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        loaded = self.registry.loaded
        wanted: dict[str, int] = {}
        any_up = False
        for name in self._served_models:
            up = name in loaded and self._backend_ready and self._models_ready.get(name, True)
            any_up = any_up or up
            wanted[MODEL_HEALTH_PREFIX + name] = serving if up else not_serving
        overall = serving if any_up else not_serving  # some loaded model can answer
        wanted[""] = wanted[SERVICE_NAME] = overall
        wanted[REPOSITORY_HEALTH] = serving if self.registry.repository_readable else not_serving
        for service, status in wanted.items():
            if self._published.get(service) != status:
                await self.health.set(service, status)
                self._published[service] = status

    async def _check_backend(self) -> bool:
        """Probe the model server's server readiness and each served model's newest loaded version."""
        assert self.connection is not None
        ready = await self.connection.server_ready()
        models: dict[str, bool] = {}
        if ready:
            for name, versions in self.registry.loaded.items():
                models[name] = await self.connection.model_ready(name, max(versions))
        if ready != self._backend_ready:
            if ready:
                log.info("inference backend at %s is ready", self.connection.address)
            else:
                log.warning("inference backend at %s is unavailable: health is NOT_SERVING", self.connection.address)
        for name, up in models.items():
            if not up and self._models_ready.get(name, True):
                log.warning("inference backend at %s reports model %s not ready", self.connection.address, name)
        self._backend_ready, self._models_ready = ready, models
        await self._publish_health()
        return ready

    async def _watch_backend(self) -> None:
        """With a model server: probe readiness often, rescan the repository only while it is ready.

        Scanning while the model server is down would reject new versions until their files change.
        """
        interval = self.settings.poll_interval_s
        next_refresh = time.monotonic() + interval
        was_ready = self._backend_ready
        while True:
            await asyncio.sleep(min(interval, BACKEND_CHECK_INTERVAL_S))
            ready = await self._check_backend()
            if ready and (not was_ready or time.monotonic() >= next_refresh):
                await self.registry.refresh()
                next_refresh = time.monotonic() + interval
            was_ready = ready
