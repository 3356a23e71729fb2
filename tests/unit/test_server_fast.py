"""The fast tier: the real server (registry, batching, pipeline, post-processing, gRPC front door on a free port)
over the deterministic in-process backend of tests/fake_backend.py, so no model is trained. Waits are on
health Watch events and registry changes, never on fixed sleeps."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.fake_backend import SIZE, FakeBackend, publish_version
from tests.inprocess import InProcessServer
from tests.load_harness import wait_for
from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_api.v1 import inspection_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TIMEOUT_S = 30


def png(red: np.ndarray) -> bytes:
    """A PNG whose red channel is ``red`` (uint8, H x W); green and blue are zero."""
    image = np.zeros((*red.shape, 3), np.uint8)
    image[..., 2] = red  # OpenCV writes BGR
    ok, data = cv2.imencode(".png", image)
    assert ok
    return data.tobytes()


def square_image(value: int = 255, background: int = 51) -> np.ndarray:
    """A SIZE x SIZE red channel at ``background`` with an 8 x 8 square of ``value`` at (8, 4)."""
    red = np.full((SIZE, SIZE), background, np.uint8)
    red[4:12, 8:16] = value
    return red


def wait_for_health(channel: grpc.Channel, service: str, status: int) -> None:
    """Block until ``service`` reports ``status`` (a health Watch stream: each change is an event)."""
    stream = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S
    )
    try:
        for reply in stream:
            if reply.status == status:
                return
    finally:
        stream.cancel()


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    publish_version(tmp_path, "brick", 1)
    return tmp_path


@pytest.fixture
def server(repository: Path) -> Iterator[InProcessServer]:
    with InProcessServer(repository, backend=FakeBackend(), poll_interval_s=0.05) as running:
        yield running


@pytest.fixture
def stub(server: InProcessServer) -> Iterator[inspection_pb2_grpc.InspectionServiceStub]:
    with grpc.insecure_channel(server.address) as channel:
        wait_for_health(channel, "", SERVING)
        yield inspection_pb2_grpc.InspectionServiceStub(channel)


def test_detect_answers_from_the_pixels_with_verdict_regions_and_mask(
    stub: inspection_pb2_grpc.InspectionServiceStub,
) -> None:
    request = pb.DetectRequest(
        request_id="square",
        image=pb.ImageInput(encoded=png(square_image())),
        extras=pb.Extras(mask=True, regions=True, anomaly_map=True),
    )
    reply = stub.Detect(request, timeout=TIMEOUT_S)
    assert (reply.request_id, reply.model, reply.model_version) == ("square", "brick", 1)
    assert reply.is_anomalous and reply.score == pytest.approx(1.0) and reply.raw_score == pytest.approx(1.0)
    assert [(r.box.x, r.box.y, r.box.width, r.box.height) for r in reply.regions] == [(8, 4, 8, 8)]
    mask = cv2.imdecode(np.frombuffer(reply.mask_png, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert int((mask > 0).sum()) == 64
    assert reply.anomaly_map_png.startswith(b"\x89PNG")

    good = stub.Detect(pb.DetectRequest(image=pb.ImageInput(encoded=png(square_image(value=102)))), timeout=TIMEOUT_S)
    assert not good.is_anomalous and good.score == pytest.approx(0.4) and not good.regions


def test_a_request_threshold_moves_the_verdict(stub: inspection_pb2_grpc.InspectionServiceStub) -> None:
    image = pb.ImageInput(encoded=png(square_image(value=102)))  # score 0.4
    assert stub.Detect(pb.DetectRequest(image=image, threshold=0.3), timeout=TIMEOUT_S).is_anomalous
    assert not stub.Detect(pb.DetectRequest(image=image, threshold=0.45), timeout=TIMEOUT_S).is_anomalous


@pytest.mark.parametrize(
    ("request_", "code", "words"),
    [
        (pb.DetectRequest(), grpc.StatusCode.INVALID_ARGUMENT, "no image"),
        (pb.DetectRequest(image=pb.ImageInput(encoded=b"not an image")), grpc.StatusCode.INVALID_ARGUMENT, "decode"),
        (pb.DetectRequest(model="screw", image=pb.ImageInput(encoded=b"x")), grpc.StatusCode.NOT_FOUND, "screw"),
        (pb.DetectRequest(model_version=7, image=pb.ImageInput(encoded=b"x")), grpc.StatusCode.NOT_FOUND, "7"),
        (
            pb.DetectRequest(threshold=2.0, image=pb.ImageInput(encoded=b"x")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "[0, 1]",
        ),
        (pb.DetectRequest(image=pb.ImageInput(path="a.png")), grpc.StatusCode.PERMISSION_DENIED, "path"),
    ],
)
def test_bad_requests_get_their_status_and_the_server_keeps_serving(
    stub: inspection_pb2_grpc.InspectionServiceStub, request_: pb.DetectRequest, code: grpc.StatusCode, words: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Detect(request_, timeout=TIMEOUT_S)
    assert caught.value.code() == code
    assert words in caught.value.details()
    assert stub.Detect(pb.DetectRequest(image=pb.ImageInput(encoded=png(square_image()))), timeout=TIMEOUT_S).score == 1


def test_a_stream_answers_in_order_and_a_bad_frame_is_an_error_item(
    stub: inspection_pb2_grpc.InspectionServiceStub,
) -> None:
    values = [0, 255, 30, 200, 90, 180, 10, 250]
    frames = [
        pb.DetectRequest(request_id=f"f{i}", image=pb.ImageInput(encoded=png(square_image(v, 0))))
        for i, v in enumerate(values)
    ]
    frames.insert(3, pb.DetectRequest(request_id="bad", image=pb.ImageInput(encoded=b"junk")))
    replies = list(stub.DetectStream(iter(frames), timeout=TIMEOUT_S))
    assert [r.request_id for r in replies] == [f.request_id for f in frames]
    bad = replies.pop(3)
    assert bad.WhichOneof("outcome") == "error" and bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert [round(r.result.score * 255) for r in replies] == values


def test_a_new_version_is_swapped_in_and_pinned_calls_still_reach_the_old_one(
    server: InProcessServer, stub: inspection_pb2_grpc.InspectionServiceStub, repository: Path
) -> None:
    publish_version(repository, "brick", 2)
    wait_until_served(server, {"brick": [1, 2]})
    listed = stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT_S)
    assert [(m.name, list(m.versions), m.default_version) for m in listed.models] == [("brick", [1, 2], 2)]
    image = pb.ImageInput(encoded=png(square_image()))
    assert stub.Detect(pb.DetectRequest(image=image), timeout=TIMEOUT_S).model_version == 2
    assert stub.Detect(pb.DetectRequest(image=image, model_version=1), timeout=TIMEOUT_S).model_version == 1
    described = stub.DescribeModel(pb.DescribeModelRequest(model="brick"), timeout=TIMEOUT_S)
    assert (described.version, described.calibration.image_threshold, described.input.height) == (2, 0.5, SIZE)


def served(server: InProcessServer) -> dict[str, list[int]]:
    """The registry's loaded versions, read on the server's loop."""
    return server.call(lambda: {name: sorted(v) for name, v in server.server.runtime.registry.loaded.items()})


def wait_until_served(server: InProcessServer, expected: dict[str, list[int]]) -> None:
    wait_for(lambda: served(server) == expected, TIMEOUT_S, f"serving {expected}")


def test_health_follows_the_repository_and_the_models(tmp_path: Path) -> None:
    with (
        InProcessServer(tmp_path, backend=FakeBackend(), poll_interval_s=0.05) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)

        def status(service: str) -> int:
            return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S).status

        assert status("") == NOT_SERVING  # an empty repository: nothing can answer
        publish_version(tmp_path, "brick", 1)
        wait_for_health(channel, "", SERVING)
        assert status("model/brick") == SERVING and status("visinspect.v1.InspectionService") == SERVING

        moved = tmp_path.with_name(tmp_path.name + "-away")
        tmp_path.rename(moved)
        wait_for_health(channel, "repository", NOT_SERVING)
        assert status("") == SERVING  # the loaded model keeps answering
        moved.rename(tmp_path)
        wait_for_health(channel, "repository", SERVING)


def test_drain_turns_health_not_serving_and_closes_every_version(repository: Path) -> None:
    backend = FakeBackend()
    with (
        InProcessServer(repository, backend=backend, poll_interval_s=0.05) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        wait_for_health(channel, "", SERVING)
        assert server.begin_stop().result(TIMEOUT_S) is True
    assert backend.closed and [model.closed for model in backend.loaded] == [True]
    assert backend.loaded[0].warmed_up_to == 4  # warmed up for every batch size the batcher sends (default 4)


def test_removed_models_leave_the_listing(
    server: InProcessServer, stub: inspection_pb2_grpc.InspectionServiceStub, repository: Path
) -> None:
    publish_version(repository, "screw", 1)
    wait_until_served(server, {"brick": [1], "screw": [1]})
    assert [m.name for m in stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT_S).models] == ["brick", "screw"]
    shutil.rmtree(repository / "screw")
    wait_until_served(server, {"brick": [1]})
    assert [m.name for m in stub.ListModels(pb.ListModelsRequest(), timeout=TIMEOUT_S).models] == ["brick"]
