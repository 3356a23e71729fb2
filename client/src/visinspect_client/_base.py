"""What the blocking and the asyncio clients share: everything but the calls themselves.

:class:`ClientBase` builds the connection (target, credentials, channel options, metadata, retry policy, the
stub, the per-server health probes) and turns failed calls into the SDK's errors; :class:`HealthRound` walks a
target's servers for a health answer. A client adds only its channel module (``grpc`` or ``grpc.aio``) and
the calls, blocking or awaited.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, ClassVar, Generic, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from visinspect_api.v1 import inspection_pb2_grpc as pb_grpc
from visinspect_client.connection import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_RETRY,
    DEFAULT_TARGET,
    HealthSeen,
    Metadata,
    RetryPolicy,
    ServerTarget,
    Target,
    TlsConfig,
    channel_credentials,
    channel_options,
    open_channel,
    plaintext_metadata,
)
from visinspect_client.errors import from_rpc_error

ChannelT = TypeVar("ChannelT")


class ClientBase(Generic[ChannelT]):
    """The connection of a client (see :class:`~visinspect_client.InspectionClient` for the arguments).

    ``ChannelT`` is the channel class of ``_grpc``, the module a subclass dials with.
    """

    _grpc: ClassVar[ModuleType]

    def __init__(
        self,
        target: Target = DEFAULT_TARGET,
        *,
        tls: TlsConfig | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy | None = DEFAULT_RETRY,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._server = ServerTarget.parse(target)
        self.target = self._server.label
        self.timeout = timeout
        self._credentials = channel_credentials(tls, token)
        self._probe_options = channel_options(None, max_message_bytes, tls, balanced=False)
        options = channel_options(retry, max_message_bytes, tls, self._server.authority)
        self._channel: ChannelT = open_channel(self._grpc, self._server.uri, options, self._credentials)
        self._metadata = plaintext_metadata(tls, token)
        self._stub = pb_grpc.InspectionServiceStub(self._channel)
        self._probes: dict[str, ChannelT] = {}
        self._probes_lock = threading.Lock()  # the blocking client's probes may be opened from several threads

    def _deadline(self, timeout: float | None) -> float:
        """A call's timeout: the given one, or the client's default."""
        return self.timeout if timeout is None else timeout

    @contextlib.contextmanager
    def _rpc_errors(self, timeout: float | None) -> Iterator[None]:
        """Raise a call's :class:`grpc.RpcError` (blocking or asyncio) as a :class:`VisInspectError` ``from`` it."""
        try:
            yield
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.target, timeout) from exc

    def _probe(self, address: str) -> ChannelT:
        """A channel to one server that is not steered by health (it asks for it)."""
        with self._probes_lock:
            if address not in self._probes:
                self._probes[address] = open_channel(self._grpc, address, self._probe_options, self._credentials)
            return self._probes[address]

    def _take_probes(self) -> list[ChannelT]:
        """The probe channels, forgotten (for the caller to close)."""
        with self._probes_lock:
            probes, self._probes = self._probes, {}
        return list(probes.values())

    def _health_round(self, service: str, timeout: float | None) -> HealthRound:
        """A health question about ``service`` for each of the target's servers."""
        return HealthRound(service, self._server.addresses, self._deadline(timeout), self._metadata, self._probe)


class HealthRound:
    """One grpc.health.v1 question put to a target's servers in turn, until one answers SERVING.

    Iterating gives, per server, a function that makes the Check call (its response, or an awaitable of it);
    the client calls it inside ``with round.recording():`` (which records a failed call) and passes the
    response to :meth:`record`. :meth:`result` is the health of the whole target.
    """

    def __init__(
        self,
        service: str,
        addresses: tuple[str, ...],
        deadline: float,
        metadata: Metadata,
        channel: Callable[[str], Any],
    ) -> None:
        self._request = health_pb2.HealthCheckRequest(service=service)
        self._addresses = addresses
        self._deadline = deadline
        self._metadata = metadata
        self._channel = channel
        self._address = ""
        self._seen = HealthSeen()

    def __iter__(self) -> Iterator[Callable[[], Any]]:
        for address in self._addresses:
            self._address = address
            stub = health_pb2_grpc.HealthStub(self._channel(address))
            yield functools.partial(stub.Check, self._request, timeout=self._deadline, metadata=self._metadata)
            if self._seen.serving:
                break

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Record a failed Check of the current server (and go on with the next one)."""
        try:
            yield
        except grpc.RpcError as exc:
            self._seen.error(exc, self._address, self._deadline)

    def record(self, response: health_pb2.HealthCheckResponse) -> None:
        """The current server's answer."""
        self._seen.status(response.status)

    def result(self) -> str:
        """The target's health: SERVING when one server is, else the first answer; raises when none answered."""
        return self._seen.result()
