"""Samplers that make an epoch a fixed number of steps and shard evaluation across processes."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class CycleSampler(Sampler[int]):
    """Yields ``num_samples`` indices of ``range(n)`` from successive random permutations.

    An epoch is therefore exactly ``num_samples / batch_size`` batches whatever the domain size:
    a small domain cycles (reshuffled at every pass), a large one is sub-sampled. Under DDP each of
    the ``world_size`` processes takes its own interleaved slice of the same permutation stream,
    so the processes see disjoint samples. ``set_epoch`` (called by Lightning) reseeds the stream.
    ``pool`` (settable between epochs, e.g. the pseudo-labelled target samples a method selected)
    restricts the draw to those indices; None draws from all ``n``.
    """

    def __init__(self, n: int, num_samples: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1):
        if n <= 0:
            raise ValueError("CycleSampler needs a non-empty dataset")
        self.n, self.num_samples, self.shuffle, self.seed = n, num_samples, shuffle, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        self.pool: torch.Tensor | None = None

    def set_pool(self, indices) -> None:
        """Draw only from ``indices`` (None: from all); takes effect at the next epoch's iteration."""
        if indices is None:
            self.pool = None
            return
        pool = torch.as_tensor(indices, dtype=torch.long).reshape(-1).cpu()
        if len(pool) == 0:
            raise ValueError("CycleSampler.set_pool got no indices")
        if int(pool.min()) < 0 or int(pool.max()) >= self.n:
            raise ValueError(f"CycleSampler.set_pool: indices must lie in [0, {self.n})")
        self.pool = pool

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        total = self.num_samples * self.world_size
        g = torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch)
        n = self.n if self.pool is None else len(self.pool)
        passes = -(-total // n)
        order = torch.cat([torch.randperm(n, generator=g) if self.shuffle else torch.arange(n) for _ in range(passes)])
        if self.pool is not None:
            order = self.pool[order]
        return iter(order[self.rank:total:self.world_size].tolist())


class ShardSampler(Sampler[int]):
    """Evaluation sampler: process ``rank`` takes indices ``rank, rank + world_size, ...`` (no padding,
    so gathered metrics count every sample exactly once)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.indices = range(rank, n, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)
