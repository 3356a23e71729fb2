"""The gRPC server's lifecycle: bind with the security settings, serve the inspection, health and reflection
services, publish the runtime's health per service name, stop."""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from visinspect_api.v1 import inspection_pb2, inspection_pb2_grpc
from visinspect_server.grpc.health import NOT_SERVING, SERVING, HealthService
from visinspect_server.grpc.security import ServerSecurity
from visinspect_server.grpc.servicer import InspectionServicer
from visinspect_server.runtime import HealthState, InspectionRuntime

log = logging.getLogger(__name__)

SERVICE_NAME = inspection_pb2.DESCRIPTOR.services_by_name["InspectionService"].full_name
MODEL_HEALTH_PREFIX = "model/"  # per-model health: service name "model/<name>"
REPOSITORY_HEALTH = "repository"  # NOT_SERVING while the model repository cannot be read


def health_statuses(state: HealthState) -> dict[str, int]:
    """The ``grpc.health.v1`` status of every service name for a health state."""

    def status(up: bool) -> int:
        return SERVING if up else NOT_SERVING

    statuses = {MODEL_HEALTH_PREFIX + name: status(up) for name, up in state.models.items()}
    statuses[""] = statuses[SERVICE_NAME] = status(state.serving)  # some loaded model can answer
    statuses[REPOSITORY_HEALTH] = status(state.repository)
    return statuses


class GrpcFrontDoor:
    """``visinspect.v1.InspectionService`` plus health and reflection on one gRPC server over ``runtime``."""

    def __init__(self, runtime: InspectionRuntime, security: ServerSecurity) -> None:
        self.runtime = runtime
        self.security = security
        self.health = HealthService()
        self.port = 0
        self._servicer = InspectionServicer(
            runtime.pipeline, runtime.registry, runtime.metrics, runtime.settings.stream_max_in_flight, runtime.gate
        )
        self._server: grpc.aio.Server | None = None
        self._published: dict[str, int] = {}
        runtime.on_health(self._publish)

    async def start(self) -> int:
        """Bind the port, publish the current health (NOT_SERVING until a model loads), start; the bound port."""
        settings = self.runtime.settings
        size = settings.max_message_bytes
        server = grpc.aio.server(
            interceptors=self.security.interceptors(self.runtime.metrics.registry),
            options=[
                ("grpc.max_receive_message_length", size),
                ("grpc.max_send_message_length", size),
                ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
            ],
        )
        inspection_pb2_grpc.add_InspectionServiceServicer_to_server(self._servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        address = f"{settings.host}:{settings.port}"
        if self.security.credentials is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, self.security.credentials)
        log.info("gRPC transport: %s", self.security.describe())
        if self.security.tokens and self.security.credentials is None:
            log.warning("bearer tokens travel unencrypted without TLS: set --tls-cert and --tls-key")
        self._server = server
        await self.runtime.publish_health()
        await server.start()
        return self.port

    async def enter_graceful_shutdown(self) -> None:
        """Every health service NOT_SERVING, for good (the drain has begun)."""
        await self.health.enter_graceful_shutdown()

    async def stop(self) -> None:
        """Stop the gRPC server at once: what is left after the drain are health watches."""
        if self._server is not None:
            await self._server.stop(0)

    async def wait(self) -> None:
        """Until the gRPC server terminates."""
        if self._server is not None:
            await self._server.wait_for_termination()

    async def _publish(self, state: HealthState) -> None:
        for service, status in health_statuses(state).items():
            if self._published.get(service) != status:
                await self.health.set(service, status)
                self._published[service] = status
