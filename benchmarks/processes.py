"""The processes a benchmark runs: facade servers, the KServe v2 stand-in, and a meter of foreign CPU use."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[1]
KSERVE_PYTHON = REPO_ROOT / ".venv-kserve" / "bin" / "python"  # kserve cannot share a process with tritonclient
KSERVE_STANDIN = REPO_ROOT / "tests" / "kserve_standin" / "serve.py"
SERVER_START_TIMEOUT_S = 600.0
SERVER_STOP_TIMEOUT_S = 30.0
STANDIN_START_TIMEOUT_S = 300.0

log = logging.getLogger("benchmarks")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int) -> dict[str, float]:
    """Resident set size now and at its peak, and its anonymous and file-backed parts, in MB; {} when gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    found = {key: int(value) / 1024 for key, value in re.findall(r"^(\w+):\s+(\d+) kB", status, re.MULTILINE)}
    return {
        "rss_mb": found["VmRSS"],
        "peak_rss_mb": found["VmHWM"],
        "anon_mb": found["RssAnon"],
        "file_mb": found["RssFile"],
    }


class CpuMeter:
    """Share of the machine's CPU used by processes outside this benchmark's process tree during a phase.

    Reads /proc/stat (all CPUs, steal included) and the jiffies of this process, the running servers
    (facades and the KServe stand-in) and reaped children (benchmark_app). A high share means a neighbour
    competed for the cores.
    """

    def __init__(self) -> None:
        self.server_pids: set[int] = set()
        self.phases: dict[str, dict[str, float]] = {}

    @staticmethod
    def _machine() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        user, nice, system, idle, iowait, irq, softirq, steal = fields
        busy = user + nice + system + irq + softirq + steal
        return busy, busy + idle + iowait

    def _ours(self) -> float:
        ticks = os.sysconf("SC_CLK_TCK")
        times = os.times()
        total = times.user + times.system + times.children_user + times.children_system
        total += sum(process_cpu_s(pid) for pid in self.server_pids)
        return total * ticks

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Record the foreign CPU share and load average over the ``with`` block."""
        busy0, total0 = self._machine()
        ours0 = self._ours()
        load0 = os.getloadavg()[0]
        yield
        busy1, total1 = self._machine()
        foreign = max(0.0, (busy1 - busy0) - (self._ours() - ours0))
        self.phases[name] = {
            "foreign_cpu_share": round(foreign / max(1, total1 - total0), 3),
            "loadavg_1min_start": load0,
            "loadavg_1min_end": os.getloadavg()[0],
        }


# ----------------------------------------------------------------------------------------------- processes


def terminate(process: subprocess.Popen[str], label: str) -> int | None:
    """SIGTERM, then SIGKILL if the process is still there after the grace period; return the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("%s %d ignored SIGTERM for %.0f s; killing it", label, process.pid, SERVER_STOP_TIMEOUT_S)
            process.kill()
    return process.wait(SERVER_STOP_TIMEOUT_S)


@dataclass
class Server:
    """A ``visinspect-server serve`` subprocess on 127.0.0.1 with a free port."""

    process: subprocess.Popen[str]
    port: int = 0
    logs: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=200))

    @property
    def address(self) -> str:
        """host:port of the gRPC endpoint."""
        return f"127.0.0.1:{self.port}"

    def stop(self) -> int | None:
        """SIGTERM, wait for the drain, kill only if it hangs; return the exit code."""
        return terminate(self.process, "server")


@contextlib.contextmanager
def running_server(
    repository: Path, models: Sequence[str], cache_dir: Path, meter: CpuMeter, extra_args: Sequence[str] = ()
) -> Iterator[Server]:
    """Start ``visinspect-server serve``, wait until it reports SERVING, and always stop it (SIGTERM) on the way out.

    ``extra_args``: more flags, e.g. ``--backend kserve --ovms-address ...`` or ``--max-batch-size 1``.
    """
    command = [
        sys.executable, "-m", "visinspect_server.main", "serve", "--model-repository", str(repository),
        "--models", ",".join(models), "--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1",
        "--cache-dir", str(cache_dir), "--log-json", "true", *extra_args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    server = Server(process)
    listening = threading.Event()

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                entry = {"message": line.rstrip()}
            server.logs.append(entry)
            found = re.match(r"listening on port (\d+)", str(entry.get("message", "")))
            if found:
                server.port = int(found.group(1))
                listening.set()

    threading.Thread(target=pump, daemon=True).start()
    meter.server_pids.add(process.pid)
    label = " ".join(extra_args) or "defaults"
    try:
        _wait_serving(server, listening)
        yield server
    finally:
        code = server.stop()
        meter.server_pids.discard(process.pid)
        if code not in (0, None):
            log.warning("server (%s) exited with %s; last log lines: %s", label, code, list(server.logs)[-5:])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class StandIn:
    """The KServe v2 stand-in model server (tests/kserve_standin, kserve's ModelServer) in its own virtualenv."""

    process: subprocess.Popen[str]
    port: int
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=200))

    @property
    def address(self) -> str:
        """host:port of its KServe v2 gRPC endpoint."""
        return f"127.0.0.1:{self.port}"

    def stop(self) -> int | None:
        """SIGTERM, SIGKILL if it is still there after the grace period; return the exit code."""
        return terminate(self.process, "stand-in")


@contextlib.contextmanager
def running_standin(repository: Path, meter: CpuMeter) -> Iterator[StandIn]:
    """Start the stand-in on loopback ports, wait for its ready line, and always stop it on the way out."""
    grpc_port = _free_port()
    command = [
        str(KSERVE_PYTHON), str(KSERVE_STANDIN), "--repository", str(repository),
        "--grpc-port", str(grpc_port), "--http-port", str(_free_port()),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    standin = StandIn(process, grpc_port)
    ready = threading.Event()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            standin.lines.append(line.rstrip())
            if line.startswith("kserve stand-in ready on port"):
                ready.set()

    threading.Thread(target=pump, daemon=True).start()
    meter.server_pids.add(process.pid)
    try:
        deadline = time.monotonic() + STANDIN_START_TIMEOUT_S
        while not ready.wait(0.1):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the kserve stand-in did not start; last lines: {list(standin.lines)[-10:]}")
        yield standin
    finally:
        code = standin.stop()
        meter.server_pids.discard(process.pid)
        if code not in (0, None, -signal.SIGTERM):
            log.warning("kserve stand-in exited with %s; last lines: %s", code, list(standin.lines)[-5:])


def _wait_serving(server: Server, listening: threading.Event) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while not listening.wait(0.1):
        if server.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start; last log lines: {list(server.logs)[-10:]}")
    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and server.process.poll() is None:
            with contextlib.suppress(grpc.RpcError):
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            time.sleep(0.2)
    raise RuntimeError(f"the server never reported SERVING; last log lines: {list(server.logs)[-10:]}")


# ----------------------------------------------------------------------------------------------- facade clients
