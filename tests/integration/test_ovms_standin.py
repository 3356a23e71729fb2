"""The kserve stand-in behaves like OVMS: it polls the repository, loads new versions only after it noticed them and
took its load time, serves what config.json's model_version_policy says, retires the rest, reloads on plugin_config
changes and answers with OVMS's status codes. Tiny IRs built here, no training; tritonclient talks to it."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import tritonclient.grpc as grpcclient
from openvino import opset13 as ops
from tritonclient.utils import InferenceServerException

from tests.kserve_standin import launch
from tests.kserve_standin.policy import DEFAULT_POLICY, ModelSpec, Policy, State, parse_config, parse_policy, plan

POLL_S = 0.2
NOT_FOUND, INVALID_ARGUMENT = "StatusCode.NOT_FOUND", "StatusCode.INVALID_ARGUMENT"
MISSING = "Model with requested version is not found"
NOT_LOADED_YET = "Model with requested version is not loaded yet"
RETIRED = "Model with requested version is retired"
_FLAGS = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
BF16 = "bf16" if ("avx512_bf16" in _FLAGS or "amx_bf16" in _FLAGS) else "f32"  # what OpenVINO reports back

if not launch.KSERVE_PYTHON.exists():
    pytest.skip(launch.KSERVE_VENV_MISSING, allow_module_level=True)


def publish(base: Path, number: int, precision: str | None = None) -> None:
    """Version ``number`` of a tiny IR whose pred_score for a black image is ``number``; one rename, like the exporter."""
    image = ops.parameter([-1, 8, 8, 3], ov.Type.u8, name="image")
    mean = ops.reduce_mean(ops.convert(image, ov.Type.f32), ops.constant(np.array([3])), keep_dims=True)
    anomaly_map = ops.add(ops.transpose(mean, ops.constant(np.array([0, 3, 1, 2]))), ops.constant(np.float32(number)))
    anomaly_map.output(0).set_names({"anomaly_map"})
    score = ops.reduce_max(anomaly_map, ops.constant(np.array([1, 2, 3])), keep_dims=False)
    score.output(0).set_names({"pred_score"})
    staging = base / f".staging-{number}"
    ov.save_model(ov.Model([anomaly_map, score], [image], f"tiny-{number}"), staging / "model.xml")
    if precision:
        (staging / "visinspect-metadata.json").write_text(json.dumps({"inference_precision": precision}))
    staging.rename(base / str(number))


def write_config(repository: Path, models: dict[str, dict]) -> None:
    entries = [{"config": {"name": name, "base_path": name, "target_device": "CPU", **m}} for name, m in models.items()]
    temporary = repository / ".config.json.tmp"
    temporary.write_text(json.dumps({"model_config_list": entries}))
    temporary.replace(repository / "config.json")


class StandIn(launch.StandIn):
    """The stand-in polling every ``POLL_S``, started at once, with a KServe v2 client; its stdout lines are the
    events tests wait on."""

    def __init__(self, repository: Path, *flags: str) -> None:
        super().__init__(repository, flags=("--poll-seconds", str(POLL_S), *flags), startup_timeout_s=60)
        self.start()
        self.client = grpcclient.InferenceServerClient(self.address)

    def score(self, model: str, version: str = "") -> tuple[float, str]:
        """pred_score for a black image, and the version that answered."""
        image = grpcclient.InferInput("image", [1, 8, 8, 3], "UINT8")
        image.set_data_from_numpy(np.zeros((1, 8, 8, 3), np.uint8))
        result = self.client.infer(model, [image], model_version=version, client_timeout=20)
        return float(result.as_numpy("pred_score")[0]), result.get_response().model_version

    def versions(self, model: str, version: str = "") -> list[str]:
        return list(self.client.get_model_metadata(model, version, client_timeout=10).versions)

    def close(self) -> None:
        self.client.close()
        self.kill()


@contextlib.contextmanager
def hammering(address: str, model: str, version: str) -> Iterator[list[tuple[str, str]]]:
    """Infer in a loop on another thread while the block runs; yields each call's (status, pred_score or message)."""
    outcomes: list[tuple[str, str]] = []
    done = threading.Event()

    def run() -> None:
        client = grpcclient.InferenceServerClient(address)
        image = grpcclient.InferInput("image", [1, 8, 8, 3], "UINT8")
        image.set_data_from_numpy(np.zeros((1, 8, 8, 3), np.uint8))
        while not done.wait(0.01):
            try:
                result = client.infer(model, [image], model_version=version, client_timeout=20)
                outcomes.append(("OK", str(result.as_numpy("pred_score")[0])))
            except InferenceServerException as exc:
                outcomes.append((exc.status() or "", exc.message() or ""))
        client.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield outcomes
    finally:
        done.set()
        thread.join(30)


def failure(call: Callable[[], object]) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value.status() or "", caught.value.message() or ""


@pytest.fixture
def started() -> Iterator[Callable[..., StandIn]]:
    servers: list[StandIn] = []

    def start(repository: Path, *flags: str) -> StandIn:
        servers.append(StandIn(repository, *flags))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_a_published_version_is_served_after_a_poll_and_its_load_and_latest_2_retires_the_oldest(
    tmp_path: Path, started
) -> None:
    base, load_delay_s = tmp_path / "tiny", 1.2
    base.mkdir()
    publish(base, 1)
    publish(base, 2)
    plugin = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    write_config(tmp_path, {"tiny": {"model_version_policy": {"latest": {"num_versions": 2}}, "plugin_config": plugin}})
    standin = started(tmp_path, "--load-delay-seconds", str(load_delay_s), "--load-wait-seconds", "0.3")
    assert standin.client.is_server_live() and standin.client.is_server_ready()
    assert standin.versions("tiny") == ["1", "2"]
    assert standin.score("tiny") == (2.0, "2")
    assert standin.score("tiny", "1") == (1.0, "1")

    with hammering(standin.address, "tiny", "1") as outcomes:  # across version 1's retirement
        mark, published = standin.mark(), time.monotonic()
        publish(base, 3)
        code, message = failure(lambda: standin.versions("tiny", "3"))  # the poll has not noticed it, or it is loading
        assert code == NOT_FOUND and (MISSING in message or NOT_LOADED_YET in message), message

        loading = standin.wait_line("version tiny/3 LOADING", since=mark)
        assert standin.client.is_model_ready("tiny", "3") is False
        still_loading = (NOT_FOUND, f"{NOT_LOADED_YET} - model 'tiny' version 3")
        assert failure(lambda: standin.versions("tiny", "3")) == still_loading
        assert failure(lambda: standin.score("tiny", "3")) == still_loading  # after --load-wait-seconds
        assert standin.score("tiny") == (2.0, "2")  # the default stays the newest AVAILABLE version meanwhile
        assert standin.versions("tiny") == ["1", "2"]

        available = standin.wait_line("version tiny/3 AVAILABLE", since=loading)
        assert time.monotonic() - published >= load_delay_s
        assert standin.score("tiny") == (3.0, "3")
        assert "loaded tiny version 3 with INFERENCE_PRECISION_HINT=f32 PERFORMANCE_HINT=LATENCY" in standin.lines
        assert standin.wait_line("version tiny/1 UNLOADED (retired by policy)", since=mark) > available
    assert failure(lambda: standin.score("tiny", "1")) == (NOT_FOUND, f"{RETIRED} - model 'tiny' version 1")
    assert failure(lambda: standin.versions("tiny", "1")) == (NOT_FOUND, f"{RETIRED} - model 'tiny' version 1")
    assert standin.client.is_model_ready("tiny", "1") is False  # OVMS still knows the version: ready false, no error
    assert standin.versions("tiny") == ["2", "3"]
    kinds = {(code, message.split(" - ")[0]) for code, message in outcomes}
    assert kinds <= {("OK", "1.0"), (NOT_FOUND, RETIRED)} and ("OK", "1.0") in kinds, kinds


def test_policies_statuses_and_a_config_change(tmp_path: Path, started) -> None:
    for name, numbers in {"chosen": (1, 2, 3), "every": (1, 2), "steady": (1, 2), "gone": (1,)}.items():
        (tmp_path / name).mkdir()
        for number in numbers:
            publish(tmp_path / name, number)
    every = {"model_version_policy": {"all": {}}}
    models = {
        "chosen": {"model_version_policy": {"specific": {"versions": [1, 3]}}},
        "every": {**every, "plugin_config": {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}},
        "steady": {},  # no policy: OVMS serves the latest 1
        "gone": {},
    }
    write_config(tmp_path, models)
    standin = started(tmp_path, "--load-delay-seconds", "0.5")
    assert standin.versions("chosen") == ["1", "3"]
    assert standin.score("chosen") == (3.0, "3")
    assert failure(lambda: standin.score("chosen", "2")) == (NOT_FOUND, f"{MISSING} - model 'chosen' version 2")
    assert standin.versions("every") == ["1", "2"]
    assert standin.versions("steady") == ["2"]
    assert "loaded every version 2 with INFERENCE_PRECISION_HINT=f32 PERFORMANCE_HINT=LATENCY" in standin.lines
    assert failure(lambda: standin.client.is_model_ready("nothing")) == (
        NOT_FOUND,
        "Model with requested name is not found - model 'nothing'",
    )
    assert failure(lambda: standin.score("every", "7"))[0] == NOT_FOUND
    assert failure(lambda: standin.versions("every", "x"))[0] == INVALID_ARGUMENT

    mark = standin.mark()
    plugin = {"PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "bf16"}
    models |= {
        "chosen": {"model_version_policy": {"specific": {"versions": [2]}}},
        "every": {**every, "plugin_config": plugin},
    }
    del models["gone"]
    write_config(tmp_path, models)
    standin.wait_line("version gone/1 UNLOADED (model removed from config)", since=mark)
    standin.wait_line("config reloaded: chosen, every, steady", since=mark)
    reloading = standin.wait_line("version every/1 LOADING (reload)", since=mark)
    assert standin.client.is_model_ready("every", "1") is False  # OVMS does not serve a version while it reloads
    standin.wait_line("version every/2 AVAILABLE", since=reloading)
    standin.wait_line("version chosen/3 UNLOADED (retired by policy)", since=mark)
    assert standin.events(mark, "loaded every") == [
        f"loaded every version {n} with INFERENCE_PRECISION_HINT={BF16} PERFORMANCE_HINT=THROUGHPUT" for n in (1, 2)
    ]
    assert standin.score("every") == (2.0, "2")
    assert standin.versions("chosen") == ["2"]
    assert {line for line in standin.events(mark, "version chosen/") if "UNLOADED" in line} == {
        "version chosen/1 UNLOADED (retired by policy)",
        "version chosen/3 UNLOADED (retired by policy)",
    }
    assert not standin.events(mark, "version steady/")  # unchanged: served throughout, not reloaded
    assert failure(lambda: standin.score("gone")) == (NOT_FOUND, f"{MISSING} - model 'gone' has no available version")
    assert failure(lambda: standin.score("gone", "1")) == (NOT_FOUND, f"{RETIRED} - model 'gone' version 1")


def test_without_config_json_every_version_is_served_at_its_metadata_precision(tmp_path: Path, started) -> None:
    base = tmp_path / "plain"
    base.mkdir()
    publish(base, 1, precision="f32")
    publish(base, 2, precision="bf16")
    standin = started(tmp_path)
    assert any(line.startswith(f"no config at {tmp_path / 'config.json'}") for line in standin.lines)
    assert standin.versions("plain") == ["1", "2"]
    assert "loaded plain version 1 with INFERENCE_PRECISION_HINT=f32 PERFORMANCE_HINT=LATENCY" in standin.lines
    assert f"loaded plain version 2 with INFERENCE_PRECISION_HINT={BF16} PERFORMANCE_HINT=LATENCY" in standin.lines
    mark = standin.mark()
    publish(base, 3)
    standin.wait_line("version plain/3 AVAILABLE", since=mark)
    assert standin.versions("plain") == ["1", "2", "3"]
    assert standin.score("plain") == (3.0, "3")


def test_version_policies_and_plans() -> None:
    assert parse_policy(None) == DEFAULT_POLICY == Policy("latest", 1)
    assert Policy("latest", 2).filter([3, 1, 2]) == [2, 3]
    assert Policy("specific", versions=(1, 3, 9)).filter([1, 2, 3]) == [1, 3]
    assert parse_policy({"all": {}}).filter([2, 1]) == [1, 2]
    assert parse_policy({"specific": {"versions": [3, 0, 1]}}) == Policy("specific", versions=(1, 3))
    for bad in ({"latest": {}}, {"newest": {}}, {"all": {}, "latest": {"num_versions": 1}}, "all"):
        with pytest.raises(ValueError, match="model_version_policy"):
            parse_policy(bad)

    config = {"config": {"name": "m", "base_path": "m", "plugin_config": {"NUM_STREAMS": 2, "HINT": "x"}}}
    (spec,) = parse_config(json.dumps({"model_config_list": [config]}), Path("/repo")).values()
    assert spec == ModelSpec("m", Path("/repo/m"), "CPU", DEFAULT_POLICY, (("HINT", "x"), ("NUM_STREAMS", "2")))
    absolute = {"config": {"name": "a", "base_path": "/models/a"}}
    assert parse_config(json.dumps({"model_config_list": [absolute]}), Path("/repo"))["a"].base_path == Path(
        "/models/a"
    )

    loaded = {1: (State.AVAILABLE, spec), 2: (State.AVAILABLE, spec), 3: (State.END, spec)}
    assert plan([2, 3, 4], loaded, spec) == plan([2, 3, 4], loaded, spec)
    changes = plan([2, 3, 4], loaded, spec)
    assert (changes.start, changes.reload, changes.retire) == ([4], [3], [1])  # a retired version wanted again reloads
    other_policy = ModelSpec("m", Path("/repo/m"), "CPU", Policy("all"), spec.plugin_config)
    assert plan([1, 2], loaded, other_policy).reload == []  # a policy change alone reloads nothing
    other_plugin = ModelSpec("m", Path("/repo/m"), "CPU", DEFAULT_POLICY, (("HINT", "y"),))
    assert plan([1, 2], loaded, other_plugin).reload == [1, 2]
