"""Inputs, the in-process floor, interleaved latency loops and closed-loop load against a facade.

The closed-loop clients, their windows and the latency summary are the tests' load generator (tests/load_harness.py);
``summary`` is its ``latency_summary`` under the name the benchmarks use.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
import openvino as ov

from benchmarks.processes import memory_mb, process_cpu_s
from tests.load_harness import ClosedLoop, ClosedLoopClient
from tests.load_harness import latency_summary as summary
from visinspect_api.model_repository import IR_XML_FILENAME, ModelMetadata
from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_api.v1 import inspection_pb2_grpc as pb_grpc

__all__ = ["INPUT_KINDS", "InProcess", "Inputs", "closed_loop", "facade_call", "interleaved", "summary"]

INPUT_KINDS = ("png", "jpeg", "raw")
JPEG_QUALITY = 90
RPC_TIMEOUT_S = 60.0


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
    loop = ClosedLoop(
        [
            ClosedLoopClient(_detect(pb_grpc.InspectionServiceStub(channel), requests), k * len(requests) // clients)
            for k, channel in enumerate(channels)
        ],
        close=lambda: [channel.close() for channel in channels],
    )

    def cpu_s() -> tuple[float, float]:
        return process_cpu_s(server_pid), process_cpu_s(backend_pid) if backend_pid else 0.0

    def at_end() -> tuple[tuple[float, float], dict[str, float], dict[str, float]]:
        return cpu_s(), memory_mb(server_pid), memory_mb(backend_pid) if backend_pid else {}

    try:
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT_S)
        edges, cpu_start, (cpu_end, memory, backend_memory) = loop.measure(
            warmup_s, window_s, windows, at_start=cpu_s, at_end=at_end, join_timeout_s=RPC_TIMEOUT_S + 5
        )
    finally:
        loop.stop(5)
    counted, inside = loop.windowed(edges)
    result: dict[str, Any] = {
        "clients": clients,
        **counted,
        "server_cpu_ms_per_image": (cpu_end[0] - cpu_start[0]) * 1e3 / len(inside),
        "server_memory_mb": memory,
    }
    if backend_pid:
        result["model_server_cpu_ms_per_image"] = (cpu_end[1] - cpu_start[1]) * 1e3 / len(inside)
        result["model_server_memory_mb"] = backend_memory
    return result


def _detect(stub: pb_grpc.InspectionServiceStub, requests: Sequence[pb.DetectRequest]) -> Callable[[int], object]:
    return lambda i: stub.Detect(requests[i % len(requests)], timeout=RPC_TIMEOUT_S)
