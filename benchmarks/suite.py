"""The performance suite: the facade against its anchors, in one run, on one machine state.

    .venv/bin/python -m benchmarks.suite [--dataset-root DIR] [--out-dir docs/benchmarks] [--quick]

Trains PaDiM on MVTec AD bottle (default backbone) in a child process, exports it (our IR at f32 and at
bf16, and anomalib's own export of the same checkpoint), trains and exports PatchCore (its defaults, f32) on
the same images, then measures, in this order:

1. ``benchmark_app`` on the served IR and on anomalib's IR (``-hint latency`` and ``-hint throughput``).
2. anomalib's ``OpenVINOInferencer.predict(path)`` in a loop (what a user would write instead).
3. Where the model's time goes (OpenVINO per-layer counters: backbone, scoring, blur, upsampling).
4. One client: the facade (embedded backend) interleaved with the same decode + resize + inference
   in-process, for PNG, JPEG and raw inputs; batched and unbatched facades interleaved; embedded and
   KServe-backend facades interleaved.
5. Closed-loop load at 1, 2, 4, 8 and 16 clients per input type, embedded and KServe backends; the
   unbatched facade and the bf16 model at 8 clients.
6. Server memory (idle and peak RSS) and the server's installed dependency size.
7. PatchCore next to PaDiM at equal work (same images, 256x256, f32, server defaults): ``benchmark_app``,
   its profile, PaDiM and PatchCore facade calls interleaved through one server (PNG and raw), closed-loop
   load at 1 and 8 clients and the idle and peak RSS of a server that loads only PatchCore.

Writes ``suite.json`` (every number) and ``suite.md`` (tables, targets) into ``--out-dir``. Every
comparison is a ratio of two numbers from this run; latencies are medians after warm-up, throughput is
the median of several windows.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import openvino as ov

from benchmarks import report
from benchmarks.anchors import benchmark_app, installed_size, machine_info, training_side
from benchmarks.load import INPUT_KINDS, InProcess, Inputs, closed_loop, facade_call, interleaved, summary
from benchmarks.processes import (
    KSERVE_PYTHON,
    CpuMeter,
    LocalServer,
    StandIn,
    memory_mb,
    running_server,
    running_standin,
)
from benchmarks.report import auroc
from visinspect_api.model_repository import IR_BIN_FILENAME, IR_XML_FILENAME, read_metadata
from visinspect_api.v1 import inspection_pb2 as pb
from visinspect_api.v1 import inspection_pb2_grpc as pb_grpc

DEFAULT_DATASET_ROOT = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "mvtec_ad"
CATEGORY = "bottle"
BF16_MODEL = "bottle_bf16"
PATCHCORE_MODEL = "bottle_patchcore"
CLIENT_COUNTS = (1, 2, 4, 8, 16)
FAMILY_CLIENT_COUNTS = (1, 8)
FAMILY_INPUT_KINDS = ("png", "raw")
GRPC_OPTIONS = [("grpc.max_send_message_length", 64 << 20)]

log = logging.getLogger("benchmarks")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset-root", type=Path, default=DEFAULT_DATASET_ROOT, help="holds bottle/test/*/*.png")
    parser.add_argument("--out-dir", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--requests", type=int, default=100, help="measured calls per latency comparison")
    parser.add_argument("--window-s", type=float, default=3.0, help="length of one throughput window")
    parser.add_argument("--windows", type=int, default=3, help="throughput windows per load point (median)")
    parser.add_argument("--warmup-s", type=float, default=2.0, help="load before the first window opens")
    parser.add_argument("--app-seconds", type=float, default=10.0, help="benchmark_app -t")
    parser.add_argument("--kserve", action=argparse.BooleanOptionalAction, default=KSERVE_PYTHON.exists())
    parser.add_argument("--quick", action="store_true", help="a smoke run: fewer calls, shorter windows")
    parser.add_argument(
        "--report-from", type=Path, help="only rewrite suite.md (and the targets) from an earlier suite.json"
    )
    parser.add_argument(
        "--scratch", type=Path, help="keep the trained model and exports here and reuse them on the next run"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.window_s, args.windows, args.warmup_s, args.app_seconds = 12, 1.0, 1, 0.5, 2.0
    return args


def labels_of(inputs: Inputs) -> np.ndarray:
    """True for defective images (MVTec: every test folder but ``good``)."""
    return np.array([path.parent.name != "good" for path in inputs.paths])


def model_profile(xml: Path, precision: str) -> dict[str, dict[str, float]]:
    """Per-image milliseconds by part of the graph at batch 1 and 8 (OpenVINO's per-layer counters)."""
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True}
    compiled = core.compile_model(str(xml), "CPU", config)
    request = compiled.create_infer_request()
    height, width = compiled.inputs[0].get_partial_shape()[1:3]
    result = {}
    for batch in (1, 8):
        images = np.random.default_rng(0).integers(0, 256, (batch, height.get_length(), width.get_length(), 3))
        images = images.astype(np.uint8)
        for _ in range(3):
            request.infer({0: images})
        parts: collections.Counter[str] = collections.Counter()
        rounds, walls = 10, []
        for _ in range(rounds):
            started = time.perf_counter()
            request.infer({0: images})
            walls.append((time.perf_counter() - started) * 1e3 / batch)
            for layer in request.profiling_info:
                parts[_part(layer.node_name, layer.node_type)] += layer.real_time.total_seconds() * 1e3 / rounds / batch
        wall = float(np.median(walls))
        result[f"batch_{batch}"] = {name: round(ms, 2) for name, ms in parts.most_common()} | {"wall": round(wall, 2)}
    return result


_NEAREST_NEIGHBOUR_OPS = re.compile(
    r"aten::(matmul|min|max|topk|pow|sum|sub|add|clamp|sqrt|gather|t|softmax|select|rsub|mul|expand)/"
)
_SCORING_TYPES = frozenset({"FullyConnected", "MatMul", "TopK"})


def _part(node: str, node_type: str) -> str:
    """The part of the graph an executed layer belongs to.

    PaDiM's Mahalanobis step lives in the ``distance`` module. PatchCore's nearest-neighbour search and
    score re-weighting are top-level ``aten::`` operations of its serving graph (the normalisation, backbone
    and blur are under ``__module.``); its matmuls run as FullyConnected layers that OpenVINO renames, and the
    convolutional backbones have no FullyConnected, MatMul or TopK layer.
    """
    for key, part in (("distance", "scoring"), ("blur", "blur"), ("interpolate", "upsampling")):
        if key in node.lower():
            return part
    if node_type in _SCORING_TYPES or _NEAREST_NEIGHBOUR_OPS.match(node):
        return "scoring"
    return "backbone and embedding"


@contextlib.contextmanager
def step(name: str, meter: CpuMeter) -> Iterator[None]:
    """Log a phase and record the foreign CPU share during it."""
    log.info("%s ...", name)
    started = time.monotonic()
    with meter.phase(name):
        yield
    log.info("%s done in %.0f s", name, time.monotonic() - started)


def load_point(
    args: argparse.Namespace,
    server: LocalServer,
    requests: list[pb.DetectRequest],
    clients: int,
    behind: StandIn | None = None,
) -> dict[str, Any]:
    """Closed-loop load on ``server`` with the suite's windows; ``behind``: the model server it calls."""
    return closed_loop(
        server.address, requests, clients, warmup_s=args.warmup_s, window_s=args.window_s, windows=args.windows,
        server_pid=server.pid, backend_pid=behind.pid if behind is not None else None,
    )  # fmt: skip


def load_grid(
    args: argparse.Namespace,
    server: LocalServer,
    inputs: Inputs,
    model: str,
    *,
    kinds: Sequence[str] = INPUT_KINDS,
    client_counts: Sequence[int] = CLIENT_COUNTS,
    behind: StandIn | None = None,
) -> dict[str, dict[int, dict[str, Any]]]:
    """:func:`load_point` for every input kind and client count, calling ``model``."""
    return {
        kind: {
            clients: load_point(args, server, inputs.requests(model, kind), clients, behind)
            for clients in client_counts
        }
        for kind in kinds
    }


def one_client(args: argparse.Namespace, calls: dict[str, Any]) -> dict[str, list[tuple[float, Any]]]:
    """Interleaved calls, with the suite's warm-up and count."""
    return interleaved(calls, args.requests, warmup=5 if args.quick else 10)


def measure(args: argparse.Namespace, scratch: Path, meter: CpuMeter) -> dict[str, Any]:  # noqa: PLR0915
    """Every phase; returns the results dictionary."""
    paths = sorted((args.dataset_root.resolve() / CATEGORY / "test").glob("*/*.png"))
    if not paths:
        raise SystemExit(f"suite: no images under {args.dataset_root / CATEGORY / 'test'}/*/*.png (MVTec AD bottle)")
    inputs = Inputs.load(paths)
    labels = labels_of(inputs)
    repository, cache = scratch / "repository", scratch / "cache"
    results: dict[str, Any] = {"machine": machine_info()}
    prepared_file = scratch / "prepared.json"
    prepared = json.loads(prepared_file.read_text()) if prepared_file.exists() else {}
    if PATCHCORE_MODEL in prepared.get("versions", {}):
        log.info("reusing the models prepared in %s", scratch)
    else:
        shutil.rmtree(repository, ignore_errors=True)  # the servers would also load older versions
        with step("train and export (child process)", meter):
            prepared = training_side(
                "prepare", "--dataset-root", str(args.dataset_root), "--repository", str(repository),
                "--scratch", str(scratch),
            )  # fmt: skip
        prepared_file.write_text(json.dumps(prepared))
    version_dir = repository / CATEGORY / str(prepared["versions"][CATEGORY])
    metadata = read_metadata(version_dir)
    xml = version_dir / IR_XML_FILENAME
    anomalib_xml = Path(prepared["anomalib_xml"])
    size = metadata.input.height
    results["model"] = {
        "backbone": metadata.backbone.name,
        "layers": list(metadata.backbone.layers),
        "n_features": metadata.backbone.n_features,
        "image_size": size,
        "inference_precision": metadata.inference_precision,
        "ir_precision": metadata.ir_precision,
        "ir_bin_mb": (version_dir / IR_BIN_FILENAME).stat().st_size / 1e6,
        "anomalib_bin_mb": anomalib_xml.with_suffix(".bin").stat().st_size / 1e6,
        "anomalib_pre_processor": prepared["anomalib_pre_processor"],
        "fit_seconds": prepared["fit_seconds"],
        "evaluation": {name: prepared["evaluation"][name] for name in (CATEGORY, BF16_MODEL)},
    }
    results["inputs"] = {
        "images": len(inputs),
        "defective": int(labels.sum()),
        "size": list(inputs.rgb[0].shape),
        "mean_bytes": {kind: inputs.mean_bytes(kind) for kind in INPUT_KINDS},
        "jpeg_quality": 90,
    }

    anchors: dict[str, Any] = {}
    with step("benchmark_app", meter):
        ours, theirs = f"[1,{size},{size},3]", f"[1,3,{size},{size}]"
        for hint in ("latency", "throughput"):
            anchors[f"app_served_{hint}"] = benchmark_app(
                xml, hint, ours, metadata.inference_precision, args.app_seconds
            )
            anchors[f"app_anomalib_default_{hint}"] = benchmark_app(anomalib_xml, hint, theirs, None, args.app_seconds)
            anchors[f"app_anomalib_f32_{hint}"] = benchmark_app(anomalib_xml, hint, theirs, "f32", args.app_seconds)
    with step("anomalib OpenVINOInferencer.predict(path)", meter):
        listing = scratch / "images.txt"
        listing.write_text("\n".join(str(p) for p in inputs.paths))
        for name, precision in (("default", ""), ("f32", "f32")):
            run = training_side(
                "anchor",
                "--xml",
                str(anomalib_xml),
                "--images",
                str(listing),
                "--precision",
                precision,
                "--warmup",
                "3" if args.quick else "5",
            )
            anchors[f"inferencer_{name}"] = {
                "latency": summary(run["latency_ms"]),
                "auroc": auroc(run["scores"], labels),
                "inference_precision": run["inference_precision"],
                "performance_hint": run["performance_hint"],
            }
    results["anchors"] = anchors
    with step("model profile", meter):
        results["profile"] = model_profile(xml, metadata.inference_precision)

    floor = InProcess(version_dir, metadata)
    latency: dict[str, Any] = {}
    throughput: dict[str, Any] = {}
    with running_server(repository, [CATEGORY], cache, meter) as server:
        idle = memory_mb(server.pid)
        with grpc.insecure_channel(server.address, options=GRPC_OPTIONS) as channel:
            stub = pb_grpc.InspectionServiceStub(channel)
            with step("one client: facade vs in-process", meter):
                for kind in INPUT_KINDS:
                    requests = inputs.requests(CATEGORY, kind)
                    got = one_client(
                        args,
                        {
                            "facade": facade_call(stub, requests),
                            "in_process": lambda i, kind=kind: (sum(t := floor(inputs, kind, i % len(inputs))[:3]), t),
                        },
                    )
                    latency[kind] = report.latency_entry(got, inputs, labels)
            with running_server(repository, [CATEGORY], cache, meter, ["--max-batch-size", "1"]) as unbatched:
                idle_unbatched = memory_mb(unbatched.pid)
                with grpc.insecure_channel(unbatched.address) as other, step("one client: batched vs unbatched", meter):
                    requests = inputs.requests(CATEGORY, "png")
                    got = one_client(
                        args,
                        {
                            "batched": facade_call(stub, requests),
                            "unbatched": facade_call(pb_grpc.InspectionServiceStub(other), requests),
                        },
                    )
                    latency["batching"] = {name: summary([ms for ms, _ in calls]) for name, calls in got.items()}
                with step("8 clients, unbatched facade", meter):
                    throughput["embedded_unbatched"] = {
                        kind: load_point(args, unbatched, inputs.requests(CATEGORY, kind), 8) for kind in ("raw", "png")
                    }
            with step("closed-loop load, embedded backend", meter):
                throughput["embedded"] = load_grid(args, server, inputs, CATEGORY)
        results["memory"] = {
            "idle": idle,
            "idle_unbatched": idle_unbatched,
            "after_load": memory_mb(server.pid),
        }
        if args.kserve:
            with contextlib.ExitStack() as stack:
                standin = stack.enter_context(running_standin(repository, meter))
                kserve = stack.enter_context(
                    running_server(
                        repository, [CATEGORY], cache, meter, ["--backend", "kserve", "--ovms-address", standin.address]
                    )
                )
                with (
                    grpc.insecure_channel(server.address) as a,
                    grpc.insecure_channel(kserve.address) as b,
                    step("one client: embedded vs kserve facade", meter),
                ):
                    latency["kserve"] = {}
                    for kind in ("png", "raw"):
                        requests = inputs.requests(CATEGORY, kind)
                        got = one_client(
                            args,
                            {
                                "embedded": facade_call(pb_grpc.InspectionServiceStub(a), requests),
                                "kserve": facade_call(pb_grpc.InspectionServiceStub(b), requests),
                            },
                        )
                        latency["kserve"][kind] = {name: summary([ms for ms, _ in c]) for name, c in got.items()}
                with step("closed-loop load, kserve backend", meter):
                    throughput["kserve"] = load_grid(args, kserve, inputs, CATEGORY, behind=standin)
    with (
        running_server(repository, [BF16_MODEL], cache, meter) as bf16,
        grpc.insecure_channel(bf16.address) as channel,
        step("bf16 model: one client and 8 clients", meter),
    ):
        requests = inputs.requests(BF16_MODEL, "png")
        got = one_client(args, {"facade": facade_call(pb_grpc.InspectionServiceStub(channel), requests)})
        latency["bf16_png"] = report.latency_entry(got, inputs, labels)
        throughput["embedded_bf16"] = {
            kind: load_point(args, bf16, inputs.requests(BF16_MODEL, kind), 8) for kind in ("raw", "png")
        }
    results["latency"] = latency
    results["throughput"] = throughput
    results["patchcore"] = patchcore_phases(args, scratch, prepared, inputs, meter)
    results["install"] = installed_size()
    return results


def patchcore_phases(
    args: argparse.Namespace, scratch: Path, prepared: dict[str, Any], inputs: Inputs, meter: CpuMeter
) -> dict[str, Any]:
    """PatchCore at PaDiM's work: the same images, input size, precision and server settings."""
    labels = labels_of(inputs)
    repository, cache = scratch / "repository", scratch / "cache"
    version_dir = repository / PATCHCORE_MODEL / str(prepared["versions"][PATCHCORE_MODEL])
    metadata = read_metadata(version_dir)
    xml = version_dir / IR_XML_FILENAME
    size = metadata.input.height
    out: dict[str, Any] = {
        "model": {
            "name": PATCHCORE_MODEL,
            "backbone": metadata.backbone.name,
            "layers": list(metadata.backbone.layers),
            "parameters": dict(metadata.parameters),
            "image_size": size,
            "inference_precision": metadata.inference_precision,
            "ir_precision": metadata.ir_precision,
            "ir_bin_mb": (version_dir / IR_BIN_FILENAME).stat().st_size / 1e6,
            "fit_seconds": prepared["fit_seconds_by_model"][PATCHCORE_MODEL],
            "evaluation": prepared["evaluation"].get(PATCHCORE_MODEL),
        }
    }
    with step("PatchCore: benchmark_app", meter):
        out["anchors"] = {
            f"app_served_{hint}": benchmark_app(
                xml, hint, f"[1,{size},{size},3]", metadata.inference_precision, args.app_seconds
            )
            for hint in ("latency", "throughput")
        }
    with step("PatchCore: model profile", meter):
        out["profile"] = model_profile(xml, metadata.inference_precision)
    with (
        running_server(repository, [CATEGORY, PATCHCORE_MODEL], cache, meter) as both,
        grpc.insecure_channel(both.address, options=GRPC_OPTIONS) as channel,
        step("one client: PaDiM vs PatchCore facade, one server", meter),
    ):
        out["memory"] = {"idle_both_models": memory_mb(both.pid)}
        stub = pb_grpc.InspectionServiceStub(channel)
        out["latency"] = {}
        for kind in FAMILY_INPUT_KINDS:
            got = one_client(
                args,
                {
                    "padim": facade_call(stub, inputs.requests(CATEGORY, kind)),
                    "patchcore": facade_call(stub, inputs.requests(PATCHCORE_MODEL, kind)),
                },
            )
            out["latency"][kind] = {
                name: report.latency_entry({"facade": calls}, inputs, labels) for name, calls in got.items()
            }
    with running_server(repository, [PATCHCORE_MODEL], cache, meter) as server:
        out["memory"]["idle"] = memory_mb(server.pid)
        with step("closed-loop load, PatchCore", meter):
            out["throughput"] = load_grid(
                args, server, inputs, PATCHCORE_MODEL, kinds=FAMILY_INPUT_KINDS, client_counts=FAMILY_CLIENT_COUNTS
            )
        out["memory"]["after_load"] = memory_mb(server.pid)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; write JSON and Markdown; print the targets."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("benchmarks").setLevel(logging.INFO)
    command = shlex.join([".venv/bin/python", "-m", "benchmarks.suite", *(argv if argv is not None else sys.argv[1:])])
    if args.report_from is not None:
        results = report.load(args.report_from.read_text())
        return _write(results, args.out_dir)
    meter = CpuMeter()
    with contextlib.ExitStack() as stack:
        scratch = args.scratch or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="visinspect-suite-")))
        scratch.mkdir(parents=True, exist_ok=True)
        results = measure(args, scratch.resolve(), meter)
    results["command"] = command
    results["background"] = meter.phases
    return _write(results, args.out_dir)


def _write(results: dict[str, Any], out_dir: Path) -> int:
    results["targets"] = report.targets(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "suite.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out_dir / "suite.md").write_text(report.markdown(results))
    for target in results["targets"]:
        print(f"{'met ' if target['met'] else 'MISS'} {target['name']}: {target['value']:.3g} (goal {target['goal']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
