"""Inputs, the in-process floor, interleaved latency loops and closed-loop load against a facade."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
import openvino as ov

from benchmarks.processes import memory_mb, process_cpu_s
from visinspect_api.model_repository import IR_XML_FILENAME, ModelMetadata
from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_api.v1 import inspection_pb2_grpc as pb_grpc

INPUT_KINDS = ("png", "jpeg", "raw")
JPEG_QUALITY = 90
RPC_TIMEOUT_S = 60.0


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


@dataclass(frozen=True)
class Inputs:
    """The same images three ways: the dataset's PNG files, JPEG (quality 90) and raw RGB pixels."""

    paths: tuple[Path, ...]
    png: tuple[bytes, ...]
    jpeg: tuple[bytes, ...]
    rgb: tuple[np.ndarray, ...]

    @classmethod
    def load(cls, paths: Sequence[Path]) -> Inputs:
        """Read the PNGs and derive the JPEG and raw forms once, before anything is timed."""
        png, jpeg, rgb = [], [], []
        for path in paths:
            data = path.read_bytes()
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            png.append(data)
            jpeg.append(cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes())
            rgb.append(np.ascontiguousarray(bgr[:, :, ::-1]))
        return cls(tuple(paths), tuple(png), tuple(jpeg), tuple(rgb))

    def __len__(self) -> int:
        return len(self.paths)

    def image_input(self, kind: str, index: int) -> pb.ImageInput:
        """The protobuf image of ``kind`` for image ``index``."""
        if kind == "raw":
            pixels = self.rgb[index]
            height, width, channels = pixels.shape
            raw = pb.RawImage(data=pixels.tobytes(), height=height, width=width, channels=channels)
            return pb.ImageInput(raw=raw)
        return pb.ImageInput(encoded=(self.png if kind == "png" else self.jpeg)[index])

    def requests(self, model: str, kind: str) -> list[pb.DetectRequest]:
        """One Detect request per image (built once, so the loops time only the calls)."""
        return [pb.DetectRequest(model=model, image=self.image_input(kind, i)) for i in range(len(self))]

    def mean_bytes(self, kind: str) -> float:
        """Mean payload size of ``kind``."""
        sizes = {"png": [len(d) for d in self.png], "jpeg": [len(d) for d in self.jpeg]}
        return float(np.mean(sizes[kind])) if kind in sizes else float(np.mean([a.nbytes for a in self.rgb]))


class InProcess:
    """The floor: decode (OpenCV, straight to RGB) + INTER_AREA resize + a synchronous OpenVINO request."""

    def __init__(self, version_dir: Path, metadata: ModelMetadata) -> None:
        self.size = (metadata.input.width, metadata.input.height)
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": metadata.inference_precision}
        self.compiled = ov.Core().compile_model(str(version_dir / IR_XML_FILENAME), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, inputs: Inputs, kind: str, index: int) -> tuple[float, float, float, float]:
        """Stage times (decode, resize, inference ms) and the raw image score."""
        t0 = time.perf_counter()
        if kind == "raw":
            image = inputs.rgb[index]
        else:
            data = (inputs.png if kind == "png" else inputs.jpeg)[index]
            image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
        t1 = time.perf_counter()
        resized = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        t2 = time.perf_counter()
        self.request.infer({0: resized[np.newaxis]})
        t3 = time.perf_counter()
        score = float(self.request.get_output_tensor(1).data.reshape(-1)[0])
        return (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, score


Call = Callable[[int], tuple[float, Any]]


def interleaved(calls: dict[str, Call], count: int, warmup: int) -> dict[str, list[tuple[float, Any]]]:
    """Run every call for image 0, 1, 2, ... in a rotating order, so drift in background load hits all alike.

    Each call returns (milliseconds, detail). ``warmup`` rounds run first and are dropped.
    """
    names = list(calls)
    results: dict[str, list[tuple[float, Any]]] = {name: [] for name in names}
    for i in range(warmup + count):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            outcome = calls[name](i)
            if i >= warmup:
                results[name].append(outcome)
    return results


def facade_call(stub: pb_grpc.InspectionServiceStub, requests: Sequence[pb.DetectRequest]) -> Call:
    """A timed Detect of request ``i`` (mod len); the detail is (image index, reply)."""

    def call(i: int) -> tuple[float, tuple[int, pb.DetectResponse]]:
        started = time.perf_counter()
        reply = stub.Detect(requests[i % len(requests)], timeout=RPC_TIMEOUT_S)
        return (time.perf_counter() - started) * 1e3, (i % len(requests), reply)

    return call


@dataclass
class ClosedLoopClient:
    """One closed-loop client: ``call(i)`` back to back from ``i = offset`` on; completion times and latencies.

    ``failures`` are the exceptions a failed call raises (counted, the loop goes on); a ``ValueError`` means the
    channel was closed under it: the run is being interrupted.
    """

    call: Callable[[int], object]
    offset: int
    failures: tuple[type[Exception], ...] = (grpc.RpcError,)
    finished: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""

    def run(self, stop_at: float, abort: threading.Event) -> None:
        for i in itertools.count(self.offset):
            if time.perf_counter() >= stop_at or self.errors > 10 or abort.is_set():
                return
            started = time.perf_counter()
            try:
                self.call(i)
            except ValueError:
                return
            except self.failures as exc:
                self.errors += 1
                self.first_error = self.first_error or _describe(exc)
                continue
            done = time.perf_counter()
            self.finished.append(done)
            self.latency_ms.append((done - started) * 1e3)


def _describe(exc: Exception) -> str:
    if isinstance(exc, grpc.RpcError):
        return f"{exc.code()}: {exc.details()}"  # type: ignore[attr-defined]
    return f"{type(exc).__name__}: {exc}"


def windowed(runners: Sequence[ClosedLoopClient], edges: Sequence[float]) -> dict[str, Any]:
    """What the runners completed inside the windows ``edges`` bound: the median images/s over the windows,
    their images/s, the latencies of the calls completed inside any window, and the errors."""
    window_s = edges[1] - edges[0]
    finished = [t for r in runners for t in r.finished]
    per_window = [sum(lo <= t < hi for t in finished) / window_s for lo, hi in itertools.pairwise(edges)]
    inside = [
        lat for r in runners for t, lat in zip(r.finished, r.latency_ms, strict=True) if edges[0] <= t < edges[-1]
    ]
    errors = sum(r.errors for r in runners)
    first_error = next((r.first_error for r in runners if r.first_error), "")
    if not inside:
        raise RuntimeError(f"no request completed in the windows; errors: {errors} ({first_error})")
    return {
        "images_per_s": float(np.median(per_window)),
        "images_per_s_windows": per_window,
        "inside": inside,
        "errors": errors,
        "first_error": first_error,
    }


def closed_loop(
    address: str,
    requests: Sequence[pb.DetectRequest],
    clients: int,
    *,
    warmup_s: float,
    window_s: float,
    windows: int,
    server_pid: int,
    backend_pid: int | None = None,
) -> dict[str, Any]:
    """``clients`` threads, one channel (own connection) each, calling Detect back to back.

    After ``warmup_s``, ``windows`` back-to-back windows of ``window_s`` each count the images completed
    inside them; the result is the median images/s over the windows, the latency of every call completed
    inside any window, errors, and the CPU the facade (and the model server behind it) used per image.
    """
    own = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_send_message_length", 64 << 20)]
    channels = [grpc.insecure_channel(address, options=own) for _ in range(clients)]
    abort = threading.Event()
    threads: list[threading.Thread] = []
    runners: list[ClosedLoopClient] = []
    try:
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT_S)
        runners = [
            ClosedLoopClient(_detect(pb_grpc.InspectionServiceStub(channel), requests), k * len(requests) // clients)
            for k, channel in enumerate(channels)
        ]
        started = time.perf_counter()
        edges = [started + warmup_s + k * window_s for k in range(windows + 1)]
        threads = [threading.Thread(target=r.run, args=(edges[-1], abort), daemon=True) for r in runners]
        for thread in threads:
            thread.start()
        time.sleep(max(0.0, edges[0] - time.perf_counter()))
        cpu_start = process_cpu_s(server_pid), process_cpu_s(backend_pid) if backend_pid else 0.0
        time.sleep(max(0.0, edges[-1] - time.perf_counter()))
        cpu_end = process_cpu_s(server_pid), process_cpu_s(backend_pid) if backend_pid else 0.0
        memory = memory_mb(server_pid)
        backend_memory = memory_mb(backend_pid) if backend_pid else {}
        for thread in threads:
            thread.join(RPC_TIMEOUT_S + 5)
    finally:
        abort.set()
        for channel in channels:
            channel.close()
        for thread in threads:
            thread.join(5)
    counted = windowed(runners, edges)
    inside = counted["inside"]
    result: dict[str, Any] = {
        "clients": clients,
        "images_per_s": counted["images_per_s"],
        "images_per_s_windows": counted["images_per_s_windows"],
        "completed": len(inside),
        "errors": counted["errors"],
        "first_error": counted["first_error"],
        "latency": summary(inside),
        "server_cpu_ms_per_image": (cpu_end[0] - cpu_start[0]) * 1e3 / len(inside),
        "server_memory_mb": memory,
    }
    if backend_pid:
        result["model_server_cpu_ms_per_image"] = (cpu_end[1] - cpu_start[1]) * 1e3 / len(inside)
        result["model_server_memory_mb"] = backend_memory
    return result


def _detect(stub: pb_grpc.InspectionServiceStub, requests: Sequence[pb.DetectRequest]) -> Callable[[int], object]:
    return lambda i: stub.Detect(requests[i % len(requests)], timeout=RPC_TIMEOUT_S)
