"""Every RPC of the real server, against the model trained once for the session."""

from __future__ import annotations

import math
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from tests.conftest import TINY_IMAGE_SIZE
from tests.load_harness import wait_until_steady
from visinspect_api.model_repository import IR_XML_FILENAME
from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_training.ir import compile_ir, infer


def encoded(path: Path) -> bytes:
    return path.read_bytes()


def first(folder: Path) -> Path:
    return sorted(folder.glob("*.png"))[0]


def detect(served, request: pb.DetectRequest, timeout: float = 30) -> pb.DetectResponse:
    with served.channel() as channel:
        return served.stub(channel).Detect(request, timeout=timeout)


def expect_error(served, request: pb.DetectRequest, code: grpc.StatusCode, words: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        detect(served, request)
    assert caught.value.code() == code, caught.value.details()
    assert words in caught.value.details()


def reference_raw_score(exported, image_path: Path) -> float:
    rgb = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
    resized = cv2.resize(rgb, (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE), interpolation=cv2.INTER_AREA)
    _, scores = infer(compile_ir(exported.version_dir / IR_XML_FILENAME, "f32"), resized[np.newaxis])
    return float(scores[0])


def test_detect_encoded_png_matches_in_process_inference(served, exported, synthetic_category) -> None:
    image = first(synthetic_category / "test" / "hole")
    response = detect(served, pb.DetectRequest(request_id="r-1", image=pb.ImageInput(encoded=encoded(image))))
    calibration = exported.metadata.calibration
    expected_raw = reference_raw_score(exported, image)
    expected_score = min(
        1.0,
        max(0.0, (expected_raw - calibration.image_threshold) / (calibration.image_max - calibration.image_min) + 0.5),
    )
    assert response.request_id == "r-1"
    assert (response.model, response.model_version) == ("brick", 1)
    assert response.raw_score == pytest.approx(expected_raw, rel=1e-5)
    assert response.score == pytest.approx(expected_score, abs=1e-5)
    assert response.threshold == pytest.approx(0.5)
    assert response.is_anomalous == (response.score > 0.5)
    expected_confidence = response.score if response.is_anomalous else 1 - response.score
    assert response.confidence == pytest.approx(expected_confidence, abs=1e-6)
    assert (response.image_width, response.image_height) == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    assert response.timing.total_ms >= response.timing.inference_ms > 0
    assert response.anomaly_map_png == b"" and response.mask_png == b"" and len(response.regions) == 0


def test_raw_path_and_encoded_inputs_agree(served, synthetic_category) -> None:
    image = first(synthetic_category / "test" / "scratch")
    bgr = cv2.imread(str(image))
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    height, width = rgb.shape[:2]
    requests = {
        "encoded": pb.ImageInput(encoded=encoded(image)),
        "raw rgb": pb.ImageInput(raw=pb.RawImage(data=rgb.tobytes(), height=height, width=width, channels=3)),
        "raw bgr": pb.ImageInput(
            raw=pb.RawImage(
                data=bgr.tobytes(), height=height, width=width, channels=3, channel_order=pb.CHANNEL_ORDER_BGR
            )
        ),
        "path": pb.ImageInput(path=str(image.relative_to(synthetic_category))),
        "absolute path inside root": pb.ImageInput(path=str(image)),
    }
    scores = {name: detect(served, pb.DetectRequest(image=source)).raw_score for name, source in requests.items()}
    assert len(set(scores.values())) == 1, scores


def test_server_assigns_a_request_id(served, synthetic_category) -> None:
    response = detect(
        served, pb.DetectRequest(image=pb.ImageInput(encoded=encoded(first(synthetic_category / "test" / "good"))))
    )
    assert len(response.request_id) == 16


@pytest.mark.parametrize(("threshold", "anomalous"), [(0.0, True), (1.0, False)])
def test_threshold_override(served, synthetic_category, threshold: float, anomalous: bool) -> None:
    image = first(synthetic_category / "test" / "good")
    response = detect(served, pb.DetectRequest(image=pb.ImageInput(encoded=encoded(image)), threshold=threshold))
    assert response.threshold == threshold
    assert response.is_anomalous is (anomalous and response.score > 0.0)
    assert 0.5 <= response.confidence <= 1.0


def test_threshold_override_changes_the_verdict_at_the_score(served, synthetic_category) -> None:
    for image in sorted((synthetic_category / "test").glob("*/*.png")):
        request = pb.DetectRequest(image=pb.ImageInput(encoded=encoded(image)))
        score = detect(served, request).score
        if 0.01 < score < 0.99:  # an unclamped score, so the threshold can sit just above and below it
            break
    else:
        pytest.fail("no test image has an unclamped score")
    below = pb.DetectRequest(image=request.image, threshold=score - 1e-3)
    above = pb.DetectRequest(image=request.image, threshold=score + 1e-3)
    assert detect(served, below).is_anomalous is True
    assert detect(served, above).is_anomalous is False


@pytest.mark.parametrize("threshold", [math.nan, -0.1, 1.5, math.inf])
def test_bad_threshold(served, synthetic_category, threshold: float) -> None:
    request = pb.DetectRequest(
        image=pb.ImageInput(encoded=encoded(first(synthetic_category / "test" / "good"))), threshold=threshold
    )
    expect_error(served, request, grpc.StatusCode.INVALID_ARGUMENT, "threshold")


def test_unknown_model_and_version(served, synthetic_category) -> None:
    image = pb.ImageInput(encoded=encoded(first(synthetic_category / "test" / "good")))
    expect_error(
        served, pb.DetectRequest(model="bottle", image=image), grpc.StatusCode.NOT_FOUND, "'bottle' is not served"
    )
    expect_error(
        served,
        pb.DetectRequest(model="brick", model_version=7, image=image),
        grpc.StatusCode.NOT_FOUND,
        "no loaded version 7",
    )


@pytest.mark.parametrize(
    ("image", "code", "words"),
    [
        (pb.ImageInput(), grpc.StatusCode.INVALID_ARGUMENT, "no image"),
        (pb.ImageInput(encoded=b"not an image at all"), grpc.StatusCode.INVALID_ARGUMENT, "decode"),
        (
            pb.ImageInput(raw=pb.RawImage(data=b"\x00" * 10, height=4, width=4, channels=3)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "48",
        ),
        (pb.ImageInput(path="../../etc/passwd"), grpc.StatusCode.PERMISSION_DENIED, "outside"),
        (pb.ImageInput(path="/etc/hostname"), grpc.StatusCode.PERMISSION_DENIED, "outside"),
        (pb.ImageInput(path="test/good/999.png"), grpc.StatusCode.NOT_FOUND, "999.png"),
    ],
)
def test_bad_images(served, image, code, words) -> None:
    expect_error(served, pb.DetectRequest(image=image), code, words)


def test_symlink_out_of_the_root_is_refused(served, synthetic_category, tmp_path: Path) -> None:
    outside = tmp_path / "secret.png"
    outside.write_bytes(encoded(first(synthetic_category / "test" / "good")))
    link = synthetic_category / "escape.png"
    link.symlink_to(outside)
    try:
        expect_error(
            served,
            pb.DetectRequest(image=pb.ImageInput(path="escape.png")),
            grpc.StatusCode.PERMISSION_DENIED,
            "outside",
        )
    finally:
        link.unlink()


def test_message_over_the_size_limit(served) -> None:
    request = pb.DetectRequest(image=pb.ImageInput(encoded=b"\x00" * (65 * 1024 * 1024)))
    with pytest.raises(grpc.RpcError) as caught:
        detect(served, request)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_extras_geometry(served, synthetic_category) -> None:
    image = first(synthetic_category / "test" / "hole")
    truth = (
        cv2.imread(str(synthetic_category / "ground_truth" / "hole" / f"{image.stem}_mask.png"), cv2.IMREAD_GRAYSCALE)
        > 0
    )
    extras = pb.Extras(anomaly_map=True, mask=True, regions=True, map_size=pb.MAP_SIZE_ORIGINAL)
    response = detect(
        served, pb.DetectRequest(image=pb.ImageInput(encoded=encoded(image)), extras=extras, threshold=0.5)
    )
    heat = cv2.imdecode(np.frombuffer(response.anomaly_map_png, np.uint8), cv2.IMREAD_UNCHANGED)
    mask = cv2.imdecode(np.frombuffer(response.mask_png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert heat.shape == (*truth.shape, 3)
    assert mask.shape == truth.shape and set(np.unique(mask)) <= {0, 255}
    assert response.is_anomalous
    assert len(response.regions) >= 1
    largest = response.regions[0]
    ys, xs = np.nonzero(truth)
    box = largest.box
    overlap_w = min(box.x + box.width, xs.max() + 1) - max(box.x, xs.min())
    overlap_h = min(box.y + box.height, ys.max() + 1) - max(box.y, ys.min())
    assert overlap_w > 0 and overlap_h > 0, (box, xs.min(), xs.max(), ys.min(), ys.max())
    assert box.x + box.width <= truth.shape[1] and box.y + box.height <= truth.shape[0]
    assert 0.5 < largest.peak_score <= 1.0 and largest.mean_score <= largest.peak_score
    assert largest.area <= box.width * box.height
    hottest = np.unravel_index(np.argmax(heat[:, :, 2].astype(int) - heat[:, :, 0]), truth.shape)
    assert mask[hottest] == 255


def test_model_size_map(served, synthetic_category) -> None:
    extras = pb.Extras(anomaly_map=True, mask=True)
    response = detect(
        served,
        pb.DetectRequest(
            image=pb.ImageInput(encoded=encoded(first(synthetic_category / "test" / "stain"))), extras=extras
        ),
    )
    heat = cv2.imdecode(np.frombuffer(response.anomaly_map_png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert heat.shape == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3)
    assert len(response.regions) == 0


def test_list_and_describe_models(served, exported) -> None:
    with served.channel() as channel:
        stub = served.stub(channel)
        listing = stub.ListModels(pb.ListModelsRequest(), timeout=5)
        description = stub.DescribeModel(pb.DescribeModelRequest(), timeout=5)
        named = stub.DescribeModel(pb.DescribeModelRequest(model="brick", model_version=1), timeout=5)
        with pytest.raises(grpc.RpcError) as caught:
            stub.DescribeModel(pb.DescribeModelRequest(model="nope"), timeout=5)
    assert [(m.name, list(m.versions), m.default_version) for m in listing.models] == [("brick", [1], 1)]
    assert description == named
    metadata = exported.metadata
    assert (description.name, description.version, description.backbone) == ("brick", 1, metadata.backbone.name)
    assert (description.input.height, description.input.layout, description.input.dtype) == (
        TINY_IMAGE_SIZE,
        "NHWC",
        "uint8",
    )
    assert description.calibration.image_threshold == pytest.approx(metadata.calibration.image_threshold)
    assert description.evaluation.image_auroc == pytest.approx(metadata.evaluation.image_auroc)
    assert description.default_threshold == 0.5
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_stream_keeps_order_ids_and_survives_bad_items(served, synthetic_category) -> None:
    images = (
        sorted((synthetic_category / "test" / "good").glob("*.png"))[:4]
        + sorted((synthetic_category / "test" / "hole").glob("*.png"))[:4]
    )
    requests = [
        pb.DetectRequest(request_id=f"id-{i}", image=pb.ImageInput(encoded=encoded(p))) for i, p in enumerate(images)
    ]
    requests.insert(3, pb.DetectRequest(request_id="bad", image=pb.ImageInput(encoded=b"garbage")))
    with served.channel() as channel:
        responses = list(served.stub(channel).DetectStream(iter(requests), timeout=60))
    assert [r.request_id for r in responses] == [r.request_id for r in requests]
    bad = responses[3]
    assert bad.WhichOneof("outcome") == "error" and bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    singles = [detect(served, request).raw_score for request in requests if request.request_id != "bad"]
    assert [r.result.raw_score for r in responses if r.request_id != "bad"] == pytest.approx(singles, rel=1e-5)


def test_health_overall_and_per_model(served) -> None:
    assert served.health("") == health_pb2.HealthCheckResponse.SERVING
    assert served.health("visinspect.v1.InspectionService") == health_pb2.HealthCheckResponse.SERVING
    assert served.health("model/brick") == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as caught:
        served.health("model/unknown")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(served) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with served.channel() as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {service.name for response in responses for service in response.list_services_response.service}
    assert {"visinspect.v1.InspectionService", "grpc.health.v1.Health"} <= names


def test_deadline_is_honoured_and_the_server_keeps_serving(served, synthetic_category) -> None:
    request = pb.DetectRequest(image=pb.ImageInput(encoded=encoded(first(synthetic_category / "test" / "good"))))
    with pytest.raises(grpc.RpcError) as caught:
        detect(served, request, timeout=0.0005)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert detect(served, request).model == "brick"


def test_metrics_endpoint(served, synthetic_category) -> None:
    detect(served, pb.DetectRequest(image=pb.ImageInput(encoded=encoded(first(synthetic_category / "test" / "good")))))
    with pytest.raises(grpc.RpcError):
        detect(served, pb.DetectRequest(image=pb.ImageInput(encoded=b"bad")))
    text = urllib.request.urlopen(f"http://127.0.0.1:{served.metrics_port}/metrics", timeout=5).read().decode()
    assert 'visinspect_requests_total{code="OK",method="Detect"}' in text
    assert 'visinspect_requests_total{code="INVALID_ARGUMENT",method="Detect"}' in text
    assert 'visinspect_stage_seconds_bucket{le="0.005",stage="decode"}' in text
    assert 'visinspect_score_count{model="brick"}' in text
    assert 'visinspect_model_versions_loaded{model="brick"} 1.0' in text


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares a huge image over a tiny body: a decompression bomb's shape."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_before_decoding(served) -> None:
    expect_error(
        served,
        pb.DetectRequest(image=pb.ImageInput(encoded=png_declaring(50000, 50000))),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "pixels",
    )
    assert served.health() == health_pb2.HealthCheckResponse.SERVING


def test_stream_flow_control_bounds_what_the_server_reads(served) -> None:
    rng = np.random.default_rng(0)
    noise = cv2.imencode(".png", rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8))[1].tobytes()
    extras = pb.Extras(anomaly_map=True, mask=True, map_size=pb.MAP_SIZE_ORIGINAL)
    total = 40
    pulled = 0

    def requests():
        nonlocal pulled
        for index in range(total):
            pulled += 1
            yield pb.DetectRequest(request_id=str(index), image=pb.ImageInput(encoded=noise), extras=extras)

    with served.channel() as channel:
        responses = served.stub(channel).DetectStream(requests(), timeout=120)
        stalled_at = wait_until_steady(lambda: pulled, total)  # the client reads nothing: the server stops taking
        received = [r.request_id for r in responses]
    assert stalled_at < total, "the server kept consuming requests although nobody read its responses"
    assert received == [str(i) for i in range(total)]


def test_stream_answers_each_frame_without_waiting_for_the_next(served, synthetic_category) -> None:
    """A camera loop sends a frame, waits for its result, then sends the next: each answer must come now."""
    import queue

    frames = [path.read_bytes() for path in sorted((synthetic_category / "test" / "good").glob("*.png"))[:3]]
    outgoing: queue.Queue = queue.Queue()

    def requests():
        while (request := outgoing.get()) is not None:
            yield request

    with served.channel() as channel:
        responses = served.stub(channel).DetectStream(requests(), timeout=120)
        answered = []
        for index, frame in enumerate(frames):
            outgoing.put(pb.DetectRequest(request_id=f"frame-{index}", image=pb.ImageInput(encoded=frame)))
            waiter = ThreadPoolExecutor(1)
            reply = waiter.submit(next, responses).result(timeout=30)  # before the fix: only at the stream's end
            waiter.shutdown()
            answered.append((reply.request_id, reply.WhichOneof("outcome")))
        outgoing.put(None)
        assert list(responses) == []
    assert answered == [(f"frame-{i}", "result") for i in range(len(frames))]


def test_health_command_for_container_checks(served) -> None:
    import subprocess
    import sys

    ok = subprocess.run(
        [sys.executable, "-m", "visinspect_server.main", "health", "--address", served.address],
        capture_output=True,
        text=True,
        check=False,
    )
    unknown = subprocess.run(
        [sys.executable, "-m", "visinspect_server.main", "health", "--address", served.address, "--service", "model/nope"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    down = subprocess.run(
        [sys.executable, "-m", "visinspect_server.main", "health", "--address", "127.0.0.1:9", "--timeout-s", "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (ok.returncode, ok.stdout.strip()) == (0, "SERVING")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr
