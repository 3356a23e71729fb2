"""The drain on shutdown (the code SIGTERM runs) and server-side deadlines, on the real server in this process
with its inference held at a gate (tests/inprocess.py): every step waits for an event, none for a time.

Calls in flight finish; new calls are refused UNAVAILABLE by the server itself while it drains; a stream
answers what it read and ends UNAVAILABLE; the grace deadline ends a stuck call UNAVAILABLE; nothing ends
CANCELLED. A call whose deadline passes while it waits for the backend is dropped before inference.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.inprocess import Gate, InProcessServer
from tests.load_harness import wait_for
from tests.server_harness import copy_version
from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_api.v1.inspection_pb2_grpc import InspectionServiceStub

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@pytest.fixture
def repository(exported, tmp_path: Path) -> Path:
    copy_version(exported.version_dir, tmp_path / "repository" / "brick" / "1")
    return tmp_path / "repository"


@pytest.fixture
def request_(synthetic_category: Path) -> pb.DetectRequest:
    image = sorted((synthetic_category / "test" / "hole").glob("*.png"))[0]
    return pb.DetectRequest(image=pb.ImageInput(encoded=image.read_bytes()))


def requests_counted(server: InProcessServer, method: str, code: grpc.StatusCode) -> float:
    value = server.server.runtime.metrics.registry.get_sample_value(
        "visinspect_requests_total", {"method": method, "code": code.name}
    )
    return value or 0.0


def in_flight(server: InProcessServer) -> int:
    return server.call(lambda: server.server.runtime.gate.in_flight)


def feed(frames: queue.Queue) -> Iterator[pb.DetectRequest]:
    while (frame := frames.get()) is not None:
        yield frame


def assert_refused_while_draining(channel: grpc.Channel, request: pb.DetectRequest) -> None:
    """Every InspectionService method answers UNAVAILABLE from the server itself (not from the transport)."""
    stub = InspectionServiceStub(channel)
    calls = {
        "Detect": lambda: stub.Detect(request, timeout=30),
        "ListModels": lambda: stub.ListModels(pb.ListModelsRequest(), timeout=30),
        "DescribeModel": lambda: stub.DescribeModel(pb.DescribeModelRequest(), timeout=30),
        "DetectStream": lambda: list(stub.DetectStream(iter([request]), timeout=30)),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as refused:
            call()
        assert refused.value.code() == UNAVAILABLE, name
        assert "shutting down: retry on another replica" in refused.value.details(), name


def test_the_drain_finishes_calls_in_flight_and_the_server_refuses_new_ones(repository, request_) -> None:
    gate = Gate(is_open=False)
    with (
        InProcessServer(repository, gate, shutdown_grace_s=120) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = InspectionServiceStub(channel)
        held = [stub.Detect.future(request_, timeout=120) for _ in range(16)]
        wait_for(lambda: in_flight(server) == 16, 60, "16 calls admitted")
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=120)
        assert next(watch).status == SERVING

        stopping = server.begin_stop()
        assert next(watch).status == NOT_SERVING
        with grpc.insecure_channel(server.address) as fresh:
            for refused_on in (channel, fresh):  # the draining connection and a new one
                assert_refused_while_draining(refused_on, request_)
        assert not stopping.done(), "the drain waits for the calls in flight"
        assert in_flight(server) == 16

        gate.open()
        responses = [future.result(timeout=60) for future in held]
        assert stopping.result(timeout=60) is True
        watch.cancel()
    assert [(r.model, r.model_version) for r in responses] == [("brick", 1)] * 16
    assert len({round(r.raw_score, 4) for r in responses}) == 1, "the same image, the same score"
    assert requests_counted(server, "Detect", grpc.StatusCode.OK) == 16
    assert requests_counted(server, "Detect", UNAVAILABLE) == 2
    assert requests_counted(server, "DetectStream", UNAVAILABLE) == 2
    assert requests_counted(server, "Detect", grpc.StatusCode.CANCELLED) == 0
    assert server.server.runtime.metrics.registry.get_sample_value("visinspect_calls_in_flight") == 0


def test_a_stream_answers_every_frame_it_read_then_ends_unavailable(repository, request_) -> None:
    gate = Gate(is_open=False)
    with (
        InProcessServer(repository, gate, shutdown_grace_s=120) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        frames: queue.Queue = queue.Queue()
        responses = InspectionServiceStub(channel).DetectStream(feed(frames), timeout=120)
        for index in range(2):
            frames.put(pb.DetectRequest(request_id=f"frame-{index}", image=request_.image))
        wait_for(lambda: gate.held_images >= 1, 60, "a frame at the backend")
        stopping = server.begin_stop()
        wait_for(lambda: not server.call(lambda: server.server.runtime.gate.is_open), 30, "the drain to begin")
        frames.put(pb.DetectRequest(request_id="frame-late", image=request_.image))  # never read
        gate.open()
        received = []
        with pytest.raises(grpc.RpcError) as ended:
            for response in responses:
                received.append(response)
        frames.put(None)
        assert stopping.result(timeout=60) is True
    ids = [r.request_id for r in received]
    assert ids in (["frame-0"], ["frame-0", "frame-1"]), ids  # what was read is answered, in order
    assert all(r.WhichOneof("outcome") == "result" and r.result.model_version == 1 for r in received)
    assert ended.value.code() == UNAVAILABLE
    assert "every frame it read was answered" in ended.value.details()


def test_the_grace_deadline_ends_stuck_calls_unavailable_not_cancelled(repository, request_) -> None:
    grace_s = 2.0
    gate = Gate(is_open=False)  # inference never finishes by itself
    with (
        InProcessServer(repository, gate, shutdown_grace_s=grace_s) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = InspectionServiceStub(channel)
        frames: queue.Queue = queue.Queue()
        stream = stub.DetectStream(feed(frames), timeout=120)
        frames.put(request_)
        wait_for(lambda: gate.held_images == 1, 60, "the stream's frame inside inference")
        stuck = stub.Detect.future(request_, timeout=120)
        wait_for(lambda: in_flight(server) == 2, 60, "the unary call taken too")
        started = time.monotonic()
        assert server.begin_stop().result(timeout=grace_s + 60) is True
        elapsed = time.monotonic() - started
        with pytest.raises(grpc.RpcError) as unary:
            stuck.result(timeout=30)
        with pytest.raises(grpc.RpcError) as streamed:
            list(stream)
        frames.put(None)
    for error in (unary.value, streamed.value):
        assert error.code() == UNAVAILABLE
        assert "grace period ran out" in error.details()
    assert elapsed >= grace_s - 0.1, "the drain gave them the whole grace period"
    assert requests_counted(server, "Detect", UNAVAILABLE) == 1
    assert requests_counted(server, "DetectStream", UNAVAILABLE) == 1


def test_a_call_whose_deadline_passes_in_a_full_queue_is_dropped_before_inference(repository, request_) -> None:
    gate = Gate(is_open=False)
    with InProcessServer(repository, gate) as server, grpc.insecure_channel(server.address) as channel:
        stub = InspectionServiceStub(channel)
        slots = server.call(lambda: server.server.runtime.registry.resolve("brick").backend.backend.jobs)
        held = []
        for busy in range(1, slots + 1):  # one call per backend slot, each its own batch: every slot taken
            held.append(stub.Detect.future(request_, timeout=120))
            wait_for(lambda busy=busy: gate.held_images == busy, 60, f"{busy} slots busy")

        expiring = stub.Detect.future(request_, timeout=5.0)  # waits in the batcher's queue behind the full slots
        wait_for(lambda: in_flight(server) == slots + 1, 5, "the call taken by the server before its deadline")
        with pytest.raises(grpc.RpcError) as expired:
            expiring.result(timeout=60)
        assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for(lambda: in_flight(server) == slots, 30, "the expired call to leave the server")
        assert requests_counted(server, "Detect", grpc.StatusCode.DEADLINE_EXCEEDED) == 1
        assert gate.held_images == slots and gate.images_by_version == {}

        gate.open()
        assert [f.result(timeout=60).model_version for f in held] == [1] * slots
        assert stub.Detect(request_, timeout=60).model_version == 1  # and the server goes on serving
    assert gate.images_by_version == {1: slots + 1}, "the expired call never reached the backend"
    assert requests_counted(server, "Detect", grpc.StatusCode.CANCELLED) == 0
