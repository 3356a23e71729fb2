"""Rolling out versions through a model server that behaves like OVMS (tests/kserve_standin: it polls, takes time
to load, serves by config.json's version policy, retires, reloads on plugin_config changes): the facade follows
the model server instead of racing it, and never serves a version at a precision it was not evaluated at."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from tests.kserve_standin.launch import KSERVE_PYTHON, KSERVE_VENV_MISSING, StandIn
from tests.load_harness import wait_for
from tests.server_harness import copy_version, detect, kserve_facade, sample_images
from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_training.repository import write_ovms_config

CLIENTS = 8
LOAD_DELAY_S = 3.0  # the stand-in's load time: longer than the facade's poll, so the facade sees N+1 first

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

if not KSERVE_PYTHON.exists():
    pytest.skip(KSERVE_VENV_MISSING, allow_module_level=True)


class Clients:
    """``CLIENTS`` threads calling Detect (newest version) in a loop, each on its own channel, recording
    the version that answered or the status code of the failure."""

    def __init__(self, facade, request: pb.DetectRequest) -> None:
        self.results: list[list[int | str]] = [[] for _ in range(CLIENTS)]
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(facade, request, i), daemon=True) for i in range(CLIENTS)
        ]

    def _run(self, facade, request: pb.DetectRequest, index: int) -> None:
        with facade.channel() as channel:
            stub = facade.stub(channel)
            while not self._stop.is_set():
                try:
                    self.results[index].append(stub.Detect(request, timeout=30).model_version)
                except grpc.RpcError as exc:
                    self.results[index].append(f"{exc.code().name}: {exc.details()}")

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def all_saw(self, version: int) -> bool:
        return all(version in list(results) for results in self.results)


def test_a_version_published_under_load_is_served_once_the_model_server_has_loaded_it(
    exported, synthetic_category, tmp_path: Path
) -> None:
    repository = tmp_path / "repository"
    for version in (1, 2):
        copy_version(exported.version_dir, repository / "brick" / str(version))
    write_ovms_config(repository)  # latest 2, as every export writes it
    standin = StandIn(repository, flags=("--poll-seconds", "0.5", "--load-delay-seconds", str(LOAD_DELAY_S))).start()
    facade = kserve_facade(repository, standin, timeout_s=None)
    request = pb.DetectRequest(image=pb.ImageInput(encoded=sample_images(synthetic_category)[0].read_bytes()))
    try:
        with Clients(facade, request) as clients:
            wait_for(lambda: clients.all_saw(2), 60, "every client served by version 2")
            copy_version(exported.version_dir, repository / "brick" / "3")
            write_ovms_config(repository)
            waiting = facade.wait_for_log("waiting for brick version 3", timeout_s=30)["message"]
            assert "does not serve this version (yet)" in waiting or "not ready" in waiting
            facade.wait_for_log("loaded brick version 3", timeout_s=60)
            wait_for(lambda: clients.all_saw(3), 60, "every client served by version 3")
        failures = [r for results in clients.results for r in results if isinstance(r, str)]
        assert failures == [], failures[:5]
        for results in clients.results:  # each client's calls are sequential: N until N+1, then N+1 only
            assert results[0] == 2 and results[-1] == 3
            assert results == sorted(results), results
        assert sum(len(r) for r in clients.results) > 2 * CLIENTS
        assert not [e for e in facade.logs if "rejected" in e.get("message", "")]
        # latest 2: the model server retired version 1 once 3 was available; the facade no longer offers it
        wait_for(lambda: any("brick/1 UNLOADED (retired by policy)" in line for line in standin.lines), 30, "retired")
        with facade.channel() as channel:
            listing = facade.stub(channel).ListModels(pb.ListModelsRequest(), timeout=5)
        assert [(m.name, list(m.versions)) for m in listing.models] == [("brick", [2, 3])]
        with pytest.raises(grpc.RpcError) as caught:
            detect(facade, pb.DetectRequest(model="brick", model_version=1, image=request.image), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "version 1 was retired by the model server's version policy" in caught.value.details()
        assert facade.health("model/brick") == SERVING
    finally:
        facade.stop()
        standin.kill()


def test_a_config_change_to_another_precision_stops_serving_until_it_matches_again(
    exported, synthetic_category, tmp_path: Path
) -> None:
    """OVMS reloads a model's versions when its plugin_config changes; at a precision the metadata was not
    evaluated at, the facade refuses them (KServe v2 cannot report what was compiled: the file OVMS compiles
    from is checked), and serves them again once config.json states their precision."""
    repository = tmp_path / "repository"
    copy_version(exported.version_dir, repository / "brick" / "1")
    write_ovms_config(repository)
    config_path = repository / "config.json"
    evaluated = json.loads(config_path.read_text())
    assert evaluated["model_config_list"][0]["config"]["plugin_config"]["INFERENCE_PRECISION_HINT"] == "f32"
    standin = StandIn(repository, flags=("--poll-seconds", "0.3")).start()
    facade = kserve_facade(repository, standin, timeout_s=None)
    request = pb.DetectRequest(image=pb.ImageInput(encoded=sample_images(synthetic_category)[0].read_bytes()))
    try:
        before = detect(facade, request).raw_score
        changed = json.loads(config_path.read_text())
        changed["model_config_list"][0]["config"]["plugin_config"]["INFERENCE_PRECISION_HINT"] = "bf16"
        config_path.write_text(json.dumps(changed))
        rejected = facade.wait_for_log("rejected brick version 1", timeout_s=30)["message"]
        assert "compiles it at bf16" in rejected and "evaluated and calibrated at f32" in rejected
        reloaded = "loaded brick version 1 with INFERENCE_PRECISION_HINT=bf16"
        wait_for(lambda: any(reloaded in line for line in standin.lines), 30, "the stand-in's reload at bf16")
        with pytest.raises(grpc.RpcError) as caught:
            detect(facade, request, timeout=10)
        assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND)
        facade.wait_for_health(NOT_SERVING, service="model/brick", timeout_s=10)
        config_path.write_text(json.dumps(evaluated))  # back to the precision version 1 was evaluated at
        facade.wait_for_health(SERVING, service="model/brick", timeout_s=60)
        assert detect(facade, request).raw_score == pytest.approx(before, rel=1e-5)
    finally:
        facade.stop()
        standin.kill()
