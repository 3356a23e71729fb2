"""The asyncio client: :class:`InspectionClient`'s methods as coroutines, on a ``grpc.aio`` channel."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import Self, TypeVar, Unpack

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_api.v1 import inspection_pb2_grpc as pb_grpc
from visinspect_client._protocol import (
    DetectKwargs,
    DetectOptions,
    MapSize,
    detect_request,
    detection_result,
    model_details,
    model_infos,
    split_options,
)
from visinspect_client._streaming import Outcome, StreamLedger
from visinspect_client.client import DEFAULT_RETRY
from visinspect_client.connection import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_TARGET,
    HealthSeen,
    RetryPolicy,
    ServerTarget,
    Target,
    TlsConfig,
    channel_credentials,
    channel_options,
    open_channel,
    plaintext_metadata,
)
from visinspect_client.errors import VisInspectError, from_rpc_error
from visinspect_client.inputs import ImageLike, describe
from visinspect_client.results import DetectionFailure, DetectionResult, ExpectedRates, ModelDetails, ModelInfo

Response = TypeVar("Response")


class AsyncInspectionClient:
    """The asyncio client; same arguments and methods as :class:`~visinspect_client.InspectionClient`.

    Create it inside a running event loop (``async with AsyncInspectionClient(...) as client:``).
    """

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
        self._channel: grpc.aio.Channel = open_channel(grpc.aio, self._server.uri, options, self._credentials)
        self._metadata = plaintext_metadata(tls, token)
        self._stub = pb_grpc.InspectionServiceStub(self._channel)
        self._probes: dict[str, grpc.aio.Channel] = {}

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channels (pending calls are cancelled)."""
        await self._channel.close()
        probes, self._probes = self._probes, {}
        for probe in probes.values():
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
        stopped: list[BaseException] = []

        async def requests() -> AsyncIterator[pb.DetectRequest]:
            try:
                index = 0
                async for image in _aiter(images):
                    request = ledger.request(index, image)
                    index += 1
                    if request is not None:
                        yield request
            except Exception as exc:  # noqa: BLE001 - re-raised to the caller once the stream ends
                stopped.append(exc)

        call = self._stub.DetectStream(requests(), timeout=timeout, metadata=self._metadata)
        try:
            async for response in call:
                for outcome in ledger.answer(response):
                    yield outcome
            for outcome in ledger.finish():
                yield outcome
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.target, timeout) from exc
        finally:
            call.cancel()
        if stopped:
            raise stopped[0]

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
        deadline = self.timeout if timeout is None else timeout
        request = health_pb2.HealthCheckRequest(service=service)
        seen = HealthSeen()
        for address in self._server.addresses:
            stub = health_pb2_grpc.HealthStub(self._probe(address))
            try:
                seen.status((await stub.Check(request, timeout=deadline, metadata=self._metadata)).status)
            except grpc.RpcError as exc:
                seen.error(exc, address, deadline)
            if seen.serving:
                break
        return seen.result()

    def _probe(self, address: str) -> grpc.aio.Channel:
        """A channel to one server that is not steered by health (it asks for it)."""
        if address not in self._probes:
            self._probes[address] = open_channel(grpc.aio, address, self._probe_options, self._credentials)
        return self._probes[address]

    async def _detect(self, request: pb.DetectRequest, timeout: float | None) -> DetectionResult:
        started = time.perf_counter()
        response = await self._call(self._stub.Detect, request, timeout)
        return detection_result(response, (time.perf_counter() - started) * 1e3)

    async def _call(
        self, method: Callable[..., Awaitable[Response]], request: object, timeout: float | None
    ) -> Response:
        deadline = self.timeout if timeout is None else timeout
        try:
            return await method(request, timeout=deadline, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.target, deadline) from exc


async def _aiter(images: Iterable[ImageLike] | AsyncIterable[ImageLike]) -> AsyncIterator[ImageLike]:
    if isinstance(images, AsyncIterable):
        async for image in images:
            yield image
    else:
        for image in images:
            yield image
