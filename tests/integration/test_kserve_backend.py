"""The KServe v2 backend against a real model server: kserve's ModelServer (tests/kserve_standin) standing in
for OVMS, in its own process and virtualenv (kserve and tritonclient cannot share a process)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from tests.kserve_standin.launch import KSERVE_PYTHON, KSERVE_VENV_MISSING, StandIn
from tests.load_harness import wait_for
from tests.server_harness import (
    OVMS_TIMEOUT_S,
    ServerProcess,
    copy_version,
    detect,
    first_image_request,
    free_port,
    kserve_facade,
    sample_images,
    stand_in_and_facade,
    start_server,
)
from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_server.settings import parse

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

if not KSERVE_PYTHON.exists():
    pytest.skip(KSERVE_VENV_MISSING, allow_module_level=True)


@pytest.fixture(scope="module")
def standin(exported) -> Iterator[StandIn]:
    server = StandIn(exported.version_dir.parents[1]).start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def kserve_served(exported, standin) -> Iterator[ServerProcess]:
    server = kserve_facade(exported.version_dir.parents[1], standin)
    yield server
    server.stop()


def test_detect_matches_the_embedded_backend(served, kserve_served, synthetic_category) -> None:
    images = sample_images(synthetic_category)
    assert len(images) >= 6
    for image in images:
        request = pb.DetectRequest(request_id=image.name, image=pb.ImageInput(encoded=image.read_bytes()))
        embedded, remote = detect(served, request), detect(kserve_served, request)
        assert (remote.model, remote.model_version) == ("brick", 1)
        assert remote.is_anomalous == embedded.is_anomalous, image
        assert remote.score == pytest.approx(embedded.score, abs=1e-5), image
        assert remote.raw_score == pytest.approx(embedded.raw_score, rel=1e-5, abs=1e-5), image
        assert remote.confidence == pytest.approx(embedded.confidence, abs=1e-5), image
    assert {detect(kserve_served, pb.DetectRequest(image=pb.ImageInput(encoded=p.read_bytes()))).is_anomalous
            for p in images} == {True, False}  # fmt: skip


def test_detect_stream_matches_the_embedded_backend(served, kserve_served, synthetic_category) -> None:
    images = sample_images(synthetic_category)
    requests = [
        pb.DetectRequest(request_id=f"id-{i}", image=pb.ImageInput(encoded=p.read_bytes()))
        for i, p in enumerate(images)
    ]

    def stream(server: ServerProcess) -> list[pb.DetectStreamResponse]:
        with server.channel() as channel:
            return list(server.stub(channel).DetectStream(iter(requests), timeout=60))

    embedded, remote = stream(served), stream(kserve_served)
    assert [r.request_id for r in remote] == [r.request_id for r in requests]
    for mine, theirs in zip(remote, embedded, strict=True):
        assert mine.WhichOneof("outcome") == "result", mine.error.message
        assert mine.result.is_anomalous == theirs.result.is_anomalous
        assert mine.result.score == pytest.approx(theirs.result.score, abs=1e-5)


def test_models_listing_and_health_with_the_kserve_backend(served, kserve_served) -> None:
    with served.channel() as channel, kserve_served.channel() as remote_channel:
        embedded, remote = served.stub(channel), kserve_served.stub(remote_channel)
        assert remote.ListModels(pb.ListModelsRequest(), timeout=5) == embedded.ListModels(
            pb.ListModelsRequest(), timeout=5
        )
        request = pb.DescribeModelRequest(model="brick", model_version=1)
        assert remote.DescribeModel(request, timeout=5) == embedded.DescribeModel(request, timeout=5)
    for service in ("", "visinspect.v1.InspectionService", "model/brick"):
        assert kserve_served.health(service) == SERVING


class Hammer:
    """Threads sending Detect in a loop; records (seconds, code, details, sent after the kill) per call."""

    def __init__(self, facade: ServerProcess, request: pb.DetectRequest, threads: int = 3) -> None:
        self.facade, self.request = facade, request
        self.outcomes: list[tuple[float, grpc.StatusCode, str, bool]] = []
        self.killed = threading.Event()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        with self.facade.channel() as channel:
            stub = self.facade.stub(channel)
            while not self._stop.is_set():
                started, after_kill = time.monotonic(), self.killed.is_set()
                try:
                    stub.Detect(self.request, timeout=10)
                    code, details = grpc.StatusCode.OK, ""
                except grpc.RpcError as exc:
                    code, details = exc.code(), exc.details()
                self.outcomes.append((time.monotonic() - started, code, details, after_kill))

    def count(self, ok: bool) -> int:
        return sum((code == grpc.StatusCode.OK) == ok for _, code, _, _ in self.outcomes)

    def stop(self) -> list[tuple[float, grpc.StatusCode, str]]:
        """Stop; return the failed calls."""
        self._stop.set()
        for thread in self._threads:
            thread.join(15)
        return [(s, code, d) for s, code, d, _ in self.outcomes if code != grpc.StatusCode.OK]


def test_model_server_restart_fails_fast_then_recovers(exported, synthetic_category) -> None:
    repository, standin, facade = stand_in_and_facade(exported)
    request = first_image_request(synthetic_category)
    try:
        before = detect(facade, request).raw_score
        hammer = Hammer(facade, request)
        wait_for(lambda: hammer.count(ok=True) >= 6, 30, "6 successful requests before the kill")
        assert hammer.count(ok=False) == 0
        standin.kill()  # SIGKILL while requests are in flight
        hammer.killed.set()
        facade.wait_for_health(NOT_SERVING, timeout_s=10)
        assert facade.health("model/brick") == NOT_SERVING
        wait_for(lambda: hammer.count(ok=False) >= 5, 20, "5 failed requests")
        failures = hammer.stop()
        assert {code for _, code, _ in failures} == {grpc.StatusCode.UNAVAILABLE}, failures[:3]
        assert max(seconds for seconds, _, _ in failures) < OVMS_TIMEOUT_S + 2, failures
        assert any(f"inference backend at {standin.address} is unavailable" in d for _, _, d in failures), failures[:3]

        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            detect(facade, request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < OVMS_TIMEOUT_S + 2

        restarted = StandIn(repository, port=standin.port).start()
        try:
            facade.wait_for_health(SERVING, timeout_s=30)
            assert facade.health("model/brick") == SERVING
            assert detect(facade, request).raw_score == pytest.approx(before, rel=1e-6)
        finally:
            restarted.kill()
    finally:
        facade.stop()
        standin.kill()


def test_a_hung_model_server_costs_one_deadline_not_a_hang(exported, synthetic_category) -> None:
    _, standin, facade = stand_in_and_facade(exported)
    request = first_image_request(synthetic_category)
    try:
        before = detect(facade, request).raw_score
        standin.signal(signal.SIGSTOP)  # connections stay open, nothing answers
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            detect(facade, request, timeout=30)
        elapsed = time.monotonic() - started
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert f"inference backend at {standin.address} is unavailable: no answer within 3 s" in caught.value.details()
        assert OVMS_TIMEOUT_S - 0.5 < elapsed < OVMS_TIMEOUT_S + 15  # the deadline held; the rest is load
        facade.wait_for_health(NOT_SERVING, timeout_s=OVMS_TIMEOUT_S + 5)
        standin.signal(signal.SIGCONT)
        facade.wait_for_health(SERVING, timeout_s=OVMS_TIMEOUT_S + 5)
        assert detect(facade, request).raw_score == pytest.approx(before, rel=1e-6)
    finally:
        standin.signal(signal.SIGCONT)
        facade.stop()
        standin.kill()


def test_a_model_server_that_lost_the_version_answers_unavailable(exported, synthetic_category, tmp_path) -> None:
    repository, standin, facade = stand_in_and_facade(exported)
    request = first_image_request(synthetic_category)
    empty = tmp_path / "empty-repository"
    empty.mkdir()
    try:
        detect(facade, request)
        standin.kill()
        standin = StandIn(empty, port=standin.port).start()  # same address, without our model
        facade.wait_for_log(f"inference backend at {standin.address} reports model brick not ready", timeout_s=15)
        assert facade.health("model/brick") == NOT_SERVING
        assert facade.health("") == NOT_SERVING
        with pytest.raises(grpc.RpcError) as caught:
            detect(facade, request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "no longer serves model 'brick' version 1" in caught.value.details()
        standin.kill()
        standin = StandIn(repository, port=standin.port).start()
        facade.wait_for_health(SERVING, service="model/brick", timeout_s=10)
        assert facade.health("") == SERVING
        detect(facade, request)
    finally:
        facade.stop()
        standin.kill()


def test_the_facade_waits_for_a_model_server_started_after_it(exported, synthetic_category) -> None:
    repository = exported.version_dir.parents[1]
    port = free_port()
    args = ["--backend", "kserve", "--ovms-address", f"127.0.0.1:{port}", "--ovms-timeout-s", str(OVMS_TIMEOUT_S)]
    facade = start_server(repository, args, wait_serving=False)
    standin = StandIn(repository, port=port)
    try:
        facade.wait_for_log(f"inference backend at 127.0.0.1:{port} is unavailable")
        assert facade.health("") == NOT_SERVING
        standin.start()
        facade.wait_for_health(SERVING, timeout_s=30)
        assert facade.health("model/brick") == SERVING
        assert detect(facade, first_image_request(synthetic_category)).model_version == 1
        assert not [e for e in facade.logs if "rejected" in e.get("message", "")]  # nothing rejected while down
    finally:
        facade.stop()
        standin.kill()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--backend", "KServe", "--ovms-address", "ovms:9000", "--ovms-timeout-s", "2.5"],
            ("kserve", "ovms:9000", 2.5),
        ),
        ([], ("embedded", "localhost:9000", 10.0)),
    ],
)
def test_backend_settings(argv: list[str], expected: tuple) -> None:
    settings = parse(["--model-repository", "r", *argv])
    assert (settings.backend, settings.ovms_address, settings.ovms_timeout_s) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--backend", "triton"], "invalid setting backend"),
        (["--ovms-address", "ovms"], "invalid setting ovms_address"),
        (["--ovms-timeout-s", "0"], "invalid setting ovms_timeout_s"),
    ],
)
def test_invalid_backend_settings(argv: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse(["--model-repository", "r", *argv])


def test_versions_the_model_server_cannot_serve_are_rejected(exported, synthetic_category, tmp_path: Path) -> None:
    source = exported.version_dir
    served_repository, facade_repository = tmp_path / "model-server", tmp_path / "facade"
    # The model server has brick 1 and 3; the facade's repository has brick 1, 2 and 3 and a model "other".
    copy_version(source, served_repository / "brick" / "1")
    copy_version(source, served_repository / "brick" / "3")
    copy_version(source, facade_repository / "brick" / "1")
    copy_version(source, facade_repository / "brick" / "2")
    outputs = {"anomaly_map": "heat_map", "pred_score": "pred_score"}
    copy_version(source, facade_repository / "brick" / "3", outputs=outputs)  # metadata/IR mismatch
    copy_version(source, facade_repository / "other" / "1", model_name="other")
    standin = StandIn(served_repository).start()
    facade = kserve_facade(facade_repository, standin, "--versions-per-model", "3", timeout_s=None)
    try:
        # Not loaded by the model server (yet): waited for with back-off, never rejected.
        missing_version = facade.wait_for_log("waiting for brick version 2")["message"]
        assert "does not serve this version" in missing_version
        mismatch = facade.wait_for_log("rejected brick version 3")["message"]
        assert "remote metadata does not match our metadata" in mismatch
        assert (
            "outputs are anomaly_map FP32 [-1, 1, 128, 128], pred_score FP32 [-1], "
            "expected heat_map FP32 [-1, 1, 128, 128], pred_score FP32 [-1]"
        ) in mismatch
        missing_model = facade.wait_for_log("waiting for other version 1")["message"]
        assert "does not serve this version" in missing_model
        with facade.channel() as channel:
            listing = facade.stub(channel).ListModels(pb.ListModelsRequest(), timeout=5)
        assert [(m.name, list(m.versions)) for m in listing.models] == [("brick", [1])]
        image = pb.ImageInput(encoded=sample_images(synthetic_category)[0].read_bytes())
        for model, version in (("brick", 2), ("brick", 3), ("other", 0)):
            with pytest.raises(grpc.RpcError) as caught:
                detect(facade, pb.DetectRequest(model=model, model_version=version, image=image), timeout=5)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()
        assert facade.health("model/brick") == SERVING
        assert not [e for e in facade.logs if "rejected brick version 2" in e.get("message", "")]
    finally:
        facade.stop()
        standin.kill()


def test_patchcore_through_the_model_server_matches_the_embedded_backend(
    patchcore_exported, patchcore_served, synthetic_category
) -> None:
    repository = patchcore_exported.version_dir.parents[1]
    standin = StandIn(repository).start()
    try:
        remote = kserve_facade(repository, standin, timeout_s=None)
        try:
            for image in sample_images(synthetic_category):
                request = pb.DetectRequest(
                    image=pb.ImageInput(encoded=image.read_bytes()), extras=pb.Extras(mask=True, regions=True)
                )
                embedded, served = detect(patchcore_served, request), detect(remote, request)
                assert (served.model, served.model_version) == ("brick-patchcore", 1)
                assert served.is_anomalous == embedded.is_anomalous, image
                assert served.raw_score == pytest.approx(embedded.raw_score, rel=1e-5), image
                assert served.mask_png == embedded.mask_png, image
                assert len(served.regions) == len(embedded.regions), image
        finally:
            remote.stop()
    finally:
        standin.kill()
