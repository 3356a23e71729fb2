"""A rolling restart of two servers under 8 SDK clients costs no call.

Each client is one InspectionClient given both addresses: gRPC's round_robin spreads its calls over the
servers whose health is SERVING (client-side health checking) and retries a call refused UNAVAILABLE on
the other. Each server in turn gets SIGTERM (drain: NOT_SERVING, refuse, finish, stop), exits, starts
again on the same port and loads its model; the next one restarts only once the clients use it again.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.dns_stub import DnsStub
from tests.load_harness import wait_for
from tests.server_harness import ServerProcess, free_port, start_server
from visinspect_client import DetectionResult, InspectionClient, VisInspectError
from visinspect_client.cli import main as cli

CLIENTS = 8


def detect_ok(server: ServerProcess) -> float:
    """Detect calls this server process answered OK (its own counter: a restarted process starts at 0)."""
    return server.requests("Detect")


class Clients:
    """``CLIENTS`` threads, each with its own SDK client over both servers, calling detect until stopped."""

    def __init__(self, addresses: list[str], images: list[Path]) -> None:
        self.addresses = addresses
        self.images = images
        self.results: list[DetectionResult] = []
        self.failures: list[tuple[float, VisInspectError]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(CLIENTS)]

    def start(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)
            assert not thread.is_alive(), "a client did not finish"

    def _run(self, index: int) -> None:
        with InspectionClient(self.addresses, timeout=60) as client:
            turn = index
            while not self._stop.is_set():
                image = self.images[turn % len(self.images)]
                turn += 1
                try:
                    self.results.append(client.detect(image))
                except VisInspectError as exc:
                    self.failures.append((time.monotonic(), exc))


def test_rolling_restart_of_two_servers_under_load_fails_no_call(exported, synthetic_category: Path) -> None:
    repository = exported.version_dir.parents[1]
    ports = [free_port(), free_port()]
    args = ["--shutdown-grace-s", "30"]
    servers = [start_server(repository, [*args, "--port", str(port)]) for port in ports]
    images = sorted((synthetic_category / "test").glob("*/*.png"))
    clients = Clients([f"127.0.0.1:{port}" for port in ports], images).start()
    drain_s: list[float] = []
    try:
        wait_for(lambda: len(clients.results) >= 40, 120, "40 calls before the restarts")
        wait_for(lambda: all(detect_ok(s) >= 5 for s in servers), 60, "calls on both servers")
        for index, port in enumerate(ports):
            old = servers[index]
            assert old.process is not None
            sigterm_at = time.monotonic()
            old.process.send_signal(signal.SIGTERM)
            assert old.process.wait(60) == 0
            drain_s.append(time.monotonic() - sigterm_at)
            calls_before = len(clients.results)
            wait_for(lambda n=calls_before: len(clients.results) >= n + 20, 60, "20 calls on the other server alone")
            servers[index] = start_server(repository, [*args, "--port", str(port)])
            new = servers[index]
            wait_for(lambda new=new: detect_ok(new) >= 20, 120, f"the clients back on restarted server {index}")
        wait_for(lambda: all(detect_ok(s) >= 20 for s in servers), 120, "both restarted servers used")
    finally:
        clients.stop()
        for server in servers:
            server.stop()
    print(f"\nrolling restart: {len(clients.results)} calls, drains took {[round(s, 2) for s in drain_s]} s")

    assert clients.failures == [], clients.failures[:3]
    assert len(clients.results) >= 100
    assert {r.model for r in clients.results} == {"brick"}
    assert all(s < 30 for s in drain_s), "each drain ended as soon as the clients moved away, before its grace"


def test_a_list_of_servers_reaches_the_one_that_serves(
    exported, synthetic_category: Path, tmp_path: Path, capsys
) -> None:
    """A server without a model (NOT_SERVING) gets no call: the SDK and the CLI send them all to the one serving."""
    empty = tmp_path / "empty"
    empty.mkdir()
    serving = start_server(exported.version_dir.parents[1])
    starting = start_server(empty, wait_serving=False)
    image = sorted((synthetic_category / "test" / "good").glob("*.png"))[0]
    try:
        with InspectionClient([serving.address, starting.address], timeout=30) as client:
            assert all(client.detect(image).model == "brick" for _ in range(12))
            assert client.health() == "SERVING"
        with InspectionClient(starting.address, timeout=30) as alone:
            assert alone.health() == "NOT_SERVING"
            with pytest.raises(VisInspectError) as caught:
                alone.detect(image, timeout=5)
        assert "is serving" in str(caught.value) and "NOT_SERVING" in str(caught.value)
        both = f"{starting.address},{serving.address}"
        assert cli(["health", "--server", both]) == 0 and capsys.readouterr().out == "SERVING\n"
        assert cli(["predict", str(image), "--server", both, "--format", "json"]) == 0
        assert json.loads(capsys.readouterr().out)["results"][0]["model"] == "brick"
        assert detect_ok(serving) == 13 and detect_ok(starting) == 0
    finally:
        serving.stop()
        starting.stop()


def test_one_dns_name_with_two_addresses_like_a_headless_service(exported, synthetic_category: Path) -> None:
    """``dns://.../inspect.test:P`` resolves to 127.0.0.1 and 127.0.0.2 (a stub DNS server, as for a Kubernetes
    headless Service): the client uses both servers, and one of them restarting costs no call."""
    repository = exported.version_dir.parents[1]
    port = free_port()
    servers = [start_server(repository, ["--port", str(port)], host=host) for host in ("127.0.0.1", "127.0.0.2")]
    images = sorted((synthetic_category / "test").glob("*/*.png"))
    try:
        with DnsStub(["127.0.0.1", "127.0.0.2"]) as dns:
            clients = Clients([dns.target("inspect.test", port)], images).start()
            try:
                wait_for(lambda: all(detect_ok(s) >= 10 for s in servers), 120, "calls on both addresses")
                first = servers[0]
                assert first.process is not None
                first.process.send_signal(signal.SIGTERM)
                assert first.process.wait(60) == 0
                calls_before = len(clients.results)
                wait_for(lambda: len(clients.results) >= calls_before + 20, 60, "20 calls on the other address")
            finally:
                clients.stop()
            assert dns.queries >= 1
    finally:
        for server in servers:
            server.stop()
    assert clients.failures == [], clients.failures[:3]
