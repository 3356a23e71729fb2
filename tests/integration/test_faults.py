"""Faults under load (tests/load_harness.py clients), each against its own server subprocess.

SIGTERM while 8 clients run (the drain's steps one by one are in test_drain.py), a version with new
weights rolled out under load, a version folder still being written, the repository renamed away or replaced by a file while
serving (each on a private copy of the session's repository), the model server (kserve stand-in for
OVMS) killed and restarted under load, and an unexpected error inside a repository scan.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.kserve_standin.launch import KSERVE_PYTHON, KSERVE_VENV_MISSING, StandIn
from tests.load_harness import Call, Load, expected_score, mixed_cases, sdk_channel, summary, wait_for
from tests.reference import reference_raw_scores
from tests.server_harness import OVMS_TIMEOUT_S, ServerProcess, copy_version, kserve_facade, start_server
from visinspect_api.model_repository import (
    IR_BIN_FILENAME,
    IR_XML_FILENAME,
    read_metadata,
    write_metadata,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
MODEL = "brick"


@pytest.fixture
def repository(exported, tmp_path: Path) -> Path:
    """A private copy of the session's exported repository (version 1 of ``brick``)."""
    source = exported.version_dir.parents[1]
    target = tmp_path / "repository"
    shutil.copytree(source, target)
    assert (target / MODEL / "1").is_dir()
    return target


def log_count(server: ServerProcess, text: str) -> int:
    return sum(text in str(entry.get("message", "")) for entry in list(server.logs))


def assert_scores_match_versions(calls: list[Call], model_dir: Path) -> None:
    """Every response's score is what its own version's calibration gives its raw score: no mixing."""
    for call in calls:
        version_dir = model_dir / str(call.model_version)
        assert call.score == pytest.approx(expected_score(call.raw_score, version_dir), abs=1e-4), call


def shifted_metadata(version_dir: Path, shift: float = 0.25):
    """The version's metadata with the raw threshold moved by ``shift`` of the raw range (scores drop by ``shift``)."""
    metadata = read_metadata(version_dir)
    c = metadata.calibration
    calibration = dataclasses.replace(c, image_threshold=c.image_threshold + shift * (c.image_max - c.image_min))
    return dataclasses.replace(metadata, calibration=calibration)


REFUSED = (
    "shutting down: retry on another replica",  # by the draining server itself
    "backend unhealthy",  # by the client's balancer: the server's health is NOT_SERVING
    "failed to connect",  # nothing listens any more
    "connections to all backends failing",
    "Connection reset",  # the process exited while the call waited in gRPC core, before any handler took it
    "Socket closed",
    "Broken pipe",
)


class HealthWatch:
    """Records every status a health Watch of the whole server reports, until NOT_SERVING."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.replies: list[tuple[float, int]] = []
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        wait_for(lambda: bool(self.replies), 30, "the health watch's first reply")

    def join(self) -> list[tuple[float, int]]:
        self._thread.join(10)
        return self.replies

    def _watch(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=120)
            try:
                for reply in stream:
                    self.replies.append((time.monotonic(), reply.status))
                    if reply.status == NOT_SERVING:
                        stream.cancel()  # a Watch never ends by itself
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.CANCELLED:
                    raise


def test_sigterm_under_load_drains_and_no_call_ends_cancelled(repository: Path, synthetic_category) -> None:
    """SIGTERM while 4 SDK-style clients (health-balanced, retrying) and 4 plain clients (neither) hammer the server.

    The calls the server took all finish OK; every other call is refused UNAVAILABLE (a status clients retry);
    none ends CANCELLED, INTERNAL or UNKNOWN. The plain clients keep sending until the grace period ends, so the
    process then exits without stopping gRPC (stopping it would fail their last calls CANCELLED, grpc#41785).
    """
    grace_s = 5.0
    server = start_server(repository, ["--shutdown-grace-s", str(grace_s)])
    assert server.process is not None
    watcher = HealthWatch(server.address)
    cases = mixed_cases(synthetic_category, errors=False)
    sdk = Load(server.address, cases, clients=4, channel=sdk_channel).start()
    plain = Load(server.address, cases, clients=4).start()
    try:
        wait_for(lambda: len(sdk.calls) >= 40 and len(plain.calls) >= 40, 120, "80 calls before SIGTERM")
        sigterm_at = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        exit_code = server.process.wait(grace_s + 60)
        exited_at = time.monotonic()
        wait_for(lambda: sum(c.started > exited_at for c in sdk.calls + plain.calls) >= 8, 60, "calls after the exit")
    finally:
        calls = sdk.stop() + plain.stop()
        server.stop()
    health = watcher.join()
    draining = Counter(c.code.name for c in calls if sigterm_at < c.started < exited_at)
    print(
        f"\nsigterm: {summary(calls)}; exit after {exited_at - sigterm_at:.2f} s; started while draining: {dict(draining)}"
    )
    messages = [str(entry.get("message", "")) for entry in server.logs]

    assert exit_code == 0
    assert exited_at - sigterm_at < grace_s + 30, "the process outlived its grace period"
    assert health[0][1] == SERVING and health[-1][1] == NOT_SERVING
    assert sigterm_at <= health[-1][0] <= exited_at, "NOT_SERVING was announced during the drain"

    assert [c for c in calls if c.code not in {OK, UNAVAILABLE}] == [], "nothing ends CANCELLED, INTERNAL, UNKNOWN"
    unexplained = [c for c in calls if c.code == UNAVAILABLE and not any(words in c.details for words in REFUSED)]
    assert unexplained == [], "every UNAVAILABLE is a refusal of a call the server never took"
    drained = [m for m in messages if m.startswith("drained (")]
    assert drained and int(drained[0].split("(")[1].split()[0]) > 0, "calls were in flight at SIGTERM"
    assert not any("grace period over" in m for m in messages), "every call the server took finished"
    assert any(c.code == OK and c.started < sigterm_at < c.ended for c in calls), "calls finished during the drain"
    after_exit = [c for c in calls if c.started > exited_at]
    assert after_exit and all(c.code == UNAVAILABLE for c in after_exit)
    assert "callers kept sending until the grace period ended" in " ".join(messages), "the plain clients never stop"
    assert messages[-1] == "stopped"


def test_rollout_of_new_weights_under_load_fails_nothing_and_mixes_no_versions(
    repository: Path, exported_other_weights, synthetic_category
) -> None:
    """Version 2 has other weights (another seed). Every response's raw score is what the weights of the version it
    names give that request, and once one call has been answered by version 2, no later call gets version 1."""
    model_dir = repository / MODEL
    cases = mixed_cases(synthetic_category, errors=False)
    named = [(case.name, case.request) for case in cases]
    reference = {
        1: reference_raw_scores(model_dir / "1", named),
        2: reference_raw_scores(exported_other_weights.version_dir, named),
    }
    for case in cases:  # the check discriminates: the two versions' weights disagree on every request
        assert reference[1][case.name] != pytest.approx(reference[2][case.name], rel=1e-3), case.name
    server = start_server(repository)
    load = Load(server.address, cases, clients=8).start()
    try:
        wait_for(lambda: len(load.calls) >= 40, 120, "40 calls on version 1")
        copy_version(exported_other_weights.version_dir, model_dir / "2")
        server.wait_for_log(f"loaded {MODEL} version 2")
        wait_for(lambda: sum(c.model_version == 2 for c in load.calls) >= 200, 120, "200 calls on version 2")
    finally:
        calls = load.stop()
        assert server.stop() == 0
    print(f"\nrollout: {summary(calls)}")

    assert [c for c in calls if c.code != OK] == []
    assert {c.model_version for c in calls} == {1, 2}
    for call in calls:
        assert call.raw_score == pytest.approx(reference[call.model_version][call.case], rel=1e-4), call
    assert_scores_match_versions(calls, model_dir)
    first_v2_answered = min(c.ended for c in calls if c.model_version == 2)
    late = [c for c in calls if c.started > first_v2_answered]
    assert late and all(c.model_version == 2 for c in late), "no call went back to version 1 after the swap"


def write_slowly(path: Path, data: bytes, chunks: int = 4, pause_s: float = 0.7) -> float:
    """Write ``data`` in ``chunks`` pieces with pauses longer than the poll interval (0.3 s) in between.

    Returns the time.monotonic() at which the file became complete.
    """
    step = -(-len(data) // chunks)
    with path.open("wb") as stream:
        for start in range(0, len(data), step):
            if start:
                time.sleep(pause_s)
            stream.write(data[start : start + step])
            stream.flush()
        return time.monotonic()


def test_version_folder_still_being_written_is_served_only_once_complete(repository: Path, synthetic_category) -> None:
    model_dir = repository / MODEL
    source = model_dir / "1"
    xml, weights = (source / IR_XML_FILENAME).read_bytes(), (source / IR_BIN_FILENAME).read_bytes()
    server = start_server(repository)
    load = Load(server.address, mixed_cases(synthetic_category, errors=False), clients=4).start()
    try:
        wait_for(lambda: len(load.calls) >= 20, 120, "20 calls on version 1")
        # Version 2: files written in place, weights slowly, metadata last.
        v2 = model_dir / "2"
        v2.mkdir()
        (v2 / IR_XML_FILENAME).write_bytes(xml)
        write_slowly(v2 / IR_BIN_FILENAME, weights)
        server.wait_for_log(f"rejected {MODEL} version 2")  # no metadata yet
        assert log_count(server, f"loaded {MODEL} version 2") == 0
        v2_complete = time.monotonic()
        write_metadata(v2, shifted_metadata(source))
        server.wait_for_log(f"loaded {MODEL} version 2")
        wait_for(lambda: sum(c.model_version == 2 for c in load.calls) >= 20, 120, "20 calls on version 2")

        # Version 3: metadata first, then the IR, weights slowly (their sha256 disagrees until complete).
        v3 = model_dir / "3"
        v3.mkdir()
        write_metadata(v3, shifted_metadata(source, shift=-0.25))
        (v3 / IR_XML_FILENAME).write_bytes(xml)
        v3_complete = write_slowly(v3 / IR_BIN_FILENAME, weights)
        server.wait_for_log(f"loaded {MODEL} version 3")
        wait_for(lambda: sum(c.model_version == 3 for c in load.calls) >= 20, 120, "20 calls on version 3")
        rejected_logs = log_count(server, f"rejected {MODEL} version")
        rejected_metric = server.metric("visinspect_model_versions_rejected_total", f'model="{MODEL}"')
    finally:
        calls = load.stop()
        assert server.stop() == 0
    print(f"\nhalf-written: {summary(calls)}; {rejected_logs} rejections while writing")

    assert [c for c in calls if c.code != OK] == [], "the old version kept serving while the new one was written"
    assert {c.model_version for c in calls} == {1, 2, 3}
    assert all(c.ended > v2_complete for c in calls if c.model_version == 2), "version 2 served half-written"
    assert all(c.ended > v3_complete for c in calls if c.model_version == 3), "version 3 served half-written"
    assert_scores_match_versions(calls, model_dir)
    assert any(f"rejected {MODEL} version 3" in str(e.get("message", "")) for e in server.logs)
    assert rejected_logs >= 2
    assert rejected_metric == rejected_logs, "every rejection is counted"


@pytest.mark.parametrize("fault", ["renamed_away", "replaced_by_a_file"])
def test_repository_gone_keeps_serving_reports_it_and_recovers(
    fault: str, repository: Path, exported, synthetic_category
) -> None:
    model_dir = repository / MODEL
    moved = repository.with_name("repository.moved")
    server = start_server(repository)
    load = Load(server.address, mixed_cases(synthetic_category, errors=False), clients=4).start()
    try:
        assert server.health("repository") == SERVING
        assert server.metric("visinspect_repository_readable") == 1.0
        wait_for(lambda: len(load.calls) >= 20, 120, "20 calls before the fault")

        gone_at = time.monotonic()
        repository.rename(moved)
        if fault == "replaced_by_a_file":
            repository.write_text("not a repository")
        server.wait_for_log("cannot read model repository")
        server.wait_for_health(NOT_SERVING, "repository", timeout_s=30)
        assert server.metric("visinspect_repository_readable") == 0.0
        assert server.health() == SERVING, "the loaded model still answers"
        assert server.health(f"model/{MODEL}") == SERVING
        calls_before = len(load.calls)
        wait_for(lambda: len(load.calls) >= calls_before + 40, 120, "40 calls while the repository is gone")
        assert log_count(server, "cannot read model repository") == 1, "logged once, not at every poll"

        if fault == "replaced_by_a_file":
            repository.unlink()
        back_at = time.monotonic()
        moved.rename(repository)
        server.wait_for_log("is readable again")
        server.wait_for_health(SERVING, "repository", timeout_s=30)
        assert server.metric("visinspect_repository_readable") == 1.0

        copy_version(model_dir / "1", model_dir / "2")
        server.wait_for_log(f"loaded {MODEL} version 2")
        wait_for(lambda: sum(c.model_version == 2 for c in load.calls) >= 10, 120, "10 calls on version 2")
    finally:
        calls = load.stop()
        if moved.exists():
            if repository.is_file():
                repository.unlink()
            moved.rename(repository)
        assert server.stop() == 0
    print(f"\nrepository {fault}: {summary(calls)}")

    assert [c for c in calls if c.code != OK] == []
    assert {c.model_version for c in calls} == {1, 2}
    during = [c for c in calls if gone_at < c.started and c.ended < back_at]
    assert len(during) >= 40 and {c.model_version for c in during} == {1}, "version 1 served while it was gone"


def test_an_unexpected_failure_while_scanning_does_not_stop_the_poller(repository: Path, caplog) -> None:
    from visinspect_server.backends.openvino import create
    from visinspect_server.registry import ModelRegistry
    from visinspect_server.settings import ServerSettings

    real_factory = create(ServerSettings(model_repository=repository)).load
    faults = [RuntimeError("simulated fault outside the rejection path")]

    def factory(folder: Path, metadata):
        """The real OpenVINO backend; building version 2 fails once with an error no rejection expects."""
        if folder.name == "2" and faults:
            raise faults.pop()
        return real_factory(folder, metadata)

    async def scenario() -> list[int]:
        registry = ModelRegistry(repository, factory)
        await registry.refresh()
        assert sorted(registry.loaded[MODEL]) == [1]
        poller = asyncio.create_task(registry.run(0.05))
        copy_version(repository / MODEL / "1", repository / MODEL / "2")
        deadline = time.monotonic() + 120
        while 2 not in registry.loaded[MODEL] and time.monotonic() < deadline and not poller.done():
            await asyncio.sleep(0.05)
        poller.cancel()
        versions = sorted(registry.loaded[MODEL])
        for model in registry.loaded[MODEL].values():
            model.backend.close()
        return versions

    assert asyncio.run(scenario()) == [1, 2], "the poller survived the fault and loaded version 2 next time"
    failures = [r for r in caplog.records if "repository scan failed" in r.getMessage()]
    assert len(failures) == 1 and "simulated fault" in str(failures[0].exc_info[1])


def test_model_server_killed_and_restarted_under_load(exported, synthetic_category) -> None:
    """The OVMS-backend fault (SIGKILL, restart on the same port) driven by this module's 8-client harness."""
    if not KSERVE_PYTHON.exists():
        pytest.skip(KSERVE_VENV_MISSING)
    repository = exported.version_dir.parents[1]
    standin = StandIn(repository).start()
    timeout_s = OVMS_TIMEOUT_S
    facade = kserve_facade(repository, standin, timeout_s=timeout_s)
    restarted = None
    load = Load(facade.address, mixed_cases(synthetic_category, errors=False), clients=8, error_pause_s=0.05).start()
    try:
        wait_for(lambda: len(load.calls) >= 40, 120, "40 calls before the kill")
        killed_at = time.monotonic()
        standin.kill()  # SIGKILL while calls are in flight
        facade.wait_for_health(NOT_SERVING, timeout_s=30)
        assert facade.health(f"model/{MODEL}") == NOT_SERVING
        wait_for(
            lambda: sum(c.code != OK for c in load.calls) >= 8, 60, "8 failed calls while the model server is down"
        )
        restarted_at = time.monotonic()
        restarted = StandIn(repository, port=standin.port).start()
        facade.wait_for_health(SERVING, timeout_s=60)
        serving_at = time.monotonic()
        wait_for(lambda: sum(c.started > serving_at and c.code == OK for c in load.calls) >= 40, 120, "40 calls after")
    finally:
        calls = load.stop()
        facade.stop()
        standin.kill()
        if restarted is not None:
            restarted.kill()
    print(f"\nmodel server restart: {summary(calls)}")

    assert all(c.code == OK for c in calls if c.ended < killed_at), "all calls succeeded before the kill"
    failed = [c for c in calls if c.code != OK]
    assert {c.code for c in failed} == {UNAVAILABLE}, failed[:3]
    assert all(killed_at <= c.ended and c.started < serving_at for c in failed), "failures only while it was down"
    assert max(c.latency_s for c in failed) < timeout_s + 3, "calls failed fast, within the backend deadline"
    assert any(f"inference backend at {standin.address} is unavailable" in c.details for c in failed)
    assert [c for c in calls if c.started > serving_at and c.code != OK] == [], "recovered without a restart"
    assert restarted_at > killed_at
    before = {c.case: c.raw_score for c in calls if c.code == OK and c.ended < killed_at}
    after = {c.case: c.raw_score for c in calls if c.code == OK and c.started > serving_at}
    assert before.keys() == after.keys()
    for case, raw in after.items():
        assert raw == pytest.approx(before[case], rel=1e-4, abs=1e-4), case
