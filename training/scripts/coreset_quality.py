"""Coreset selection: visinspect's greedy_coreset against anomalib's KCenterGreedy, time and coverage.

For random N x 128 float32 embeddings (and, when the shared MVTec AD screw images are there, real
PatchCore patch embeddings: mobilenetv2_100 blocks.2 + blocks.4 at 256 x 256) and coreset sizes of
1 % and 2 % of N, prints a markdown table with:

- the wall time of greedy_coreset (exact greedy k-center, here on the unprojected 128-D features), how
  many times per 1000 centres it rebuilt its candidate pool, and how many row x centre distance
  products it computed, against the N x size of an eager update;
- anomalib's KCenterGreedy (eps=0.9 sparse projection, one N-row pass per centre): its projection
  time plus the time per centre measured over --anomalib-iterations centres, extrapolated to the full
  size (running it to the end takes hours at 1M rows);
- the coverage radius (largest distance from a row to its nearest selected row) of both selections,
  in the original, unprojected space. anomalib's full selection is computed with greedy_k_center on
  anomalib's own projected features and start row (the same selection: the first
  --anomalib-iterations + 1 indices of the timed KCenterGreedy run are checked against it).

    .venv/bin/python training/scripts/coreset_quality.py [--rows 100000 350000 1000000] [--ratios 0.01 0.02]
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from anomalib.models.components import KCenterGreedy, SparseRandomProjection
from anomalib.models.components.sampling import k_center_greedy
from anomalib.models.image.patchcore.torch_model import PatchcoreModel
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as tvf

from visinspect_training.coreset import GreedyStats, greedy_k_center, project
from visinspect_training.weights import fetch_builtin_weights, load_into_backbone, load_state_dict

SCREW = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "mvtec_ad" / "screw" / "train" / "good"
BACKBONE = "mobilenetv2_100"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PROJECTION_DIM = 128
SEED = 0


def random_embedding(rows: int, seed: int) -> torch.Tensor:
    return torch.randn(rows, 128, generator=torch.Generator().manual_seed(seed))


def screw_embedding(folder: Path, batch: int = 16) -> torch.Tensor:
    """PatchCore patch embeddings [images * 1024, 128] of the screw training images."""
    model = PatchcoreModel(layers=["blocks.2", "blocks.4"], backbone=BACKBONE, pre_trained=False).eval()
    load_into_backbone(
        model.feature_extractor.feature_extractor, BACKBONE, load_state_dict(fetch_builtin_weights(BACKBONE))
    )
    paths = sorted(folder.glob("*.png"))
    parts = []
    with torch.inference_mode():
        for begin in range(0, len(paths), batch):
            images = [decode_image(str(path), mode=ImageReadMode.RGB) for path in paths[begin : begin + batch]]
            x = torch.stack([tvf.resize(image, [256, 256], antialias=True) for image in images]).float() / 255
            x = tvf.normalize(x, IMAGENET_MEAN, IMAGENET_STD)
            features = {k: model.feature_pooler(v) for k, v in model.feature_extractor(x).items()}
            parts.append(model.reshape_embedding(model.generate_embedding(features)))
    return torch.cat(parts).contiguous()


def ours(embedding: torch.Tensor, size: int) -> tuple[torch.Tensor, float, GreedyStats]:
    """greedy_coreset(embedding, size, seed=SEED, projection_dim=PROJECTION_DIM), step by step for its stats."""
    stats = GreedyStats()
    began = time.perf_counter()
    generator = torch.Generator().manual_seed(SEED)
    features = project(embedding, PROJECTION_DIM, SEED)
    if features is not embedding:
        torch.randn(embedding.shape[1], PROJECTION_DIM, generator=generator)
    start = int(torch.randint(embedding.shape[0], (1,), generator=generator))
    selected = greedy_k_center(features, size, start, stats=stats)
    return selected, time.perf_counter() - began, stats


def anomalib_features(embedding: torch.Tensor, seed: int) -> tuple[torch.Tensor, int, float]:
    """KCenterGreedy's projected features and start row after seeding as `anomalib_timed` does; projection time."""
    torch.manual_seed(seed)
    np.random.seed(seed)  # sklearn's sample_without_replacement draws from numpy's global state
    began = time.perf_counter()
    projection = SparseRandomProjection(eps=0.9).fit(embedding)
    features = projection.transform(embedding)
    elapsed = time.perf_counter() - began
    start = int(torch.randint(high=embedding.shape[0], size=(1,)).squeeze())
    return features, start, elapsed


def anomalib_timed(embedding: torch.Tensor, iterations: int, seed: int) -> tuple[list[int], float]:
    """The first ``iterations + 1`` indices of KCenterGreedy and its wall time (projection included)."""
    sampler = KCenterGreedy(embedding=embedding, sampling_ratio=1.0)
    sampler.coreset_size = iterations + 1
    torch.manual_seed(seed)
    np.random.seed(seed)
    began = time.perf_counter()
    selected = sampler.select_coreset_idxs()
    return selected, time.perf_counter() - began


def coverage_radius(embedding: torch.Tensor, selected: torch.Tensor, exact_rows: int = 256) -> float:
    """max over rows of the distance to the nearest selected row (float32 search, float64 check of the top rows)."""
    x = embedding - embedding.mean(0)
    centres = x[selected]
    centres_sq = centres.square().sum(1)
    nearest = torch.empty(x.shape[0])
    rows = max(1, 2**22 // max(centres.shape[0], x.shape[1]))
    for begin in range(0, x.shape[0], rows):
        part = x[begin : begin + rows]
        products = torch.addmm(centres_sq, part, centres.T, alpha=-2)
        nearest[begin : begin + rows] = products.amin(1) + part.square().sum(1)
    top = torch.topk(nearest, min(exact_rows, x.shape[0])).indices
    exact = torch.cdist(embedding[top].double(), embedding[selected].double()).amin(1)
    return float(exact.max())


def datasets(rows: list[int], screw: Path | None) -> Iterator[tuple[str, torch.Tensor]]:
    for count in rows:
        yield "random N(0, 1)", random_embedding(count, SEED)
    if screw is None:
        return
    if not screw.is_dir():
        print(f"(no screw images at {screw}: real embeddings skipped)", flush=True)
        return
    began = time.perf_counter()
    embedding = screw_embedding(screw)
    print(f"(screw embeddings {tuple(embedding.shape)} in {time.perf_counter() - began:.0f} s)", flush=True)
    yield "MVTec screw, mobilenetv2 PatchCore", embedding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 350_000, 1_000_000])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.01, 0.02])
    parser.add_argument("--anomalib-iterations", type=int, default=200)
    parser.add_argument("--screw", type=Path, default=SCREW, help="the screw train/good folder")
    parser.add_argument("--no-screw", action="store_true", help="random embeddings only")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    k_center_greedy.tqdm = lambda iterable, **_: iterable  # KCenterGreedy's progress bar
    screw = None if args.no_screw else args.screw
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    header = (
        "| embedding | N x D | coreset | greedy_coreset | pool rebuilds / 1000 centres | row x centre products "
        "| KCenterGreedy (extrapolated) "
        "| speed-up | coverage radius, ours | coverage radius, KCenterGreedy |"
    )
    print(header + "\n" + "|---" * (header.count("|") - 1) + "|", flush=True)
    for name, embedding in datasets(args.rows, screw):
        n = embedding.shape[0]
        features, start, projection_seconds = anomalib_features(embedding, SEED)
        timed, timed_seconds = anomalib_timed(embedding, args.anomalib_iterations, SEED)
        per_centre = (timed_seconds - projection_seconds) / args.anomalib_iterations
        for ratio in args.ratios:
            size = int(n * ratio)
            selected, seconds, stats = ours(embedding, size)
            theirs = greedy_k_center(features, size, start)
            check = min(size, len(timed))
            if theirs[:check].tolist() != timed[:check]:
                print(f"(warning: KCenterGreedy's first {check} picks differ from greedy_k_center's on its features)")
            extrapolated = projection_seconds + per_centre * (size - 1)
            row = (
                f"| {name} | {n:,} x {embedding.shape[1]} | {size:,} ({ratio:.0%}) | {seconds:.1f} s "
                f"| {stats.full_updates * 1000 / size:.1f} | {stats.products / (n * size):.0%} of N x size "
                f"| {extrapolated:,.0f} s | {extrapolated / seconds:,.0f}x "
                f"| {coverage_radius(embedding, selected):.4f} | {coverage_radius(embedding, theirs):.4f} |"
            )
            print(row, flush=True)
    print(
        f"\nKCenterGreedy: projection time + (time of its first {args.anomalib_iterations} centres) "
        f"/ {args.anomalib_iterations} x (coreset size - 1). Its first {args.anomalib_iterations + 1} picks "
        "equal greedy_k_center's on its projected features and start row unless warned above.",
        flush=True,
    )


if __name__ == "__main__":
    main()
