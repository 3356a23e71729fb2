"""``grpc.health.v1.Health`` with watchers that are told every change, for clients that balance by health.

The SDK's channels watch the whole server's status, service ``""`` (gRPC client-side health checking): a
server that turns NOT_SERVING (starting, draining, model server down) stops receiving their calls at
once. grpcio-health-checking's asyncio servicer drops a service's wake-up condition when any one of
its watchers leaves, after which the other watchers of that service are never told of a change; with
many clients watching one name that would hide a shutdown. Here every service keeps its condition.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN: int = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthService(health_pb2_grpc.HealthServicer):  # type: ignore[misc]  # grpc_health is untyped
    """Health statuses by service name; ``Watch`` streams every change to every watcher."""

    def __init__(self) -> None:
        self._status: dict[str, int] = {"": SERVING}
        self._changed: dict[str, asyncio.Condition] = {}
        self._watchers: Counter[str] = Counter()
        self._shutting_down = False

    def status(self, service: str) -> int | None:
        """The current status of ``service`` (None when unknown)."""
        return self._status.get(service)

    async def Check(  # noqa: N802 - gRPC method name
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        """The current status, or NOT_FOUND for a service never set."""
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(  # noqa: N802 - gRPC method name
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.aio.ServicerContext,  # noqa: ARG002 - gRPC signature
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        """The current status now, then each change, until the caller leaves or the server stops."""
        service = request.service
        changed = self._changed.setdefault(service, asyncio.Condition())
        self._watchers[service] += 1
        sent: int | None = None
        try:
            while True:
                status = self._status.get(service, SERVICE_UNKNOWN)
                if status != sent:
                    yield health_pb2.HealthCheckResponse(status=status)  # never while holding the condition
                    sent = status
                    continue
                async with changed:
                    if self._status.get(service, SERVICE_UNKNOWN) == sent:
                        await changed.wait()
        finally:
            self._watchers[service] -= 1
            if not self._watchers[service]:  # the last watcher of this name: forget its condition
                del self._watchers[service]
                self._changed.pop(service, None)

    async def set(self, service: str, status: int) -> None:
        """Set ``service``'s status and tell its watchers (ignored once shutting down)."""
        if not self._shutting_down:
            await self._set(service, status)

    async def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, for good: later :meth:`set` calls are ignored."""
        self._shutting_down = True
        for service in list(self._status):
            await self._set(service, NOT_SERVING)

    async def _set(self, service: str, status: int) -> None:
        self._status[service] = status
        changed = self._changed.get(service)
        if changed is not None:
            async with changed:
                changed.notify_all()
