"""Hot swaps under load, rejected versions, start-up with no model, SIGTERM draining, internal faults."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from tests.server_harness import copy_version, start_server
from visinspect_api.model_repository import (
    IR_BIN_FILENAME,
    IR_XML_FILENAME,
    METADATA_FILENAME,
    read_metadata,
)
from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_api.v1 import inspection_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def expected_score(raw: float, version_dir: Path) -> float:
    c = read_metadata(version_dir).calibration
    return min(1.0, max(0.0, (raw - c.image_threshold) / (c.image_max - c.image_min) + 0.5))


@pytest.fixture
def repository(exported, tmp_path: Path) -> Path:
    model_dir = tmp_path / "repository" / "brick"
    model_dir.mkdir(parents=True)
    copy_version(exported.version_dir, model_dir / "1")
    return tmp_path / "repository"


def image_request(synthetic_category: Path) -> pb.DetectRequest:
    image = sorted((synthetic_category / "test" / "good").glob("*.png"))[0]
    return pb.DetectRequest(image=pb.ImageInput(encoded=image.read_bytes()))


def test_hot_swap_under_concurrent_requests(repository: Path, synthetic_category: Path) -> None:
    server = start_server(repository)
    request = image_request(synthetic_category)
    model_dir = repository / "brick"
    results: list[pb.DetectResponse] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def client() -> None:
        with server.channel() as channel:
            stub = server.stub(channel)
            while not stop.is_set():
                try:
                    results.append(stub.Detect(request, timeout=30))
                except grpc.RpcError as exc:
                    failures.append(exc)

    try:
        with ThreadPoolExecutor(4) as pool:
            for _ in range(4):
                pool.submit(client)
            time.sleep(1.5)
            copy_version(model_dir / "1", model_dir / "2", shift_threshold=50.0)
            server.wait_for_log("loaded brick version 2")
            time.sleep(1.5)
            stop.set()
        assert failures == []
        versions = {r.model_version for r in results}
        assert versions == {1, 2}
        for response in results:
            version_dir = model_dir / str(response.model_version)
            assert response.score == pytest.approx(expected_score(response.raw_score, version_dir), abs=1e-5)
        assert results[-1].model_version == 2
    finally:
        assert server.stop() == 0


def test_broken_versions_are_rejected_and_the_old_one_keeps_serving(repository: Path, synthetic_category: Path) -> None:
    server = start_server(repository)
    model_dir = repository / "brick"
    try:
        truncated = copy_version(model_dir / "1", model_dir / "2")
        with (truncated / IR_BIN_FILENAME).open("r+b") as stream:
            stream.truncate(1000)
        server.wait_for_log("rejected brick version 2")

        bad_metadata = model_dir / "3"
        shutil.copytree(model_dir / "1", bad_metadata)
        (bad_metadata / METADATA_FILENAME).write_text('{"schema_version": 1}')
        server.wait_for_log("rejected brick version 3")

        bad_ir = model_dir / "4"
        shutil.copytree(model_dir / "1", bad_ir)
        (bad_ir / IR_XML_FILENAME).write_text("<net><broken")
        server.wait_for_log("rejected brick version 4")

        with server.channel() as channel:
            stub = server.stub(channel)
            response = stub.Detect(image_request(synthetic_category), timeout=30)
            listing = stub.ListModels(pb.ListModelsRequest(), timeout=5)
        assert response.model_version == 1
        assert [list(m.versions) for m in listing.models] == [[1]]
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
        assert 'visinspect_model_versions_rejected_total{model="brick"} 3.0' in text
        time.sleep(1.0)  # several polls later: a rejected version is not retried while its files are unchanged
        assert sum("rejected brick version 2" in entry.get("message", "") for entry in server.logs) == 1
    finally:
        assert server.stop() == 0


def test_no_model_yet_is_unavailable_until_one_arrives(exported, tmp_path: Path, synthetic_category: Path) -> None:
    repository = tmp_path / "empty"
    repository.mkdir()
    server = start_server(repository, wait_serving=False)
    try:
        server.wait_for_health(NOT_SERVING)
        with server.channel() as channel, pytest.raises(grpc.RpcError) as caught:
            server.stub(channel).Detect(image_request(synthetic_category), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no model is loaded yet" in caught.value.details()
        (repository / "brick").mkdir()
        copy_version(exported.version_dir, repository / "brick" / "1")
        server.wait_for_health(SERVING)
        server.wait_for_health(SERVING, "model/brick")
        with server.channel() as channel:
            assert server.stub(channel).Detect(image_request(synthetic_category), timeout=30).model == "brick"
    finally:
        server.stop()


def test_sigterm_drains_in_flight_requests(repository: Path, synthetic_category: Path) -> None:
    server = start_server(repository, ["--shutdown-grace-s", "20"])
    request = image_request(synthetic_category)
    request.extras.CopyFrom(pb.Extras(anomaly_map=True, mask=True, regions=True, map_size=pb.MAP_SIZE_ORIGINAL))
    with server.channel() as channel:
        stub = server.stub(channel)
        futures = [stub.Detect.future(request, timeout=60) for _ in range(16)]
        time.sleep(0.05)
        server.process.send_signal(15)
        responses = [future.result() for future in futures]
    assert all(r.model == "brick" for r in responses)
    assert server.process.wait(30) == 0
    messages = [entry.get("message", "") for entry in server.logs]
    assert any(m.startswith("shutting down") for m in messages) and messages[-1] == "stopped"
    with server.channel() as channel, pytest.raises(grpc.RpcError) as caught:
        server.stub(channel).Detect(request, timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_sigterm_while_clients_cancel_exits_cleanly(repository: Path, synthetic_category: Path) -> None:
    server = start_server(repository, ["--performance-hint", "THROUGHPUT"])
    noise = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    request = pb.DetectRequest(image=pb.ImageInput(encoded=cv2.imencode(".png", noise)[1].tobytes()))
    request.extras.CopyFrom(pb.Extras(anomaly_map=True, mask=True, map_size=pb.MAP_SIZE_ORIGINAL))
    with server.channel() as channel:
        stub = server.stub(channel)
        futures = [stub.Detect.future(request, timeout=60) for _ in range(32)]
        time.sleep(0.3)
        for future in futures[::2]:
            future.cancel()
        server.process.send_signal(15)
        kept = [future.result() for future in futures[1::2]]
    assert all(r.model == "brick" for r in kept)
    assert server.process.wait(30) == 0


def test_internal_fault_gives_a_generic_message_and_the_server_survives(
    repository: Path, synthetic_category: Path, caplog
) -> None:
    from visinspect_server.app import InspectionServer, embedded_backend_factory
    from visinspect_server.settings import ServerSettings

    settings = ServerSettings(model_repository=repository, host="127.0.0.1", port=0, metrics_port=-1)
    real_factory = embedded_backend_factory(settings)

    class FailsOnce:
        """Fault injection around the real OpenVINO backend: the first inference raises."""

        def __init__(self, backend) -> None:
            self.backend = backend
            self.failed = False

        async def infer(self, images):
            if not self.failed:
                self.failed = True
                raise RuntimeError("simulated device fault")
            return await self.backend.infer(images)

        def close(self) -> None:
            self.backend.close()

    loop = asyncio.new_event_loop()
    server = InspectionServer(settings, lambda folder, metadata: FailsOnce(real_factory(folder, metadata)))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(120)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = inspection_pb2_grpc.InspectionServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.Detect(
                    pb.DetectRequest(request_id="boom", image=image_request(synthetic_category).image), timeout=30
                )
            assert caught.value.code() == grpc.StatusCode.INTERNAL
            assert caught.value.details() == "internal error; the server log has the details (request id boom)"
            assert "simulated" not in caught.value.details()
            assert stub.Detect(image_request(synthetic_category), timeout=30).model == "brick"
        assert any("simulated device fault" in (r.exc_text or "") for r in caplog.records if r.levelname == "ERROR")
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
