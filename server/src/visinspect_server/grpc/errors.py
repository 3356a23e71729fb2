"""The one place where exceptions become gRPC statuses (and unary calls are counted and timed)."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from visinspect_server.drain import GRACE_OVER, CallGate
from visinspect_server.errors import ErrorKind, InspectionError
from visinspect_server.observability import Metrics, new_request_id, request_id_var

log = logging.getLogger(__name__)
Response = TypeVar("Response")
INTERNAL_MESSAGE = "internal error; the server log has the details (request id {request_id})"
STATUS_OF_KIND: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
    ErrorKind.INVALID_INPUT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Map an exception to the status and message a caller sees; unexpected ones are logged in full."""
    if isinstance(exc, InspectionError):
        return STATUS_OF_KIND[exc.kind], str(exc)
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, "the request did not finish before its deadline"
    log.error("unexpected error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE.format(request_id=request_id_var.get())


DEADLINE_SLACK_S = 0.5  # the caller's own timer fires first, earlier by the time the request took to arrive


def cancelled_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """Why gRPC cancelled a handler: its deadline passed (DEADLINE_EXCEEDED), or the caller went away."""
    remaining = context.time_remaining()
    expired = remaining is not None and remaining <= DEADLINE_SLACK_S
    return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED


def unary_rpc(method: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """Decorate a unary servicer method: admit it through the drain gate, set the request id, map errors,
    count and time the call.

    The servicer must have ``metrics`` (:class:`Metrics`) and ``gate`` (:class:`CallGate`) attributes.
    """
    name = method.__name__

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Response:
        request_id_var.set(getattr(request, "request_id", "") or new_request_id())
        metrics: Metrics = self.metrics
        gate: CallGate = self.gate
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            with gate.admit():
                return await method(self, request, context)
        except asyncio.CancelledError:
            if not gate.expired:
                code = cancelled_code(context)
                raise
            code = grpc.StatusCode.UNAVAILABLE  # ended by the drain's deadline: the caller may retry elsewhere
            await context.abort(code, GRACE_OVER)
            raise AssertionError("unreachable: abort raises") from None
        except Exception as exc:
            code, message = status_of(exc)
            await context.abort(code, message)
            raise AssertionError("unreachable: abort raises") from exc
        finally:
            metrics.requests.labels(name, code.name).inc()
            metrics.latency.labels(name).observe(time.perf_counter() - started)

    return wrapper
