"""Python SDK and CLI of the visual inspection service (gRPC ``visinspect.v1``).

    from visinspect_client import InspectionClient

    with InspectionClient("localhost:50051") as client:
        result = client.detect("part.png", regions=True)
        print(result.verdict, result.score, result.regions)

The base install needs only grpcio, protobuf and numpy; heat maps, masks, PIL inputs and overlays need the
``images`` extra, the ``visinspect`` command the ``cli`` extra.
"""

from visinspect_client._protocol import DetectKwargs, MapSize
from visinspect_client.aio import AsyncInspectionClient
from visinspect_client.client import InspectionClient
from visinspect_client.connection import RetryPolicy, TlsConfig
from visinspect_client.errors import (
    AuthenticationError,
    DeadlineExceededError,
    ImageTooLargeError,
    InvalidImageError,
    NotFoundError,
    PermissionDeniedError,
    ServerError,
    ServerUnavailableError,
    VisInspectError,
)
from visinspect_client.inputs import ImageLike, ServerPath
from visinspect_client.results import (
    Calibration,
    DetectionFailure,
    DetectionResult,
    ExpectedRates,
    ModelDetails,
    ModelInfo,
    Region,
    Timing,
)

__all__ = [
    "AsyncInspectionClient",
    "AuthenticationError",
    "Calibration",
    "DeadlineExceededError",
    "DetectKwargs",
    "DetectionFailure",
    "DetectionResult",
    "ExpectedRates",
    "ImageLike",
    "ImageTooLargeError",
    "InspectionClient",
    "InvalidImageError",
    "MapSize",
    "ModelDetails",
    "ModelInfo",
    "NotFoundError",
    "PermissionDeniedError",
    "Region",
    "RetryPolicy",
    "ServerError",
    "ServerPath",
    "ServerUnavailableError",
    "Timing",
    "TlsConfig",
    "VisInspectError",
]
