"""Scale-out of the facade: one facade against two behind one model server, through the SDK's round-robin.

    .venv/bin/python -m benchmarks.scale_out [--scratch DIR] [--clients 8] [--kinds raw,png] [--rounds 3]

Prepares the suite's model repository (``training_side.py prepare`` in a child process: PaDiM on MVTec AD
bottle, f32; with ``--scratch`` an earlier suite or scale-out run's models are reused, and the other way
round), falls back to the built-in synthetic dataset where bottle is absent, then starts one KServe v2
stand-in and two facades (``--backend kserve``), all three for the whole run, and measures in alternating
order, ``--rounds`` times per input kind:

- **one facade**: ``--clients`` closed-loop clients, each its own ``InspectionClient(address_a)``;
- **two facades**: the same clients, each ``InspectionClient([address_a, address_b])`` (gRPC round_robin).

Per point: images/s (median of the windows), latency p50/p99, Detect calls per facade (the difference of
each facade's ``visinspect_requests_total`` on its Prometheus port across the windows), the mean micro-batch
per facade (``visinspect_batch_images``), and CPU ms per image of each facade, the model server and the
load-generating process (``/proc/<pid>/stat``). Writes ``scale_out.json`` and ``docs/scaling.md`` (the
capacity model: per-image costs from this run and from ``docs/benchmarks/suite.json``, replica counts for a
given load, the Kubernetes manifests' requests); ``--report-from`` rewrites the Markdown from the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import report
from benchmarks.anchors import machine_info, training_side
from benchmarks.load import Inputs, summary
from benchmarks.processes import REPO_ROOT, CpuMeter, memory_mb, process_cpu_s, running_server, running_standin
from tests.load_harness import ClosedLoop, ClosedLoopClient
from visinspect_api.model_repository import read_metadata
from visinspect_client import InspectionClient
from visinspect_client.errors import VisInspectError

DEFAULT_DATASET_ROOT = REPO_ROOT.parent / "shared" / "datasets" / "mvtec_ad"
CATEGORY = "bottle"  # the model name training_side.py prepare gives PaDiM (f32)
SYNTHETIC_TEXTURE = "brick"
SYNTHETIC_IMAGE_SIZE = 900  # bottle's size, so that payloads and decoding stay comparable
RPC_TIMEOUT_S = 60.0
FACADES = ("facade_a", "facade_b")
PROCESSES = (*FACADES, "model_server", "clients")
CI_MARKERS = (b"bin/pytest", b".ci/run")

log = logging.getLogger("benchmarks")


# ----------------------------------------------------------------------------------------------- capacity model


def cores_needed(images_per_s: float, cpu_ms_per_image: float) -> float:
    """CPU cores busy at ``images_per_s`` when each image costs ``cpu_ms_per_image`` of CPU time."""
    return images_per_s * cpu_ms_per_image / 1e3


def images_per_s_per_replica(cpu_ms_per_image: float, cores: float, utilisation: float) -> float:
    """Images/s one replica of ``cores`` cores takes while its CPU stays at ``utilisation`` (0-1)."""
    return cores * utilisation * 1e3 / cpu_ms_per_image


def replicas_needed(images_per_s: float, cpu_ms_per_image: float, cores: float, utilisation: float) -> int:
    """Replicas of ``cores`` cores so that ``images_per_s`` keeps each at or below ``utilisation`` (at least 1)."""
    exact = cores_needed(images_per_s, cpu_ms_per_image) / (cores * utilisation)
    return max(1, math.ceil(round(exact, 9)))  # round: 2.0000000001 from float error is 2 replicas, not 3


def cpu_cores(quantity: str | float) -> float:
    """A Kubernetes CPU quantity ("500m", "2", 1.5) in cores."""
    text = str(quantity)
    return float(text[:-1]) / 1e3 if text.endswith("m") else float(text)


# ----------------------------------------------------------------------------------------------- preparing


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset-root", type=Path, default=DEFAULT_DATASET_ROOT, help="holds bottle/test/*/*.png")
    parser.add_argument("--synthetic", action="store_true", help="use the synthetic dataset even if bottle is there")
    parser.add_argument("--scratch", type=Path, help="keep the trained models here and reuse them (the suite's too)")
    parser.add_argument("--out-json", type=Path, default=Path("docs/benchmarks/scale_out.json"))
    parser.add_argument("--out-doc", type=Path, default=Path("docs/scaling.md"))
    parser.add_argument("--suite-json", type=Path, default=Path("docs/benchmarks/suite.json"))
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients (each its own InspectionClient)")
    parser.add_argument("--kinds", default="raw,png", help="input kinds, comma-separated: raw, png, jpeg")
    parser.add_argument("--rounds", type=int, default=3, help="alternating one/two-facade rounds per input kind")
    parser.add_argument("--window-s", type=float, default=4.0, help="length of one throughput window")
    parser.add_argument("--windows", type=int, default=3, help="windows per point (median)")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="load before the first window opens")
    parser.add_argument("--cameras", type=int, default=20, help="worked example: cameras")
    parser.add_argument("--fps", type=float, default=5.0, help="worked example: frames per second per camera")
    parser.add_argument("--quick", action="store_true", help="a smoke run: one round, short windows")
    parser.add_argument("--report-from", type=Path, help="only rewrite the Markdown from an earlier scale_out.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.window_s, args.windows, args.warmup_s = 1, 1.0, 2, 1.0
    args.kinds = tuple(kind.strip() for kind in args.kinds.split(",") if kind.strip())
    return args


def dataset_root(args: argparse.Namespace, scratch: Path) -> tuple[Path, str]:
    """The root holding ``bottle/``, and what it is: MVTec AD bottle, or the synthetic textures posing as it.

    ``training_side.py prepare`` trains on ``<root>/bottle``; the synthetic dataset is written to the scratch
    folder (in a child process, as the training CLI does it) and linked there under that name.
    """
    if not args.synthetic and (args.dataset_root / CATEGORY / "test").is_dir():
        return args.dataset_root.resolve(), f"MVTec AD {CATEGORY}"
    root = scratch / "synthetic"
    if not (root / CATEGORY / "test").is_dir():
        log.info("no %s under %s: writing the synthetic dataset (%s)", CATEGORY, args.dataset_root, SYNTHETIC_TEXTURE)
        trainer = Path(sys.executable).with_name("visinspect-train")
        command = [
            str(trainer), "synthetic", "--root", str(root), "--texture", SYNTHETIC_TEXTURE,
            "--image-size", str(SYNTHETIC_IMAGE_SIZE),
        ]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True, text=True)
        (root / CATEGORY).unlink(missing_ok=True)
        (root / CATEGORY).symlink_to(SYNTHETIC_TEXTURE, target_is_directory=True)
    return root, f"synthetic {SYNTHETIC_TEXTURE} textures (training's built-in dataset), {SYNTHETIC_IMAGE_SIZE} px"


def prepared_repository(scratch: Path, root: Path) -> tuple[Path, dict[str, Any]]:
    """The suite's model repository in ``scratch``: reused when an earlier run prepared it, else trained now."""
    repository = scratch / "repository"
    prepared_file = scratch / "prepared.json"
    prepared = json.loads(prepared_file.read_text()) if prepared_file.exists() else {}
    if CATEGORY in prepared.get("versions", {}) and prepared.get("dataset_root", str(root)) == str(root):
        log.info("reusing the models prepared in %s", scratch)
        return repository, prepared
    shutil.rmtree(repository, ignore_errors=True)  # the servers would also load older versions
    log.info("training and exporting (child process, a few minutes) ...")
    prepared = training_side(
        "prepare", "--dataset-root", str(root), "--repository", str(repository), "--scratch", str(scratch)
    )
    prepared["dataset_root"] = str(root)
    prepared_file.write_text(json.dumps(prepared))
    return repository, prepared


def serving_repository(repository: Path, scratch: Path) -> Path:
    """A view of ``repository`` with only the PaDiM f32 model (a link and a filtered ``config.json``), so that
    the model server loads one model, as the facades do, and its memory is that one model's."""
    serving = scratch / "serving"
    shutil.rmtree(serving, ignore_errors=True)
    serving.mkdir()
    (serving / CATEGORY).symlink_to(repository / CATEGORY, target_is_directory=True)
    config_file = repository / "config.json"
    if config_file.exists():
        config = json.loads(config_file.read_text())
        config["model_config_list"] = [m for m in config["model_config_list"] if m["config"]["name"] == CATEGORY]
        (serving / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return serving


# ----------------------------------------------------------------------------------------------- measuring


def scrape(port: int) -> dict[str, float]:
    """Detect calls answered so far (every status code) and the micro-batch histogram's sum and count."""
    url = f"http://127.0.0.1:{port}/metrics"  # loopback, a port this process started a server on
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found = {"detect_calls": 0.0, "batch_images_sum": 0.0, "batch_count": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "visinspect_requests_total" and "Detect" in sample.labels.get("method", ""):
                found["detect_calls"] += sample.value
            elif sample.name == "visinspect_batch_images_sum":
                found["batch_images_sum"] += sample.value
            elif sample.name == "visinspect_batch_images_count":
                found["batch_count"] += sample.value
    return found


def ci_running() -> bool:
    """Whether a pytest or CI script runs on the machine now (any user's process, from /proc)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if any(marker in (entry / "cmdline").read_bytes() for marker in CI_MARKERS):
                    return True
    return False


@dataclass
class Stack:
    """The running processes: the model server and two facades, with their pids and metrics ports."""

    addresses: dict[str, str]
    pids: dict[str, int]
    ports: dict[str, int]


def snapshot(stack: Stack) -> dict[str, Any]:
    """CPU seconds of every process (this one for the clients) and each facade's counters, now."""
    cpu = {name: process_cpu_s(pid) for name, pid in stack.pids.items()}
    cpu["clients"] = process_cpu_s(os.getpid())
    return {"cpu_s": cpu, "metrics": {name: scrape(stack.ports[name]) for name in FACADES}}


def _detect(client: InspectionClient, images: Sequence[Any]) -> Callable[[int], object]:
    return lambda i: client.detect(images[i % len(images)], model=CATEGORY, timeout=RPC_TIMEOUT_S)


def run_point(
    args: argparse.Namespace, stack: Stack, images: Sequence[Any], facades: int
) -> tuple[dict[str, Any], list[float]]:
    """``args.clients`` SDK clients against facade A alone (``facades`` 1) or A and B; the point and its latencies."""
    target: str | list[str] = stack.addresses["facade_a"] if facades == 1 else [stack.addresses[n] for n in FACADES]
    clients = [InspectionClient(target, timeout=RPC_TIMEOUT_S) for _ in range(args.clients)]
    loop = ClosedLoop(
        [
            ClosedLoopClient(_detect(client, images), k * len(images) // len(clients), failures=(VisInspectError,))
            for k, client in enumerate(clients)
        ],
        close=lambda: [client.close() for client in clients],
    )
    ci = [ci_running()]

    def at_end() -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
        after = snapshot(stack)
        memory = {name: memory_mb(pid) for name, pid in stack.pids.items()}
        ci.append(ci_running())
        return after, memory

    try:
        edges, before, (after, memory) = loop.measure(
            args.warmup_s, args.window_s, args.windows,
            at_start=lambda: snapshot(stack), at_end=at_end, join_timeout_s=RPC_TIMEOUT_S + 5,
        )  # fmt: skip
    finally:
        loop.stop(5)
    counted, inside = loop.windowed(edges)
    cpu_s = {name: after["cpu_s"][name] - before["cpu_s"][name] for name in PROCESSES}
    delta = {
        name: {key: after["metrics"][name][key] - before["metrics"][name][key] for key in after["metrics"][name]}
        for name in FACADES
    }
    point = {
        "facades": facades,
        "clients": args.clients,
        **counted,
        "calls_by_facade": {name: delta[name]["detect_calls"] for name in FACADES},
        "mean_batch_by_facade": {
            name: delta[name]["batch_images_sum"] / delta[name]["batch_count"] if delta[name]["batch_count"] else None
            for name in FACADES
        },
        "cpu_s": cpu_s,
        "cpu_ms_per_image": {name: seconds * 1e3 / len(inside) for name, seconds in cpu_s.items()},
        "busy_cores": sum(cpu_s.values()) / (edges[-1] - edges[0]),
        "memory_mb": memory,
        "ci_running": any(ci),
    }
    return point, inside


def measure(args: argparse.Namespace, scratch: Path, meter: CpuMeter) -> dict[str, Any]:
    """Prepare the repository, start the processes, run every point; the results dictionary."""
    root, dataset = dataset_root(args, scratch)
    paths = sorted((root / CATEGORY / "test").glob("*/*.png"))
    if not paths:
        raise SystemExit(f"scale_out: no images under {root / CATEGORY / 'test'}/*/*.png")
    repository, prepared = prepared_repository(scratch, root)
    repository = serving_repository(repository, scratch)
    metadata = read_metadata(repository / CATEGORY / str(prepared["versions"][CATEGORY]))
    inputs = Inputs.load(paths)
    images = {"raw": list(inputs.rgb), "png": list(inputs.png), "jpeg": list(inputs.jpeg)}
    results: dict[str, Any] = {
        "machine": machine_info(),
        "dataset": dataset,
        "model": {
            "name": CATEGORY,
            "family": "PaDiM",
            "backbone": metadata.backbone.name,
            "image_size": metadata.input.height,
            "inference_precision": metadata.inference_precision,
        },
        "inputs": {
            "images": len(inputs),
            "size": list(inputs.rgb[0].shape),
            "mean_bytes": {kind: inputs.mean_bytes(kind) for kind in args.kinds},
        },
        "settings": {
            key: getattr(args, key) for key in ("clients", "kinds", "rounds", "window_s", "windows", "warmup_s")
        },
    }
    cache = scratch / "cache"
    points: list[dict[str, Any]] = []
    latencies: dict[tuple[str, int], list[float]] = {}
    with contextlib.ExitStack() as stack:
        standin = stack.enter_context(running_standin(repository, meter))
        facade_args = ["--backend", "kserve", "--ovms-address", standin.address, "--metrics-port", "0"]
        servers = {
            name: stack.enter_context(running_server(repository, [CATEGORY], cache, meter, facade_args))
            for name in FACADES
        }
        processes = Stack(
            addresses={name: server.address for name, server in servers.items()},
            pids={name: server.pid for name, server in servers.items()} | {"model_server": standin.pid},
            ports={name: server.metrics_port for name, server in servers.items()},
        )
        results["memory_idle_mb"] = {name: memory_mb(pid) for name, pid in processes.pids.items()}
        results["ci_running_at_start"] = ci_running()
        for round_index in range(args.rounds):
            for kind in args.kinds:
                order = (1, 2) if round_index % 2 == 0 else (2, 1)
                for facades in order:
                    name = f"round {round_index + 1}, {kind}, {facades} facade(s)"
                    log.info("%s ...", name)
                    with meter.phase(name):
                        point, inside = run_point(args, processes, images[kind], facades)
                    point |= {"round": round_index + 1, "kind": kind, "background": meter.phases[name]}
                    latencies.setdefault((kind, facades), []).extend(inside)
                    log.info(
                        "%s: %.1f images/s, p50 %.0f ms, calls A/B %s, CPU ms/image %s",
                        name, point["images_per_s"], point["latency"]["p50_ms"],
                        "/".join(f"{n:.0f}" for n in point["calls_by_facade"].values()),
                        {key: round(value, 1) for key, value in point["cpu_ms_per_image"].items()},
                    )  # fmt: skip
                    points.append(point)
    results["points"] = points
    results["summary"] = summarise(points, latencies)
    return results


def summarise(points: list[dict[str, Any]], latencies: dict[tuple[str, int], list[float]]) -> dict[str, Any]:
    """Per input kind and facade count, pooled over the rounds; and the two-facade / one-facade ratios."""
    out: dict[str, Any] = {}
    for (kind, facades), samples in latencies.items():
        mine = [p for p in points if p["kind"] == kind and p["facades"] == facades]
        completed = sum(p["completed"] for p in mine)
        calls = {name: sum(p["calls_by_facade"][name] for p in mine) for name in FACADES}
        batches = {
            name: [p["mean_batch_by_facade"][name] for p in mine if p["mean_batch_by_facade"][name] is not None]
            for name in FACADES
        }
        out.setdefault(kind, {})[str(facades)] = {
            "images_per_s": float(np.median([w for p in mine for w in p["images_per_s_windows"]])),
            "images_per_s_by_round": [p["images_per_s"] for p in mine],
            "latency": summary(samples),
            "completed": completed,
            "errors": sum(p["errors"] for p in mine),
            "calls_by_facade": calls,
            "share_facade_a": calls["facade_a"] / max(1.0, sum(calls.values())),
            "mean_batch_by_facade": {name: float(np.mean(b)) if b else None for name, b in batches.items()},
            "cpu_ms_per_image": {name: sum(p["cpu_s"][name] for p in mine) * 1e3 / completed for name in PROCESSES},
            "busy_cores": float(np.mean([p["busy_cores"] for p in mine])),
            "foreign_cpu_share": float(np.mean([p["background"]["foreign_cpu_share"] for p in mine])),
            "ci_running": any(p["ci_running"] for p in mine),
        }
    for by_facades in out.values():
        one, two = by_facades["1"], by_facades["2"]
        by_round = [b / a for a, b in zip(one["images_per_s_by_round"], two["images_per_s_by_round"], strict=True)]
        by_facades["ratio_two_over_one"] = {
            "images_per_s": two["images_per_s"] / one["images_per_s"],
            "images_per_s_by_round": by_round,
            "p50": two["latency"]["p50_ms"] / one["latency"]["p50_ms"],
            "p99": two["latency"]["p99_ms"] / one["latency"]["p99_ms"],
        }
    return out


# ----------------------------------------------------------------------------------------------- the report


def manifests(root: Path = REPO_ROOT / "deploy" / "kubernetes") -> dict[str, Any]:
    """Requests, limits, the autoscaler and the overlays' counts, read from the kustomize files."""
    base: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted((root / "base").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "metadata" in doc:  # kustomization.yaml has none
                base[doc["kind"], doc["metadata"]["name"]] = doc
    kustomization = yaml.safe_load((root / "overlays" / "cluster" / "kustomization.yaml").read_text())
    docs = [yaml.safe_load(p["patch"]) for p in kustomization.get("patches", []) if "patch" in p]
    cluster = {(d["kind"], d["metadata"]["name"]): d for d in docs}

    def resources(deployment: str) -> dict[str, Any]:
        (container,) = base["Deployment", deployment]["spec"]["template"]["spec"]["containers"]
        return container["resources"]

    hpa = base["HorizontalPodAutoscaler", "visinspect-facade"]["spec"]
    cluster_hpa = cluster.get(("HorizontalPodAutoscaler", "visinspect-facade"), {}).get("spec", {})
    cluster_ovms = cluster.get(("Deployment", "visinspect-ovms"), {}).get("spec", {})
    (cpu_metric,) = [m["resource"] for m in hpa["metrics"] if m["type"] == "Resource"]
    return {
        "facade": resources("visinspect-facade"),
        "ovms": resources("visinspect-ovms"),
        "ovms_replicas": base["Deployment", "visinspect-ovms"]["spec"]["replicas"],
        "hpa": {
            "min": hpa["minReplicas"],
            "max": hpa["maxReplicas"],
            "target": cpu_metric["target"]["averageUtilization"] / 100,
        },
        "cluster": {
            "hpa_min": cluster_hpa.get("minReplicas"),
            "hpa_max": cluster_hpa.get("maxReplicas"),
            "ovms_replicas": cluster_ovms.get("replicas"),
        },
    }


def suite_numbers(path: Path) -> dict[str, Any]:
    """The suite's 8-client load points (embedded and KServe backends), its date and the model server's RSS."""
    suite = report.load(path.read_text())
    throughput = suite["throughput"]
    out: dict[str, Any] = {"date": suite["machine"]["date_utc"], "command": suite.get("command", "")}
    with contextlib.suppress(KeyError):
        out["bf16_cpu_ms"] = throughput["embedded_bf16"]["raw"]["server_cpu_ms_per_image"]
    with contextlib.suppress(KeyError):
        out["patchcore_cpu_ms"] = suite["patchcore"]["throughput"]["raw"][8]["server_cpu_ms_per_image"]
    for kind in ("raw", "png"):
        embedded, kserve = throughput["embedded"][kind][8], throughput["kserve"][kind][8]
        out[kind] = {
            "embedded_images_per_s": embedded["images_per_s"],
            "embedded_cpu_ms": embedded["server_cpu_ms_per_image"],
            "embedded_peak_rss_mb": embedded["server_memory_mb"]["peak_rss_mb"],
            "kserve_images_per_s": kserve["images_per_s"],
            "facade_cpu_ms": kserve["server_cpu_ms_per_image"],
            "model_server_cpu_ms": kserve["model_server_cpu_ms_per_image"],
            "facade_peak_rss_mb": kserve["server_memory_mb"]["peak_rss_mb"],
            "model_server_peak_rss_mb": kserve["model_server_memory_mb"]["peak_rss_mb"],
        }
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return [*lines, *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows), ""]


def _span(values: Sequence[float], form: str) -> str:
    """``lo-hi`` of ``values`` in ``form``, or the one value when they all print alike."""
    lo, hi = form.format(min(values)), form.format(max(values))
    return lo if lo == hi else f"{lo}-{hi}"


def _f(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(  # noqa: PLR0915 - one section after the other
    r: dict[str, Any], suite: dict[str, Any], k8s: dict[str, Any], demand: tuple[int, float]
) -> str:
    """docs/scaling.md: this run's one/two-facade table, per-image costs, the formula and worked replica counts."""
    s, machine, settings = r["summary"], r["machine"], r["settings"]
    kinds = [kind for kind in ("raw", "png", "jpeg") if kind in s]
    cameras, fps = demand
    load = cameras * fps
    ci_note = (
        "A CI run (pytest) was running during part of the measurement: see the `CI` column; the numbers are "
        "less trustworthy than usual."
        if any(s[k][f]["ci_running"] for k in kinds for f in ("1", "2"))
        else "No CI run (pytest) was running during the measurement."
    )
    size = r["inputs"]["size"]
    lines = [
        "# Scaling and capacity",
        "",
        "How many facade and model-server replicas a load needs, from CPU time per image. Per-image costs "
        "come from two benchmarks on the same 2-core machine: the scale-out run below "
        f"(`{r['command']}`, {machine['date_utc'][:10]}; JSON in "
        "[benchmarks/scale_out.json](benchmarks/scale_out.json)) and the performance suite "
        f"([benchmarks/suite.md](benchmarks/suite.md), `{suite['command']}`, {suite['date'][:10]}). "
        "The capacity columns and everything under *Replica counts* are derived from those numbers, not measured.",
        "",
        f"**Machine:** {machine['cpu_model']}, {machine['usable_cores']} cores, {machine['memory_gib']} GiB; "
        f"OpenVINO {machine['openvino'].split('-')[0]}, grpcio {machine['grpcio']}. "
        f"**Model:** {r['model']['family']} ({r['model']['backbone']}), {r['model']['image_size']}×"
        f"{r['model']['image_size']}, {r['model']['inference_precision']}, trained on {r['dataset']}. "
        f"**Inputs:** the {r['inputs']['images']} test images ({size[1]}×{size[0]}), sent as "
        + ", ".join(f"{k} ({r['inputs']['mean_bytes'][k] / 1e3:.0f} KB)" for k in kinds)
        + " (raw = RGB pixels in `RawImage`).",
        "",
        "## What was measured here: one facade against two",
        "",
        "One KServe v2 model server and two facades (`visinspect-server --backend kserve`) run for the whole "
        f"benchmark. {settings['clients']} closed-loop clients, each its own `InspectionClient`, call `detect` "
        "back to back: with **one facade** each client is `InspectionClient(address_a)` (facade B idles); with "
        "**two facades** `InspectionClient([address_a, address_b])`, the SDK's gRPC `round_robin` over the "
        f"healthy servers. The two set-ups alternate, {settings['rounds']} rounds per input kind, each point "
        f"{settings['warmup_s']:.0f} s of warm-up then {settings['windows']} windows of {settings['window_s']:.0f} s "
        "(images/s: median of all windows; latency: every call completed inside them). Calls per facade are the "
        "difference of each facade's Prometheus counter `visinspect_requests_total` (method Detect) across the "
        "windows; CPU is user + system time from `/proc/<pid>/stat` over the same windows, divided by the images "
        "completed. The model server is the test stand-in (kserve's Python `ModelServer` running OpenVINO), "
        "not OVMS.",
        "",
    ]
    rows = []
    for kind in kinds:
        for facades in ("1", "2"):
            e = s[kind][facades]
            calls = e["calls_by_facade"]
            cpu = e["cpu_ms_per_image"]
            batch = e["mean_batch_by_facade"]
            rows.append(
                (
                    kind,
                    facades,
                    f"**{e['images_per_s']:.1f}** ({', '.join(f'{v:.1f}' for v in e['images_per_s_by_round'])})",
                    f"{e['latency']['p50_ms']:.0f} / {e['latency']['p99_ms']:.0f}",
                    f"{calls['facade_a']:.0f} / {calls['facade_b']:.0f} ({100 * e['share_facade_a']:.0f} % A)",
                    " / ".join(_f(batch[n]) for n in FACADES),
                    f"{cpu['facade_a']:.1f} + {cpu['facade_b']:.1f}",
                    f"{cpu['model_server']:.1f}",
                    f"{cpu['clients']:.1f}",
                    f"{e['busy_cores']:.2f}",
                    f"{100 * e['foreign_cpu_share']:.0f} %{' (CI)' if e['ci_running'] else ''}",
                )
            )
    lines += _table(
        [
            "input", "facades", "images/s (by round)", "p50 / p99 ms", "Detect calls A / B", "mean batch A / B",
            "CPU ms/image facade A + B", "model server", "clients", "cores busy", "foreign CPU",
        ],
        rows,
    )  # fmt: skip
    ratio_rows = [
        (
            kind,
            f"{s[kind]['ratio_two_over_one']['images_per_s']:.2f}",
            ", ".join(f"{v:.2f}" for v in s[kind]["ratio_two_over_one"]["images_per_s_by_round"]),
            f"{s[kind]['ratio_two_over_one']['p50']:.2f} / {s[kind]['ratio_two_over_one']['p99']:.2f}",
            f"{sum(s[kind]['2']['cpu_ms_per_image'][n] for n in FACADES):.1f} vs "
            f"{sum(s[kind]['1']['cpu_ms_per_image'][n] for n in FACADES):.1f}",
        )
        for kind in kinds
    ]
    lines += _table(
        ["input", "images/s two / one", "by round", "p50 / p99 two / one", "facade CPU ms/image, two vs one"],
        ratio_rows,
    )
    shares = [s[kind]["2"]["share_facade_a"] for kind in kinds]
    ratios = ", ".join(f"{s[k]['ratio_two_over_one']['images_per_s']:.2f}× ({k})" for k in kinds)
    busy = _span([s[k][f]["busy_cores"] for k in kinds for f in ("1", "2")], "{:.1f}")
    foreign = _span([100 * s[k][f]["foreign_cpu_share"] for k in kinds for f in ("1", "2")], "{:.0f}") + " %"
    model_change = ", ".join(
        f"{s[k]['1']['cpu_ms_per_image']['model_server']:.1f} → {s[k]['2']['cpu_ms_per_image']['model_server']:.1f}"
        f" ms ({k})"
        for k in kinds
    )
    facade_change = ", ".join(
        f"{sum(s[k]['1']['cpu_ms_per_image'][n] for n in FACADES):.1f} → "
        f"{sum(s[k]['2']['cpu_ms_per_image'][n] for n in FACADES):.1f} ms ({k})"
        for k in kinds
    )
    split_ok = all(abs(share - 0.5) < 0.1 for share in shares)
    lines += [
        ("**The split works.** " if split_ok else "**The split is uneven.** ")
        + "With two addresses the SDK sent "
        + ", ".join(f"{100 * share:.0f} %" for share in shares)
        + f" ({', '.join(kinds)}) of the Detect calls to facade A and the rest to B"
        + (
            " — round_robin alternates per call, so each facade also sees half the concurrency and forms "
            "smaller micro-batches (mean batch column)."
            if split_ok
            else "; see the calls column: this is what the SDK did, the benchmark does not correct it."
        ),
        "",
        f"**No throughput gain is to be expected on this box** (measured: {ratios} images/s with two facades "
        f"against one). Clients, both facades and the model server share {machine['usable_cores']} cores; "
        f"they kept {busy} of them busy, and other processes used {foreign} of the machine (foreign CPU). A "
        "second facade process adds no cores, so this ratio says nothing about a cluster, where each pod brings "
        "its own CPU. What carries over is the split and each process's CPU time per image. The facades' CPU "
        f"per image, one facade → two: {facade_change}. With two, each facade sees half the calls in "
        "flight, so smaller micro-batches, and each process has its own fixed overhead (health checks, "
        f"repository polling); the smaller batches also cost the model server more per image ({model_change}). "
        "The capacity model below uses the two-facade figures (several replicas is the "
        "case it sizes).",
        "",
    ]

    # ------------------------------------------------------------------ per-image costs
    lines += [
        "## Per-image cost and per-replica capacity",
        "",
        f"CPU ms per image. *Here*: this run, two facades, {settings['clients']} clients (facade CPU = A + B per "
        "image). *Suite*: docs/benchmarks/suite.md, one facade or embedded server, 8 clients. Capacity = cores "
        "× utilisation × 1000 / (CPU ms per image): the images/s one 2-core replica takes at 50 % and 70 % CPU. "
        "*Measured images/s* is what this 2-core box did with clients and every server on it, so it is below "
        "what a dedicated 2-core replica takes.",
        "",
    ]
    cost_rows = []
    costs: dict[str, dict[str, float]] = {}
    for kind in ("raw", "png"):
        if kind not in suite:
            continue
        peak_here = {  # VmHWM: the high-water mark of the whole run (every input kind), per process
            name: max((p["memory_mb"][n].get("peak_rss_mb", 0.0) for p in r["points"] for n in names), default=None)
            for name, names in (("facade", FACADES), ("model_server", ("model_server",)))
        }
        su = suite[kind]
        here = s.get(kind, {}).get("2")
        facade_here = sum(here["cpu_ms_per_image"][n] for n in FACADES) if here else None
        model_here = here["cpu_ms_per_image"]["model_server"] if here else None
        costs[kind] = {
            "embedded": su["embedded_cpu_ms"],
            "facade": facade_here if facade_here is not None else su["facade_cpu_ms"],
            "model_server": model_here if model_here is not None else su["model_server_cpu_ms"],
        }
        entries = (
            ("embedded server (decode + inference)", None, su["embedded_cpu_ms"], su["embedded_images_per_s"],
             None, su["embedded_peak_rss_mb"]),
            ("facade (`--backend kserve`)", facade_here, su["facade_cpu_ms"],
             here["images_per_s"] / 2 if here else None, peak_here["facade"], su["facade_peak_rss_mb"]),
            ("model server (stand-in for OVMS)", model_here, su["model_server_cpu_ms"],
             here["images_per_s"] if here else su["kserve_images_per_s"], peak_here["model_server"],
             su["model_server_peak_rss_mb"]),
        )  # fmt: skip
        for name, ms_here, ms_suite, measured, rss_here, rss in entries:
            ms = ms_here if ms_here is not None else ms_suite
            cost_rows.append(
                (
                    kind,
                    name,
                    _f(ms_here),
                    _f(ms_suite),
                    f"{images_per_s_per_replica(ms, 2, 0.5):.0f} / {images_per_s_per_replica(ms, 2, 0.7):.0f}",
                    _f(measured),
                    f"{_f(rss_here, 0)} / {rss:.0f}",
                )
            )
    lines += _table(
        [
            "input", "process", "CPU ms/image here", "suite", "images/s per 2-core replica at 50 / 70 %",
            "measured images/s (shared box, per process)", "peak RSS MB, this run / suite",
        ],
        cost_rows,
    )  # fmt: skip
    lines += [
        "Peak RSS: this run's is the high-water mark over the whole run (all input kinds); the stand-in "
        "serves only this model here; in the suite it held every model of the suite's "
        "repository (PaDiM f32 and bf16, PatchCore), and the manifests size OVMS from the embedded server (see "
        "deploy/kubernetes/README.md). A facade's peak grows with the calls in flight at once (here up to "
        f"{settings['clients']} on facade A). A PNG costs the facade more than raw pixels (it decodes it); the model "
        "server gets the same resized tensor either way. The stand-in wraps the same OpenVINO model in Python "
        "(kserve's ModelServer); OVMS serves it from C++, so its overhead per image is likely lower: treat the "
        "model-server figures as an upper bound.",
        "",
    ]

    # ------------------------------------------------------------------ replica counts
    facade_request = cpu_cores(k8s["facade"]["requests"]["cpu"])
    facade_limit = cpu_cores(k8s["facade"]["limits"]["cpu"])
    ovms_limit = cpu_cores(k8s["ovms"]["limits"]["cpu"])
    hpa = k8s["hpa"]
    per_pod = facade_request * hpa["target"]
    lines += [
        f"## Replica counts for {cameras} cameras at {fps:g} frames/s ({load:g} images/s)",
        "",
        "```",
        "cores    = images/s × CPU ms per image / 1000",
        "replicas = ceil(cores / (cores per replica × target utilisation))",
        "```",
        "",
        f"Replicas are 2-core pods or boxes (the benchmark machine; the manifests' CPU limit is {facade_limit:g} "
        f"for the facade and {ovms_limit:g} for OVMS). The facade's autoscaler does not look at the limit: it "
        f"keeps the average at {100 * hpa['target']:.0f} % of the {k8s['facade']['requests']['cpu']} request, "
        f"i.e. {per_pod:.2f} cores per pod, so the facade pods it runs = ceil(facade cores / {per_pod:.2f}) "
        f"(base: {hpa['min']}-{hpa['max']} pods; cluster overlay: {k8s['cluster']['hpa_min']}-"
        f"{k8s['cluster']['hpa_max']}).",
        "",
    ]
    count_rows = []
    for kind, c in costs.items():
        embedded_cores = cores_needed(load, c["embedded"])
        facade_cores = cores_needed(load, c["facade"])
        model_cores = cores_needed(load, c["model_server"])
        count_rows += [
            (kind, "embedded backend (one process per replica)", f"{c['embedded']:.1f}", f"{embedded_cores:.1f}",
             replicas_needed(load, c["embedded"], 2, 0.5), replicas_needed(load, c["embedded"], 2, 0.7), "—"),
            (kind, "facade + OVMS: facade pods", f"{c['facade']:.1f}", f"{facade_cores:.1f}",
             replicas_needed(load, c["facade"], 2, 0.5), replicas_needed(load, c["facade"], 2, 0.7),
             replicas_needed(load, c["facade"], facade_request, hpa["target"])),
            (kind, "facade + OVMS: OVMS pods", f"{c['model_server']:.1f}", f"{model_cores:.1f}",
             replicas_needed(load, c["model_server"], 2, 0.5), replicas_needed(load, c["model_server"], 2, 0.7),
             "—"),
        ]  # fmt: skip
    lines += _table(
        [
            "input", "deployment", "CPU ms/image", "cores at full use", "2-core replicas at 50 %", "at 70 %",
            f"facade pods at the HPA target ({100 * hpa['target']:.0f} % of {k8s['facade']['requests']['cpu']})",
        ],
        count_rows,
    )  # fmt: skip
    raw = costs.get("raw")
    png = costs.get("png")
    if raw and png:
        ovms_pods = k8s["cluster"]["ovms_replicas"] or k8s["ovms_replicas"]
        covered = ovms_pods * images_per_s_per_replica(raw["model_server"], ovms_limit, 0.7)
        png_hpa = replicas_needed(load, png["facade"], facade_request, hpa["target"])
        lines += [
            "Reading the table against the manifests (deploy/kubernetes/):",
            "",
            f"- **Facade + OVMS costs more CPU in total than the embedded backend** "
            f"({raw['facade'] + raw['model_server']:.0f} against {raw['embedded']:.0f} ms per raw image, with the "
            "stand-in's upper-bound cost): the "
            "split buys independent scaling and a model server shared by many facades, not efficiency.",
            f"- **OVMS is the bigger part.** The cluster overlay's {ovms_pods} OVMS pods "
            f"({ovms_limit:g} cores each) take about {covered:.0f} images/s at 70 % by the stand-in's cost; "
            f"{load:g} images/s needs {replicas_needed(load, raw['model_server'], ovms_limit, 0.7)} at 70 % and "
            f"{replicas_needed(load, raw['model_server'], ovms_limit, 0.5)} at 50 %. OVMS has no autoscaler (a "
            "facade keeps its connection to one OVMS pod), so set its `replicas` from this table.",
            f"- **One 2-core box** with clients, one facade and the model server on it (the edge overlay's shape) "
            f"did {s['raw']['1']['images_per_s']:.0f} (raw) and {s['png']['1']['images_per_s']:.0f} (png) images/s "
            f"at full CPU here: at 50-70 % that is roughly {0.5 * s['png']['1']['images_per_s'] / fps:.0f}-"
            f"{0.7 * s['raw']['1']['images_per_s'] / fps:.0f} cameras at {fps:g} frames/s."
            if "raw" in s and "png" in s
            else "- (one-box figure: needs both raw and png in this run)",
            f"- **Facade pods depend on the input format.** Raw pixels: "
            f"{replicas_needed(load, raw['facade'], facade_request, hpa['target'])} pods at the HPA target; PNG "
            f"(decoding in the facade): {png_hpa}"
            + (
                f", above the base autoscaler's maximum of {hpa['max']}: use the cluster overlay "
                f"(max {k8s['cluster']['hpa_max']}) or raise `maxReplicas`."
                if png_hpa > hpa["max"]
                else "."
            ),
            f"- The facade's request ({k8s['facade']['requests']['cpu']}) is what the scheduler reserves, not "
            f"what a pod may use (limit {facade_limit:g}): leave the nodes at least the `cores at full use` "
            "column free, plus headroom.",
            f"- CPU only, for this model ({r['model']['family']} {r['model']['inference_precision']}, "
            f"{r['model']['backbone']}). In the suite, PatchCore cost {_f(suite.get('patchcore_cpu_ms'), 0)} and "
            f"the bf16 PaDiM (AMX) {_f(suite.get('bf16_cpu_ms'), 0)} against {_f(raw['embedded'], 0)} ms per raw "
            "image in the embedded server: redo the arithmetic with the cost of the model you deploy.",
            "",
        ]

    # ------------------------------------------------------------------ balancing and limits
    lines += [
        "## Balancing: why the SDK spreads calls itself",
        "",
        "A Kubernetes ClusterIP Service balances per TCP connection, and a gRPC channel keeps one HTTP/2 "
        "connection for all its calls: every client is pinned to the one facade pod its connection landed on, "
        "however many pods the autoscaler adds. Give the SDK the headless Service instead "
        '(`InspectionClient("dns:///visinspect-facade-headless.<namespace>.svc.cluster.local:50051")`) or a '
        "list of addresses: it resolves every ready pod and round-robins calls over those whose gRPC health is "
        "SERVING, the mechanism measured above. The same pinning applies "
        "between facade and OVMS (one connection per facade pod to the `visinspect-ovms` ClusterIP), so OVMS "
        "load follows where facade connections landed; with few facade pods it can be uneven.",
        "",
        "## What this does not show",
        "",
        "- **OVMS did not run here** (it cannot run on this machine): the model server is the test stand-in, kserve's "
        "Python ModelServer with OpenVINO. OVMS's own per-image overhead is likely lower, so the model-server CPU "
        "figures are an upper bound.",
        "- **No Kubernetes cluster ran**: pod counts are arithmetic on per-process CPU, not observed autoscaling; "
        "the manifests' requests and limits are in deploy/kubernetes/base/*.yaml and were set from the suite.",
        f"- **One {machine['usable_cores']}-core machine**: clients, facades and the model server competed for "
        "the same cores, so absolute images/s here are lower than a replica with dedicated cores achieves, and "
        "the CPU time per image includes some contention. The load generator's own CPU (the `clients` column: "
        "raw images are copied into each request by the SDK) came out of the same budget.",
        f"- {ci_note}",
        "",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Measure (or reload), then write the JSON and docs/scaling.md."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("benchmarks").setLevel(logging.INFO)
    if args.report_from is not None:
        results = json.loads(args.report_from.read_text())
    else:
        command = [".venv/bin/python", "-m", "benchmarks.scale_out", *(argv if argv is not None else sys.argv[1:])]
        meter = CpuMeter()
        started = time.monotonic()
        with contextlib.ExitStack() as stack:
            scratch = args.scratch or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="visinspect-scale-")))
            scratch.mkdir(parents=True, exist_ok=True)
            results = measure(args, scratch.resolve(), meter)
        results["command"] = shlex.join(command)
        results["wall_s"] = time.monotonic() - started
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    text = markdown(results, suite_numbers(args.suite_json), manifests(), (args.cameras, args.fps))
    args.out_doc.parent.mkdir(parents=True, exist_ok=True)
    args.out_doc.write_text(text)
    for kind, by_facades in results["summary"].items():
        ratio = by_facades["ratio_two_over_one"]["images_per_s"]
        share = by_facades["2"]["share_facade_a"]
        print(f"{kind}: images/s two / one facades {ratio:.2f}; calls to facade A with two: {100 * share:.0f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
