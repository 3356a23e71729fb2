"""The processes a benchmark runs: facade servers (visinspect_server.local), the KServe v2 stand-in
(tests/kserve_standin/launch.py), and a meter of foreign CPU use."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.kserve_standin.launch import KSERVE_PYTHON, StandIn
from visinspect_server.local import ChildProcess, LocalServer

__all__ = ["KSERVE_PYTHON", "REPO_ROOT", "CpuMeter", "LocalServer", "StandIn", "memory_mb", "process_cpu_s"]

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVER_START_TIMEOUT_S = 600.0
SERVER_STOP_TIMEOUT_S = 30.0
STANDIN_START_TIMEOUT_S = 300.0
LOG_LINES = 200  # kept per process: a long run must not grow without bound (the stand-in logs every call)

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


@contextlib.contextmanager
def running_server(
    repository: Path, models: Sequence[str], cache_dir: Path, meter: CpuMeter, extra_args: Sequence[str] = ()
) -> Iterator[LocalServer]:
    """Start ``visinspect-server serve`` (visinspect_server.local), wait until it reports SERVING, and always stop
    it (SIGTERM, SIGKILL if it hangs) on the way out.

    ``extra_args``: more flags, e.g. ``--backend kserve --ovms-address ...`` or ``--max-batch-size 1``.
    """
    flags = ["--models", ",".join(models), "--metrics-port", "-1", "--cache-dir", str(cache_dir), *extra_args]
    server = LocalServer(repository, flags, SERVER_START_TIMEOUT_S, max_log_lines=LOG_LINES)
    label = " ".join(extra_args) or "defaults"
    with _running(server, meter, f"server ({label})", (0,)):
        server.start()
        meter.server_pids.add(server.pid)
        yield server


@contextlib.contextmanager
def running_standin(repository: Path, meter: CpuMeter) -> Iterator[StandIn]:
    """Start the KServe v2 stand-in (tests/kserve_standin/launch.py) on loopback ports, wait until it serves, and
    always stop it on the way out."""
    standin = StandIn(repository, startup_timeout_s=STANDIN_START_TIMEOUT_S, max_lines=LOG_LINES)
    with _running(standin, meter, "kserve stand-in", (0, -signal.SIGTERM)):
        standin.start()
        meter.server_pids.add(standin.pid)
        yield standin


@contextlib.contextmanager
def _running(child: ChildProcess[Any], meter: CpuMeter, label: str, clean_exits: tuple[int, ...]) -> Iterator[None]:
    try:
        yield
    finally:
        code = child.stop(SERVER_STOP_TIMEOUT_S, kill_on_timeout=True)
        if child.process is not None:
            meter.server_pids.discard(child.pid)
        if code not in clean_exits:
            log.warning("%s exited with %s; last lines: %s", label, code, child.tail(5))
