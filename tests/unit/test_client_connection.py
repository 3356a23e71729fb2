"""Connection behaviour against a small real gRPC server defined here: bearer token, TLS and mutual TLS,
retries from the service config, deadlines, message limits, and the status → exception mapping."""

from __future__ import annotations

import asyncio
import json
import pickle
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.server_harness import free_port
from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_api.v1 import inspection_pb2_grpc as pb_grpc
from visinspect_client import (
    AsyncInspectionClient,
    AuthenticationError,
    DeadlineExceededError,
    ImageTooLargeError,
    InspectionClient,
    InvalidImageError,
    NotFoundError,
    PermissionDeniedError,
    RetryPolicy,
    ServerError,
    ServerUnavailableError,
    TlsConfig,
    VisInspectError,
)
from visinspect_client.connection import ServerTarget, channel_options
from visinspect_client.errors import error_for

FAST_RETRY = RetryPolicy(max_attempts=5, initial_backoff_s=0.01, max_backoff_s=0.05, backoff_multiplier=2.0)


class RecordingServicer(pb_grpc.InspectionServiceServicer):
    """Records what each call carried. ListModels fails with UNAVAILABLE ``failures`` times first;
    Detect answers with the status named by ``request.model``."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []
        self.time_remaining: list[float | None] = []
        self.peer_names: list[list[bytes]] = []
        self.failures = 0
        self.lock = threading.Lock()

    def _record(self, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.metadata.append(dict(context.invocation_metadata()))
            self.time_remaining.append(context.time_remaining())
            self.peer_names.append(context.auth_context().get("x509_common_name", []))

    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext) -> pb.ListModelsResponse:  # noqa: N802
        self._record(context)
        with self.lock:
            failing, self.failures = self.failures > 0, max(0, self.failures - 1)
        if failing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return pb.ListModelsResponse(models=[pb.ModelVersions(name="brick", versions=[1, 2], default_version=2)])

    def Detect(self, request: pb.DetectRequest, context: grpc.ServicerContext) -> pb.DetectResponse:  # noqa: N802
        self._record(context)
        context.abort(grpc.StatusCode[request.model], f"fake {request.model.lower()} from the test server")


@dataclass
class FakeServer:
    servicer: RecordingServicer
    address: str
    health: health.HealthServicer
    server: grpc.Server = field(repr=False)


def start_fake(credentials: grpc.ServerCredentials | None = None) -> FakeServer:
    servicer = RecordingServicer()
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("model/brick", health_pb2.HealthCheckResponse.NOT_SERVING)
    server = grpc.server(futures.ThreadPoolExecutor(4))
    pb_grpc.add_InspectionServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return FakeServer(servicer, f"127.0.0.1:{port}", health_servicer, server)


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = start_fake()
    yield server
    server.server.stop(0)


# --- plaintext: token, deadlines, retries, errors ---------------------------------------------------


def test_token_is_sent_as_bearer_metadata_on_every_call(fake: FakeServer) -> None:
    with InspectionClient(fake.address, token="s3cret") as client:
        assert client.models()[0].name == "brick"
        with pytest.raises(NotFoundError):
            client.detect(b"x", model="NOT_FOUND")
        assert client.health() == "SERVING"
    assert [m["authorization"] for m in fake.servicer.metadata] == ["Bearer s3cret", "Bearer s3cret"]
    with InspectionClient(fake.address) as client:
        client.models()
    assert "authorization" not in fake.servicer.metadata[-1]


def test_async_client_sends_the_token_too(fake: FakeServer) -> None:
    async def main() -> list[str]:
        async with AsyncInspectionClient(fake.address, token="t0k") as client:
            return [m.name for m in await client.models()]

    assert asyncio.run(main()) == ["brick"]
    assert fake.servicer.metadata[-1]["authorization"] == "Bearer t0k"


def test_default_and_per_call_deadlines(fake: FakeServer) -> None:
    with InspectionClient(fake.address, timeout=7.0) as client:
        client.models()
        client.models(timeout=2.0)
    default, override = fake.servicer.time_remaining
    assert default is not None and 5.0 < default <= 7.1  # the wire format rounds deadlines up a little
    assert override is not None and 0.5 < override <= 2.1


def test_unavailable_is_retried_by_grpc_per_the_service_config(fake: FakeServer) -> None:
    fake.servicer.failures = 2
    with InspectionClient(fake.address, retry=FAST_RETRY) as client:
        assert [m.versions for m in client.models()] == [(1, 2)]
    assert len(fake.servicer.metadata) == 3  # two refused attempts, then the successful one
    assert fake.servicer.metadata[2]["grpc-previous-rpc-attempts"] == "2"


def test_retries_stop_at_max_attempts(fake: FakeServer) -> None:
    fake.servicer.failures = 10
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02)
    with InspectionClient(fake.address, retry=policy) as client, pytest.raises(ServerUnavailableError) as caught:
        client.models()
    assert len(fake.servicer.metadata) == 3
    assert "warming up" in str(caught.value) and fake.address in str(caught.value)


def test_retry_none_disables_retries(fake: FakeServer) -> None:
    fake.servicer.failures = 1
    with InspectionClient(fake.address, retry=None) as client:
        with pytest.raises(ServerUnavailableError):
            client.models()
        assert client.models()[0].name == "brick"
    assert len(fake.servicer.metadata) == 2


def test_only_unavailable_is_retried(fake: FakeServer) -> None:
    with InspectionClient(fake.address, retry=FAST_RETRY) as client, pytest.raises(ServerError):
        client.detect(b"x", model="INTERNAL")
    assert len(fake.servicer.metadata) == 1


@pytest.mark.parametrize(
    ("code", "exception"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidImageError),
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDeniedError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ImageTooLargeError),
        (grpc.StatusCode.UNAVAILABLE, ServerUnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
        (grpc.StatusCode.UNAUTHENTICATED, AuthenticationError),
        (grpc.StatusCode.INTERNAL, ServerError),
        (grpc.StatusCode.FAILED_PRECONDITION, ServerError),
        (grpc.StatusCode.UNIMPLEMENTED, ServerError),
    ],
)
def test_every_status_maps_to_its_exception(fake: FakeServer, code: grpc.StatusCode, exception: type) -> None:
    with InspectionClient(fake.address, retry=None) as client, pytest.raises(exception) as caught:
        client.detect(b"x", model=code.name)
    error = caught.value
    assert type(error) is exception and isinstance(error, VisInspectError)
    assert error.code == code
    assert isinstance(error.__cause__, grpc.RpcError) and error.__cause__.code() == code
    assert error.details == f"fake {code.name.lower()} from the test server"
    assert error.details in str(error) and fake.address in str(error)


def test_health_statuses(fake: FakeServer) -> None:
    with InspectionClient(fake.address) as client:
        assert client.health() == "SERVING"
        assert client.health("model/brick") == "NOT_SERVING"
        assert client.health("model/nope") == "SERVICE_UNKNOWN"


def test_messages_over_the_clients_limit_are_refused(fake: FakeServer) -> None:
    client = InspectionClient(fake.address, max_message_bytes=1024, retry=None)
    with client, pytest.raises(ImageTooLargeError) as caught:
        client.detect(b"x" * 4096, model="INTERNAL")
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert fake.servicer.metadata == []  # refused by the client before sending


def test_channel_options_carry_the_retry_policy() -> None:
    policy = RetryPolicy(max_attempts=4, initial_backoff_s=0.5, max_backoff_s=7.0, backoff_multiplier=3.0)
    options = dict(channel_options(policy, 1234, None))
    assert options["grpc.enable_retries"] == 1
    assert options["grpc.max_send_message_length"] == options["grpc.max_receive_message_length"] == 1234
    config = json.loads(str(options["grpc.service_config"]))
    (method,) = config["methodConfig"]
    assert method["name"] == [{"service": "visinspect.v1.InspectionService"}]
    assert method["retryPolicy"] == {
        "maxAttempts": 4,
        "initialBackoff": "0.500s",
        "maxBackoff": "7.000s",
        "backoffMultiplier": 3.0,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"] == {"serviceName": ""}
    disabled = dict(channel_options(None, 1234, TlsConfig(server_name="inspect.local")))
    assert disabled["grpc.enable_retries"] == 0
    assert "methodConfig" not in json.loads(str(disabled["grpc.service_config"]))
    assert disabled["grpc.ssl_target_name_override"] == "inspect.local"
    probe = dict(channel_options(None, 1234, None, balanced=False))  # asks one server for its health
    assert "grpc.service_config" not in probe


def test_policy_and_tls_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=9)
    with pytest.raises(ValueError, match="both client_cert and client_key"):
        TlsConfig(client_cert=b"cert")
    with pytest.raises(ValueError, match="cannot read the PEM file"):
        TlsConfig(ca_cert=tmp_path / "missing.pem").credentials()


def test_errors_keep_their_attributes_through_pickle() -> None:
    error = error_for(grpc.StatusCode.NOT_FOUND, "no model 'x'", "host:1")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is NotFoundError
    assert (copy.code, copy.details, copy.target, str(copy)) == (error.code, error.details, error.target, str(error))


# --- TLS and mutual TLS ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*arguments: str, cwd: Path) -> None:
    subprocess.run(["openssl", *arguments], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    folder = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca", cwd=folder
    )
    for name, common_name in (("server", "visinspect.test"), ("client", "camera-1")):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={common_name}", cwd=folder)
        (folder / f"{name}.ext").write_text(f"subjectAltName=DNS:{common_name}\n")
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=folder,
        )  # fmt: skip
    return Certificates(
        folder / "ca.pem", folder / "server.pem", folder / "server.key", folder / "client.pem", folder / "client.key"
    )


@pytest.fixture
def mtls_server(certificates: Certificates) -> Iterator[FakeServer]:
    credentials = grpc.ssl_server_credentials(
        [(certificates.server_key.read_bytes(), certificates.server_cert.read_bytes())],
        root_certificates=certificates.ca.read_bytes(),
        require_client_auth=True,
    )
    server = start_fake(credentials)
    yield server
    server.server.stop(0)


def test_mutual_tls_with_token_as_call_credentials(mtls_server: FakeServer, certificates: Certificates) -> None:
    tls = TlsConfig(
        ca_cert=certificates.ca,  # a path
        client_cert=certificates.client_cert.read_bytes(),  # PEM bytes
        client_key=certificates.client_key,
        server_name="visinspect.test",  # the certificate's name, not the address dialled
    )
    with InspectionClient(mtls_server.address, tls=tls, token="s3cret") as client:
        assert client.models()[0].name == "brick"
        assert client.health() == "SERVING"
    assert mtls_server.servicer.metadata[0]["authorization"] == "Bearer s3cret"
    assert mtls_server.servicer.peer_names[0] == [b"camera-1"]  # the server saw our client certificate


def test_async_client_over_mutual_tls(mtls_server: FakeServer, certificates: Certificates) -> None:
    tls = TlsConfig(certificates.ca, certificates.client_cert, certificates.client_key, "visinspect.test")

    async def main() -> str:
        async with AsyncInspectionClient(mtls_server.address, tls=tls, token="a") as client:
            return (await client.models())[0].name

    assert asyncio.run(main()) == "brick"
    assert mtls_server.servicer.metadata[0]["authorization"] == "Bearer a"


@pytest.mark.parametrize(
    "tls_arguments",
    [
        {"server_name": "visinspect.test"},  # no client certificate: the server refuses the handshake
        {"client": True, "server_name": "someone.else"},  # the server's certificate names another host
    ],
    ids=["no-client-cert", "wrong-server-name"],
)
def test_failed_handshakes_are_unavailable(
    mtls_server: FakeServer, certificates: Certificates, tls_arguments: dict
) -> None:
    client_files = (certificates.client_cert, certificates.client_key) if tls_arguments.get("client") else (None, None)
    tls = TlsConfig(certificates.ca, *client_files, server_name=tls_arguments["server_name"])
    client = InspectionClient(mtls_server.address, tls=tls, retry=None, timeout=5)
    with client, pytest.raises(ServerUnavailableError):
        client.models()
    assert mtls_server.servicer.metadata == []


def test_batch_options_are_checked_when_called(fake: FakeServer) -> None:
    with InspectionClient(fake.address) as client:
        with pytest.raises(ValueError, match="concurrency"):
            client.detect_iter([b"x"], concurrency=0)
        with pytest.raises(TypeError, match="colour"):
            client.stream([b"x"], colour="red")  # type: ignore[call-arg]
        with pytest.raises(ValueError, match="map_size"):
            client.detect_many([b"x"], map_size="huge")  # type: ignore[typeddict-item]
    assert fake.servicer.metadata == []


# --- several servers: balancing by health, retries on another server, health of the whole -----------------


@pytest.fixture
def pair() -> Iterator[tuple[FakeServer, FakeServer]]:
    servers = (start_fake(), start_fake())
    yield servers
    for server in servers:
        server.server.stop(0)


def calls_on(server: FakeServer) -> int:
    return len(server.servicer.metadata)


def test_calls_skip_a_server_that_is_not_serving_and_spread_once_it_is(pair: tuple[FakeServer, FakeServer]) -> None:
    starting, serving = pair
    starting.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    with InspectionClient([starting.address, serving.address], retry=None) as client:
        for _ in range(10):
            client.models()
        assert (calls_on(starting), calls_on(serving)) == (0, 10)
        starting.health.set("", health_pb2.HealthCheckResponse.SERVING)  # the client hears it on its health watch
        deadline = time.monotonic() + 30
        while calls_on(starting) == 0 and time.monotonic() < deadline:
            client.models()
        before = calls_on(starting), calls_on(serving)
        for _ in range(10):
            client.models()
    assert (calls_on(starting) - before[0], calls_on(serving) - before[1]) == (5, 5), "round robin"


def test_a_call_refused_unavailable_is_retried_on_the_other_server(pair: tuple[FakeServer, FakeServer]) -> None:
    draining, healthy = pair
    draining.servicer.failures = 1000  # every call refused UNAVAILABLE, while its health still says SERVING
    with InspectionClient(f"{draining.address},{healthy.address}", retry=FAST_RETRY) as client:
        results = [client.models()[0].name for _ in range(10)]
    assert results == ["brick"] * 10, "every call succeeded"
    assert calls_on(healthy) == 10 and calls_on(draining) >= 1
    earlier_attempts = sum(int(m.get("grpc-previous-rpc-attempts", 0)) for m in healthy.servicer.metadata)
    assert earlier_attempts == calls_on(draining), "every refused attempt was followed by one more, ending there"


def test_async_client_balances_by_health_too(pair: tuple[FakeServer, FakeServer]) -> None:
    starting, serving = pair
    starting.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)

    async def main() -> list[str]:
        async with AsyncInspectionClient([starting.address, serving.address], retry=None) as client:
            names = [(await client.models())[0].name for _ in range(6)]
            names.append(await client.health())
            return names

    assert asyncio.run(main()) == ["brick"] * 6 + ["SERVING"]
    assert (calls_on(starting), calls_on(serving)) == (0, 6)


def test_health_of_several_servers(pair: tuple[FakeServer, FakeServer]) -> None:
    first, second = pair
    first.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    offline = f"127.0.0.1:{free_port()}"
    with InspectionClient([first.address, second.address]) as client:
        assert client.health() == "SERVING", "one of them serves"
        second.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert client.health() == "NOT_SERVING"
        assert client.health("model/nope") == "SERVICE_UNKNOWN"
    with InspectionClient([offline, second.address]) as client:
        assert client.health("model/brick") == "NOT_SERVING", "an unreachable server does not hide the others"
    with InspectionClient([offline, f"127.0.0.1:{free_port()}"]) as client, pytest.raises(ServerUnavailableError):
        client.health(timeout=2)


@pytest.mark.parametrize(
    ("target", "uri", "addresses"),
    [
        ("localhost:50051", "localhost:50051", ("localhost:50051",)),  # one name: gRPC resolves it, every address
        ("dns:///inspect.svc:50051", "dns:///inspect.svc:50051", ("dns:///inspect.svc:50051",)),
        ("10.0.0.1:1, 10.0.0.2:2", "ipv4:10.0.0.1:1,10.0.0.2:2", ("10.0.0.1:1", "10.0.0.2:2")),
        (
            ["10.0.0.1:1", "10.0.0.1:1", "10.0.0.3:3"],
            "ipv4:10.0.0.1:1,10.0.0.3:3",
            ("10.0.0.1:1", "10.0.0.1:1", "10.0.0.3:3"),
        ),
        (["[::1]:5", "[fe80::1]:6"], "ipv6:[::1]:5,[fe80::1]:6", ("[::1]:5", "[fe80::1]:6")),
        (["localhost:7", "127.0.0.2:8"], "ipv4:127.0.0.1:7,127.0.0.2:8", ("localhost:7", "127.0.0.2:8")),
    ],
)
def test_server_targets(target: str | list[str], uri: str, addresses: tuple[str, ...]) -> None:
    parsed = ServerTarget.parse(target)
    assert (parsed.uri, parsed.addresses) == (uri, addresses)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("", "no server address given"),
        ([" ", ""], "no server address given"),
        (["10.0.0.1:1", "[::1]:2"], "mix IPv4 and IPv6"),
        (["10.0.0.1:1", "nohost"], "is not host:port"),
        (["nohost.invalid:1", "other.invalid:2"], "resolves to an IP address"),
    ],
)
def test_unusable_server_targets(target: str | list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServerTarget.parse(target)
