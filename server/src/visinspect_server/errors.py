"""Domain errors. Each carries the gRPC status it maps to; the mapping happens in one place
(:mod:`visinspect_server.grpc_errors`). Messages are shown to callers, so they say what to fix."""

from __future__ import annotations

import grpc


class InspectionError(Exception):
    """Base class: a request the server refuses, with the status code to answer it with."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidInputError(InspectionError):
    """The request is malformed: undecodable image, bad threshold, raw buffer of the wrong size."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(InspectionError):
    """An unknown model or version, or a missing file."""

    code = grpc.StatusCode.NOT_FOUND


class PermissionDeniedError(InspectionError):
    """A path outside the image root, or path inputs disabled."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhaustedError(InspectionError):
    """An image over the pixel budget, or a message over the size limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnavailableError(InspectionError):
    """No model is loaded yet, or the server is shutting down."""

    code = grpc.StatusCode.UNAVAILABLE
