"""Domain errors. Each carries a transport-neutral :class:`ErrorKind`; a front door maps kinds to its own
statuses in one place (gRPC: :mod:`visinspect_server.grpc.errors`). Messages are shown to callers, so they
say what to fix."""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    """Why a request failed, independent of the transport that carried it."""

    INTERNAL = "internal"
    INVALID_INPUT = "invalid_input"
    NOT_FOUND = "not_found"
    PERMISSION_DENIED = "permission_denied"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"


class InspectionError(Exception):
    """Base class: a request the server refuses, with the kind of failure to answer it with."""

    kind: ErrorKind = ErrorKind.INTERNAL


class InvalidInputError(InspectionError):
    """The request is malformed: undecodable image, bad threshold, raw buffer of the wrong size."""

    kind = ErrorKind.INVALID_INPUT


class NotFoundError(InspectionError):
    """An unknown model or version, or a missing file."""

    kind = ErrorKind.NOT_FOUND


class PermissionDeniedError(InspectionError):
    """A path outside the image root, or path inputs disabled."""

    kind = ErrorKind.PERMISSION_DENIED


class ResourceExhaustedError(InspectionError):
    """An image over the pixel budget, or a message over the size limit."""

    kind = ErrorKind.RESOURCE_EXHAUSTED


class UnavailableError(InspectionError):
    """No model is loaded yet, or the server is shutting down."""

    kind = ErrorKind.UNAVAILABLE
