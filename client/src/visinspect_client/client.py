"""The blocking client."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Self, TypeVar, Unpack

import grpc

from visinspect_api.detection import MapSize
from visinspect_api.model_repository import ExpectedRates
from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_client._base import ClientBase
from visinspect_client._protocol import (
    DetectKwargs,
    DetectOptions,
    detect_request,
    detection_result,
    model_details,
    model_infos,
    split_options,
)
from visinspect_client._streaming import Outcome, StreamLedger
from visinspect_client.errors import InvalidImageError, error_for, from_rpc_error
from visinspect_client.inputs import ImageLike, describe
from visinspect_client.results import DetectionFailure, DetectionResult, ModelDetails, ModelInfo

Response = TypeVar("Response")


class InspectionClient(ClientBase[grpc.Channel]):
    """A blocking client of the visual inspection service.

    ``target`` is one server (``host:port``; a name that resolves to several addresses, such as a Kubernetes
    headless Service, reaches all of them) or several (a list, or ``"host1:port,host2:port"``): calls are
    spread over the servers whose health is SERVING, and one refused with UNAVAILABLE (a server restarting)
    is retried on another. ``timeout`` is each call's default deadline in seconds (retries included);
    ``retry=None`` disables gRPC's retries of UNAVAILABLE. ``token`` is sent as ``authorization: Bearer
    <token>`` on every call. Use it as a context manager, or call :meth:`close`. Safe to share between threads.
    """

    _grpc = grpc

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channels (pending calls are cancelled)."""
        self._channel.close()
        for probe in self._take_probes():
            probe.close()

    def detect(
        self,
        image: ImageLike,
        *,
        model: str = "",
        version: int = 0,
        threshold: float | None = None,
        anomaly_map: bool = False,
        mask: bool = False,
        regions: bool = False,
        map_size: MapSize = "model",
        request_id: str = "",
        timeout: float | None = None,
    ) -> DetectionResult:
        """Score one image.

        ``image``: a local file path, encoded bytes, an HxW/HxWxC uint8 RGB(A) array, a PIL image, or a
        :class:`ServerPath`. ``model``/``version``: empty/0 for the server's default. ``threshold``: the
        normalised decision threshold in [0, 1] (default: the model's, 0.5). ``anomaly_map``, ``mask``,
        ``regions``: optional outputs, at ``map_size`` "model" or "original". Raises a :class:`VisInspectError`.
        """
        options = DetectOptions(model, version, threshold, anomaly_map, mask, regions, map_size)
        request = detect_request(image, options, request_id)
        started = time.perf_counter()
        response = self._call(self._stub.Detect, request, timeout)
        return detection_result(response, (time.perf_counter() - started) * 1e3)

    def detect_iter(
        self, images: Iterable[ImageLike], *, concurrency: int = 4, **detect_options: Unpack[DetectKwargs]
    ) -> Iterator[Outcome]:
        """Like :meth:`detect_many`, lazily: inputs are read as calls free up, outcomes yielded in input order."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        options, request_id, timeout = split_options(detect_options)  # checked now, not at the first next()
        return self._detect_iter(images, concurrency, options, request_id, self._deadline(timeout))

    def _detect_iter(
        self, images: Iterable[ImageLike], concurrency: int, options: DetectOptions, request_id: str, deadline: float
    ) -> Iterator[Outcome]:
        window: collections.deque[_Pending | DetectionFailure] = collections.deque()
        in_flight = 0

        def pop() -> Outcome:
            nonlocal in_flight
            head = window.popleft()
            if isinstance(head, DetectionFailure):
                return head
            in_flight -= 1
            return head.outcome(self.target, deadline)

        try:
            for index, image in enumerate(images):
                while in_flight >= concurrency:  # wait for the oldest call to free a slot
                    yield pop()
                pending = self._submit(index, image, options, request_id, deadline)
                window.append(pending)
                in_flight += isinstance(pending, _Pending)
                while window and (isinstance(window[0], DetectionFailure) or window[0].future.done()):
                    yield pop()  # whatever is ready, without waiting
            while window:
                yield pop()
        finally:
            for pending in window:
                if isinstance(pending, _Pending):
                    pending.future.cancel()

    def detect_many(
        self, images: Iterable[ImageLike], *, concurrency: int = 4, **detect_options: Unpack[DetectKwargs]
    ) -> list[Outcome]:
        """Score many images with at most ``concurrency`` calls in flight.

        Returns one entry per input, in input order: a :class:`DetectionResult`, or a :class:`DetectionFailure`
        for an image that failed (the others are still scored). ``detect_options`` are :meth:`detect`'s
        keywords; ``request_id``, when given, becomes each request's prefix (``<id>-<index>``).
        """
        return list(self.detect_iter(images, concurrency=concurrency, **detect_options))

    def stream(self, images: Iterable[ImageLike], **detect_options: Unpack[DetectKwargs]) -> Iterator[Outcome]:
        """Score a stream of images (a camera loop) over one DetectStream call.

        Lazy: ``images`` is consumed as the server accepts requests (it keeps a few in flight); outcomes are
        yielded in input order, failures as :class:`DetectionFailure`. ``timeout`` here bounds the whole stream
        (default: none). A broken connection raises a :class:`VisInspectError`.
        """
        options, request_id, timeout = split_options(detect_options)  # checked now, not at the first next()
        return self._stream(images, StreamLedger(options, self.target, request_id), timeout)

    def _stream(self, images: Iterable[ImageLike], ledger: StreamLedger, timeout: float | None) -> Iterator[Outcome]:
        responses = self._stub.DetectStream(ledger.requests(images), timeout=timeout, metadata=self._metadata)
        try:
            with self._rpc_errors(timeout):
                for response in responses:
                    yield from ledger.answer(response)
                yield from ledger.finish()
        finally:
            responses.cancel()
        ledger.raise_input_error()

    def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """The served models and their loaded versions."""
        return model_infos(self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout))

    def model(self, name: str = "", version: int = 0, *, timeout: float | None = None) -> ModelDetails:
        """One model version's details (``name`` may be empty when one model is served; version 0 = newest)."""
        request = pb.DescribeModelRequest(model=name, model_version=version)
        return model_details(self._call(self._stub.DescribeModel, request, timeout))

    def threshold_for_false_reject_rate(
        self, rate: float, model: str = "", version: int = 0, *, timeout: float | None = None
    ) -> float:
        """The normalised threshold (for :meth:`detect`'s ``threshold``) at which ``rate`` of the good parts are
        expected to be rejected, from the model version's calibration scores (one DescribeModel call).

        Raises ValueError when ``rate`` is not in (0, 1), when the model was exported without good calibration
        scores, or when the threshold lies beyond the normalised scale.
        """
        return self.model(model, version, timeout=timeout).threshold_for_false_reject_rate(rate)

    def expected_rates(
        self, threshold: float | None = None, model: str = "", version: int = 0, *, timeout: float | None = None
    ) -> ExpectedRates:
        """The false-reject rate and defect recall to expect at a normalised ``threshold`` (None: the model's
        default), from the model version's calibration scores (one DescribeModel call)."""
        return self.model(model, version, timeout=timeout).expected_rates(threshold)

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The grpc.health.v1 status of ``service`` ("" = the whole server, ``model/<name>`` = one model):
        "SERVING", "NOT_SERVING" or "SERVICE_UNKNOWN"; with several servers, "SERVING" when one of them is.
        Raises when no server can be reached."""
        health = self._health_round(service, timeout)
        for check in health:
            with health.recording():
                health.record(check())
        return health.result()

    def _call(self, method: Callable[..., Response], request: object, timeout: float | None) -> Response:
        deadline = self._deadline(timeout)
        with self._rpc_errors(deadline):
            return method(request, timeout=deadline, metadata=self._metadata)

    def _submit(
        self, index: int, image: ImageLike, options: DetectOptions, request_id: str, timeout: float
    ) -> _Pending | DetectionFailure:
        label = describe(image)
        try:
            request = detect_request(image, options, f"{request_id}-{index}" if request_id else "")
        except InvalidImageError as exc:
            return DetectionFailure(index, label, exc)
        pending = _Pending(index, label, time.perf_counter())
        pending.future = self._stub.Detect.future(request, timeout=timeout, metadata=self._metadata)
        pending.future.add_done_callback(pending.done)
        return pending


class _Pending:
    """An in-flight call of detect_iter; the done callback stamps when the response arrived."""

    def __init__(self, index: int, label: str, started: float) -> None:
        self.index = index
        self.label = label
        self.started = started
        self.finished = 0.0
        self.future: grpc.Future[pb.DetectResponse]

    def done(self, _future: grpc.Future[pb.DetectResponse]) -> None:
        self.finished = time.perf_counter()

    def outcome(self, target: str, timeout: float) -> Outcome:
        try:
            response = self.future.result()
        except grpc.RpcError as exc:
            return DetectionFailure(self.index, self.label, from_rpc_error(exc, target, timeout))
        except grpc.FutureCancelledError:
            error = error_for(grpc.StatusCode.CANCELLED, "the call was cancelled", target)
            return DetectionFailure(self.index, self.label, error)
        finished = self.finished or time.perf_counter()  # the callback may run just after result() returns
        try:
            return detection_result(response, (finished - self.started) * 1e3)
        except (OSError, ValueError) as exc:  # an undecodable heat map or mask PNG
            error = error_for(grpc.StatusCode.INTERNAL, f"its heat map or mask PNG cannot be decoded: {exc}", target)
            return DetectionFailure(self.index, self.label, error)
