"""TLS, mutual TLS and bearer tokens on real server subprocesses, with certificates made at run time."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.server_harness import ServerProcess, start_server
from visinspect_api.v1 import inspection_pb2, inspection_pb2_grpc
from visinspect_client import InspectionClient
from visinspect_client.connection import TlsConfig
from visinspect_client.errors import VisInspectError
from visinspect_client.results import DetectionResult

TOKENS_FILE_TOKENS = ("file-token-one", "file-token-two")
ENV_TOKENS = ("env-token-a", "env-token-b")
DETECT = "/visinspect.v1.InspectionService/Detect"
TIMEOUT_S = 60.0


# --- certificates ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """PEM files: a CA, a server certificate for 127.0.0.1/localhost, a client certificate from the CA, and one
    from an unrelated CA; plus ``wrong_key`` (a key that does not match ``server_cert``)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_ca: Path
    stranger_cert: Path
    stranger_key: Path
    wrong_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _sign(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(subject) if issuer is None else issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
    )


def _make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)  # cert and CRL signing
    cert = (
        _sign(common_name, key, None, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _issue(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], common_name: str, *, server: bool
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    purpose = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _sign(common_name, key, ca_cert, ca_key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
    )
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _write(folder: Path, name: str, item: ec.EllipticCurvePrivateKey | x509.Certificate) -> Path:
    path = folder / name
    if isinstance(item, x509.Certificate):
        path.write_bytes(item.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            item.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = _make_ca("visinspect test CA")
    stranger = _make_ca("unrelated CA")
    server_key, server_cert = _issue(ca, "localhost", server=True)
    client_key, client_cert = _issue(ca, "camera-1", server=False)
    stranger_key, stranger_cert = _issue(stranger, "camera-1", server=False)
    return Pki(
        ca=_write(folder, "ca.pem", ca[1]),
        server_cert=_write(folder, "server.pem", server_cert),
        server_key=_write(folder, "server.key", server_key),
        client_cert=_write(folder, "client.pem", client_cert),
        client_key=_write(folder, "client.key", client_key),
        stranger_ca=_write(folder, "stranger-ca.pem", stranger[1]),
        stranger_cert=_write(folder, "stranger.pem", stranger_cert),
        stranger_key=_write(folder, "stranger.key", stranger_key),
        wrong_key=_write(folder, "wrong.key", ec.generate_private_key(ec.SECP256R1())),
    )


# --- servers ---------------------------------------------------------------------------------------------------


def _repository(exported) -> Path:
    return exported.version_dir.parents[1]


@pytest.fixture(scope="module")
def tls_server(exported, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """TLS (no client certificates), bearer tokens from a file."""
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    tokens.write_text(f"# line cameras\n\n  {TOKENS_FILE_TOKENS[0]}  \n# retired: old-token\n{TOKENS_FILE_TOKENS[1]}\n")
    args = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--auth-tokens-file", str(tokens)]
    server = start_server(_repository(exported), args, credentials=grpc.ssl_channel_credentials(pki.ca.read_bytes()))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_server(exported, pki: Pki) -> Iterator[ServerProcess]:
    """Mutual TLS: clients need a certificate from ``pki.ca``; no tokens."""
    args = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca)]
    credentials = grpc.ssl_channel_credentials(
        pki.ca.read_bytes(), pki.client_key.read_bytes(), pki.client_cert.read_bytes()
    )
    server = start_server(_repository(exported), args, credentials=credentials)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def token_server(exported) -> Iterator[ServerProcess]:
    """Plaintext, bearer tokens from ``VISINSPECT_AUTH_TOKENS``, at most 3 concurrent streams per connection."""
    env = {"VISINSPECT_AUTH_TOKENS": ",".join(ENV_TOKENS)}
    server = start_server(_repository(exported), ["--max-concurrent-streams", "3"], env=env)
    yield server
    server.stop()


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (128, 128, 3), dtype=np.uint8)


def _client(server: ServerProcess, tls: TlsConfig | None = None, token: str | None = None) -> InspectionClient:
    return InspectionClient(server.address, tls=tls, token=token, timeout=TIMEOUT_S, retry=None)


def _assert_served(client: InspectionClient) -> None:
    """Detect, ListModels and DetectStream all answer."""
    result = client.detect(_image())
    assert (result.model, result.image_width, result.image_height) == ("brick", 128, 128)
    assert 0.0 <= result.score <= 1.0
    assert [model.name for model in client.models()] == ["brick"]
    outcomes = list(client.stream([_image(1), _image(2)]))
    assert [type(outcome) for outcome in outcomes] == [DetectionResult, DetectionResult]
    assert [outcome.model for outcome in outcomes] == ["brick", "brick"]


def _code(call) -> grpc.StatusCode:
    with pytest.raises(VisInspectError) as caught:
        call()
    return caught.value.code


# --- TLS -------------------------------------------------------------------------------------------------------


def test_tls_client_with_the_ca_and_a_token_is_served(tls_server: ServerProcess, pki: Pki) -> None:
    with _client(tls_server, TlsConfig(ca_cert=pki.ca), TOKENS_FILE_TOKENS[0]) as client:
        _assert_served(client)
    assert any(entry.get("message") == "gRPC transport: TLS, bearer tokens (2)" for entry in tls_server.logs)
    assert not any("travel unencrypted" in entry.get("message", "") for entry in tls_server.logs)


def test_plaintext_client_to_a_tls_server_is_unavailable(tls_server: ServerProcess) -> None:
    with _client(tls_server, token=TOKENS_FILE_TOKENS[0]) as client:
        assert _code(lambda: client.detect(_image())) == grpc.StatusCode.UNAVAILABLE


def test_client_that_does_not_trust_the_server_certificate_is_unavailable(tls_server: ServerProcess, pki: Pki) -> None:
    with _client(tls_server, TlsConfig(ca_cert=pki.stranger_ca), TOKENS_FILE_TOKENS[0]) as client:
        assert _code(lambda: client.detect(_image())) == grpc.StatusCode.UNAVAILABLE
    with _client(tls_server, TlsConfig(ca_cert=pki.ca), TOKENS_FILE_TOKENS[1]) as client:
        assert client.detect(_image()).model == "brick"  # the server kept serving


# --- tokens ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "not-a-token", TOKENS_FILE_TOKENS[0] + "x", "old-token"])
def test_calls_without_a_valid_token_are_unauthenticated(
    tls_server: ServerProcess, pki: Pki, token: str | None
) -> None:
    with _client(tls_server, TlsConfig(ca_cert=pki.ca), token) as client:
        for call in (
            lambda: client.detect(_image()),
            client.models,
            lambda: list(client.stream([_image(1), _image(2)])),
        ):
            with pytest.raises(VisInspectError) as caught:
                call()
            assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert "missing or invalid bearer token" in caught.value.details
        assert client.health() == "SERVING"  # health stays open


def test_every_token_of_the_file_is_accepted(tls_server: ServerProcess, pki: Pki) -> None:
    for token in TOKENS_FILE_TOKENS:
        with _client(tls_server, TlsConfig(ca_cert=pki.ca), token) as client:
            assert client.detect(_image()).model == "brick"


def test_tokens_from_the_environment(token_server: ServerProcess) -> None:
    for token in ENV_TOKENS:
        with _client(token_server, token=token) as client:
            _assert_served(client)
    with _client(token_server, token="env-token-c") as client:
        assert _code(lambda: client.detect(_image())) == grpc.StatusCode.UNAUTHENTICATED
    with _client(token_server) as client:
        assert _code(client.models) == grpc.StatusCode.UNAUTHENTICATED
        assert client.health() == "SERVING"
    assert any(entry.get("message") == "gRPC transport: plaintext, bearer tokens (2)" for entry in token_server.logs)
    assert any("bearer tokens travel unencrypted" in entry.get("message", "") for entry in token_server.logs)
    assert not any(token in str(entry) for entry in token_server.logs for token in ENV_TOKENS)


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Bearer"),),
        (("authorization", "Bearer "),),
        (("authorization", f"Basic {ENV_TOKENS[0]}"),),
        (("authorization", ENV_TOKENS[0]),),
        (("authorization", f"Bearer {ENV_TOKENS[0][:-1]}"),),
        (("authorization", f"Bearer {ENV_TOKENS[0]}"), ("authorization", "Bearer other")),
        (("x-token", f"Bearer {ENV_TOKENS[0]}"),),
    ],
)
def test_malformed_authorization_metadata_is_unauthenticated(token_server: ServerProcess, metadata) -> None:
    with token_server.channel() as channel:
        stub = inspection_pb2_grpc.InspectionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListModels(inspection_pb2.ListModelsRequest(), metadata=metadata, timeout=TIMEOUT_S)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = stub.ListModels(
            inspection_pb2.ListModelsRequest(),
            metadata=(("authorization", f"bearer {ENV_TOKENS[1]}"),),  # the scheme is case-insensitive
            timeout=TIMEOUT_S,
        )
        assert [model.name for model in reply.models] == ["brick"]


def _reflection_services(channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    replies = stub.ServerReflectionInfo(iter([request]), metadata=metadata, timeout=TIMEOUT_S)
    return [service.name for reply in replies for service in reply.list_services_response.service]


def test_reflection_and_unknown_methods_need_the_token(token_server: ServerProcess) -> None:
    good = (("authorization", f"Bearer {ENV_TOKENS[0]}"),)
    with token_server.channel() as channel:
        with pytest.raises(grpc.RpcError) as caught:
            _reflection_services(channel, ())
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "visinspect.v1.InspectionService" in _reflection_services(channel, good)
        unknown = channel.unary_unary("/visinspect.v1.InspectionService/Nope")
        with pytest.raises(grpc.RpcError) as caught:
            unknown(b"", timeout=TIMEOUT_S)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED  # not telling which methods exist
        with pytest.raises(grpc.RpcError) as caught:
            unknown(b"", metadata=good, timeout=TIMEOUT_S)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_rejected_calls_are_counted(token_server: ServerProcess) -> None:
    with token_server.channel() as channel:
        stub = inspection_pb2_grpc.InspectionServiceStub(channel)
        for _ in range(3):
            with pytest.raises(grpc.RpcError):
                stub.Detect(inspection_pb2.DetectRequest(), timeout=TIMEOUT_S)
        with pytest.raises(grpc.RpcError):
            channel.unary_unary("/no.Such/Method")(b"", timeout=TIMEOUT_S)
    url = f"http://127.0.0.1:{token_server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as reply:
        text = reply.read().decode()
    detect = re.search(rf'^visinspect_auth_rejected_total{{method="{DETECT}"}} (\S+)$', text, re.MULTILINE)
    unknown = re.search(r'^visinspect_auth_rejected_total{method="unknown"} (\S+)$', text, re.MULTILINE)
    assert detect is not None and float(detect.group(1)) >= 3, text
    assert unknown is not None and float(unknown.group(1)) >= 1, text
    assert "/no.Such/Method" not in text


def test_concurrent_streams_per_connection_are_limited(token_server: ServerProcess) -> None:
    """With --max-concurrent-streams 3, a fourth call on the same connection waits until a stream ends."""
    request = health_pb2.HealthCheckRequest(service="")
    with token_server.channel() as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watches = [stub.Watch(request) for _ in range(3)]
        try:
            for watch in watches:
                assert next(watch).status == health_pb2.HealthCheckResponse.SERVING  # the stream is open
            with pytest.raises(grpc.RpcError) as caught:
                stub.Check(request, timeout=3)
            assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            own_connection = [("grpc.use_local_subchannel_pool", 1)]  # channels otherwise share connections
            with grpc.insecure_channel(token_server.address, options=own_connection) as other:
                reply = health_pb2_grpc.HealthStub(other).Check(request, timeout=TIMEOUT_S)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING  # the limit is per connection
            watches[0].cancel()
            assert stub.Check(request, timeout=TIMEOUT_S).status == health_pb2.HealthCheckResponse.SERVING
        finally:
            for watch in watches:
                watch.cancel()


# --- mutual TLS ------------------------------------------------------------------------------------------------


def test_mutual_tls_client_with_a_trusted_certificate_is_served(mtls_server: ServerProcess, pki: Pki) -> None:
    tls = TlsConfig(ca_cert=pki.ca, client_cert=pki.client_cert, client_key=pki.client_key)
    with _client(mtls_server, tls) as client:
        _assert_served(client)
        assert client.health() == "SERVING"
    assert any(entry.get("message") == "gRPC transport: mutual TLS, no tokens" for entry in mtls_server.logs)


@pytest.mark.parametrize("certificate", ["none", "untrusted"])
def test_mutual_tls_rejects_clients_without_a_trusted_certificate(
    mtls_server: ServerProcess, pki: Pki, certificate: str
) -> None:
    if certificate == "none":
        tls = TlsConfig(ca_cert=pki.ca)
    else:
        tls = TlsConfig(ca_cert=pki.ca, client_cert=pki.stranger_cert, client_key=pki.stranger_key)
    with _client(mtls_server, tls) as client:
        assert _code(lambda: client.detect(_image())) == grpc.StatusCode.UNAVAILABLE
        assert _code(client.health) == grpc.StatusCode.UNAVAILABLE
    trusted = TlsConfig(ca_cert=pki.ca, client_cert=pki.client_cert, client_key=pki.client_key)
    with _client(mtls_server, trusted) as client:
        assert client.detect(_image()).model == "brick"  # the server kept serving


# --- the health command ----------------------------------------------------------------------------------------


def _health(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "visinspect_server.main", "health", "--timeout-s", "20", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_health_command_over_tls(tls_server: ServerProcess, mtls_server: ServerProcess, pki: Pki) -> None:
    done = _health("--address", tls_server.address, "--tls-ca", str(pki.ca))
    assert (done.returncode, done.stdout) == (0, "SERVING\n"), done.stderr
    named = _health("--address", tls_server.address, "--tls-ca", str(pki.ca), "--tls-server-name", "localhost")
    assert (named.returncode, named.stdout) == (0, "SERVING\n"), named.stderr
    mutual = _health(
        "--address", mtls_server.address, "--tls-ca", str(pki.ca),
        "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key),
    )  # fmt: skip
    assert (mutual.returncode, mutual.stdout) == (0, "SERVING\n"), mutual.stderr
    plaintext = _health("--address", tls_server.address)
    assert plaintext.returncode == 1 and "UNAVAILABLE" in plaintext.stderr
    no_client_cert = _health("--address", mtls_server.address, "--tls-ca", str(pki.ca))
    assert no_client_cert.returncode == 1 and "UNAVAILABLE" in no_client_cert.stderr
    wrong_name = _health("--address", tls_server.address, "--tls-ca", str(pki.ca), "--tls-server-name", "other.host")
    assert wrong_name.returncode == 1 and "UNAVAILABLE" in wrong_name.stderr


def test_health_command_rejects_bad_tls_options(pki: Pki, tmp_path: Path) -> None:
    cases = [
        (["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert)], "--tls-cert and --tls-key go together"),
        (
            ["--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)],
            "--tls-cert, --tls-key and --tls-server-name need --tls-ca",
        ),
        (
            ["--tls-ca", str(tmp_path / "missing.pem")],
            f"cannot read --tls-ca '{tmp_path / 'missing.pem'}': No such file or directory",
        ),
    ]
    for args, message in cases:
        done = _health("--address", "127.0.0.1:9", *args)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [f"visinspect-server health: error: {message}"], done.stderr
        assert "Traceback" not in done.stderr


# --- bad settings ----------------------------------------------------------------------------------------------


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "visinspect_server.main", "serve", "--port", "0", "--metrics-port", "-1", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, env=env)


def _bad_settings_cases(pki: Pki, folder: Path) -> list[tuple[list[str], dict[str, str], str]]:
    not_pem = folder / "notes.txt"
    not_pem.write_text("hello\n")
    empty_tokens = folder / "empty-tokens.txt"
    empty_tokens.write_text("# nobody yet\n\n")
    spaced_tokens = folder / "spaced-tokens.txt"
    spaced_tokens.write_text("good-token\nbad token\n")
    missing = folder / "missing.pem"
    cert, key = ["--tls-cert", str(pki.server_cert)], ["--tls-key", str(pki.server_key)]
    return [
        (cert, {}, "tls_cert and tls_key go together: set both (TLS) or neither (plaintext)"),
        (key, {}, "tls_cert and tls_key go together: set both (TLS) or neither (plaintext)"),
        (["--tls-client-ca", str(pki.ca)], {}, "tls_client_ca (mutual TLS) needs tls_cert and tls_key"),
        (["--tls-cert", str(missing), *key], {}, f"cannot read tls_cert '{missing}': No such file or directory"),
        ([*cert, "--tls-key", str(missing)], {}, f"cannot read tls_key '{missing}': No such file or directory"),
        (["--tls-cert", str(not_pem), *key], {}, f"tls_cert '{not_pem}' is not a PEM certificate"),
        ([*cert, "--tls-key", str(pki.server_cert)], {}, f"tls_key '{pki.server_cert}' is not a PEM private key"),
        ([*cert, "--tls-key", str(pki.wrong_key)], {}, "tls_key does not match tls_cert (or one of them is damaged)"),
        ([*cert, *key, "--tls-client-ca", str(not_pem)], {}, f"tls_client_ca '{not_pem}' is not a PEM certificate"),
        (["--auth-tokens-file", str(missing)], {}, f"cannot read auth_tokens_file '{missing}': No such file"),
        (["--auth-tokens-file", str(empty_tokens)], {}, f"auth_tokens_file '{empty_tokens}' holds no token"),
        (["--auth-tokens-file", str(spaced_tokens)], {}, "line 2: a token may not contain white space"),
        ([], {"VISINSPECT_AUTH_TOKENS": "one, two three"}, "auth_tokens must be non-empty and free of white space"),
        (["--max-concurrent-streams", "0"], {}, "invalid setting max_concurrent_streams=0"),
    ]


def test_bad_security_settings_exit_2_with_one_line(pki: Pki, tmp_path: Path) -> None:
    for args, env, message in _bad_settings_cases(pki, tmp_path):
        done = _serve("--model-repository", str(tmp_path), *args, env={**os.environ, **env})
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
        assert done.returncode == 2, (args, done.stderr)
        assert last.startswith("visinspect-server serve: error: ") and message in last, (args, done.stderr)
        assert "Traceback" not in done.stderr and "usage:" not in done.stderr, done.stderr
        assert "two three" not in done.stderr  # tokens are never echoed
