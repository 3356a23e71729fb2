"""One small exception hierarchy. Every error keeps its gRPC status code; server errors are raised
``from`` the :class:`grpc.RpcError` they come from."""

from __future__ import annotations

import grpc


class VisInspectError(Exception):
    """Base class. ``code`` is the gRPC status; ``details`` the server's own message (empty for local errors)."""

    default_code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(
        self, message: str, code: grpc.StatusCode | None = None, *, details: str = "", target: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.details = details
        self.target = target

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:  # keep the attributes through pickling (multiprocessing)
        return (_rebuild, (type(self), self.message, self.code.name, self.details, self.target))


def _rebuild(cls: type[VisInspectError], message: str, code: str, details: str, target: str) -> VisInspectError:
    return cls(message, grpc.StatusCode[code], details=details, target=target)


class InvalidImageError(VisInspectError):
    """INVALID_ARGUMENT: an unusable image or option (also raised locally, before any call)."""

    default_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(VisInspectError):
    """NOT_FOUND: an unknown model or version, or a missing file under the server's image root."""

    default_code = grpc.StatusCode.NOT_FOUND


class PermissionDeniedError(VisInspectError):
    """PERMISSION_DENIED: a server path outside the image root, or path inputs disabled on the server."""

    default_code = grpc.StatusCode.PERMISSION_DENIED


class ImageTooLargeError(VisInspectError):
    """RESOURCE_EXHAUSTED: an image over the server's pixel budget or a message over the size limit."""

    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ServerUnavailableError(VisInspectError):
    """UNAVAILABLE: nothing reachable at the address, no model loaded yet, or the server shutting down."""

    default_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(VisInspectError):
    """DEADLINE_EXCEEDED: no answer within the call's timeout."""

    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class AuthenticationError(VisInspectError):
    """UNAUTHENTICATED: a missing or rejected token or client certificate."""

    default_code = grpc.StatusCode.UNAUTHENTICATED


class ServerError(VisInspectError):
    """INTERNAL and every other status: a server fault (its log has the details)."""

    default_code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[VisInspectError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidImageError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ImageTooLargeError,
    grpc.StatusCode.UNAVAILABLE: ServerUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
}

_CODE_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def error_for(code: grpc.StatusCode, details: str, target: str, timeout: float | None = None) -> VisInspectError:
    """The exception for a status and the server's message, with a message a person can act on."""
    cls = _BY_CODE.get(code, ServerError)
    return cls(_message(code, details, target, timeout), code, details=details, target=target)


def error_for_number(number: int, details: str, target: str) -> VisInspectError:
    """:func:`error_for` from a numeric ``google.rpc.Code`` (as in a stream's per-item errors)."""
    return error_for(_CODE_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN), details, target)


def from_rpc_error(error: grpc.RpcError, target: str, timeout: float | None = None) -> VisInspectError:
    """Map a failed call (sync or asyncio) to the hierarchy. Raise the result ``from error``."""
    code_of = getattr(error, "code", None)
    details_of = getattr(error, "details", None)
    code = code_of() if callable(code_of) else grpc.StatusCode.UNKNOWN
    details = (details_of() if callable(details_of) else None) or str(error)
    return error_for(code or grpc.StatusCode.UNKNOWN, details, target, timeout)


def _message(code: grpc.StatusCode, details: str, target: str, timeout: float | None) -> str:
    if code == grpc.StatusCode.UNAVAILABLE and "backend unhealthy" in details:
        return (
            f"no server at {target} is serving: each is starting, restarting or has no model loaded yet "
            f"(health NOT_SERVING; {details}). Try again shortly"
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        return (
            f"the server at {target} is unavailable: {details}. Check that it is running and reachable "
            "at that address (--server / VISINSPECT_SERVER), or try again once its model is loaded"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        waited = f" within {timeout:g} s" if timeout is not None else ""
        return (
            f"the server at {target} did not answer{waited} ({details}); raise the timeout or check the server's load"
        )
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"the server at {target} refused the credentials: {details}. Check the token or client certificate"
    if code in _BY_CODE:
        return f"{details} (server {target}, {code.name})"
    return f"the server at {target} failed: {details} ({code.name})"
