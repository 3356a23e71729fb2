"""Python SDK and CLI of the visual inspection service (gRPC ``visinspect.v1``).

    from visinspect_client import InspectionClient

    with InspectionClient("localhost:50051") as client:
        result = client.detect("part.png", regions=True)
        print(result.verdict, result.score, result.regions)

The base install needs only grpcio, protobuf and numpy; heat maps, masks, PIL inputs and overlays need the
``images`` extra, the ``visinspect`` command the ``cli`` extra.
"""

from visinspect_api.detection import MapSize, Region, Timing
from visinspect_api.model_repository import Calibration, ExpectedRates
from visinspect_client._protocol import DetectKwargs
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
from visinspect_client.results import DetectionFailure, DetectionResult, ModelDetails, ModelInfo

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
