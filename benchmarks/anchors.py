"""The reference points: OpenVINO's benchmark_app, anomalib's OpenVINOInferencer, the machine, install size."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import grpc
import openvino as ov
from packaging.requirements import Requirement

BENCHMARK_APP_EXTRA_S = 600.0  # on top of -t: reading and compiling the IR on a busy machine
CHILD_TIMEOUT_S = 3600.0
TRAINING_SIDE = Path(__file__).with_name("training_side.py")

_APP_PATTERNS = {
    "throughput_fps": r"Throughput:\s+([\d.]+)\s*FPS",
    "median_ms": r"Median:\s+([\d.]+)\s*ms",
    "count": r"Count:\s+(\d+)\s*iterations",
    "num_streams": r"NUM_STREAMS:\s+(\d+)",
    "inference_precision": r"INFERENCE_PRECISION_HINT:\s+<Type: '(\w+)'>",
}


def benchmark_app(xml: Path, hint: str, shape: str, precision: str | None, seconds: float) -> dict[str, Any]:
    """``benchmark_app`` on ``xml`` (batch 1, random input, inference only); ``precision`` None = OpenVINO's default."""
    app = Path(sys.executable).with_name("benchmark_app")
    command = [str(app), "-m", str(xml), "-d", "CPU", "-hint", hint, "-shape", shape, "-t", str(round(seconds))]
    if precision:
        command += ["-infer_precision", precision]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=seconds + BENCHMARK_APP_EXTRA_S)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark_app failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]}")
    parsed: dict[str, Any] = {"command": shlex.join(["benchmark_app", *command[1:]])}
    for key, pattern in _APP_PATTERNS.items():
        found = re.search(pattern, done.stdout)
        parsed[key] = (found.group(1) if key == "inference_precision" else float(found.group(1))) if found else None
    if parsed["throughput_fps"] is None or parsed["median_ms"] is None:
        raise RuntimeError(f"cannot parse benchmark_app's report: {done.stdout[-2000:]}")
    return parsed


def training_side(*arguments: str) -> dict[str, Any]:
    """Run ``benchmarks/training_side.py`` in a child process (torch lives there); its JSON result."""
    command = [sys.executable, str(TRAINING_SIDE), *arguments]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"{shlex.join(command[1:3])} failed ({done.returncode}): {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine_info() -> dict[str, Any]:
    """CPU model and flags that matter to OpenVINO, cores, memory, software versions, date."""
    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    flags = set((re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.MULTILINE) or ["", ""])[1].split())
    meminfo = Path("/proc/meminfo").read_text()
    total_kb = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))  # type: ignore[union-attr]
    return {
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "isa": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni"}),
        "memory_gib": round(total_kb / 1024**2, 1),
        "openvino": ov.get_version(),
        "opencv": cv2.__version__,
        "grpcio": grpc.__version__,
        "python": platform.python_version(),
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def installed_size(roots: tuple[str, ...] = ("visinspect-server",)) -> dict[str, Any]:
    """Bytes on disk of ``roots`` and their whole dependency closure (no extras), from the installed files."""
    seen: dict[str, int] = {}
    pending = list(roots)
    while pending:
        name = pending.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        seen[key] = sum(
            (size or 0) for size in (getattr(f, "size", None) or _size_on_disk(dist, f) for f in dist.files or ())
        )
        for spec in dist.requires or ():
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    biggest = sorted(seen.items(), key=lambda item: -item[1])
    return {
        "total_mb": sum(seen.values()) / 1e6,
        "packages": len(seen),
        "largest_mb": {name: round(size / 1e6, 1) for name, size in biggest[:6]},
        "includes_torch": "torch" in seen,
        "includes_anomalib": "anomalib" in seen,
    }


def _size_on_disk(dist: importlib.metadata.Distribution, file: importlib.metadata.PackagePath) -> int:
    try:
        return Path(dist.locate_file(file)).stat().st_size
    except OSError:
        return 0
