"""Greedy k-center coreset: the same selection as the naive loop and anomalib's KCenterGreedy, only faster."""

from __future__ import annotations

import pytest
import torch
from anomalib.models.components import KCenterGreedy

from visinspect_training.coreset import GreedyStats, greedy_coreset, greedy_k_center, project


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are small: a second OpenMP thread only adds waiting (seconds per test on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def naive_k_center(features: torch.Tensor, size: int, start: int) -> list[int]:
    """anomalib's KCenterGreedy.select_coreset_idxs loop, on given features and start."""
    selected = [start]
    min_distances = torch.linalg.norm(features - features[start], dim=1)
    for _ in range(size - 1):
        index = int(torch.max(min_distances, dim=0).indices)
        min_distances[index] = 0.0
        selected.append(index)
        min_distances = torch.minimum(min_distances, torch.linalg.norm(features - features[index], dim=1))
    return selected


def coverage_radius(features: torch.Tensor, selected: list[int] | torch.Tensor) -> float:
    return float(torch.cdist(features.double(), features[selected].double()).amin(1).max())


def exact(values: torch.Tensor) -> torch.Tensor:
    """Multiples of 1/8: float32 squared distances are then exact, so float near-ties cannot occur.

    On arbitrary floats, two distances within float32 rounding of each other (relative 1e-7) can compare
    differently as norms (the naive loop) and as squared sums (greedy_k_center); see `test_near_ties`.
    """
    return torch.round(values * 8) / 8


def gaussian(seed: int, n: int, d: int) -> torch.Tensor:
    return exact(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)))


def clustered(seed: int, n: int, d: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(12, d, generator=generator) * 10
    labels = torch.randint(12, (n,), generator=generator)
    spread = torch.rand(12, 1, generator=generator)[labels] * 2
    return exact(centres[labels] + spread * torch.randn(n, d, generator=generator))


def duplicated(seed: int, n: int, d: int) -> torch.Tensor:
    """A third of the rows are exact copies of other rows, in shuffled order."""
    base = gaussian(seed, n - n // 3, d)
    rows = torch.cat([base, base[: n // 3]])
    return rows[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]


def far_apart(seed: int, n: int, d: int) -> torch.Tensor:
    """Two clusters 8192 apart: |x|^2 - 2 x.c + |c|^2 in float32 is off by more than the distances within one."""
    generator = torch.Generator().manual_seed(seed)
    offset = torch.zeros(n, d)
    offset[:, 0] = 4096 * (2 * torch.randint(2, (n,), generator=generator) - 1)
    return offset + exact(2 * torch.randn(n, d, generator=generator))


def lattice(seed: int, n: int, d: int) -> torch.Tensor:
    """Small integers: squared distances are exact, so many exact ties (broken by the lower index)."""
    return torch.randint(4, (n, d), generator=torch.Generator().manual_seed(seed)).float()


CASES = [
    pytest.param(gaussian, 1000, 16, 200, id="gaussian"),
    pytest.param(gaussian, 600, 128, 100, id="gaussian-128d"),
    pytest.param(clustered, 1000, 8, 250, id="clustered"),
    pytest.param(far_apart, 800, 8, 200, id="far-apart"),
    pytest.param(duplicated, 500, 4, 500, id="duplicates-size-n"),
    pytest.param(lattice, 1000, 3, 150, id="lattice-ties"),
    pytest.param(lattice, 300, 2, 300, id="lattice-exhausted"),
    pytest.param(gaussian, 37, 5, 37, id="small-size-n"),
    pytest.param(gaussian, 50, 5, 1, id="size-1"),
    pytest.param(gaussian, 1, 5, 1, id="single-row"),
]


@pytest.mark.parametrize(("make", "n", "d", "size"), CASES)
def test_matches_naive_loop(make, n, d, size) -> None:
    features = make(0, n, d)
    for start in (0, n // 2, n - 1):
        expected = naive_k_center(features, size, start)
        for pool_size in (1, 16, 256, 4096):
            selected = greedy_k_center(features, size, start, pool_size=pool_size)
            assert selected.dtype == torch.int64
            assert selected.tolist() == expected, f"start {start}, pool size {pool_size}"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_small_pools_take_full_updates_and_stay_exact(seed) -> None:
    features = clustered(seed, 3000, 12)
    stats = GreedyStats()
    selected = greedy_k_center(features, 600, seed, pool_size=32, stats=stats)
    assert stats.full_updates > 10
    assert stats.products < 3000 * 600  # rows far below the pool were left stale
    assert selected.tolist() == naive_k_center(features, 600, seed)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_anomalib_kcenter_greedy(seed) -> None:
    features = gaussian(seed + 10, 3000, 16)
    # A 3-D embedding skips anomalib's random projection: it greedily selects on embedding.reshape(N, -1).
    sampler = KCenterGreedy(embedding=features.unsqueeze(2), sampling_ratio=0.1)
    torch.manual_seed(seed)
    start = int(torch.randint(high=3000, size=(1,)))
    torch.manual_seed(seed)
    expected = sampler.select_coreset_idxs()
    assert expected[0] == start
    assert greedy_k_center(features, 300, start, pool_size=64).tolist() == expected
    assert greedy_k_center(features, 300, start).tolist() == expected


def test_accepts_other_dtypes_and_layouts() -> None:
    features = clustered(4, 800, 6)
    expected = greedy_k_center(features, 120, 5, pool_size=16).tolist()
    assert greedy_k_center(features.double(), 120, 5, pool_size=16).tolist() == expected
    assert greedy_k_center(features.T.contiguous().T, 120, 5, pool_size=16).tolist() == expected
    assert greedy_k_center(features.bfloat16(), 120, 5).dtype == torch.int64
    assert greedy_k_center(features.requires_grad_(), 120, 5, pool_size=16).tolist() == expected


@pytest.mark.parametrize("make", [gaussian, clustered, duplicated])
def test_coverage_radius_equals_naive(make) -> None:
    features = make(5, 2500, 10)
    selected = greedy_k_center(features, 250, 17, pool_size=32)
    expected = naive_k_center(features, 250, 17)
    assert coverage_radius(features, selected) == coverage_radius(features, expected)


def test_project_is_seeded() -> None:
    embedding = gaussian(0, 400, 300)
    first = project(embedding, 64, seed=3)
    assert first.shape == (400, 64)
    assert first.dtype == torch.float32
    assert torch.equal(first, project(embedding, 64, seed=3))
    assert not torch.allclose(first, project(embedding, 64, seed=4))


def test_project_keeps_narrow_features() -> None:
    embedding = gaussian(0, 100, 64)
    assert project(embedding, 64, seed=0) is embedding
    assert project(embedding, 128, seed=0) is embedding


def test_project_preserves_distances() -> None:
    embedding = gaussian(1, 300, 2048)
    projected = project(embedding, 512, seed=0)
    ratio = torch.pdist(projected) / torch.pdist(embedding)
    assert abs(float(ratio.mean()) - 1) < 0.02
    assert float((ratio - 1).abs().max()) < 0.3


def test_greedy_coreset_runs_the_greedy_on_the_projection() -> None:
    embedding = clustered(2, 1500, 200)
    global_rng = torch.get_rng_state()
    selected = greedy_coreset(embedding, 100, seed=7, projection_dim=32)
    assert torch.equal(torch.get_rng_state(), global_rng)
    generator = torch.Generator().manual_seed(7)
    torch.randn(200, 32, generator=generator)  # the projection matrix comes first
    start = int(torch.randint(1500, (1,), generator=generator))
    assert selected.tolist() == naive_k_center(project(embedding, 32, seed=7), 100, start)
    assert torch.equal(selected, greedy_coreset(embedding, 100, seed=7, projection_dim=32))
    assert not torch.equal(selected, greedy_coreset(embedding, 100, seed=8, projection_dim=32))


def test_greedy_coreset_without_projection_uses_the_features() -> None:
    embedding = gaussian(3, 800, 16)
    start = int(torch.randint(800, (1,), generator=torch.Generator().manual_seed(0)))
    assert greedy_coreset(embedding, 80).tolist() == naive_k_center(embedding, 80, start)


@pytest.mark.parametrize(
    ("embedding", "size", "message"),
    [
        (torch.zeros(10, 4), 0, "between 1 and the number of rows"),
        (torch.zeros(10, 4), 11, "between 1 and the number of rows"),
        (torch.zeros(10, 4), -1, "between 1 and the number of rows"),
        (torch.zeros(10, 4, 2), 2, "2-D"),
        (torch.zeros(10), 2, "2-D"),
        (torch.zeros(0, 4), 1, "between 1 and the number of rows"),
    ],
)
def test_greedy_coreset_refuses_bad_arguments(embedding, size, message) -> None:
    with pytest.raises(ValueError, match=message):
        greedy_coreset(embedding, size)


def test_greedy_k_center_refuses_bad_arguments() -> None:
    features = torch.zeros(10, 4)
    with pytest.raises(ValueError, match="start"):
        greedy_k_center(features, 3, 10)
    with pytest.raises(ValueError, match="pool_size"):
        greedy_k_center(features, 3, 0, pool_size=0)
    with pytest.raises(ValueError, match="NaN"):
        greedy_k_center(torch.full((10, 4), float("nan")), 3, 0)
    with pytest.raises(ValueError, match="projection dim"):
        project(features, 0, seed=0)


def test_near_ties() -> None:
    """On arbitrary floats the selections can part only where two distances tie within float32 rounding."""
    features = torch.randn(1500, 128, generator=torch.Generator().manual_seed(0))
    selected = greedy_k_center(features, 200, 1499).tolist()
    expected = naive_k_center(features, 200, 1499)
    if selected != expected:
        step = next(i for i, (a, b) in enumerate(zip(selected, expected, strict=True)) if a != b)
        distances = torch.cdist(features.double(), features[expected[:step]].double()).amin(1)
        ours, theirs = float(distances[selected[step]]), float(distances[expected[step]])
        assert abs(ours - theirs) <= 1e-6 * theirs
