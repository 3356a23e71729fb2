"""Benchmark the gRPC facade against in-process OpenVINO and OpenVINO's benchmark_app, in one run.

Everything is measured in the same process tree on the same machine state, so the ratios are
comparable even on a shared machine: in-process decode + resize + inference (the floor), the facade
over loopback gRPC with one client (LATENCY hint) and with 1 and 8 clients (THROUGHPUT hint), and
``benchmark_app`` on the same IR (inference only, random input). Medians after warm-up. With ``--kserve``
(default when .venv-kserve exists) also the facade with ``--backend kserve`` against the KServe v2 stand-in
model server (tests/kserve_standin), interleaved with the embedded facade at 1 client and at 8 clients.

    .venv/bin/python benchmarks/facade_benchmark.py [--repository PATH] [--requests N] [--duration S]
        [--out-dir docs/benchmarks] [--kserve/--no-kserve]

Without ``--repository`` a PaDiM model is trained on MVTec AD bottle (default backbone) and exported
into a temporary repository first, in a child process so torch never loads into this one.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import multiprocessing
import os
import platform
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import cv2
import grpc
import numpy as np
import openvino as ov
from grpc_health.v1 import health_pb2, health_pb2_grpc

from visinspect_api.model_repository import IR_XML_FILENAME, ModelMetadata, list_versions, read_metadata
from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_api.v1 import inspection_pb2_grpc as pb_grpc
from visinspect_server import imaging

DEFAULT_DATASET_ROOT = Path("/work/shared/datasets/mvtec_ad")
CATEGORY = "bottle"
WARMUP_CALLS = 10
WARMUP_S = 3.0  # throughput runs: every client runs this long before the measured window opens
TRIAL_S = 4.0  # throughput runs: measured window of each shared-vs-own-channel trial (4 trials, ABBA)
CLIENTS = 8
CHANNEL_MODES = ("shared", "one per client")
MAX_PIXELS = 40_000_000  # the server's default budget, for the in-process decode_image timing
RPC_TIMEOUT_S = 30.0
TRAIN_TIMEOUT_S = 1800.0
SERVER_START_TIMEOUT_S = 600.0
SERVER_STOP_TIMEOUT_S = 30.0
BENCHMARK_APP_EXTRA_S = 600.0  # on top of -t: reading and compiling a ~170 MB IR on a busy machine
FOREIGN_CPU_WARNING = 0.10
REPO_ROOT = Path(__file__).resolve().parents[1]
KSERVE_PYTHON = REPO_ROOT / ".venv-kserve" / "bin" / "python"  # kserve cannot share a process with tritonclient
KSERVE_STANDIN = REPO_ROOT / "tests" / "kserve_standin" / "serve.py"
STANDIN_START_TIMEOUT_S = 300.0

log = logging.getLogger("facade_benchmark")


# ----------------------------------------------------------------------------------------------- statistics


def summary(samples_ms: Sequence[float]) -> dict[str, float]:
    """Median, p99 (linear interpolation), mean, min, max and count of millisecond samples."""
    values = np.asarray(samples_ms, dtype=np.float64)
    return {
        "p50_ms": float(np.median(values)),
        "p99_ms": float(np.percentile(values, 99)),
        "mean_ms": float(values.mean()),
        "min_ms": float(values.min()),
        "max_ms": float(values.max()),
        "n": len(values),
    }


def _median(values: Sequence[float]) -> float:
    return float(np.median(np.asarray(values, dtype=np.float64)))


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


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


# ----------------------------------------------------------------------------------------------- model and images


def fail(message: str) -> NoReturn:
    """Exit with a message for a person."""
    print(f"facade_benchmark: {message}", file=sys.stderr)
    sys.exit(2)


def load_images(dataset_root: Path) -> tuple[list[bytes], list[str]]:
    """The PNG bytes (and relative names) of every MVTec bottle test image, in a fixed order."""
    paths = sorted((dataset_root / CATEGORY / "test").glob("*/*.png"))
    if not paths:
        fail(f"no test images under {dataset_root / CATEGORY / 'test'}/*/*.png: the MVTec AD bottle set is needed")
    return [p.read_bytes() for p in paths], [str(p.relative_to(dataset_root)) for p in paths]


def _train_child(repository: str, dataset_root: str, log_path: str) -> None:
    """Child process: train PaDiM on bottle with the default backbone and export it into ``repository``."""
    with open(log_path, "w", encoding="utf-8") as out:  # keep Lightning's chatter out of the report
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        warnings.filterwarnings("ignore")
        from visinspect_training.api import DatasetSpec, TrainConfig, export_run, train  # noqa: PLC0415 - torch only in the child

        spec = DatasetSpec(kind="mvtec", root=Path(dataset_root), category=CATEGORY)
        run = train(TrainConfig(model_name=CATEGORY, dataset=spec), Path(repository).parent / "runs")
        print(f"exported version {export_run(run, Path(repository)).version}", flush=True)


def train_model(repository: Path, dataset_root: Path) -> float:
    """Train and export in a spawned child (bounded in time); return the seconds it took."""
    log_path = repository.parent / "train.log"
    started = time.monotonic()
    child = multiprocessing.get_context("spawn").Process(
        target=_train_child, args=(str(repository), str(dataset_root), str(log_path))
    )
    child.start()
    child.join(TRAIN_TIMEOUT_S)
    if child.is_alive():
        child.terminate()
        child.join(30)
    if child.exitcode != 0:
        tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
        fail(f"training failed (exit code {child.exitcode}); end of its log:\n{tail}")
    return time.monotonic() - started


def find_model(repository: Path) -> tuple[str, Path, ModelMetadata]:
    """The model to benchmark (bottle, or the repository's only model) and its newest version folder."""
    models = (
        sorted(p.name for p in repository.iterdir() if p.is_dir() and list_versions(p)) if repository.is_dir() else []
    )
    if CATEGORY in models:
        name = CATEGORY
    elif len(models) == 1:
        name = models[0]
    else:
        fail(f"{repository} must hold a '{CATEGORY}' model or exactly one model; found {models or 'none'}")
    version_dir = repository / name / str(list_versions(repository / name)[-1])
    return name, version_dir, read_metadata(version_dir)


# ----------------------------------------------------------------------------------------------- in-process baseline


class LocalPipeline:
    """The in-process floor: cv2.imdecode (RGB) + INTER_AREA resize + a synchronous OpenVINO request, LATENCY hint."""

    def __init__(self, version_dir: Path, metadata: ModelMetadata) -> None:
        self.size = (metadata.input.width, metadata.input.height)
        self.config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": metadata.inference_precision}
        self.compiled = ov.Core().compile_model(str(version_dir / IR_XML_FILENAME), "CPU", self.config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, data: bytes) -> tuple[tuple[float, float, float], np.ndarray, float]:
        """Stage times (decode, resize, inference ms), the model input and the raw image score."""
        t0 = time.perf_counter()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
        t1 = time.perf_counter()
        resized = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        t2 = time.perf_counter()
        self.request.infer({0: resized[np.newaxis]})
        t3 = time.perf_counter()
        score = float(self.request.get_output_tensor(1).data.reshape(-1)[0])
        return ((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3), resized, score

    def describe(self) -> dict[str, str]:
        """The compile options and what OpenVINO made of them."""
        chosen = {k: str(self.compiled.get_property(k)) for k in ("NUM_STREAMS", "INFERENCE_NUM_THREADS")}
        return self.config | chosen | {"opencv_threads": str(cv2.getNumThreads())}


# ----------------------------------------------------------------------------------------------- server


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
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(SERVER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning("server %d ignored SIGTERM for %.0f s; killing it", self.process.pid, SERVER_STOP_TIMEOUT_S)
                self.process.kill()
        return self.process.wait(SERVER_STOP_TIMEOUT_S)


@contextlib.contextmanager
def running_server(
    repository: Path, model: str, hint: str, cache_dir: Path, meter: CpuMeter, *, ovms_address: str | None = None
) -> Iterator[Server]:
    """Start the server, wait until it reports SERVING, and always stop it (SIGTERM) on the way out.

    With ``ovms_address`` the facade uses ``--backend kserve`` against that model server.
    """
    command = [
        sys.executable, "-m", "visinspect_server.main", "serve", "--model-repository", str(repository),
        "--models", model, "--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1",
        "--performance-hint", hint, "--cache-dir", str(cache_dir), "--log-json", "true",
    ]  # fmt: skip
    if ovms_address is not None:
        command += ["--backend", "kserve", "--ovms-address", ovms_address]
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
    label = f"{hint}, kserve" if ovms_address else hint
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
        """SIGTERM by PID, SIGKILL if it is still there after the grace period; return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(SERVER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.warning(
                    "stand-in %d ignored SIGTERM for %.0f s; killing it", self.process.pid, SERVER_STOP_TIMEOUT_S
                )
                self.process.kill()
        return self.process.wait(SERVER_STOP_TIMEOUT_S)


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


def _request(model: str, data: bytes) -> pb.DetectRequest:
    return pb.DetectRequest(model=model, image=pb.ImageInput(encoded=data))


_TIMING_FIELDS = ("decode_ms", "preprocess_ms", "inference_ms", "postprocess_ms", "total_ms")


def _server_stage_medians(timings: Sequence[pb.Timing], client_ms: Sequence[float]) -> dict[str, float]:
    """Medians of the server-reported stage times, and of the time spent outside the server's handler."""
    medians = {name: _median([getattr(t, name) for t in timings]) for name in _TIMING_FIELDS}
    medians["outside_server_ms"] = _median([c - t.total_ms for c, t in zip(client_ms, timings, strict=True)])
    return medians


def bench_latency(
    server: Server, local: LocalPipeline, model: str, images: list[bytes], requests: int
) -> dict[str, Any]:
    """In-process pipeline and facade (one client, one channel), alternating per image so drift hits both alike.

    Both see the same images in the same order; which of the two goes first alternates every image.
    """
    requests_pb = [_request(model, data) for data in images]
    stages: list[tuple[float, float, float]] = []
    latencies: list[float] = []
    timings: list[pb.Timing] = []
    score_diffs: list[float] = []
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.InspectionServiceStub(channel)

        def remote(i: int) -> tuple[float, pb.DetectResponse]:
            t0 = time.perf_counter()
            reply = stub.Detect(requests_pb[i % len(images)], timeout=RPC_TIMEOUT_S)
            return (time.perf_counter() - t0) * 1e3, reply

        for i in range(WARMUP_CALLS):
            local(images[i % len(images)])
            remote(i)
        server_cpu = process_cpu_s(server.process.pid)
        for i in range(requests):
            if i % 2:
                latency, reply = remote(i)
                times, _, score = local(images[i % len(images)])
            else:
                times, _, score = local(images[i % len(images)])
                latency, reply = remote(i)
            stages.append(times)
            latencies.append(latency)
            timings.append(reply.timing)
            score_diffs.append(abs(score - reply.raw_score))
        server_cpu = process_cpu_s(server.process.pid) - server_cpu
    # The server's own decoder (Pillow header check, IMREAD_UNCHANGED, cvtColor) on the same images, for reference.
    server_decode = []
    for i in range(requests):
        t0 = time.perf_counter()
        imaging.decode_image(images[i % len(images)], MAX_PIXELS)
        server_decode.append((time.perf_counter() - t0) * 1e3)
    _, resized, _ = local(images[0])
    same_input = np.array_equal(
        resized, imaging.resize_to_model(imaging.decode_image(images[0], MAX_PIXELS), *resized.shape[:2])
    )
    return {
        "in_process": {
            "total": summary([sum(s) for s in stages]),
            "decode": summary([s[0] for s in stages]),
            "resize": summary([s[1] for s in stages]),
            "inference": summary([s[2] for s in stages]),
            "server_decode_image_in_process": summary(server_decode),
            "compiled": local.describe(),
        },
        "facade_latency": {
            "client": summary(latencies),
            "server_stage_p50": _server_stage_medians(timings, latencies),
            "server_cpu_ms_per_request": server_cpu * 1e3 / requests,
        },
        "score_check": {
            "max_abs_raw_score_diff_facade_vs_in_process": max(score_diffs),
            "same_model_input_image0": same_input,
        },
    }


def bench_kserve_latency(
    embedded: Server, kserve: Server, model: str, images: list[bytes], *, standin: StandIn, requests: int
) -> dict[str, Any]:
    """The facade with the embedded backend and with the KServe v2 backend, one client each, alternating per image.

    Both facades see the same images in the same order; which of the two goes first alternates every image.
    """
    requests_pb = [_request(model, data) for data in images]
    servers = {"embedded": embedded, "kserve": kserve}
    latencies: dict[str, list[float]] = {key: [] for key in servers}
    timings: dict[str, list[pb.Timing]] = {key: [] for key in servers}
    score_diffs: list[float] = []
    channels = {key: grpc.insecure_channel(server.address) for key, server in servers.items()}
    try:
        stubs = {key: pb_grpc.InspectionServiceStub(channel) for key, channel in channels.items()}

        def call(key: str, i: int) -> pb.DetectResponse:
            t0 = time.perf_counter()
            reply = stubs[key].Detect(requests_pb[i % len(images)], timeout=RPC_TIMEOUT_S)
            latencies[key].append((time.perf_counter() - t0) * 1e3)
            timings[key].append(reply.timing)
            return reply

        for i in range(WARMUP_CALLS):
            call("embedded", i)
            call("kserve", i)
        for series in (*latencies.values(), *timings.values()):
            series.clear()
        pids = {"embedded": embedded.process.pid, "kserve": kserve.process.pid, "standin": standin.process.pid}
        cpu = {key: process_cpu_s(pid) for key, pid in pids.items()}
        for i in range(requests):
            order = ("kserve", "embedded") if i % 2 else ("embedded", "kserve")
            replies = {key: call(key, i) for key in order}
            score_diffs.append(abs(replies["embedded"].raw_score - replies["kserve"].raw_score))
        cpu = {key: (process_cpu_s(pid) - cpu[key]) * 1e3 / requests for key, pid in pids.items()}
    finally:
        for channel in channels.values():
            channel.close()
    return {
        key: {
            "client": summary(latencies[key]),
            "server_stage_p50": _server_stage_medians(timings[key], latencies[key]),
            "facade_cpu_ms_per_request": cpu[key],
        }
        for key in servers
    } | {
        "standin_cpu_ms_per_request": cpu["standin"],
        "max_abs_raw_score_diff_kserve_vs_embedded": max(score_diffs),
    }


@dataclass
class _Client:
    """One closed-loop client: calls Detect back to back, starting at image ``offset``, and logs each call."""

    stub: pb_grpc.InspectionServiceStub
    offset: int
    finished: list[float] = field(default_factory=list)  # perf_counter at completion
    latency_ms: list[float] = field(default_factory=list)
    timings: list[pb.Timing] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    def run(self, requests_pb: list[pb.DetectRequest], stop_at: float, abort: threading.Event) -> None:
        """Until ``stop_at``, an abort, or more than 10 errors."""
        for i in itertools.count(self.offset):
            if time.perf_counter() >= stop_at or self.errors > 10 or abort.is_set():
                return
            t0 = time.perf_counter()
            try:
                reply = self.stub.Detect(requests_pb[i % len(requests_pb)], timeout=RPC_TIMEOUT_S)
            except ValueError:  # the channel was closed under us: the benchmark is being interrupted
                return
            except grpc.RpcError as exc:
                self.errors += 1
                self.first_error = self.first_error or f"{exc.code()}: {exc.details()}"  # type: ignore[attr-defined]
                continue
            t1 = time.perf_counter()
            self.finished.append(t1)
            self.latency_ms.append((t1 - t0) * 1e3)
            self.timings.append(reply.timing)


def bench_throughput(
    server: Server,
    model: str,
    images: list[bytes],
    clients: int,
    window_s: float,
    *,
    shared_channel: bool,
    backend_pid: int | None = None,
) -> dict[str, Any]:
    """``clients`` threads calling Detect back to back; images/s completed inside a window after warm-up.

    ``backend_pid``: a model server behind the facade (KServe stand-in) whose CPU is also recorded.
    """
    requests_pb = [_request(model, data) for data in images]
    # A local subchannel pool gives each channel its own TCP connection (the global pool would share one).
    own = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(server.address, options=own) for _ in range(1 if shared_channel else clients)]
    abort = threading.Event()
    threads: list[threading.Thread] = []
    try:
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT_S)
        stubs = [pb_grpc.InspectionServiceStub(channel) for channel in channels]
        runners = [_Client(stubs[k % len(stubs)], k * len(images) // clients) for k in range(clients)]
        started = time.perf_counter()
        window = (started + WARMUP_S, started + WARMUP_S + window_s)
        threads = [threading.Thread(target=c.run, args=(requests_pb, window[1], abort), daemon=True) for c in runners]
        for thread in threads:
            thread.start()
        time.sleep(max(0.0, window[0] - time.perf_counter()))
        backend_cpu = process_cpu_s(backend_pid) if backend_pid else 0.0
        cpu_start = process_cpu_s(server.process.pid), _own_cpu_s()
        time.sleep(max(0.0, window[1] - time.perf_counter()))
        cpu_end = process_cpu_s(server.process.pid), _own_cpu_s()
        backend_cpu = (process_cpu_s(backend_pid) if backend_pid else 0.0) - backend_cpu
        for thread in threads:
            thread.join(window[1] - time.perf_counter() + RPC_TIMEOUT_S + 5)
    finally:  # normally every client is done by now; on an interruption, stop them before the server goes
        abort.set()
        for channel in channels:
            channel.close()  # cancels any call still in flight
        for thread in threads:
            thread.join(5)
    inside = [
        (lat, timing)
        for entry in runners
        for done, lat, timing in zip(entry.finished, entry.latency_ms, entry.timings, strict=True)
        if window[0] <= done <= window[1]
    ]
    errors = sum(entry.errors for entry in runners)
    if not inside:
        raise RuntimeError(f"no request completed in the window; errors: {errors} ({runners[0].first_error})")
    latencies = [lat for lat, _ in inside]
    backend = {}
    if backend_pid:
        backend = {
            "backend_cpu_ms_per_image": backend_cpu * 1e3 / len(inside),
            "backend_cpu_cores_busy": backend_cpu / window_s,
        }
    return backend | {
        "clients": clients,
        "channel": CHANNEL_MODES[0] if shared_channel else CHANNEL_MODES[1],
        "window_s": window_s,
        "completed": len(inside),
        "images_per_s": len(inside) / window_s,
        "errors": errors,
        "first_error": next((e.first_error for e in runners if e.first_error), ""),
        "client": summary(latencies),
        "server_stage_p50": _server_stage_medians([t for _, t in inside], latencies),
        "server_cpu_ms_per_image": (cpu_end[0] - cpu_start[0]) * 1e3 / len(inside),
        "server_cpu_cores_busy": (cpu_end[0] - cpu_start[0]) / window_s,
        "client_cpu_ms_per_image": (cpu_end[1] - cpu_start[1]) * 1e3 / len(inside),
    }


def _own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


# ----------------------------------------------------------------------------------------------- benchmark_app


_APP_PATTERNS = {
    "throughput_fps": r"Throughput:\s+([\d.]+)\s*FPS",
    "median_ms": r"Median:\s+([\d.]+)\s*ms",
    "average_ms": r"Average:\s+([\d.]+)\s*ms",
    "count": r"Count:\s+(\d+)\s*iterations",
    "num_streams": r"NUM_STREAMS:\s+(\d+)",
    "infer_requests": r"OPTIMAL_NUMBER_OF_INFER_REQUESTS:\s+(\d+)",
    "inference_num_threads": r"INFERENCE_NUM_THREADS:\s+(\d+)",
}


def run_benchmark_app(xml: Path, hint: str, metadata: ModelMetadata, seconds: float) -> dict[str, Any]:
    """OpenVINO's benchmark_app on the IR (batch 1, random uint8 input, inference only); parsed numbers."""
    app = Path(sys.executable).with_name("benchmark_app")
    shape = f"[1,{metadata.input.height},{metadata.input.width},3]"
    command = [str(app), "-m", str(xml), "-d", "CPU", "-hint", hint, "-shape", shape,
               "-infer_precision", metadata.inference_precision, "-t", str(round(seconds))]  # fmt: skip
    try:
        done = subprocess.run(
            command, check=False, capture_output=True, text=True, timeout=seconds + BENCHMARK_APP_EXTRA_S
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"benchmark_app -hint {hint} did not finish in time") from exc
    if done.returncode != 0:
        raise RuntimeError(f"benchmark_app failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]}")
    parsed: dict[str, Any] = {"command": shlex.join(["benchmark_app", *command[1:]])}
    for key, pattern in _APP_PATTERNS.items():
        found = re.search(pattern, done.stdout)
        parsed[key] = float(found.group(1)) if found else None
    if parsed["throughput_fps"] is None or parsed["median_ms"] is None:
        raise RuntimeError(f"cannot parse benchmark_app's report: {done.stdout[-2000:]}")
    return parsed


# ----------------------------------------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    """CPU model, cores, software versions, date."""
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return {
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "openvino": ov.get_version(),
        "opencv": cv2.__version__,
        "grpcio": grpc.__version__,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def ratios(results: dict[str, Any]) -> dict[str, float]:
    """The comparisons asked for, each between numbers of this run."""
    local = results["in_process"]["total"]["p50_ms"]
    facade = results["facade_latency"]["client"]["p50_ms"]
    app_latency = results["benchmark_app"]["latency"]["median_ms"]
    app_fps = results["benchmark_app"]["throughput"]["throughput_fps"]
    best = results["throughput"]["best"]["images_per_s"]
    return {
        "facade_p50 / in_process_p50": facade / local,
        "facade_p50 / benchmark_app_latency_median": facade / app_latency,
        "in_process_inference_p50 / benchmark_app_latency_median": results["in_process"]["inference"]["p50_ms"]
        / app_latency,
        "facade_8_clients_ips / benchmark_app_throughput_fps": best / app_fps,
        "facade_1_client_ips / benchmark_app_throughput_fps": results["throughput"]["one_client"]["images_per_s"]
        / app_fps,
        "facade_8_clients_ips / in_process_single_thread_ips": best / (1e3 / local),
    } | kserve_ratios(results)


def kserve_ratios(results: dict[str, Any]) -> dict[str, float]:
    """The cost of the extra hop to the KServe v2 model server (empty when it was not measured)."""
    kserve = results.get("kserve")
    if not kserve:
        return {}
    latency = kserve["latency"]
    return {
        "kserve_facade_p50 / embedded_facade_p50": latency["kserve"]["client"]["p50_ms"]
        / latency["embedded"]["client"]["p50_ms"],
        "kserve_facade_p99 / embedded_facade_p99": latency["kserve"]["client"]["p99_ms"]
        / latency["embedded"]["client"]["p99_ms"],
        f"kserve_facade_{CLIENTS}_clients_ips / embedded_facade_{CLIENTS}_clients_ips": kserve["throughput"][
            "images_per_s"
        ]
        / results["throughput"]["best"]["images_per_s"],
    }


def kserve_markdown(results: dict[str, Any], tput_row: Any) -> list[str]:
    """The KServe v2 backend section (empty when it was not measured)."""
    kserve = results.get("kserve")
    if not kserve:
        return []
    latency, tput, best = kserve["latency"], kserve["throughput"], results["throughput"]["best"]

    def row(label: str, run: dict[str, Any]) -> str:
        stats, stages = run["client"], run["server_stage_p50"]
        return (
            f"| {label} | {stats['p50_ms']:.1f} | {stats['p99_ms']:.1f} | {stats['n']} | "
            f"{stages['decode_ms']:.1f} / {stages['inference_ms']:.1f} / {stages['total_ms']:.1f} | "
            f"{stages['outside_server_ms']:.1f} | {run['facade_cpu_ms_per_request']:.0f} |"
        )

    return [
        "## KServe v2 backend: the cost of the extra hop",
        "",
        "The facade with `--backend kserve --ovms-address` against the KServe v2 stand-in model server",
        "(`tests/kserve_standin/serve.py`: kserve's ModelServer compiling the same IR with OpenVINO at the",
        "metadata's precision and OpenVINO's default hint; not OVMS itself), in its own process and virtualenv on",
        "the same cores. The facade decodes and resizes, then sends the 256×256×3 uint8 tensor over loopback",
        "gRPC. Latency: a second facade with the embedded backend (the LATENCY server above) and the kserve facade",
        "alternate image by image, one client each. Throughput: the kserve facade (THROUGHPUT hint) with "
        f"{CLIENTS} clients, {best['channel']} channel(s), the same window as the embedded {CLIENTS}-client run above.",
        "",
        "| facade backend | p50 ms | p99 ms | n | server decode / inference / total p50 ms | outside the handler "
        "| facade CPU ms / request |",
        "|---|---|---|---|---|---|---|",
        row("embedded", latency["embedded"]),
        row("**kserve**", latency["kserve"]),
        "",
        f"For kserve, *inference* is the facade's whole round trip to the model server. The stand-in used "
        f"{latency['standin_cpu_ms_per_request']:.0f} ms CPU per request; max |raw score difference| kserve vs "
        f"embedded = {latency['max_abs_raw_score_diff_kserve_vs_embedded']:.2g}.",
        "",
        "| clients | channel | images/s | p50 ms | p99 ms | completed | errors | server decode / inference p50 ms "
        "| facade CPU ms / image | facade cores busy | client CPU ms / image |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        tput_row(f"{CLIENTS}, embedded ({best['window_s']:.0f} s)", best),
        tput_row(f"{CLIENTS}, **kserve** ({tput['window_s']:.0f} s)", tput),
        "",
        f"The stand-in used {tput['backend_cpu_ms_per_image']:.0f} ms CPU per image "
        f"({tput['backend_cpu_cores_busy']:.2f} cores busy) during the kserve window.",
        "",
    ]


def markdown(results: dict[str, Any], command: str) -> str:
    """The human-readable report."""
    m, local, facade = results["machine"], results["in_process"], results["facade_latency"]
    tput, app, model, images = results["throughput"], results["benchmark_app"], results["model"], results["images"]

    def row(name: str, stats: dict[str, float], note: str) -> str:
        return f"| {name} | {stats['p50_ms']:.1f} | {stats['p99_ms']:.1f} | {stats['n']} | {note} |"

    def tput_row(label: str, run: dict[str, Any]) -> str:
        return (
            f"| {label} | {run['channel']} | **{run['images_per_s']:.2f}** | {run['client']['p50_ms']:.0f} | "
            f"{run['client']['p99_ms']:.0f} | {run['completed']} | {run['errors']} | "
            f"{run['server_stage_p50']['decode_ms']:.0f} / {run['server_stage_p50']['inference_ms']:.0f} | "
            f"{run['server_cpu_ms_per_image']:.0f} | {run['server_cpu_cores_busy']:.2f} | "
            f"{run['client_cpu_ms_per_image']:.1f} |"
        )

    stages, check, tp = facade["server_stage_p50"], results["score_check"], app["throughput"]
    lines = [
        "# Facade benchmark",
        "",
        f"Produced by `{command}` on {m['date_utc']}.",
        "",
        f"Machine: {m['cpu_model']}, {m['logical_cores']} logical cores ({m['usable_cores']} usable), "
        f"OpenVINO {m['openvino']}, OpenCV {m['opencv']}, grpcio {m['grpcio']}, Python {m['python']}. "
        f"Model: `{model['name']}` v{model['version']} ({model['backbone']}, {model['n_features']} features, "
        f"IR {model['ir_precision']}, compiled at {model['inference_precision']}, bin {model['bin_mb']:.0f} MB). "
        f"Images: {images['count']} MVTec AD bottle test PNGs ({images['size']}, mean {images['mean_kb']:.0f} KB), "
        "cycled in a fixed order. Client, server and benchmark_app share the same cores; loopback only. Every "
        f"number comes from this one run; medians after warm-up ({WARMUP_CALLS} calls, or {WARMUP_S:.0f} s of "
        f"load for throughput); the p99 of {results['requests']} samples is close to their maximum.",
        "",
        "## Latency, one request at a time",
        "",
        "The in-process pipeline and the facade alternate image by image (same images, same order), so a",
        "changing background load hits both alike.",
        "",
        "| path | p50 ms | p99 ms | n | note |",
        "|---|---|---|---|---|",
        row("in-process total", local["total"], "decode + resize + infer, LATENCY hint, sync request"),
        row("· decode", local["decode"], "cv2.imdecode IMREAD_COLOR_RGB"),
        row("· resize", local["resize"], "cv2.resize INTER_AREA to 256×256"),
        row("· inference", local["inference"], "InferRequest.infer"),
        row("server's `decode_image`, in-process", local["server_decode_image_in_process"], "run after, same images"),
        row("**facade over gRPC**", facade["client"], "client side; server with LATENCY hint, one channel"),
        f"| benchmark_app -hint latency | {app['latency']['median_ms']:.1f} | n/a | {app['latency']['count']:.0f} "
        "| inference only, random input, right after |",
        "",
        "Where the facade's time goes (medians of the server-reported `timing` of the same calls, ms):",
        "",
        "| decode | preprocess | inference | postprocess | server total | outside the handler | server CPU / request |",
        "|---|---|---|---|---|---|---|",
        "| " + " | ".join(f"{stages[k]:.1f}" for k in (*_TIMING_FIELDS, "outside_server_ms")) + " | "
        f"{facade['server_cpu_ms_per_request']:.0f} |",
        "",
        "*outside the handler* = client latency − server `total_ms` (gRPC transport, protobuf, event loop). "
        f"Same model, same input: max |raw score difference| facade vs in-process = "
        f"{check['max_abs_raw_score_diff_facade_vs_in_process']:.2g}; identical model input for image 0: "
        f"{check['same_model_input_image0']}.",
        "",
        "## Throughput (server with THROUGHPUT hint)",
        "",
        "| clients | channel | images/s | p50 ms | p99 ms | completed | errors | server decode / inference p50 ms "
        "| server CPU ms / image | server cores busy | client CPU ms / image |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *(tput_row(f"{t['clients']} (trial {i}, {t['window_s']:.0f} s)", t) for i, t in enumerate(tput["trials"], 1)),
        tput_row(f"{CLIENTS} ({tput['best']['window_s']:.0f} s)", tput["best"]),
        tput_row(f"1 ({tput['one_client']['window_s']:.0f} s)", tput["one_client"]),
        f"| benchmark_app -hint throughput | {tp['num_streams']:.0f} streams, {tp['infer_requests']:.0f} requests | "
        f"**{tp['throughput_fps']:.2f}** | {tp['median_ms']:.0f} | n/a | {tp['count']:.0f} | 0 | inference only "
        "| | | |",
        "",
        f"The {CLIENTS}-client run uses **{tput['best']['channel']}** channel(s): more images/s in the trials "
        "(run shared, own, own, shared). Own channels use a local subchannel pool, so each has its own connection.",
        "",
        *kserve_markdown(results, tput_row),
        "## Ratios (same run)",
        "",
        "| ratio | value |",
        "|---|---|",
        *(f"| {name} | {value:.2f} |" for name, value in results["ratios"].items()),
        "",
        "## Background load",
        "",
        "Share of all CPU time used by processes outside this benchmark during each phase (from /proc/stat).",
        "",
        "| phase | foreign CPU share | 1-min load avg start → end |",
        "|---|---|---|",
        *(
            f"| {name} | {p['foreign_cpu_share']:.0%} | {p['loadavg_1min_start']:.2f} → {p['loadavg_1min_end']:.2f} |"
            for name, p in results["background"].items()
        ),
    ]
    noisy = [n for n, p in results["background"].items() if p["foreign_cpu_share"] > FOREIGN_CPU_WARNING]
    if noisy:
        lines += ["", f"Warning: other processes used over {FOREIGN_CPU_WARNING:.0%} of the CPU in {', '.join(noisy)}."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, help="reuse this exported repository instead of training")
    parser.add_argument("--requests", type=int, default=100, help="measured requests per latency series")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per throughput measurement")
    parser.add_argument("--out-dir", type=Path, default=Path("docs/benchmarks"), help="where facade.md/json go")
    parser.add_argument("--dataset-root", type=Path, default=DEFAULT_DATASET_ROOT, help="MVTec AD root")
    parser.add_argument(
        "--kserve",
        action=argparse.BooleanOptionalAction,
        default=KSERVE_PYTHON.exists(),
        help=f"also measure the facade with --backend kserve against the stand-in model server "
        f"(tests/kserve_standin, run by {KSERVE_PYTHON.relative_to(REPO_ROOT)}); default: on when that exists",
    )
    args = parser.parse_args(argv)
    if args.kserve and not KSERVE_PYTHON.exists():
        parser.error(f"--kserve needs {KSERVE_PYTHON} (see tests/integration/test_kserve_backend.py)")
    if not 1 <= args.requests <= 100_000 or not 1 <= args.duration <= 3600:
        parser.error("--requests must be in [1, 100000] and --duration in [1, 3600]")
    return args


def _step(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure(args: argparse.Namespace, repository: Path, scratch: Path, meter: CpuMeter) -> dict[str, Any]:
    """Every measurement, in order; servers are stopped before the next phase starts."""
    images, names = load_images(args.dataset_root)
    name, version_dir, metadata = find_model(repository)
    first = cv2.imdecode(np.frombuffer(images[0], np.uint8), cv2.IMREAD_UNCHANGED)
    results: dict[str, Any] = {
        "machine": machine_info(),
        "requests": args.requests,
        "duration_s": args.duration,
        "images": {
            "count": len(images),
            "first": names[0],
            "size": f"{first.shape[1]}×{first.shape[0]}",
            "mean_kb": sum(map(len, images)) / len(images) / 1024,
        },
        "model": {
            "name": name,
            "version": int(version_dir.name),
            "path": str(version_dir),
            "backbone": metadata.backbone.name,
            "n_features": metadata.backbone.n_features,
            "ir_precision": metadata.ir_precision,
            "inference_precision": metadata.inference_precision,
            "bin_mb": (version_dir / "model.bin").stat().st_size / 2**20,
        },
    }
    cache = scratch / "ov-cache"
    # Each phase opens after its server reports SERVING and closes before the server stops.
    with contextlib.ExitStack() as stack:  # the KServe stand-in, when asked for, lives until the last phase is done
        standin = stack.enter_context(running_standin(repository, meter)) if args.kserve else None
        _measure_phases(
            args,
            results,
            repository=repository,
            name=name,
            metadata=metadata,
            version_dir=version_dir,
            images=images,
            cache=cache,
            meter=meter,
            standin=standin,
        )
    results["ratios"] = ratios(results)
    return results


def _measure_phases(
    args: argparse.Namespace,
    results: dict[str, Any],
    *,
    repository: Path,
    name: str,
    metadata: ModelMetadata,
    version_dir: Path,
    images: list[bytes],
    cache: Path,
    meter: CpuMeter,
    standin: StandIn | None,
) -> None:
    xml = version_dir / IR_XML_FILENAME
    kserve: dict[str, Any] = {}

    def kserve_facade(stack: contextlib.ExitStack, hint: str) -> Server | None:
        if standin is None:
            return None
        return stack.enter_context(running_server(repository, name, hint, cache, meter, ovms_address=standin.address))

    _step("in-process baseline and facade latency (LATENCY hint), interleaved")
    local = LocalPipeline(version_dir, metadata)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(running_server(repository, name, "LATENCY", cache, meter))
        with meter.phase("latency, interleaved"):
            results |= bench_latency(server, local, name, images, args.requests)
        del local
        kserver = kserve_facade(stack, "LATENCY")
        if kserver is not None and standin is not None:
            _step("facade latency, embedded vs kserve backend (LATENCY hint), interleaved")
            with meter.phase("kserve vs embedded latency, interleaved"):
                kserve["latency"] = bench_kserve_latency(
                    server, kserver, name, images, standin=standin, requests=args.requests
                )
    _step("benchmark_app -hint latency")
    with meter.phase("benchmark_app latency"):
        app = {"latency": run_benchmark_app(xml, "latency", metadata, args.duration)}
    _step(f"facade throughput (THROUGHPUT hint): channel trials, then {CLIENTS} clients and 1 client")
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(running_server(repository, name, "THROUGHPUT", cache, meter))
        with meter.phase("facade throughput"):
            trials = [
                bench_throughput(server, name, images, CLIENTS, TRIAL_S, shared_channel=shared)
                for shared in (True, False, False, True)  # ABBA, so a drifting background load favours neither
            ]
            totals = {mode: sum(t["images_per_s"] for t in trials if t["channel"] == mode) for mode in CHANNEL_MODES}
            shared = max(totals, key=lambda mode: totals[mode]) == CHANNEL_MODES[0]
            best = bench_throughput(server, name, images, CLIENTS, args.duration, shared_channel=shared)
            one = bench_throughput(server, name, images, 1, args.duration, shared_channel=True)
        results["throughput"] = {"trials": trials, "best": best, "one_client": one}
        kserver = kserve_facade(stack, "THROUGHPUT")
        if kserver is not None and standin is not None:
            _step(f"facade throughput with the kserve backend: {CLIENTS} clients, {best['channel']} channel(s)")
            with meter.phase("kserve facade throughput"):
                kserve["throughput"] = bench_throughput(
                    kserver, name, images, CLIENTS, args.duration, shared_channel=shared,
                    backend_pid=standin.process.pid,
                )  # fmt: skip
    if kserve:
        results["kserve"] = kserve
    _step("benchmark_app -hint throughput")
    with meter.phase("benchmark_app throughput"):
        app["throughput"] = run_benchmark_app(xml, "throughput", metadata, args.duration)
    results["benchmark_app"] = app


def main(argv: Sequence[str] | None = None) -> int:
    """Train (or reuse) a model, measure everything, write facade.json and facade.md."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so the servers get their SIGTERM
    load_images(args.dataset_root)  # fail before training when the images are missing
    meter = CpuMeter()
    with tempfile.TemporaryDirectory(prefix="facade-bench-") as tmp:
        scratch = Path(tmp)
        repository = args.repository
        train_s = None
        if repository is None:
            repository = scratch / "repository"
            _step("training PaDiM on MVTec bottle and exporting (child process)")
            train_s = train_model(repository, args.dataset_root)
        results = measure(args, repository.resolve(), scratch, meter)
    results["train_and_export_s"] = train_s
    results["background"] = meter.phases
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    results["command"] = command
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "facade.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    report = markdown(results, command)
    (args.out_dir / "facade.md").write_text(report, encoding="utf-8")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
