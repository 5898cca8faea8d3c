"""Held-out patterns: a validation loss that tells fitting the specimen from fitting noise.

A seeded fraction of the measurements is never used for a gradient. After every epoch the data
loss of those patterns at the current parameters is the *validation loss*: it falls while the
reconstruction learns what all patterns share (specimen, probe, geometry) and rises once it
fits the noise of the training patterns. The result kept is the latest epoch whose validation
loss is not significantly worse than the lowest one (:class:`BestEpochRule`): once the
reconstruction has converged the loss wanders within its own noise, and among equally good
epochs the later one has the better-converged object.

Held-out patterns still need positions: when the positions are refined, each held-out
position follows the mean correction of its nearest training neighbours (on the starting
scan), so that a drift or rotation found by the training positions carries over.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np
from scipy.spatial import cKDTree
from scipy.stats import t as student_t

__all__ = ["MIN_HELD_OUT", "MAX_GROUPS", "BestEpochRule", "held_out_indices", "held_out_groups",
           "significantly_worse", "neighbour_table", "follow_neighbours"]

#: fewer held-out patterns than this give too noisy a validation loss: none are held out
MIN_HELD_OUT = 4

#: the held-out patterns are evaluated in at most this many groups; the spread of the group
#: losses gives the standard error of the validation loss (more groups: more evaluations)
MAX_GROUPS = 64


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


def held_out_groups(held_out: np.ndarray, max_groups: int = MAX_GROUPS) -> list[np.ndarray]:
    """``held_out`` split into at most ``max_groups`` consecutive groups of nearly equal size
    (one pattern per group when there are few)."""
    if held_out.size == 0:
        return []
    return [g for g in np.array_split(held_out, min(int(max_groups), held_out.size)) if g.size]


def significantly_worse(losses: np.ndarray, reference: np.ndarray, confidence: float) -> bool:
    """True when the per-group losses ``losses`` are larger than ``reference`` (the same
    groups at another epoch) with ``confidence``: one-sided paired Student t test of the
    mean difference. ``confidence`` 0: any larger mean counts as worse."""
    losses, reference = np.asarray(losses, dtype=float), np.asarray(reference, dtype=float)
    if losses.shape != reference.shape or losses.ndim != 1 or losses.size < 2:
        raise ValueError(f"losses: expected two 1-D arrays of the same length >= 2, found "
                         f"shapes {losses.shape} and {reference.shape}")
    diff = losses - reference
    mean = float(diff.mean())
    if confidence <= 0 or mean <= 0:
        return mean > 0
    spread = float(diff.std(ddof=1))
    if spread == 0.0:
        return True
    return mean / (spread / np.sqrt(diff.size)) > float(student_t.ppf(confidence, diff.size - 1))


@attrs.define
class BestEpochRule:
    """Which epoch's parameters to keep, from the held-out losses per group after each epoch.

    The *reference* is the epoch with the lowest validation loss; an epoch is kept when it is
    the reference or not :func:`significantly_worse` than it with ``confidence`` (0: only the
    lowest). Epochs before ``settled`` (see :meth:`consider`) never replace a kept epoch.
    The reference is exported with each checkpoint so that a resumed run decides the same.
    """

    confidence: float = 0.95
    reference_epoch: int | None = None
    reference_value: float = float("inf")
    reference_losses: np.ndarray = attrs.field(factory=lambda: np.zeros(0))

    def consider(self, epoch: int, losses: np.ndarray, value: float, settled: bool) -> bool:
        """True when ``epoch`` (per-group losses ``losses``, validation loss ``value``)
        becomes the kept epoch."""
        losses = np.asarray(losses, dtype=float)
        if not np.isfinite(value):
            return False
        if self.reference_epoch is None or (settled and value < self.reference_value):
            self.reference_epoch, self.reference_value = int(epoch), float(value)
            self.reference_losses = losses.copy()
            return True
        if self.reference_losses.shape != losses.shape:  # reference from an older version
            return False
        return settled and not significantly_worse(losses, self.reference_losses,
                                                   self.confidence)

    def to_info(self) -> dict[str, Any]:
        """JSON-ready state (None before the first epoch)."""
        return {"reference_epoch": self.reference_epoch,
                "reference_value": self.reference_value,
                "reference_losses": [float(v) for v in self.reference_losses]}

    def restore(self, info: dict[str, Any]) -> None:
        """State written by :meth:`to_info`."""
        epoch = info.get("reference_epoch")
        self.reference_epoch = None if epoch is None else int(epoch)
        self.reference_value = float(info.get("reference_value", float("inf")))
        self.reference_losses = np.asarray(info.get("reference_losses", []), dtype=float)
