"""A load generator for the real server: N client threads mixing image encodings and extras.

Every call is recorded (case, status code, latency, model version, scores) so tests can assert on
outcomes, latency percentiles and which version answered. Cases may expect an error status (bad
input mixed into the load): an *unexpected* outcome is any code other than the case's expected one.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

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
    """``clients`` threads, each with its own channel, calling Detect in a loop over ``cases`` until stopped.

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
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Load:
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout_s: float = 120.0) -> list[Call]:
        """Stop issuing calls, wait for the ones in flight, return every call."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout_s)
            if thread.is_alive():
                raise TimeoutError(f"a client thread did not finish within {timeout_s} s")
        return list(self.calls)

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _client(self, index: int) -> None:
        with self.channel(self.address) as channel:
            stub = inspection_pb2_grpc.InspectionServiceStub(channel)
            turn = index
            while not self._stop.is_set():
                case = self.cases[turn % len(self.cases)]
                turn += 1
                started = time.monotonic()
                try:
                    response = stub.Detect(case.request, timeout=self.timeout_s)
                except grpc.RpcError as exc:
                    self.calls.append(
                        Call(
                            index, case.name, started, time.monotonic(), exc.code(), case.expected, exc.details() or ""
                        )
                    )
                    if exc.code() != case.expected:
                        self._stop.wait(self.error_pause_s)
                    continue
                self.calls.append(
                    Call(
                        index, case.name, started, time.monotonic(), OK, case.expected,
                        model_version=response.model_version, score=response.score, raw_score=response.raw_score,
                    )
                )  # fmt: skip


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of ``values``, nearest-rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


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
