"""Turning the suite's measurements into per-phase summaries, the issue's targets, and a Markdown report.

Sections whose measurements an older ``suite.json`` lacks (PatchCore) are left out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from benchmarks.load import INPUT_KINDS, Inputs, summary

_STAGES = ("decode_ms", "preprocess_ms", "inference_ms", "postprocess_ms", "total_ms")


def load(text: str) -> dict[str, Any]:
    """A ``suite.json`` back as the suite made it (JSON turned the client counts into strings)."""
    results = json.loads(text)
    by_clients = [kinds for backend, kinds in results["throughput"].items() if backend in ("embedded", "kserve")]
    if "patchcore" in results:
        by_clients.append(results["patchcore"]["throughput"])
    for kinds in by_clients:
        for kind, runs in kinds.items():
            kinds[kind] = {int(clients): run for clients, run in runs.items()}
    return results


def auroc(scores: Sequence[float], labels: np.ndarray) -> float:
    """Image AUROC (Mann-Whitney, ties count half)."""
    values = np.asarray(scores, dtype=np.float64)
    positive, negative = values[labels], values[~labels]
    wins = (positive[:, None] > negative[None, :]).sum() + 0.5 * (positive[:, None] == negative[None, :]).sum()
    return float(wins / (positive.size * negative.size))


def latency_entry(got: dict[str, list[tuple[float, Any]]], inputs: Inputs, labels: np.ndarray) -> dict[str, Any]:
    """Summaries of one interleaved run: the facade (client and server stages, AUROC) and the in-process floor."""
    calls = got["facade"]
    replies = [reply for _, (_, reply) in calls]
    client = [ms for ms, _ in calls]
    entry: dict[str, Any] = {
        "facade": summary(client),
        "server_stage_p50_ms": {name: float(np.median([getattr(r.timing, name) for r in replies])) for name in _STAGES},
        "outside_handler_p50_ms": float(
            np.median([ms - r.timing.total_ms for ms, r in zip(client, replies, strict=True)])
        ),
    }
    scores = {index: reply.raw_score for _, (index, reply) in calls}
    if len(scores) == len(inputs):
        entry["auroc_all_test_images"] = auroc([scores[i] for i in range(len(inputs))], labels)
    if "in_process" in got:
        stages = [stages for _, stages in got["in_process"]]
        entry["in_process"] = {
            "total": summary([sum(s) for s in stages]),
            "decode": summary([s[0] for s in stages]),
            "resize": summary([s[1] for s in stages]),
            "inference": summary([s[2] for s in stages]),
        }
    return entry


def _precision(value: str) -> str:
    """OpenVINO's spellings (``<Type: 'bfloat16'>``, ``bfloat16``) as ``bf16``/``f32``; others unchanged."""
    found = re.fullmatch(r"<Type: '(\w+)'>", str(value))
    name = found.group(1) if found else str(value)
    return {"bfloat16": "bf16", "float32": "f32"}.get(name, name)


def _target(name: str, value: float | None, goal: str, met: bool | None, note: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "value": value if value is not None else float("nan"),
        "goal": goal,
        "met": bool(met),
        "note": note,
    }


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each a ratio of two numbers from this run."""
    latency, throughput, anchors = r["latency"], r["throughput"], r["anchors"]
    png = latency["png"]
    facade_p50 = png["facade"]["p50_ms"]
    out = []
    ratio = facade_p50 / anchors["inferencer_default"]["latency"]["p50_ms"]
    out.append(
        _target(
            "facade p50, PNG, 1 client / anomalib OpenVINOInferencer.predict(path) p50 (its default "
            f"precision, {_precision(anchors['inferencer_default']['inference_precision'])})",
            ratio,
            "<= 0.8",
            ratio <= 0.8,
        )
    )
    ratio = facade_p50 / anchors["inferencer_f32"]["latency"]["p50_ms"]
    out.append(
        _target(
            "facade p50, PNG, 1 client / OpenVINOInferencer p50 at f32 (the facade's precision)",
            ratio,
            "<= 0.8",
            ratio <= 0.8,
        )
    )
    ratio = latency["bf16_png"]["facade"]["p50_ms"] / anchors["inferencer_default"]["latency"]["p50_ms"]
    out.append(
        _target(
            "bf16 model's facade p50, PNG, 1 client / OpenVINOInferencer p50 at its default precision",
            ratio,
            "<= 0.8",
            ratio <= 0.8,
        )
    )
    ratio = facade_p50 / png["in_process"]["total"]["p50_ms"]
    out.append(
        _target("facade p50, PNG / the same decode + resize + inference in-process", ratio, "<= 1.1", ratio <= 1.1)
    )
    app_default = anchors["app_anomalib_default_throughput"]["throughput_fps"]
    app_f32 = anchors["app_anomalib_f32_throughput"]["throughput_fps"]
    raw8 = throughput["embedded"]["raw"][8]["images_per_s"]
    out.append(
        _target(
            f"facade 8 clients, raw, f32 model / benchmark_app -hint throughput on anomalib's IR "
            f"(default precision, {_precision(anchors['app_anomalib_default_throughput']['inference_precision'])})",
            raw8 / app_default,
            ">= 1.2",
            raw8 / app_default >= 1.2,
        )
    )
    out.append(
        _target(
            "facade 8 clients, raw, f32 model / benchmark_app throughput on anomalib's IR at f32",
            raw8 / app_f32,
            ">= 1.2",
            raw8 / app_f32 >= 1.2,
        )
    )
    bf16_raw8 = throughput["embedded_bf16"]["raw"]["images_per_s"]
    out.append(
        _target(
            "facade 8 clients, raw, bf16 model / benchmark_app throughput on anomalib's IR (default)",
            bf16_raw8 / app_default,
            ">= 1.2",
            bf16_raw8 / app_default >= 1.2,
        )
    )
    f32_auroc = png.get("auroc_all_test_images")
    bf16_auroc = latency["bf16_png"].get("auroc_all_test_images")
    if f32_auroc is not None and bf16_auroc is not None:
        diff = abs(bf16_auroc - f32_auroc)
        out.append(
            _target(
                "image AUROC difference, bf16 model vs f32 model, all bottle test images through the facade",
                diff,
                "<= 0.002",
                diff <= 0.002,
            )
        )
    batching = latency["batching"]
    ratio = batching["batched"]["p50_ms"] / batching["unbatched"]["p50_ms"]
    out.append(
        _target(
            "micro-batching's latency price: batched p50 / unbatched p50, 1 client, PNG", ratio, "<= 1.1", ratio <= 1.1
        )
    )
    gain = raw8 / throughput["embedded_unbatched"]["raw"]["images_per_s"]
    out.append(_target("micro-batching's gain: batched / unbatched images/s, 8 clients, raw", gain, "> 1", gain > 1))
    if "kserve" in throughput:
        k = latency["kserve"]["png"]
        ratio = k["kserve"]["p50_ms"] / k["embedded"]["p50_ms"]
        out.append(_target("KServe backend p50 / embedded p50, 1 client, PNG", ratio, "<= 1.15", ratio <= 1.15))
        for kind in ("png", "raw"):
            ratio = throughput["kserve"][kind][8]["images_per_s"] / throughput["embedded"][kind][8]["images_per_s"]
            out.append(_target(f"KServe backend / embedded images/s, 8 clients, {kind}", ratio, ">= 0.9", ratio >= 0.9))
    idle = r["memory"]["idle"]["rss_mb"]
    limit = 1.5 * r["model"]["ir_bin_mb"] + 150
    out.append(
        _target(
            f"server idle RSS (MB) / (1.5 x IR {r['model']['ir_bin_mb']:.0f} MB + 150 MB)",
            idle / limit,
            "<= 1",
            idle <= limit,
        )
    )
    if "patchcore" in r:
        pair = r["patchcore"]["latency"]["png"]
        ratio = pair["patchcore"]["facade"]["p50_ms"] / pair["padim"]["facade"]["p50_ms"]
        out.append(
            _target(
                "PatchCore facade p50 / PaDiM facade p50, PNG, 1 client, interleaved through one server",
                ratio,
                "<= 2",
                ratio <= 2,
            )
        )
    return out


def _ms(stats: dict[str, float]) -> str:
    return f"{stats['p50_ms']:.1f} / {stats['p99_ms']:.1f}"


def _memory(stats: dict[str, float]) -> str:
    return f"{stats['rss_mb']:.0f} MB ({stats['anon_mb']:.0f} MB anonymous, {stats['file_mb']:.0f} MB file-backed)"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


def _profile_table(profile: dict[str, dict[str, float]]) -> list[str]:
    parts = sorted({p for run in profile.values() for p in run if p != "wall"})
    return _table(
        ["batch", *parts, "wall"],
        [(k.split("_")[1], *(run.get(p, 0) for p in parts), run["wall"]) for k, run in profile.items()],
    )


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _families(r: dict[str, Any]) -> list[str]:
    """PaDiM next to PatchCore: size, fit time, model speed, facade latency and load, memory, AUROC."""
    pc, model, throughput = r["patchcore"], r["model"], r["throughput"]["embedded"]
    p = pc["model"]
    params = p["parameters"]
    lines = [
        "## Model families: PaDiM and PatchCore",
        "",
        f"PaDiM: {model['backbone']} {' + '.join(model['layers'])}, {model['n_features']} features, "
        f"{model['image_size']}×{model['image_size']}, {model['inference_precision']}. PatchCore: {p['backbone']} "
        f"{' + '.join(p['layers'])}, memory bank {params['memory_bank_size']:.0f} × {params['embedding_dim']:.0f} "
        f"(coreset {params['coreset_ratio']:.0%}), {params['num_neighbors']:.0f} neighbours, "
        f"{p['image_size']}×{p['image_size']}, {p['inference_precision']}. Both trained on the same bottle images "
        "and served with the server's defaults. One-client rows: calls to the two models interleaved through one "
        "server that loads both "
        f"(idle RSS {pc['memory']['idle_both_models']['rss_mb']:.0f} MB). Load and memory rows: a server that loads "
        "only that model (PaDiM's from the embedded load above, a different phase).",
        "",
    ]
    rows: list[tuple[str, str, str, str]] = []

    def row(label: str, padim: float | None, patchcore: float | None, digits: int = 1) -> None:
        ratio = f"{patchcore / padim:.2f}" if padim and patchcore is not None else ""
        rows.append((label, _number(padim, digits), _number(patchcore, digits), ratio))

    row("IR .bin MB", model["ir_bin_mb"], p["ir_bin_mb"], 0)
    row("fit s (training on the same images)", model["fit_seconds"], p["fit_seconds"], 0)
    for hint, key, label in (("latency", "median_ms", "median ms"), ("throughput", "throughput_fps", "FPS")):
        row(
            f"benchmark_app -hint {hint}, {label}",
            r["anchors"][f"app_served_{hint}"][key],
            pc["anchors"][f"app_served_{hint}"][key],
        )
    for kind, pair in pc["latency"].items():
        a, b = pair["padim"], pair["patchcore"]
        ratio = b["facade"]["p50_ms"] / a["facade"]["p50_ms"]
        rows.append((f"facade p50 / p99 ms, 1 client, {kind}", _ms(a["facade"]), _ms(b["facade"]), f"{ratio:.2f}"))
        row(
            f"server inference p50 ms, 1 client, {kind}",
            a["server_stage_p50_ms"]["inference_ms"],
            b["server_stage_p50_ms"]["inference_ms"],
        )
    for kind, runs in pc["throughput"].items():
        for clients, run in runs.items():
            label = f"images/s, {clients} client{'s' * (clients > 1)}, {kind}"
            row(label, throughput[kind][clients]["images_per_s"], run["images_per_s"])
    if 8 in pc["throughput"].get("raw", {}):
        row(
            "facade CPU ms/image, 8 clients, raw",
            throughput["raw"][8]["server_cpu_ms_per_image"],
            pc["throughput"]["raw"][8]["server_cpu_ms_per_image"],
            0,
        )
    row("facade idle RSS MB", r["memory"]["idle"]["rss_mb"], pc["memory"]["idle"]["rss_mb"], 0)
    if 8 in pc["throughput"].get("png", {}):
        row(
            "facade peak RSS MB after PNG load up to 8 clients",
            throughput["png"][8]["server_memory_mb"].get("peak_rss_mb"),
            pc["throughput"]["png"][8]["server_memory_mb"].get("peak_rss_mb"),
            0,
        )
    png = pc["latency"]["png"]
    row(
        f"image AUROC, all {r['inputs']['images']} test images through the facade",
        png["padim"].get("auroc_all_test_images"),
        png["patchcore"].get("auroc_all_test_images"),
        4,
    )
    padim_eval, patchcore_eval = model["evaluation"].get("bottle"), p["evaluation"]
    if padim_eval and patchcore_eval:
        row(
            f"image AUROC, export evaluation ({patchcore_eval['num_images']} held-out test images)",
            padim_eval["image_auroc"],
            patchcore_eval["image_auroc"],
            4,
        )
    lines += _table(["", "PaDiM", "PatchCore", "PatchCore / PaDiM"], rows)
    lines += ["Where PatchCore's time goes (OpenVINO per-layer counters, ms per image):", ""]
    return lines + _profile_table(pc["profile"])


def markdown(r: dict[str, Any]) -> str:  # noqa: PLR0915 - one section after the other
    """The report: machine, targets, anchors, one-client latency, load, batching, precision, memory."""
    m, model, anchors, latency, throughput = r["machine"], r["model"], r["anchors"], r["latency"], r["throughput"]
    lines = [
        "# Performance suite",
        "",
        f"Produced by `{r['command']}` on {m['date_utc']}.",
        "",
        f"**Machine:** {m['cpu_model']}, {m['usable_cores']} usable of {m['logical_cores']} logical cores, "
        f"{m['memory_gib']} GiB, ISA {', '.join(m['isa'])}; OpenVINO {m['openvino']}, OpenCV {m['opencv']}, "
        f"grpcio {m['grpcio']}, Python {m['python']}. Client, servers and anchors share these cores (loopback only).",
        "",
        f"**Model:** PaDiM, {model['backbone']}, {model['n_features']} features, {model['image_size']}×"
        f"{model['image_size']}, trained on MVTec AD bottle in {model['fit_seconds']:.0f} s. Served IR "
        f"{model['ir_precision']} at inference precision {model['inference_precision']} ({model['ir_bin_mb']:.0f} MB); "
        f"anomalib's own export of the same checkpoint {model['anomalib_bin_mb']:.0f} MB, pre-processing in its graph: "
        f"{model['anomalib_pre_processor']}.",
        "",
        f"**Inputs:** the {r['inputs']['images']} bottle test images ({r['inputs']['defective']} defective), "
        f"{r['inputs']['size'][0]}×{r['inputs']['size'][1]}: "
        f"PNG (mean {r['inputs']['mean_bytes']['png'] / 1e3:.0f} KB), "
        f"JPEG q90 (mean {r['inputs']['mean_bytes']['jpeg'] / 1e3:.0f} KB), raw RGB "
        f"({r['inputs']['mean_bytes']['raw'] / 1e3:.0f} KB). Latencies: medians (p50) and p99 after warm-up; "
        "throughput: the median of several windows of closed-loop load.",
        "",
        "## Targets (ratios from this run)",
        "",
    ]
    lines += _table(
        ["target", "measured", "goal", ""],
        [(t["name"], f"{t['value']:.3f}", t["goal"], "met" if t["met"] else "**missed**") for t in r["targets"]],
    )
    lines += ["## Anchors", ""]
    rows = []
    for key, label in (
        ("served", "served IR (ours)"),
        ("anomalib_default", "anomalib's IR, default precision"),
        ("anomalib_f32", "anomalib's IR, f32"),
    ):
        lat, tput = anchors[f"app_{key}_latency"], anchors[f"app_{key}_throughput"]
        rows.append(
            (
                f"benchmark_app, {label}",
                _precision(lat["inference_precision"]),
                f"{lat['median_ms']:.1f}",
                f"{tput['throughput_fps']:.1f} ({tput['num_streams']:.0f} streams)",
            )
        )
    for key in ("default", "f32"):
        run = anchors[f"inferencer_{key}"]
        rows.append(
            (
                f"OpenVINOInferencer.predict(path), {key} config (AUROC {run['auroc']:.4f})",
                _precision(run["inference_precision"]),
                f"{run['latency']['p50_ms']:.1f} (p99 {run['latency']['p99_ms']:.1f})",
                f"{1e3 / run['latency']['p50_ms']:.1f} (1 caller)",
            )
        )
    lines += _table(["anchor", "precision", "latency p50 ms", "images/s"], rows)
    lines += ["Where the served model's time goes (OpenVINO per-layer counters, ms per image):", ""]
    lines += _profile_table(r["profile"])
    lines += ["## One client (embedded backend, LATENCY hint, micro-batching on)", ""]
    rows = []
    for kind in INPUT_KINDS:
        e = latency[kind]
        s, ip = e["server_stage_p50_ms"], e["in_process"]
        rows.append(
            (
                kind,
                _ms(e["facade"]),
                _ms(ip["total"]),
                f"{e['facade']['p50_ms'] / ip['total']['p50_ms']:.2f}",
                f"{ip['decode']['p50_ms']:.1f} / {ip['resize']['p50_ms']:.1f} / {ip['inference']['p50_ms']:.1f}",
                f"{s['decode_ms']:.1f} / {s['preprocess_ms']:.1f} / {s['inference_ms']:.1f} / "
                f"{s['postprocess_ms']:.1f}",
                f"{e['outside_handler_p50_ms']:.1f}",
            )
        )
    lines += _table(
        [
            "input",
            "facade p50 / p99 ms",
            "in-process p50 / p99 ms",
            "ratio p50",
            "in-process decode / resize / infer",
            "server decode / resize / infer / post",
            "outside handler",
        ],
        rows,
    )
    b = latency["batching"]
    lines += [
        f"Batched vs unbatched server (PNG, interleaved): p50 {b['batched']['p50_ms']:.1f} vs "
        f"{b['unbatched']['p50_ms']:.1f} ms, p99 {b['batched']['p99_ms']:.1f} vs {b['unbatched']['p99_ms']:.1f} ms."
        f" Facade AUROC over all {r['inputs']['images']} test images (f32 model): "
        f"{latency['png'].get('auroc_all_test_images', float('nan')):.4f}.",
        "",
    ]
    for backend in ("embedded", "kserve"):
        if backend not in throughput:
            continue
        lines += [f"## Load, {backend} backend (closed loop, one channel per client)", ""]
        rows = []
        for clients in sorted(throughput[backend]["png"]):
            cells = [str(clients)]
            for kind in INPUT_KINDS:
                run = throughput[backend][kind][clients]
                cells.append(
                    f"**{run['images_per_s']:.1f}** ({run['latency']['p50_ms']:.0f} / "
                    f"{run['latency']['p99_ms']:.0f}){' ' + str(run['errors']) + ' err' if run['errors'] else ''}"
                )
            run8 = throughput[backend]["raw"][clients]
            cpu = f"{run8['server_cpu_ms_per_image']:.0f}"
            if "model_server_cpu_ms_per_image" in run8:
                cpu += f" + {run8['model_server_cpu_ms_per_image']:.0f}"
            cells += [cpu, f"{run8['server_memory_mb'].get('peak_rss_mb', float('nan')):.0f}"]
            rows.append(cells)
        lines += _table(
            [
                "clients",
                *(f"{k}: images/s (p50 / p99 ms)" for k in INPUT_KINDS),
                "raw: CPU ms/image (facade + model server)",
                "facade peak RSS MB",
            ],
            rows,
        )
    if "kserve" in latency:
        rows = [
            (kind, _ms(v["embedded"]), _ms(v["kserve"]), f"{v['kserve']['p50_ms'] / v['embedded']['p50_ms']:.2f}")
            for kind, v in latency["kserve"].items()
        ]
        lines += [
            "One client, embedded and KServe-backend facades interleaved (the model server is the KServe v2 "
            "stand-in, kserve's ModelServer running OpenVINO, not OVMS itself):",
            "",
        ]
        lines += _table(["input", "embedded p50 / p99 ms", "kserve p50 / p99 ms", "ratio p50"], rows)
    lines += ["## Micro-batching and precision at 8 clients", ""]
    rows = []
    for label, key in (
        ("f32, batched (default)", None),
        ("f32, unbatched (--max-batch-size 1)", "embedded_unbatched"),
        ("bf16 model, batched", "embedded_bf16"),
    ):
        for kind in ("raw", "png"):
            run = throughput["embedded"][kind][8] if key is None else throughput[key][kind]
            rows.append(
                (
                    label,
                    kind,
                    f"**{run['images_per_s']:.1f}**",
                    f"{run['latency']['p50_ms']:.0f}",
                    f"{run['latency']['p99_ms']:.0f}",
                    f"{run['server_cpu_ms_per_image']:.0f}",
                )
            )
    lines += _table(["server", "input", "images/s", "p50 ms", "p99 ms", "CPU ms/image"], rows)
    bf = latency["bf16_png"]
    lines += [
        f"bf16 model, one client, PNG: p50 {bf['facade']['p50_ms']:.1f} ms; AUROC over all test images "
        f"{bf.get('auroc_all_test_images', float('nan')):.4f}. Export evaluation (held-out half): "
        + ", ".join(
            f"{name} AUROC {ev['image_auroc']:.4f}, max relative score difference to torch "
            f"{ev['max_rel_score_diff_vs_torch']:.1e}"
            for name, ev in model["evaluation"].items()
        )
        + ".",
        "",
    ]
    if "patchcore" in r:
        lines += _families(r)
    mem, inst = r["memory"], r["install"]
    lines += ["## Memory and install size", ""]
    lines += _table(
        ["what", "value"],
        [
            ("facade RSS, idle after loading the model", _memory(mem["idle"])),
            ("the same, unbatched server (--max-batch-size 1)", _memory(mem["idle_unbatched"])),
            ("facade peak RSS, after all embedded load", f"{mem['after_load']['peak_rss_mb']:.0f} MB"),
            ("served IR (.bin)", f"{model['ir_bin_mb']:.0f} MB"),
            (
                "server install (visinspect-server and its dependency closure)",
                f"{inst['total_mb']:.0f} MB in {inst['packages']} packages; torch: {inst['includes_torch']}, "
                f"anomalib: {inst['includes_anomalib']}; largest: "
                + ", ".join(f"{k} {v:.0f} MB" for k, v in inst["largest_mb"].items()),
            ),
        ],
    )
    lines += ["## Background load", "", "Share of CPU used by processes outside this run, per phase (/proc/stat).", ""]
    lines += _table(
        ["phase", "foreign CPU", "load avg start → end"],
        [
            (name, f"{p['foreign_cpu_share']:.0%}", f"{p['loadavg_1min_start']:.2f} → {p['loadavg_1min_end']:.2f}")
            for name, p in r["background"].items()
        ],
    )
    return "\n".join(lines)
