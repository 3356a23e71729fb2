"""The load generator of the tests and the benchmarks: closed-loop client threads against the real server.

:class:`ClosedLoopClient` and :class:`ClosedLoop` are the engine (one thread per client, calling back to back,
measured in windows); :class:`Load` drives it for the tests, mixing image encodings and extras, and
benchmarks/load.py for the benchmarks.

Every call of a :class:`Load` is recorded (case, status code, latency, model version, scores) so tests can
assert on outcomes, latency percentiles and which version answered. Cases may expect an error status (bad
input mixed into the load): an *unexpected* outcome is any code other than the case's expected one.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import cv2
import grpc
import numpy as np

from visinspect_api.model_repository import read_metadata
from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_api.v1 import inspection_pb2_grpc
from visinspect_client.connection import (
    DEFAULT_MAX_MESSAGE_BYTES,
    RetryPolicy,
    ServerTarget,
    channel_options,
    open_channel,
)

OK = grpc.StatusCode.OK
Start = TypeVar("Start")
End = TypeVar("End")


@dataclasses.dataclass(frozen=True)
class Case:
    """One request the clients send, and the status it must get."""

    name: str
    request: pb.DetectRequest
    expected: grpc.StatusCode = OK


@dataclasses.dataclass(frozen=True)
class Call:
    """The outcome of one call."""

    client: int
    case: str
    started: float  # time.monotonic()
    ended: float
    code: grpc.StatusCode
    expected: grpc.StatusCode
    details: str = ""
    model_version: int = 0
    score: float = math.nan
    raw_score: float = math.nan

    @property
    def latency_s(self) -> float:
        return self.ended - self.started

    @property
    def unexpected(self) -> bool:
        return self.code != self.expected


def mixed_cases(category: Path, errors: bool = True) -> list[Case]:
    """PNG, JPEG, raw RGB/BGR/grey and a large PNG, with and without every extra; optionally bad inputs."""
    good = sorted((category / "test" / "good").glob("*.png"))
    defects = sorted(p for p in (category / "test").glob("*/*.png") if p.parent.name != "good")
    bgr_good = cv2.imread(str(good[0]), cv2.IMREAD_COLOR)
    bgr_defect = cv2.imread(str(defects[0]), cv2.IMREAD_COLOR)
    large = cv2.resize(bgr_defect, (512, 512), interpolation=cv2.INTER_LINEAR)
    all_extras = pb.Extras(anomaly_map=True, mask=True, regions=True, map_size=pb.MAP_SIZE_ORIGINAL)

    def encoded(data: bytes, extras: pb.Extras | None = None) -> pb.DetectRequest:
        return pb.DetectRequest(image=pb.ImageInput(encoded=data), extras=extras)

    def raw(image: np.ndarray, order: int, extras: pb.Extras | None = None) -> pb.DetectRequest:
        channels = 1 if image.ndim == 2 else image.shape[2]
        buffer = pb.RawImage(
            data=image.tobytes(), height=image.shape[0], width=image.shape[1], channels=channels, channel_order=order
        )
        return pb.DetectRequest(image=pb.ImageInput(raw=buffer), extras=extras)

    cases = [
        Case("png", encoded(good[0].read_bytes())),
        Case("png+map", encoded(defects[0].read_bytes(), pb.Extras(anomaly_map=True))),
        Case("jpeg+mask+regions", encoded(cv2.imencode(".jpg", bgr_defect)[1].tobytes(), all_extras)),
        Case("jpeg", encoded(cv2.imencode(".jpg", bgr_good)[1].tobytes())),
        Case("raw-rgb+regions", raw(bgr_defect[:, :, ::-1].copy(), pb.CHANNEL_ORDER_RGB, pb.Extras(regions=True))),
        Case("raw-bgr", raw(bgr_good, pb.CHANNEL_ORDER_BGR)),
        Case("raw-grey+mask", raw(cv2.cvtColor(bgr_good, cv2.COLOR_BGR2GRAY), 0, pb.Extras(mask=True))),
        Case("png-512+all", encoded(cv2.imencode(".png", large)[1].tobytes(), all_extras)),
    ]
    if errors:
        bad_raw = pb.RawImage(data=b"\0" * 10, height=8, width=8, channels=3)
        cases += [
            Case("undecodable", encoded(b"not an image at all"), grpc.StatusCode.INVALID_ARGUMENT),
            Case(
                "raw-size-mismatch",
                pb.DetectRequest(image=pb.ImageInput(raw=bad_raw)),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
        ]
    return cases


def sdk_channel(target: str | Sequence[str]) -> grpc.Channel:
    """A channel set up as the SDK sets up its own: round-robin over the servers that report SERVING (client-side
    health checking), and gRPC's retries of UNAVAILABLE."""
    server = ServerTarget.parse(target)
    options = channel_options(RetryPolicy(), DEFAULT_MAX_MESSAGE_BYTES, None, server.authority)
    return open_channel(grpc, server.uri, options, None)


class Load:
    """``clients`` closed-loop clients, each with its own channel, calling Detect over ``cases`` until stopped.

    After an unexpected failure a client pauses ``error_pause_s``, so a server that is gone is not hammered.
    ``channel`` makes each client's channel (default: a plain one, no retries and no balancing; :func:`sdk_channel`
    for the SDK's).
    """

    def __init__(
        self,
        address: str,
        cases: Sequence[Case],
        clients: int,
        *,
        timeout_s: float = 60.0,
        error_pause_s: float = 0.01,
        channel: Callable[[str], grpc.Channel] = grpc.insecure_channel,
    ) -> None:
        self.address = address
        self.channel = channel
        self.error_pause_s = error_pause_s
        self.cases = list(cases)
        self.clients = clients
        self.timeout_s = timeout_s
        self.calls: list[Call] = []  # list.append is atomic: threads append without a lock
        self._loop: ClosedLoop | None = None

    def start(self) -> Load:
        channels = [self.channel(self.address) for _ in range(self.clients)]
        runners = [
            ClosedLoopClient(self._detect(i, channel), i, max_errors=None, error_pause_s=self.error_pause_s)
            for i, channel in enumerate(channels)
        ]
        self._loop = ClosedLoop(runners, close=lambda: [channel.close() for channel in channels]).start()
        return self

    def stop(self, timeout_s: float = 120.0) -> list[Call]:
        """Stop issuing calls, wait for the ones in flight, return every call."""
        if self._loop is not None and not self._loop.stop(timeout_s):
            raise TimeoutError(f"a client thread did not finish within {timeout_s} s")
        return list(self.calls)

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _detect(self, client: int, channel: grpc.Channel) -> Callable[[int], None]:
        """Client ``client``'s call number ``turn``: records it; an unexpected status is raised (a pause)."""
        stub = inspection_pb2_grpc.InspectionServiceStub(channel)

        def call(turn: int) -> None:
            case = self.cases[turn % len(self.cases)]
            started = time.monotonic()
            try:
                response = stub.Detect(case.request, timeout=self.timeout_s)
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details() or ""
                self.calls.append(Call(client, case.name, started, time.monotonic(), code, case.expected, details))
                if code != case.expected:
                    raise
                return
            self.calls.append(
                Call(
                    client, case.name, started, time.monotonic(), OK, case.expected,
                    model_version=response.model_version, score=response.score, raw_score=response.raw_score,
                )
            )  # fmt: skip

        return call


# ------------------------------------------------------------------ closed-loop clients (also the benchmarks')


@dataclasses.dataclass
class ClosedLoopClient:
    """One closed-loop client: ``call(i)`` back to back from ``i = offset`` on; completion times and latencies.

    ``failures`` are the exceptions a failed call raises: counted (the first described), then the loop goes on
    after ``error_pause_s``, until more than ``max_errors`` (None: no limit). A ``ValueError`` means the channel
    was closed under it: the run is being interrupted.
    """

    call: Callable[[int], object]
    offset: int = 0
    failures: tuple[type[Exception], ...] = (grpc.RpcError,)
    max_errors: int | None = 10
    error_pause_s: float = 0.0
    finished: list[float] = dataclasses.field(default_factory=list)  # time.perf_counter()
    latency_ms: list[float] = dataclasses.field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    def run(self, stop_at: float = math.inf, abort: threading.Event | None = None) -> None:
        """Call until ``stop_at`` (``time.perf_counter()``), ``abort`` or too many errors."""
        abort = abort or threading.Event()
        for i in itertools.count(self.offset):
            too_many = self.max_errors is not None and self.errors > self.max_errors
            if time.perf_counter() >= stop_at or too_many or abort.is_set():
                return
            started = time.perf_counter()
            try:
                self.call(i)
            except ValueError:
                return
            except self.failures as exc:
                self.errors += 1
                self.first_error = self.first_error or _describe(exc)
                if self.error_pause_s:
                    abort.wait(self.error_pause_s)
                continue
            done = time.perf_counter()
            self.finished.append(done)
            self.latency_ms.append((done - started) * 1e3)


def _describe(exc: Exception) -> str:
    if isinstance(exc, grpc.RpcError):
        return f"{exc.code()}: {exc.details()}"  # type: ignore[attr-defined]
    return f"{type(exc).__name__}: {exc}"


class ClosedLoop:
    """Closed-loop clients, one thread each. ``close`` releases what their calls use (channels, SDK clients)
    once they stopped."""

    def __init__(self, runners: Sequence[ClosedLoopClient], close: Callable[[], object] = lambda: None) -> None:
        self.runners = list(runners)
        self.close = close
        self.abort = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, stop_at: float = math.inf) -> ClosedLoop:
        """Start every client; they run until ``stop_at`` (``time.perf_counter()``) or :meth:`stop`."""
        self._threads = [
            threading.Thread(target=runner.run, args=(stop_at, self.abort), daemon=True) for runner in self.runners
        ]
        for thread in self._threads:
            thread.start()
        return self

    def join(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` in all for the clients to finish; whether they all did."""
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def stop(self, timeout_s: float) -> bool:
        """Stop issuing calls, wait up to ``timeout_s`` for the ones in flight, then ``close``; whether every
        client finished."""
        self.abort.set()
        finished = self.join(timeout_s)
        self.close()
        return finished

    def measure(
        self,
        warmup_s: float,
        window_s: float,
        windows: int,
        *,
        at_start: Callable[[], Start],
        at_end: Callable[[], End],
        join_timeout_s: float,
    ) -> tuple[list[float], Start, End]:
        """Run the clients for ``warmup_s`` and then ``windows`` back-to-back windows of ``window_s``; call
        ``at_start`` at the first window's start and ``at_end`` at the last one's end, wait for the clients to
        finish. The windows' edges (``time.perf_counter()``) and what the two calls returned."""
        started = time.perf_counter()
        edges = [started + warmup_s + k * window_s for k in range(windows + 1)]
        self.start(edges[-1])
        time.sleep(max(0.0, edges[0] - time.perf_counter()))
        first = at_start()
        time.sleep(max(0.0, edges[-1] - time.perf_counter()))
        last = at_end()
        self.join(join_timeout_s)
        return edges, first, last

    def windowed(self, edges: Sequence[float]) -> tuple[dict[str, Any], list[float]]:
        """What the clients completed inside the windows ``edges`` bound: a report (the median images/s over the
        windows, their images/s, the calls completed, errors, the first error and the latency summary) and the
        latencies of the calls completed inside any window."""
        window_s = edges[1] - edges[0]
        finished = [t for r in self.runners for t in r.finished]
        per_window = [sum(lo <= t < hi for t in finished) / window_s for lo, hi in itertools.pairwise(edges)]
        inside = [
            latency
            for r in self.runners
            for t, latency in zip(r.finished, r.latency_ms, strict=True)
            if edges[0] <= t < edges[-1]
        ]
        errors = sum(r.errors for r in self.runners)
        first_error = next((r.first_error for r in self.runners if r.first_error), "")
        if not inside:
            raise RuntimeError(f"no request completed in the windows; errors: {errors} ({first_error})")
        report = {
            "images_per_s": float(np.median(per_window)),
            "images_per_s_windows": per_window,
            "completed": len(inside),
            "errors": errors,
            "first_error": first_error,
            "latency": latency_summary(inside),
        }
        return report, inside


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of ``values``, nearest-rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def latency_summary(samples_ms: Sequence[float]) -> dict[str, float]:
    """Median, p99 (linear interpolation), mean, min, max and count of millisecond samples (the benchmarks')."""
    values = np.asarray(samples_ms, dtype=np.float64)
    return {
        "p50_ms": float(np.median(values)),
        "p99_ms": float(np.percentile(values, 99)),
        "mean_ms": float(values.mean()),
        "min_ms": float(values.min()),
        "max_ms": float(values.max()),
        "n": len(values),
    }


def summary(calls: Sequence[Call]) -> str:
    """One line: counts, throughput and latency percentiles of the successful calls."""
    ok = [c.latency_s * 1e3 for c in calls if c.code == OK]
    span = max(c.ended for c in calls) - min(c.started for c in calls)
    codes: dict[str, int] = {}
    for call in calls:
        codes[call.code.name] = codes.get(call.code.name, 0) + 1
    return (
        f"{len(calls)} calls in {span:.1f} s ({len(calls) / span:.1f}/s), codes {codes}; OK latency ms: "
        f"p50 {percentile(ok, 50):.1f}, p95 {percentile(ok, 95):.1f}, p99 {percentile(ok, 99):.1f}, max {max(ok):.1f}"
    )


class RssSampler:
    """Samples a process's resident set size (VmRSS, from /proc/<pid>/status) every ``interval_s``."""

    def __init__(self, pid: int, interval_s: float = 1.0) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []  # (monotonic time, RSS in kB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        self._thread.join(10)
        return self.samples

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for process {self.pid}")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.rss_kb()))
            self._stop.wait(self.interval_s)

    def mean_kb(self, start: float, end: float) -> float:
        """Mean RSS of the samples taken in [start, end)."""
        window = [kb for t, kb in self.samples if start <= t < end]
        if not window:
            raise ValueError("no RSS sample in the window")
        return sum(window) / len(window)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    """Poll ``condition`` until true; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"{what} did not happen within {timeout_s} s")


def wait_until_steady(count: Callable[[], int], limit: int, steady_s: float = 1.5, timeout_s: float = 120.0) -> int:
    """Wait until ``count()`` reaches ``limit`` or stops growing for ``steady_s``; return it. Flow control stalls
    a stream at a count that depends on the machine's speed: wait for the stall, not for a fixed time."""
    deadline = time.monotonic() + timeout_s
    last, since = count(), time.monotonic()
    while time.monotonic() < deadline and last < limit:
        time.sleep(0.1)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= steady_s:
            break
    return last


def expected_score(raw_score: float, version_dir: Path) -> float:
    """The normalised score a version's calibration gives a raw score."""
    c = read_metadata(version_dir).calibration
    return min(1.0, max(0.0, (raw_score - c.image_threshold) / (c.image_max - c.image_min) + 0.5))
