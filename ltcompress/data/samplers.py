"""Which training images an epoch visits: instance-balanced (each image once), class-balanced (each class
equally often) or square-root sampling (classes in proportion to sqrt(n_c)).

An epoch is one global stream of N indices, reproducible from (seed, epoch). Under DistributedDataParallel each
rank takes a disjoint share of that same stream (every world-size-th position), so the union over ranks is the
single-process stream, for the balanced samplers too (no stock PyTorch sampler does this).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ltcompress.registry import Registry

# class weight given the class counts; None: plain permutation (each image once per epoch)
SAMPLERS: Registry[Callable[[np.ndarray], np.ndarray] | None] = Registry("sampler")
SAMPLERS.register("instance", None, summary="each training image once per epoch (the data's own imbalance)")
SAMPLERS.register(
    "class_balanced",
    lambda counts: (counts > 0).astype(np.float64),
    summary="every class equally often (images drawn with replacement)",
)
SAMPLERS.register(
    "sqrt",
    lambda counts: np.sqrt(counts.astype(np.float64)),
    summary="classes in proportion to the square root of their size",
)


def class_distribution(kind: str, class_counts: np.ndarray) -> np.ndarray:
    """The expected share of each class in a sampler's stream."""
    weigh = SAMPLERS.get(kind)
    counts = np.asarray(class_counts, dtype=np.float64)
    weights = counts if weigh is None else weigh(counts)
    share: np.ndarray = weights / weights.sum()
    return share


def epoch_stream(kind: str, labels: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The epoch's global index stream (length N)."""
    rng = np.random.default_rng([seed, epoch])
    n = len(labels)
    if SAMPLERS.get(kind) is None:
        return rng.permutation(n)
    counts = np.bincount(labels)
    per_image = class_distribution(kind, counts)[labels] / counts[labels]
    return rng.choice(n, size=n, replace=True, p=per_image / per_image.sum())


def rank_share(stream: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Rank `rank`'s disjoint share of a global stream: positions rank, rank + world, ... (trimmed so every rank
    gets as many)."""
    usable = len(stream) - len(stream) % world
    return stream[:usable][rank::world]
