"""How a client connects: TLS, the bearer token, retries (gRPC's service config) and message limits.

Shared by the blocking and the asyncio clients: they differ only in the channel class they build.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import grpc

from visinspect_client._protocol import SERVICE

DEFAULT_TARGET = "localhost:50051"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
RECONNECT_INITIAL_MS = 200
RECONNECT_MAX_MS = 3000

PemSource = Path | bytes | str | None
Metadata = tuple[tuple[str, str], ...]


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

    def service_config(self) -> str:
        """The ``grpc.service_config`` JSON applying this policy to every InspectionService method."""
        return json.dumps(
            {
                "methodConfig": [
                    {
                        "name": [{"service": SERVICE}],
                        "retryPolicy": {
                            "maxAttempts": self.max_attempts,
                            "initialBackoff": _duration(self.initial_backoff_s),
                            "maxBackoff": _duration(self.max_backoff_s),
                            "backoffMultiplier": self.backoff_multiplier,
                            "retryableStatusCodes": ["UNAVAILABLE"],
                        },
                    }
                ]
            }
        )


def channel_options(
    retry: RetryPolicy | None, max_message_bytes: int, tls: TlsConfig | None
) -> list[tuple[str, str | int]]:
    """Channel arguments: message limits, retries (or none), reconnect pace and the TLS name override."""
    options: list[tuple[str, str | int]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.enable_retries", 0 if retry is None else 1),
        # gRPC's reconnect back-off otherwise grows to 2 minutes; while it waits, every call (and retry)
        # fails at once. Reconnecting at least every few seconds lets a restarted server be used promptly.
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_INITIAL_MS),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_MAX_MS),
    ]
    if retry is not None:
        options.append(("grpc.service_config", retry.service_config()))
    if tls is not None and tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return options


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
