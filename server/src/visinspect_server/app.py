"""The server process: the transport-free runtime behind the gRPC front door, the metrics port; start and drain."""

from __future__ import annotations

import logging
import time

from visinspect_server.backends.base import Backend, BackendFactory
from visinspect_server.grpc.security import ServerSecurity
from visinspect_server.grpc.server import GrpcFrontDoor
from visinspect_server.runtime import InspectionRuntime
from visinspect_server.settings import ServerSettings

log = logging.getLogger(__name__)


class InspectionServer:
    """The running service. ``start`` binds and begins loading models; ``stop`` drains gracefully.

    ``security`` (TLS credentials, bearer tokens) is read from the settings' files when not given; ``backend``
    is the one ``--backend`` names when not given; ``backend_factory`` replaces how it loads versions (tests).
    """

    def __init__(
        self,
        settings: ServerSettings,
        backend_factory: BackendFactory | None = None,
        security: ServerSecurity | None = None,
        backend: Backend | None = None,
    ) -> None:
        self.settings = settings
        self.runtime = InspectionRuntime(settings, backend_factory, backend)
        self.grpc = GrpcFrontDoor(
            self.runtime, ServerSecurity.from_settings(settings) if security is None else security
        )
        self.metrics_port = 0

    @property
    def port(self) -> int:
        """The bound gRPC port (0 before :meth:`start`)."""
        return self.grpc.port

    async def start(self) -> None:
        """Bind the ports, report NOT_SERVING, load the models, then report SERVING per model."""
        settings = self.settings
        await self.grpc.start()
        if settings.metrics_port >= 0:
            self.metrics_port = self.runtime.metrics.serve(settings.host, settings.metrics_port)
        log.info("listening on port %d; metrics on port %d", self.port, self.metrics_port)
        await self.runtime.start()

    async def stop(self, *, abandon_busy_transport: bool = False) -> bool:
        """Drain, then stop: NOT_SERVING at once; new calls refused with UNAVAILABLE while the calls in flight
        finish (within the grace period, after which they end UNAVAILABLE); then the gRPC server stops.

        When callers were still arriving at the end of the grace period and ``abandon_busy_transport`` is set,
        the gRPC server is left running (stopping it would fail those callers' calls CANCELLED) and False is
        returned: the caller exits the process at once, which fails them UNAVAILABLE. True otherwise.
        """
        deadline = time.monotonic() + self.settings.shutdown_grace_s
        log.info("shutting down: draining in-flight requests for up to %.1f s", self.settings.shutdown_grace_s)
        self.runtime.gate.close()
        await self.grpc.enter_graceful_shutdown()
        await self.runtime.stop_watching()
        outcome = await self.runtime.drained(deadline)
        stop_transport = outcome.quiet or not abandon_busy_transport
        if stop_transport:
            await self.grpc.stop()
        else:
            log.warning("callers kept sending until the grace period ended: closing their connections with the process")
        await self.runtime.close()
        log.info("stopped")
        return stop_transport

    async def wait(self) -> None:
        """Until the gRPC server terminates."""
        await self.grpc.wait()
