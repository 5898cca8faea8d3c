"""Held-out patterns: a validation loss that tells fitting the specimen from fitting noise.

A seeded fraction of the measurements is never used for a gradient. After every epoch the data
loss of those patterns at the current parameters is the *validation loss*: it falls while the
reconstruction learns what all patterns share (specimen, probe, geometry) and rises once it
fits the noise of the training patterns. The epoch with the lowest validation loss is the one
kept as the result.

Held-out patterns still need positions: when the positions are refined, each held-out
position follows the mean correction of its nearest training neighbours (on the starting
scan), so that a drift or rotation found by the training positions carries over.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["MIN_HELD_OUT", "held_out_indices", "neighbour_table", "follow_neighbours"]

#: fewer held-out patterns than this give too noisy a validation loss: none are held out
MIN_HELD_OUT = 4


def held_out_indices(n_measurements: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of ``round(fraction * n)`` measurements chosen at random with ``seed``
    (empty when that is fewer than :data:`MIN_HELD_OUT`)."""
    if not 0 <= fraction < 0.5:
        raise ValueError(f"validation_fraction: expected a number in [0, 0.5), found "
                         f"{fraction!r}")
    count = int(round(fraction * n_measurements))
    if count < MIN_HELD_OUT:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([int(seed), 0x5EED])
    return np.sort(rng.choice(n_measurements, size=count, replace=False)).astype(np.int64)


def neighbour_table(positions: np.ndarray, held_out: np.ndarray, k: int = 4) -> np.ndarray:
    """(n_held_out, k) indices of the ``k`` training positions nearest to each held-out one
    (``positions`` (N, 2), any unit)."""
    training = np.setdiff1d(np.arange(positions.shape[0]), held_out)
    k = int(min(k, training.size))
    if held_out.size == 0 or k == 0:
        return np.zeros((held_out.size, 0), dtype=np.int64)
    _, near = cKDTree(positions[training]).query(positions[held_out], k=k)
    return training[np.asarray(near, dtype=np.int64).reshape(held_out.size, k)]


def follow_neighbours(current: Any, start: Any, held_out: np.ndarray,
                      neighbours: np.ndarray, xp: Any) -> Any:
    """``current`` (N, 2) with each held-out row set to its starting value plus the mean
    correction (current - start) of its neighbours."""
    if held_out.size == 0 or neighbours.shape[1] == 0:
        return current
    correction = (current - start)[xp.asarray(neighbours)].mean(axis=1)
    out = current.copy()
    rows = xp.asarray(held_out)
    out[rows] = start[rows] + correction.astype(current.dtype, copy=False)
    return out
