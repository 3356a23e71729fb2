"""The gRPC servicer: converts messages to domain objects and back, nothing else."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_api.v1 import inspection_pb2_grpc as pb_grpc
from visinspect_server.drain import GRACE_OVER, CallGate
from visinspect_server.errors import UnavailableError
from visinspect_server.grpc import converters
from visinspect_server.grpc.errors import status_of, unary_rpc
from visinspect_server.observability import Metrics, new_request_id, request_id_var
from visinspect_server.pipeline import Detection, InspectionPipeline
from visinspect_server.registry import ModelRegistry

STREAM_DRAINED = (
    "the server is shutting down: every frame it read was answered, later frames were not read; "
    "send them again on a new stream (another replica)"
)


class InspectionServicer(pb_grpc.InspectionServiceServicer):
    """visinspect.v1.InspectionService."""

    def __init__(
        self,
        pipeline: InspectionPipeline,
        registry: ModelRegistry,
        metrics: Metrics,
        stream_max_in_flight: int,
        gate: CallGate | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.registry = registry
        self.metrics = metrics
        self.stream_max_in_flight = stream_max_in_flight
        self.gate = CallGate() if gate is None else gate

    @unary_rpc
    async def Detect(self, request: pb.DetectRequest, context: grpc.aio.ServicerContext) -> pb.DetectResponse:
        return converters.detect_response(await self._detect(request), request_id_var.get())

    async def DetectStream(
        self, requests: AsyncIterator[pb.DetectRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DetectStreamResponse]:
        try:
            with self.gate.admit():
                async for response in self._stream(requests):
                    yield response
        except asyncio.CancelledError:
            if not self.gate.expired:
                raise
            await self._end_stream(context, grpc.StatusCode.UNAVAILABLE, GRACE_OVER)
        except Exception as exc:  # noqa: BLE001 - refused at the door, or cut short by the drain
            await self._end_stream(context, *status_of(exc))

    async def _end_stream(self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> None:
        self.metrics.requests.labels("DetectStream", code.name).inc()
        await context.abort(code, message)

    async def _stream(self, requests: AsyncIterator[pb.DetectRequest]) -> AsyncIterator[pb.DetectStreamResponse]:
        # A reader task takes requests while fewer than stream_max_in_flight are unanswered; responses
        # go out in order as soon as each is ready. A client that stops reading blocks our writes, so
        # no slot frees and we stop reading too: nothing is buffered without bound. Once the server
        # drains, the reader takes no new request; those already taken are answered, then the stream
        # ends UNAVAILABLE.
        slots = asyncio.Semaphore(self.stream_max_in_flight)
        started: asyncio.Queue[tuple[str, asyncio.Task[Detection]] | None] = asyncio.Queue()
        drained = False

        async def read() -> None:
            nonlocal drained
            closing = asyncio.ensure_future(self.gate.wait_closed())
            try:
                iterator = aiter(requests)
                while True:
                    await slots.acquire()
                    if not self.gate.is_open:
                        drained = True
                        return
                    arriving = asyncio.ensure_future(anext(iterator))
                    await asyncio.wait((arriving, closing), return_when=asyncio.FIRST_COMPLETED)
                    if not arriving.done():
                        arriving.cancel()
                        drained = True
                        return
                    try:
                        request = arriving.result()
                    except StopAsyncIteration:
                        return
                    request_id = request.request_id or new_request_id()
                    started.put_nowait((request_id, asyncio.create_task(self._stream_item(request, request_id))))
            finally:
                closing.cancel()
                started.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await started.get()) is not None:
                yield await self._stream_response(*item)
                slots.release()
            await reader  # re-raises a failure to read the request stream
        finally:
            reader.cancel()
            while not started.empty():
                item = started.get_nowait()
                if item is not None:
                    item[1].cancel()
        if drained:
            raise UnavailableError(STREAM_DRAINED)

    @unary_rpc
    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return converters.list_models_response(self.registry.loaded)

    @unary_rpc
    async def DescribeModel(
        self, request: pb.DescribeModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelDescription:
        model = self.registry.resolve(request.model, request.model_version)
        return converters.model_description(model.metadata, model.version)

    async def _detect(self, request: pb.DetectRequest) -> Detection:
        source, options = converters.detect_request(request)
        return await self.pipeline.detect(source, options)

    async def _stream_item(self, request: pb.DetectRequest, request_id: str) -> Detection:
        request_id_var.set(request_id)  # the task runs in a copy of the context: this id stays with it
        return await self._detect(request)

    async def _stream_response(self, request_id: str, task: asyncio.Task[Detection]) -> pb.DetectStreamResponse:
        try:
            detection = await task
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bad item becomes an error item; the stream goes on
            request_id_var.set(request_id)
            code, message = status_of(exc)
            self.metrics.requests.labels("DetectStream", code.name).inc()
            return pb.DetectStreamResponse(
                request_id=request_id, error=pb.StreamError(code=code.value[0], message=message)
            )
        self.metrics.requests.labels("DetectStream", grpc.StatusCode.OK.name).inc()
        self.metrics.latency.labels("DetectStream").observe(detection.timing.total_ms / 1e3)
        return pb.DetectStreamResponse(request_id=request_id, result=converters.detect_response(detection, request_id))
