"""Transport security of the gRPC port: TLS or mutual TLS credentials, and bearer-token authentication.

Everything is read from files named in :class:`~visinspect_server.settings.ServerSettings` when the server is
built (in ``main()``), never at import time. Problems raise :class:`ValueError` with a one-line message.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from prometheus_client import CollectorRegistry, Counter

if TYPE_CHECKING:
    from visinspect_server.settings import ServerSettings

log = logging.getLogger(__name__)

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)  # health stays open for orchestrators' probes
UNAUTHENTICATED_MESSAGE = "missing or invalid bearer token: send the metadata 'authorization: Bearer <token>'"
_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True)
class ServerSecurity:
    """What guards the port: TLS ``credentials`` (None: plaintext) and the accepted bearer ``tokens`` (empty: no
    authentication)."""

    credentials: grpc.ServerCredentials | None = None
    tokens: tuple[bytes, ...] = field(default=(), repr=False)
    mutual_tls: bool = False

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> ServerSecurity:
        """Read the PEM files and token file the settings name; ValueError when one is unusable."""
        tokens = tuple(settings.auth_tokens)
        if settings.auth_tokens_file is not None:
            tokens += read_token_file(settings.auth_tokens_file)
        credentials = None
        if settings.tls_cert is not None and settings.tls_key is not None:
            chain = _read_pem(settings.tls_cert, "tls_cert", _CERTIFICATE)
            key = _read_pem(settings.tls_key, "tls_key", b"PRIVATE KEY-----")
            _check_pair(key, chain)
            ca = None
            if settings.tls_client_ca is not None:
                ca = _read_pem(settings.tls_client_ca, "tls_client_ca", _CERTIFICATE)
            credentials = grpc.ssl_server_credentials(
                [(key, chain)], root_certificates=ca, require_client_auth=ca is not None
            )
        encoded = tuple(dict.fromkeys(token.encode() for token in tokens))
        return cls(credentials, encoded, settings.tls_client_ca is not None)

    def interceptors(self, registry: CollectorRegistry | None = None) -> list[grpc.aio.ServerInterceptor]:
        """The server interceptors these settings need: the token check, when tokens are configured, counting
        rejected calls in ``visinspect_auth_rejected_total{method}`` of ``registry``."""
        if not self.tokens:
            return []
        on_rejected = None
        if registry is not None:
            counter = Counter(
                "visinspect_auth_rejected", "Calls rejected for a missing or invalid bearer token, by method",
                ["method"], registry=registry,
            )  # fmt: skip
            on_rejected = lambda method: counter.labels(method).inc()  # noqa: E731
        return [TokenAuthInterceptor(self.tokens, on_rejected)]

    def describe(self) -> str:
        """For the startup log line, e.g. ``"mutual TLS, bearer tokens (2)"``."""
        transport = "plaintext" if self.credentials is None else "mutual TLS" if self.mutual_tls else "TLS"
        return f"{transport}, bearer tokens ({len(self.tokens)})" if self.tokens else f"{transport}, no tokens"


def parse_tokens(lines: Iterable[str]) -> tuple[str, ...]:
    """Tokens from a token file's lines: one per line, surrounding spaces stripped, blanks and ``#`` comments
    skipped. A token may not contain white space."""
    tokens: list[str] = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if any(character.isspace() for character in line):
            raise ValueError(f"line {number}: a token may not contain white space")
        tokens.append(line)
    return tuple(tokens)


def read_token_file(path: Path) -> tuple[str, ...]:
    """The tokens of ``path`` (see :func:`parse_tokens`); ValueError when unreadable or without any token."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read auth_tokens_file {str(path)!r}: {_reason(exc)}") from None
    try:
        tokens = parse_tokens(text.splitlines())
    except ValueError as exc:
        raise ValueError(f"auth_tokens_file {str(path)!r}, {exc}") from None
    if not tokens:
        raise ValueError(f"auth_tokens_file {str(path)!r} holds no token")
    return tokens


def _read_pem(path: Path, name: str, marker: bytes) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {name} {str(path)!r}: {_reason(exc)}") from None
    if marker not in data:
        kind = "certificate" if marker == _CERTIFICATE else "private key"
        raise ValueError(f"{name} {str(path)!r} is not a PEM {kind}")
    return data


def _check_pair(key: bytes, chain: bytes) -> None:
    """Fail now, with a clear message, when gRPC cannot use the key with the certificate (it checks at bind)."""
    probe = grpc.server(ThreadPoolExecutor(max_workers=1))
    try:
        probe.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, chain)]))
    except RuntimeError:
        raise ValueError("tls_key does not match tls_cert (or one of them is damaged)") from None
    finally:
        probe.stop(None)


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


Handler: TypeAlias = grpc.RpcMethodHandler  # grpc ships no type information: Any to the checker
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Rejects every call without ``authorization: Bearer <token>`` for a configured token with UNAUTHENTICATED,
    except the health service. Tokens are compared in constant time, each one every time."""

    def __init__(self, tokens: Iterable[bytes], on_rejected: Callable[[str], None] | None = None) -> None:
        self._tokens = tuple(tokens)
        if not self._tokens:
            raise ValueError("TokenAuthInterceptor needs at least one token")
        self._on_rejected = on_rejected

    async def intercept_service(self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails) -> Any:
        """Hand the call on when it is open or carries a valid token; otherwise a handler that aborts it."""
        method = handler_call_details.method
        if method.startswith(OPEN_PREFIXES) or self._authorized(handler_call_details.invocation_metadata):
            return await continuation(handler_call_details)
        handler = await continuation(handler_call_details)
        if self._on_rejected is not None:
            self._on_rejected(method if handler is not None else "unknown")  # bounded label values
        log.warning("rejected %s: missing or invalid bearer token", method if handler is not None else "a call")
        return _rejecting(handler)

    def _authorized(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
        offered = [value for key, value in metadata or () if key == "authorization"]
        if len(offered) != 1:
            return False
        value = offered[0].encode() if isinstance(offered[0], str) else offered[0]
        scheme, _, token = value.partition(b" ")
        if scheme.lower() != b"bearer" or not token:
            return False
        matched = False
        for known in self._tokens:  # no early exit: the time taken does not tell which token nearly matched
            matched |= hmac.compare_digest(token.strip(), known)
        return matched


async def _abort(_request: object, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)


def _rejecting(handler: Handler | None) -> Handler:
    """A handler of the same streaming kind as ``handler`` that fails the call with UNAUTHENTICATED unread."""
    if handler is None:  # an unknown method: do not tell unauthenticated callers which methods exist
        return grpc.unary_unary_rpc_method_handler(_abort)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(_abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(_abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_abort)
    return grpc.unary_unary_rpc_method_handler(_abort)
