"""Exact greedy k-center (farthest-point) coreset selection for PatchCore, fast on a few CPU cores.

anomalib's ``KCenterGreedy`` makes one pass over all N rows per selected centre. This makes the same
selection (given the same features and start row) with a few passes per thousand centres:

- A candidate pool holds the M rows farthest from their nearest centre. Centres are picked greedily
  from the pool, updating only the pool's distances (M x d per pick). Distances only shrink, so a
  pick is the naive loop's pick as long as the pool's best still beats the largest distance outside
  the pool at the last rebuild (ties go to the lower index, as with ``torch.max``).
- When that bound fails, the pool is rebuilt with ``topk``. Rows get the centres they have not seen
  yet through row-chunked matrix products (``|c|^2 - 2 x.c`` on centred features), lazily: a stored
  distance is an upper bound, so only rows whose bound reaches the top M + 1 need to be brought up to
  date, and well-covered rows are mostly never touched again.

Every stored distance is a direct float32 ``sum((x - c)^2)`` on the given features; the products only
find which rows and centres need one, with a margin that covers their rounding error. So selections
agree with the naive loop except at float near-ties (it compares float32 norms, this squared sums).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DEFAULT_POOL_SIZE = 4096
_CHUNK_ELEMENTS = 2**22  # float32 elements per row-chunk buffer (16 MiB)
_UNIT_ROUNDOFF = 2.0**-24
_BLOCK = 64  # centres per block when looking for a row's nearest centres among the products


@dataclass
class GreedyStats:
    """Work done by one `greedy_k_center` call (for measurements)."""

    full_updates: int = 0  # pool rebuilds after the first
    refreshed_rows: int = 0  # rows brought up to date (summed over rebuilds)
    products: int = 0  # row x centre products (the eager cost is about N x size)
    exact_pairs: int = 0  # direct distance computations after the products


@torch.no_grad()
def project(embedding: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """Seeded Gaussian random projection (Johnson-Lindenstrauss) of ``embedding`` [N, D] to ``dim`` columns.

    When ``D <= dim`` the embedding is returned unprojected: projecting up only costs time.
    """
    return _project(embedding, dim, torch.Generator().manual_seed(seed))


@torch.no_grad()
def greedy_coreset(embedding: torch.Tensor, size: int, *, seed: int = 0, projection_dim: int = 128) -> torch.Tensor:
    """Indices (int64, in selection order) of `size` rows of `embedding` [N, D] chosen by greedy k-center.

    The greedy runs on `project(embedding, projection_dim, seed)`, from a start row drawn with the same
    seeded generator after the projection matrix.
    """
    if embedding.ndim != 2:
        raise ValueError(f"embedding must be 2-D [N, D], got shape {tuple(embedding.shape)}")
    _check_size(size, embedding.shape[0])
    generator = torch.Generator().manual_seed(seed)
    features = _project(embedding, projection_dim, generator)
    start = int(torch.randint(embedding.shape[0], (1,), generator=generator))
    return greedy_k_center(features, size, start)


@torch.no_grad()
def greedy_k_center(
    features: torch.Tensor,
    size: int,
    start: int,
    *,
    pool_size: int = DEFAULT_POOL_SIZE,
    stats: GreedyStats | None = None,
) -> torch.Tensor:
    """The naive greedy k-center selection on ``features`` [N, d], from row ``start``; int64 indices in order.

    Same as: ``selected = [start]; m = dist(x, start)``; repeat ``m[selected] = 0; i = argmax(m)``
    (first index on ties), ``m = min(m, dist(x, i))``. ``pool_size`` trades per-pick cost against the
    number of full passes; ``stats``, when given, is filled in.
    """
    if features.ndim != 2:
        raise ValueError(f"features must be 2-D [N, d], got shape {tuple(features.shape)}")
    n = features.shape[0]
    _check_size(size, n)
    if not 0 <= start < n:
        raise ValueError(f"start must be a row index in [0, {n}), got {start}")
    if pool_size < 1:
        raise ValueError(f"pool_size must be positive, got {pool_size}")
    return _KCenter(features.to(torch.float32).contiguous(), size, start, pool_size, stats or GreedyStats()).run()


def _check_size(size: int, n: int) -> None:
    if not 1 <= size <= n:
        raise ValueError(f"coreset size must be between 1 and the number of rows ({n}), got {size}")


def _project(embedding: torch.Tensor, dim: int, generator: torch.Generator) -> torch.Tensor:
    if embedding.ndim != 2:
        raise ValueError(f"embedding must be 2-D [N, D], got shape {tuple(embedding.shape)}")
    if dim < 1:
        raise ValueError(f"projection dim must be positive, got {dim}")
    n_features = embedding.shape[1]
    if n_features <= dim:
        return embedding
    matrix = torch.randn(n_features, dim, generator=generator) / math.sqrt(dim)
    return embedding.to(torch.float32) @ matrix.to(embedding.device)


class _KCenter:
    """One selection: per row an upper bound of its squared distance to the nearest centre, and the pool.

    ``bound[i]`` is the exact squared distance from row i to its nearest centre among
    ``selected[:applied[i]]``: rows are brought up to date only when their bound could reach the pool.
    """

    def __init__(self, x: torch.Tensor, size: int, start: int, pool_size: int, stats: GreedyStats) -> None:
        n, d = x.shape
        self.x, self.size, self.stats = x, size, stats
        self.pool_size = min(pool_size, n)
        self.device = x.device
        # Centred rows (smaller norms: less cancellation in |x|^2 - 2 x.c + |c|^2) with a column of ones,
        # so that one product with [-2 c, |c|^2] gives |c|^2 - 2 x.c.
        self.xa = torch.ones(n, d + 1, device=self.device)
        torch.sub(x, x.mean(0), out=self.xa[:, :d])
        self.sq = self.xa[:, :d].square().sum(1)
        if not bool(torch.isfinite(self.sq).all()):
            raise ValueError("features contain NaN or infinite values (or values too large to square)")
        # Bound on |computed - exact| squared distance, relative to |x|^2 + |c|^2 (both sides' rounding).
        self.tolerance = (4 * d + 16) * _UNIT_ROUNDOFF
        self.selected = torch.empty(size, dtype=torch.int64, device=self.device)
        self.columns = torch.empty(d + 1, size, device=self.device)  # per centre: -2 c (centred) over |c|^2
        self.centres = torch.empty(size, d, device=self.device)  # per centre: its row as given
        self.count = 0
        self._add_centre(start)
        self.bound = torch.empty(n, dtype=torch.float32, device=self.device)
        rows = max(1, _CHUNK_ELEMENTS // d)
        for begin in range(0, n, rows):
            self.bound[begin : begin + rows] = (x[begin : begin + rows] - x[start]).square().sum(1)
        self.applied = torch.ones(n, dtype=torch.int32, device=self.device)
        self._rebuild_pool()

    def run(self) -> torch.Tensor:
        while self.count < self.size:
            best = int(torch.argmax(self.pool_sq))
            value, index = float(self.pool_sq[best]), int(self.pool_idx[best])
            if not (value > self.tau or (value == self.tau and index < self.tau_index)):
                self._full_update()
                continue
            self._add_centre(index)
            if self.count < self.size:
                torch.sub(self.pool_x, self.pool_x[best], out=self.buffer)
                torch.minimum(self.pool_sq, self.buffer.square_().sum(1), out=self.pool_sq)
        return self.selected

    def _add_centre(self, index: int) -> None:
        d = self.x.shape[1]
        self.selected[self.count] = index
        self.centres[self.count] = self.x[index]
        self.columns[:d, self.count] = self.xa[index, :d] * -2
        self.columns[d, self.count] = self.sq[index]
        self.count += 1

    def _full_update(self) -> None:
        """Write the pool back, then rebuild it from up-to-date rows."""
        self.stats.full_updates += 1
        self.bound[self.pool_idx] = self.pool_sq
        self.applied[self.pool_idx] = self.count  # the pool saw every centre
        self._rebuild_pool()

    def _rebuild_pool(self) -> None:
        """Pool = the top ``pool_size`` rows by (distance desc, index asc); remember the best row outside.

        Rows are refreshed from the largest bounds down, four times as many each round, until every row
        whose bound reaches the (pool_size + 1)-th largest bound is up to date; no other row can then
        be in the pool or beat it, as bounds only overestimate.
        """
        n = self.bound.shape[0]
        if self.pool_size == n:
            self._refresh(torch.nonzero(self.applied < self.count).squeeze(1))
            self.pool_idx = torch.arange(n, device=self.device)
            self.tau, self.tau_index = -math.inf, n
        else:
            wanted = self.pool_size + 1
            while True:
                top = torch.topk(self.bound, min(wanted, n))
                threshold = top.values[self.pool_size]
                stale = torch.nonzero((self.bound >= threshold) & (self.applied < self.count)).squeeze(1)
                if stale.numel() == 0:
                    break
                self._refresh(torch.unique(torch.cat([stale, top.indices[self.applied[top.indices] < self.count]])))
                wanted *= 4
            values = top.values[: self.pool_size + 1]
            lowest_in, self.tau = float(values[-2]), float(values[-1])
            above = torch.nonzero(self.bound > lowest_in).squeeze(1)
            level = torch.nonzero(self.bound == lowest_in).squeeze(1)
            needed = self.pool_size - above.numel()
            self.pool_idx = torch.cat([above, level[:needed]]).sort().values
            if self.tau == lowest_in:
                self.tau_index = int(level[needed])
            else:
                self.tau_index = int(torch.nonzero(self.bound == self.tau)[0, 0])
        self.pool_x = self.x[self.pool_idx]
        self.pool_sq = self.bound[self.pool_idx]
        self.buffer = torch.empty_like(self.pool_x)

    def _refresh(self, rows: torch.Tensor) -> None:
        """Apply to ``rows`` (sorted) every centre they have not seen."""
        self.stats.refreshed_rows += rows.numel()
        applied = self.applied[rows]
        d = self.x.shape[1]
        for first in torch.unique(applied).tolist():
            group = rows[applied == first]
            count = self.count - first
            # Padding centres (0 over +inf) give +inf products, so the product columns split into whole blocks.
            columns = torch.zeros(d + 1, -(-count // _BLOCK) * _BLOCK, device=self.device)
            columns[:, :count] = self.columns[:, first : self.count]
            columns[d, count:] = math.inf
            max_sq = float(columns[d, :count].max())
            chunk = max(1, _CHUNK_ELEMENTS // columns.shape[1])
            products = torch.empty(min(chunk, group.numel()), columns.shape[1], device=self.device)
            for begin in range(0, group.numel(), chunk):
                part = group[begin : begin + chunk]
                self._lower(part, columns, self.centres[first : self.count], max_sq, products[: part.numel()])
        self.applied[rows] = self.count

    def _lower(
        self, rows: torch.Tensor, columns: torch.Tensor, centres: torch.Tensor, max_sq: float, products: torch.Tensor
    ) -> None:
        """Lower ``bound[rows]`` to the exact squared distance to the nearest of ``centres``."""
        self.stats.products += rows.numel() * centres.shape[0]
        sq = self.sq[rows]
        approx = torch.mm(self.xa[rows], columns, out=products).view(rows.numel(), -1, _BLOCK)  # + |x|^2 per row
        block_lowest = approx.amin(2)
        lowest = block_lowest.amin(1)
        margin = self.tolerance * (sq + max_sq)
        current = self.bound[rows]
        maybe = torch.nonzero(lowest + sq - margin < current).squeeze(1)
        if maybe.numel() == 0:
            return
        # Exact distances to every centre that could be the nearest within the rounding margin: first the
        # blocks of centres holding one, then the centres in them.
        threshold = lowest[maybe] + 2 * margin[maybe]
        row_pos, block = torch.nonzero(block_lowest[maybe] <= threshold.unsqueeze(1)).unbind(1)
        hits = torch.nonzero(approx[maybe[row_pos], block] <= threshold[row_pos].unsqueeze(1))
        row_pos, centre_pos = row_pos[hits[:, 0]], block[hits[:, 0]] * _BLOCK + hits[:, 1]
        self.stats.exact_pairs += row_pos.numel()
        exact = (self.x[rows[maybe[row_pos]]] - centres[centre_pos]).square().sum(1)
        best = torch.full((maybe.numel(),), math.inf, device=self.device).scatter_reduce_(0, row_pos, exact, "amin")
        self.bound[rows[maybe]] = torch.minimum(best, current[maybe])
