"""Hot swaps under load, in-flight calls across a swap, unloading old versions, rollback by moving a version away,
rejected versions, start-up with no model, SIGTERM with cancelling clients, internal faults."""

from __future__ import annotations

import shutil
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from tests.inprocess import Gate, InProcessServer
from tests.load_harness import Load, expected_score, mixed_cases, summary, wait_for
from tests.reference import reference_raw_scores
from tests.server_harness import copy_version, start_server
from visinspect_api.model_repository import (
    IR_BIN_FILENAME,
    IR_XML_FILENAME,
    METADATA_FILENAME,
)
from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_api.v1 import inspection_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


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
            wait_for(lambda: len(results) >= 20, 60, "20 calls on version 1")
            copy_version(model_dir / "1", model_dir / "2", shift_threshold=50.0)
            server.wait_for_log("loaded brick version 2")
            wait_for(lambda: sum(r.model_version == 2 for r in results) >= 20, 60, "20 calls on version 2")
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
        copy_version(model_dir / "1", model_dir / "5")  # loading it takes later scans, which see 2-4 again
        server.wait_for_log("loaded brick version 5")
        for version in (2, 3, 4):  # a rejected version is not retried while its files are unchanged
            assert sum(f"rejected brick version {version}" in e.get("message", "") for e in server.logs) == 1
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


def test_sigterm_while_clients_cancel_exits_cleanly(repository: Path, synthetic_category: Path) -> None:
    server = start_server(repository, ["--performance-hint", "THROUGHPUT"])
    noise = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    request = pb.DetectRequest(image=pb.ImageInput(encoded=cv2.imencode(".png", noise)[1].tobytes()))
    request.extras.CopyFrom(pb.Extras(anomaly_map=True, mask=True, map_size=pb.MAP_SIZE_ORIGINAL))
    with server.channel() as channel:
        stub = server.stub(channel)
        futures = [stub.Detect.future(request, timeout=60) for _ in range(32)]
        # Every call taken by the server: in flight now, or already answered.
        wait_for(lambda: server.metric("visinspect_calls_in_flight") + answered(server) >= 32, 60, "32 calls taken")
        cancelled = [future.cancel() for future in futures[::2]]
        server.process.send_signal(15)
        kept = [future.result() for future in futures[1::2]]
    assert all(r.model == "brick" for r in kept), "every call the server took and nobody cancelled finished"
    assert server.process.wait(30) == 0
    messages = [entry.get("message", "") for entry in server.logs]
    assert messages[-1] == "stopped" and not any("grace period over" in m for m in messages)
    print(f"\ncancelled {sum(cancelled)} of 16 before they finished")


def answered(server) -> float:
    """Detect calls the server has answered, with any status."""
    codes = ("OK", "CANCELLED", "DEADLINE_EXCEEDED", "UNAVAILABLE", "INTERNAL")
    return sum(server.requests("Detect", code) for code in codes)


def test_internal_fault_gives_a_generic_message_and_the_server_survives(
    repository: Path, synthetic_category: Path, caplog
) -> None:
    class FailsOnce:
        """Fault injection around the real OpenVINO backend: the first inference raises."""

        def __init__(self, backend) -> None:
            self.backend = backend
            self.jobs = backend.jobs
            self.failed = False

        async def infer(self, images):
            if not self.failed:
                self.failed = True
                raise RuntimeError("simulated device fault")
            return await self.backend.infer(images)

        def warm_up(self, max_batch: int = 1) -> None:
            self.backend.warm_up(max_batch)

        def close(self) -> None:
            self.backend.close()

    with (
        InProcessServer(repository, wrap=FailsOnce) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = inspection_pb2_grpc.InspectionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.Detect(pb.DetectRequest(request_id="boom", image=image_request(synthetic_category).image), timeout=30)
        assert caught.value.code() == grpc.StatusCode.INTERNAL
        assert caught.value.details() == "internal error; the server log has the details (request id boom)"
        assert "simulated" not in caught.value.details()
        assert stub.Detect(image_request(synthetic_category), timeout=30).model == "brick"
    assert any("simulated device fault" in (r.exc_text or "") for r in caplog.records if r.levelname == "ERROR")


def test_a_call_in_flight_across_a_swap_finishes_on_the_version_it_started_on(
    repository: Path, exported_other_weights, synthetic_category: Path
) -> None:
    """A call held inside version 1's inference while version 2 (other weights) replaces it, and version 1 is
    unloaded (one version kept), still answers with version 1's weights and says so."""
    request = image_request(synthetic_category)
    reference = {
        1: reference_raw_scores(repository / "brick" / "1", [("image", request)])["image"],
        2: reference_raw_scores(exported_other_weights.version_dir, [("image", request)])["image"],
    }
    assert reference[1] != pytest.approx(reference[2], rel=1e-3)
    gate = Gate(is_open=False)
    with (
        InProcessServer(repository, gate, versions_per_model=1) as server,
        grpc.insecure_channel(server.address) as channel,
    ):
        stub = inspection_pb2_grpc.InspectionServiceStub(channel)
        before = stub.Detect.future(request, timeout=120)
        wait_for(lambda: gate.held_images == 1, 60, "the call inside version 1's inference")
        copy_version(exported_other_weights.version_dir, repository / "brick" / "2")
        wait_for(
            lambda: server.call(lambda: sorted(server.server.runtime.registry.loaded["brick"])) == [2], 60, "the swap"
        )
        after = stub.Detect.future(request, timeout=120)
        wait_for(lambda: gate.held_images == 2, 60, "a new call inside version 2's inference")
        gate.open()
        old, new = before.result(timeout=60), after.result(timeout=60)
    assert (old.model_version, new.model_version) == (1, 2)
    assert old.raw_score == pytest.approx(reference[1], rel=1e-5)
    assert new.raw_score == pytest.approx(reference[2], rel=1e-5)
    assert gate.images_by_version == {1: 1, 2: 1}


def test_versions_beyond_versions_per_model_are_unloaded(
    repository: Path, exported_other_weights, synthetic_category: Path
) -> None:
    model_dir = repository / "brick"
    request = image_request(synthetic_category)
    other = reference_raw_scores(exported_other_weights.version_dir, [("image", request)])["image"]
    server = start_server(repository, ["--versions-per-model", "2"])
    try:
        copy_version(exported_other_weights.version_dir, model_dir / "2")
        server.wait_for_log("loaded brick version 2")
        copy_version(model_dir / "1", model_dir / "3", shift_threshold=50.0)
        server.wait_for_log("serving {'brick': [2, 3]}")
        with server.channel() as channel:
            stub = server.stub(channel)
            listing = stub.ListModels(pb.ListModelsRequest(), timeout=10)
            with pytest.raises(grpc.RpcError) as unloaded:
                stub.Detect(pb.DetectRequest(image=request.image, model_version=1), timeout=30)
            pinned = stub.Detect(pb.DetectRequest(image=request.image, model_version=2), timeout=30)
            newest = stub.Detect(request, timeout=30)
        assert server.metric("visinspect_model_versions_loaded", 'model="brick"') == 2.0
    finally:
        assert server.stop() == 0
    assert [(m.name, list(m.versions), m.default_version) for m in listing.models] == [("brick", [2, 3], 3)]
    assert unloaded.value.code() == grpc.StatusCode.NOT_FOUND
    assert "has no loaded version 1; loaded: [2, 3]" in unloaded.value.details()
    assert pinned.model_version == 2 and pinned.raw_score == pytest.approx(other, rel=1e-5)
    assert newest.model_version == 3


def test_rollback_by_moving_the_version_folder_away_under_load(
    repository: Path, exported_other_weights, synthetic_category: Path, tmp_path: Path
) -> None:
    """README, "Rolling back": ``mv model_repository/<model>/<N> elsewhere``; the server serves N-1 again."""
    model_dir = repository / "brick"
    copy_version(exported_other_weights.version_dir, model_dir / "2")
    cases = mixed_cases(synthetic_category, errors=False)
    named = [(case.name, case.request) for case in cases]
    reference = {1: reference_raw_scores(model_dir / "1", named), 2: reference_raw_scores(model_dir / "2", named)}
    server = start_server(repository)
    load = Load(server.address, cases, clients=4).start()
    try:
        wait_for(lambda: sum(c.model_version == 2 for c in load.calls) >= 20, 60, "20 calls on version 2")
        (model_dir / "2").rename(tmp_path / "quarantined-2")
        server.wait_for_log("serving {'brick': [1]}")
        wait_for(lambda: sum(c.model_version == 1 for c in load.calls) >= 20, 60, "20 calls on version 1")
        with server.channel() as channel, pytest.raises(grpc.RpcError) as gone:
            server.stub(channel).Detect(pb.DetectRequest(image=cases[0].request.image, model_version=2), timeout=30)
    finally:
        calls = load.stop()
        assert server.stop() == 0
    print(f"\nrollback: {summary(calls)}")
    assert [c for c in calls if c.code != grpc.StatusCode.OK] == []
    for call in calls:
        assert call.raw_score == pytest.approx(reference[call.model_version][call.case], rel=1e-4), call
    first_v1_answered = min(c.ended for c in calls if c.model_version == 1)
    assert all(c.model_version == 2 for c in calls if c.ended < first_v1_answered)
    late = [c for c in calls if c.started > first_v1_answered]
    assert late and all(c.model_version == 1 for c in late), "after the rollback only version 1 answers"
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
