"""Assembles the server: registry, pipeline, servicer, health, reflection, metrics; start and drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

import grpc
import openvino as ov
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from visinspect_api.v1 import inspection_pb2, inspection_pb2_grpc
from visinspect_server.backend import OpenVINOBackend, OpenVINOOptions
from visinspect_server.observability import Metrics
from visinspect_server.pipeline import InspectionPipeline, PipelineLimits
from visinspect_server.registry import BackendFactory, Loaded, ModelRegistry
from visinspect_server.servicer import InspectionServicer
from visinspect_server.settings import ServerSettings

log = logging.getLogger(__name__)

SERVICE_NAME = inspection_pb2.DESCRIPTOR.services_by_name["InspectionService"].full_name
MODEL_HEALTH_PREFIX = "model/"  # per-model health: service name "model/<name>"


def embedded_backend_factory(settings: ServerSettings) -> BackendFactory:
    """The default backend: OpenVINO in this process."""
    core = ov.Core()
    options = OpenVINOOptions(performance_hint=settings.performance_hint, cache_dir=settings.cache_dir)
    return lambda folder, metadata: OpenVINOBackend(folder, metadata, options, core)


class InspectionServer:
    """The running service. ``start`` binds and begins loading models; ``stop`` drains gracefully."""

    def __init__(self, settings: ServerSettings, backend_factory: BackendFactory | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.health = HealthServicer()
        self.registry = ModelRegistry(
            settings.model_repository,
            backend_factory or embedded_backend_factory(settings),
            versions_per_model=settings.versions_per_model,
            only_models=settings.models,
            on_change=self._on_models_changed,
            on_rejected=lambda name: self.metrics.versions_rejected.labels(name).inc(),
        )
        self._executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="visinspect")
        limits = PipelineLimits(settings.max_pixels, settings.max_file_bytes, settings.image_root)
        self._servicer = InspectionServicer(
            InspectionPipeline(self.registry, self._executor, limits),
            self.registry,
            self.metrics,
            settings.stream_max_in_flight,
        )
        self._server: grpc.aio.Server | None = None
        self._poller: asyncio.Task[None] | None = None
        self._served_models: set[str] = set()
        self.port = 0
        self.metrics_port = 0

    async def start(self) -> None:
        """Bind the ports, report NOT_SERVING, load the models, then report SERVING per model."""
        settings = self.settings
        size = settings.max_message_bytes
        self._server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", size), ("grpc.max_send_message_length", size)]
        )
        inspection_pb2_grpc.add_InspectionServiceServicer_to_server(self._servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self._server,
        )
        self.port = self._server.add_insecure_port(f"{settings.host}:{settings.port}")
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._server.start()
        if settings.metrics_port >= 0:
            self.metrics_port = self.metrics.serve(settings.host, settings.metrics_port)
        log.info("listening on port %d; metrics on port %d", self.port, self.metrics_port)
        await self.registry.refresh()
        self._poller = asyncio.create_task(self.registry.run(settings.poll_interval_s))

    async def stop(self) -> None:
        """Report NOT_SERVING, refuse new calls, let in-flight calls finish within the grace period."""
        log.info("shutting down: draining in-flight requests for up to %.1f s", self.settings.shutdown_grace_s)
        await self.health.enter_graceful_shutdown()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._server is not None:
            await self._server.stop(self.settings.shutdown_grace_s)
        # Work of cancelled calls may still run in threads and in OpenVINO's callbacks: let it end
        # before the interpreter does, or native code aborts the process at exit.
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        for versions in self.registry.loaded.values():
            for model in versions.values():
                await asyncio.to_thread(model.backend.close)
        log.info("stopped")

    async def wait(self) -> None:
        """Until the gRPC server terminates."""
        if self._server is not None:
            await self._server.wait_for_termination()

    async def _on_models_changed(self, loaded: Loaded) -> None:
        serving = health_pb2.HealthCheckResponse.SERVING
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        for name in self._served_models - set(loaded):
            await self.health.set(MODEL_HEALTH_PREFIX + name, not_serving)
            self.metrics.versions_loaded.labels(name).set(0)
        for name, versions in loaded.items():
            await self.health.set(MODEL_HEALTH_PREFIX + name, serving)
            self.metrics.versions_loaded.labels(name).set(len(versions))
        self._served_models = set(loaded)
        overall = serving if loaded else not_serving
        for service in ("", SERVICE_NAME):
            await self.health.set(service, overall)
