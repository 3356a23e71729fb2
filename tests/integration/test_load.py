"""Load test (loopback only, bounded in time): 16 concurrent clients mixing image encodings, extras and bad inputs.

Duration: ``VISINSPECT_LOAD_S`` seconds (default 60, the run CI does). For a longer soak set
``VISINSPECT_SOAK_S`` (it wins over ``VISINSPECT_LOAD_S``), e.g.
``VISINSPECT_SOAK_S=1800 .venv/bin/python -m pytest -s tests/integration/test_load.py``.

Memory: the server's RSS is sampled every second from /proc/<pid>/status. The first
``WARM_UP_S`` seconds are excluded (compiled kernels, allocator arenas and gRPC buffers grow to
their working size there); the mean RSS of the last ``WINDOW_S`` seconds must stay within 5% of the
mean of the ``WINDOW_S`` seconds after the warm-up.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc

from tests.load_harness import Load, RssSampler, mixed_cases, percentile, summary
from tests.server_harness import start_server

CLIENTS = 16
WARM_UP_S = 10.0
WINDOW_S = 20.0
MAX_RSS_GROWTH = 0.05


def load_duration_s() -> float:
    return float(os.environ.get("VISINSPECT_SOAK_S") or os.environ.get("VISINSPECT_LOAD_S") or 60)


def test_sixteen_clients_mixed_load(exported, synthetic_category: Path, record_property) -> None:
    duration = load_duration_s()
    assert duration >= WARM_UP_S + 2 * WINDOW_S, f"the load test needs at least {WARM_UP_S + 2 * WINDOW_S} s"
    server = start_server(exported.version_dir.parents[1])
    try:
        assert server.process is not None
        sampler = RssSampler(server.process.pid).start()
        load = Load(server.address, mixed_cases(synthetic_category), CLIENTS, timeout_s=60).start()
        began = time.monotonic()
        time.sleep(duration)
        calls = load.stop()
        sampler.stop()
        ended = began + duration
    finally:
        assert server.stop(60) == 0

    report = summary(calls)
    print(f"\nload: {CLIENTS} clients, {duration:.0f} s: {report}")
    record_property("load_summary", report)
    unexpected = [c for c in calls if c.unexpected]
    assert unexpected == [], f"{len(unexpected)} unexpected outcomes, first: {unexpected[:3]}"
    cases = {c.case for c in calls}
    assert cases == {case.name for case in mixed_cases(synthetic_category)}, "every case ran"
    assert {c.code for c in calls} == {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
    assert {c.client for c in calls} == set(range(CLIENTS)), "every client made calls"
    assert len(calls) >= 10 * duration, f"throughput collapsed: {report}"
    p99_ms = percentile([c.latency_s * 1e3 for c in calls if c.code == grpc.StatusCode.OK], 99)
    record_property("p99_ms", round(p99_ms, 1))
    assert p99_ms < 10_000, f"p99 {p99_ms:.0f} ms: the server stalls under load"

    first = sampler.mean_kb(began + WARM_UP_S, began + WARM_UP_S + WINDOW_S)
    last = sampler.mean_kb(ended - WINDOW_S, ended)
    growth = last / first - 1
    rss = f"RSS mean {first / 1024:.1f} MiB after warm-up -> {last / 1024:.1f} MiB at the end ({growth:+.1%})"
    print(f"load: {rss}")
    record_property("rss", rss)
    assert growth < MAX_RSS_GROWTH, rss
