"""Bookkeeping for DetectStream shared by both clients: which request each response answers, and where
local input failures (never sent) fall in the input order."""

from __future__ import annotations

import collections
import contextlib
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass

from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_client._protocol import DetectOptions, detect_request, detection_result
from visinspect_client.errors import InvalidImageError, ServerError, error_for_number
from visinspect_client.inputs import ImageLike, describe
from visinspect_client.results import DetectionFailure, DetectionResult

Outcome = DetectionResult | DetectionFailure


@dataclass(frozen=True)
class _Sent:
    index: int
    label: str
    request_id: str
    started: float


class StreamLedger:
    """Turns inputs into requests (recording them) and responses into outcomes in input order.

    ``request`` (through :meth:`requests`) may be called from gRPC's request-consuming thread while ``answer``
    runs in the caller's: a deque's append and popleft are thread-safe, and a response can only arrive after its
    request was recorded. An exception reading the inputs ends the requests; :meth:`raise_input_error` raises it
    in the caller's thread or task once the responses are all in.
    """

    def __init__(self, options: DetectOptions, target: str, request_id_prefix: str = "") -> None:
        self._options = options
        self._target = target
        self._prefix = request_id_prefix or secrets.token_hex(4)
        self._slots: collections.deque[_Sent | DetectionFailure] = collections.deque()
        self._input_errors: list[Exception] = []

    def requests(self, images: Iterable[ImageLike]) -> Iterator[pb.DetectRequest]:
        """The requests for ``images`` (for the blocking DetectStream call)."""
        with self._keeping_input_error():
            for index, image in enumerate(images):
                if (request := self.request(index, image)) is not None:
                    yield request

    async def async_requests(
        self, images: Iterable[ImageLike] | AsyncIterable[ImageLike]
    ) -> AsyncIterator[pb.DetectRequest]:
        """The requests for ``images``, which may be an async iterable (for the asyncio DetectStream call)."""
        with self._keeping_input_error():
            index = 0
            async for image in _aiter(images):
                request = self.request(index, image)
                index += 1
                if request is not None:
                    yield request

    def raise_input_error(self) -> None:
        """Raise the exception that ended the inputs early, if one did."""
        if self._input_errors:
            raise self._input_errors[0]

    @contextlib.contextmanager
    def _keeping_input_error(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - re-raised to the caller once the stream ends
            self._input_errors.append(exc)

    def request(self, index: int, image: ImageLike) -> pb.DetectRequest | None:
        """The request for input ``index``, or None after recording a local failure (nothing to send)."""
        label = describe(image)
        try:
            request = detect_request(image, self._options, f"{self._prefix}-{index}")
        except InvalidImageError as exc:
            self._slots.append(DetectionFailure(index, label, exc))
            return None
        self._slots.append(_Sent(index, label, request.request_id, time.perf_counter()))
        return request

    def answer(self, response: pb.DetectStreamResponse) -> list[Outcome]:
        """The local failures queued before this response's request, then the response's outcome."""
        outcomes: list[Outcome] = self._leading_failures()
        if not self._slots:
            raise ServerError(f"the server at {self._target} answered a request that was never sent")
        sent = self._slots.popleft()
        assert isinstance(sent, _Sent)  # _leading_failures stopped at a sent request
        if response.request_id != sent.request_id:
            raise ServerError(
                f"the server at {self._target} answered {response.request_id!r} where {sent.request_id!r} "
                "was expected; responses must come in request order"
            )
        if response.HasField("error"):
            error = error_for_number(response.error.code, response.error.message, self._target)
            outcomes.append(DetectionFailure(sent.index, sent.label, error))
        else:
            latency_ms = (time.perf_counter() - sent.started) * 1e3
            outcomes.append(detection_result(response.result, latency_ms))
        return outcomes

    def finish(self) -> list[Outcome]:
        """Failures left after the last response (the stream ended)."""
        outcomes = self._leading_failures()
        if self._slots:
            raise ServerError(f"the stream from {self._target} ended with {len(self._slots)} request(s) unanswered")
        return outcomes

    def _leading_failures(self) -> list[Outcome]:
        failures: list[Outcome] = []
        while self._slots and isinstance(self._slots[0], DetectionFailure):
            failures.append(self._slots.popleft())  # type: ignore[arg-type]
        return failures


async def _aiter(images: Iterable[ImageLike] | AsyncIterable[ImageLike]) -> AsyncIterator[ImageLike]:
    if isinstance(images, AsyncIterable):
        async for image in images:
            yield image
    else:
        for image in images:
            yield image
