"""How a client connects: one or several servers, TLS, the bearer token, load balancing, health checking,
retries (all in gRPC's service config) and message limits.

Shared by the blocking and the asyncio clients: they differ only in the channel class they build.

Calls are spread over every address of the target with gRPC's ``round_robin``, and each server's
``grpc.health.v1`` status is watched (gRPC client-side health checking): a server that is starting,
draining for a restart or without a model gets no calls while another one can take them. A call refused
with UNAVAILABLE is retried by gRPC (the retry policy), and each attempt is balanced anew, so it lands
on another server.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from visinspect_client._protocol import SERVICE
from visinspect_client.errors import VisInspectError, from_rpc_error

DEFAULT_TARGET = "localhost:50051"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
RECONNECT_INITIAL_MS = 200
RECONNECT_MAX_MS = 3000

HEALTH_SERVICE = ""  # the whole server's health: every grpc.health.v1 server knows it

PemSource = Path | bytes | str | None
Metadata = tuple[tuple[str, str], ...]
Target = str | Sequence[str]


@dataclass(frozen=True)
class ServerTarget:
    """Where a client connects. ``uri`` is what gRPC dials; ``authority`` the name it presents (None: gRPC's
    default); ``addresses`` the servers one by one (for per-server health checks); ``label`` names it in
    errors."""

    uri: str
    authority: str | None
    addresses: tuple[str, ...]
    label: str

    @classmethod
    def parse(cls, target: Target) -> ServerTarget:
        """One address (``host:port``, or any gRPC target URI such as ``dns:///name:port``), or several
        (a sequence, or one string with commas). A name given alone is resolved by gRPC, again whenever
        connections fail (a Kubernetes headless Service: every pod). Names in a list are resolved here, once."""
        entries = [target] if isinstance(target, str) else list(target)
        parts = [part.strip() for entry in entries for part in entry.split(",") if part.strip()]
        if not parts:
            raise ValueError("no server address given")
        if len(parts) == 1:
            return cls(parts[0], None, (parts[0],), parts[0])
        resolved: list[str] = []
        for part in parts:
            resolved.extend(address for address in _resolve(part) if address not in resolved)
        if not resolved:
            raise ValueError(f"none of the server addresses {', '.join(parts)} resolves to an IP address")
        ipv6 = {address.startswith("[") for address in resolved}  # _resolve brackets IPv6 addresses
        if len(ipv6) > 1:
            raise ValueError(f"the server addresses mix IPv4 and IPv6 ({', '.join(resolved)}): use one family")
        scheme = "ipv6" if ipv6 == {True} else "ipv4"
        return cls(f"{scheme}:{','.join(resolved)}", parts[0], tuple(parts), ",".join(parts))


def _split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"server address {address!r} is not host:port")
    return host.strip("[]"), int(port)


def _resolve(address: str) -> list[str]:
    """``address``'s IP addresses as gRPC ``ipv4:``/``ipv6:`` entries (IPv4 preferred); [] when unresolvable."""
    host, port = _split_host_port(address)
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        return [f"[{literal}]:{port}" if literal.version == 6 else f"{literal}:{port}"]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    v4 = [f"{info[4][0]}:{port}" for info in infos if info[0] == socket.AF_INET]
    v6 = [f"[{info[4][0]}]:{port}" for info in infos if info[0] == socket.AF_INET6]
    return list(dict.fromkeys(v4 or v6))


@dataclass(frozen=True)
class TlsConfig:
    """TLS settings. ``ca_cert`` verifies the server (None: the system roots); ``client_cert`` with
    ``client_key`` enables mutual TLS; ``server_name`` overrides the name checked in the server's certificate.
    Each PEM is a path or the PEM bytes."""

    ca_cert: PemSource = None
    client_cert: PemSource = None
    client_key: PemSource = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("mutual TLS needs both client_cert and client_key (or neither)")

    def credentials(self) -> grpc.ChannelCredentials:
        """``grpc.ssl_channel_credentials`` for these files."""
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca_cert),
            private_key=_pem(self.client_key),
            certificate_chain=_pem(self.client_cert),
        )


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC retries of calls that fail with UNAVAILABLE (nothing listening yet, model still loading, server
    restarting), with exponential back-off and jitter, done by gRPC itself.

    gRPC caps ``max_attempts`` at 5. The ``timeout`` of a call bounds all its attempts together.
    """

    max_attempts: int = 5
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 3.0
    backoff_multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not 2 <= self.max_attempts <= 5:
            raise ValueError(f"max_attempts must be 2..5 (gRPC's limit), got {self.max_attempts}")
        if self.initial_backoff_s <= 0 or self.max_backoff_s <= 0 or self.backoff_multiplier <= 0:
            raise ValueError("back-off times and multiplier must be positive")

    def method_config(self) -> dict[str, object]:
        """The service config's ``methodConfig`` entry applying this policy to every InspectionService method."""
        return {
            "name": [{"service": SERVICE}],
            "retryPolicy": {
                "maxAttempts": self.max_attempts,
                "initialBackoff": _duration(self.initial_backoff_s),
                "maxBackoff": _duration(self.max_backoff_s),
                "backoffMultiplier": self.backoff_multiplier,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }


DEFAULT_RETRY = RetryPolicy()


def service_config(retry: RetryPolicy | None) -> str:
    """The ``grpc.service_config`` JSON: round-robin over every address, skipping servers whose health is not
    SERVING, and the retry policy (when given)."""
    config: dict[str, object] = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": HEALTH_SERVICE},
    }
    if retry is not None:
        config["methodConfig"] = [retry.method_config()]
    return json.dumps(config)


def channel_options(
    retry: RetryPolicy | None,
    max_message_bytes: int,
    tls: TlsConfig | None,
    authority: str | None = None,
    *,
    balanced: bool = True,
) -> list[tuple[str, str | int]]:
    """Channel arguments: message limits, balancing and health checking (unless ``balanced`` is False: a
    channel that asks one server for its health), retries (or none), reconnect pace, the authority of a list
    of servers, and the TLS name override."""
    options: list[tuple[str, str | int]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.enable_retries", 0 if retry is None else 1),
        # gRPC's reconnect back-off otherwise grows to 2 minutes; while it waits, every call (and retry)
        # fails at once. Reconnecting at least every few seconds lets a restarted server be used promptly.
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_INITIAL_MS),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_MAX_MS),
    ]
    if balanced:
        options.append(("grpc.service_config", service_config(retry)))
    if authority is not None:
        options.append(("grpc.default_authority", authority))
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return options


def open_channel(
    api: Any,
    uri: str,
    options: list[tuple[str, str | int]],
    credentials: grpc.ChannelCredentials | None,
) -> Any:
    """A channel from ``api`` (``grpc`` or ``grpc.aio``: the same two constructors): TLS with ``credentials``,
    plaintext without."""
    if credentials is None:
        return api.insecure_channel(uri, options=options)
    return api.secure_channel(uri, credentials, options=options)


class HealthSeen:
    """Health answers from the servers of a target, one by one: the best status wins ("SERVING" if any)."""

    def __init__(self) -> None:
        self._statuses: list[str] = []
        self._error: VisInspectError | None = None

    @property
    def serving(self) -> bool:
        """Whether some server answered SERVING (no need to ask the others)."""
        return "SERVING" in self._statuses

    def status(self, status: int) -> None:
        """A server's answer."""
        self._statuses.append(health_pb2.HealthCheckResponse.ServingStatus.Name(status))

    def error(self, error: grpc.RpcError, address: str, timeout: float) -> None:
        """A failed check: NOT_FOUND means the service is unknown there; anything else, unreachable."""
        if error.code() == grpc.StatusCode.NOT_FOUND:
            self._statuses.append("SERVICE_UNKNOWN")
        else:
            self._error = from_rpc_error(error, address, timeout)

    def result(self) -> str:
        """SERVING when one server is; otherwise the first answer; raises when no server answered."""
        if self.serving:
            return "SERVING"
        if self._statuses:
            return self._statuses[0]
        assert self._error is not None
        raise self._error


def channel_credentials(tls: TlsConfig | None, token: str | None) -> grpc.ChannelCredentials | None:
    """TLS credentials, composed with the bearer token as call credentials; None for a plaintext channel."""
    if tls is None:
        return None
    credentials = tls.credentials()
    if token:
        credentials = grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(token))
    return credentials


def plaintext_metadata(tls: TlsConfig | None, token: str | None) -> Metadata:
    """Metadata sent on every call of a plaintext channel: ``authorization: Bearer <token>`` when given.

    (gRPC refuses call credentials on insecure channels; with TLS the token travels as call credentials.)
    """
    if tls is None and token:
        return (("authorization", f"Bearer {token}"),)
    return ()


def _pem(source: PemSource) -> bytes | None:
    if source is None:
        return None
    if isinstance(source, bytes):
        return source
    try:
        return Path(os.fspath(source)).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the PEM file {str(source)!r}: {exc.strerror}") from exc


def _duration(seconds: float) -> str:
    return f"{seconds:.3f}s"
