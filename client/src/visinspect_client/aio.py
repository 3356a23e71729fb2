"""The asyncio client: :class:`InspectionClient`'s methods as coroutines, on a ``grpc.aio`` channel."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
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
from visinspect_client.errors import VisInspectError
from visinspect_client.inputs import ImageLike, describe
from visinspect_client.results import DetectionFailure, DetectionResult, ModelDetails, ModelInfo

Response = TypeVar("Response")


class AsyncInspectionClient(ClientBase[grpc.aio.Channel]):
    """The asyncio client; same arguments and methods as :class:`~visinspect_client.InspectionClient`.

    Create it inside a running event loop (``async with AsyncInspectionClient(...) as client:``).
    """

    _grpc = grpc.aio

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channels (pending calls are cancelled)."""
        await self._channel.close()
        for probe in self._take_probes():
            await probe.close()

    async def detect(
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
        """Score one image (see :meth:`InspectionClient.detect`)."""
        options = DetectOptions(model, version, threshold, anomaly_map, mask, regions, map_size)
        return await self._detect(detect_request(image, options, request_id), timeout)

    async def detect_many(
        self,
        images: Iterable[ImageLike],
        *,
        concurrency: int = 4,
        **detect_options: Unpack[DetectKwargs],
    ) -> list[Outcome]:
        """Score many images, at most ``concurrency`` in flight (an asyncio.Semaphore); results in input order,
        per-image failures as :class:`DetectionFailure`."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        options, request_id, timeout = split_options(detect_options)
        semaphore = asyncio.Semaphore(concurrency)

        async def one(index: int, image: ImageLike) -> Outcome:
            async with semaphore:
                try:
                    request = detect_request(image, options, f"{request_id}-{index}" if request_id else "")
                    return await self._detect(request, timeout)
                except VisInspectError as exc:
                    return DetectionFailure(index, describe(image), exc)

        return list(await asyncio.gather(*(one(index, image) for index, image in enumerate(images))))

    async def stream(
        self, images: Iterable[ImageLike] | AsyncIterable[ImageLike], **detect_options: Unpack[DetectKwargs]
    ) -> AsyncIterator[Outcome]:
        """Score a stream of images over one DetectStream call (see :meth:`InspectionClient.stream`);
        ``images`` may be an async iterable (a camera's frames)."""
        options, request_id, timeout = split_options(detect_options)
        ledger = StreamLedger(options, self.target, request_id)
        call = self._stub.DetectStream(ledger.async_requests(images), timeout=timeout, metadata=self._metadata)
        try:
            with self._rpc_errors(timeout):
                async for response in call:
                    for outcome in ledger.answer(response):
                        yield outcome
                for outcome in ledger.finish():
                    yield outcome
        finally:
            call.cancel()
        ledger.raise_input_error()

    async def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """The served models and their loaded versions."""
        return model_infos(await self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout))

    async def model(self, name: str = "", version: int = 0, *, timeout: float | None = None) -> ModelDetails:
        """One model version's details."""
        request = pb.DescribeModelRequest(model=name, model_version=version)
        return model_details(await self._call(self._stub.DescribeModel, request, timeout))

    async def threshold_for_false_reject_rate(
        self, rate: float, model: str = "", version: int = 0, *, timeout: float | None = None
    ) -> float:
        """The normalised threshold for a false-reject rate (see
        :meth:`InspectionClient.threshold_for_false_reject_rate`)."""
        return (await self.model(model, version, timeout=timeout)).threshold_for_false_reject_rate(rate)

    async def expected_rates(
        self, threshold: float | None = None, model: str = "", version: int = 0, *, timeout: float | None = None
    ) -> ExpectedRates:
        """The rates to expect at a normalised threshold (see :meth:`InspectionClient.expected_rates`)."""
        return (await self.model(model, version, timeout=timeout)).expected_rates(threshold)

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The grpc.health.v1 status of ``service`` (see :meth:`InspectionClient.health`)."""
        health = self._health_round(service, timeout)
        for check in health:
            with health.recording():
                health.record(await check())
        return health.result()

    async def _detect(self, request: pb.DetectRequest, timeout: float | None) -> DetectionResult:
        started = time.perf_counter()
        response = await self._call(self._stub.Detect, request, timeout)
        return detection_result(response, (time.perf_counter() - started) * 1e3)

    async def _call(
        self, method: Callable[..., Awaitable[Response]], request: object, timeout: float | None
    ) -> Response:
        deadline = self._deadline(timeout)
        with self._rpc_errors(deadline):
            return await method(request, timeout=deadline, metadata=self._metadata)
