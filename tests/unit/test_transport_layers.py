"""The runtime is transport-free; the gRPC front door alone maps error kinds and health to gRPC."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from visinspect_server import errors
from visinspect_server.errors import ErrorKind, InspectionError
from visinspect_server.grpc.errors import STATUS_OF_KIND, status_of
from visinspect_server.grpc.health import NOT_SERVING, SERVING
from visinspect_server.grpc.server import SERVICE_NAME, health_statuses
from visinspect_server.runtime import HealthState


def test_the_runtime_and_pipeline_import_no_transport() -> None:
    code = (
        "import sys\n"
        "import visinspect_server.runtime, visinspect_server.pipeline, visinspect_server.errors\n"
        "print(sorted({m.split('.')[0] for m in list(sys.modules)} & {'grpc', 'grpc_health', 'grpc_reflection'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_every_error_kind_has_a_grpc_status() -> None:
    assert set(STATUS_OF_KIND) == set(ErrorKind)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InspectionError, grpc.StatusCode.INTERNAL),
        (errors.InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFoundError, grpc.StatusCode.NOT_FOUND),
        (errors.PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
        (errors.ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.UnavailableError, grpc.StatusCode.UNAVAILABLE),
    ],
)
def test_domain_errors_map_to_their_grpc_status_with_their_message(
    error: type[InspectionError], code: grpc.StatusCode
) -> None:
    assert status_of(error("what to fix")) == (code, "what to fix")


def test_unexpected_errors_are_internal_with_a_generic_message() -> None:
    code, message = status_of(KeyError("secret detail"))
    assert code == grpc.StatusCode.INTERNAL
    assert "secret" not in message and message.startswith("internal error")
    assert status_of(TimeoutError())[0] == grpc.StatusCode.DEADLINE_EXCEEDED


def test_health_state_becomes_one_status_per_service_name() -> None:
    state = HealthState(serving=True, models={"brick": True, "screw": False}, repository=False)
    assert health_statuses(state) == {
        "model/brick": SERVING,
        "model/screw": NOT_SERVING,
        "": SERVING,
        SERVICE_NAME: SERVING,
        "repository": NOT_SERVING,
    }
    assert health_statuses(HealthState())[""] == NOT_SERVING
