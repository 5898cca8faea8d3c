"""Mini-batch engine: a few passes of preconditioned mini-batch gradient steps, then the
full-batch engine.

A full-batch L-BFGS epoch is one update of the parameters; early in a run, when the object
is far from the answer, many cheap updates on small batches move it further per unit of
work (as ePIE / LSQ-ML style codes do). This engine therefore runs the first
``switch_epoch`` epochs as passes over shuffled mini-batches of ``batch_size`` measurements
and every later epoch as a :class:`~ptyframe_engines.full_batch.FullBatch` epoch.

One mini-batch step (gradient-consistent: the gradient is :meth:`Problem.evaluate` on the
batch's indices, regularizers and constraint projections included)::

    object <- object - alpha * g_object / (I_batch + floor * max(I_batch))
    probe  <- probe  - alpha * g_probe  / (B * mean|object|^(2 n_slices))

``I_batch`` is the probe intensity (all modes) summed over the batch's windows (the diagonal
of the Gauss-Newton matrix of the object), ``B`` the batch size. The step ``alpha`` is
measured on the first batch of the first pass (and again, never larger, when the refined
blocks change): a trial step and a parabola through the batch loss at 0, the slope at 0 and
the loss at the trial (``step`` scales the result). Measured anew on every pass it grows
while the object converges and the sequential steps then diverge (seen on sto_thin: 1.3,
then 3.7), so it is kept.

The batch order of an epoch is a permutation drawn from ``(seed, epoch)``; the engine's
state is the step size, the blocks it was measured for and the full-batch engine's state,
all in a checkpoint, so a resumed run continues bit for bit. Epochs in which a block other
than the object and the probe is refined (positions, tilts, ...) are full-batch epochs
whatever ``switch_epoch`` says.

Regularizers: every mini-batch step evaluates them at full weight on top of its batch's data
term, so during the passes they weigh ceil(N / batch_size) times more than in a full-batch
epoch; with strong regularizers prefer ``switch_epoch = 0`` or the full-batch engine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np

from ptyframe.components import Engine, EpochOutcome, Problem
from ptyframe.core.validators import in_range, non_negative_int, positive, positive_int

from .full_batch import FullBatch, FullBatchState

__all__ = ["MiniBatch", "MiniBatchState", "MINI_BATCH_BLOCKS"]

#: blocks a mini-batch step can move; any other refined block makes the epoch full-batch
MINI_BATCH_BLOCKS = frozenset({"object", "probe"})


def _real_dot(a: Mapping[str, Any], b: Mapping[str, Any], xp: Any) -> float:
    """Re<a, b> summed over the blocks (the directional derivative convention of the
    optimizers)."""
    return float(sum(float(xp.vdot(a[k].ravel(), b[k].ravel()).real) for k in a))


@attrs.define
class MiniBatchState:
    """``alpha``: the mini-batch step (None: not measured yet); ``alpha_blocks``: the blocks
    it was measured for; ``full``: the full-batch engine's state."""

    full: FullBatchState
    alpha: float | None = None
    alpha_blocks: tuple[str, ...] = ()


@attrs.define
class MiniBatch(Engine):
    """Preconditioned mini-batch gradient passes for the first epochs, then full batch.

    * ``batch_size``: measurements per mini-batch step (the pass splits the epoch's
      measurements into ceil(N / batch_size) batches of near-equal size)
    * ``switch_epoch``: epochs run as mini-batch passes (0: the full-batch engine throughout)
    * ``step``: factor on the step measured on the first batch, > 0
    * ``floor``: floor of the object's illumination preconditioner, as a fraction of its
      maximum, in (0, 1] (1: one scalar step, as ePIE; small: close to Gauss-Newton)
    * ``seed``: seed of the batch order (each epoch draws from (seed, epoch))
    """

    name = "mini_batch"

    batch_size: int = attrs.field(default=32, validator=positive_int())
    switch_epoch: int = attrs.field(default=3, validator=non_negative_int())
    step: float = attrs.field(default=1.0, validator=positive())
    floor: float = attrs.field(default=0.1, validator=in_range(0.0, 1.0, low_open=True))
    seed: int = attrs.field(default=0, validator=non_negative_int())

    # ------------------------------------------------------------------ Engine
    def init_state(self, problem: Problem) -> MiniBatchState:
        return MiniBatchState(full=FullBatch().init_state(problem))

    def mini_batch_epoch(self, problem: Problem, epoch: int) -> bool:
        """Whether ``epoch`` runs as a mini-batch pass."""
        return epoch < self.switch_epoch and set(problem.active_blocks(epoch)) <= (
            MINI_BATCH_BLOCKS)

    def batches(self, problem: Problem, epoch: int) -> list[np.ndarray]:
        """The epoch's measurement indices in batch order (each batch sorted)."""
        indices = problem.indices(epoch)
        if indices is None:
            indices = np.arange(problem.n_measurements, dtype=np.int64)
        order = np.random.default_rng([self.seed, epoch]).permutation(np.asarray(indices))
        n_batches = max(1, math.ceil(order.size / self.batch_size))
        return [np.sort(part) for part in np.array_split(order, n_batches)]

    def epoch(self, problem: Problem, epoch: int, state: MiniBatchState) -> EpochOutcome:
        if not self.mini_batch_epoch(problem, epoch):
            return FullBatch().epoch(problem, epoch, state.full)
        outcome = self._pass(problem, epoch, state)
        # the parameters moved outside the optimizer: its history and the cached
        # value/gradient no longer belong to the current point
        full = state.full
        problem.optimizer.reset(full.optimizer)
        full.blocks, full.indices, full.grads, full.value = (), None, None, None
        return outcome

    def after_projection(self, problem: Problem, epoch: int, state: MiniBatchState,
                         outcome: EpochOutcome) -> EpochOutcome:
        if outcome.info.get("engine") == "mini_batch":
            return outcome  # the next full-batch epoch evaluates at the projected point
        return FullBatch().after_projection(problem, epoch, state.full, outcome)

    def export_state(self, problem: Problem, state: MiniBatchState
                     ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays, info = FullBatch().export_state(problem, state.full)
        return arrays, {"full_batch": info, "alpha": state.alpha,
                        "alpha_blocks": list(state.alpha_blocks)}

    def import_state(self, problem: Problem, arrays: Mapping[str, np.ndarray],
                     info: Mapping[str, Any]) -> MiniBatchState:
        alpha = info.get("alpha")
        return MiniBatchState(full=FullBatch().import_state(problem, arrays,
                                                            info.get("full_batch", {})),
                              alpha=None if alpha is None else float(alpha),
                              alpha_blocks=tuple(info.get("alpha_blocks", ())))

    # ------------------------------------------------------------------ one pass
    def _pass(self, problem: Problem, epoch: int, state: MiniBatchState) -> EpochOutcome:
        blocks = problem.active_blocks(epoch)
        batches = self.batches(problem, epoch)
        data_loss = 0.0
        evaluations = 0
        alpha = state.alpha if state.alpha_blocks == blocks else None
        value = math.nan
        terms: dict[str, float] = {}
        for batch in batches:
            value, grads, terms = problem.evaluate(problem.params, blocks, epoch, batch)
            evaluations += 1
            if not math.isfinite(value):
                raise ValueError(f"mini_batch: expected a finite loss on the mini-batch of "
                                 f"epoch {epoch}, found {value}")
            data_loss += terms.get("data_loss", value)
            direction = self._direction(problem, grads, batch)
            if alpha is None:
                alpha, used = self._measure_step(problem, blocks, epoch, batch, value, grads,
                                                 direction)
                evaluations += used
                if state.alpha is not None:
                    alpha = min(alpha, state.alpha)
                state.alpha, state.alpha_blocks = alpha, blocks
            for b in blocks:
                problem.params[b] = problem.params[b] + alpha * direction[b]
        regularizers = {k: v for k, v in terms.items() if k != "data_loss"}
        return EpochOutcome(
            loss=data_loss + sum(regularizers.values()),
            terms={"data_loss": data_loss, **regularizers}, step_size=float(alpha),
            evaluations=evaluations, accepted=True, blocks=blocks,
            n_measurements=int(sum(b.size for b in batches)),
            info={"engine": "mini_batch", "batches": len(batches),
                  "loss": "data loss summed over the pass's batches, each before its step"})

    def _direction(self, problem: Problem, grads: Mapping[str, Any],
                   batch: np.ndarray) -> dict[str, Any]:
        """-(preconditioned gradient) of each block."""
        params = problem.params
        out = {}
        if "object" in grads:
            illum = self._illumination(problem, batch)
            out["object"] = -grads["object"] / (illum + self.floor * float(illum.max()))
        if "probe" in grads:
            obj = params["object"]
            xp = problem.device.xp
            n_slices = int(obj.shape[0])
            mean_intensity = float(xp.mean(xp.abs(obj) ** 2))
            scale = batch.size * mean_intensity ** n_slices
            out["probe"] = -grads["probe"] / scale
        return out

    @staticmethod
    def _illumination(problem: Problem, batch: np.ndarray) -> Any:
        """Probe intensity (all modes, mean over probes) summed over the batch's windows,
        on the object's (Y, X) grid."""
        device = problem.device
        xp = device.xp
        obj, probe = problem.params["object"], problem.params["probe"]
        intensity = xp.abs(probe) ** 2
        intensity = intensity.reshape((-1,) + tuple(probe.shape[-2:]))
        n_probes = probe.shape[0] if probe.ndim == 4 else 1
        intensity = (intensity.sum(axis=0) / n_probes).astype(device.real_dtype)
        ny, nx = intensity.shape
        corners = np.rint(device.to_host(problem.params["positions"])[batch]).astype(np.int64)
        corners[:, 0] = np.clip(corners[:, 0], 0, obj.shape[-2] - ny)
        corners[:, 1] = np.clip(corners[:, 1], 0, obj.shape[-1] - nx)
        target = xp.zeros((1,) + tuple(obj.shape[-2:]), dtype=device.real_dtype)
        values = xp.ascontiguousarray(xp.broadcast_to(intensity, (1, batch.size, ny, nx)))
        device.scatter_add_windows(target, xp.asarray(corners), values)
        return target[0]

    def _measure_step(self, problem: Problem, blocks: tuple[str, ...], epoch: int,
                      batch: np.ndarray, value: float, grads: Mapping[str, Any],
                      direction: Mapping[str, Any]) -> tuple[float, int]:
        """(alpha, evaluations used): the minimum of the parabola through the batch loss at
        0 (value and slope) and at a trial step along ``direction``, times ``step``."""
        xp = problem.device.xp
        slope = _real_dot(grads, direction, xp)
        if not slope < 0.0:
            raise ValueError(f"mini_batch: expected a descent direction at epoch {epoch}, "
                             f"found the slope {slope}")
        trial, used = 1.0, 0
        for _ in range(30):
            moved = dict(problem.params)
            for b in blocks:
                moved[b] = problem.params[b] + trial * direction[b]
            f_trial = problem.evaluate(moved, blocks, epoch, batch)[0]
            used += 1
            curvature = (f_trial - value - slope * trial) / trial ** 2
            if math.isfinite(f_trial) and curvature > 0.0:
                best = -slope / (2.0 * curvature)
                # a parabola is a local model: trust it up to 4x the trial
                if best <= 4.0 * trial:
                    return self.step * best, used
                trial *= 4.0
            else:
                trial *= 0.25 if not math.isfinite(f_trial) or f_trial > value else 4.0
        raise ValueError(f"mini_batch: no step size found along the preconditioned gradient "
                         f"at epoch {epoch} (last trial {trial:g})")
