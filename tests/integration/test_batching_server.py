"""Micro-batching in the real server: concurrent requests share inferences and get their own results."""

from __future__ import annotations

import re
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.server_harness import start_server
from visinspect_api.v1 import inspection_pb2 as pb


def _batch_histogram(server) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    return {le: float(value) for le, value in re.findall(r'visinspect_batch_images_bucket\{le="([^"]+)"\} (\S+)', text)}


@pytest.fixture(scope="module")
def batching_server(exported):
    server = start_server(exported.version_dir.parents[1], ["--max-batch-size", "4"])
    yield server
    server.stop()


def test_concurrent_requests_are_batched_and_each_gets_its_own_result(
    batching_server, served, synthetic_category
) -> None:
    images = sorted((synthetic_category / "test").glob("*/*.png"))[:16]
    extras = pb.Extras(anomaly_map=True)
    requests = [pb.DetectRequest(image=pb.ImageInput(encoded=path.read_bytes()), extras=extras) for path in images]
    with served.channel() as channel:  # the session's server, batching at its default size, one call at a time
        stub = served.stub(channel)
        expected = [stub.Detect(request, timeout=30) for request in requests]
    with batching_server.channel() as channel:
        stub = batching_server.stub(channel)
        with ThreadPoolExecutor(8) as pool:
            for _ in range(3):
                got = list(pool.map(lambda request: stub.Detect(request, timeout=60), requests))
                for one, reference in zip(got, expected, strict=True):
                    assert one.raw_score == pytest.approx(reference.raw_score, rel=1e-5)
                    assert one.is_anomalous == reference.is_anomalous
                    assert one.anomaly_map_png.startswith(b"\x89PNG")
    histogram = _batch_histogram(batching_server)
    assert histogram["+Inf"] >= 1
    sent_alone = histogram["1.0"]
    assert sent_alone < histogram["+Inf"], "8 concurrent callers never shared an inference"
    assert histogram["4.0"] == histogram["+Inf"], "a batch exceeded --max-batch-size 4"
    assert len({round(one.raw_score, 3) for one in expected}) > 8  # varied images, not one score repeated


def test_batching_off_sends_every_image_alone(exported, synthetic_category) -> None:
    server = start_server(exported.version_dir.parents[1], ["--max-batch-size", "1"])
    try:
        images = sorted((synthetic_category / "test").glob("*/*.png"))[:8]
        with server.channel() as channel:
            stub = server.stub(channel)
            with ThreadPoolExecutor(8) as pool:
                list(
                    pool.map(
                        lambda p: stub.Detect(pb.DetectRequest(image=pb.ImageInput(encoded=p.read_bytes()))), images
                    )
                )
        histogram = _batch_histogram(server)
        assert histogram["1.0"] == histogram["+Inf"] >= 8
    finally:
        server.stop()
