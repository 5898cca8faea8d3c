"""Full-batch engine: one line-searched optimizer step per epoch on all measurements."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np

from ptyframe.components import Engine, EpochOutcome, Problem

__all__ = ["FullBatch", "FullBatchState"]


@attrs.define
class FullBatchState:
    """What the full-batch engine carries between epochs.

    ``optimizer``: the optimizer's own state; ``blocks``/``indices``: the active blocks and
    measurement subset the history belongs to (a change forgets it); ``value``, ``grads``,
    ``terms``: the objective at the current point (None: evaluate before the next step).
    """

    optimizer: Any
    blocks: tuple[str, ...] = ()
    indices: np.ndarray | None = None
    value: float | None = None
    grads: dict[str, Any] | None = None
    terms: dict[str, float] = attrs.field(factory=dict)


def _same_indices(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(np.array_equal(a, b))


@attrs.define
class FullBatch(Engine):
    """One step of the configured optimizer (L-BFGS with a Wolfe line search by default) per
    epoch over every measurement of the epoch's sequence. The optimizer's history is
    forgotten when the refined blocks, the measurement subset or the loss weight change, when
    ``reset_history`` says so, and after a constraint changed the parameters by hand."""

    name = "full_batch"

    def init_state(self, problem: Problem) -> FullBatchState:
        return FullBatchState(optimizer=problem.optimizer.init_state())

    def _evaluate(self, problem: Problem, epoch: int, state: FullBatchState) -> None:
        state.value, state.grads, state.terms = problem.evaluate(
            problem.params, state.blocks, epoch, state.indices)

    def epoch(self, problem: Problem, epoch: int, state: FullBatchState) -> EpochOutcome:
        blocks = problem.active_blocks(epoch)
        indices = problem.indices(epoch)
        weight_changed = epoch > 0 and problem.loss_weight(epoch) != problem.loss_weight(
            epoch - 1)
        if (blocks != state.blocks or not _same_indices(indices, state.indices)
                or problem.reset_history(epoch) or weight_changed):
            problem.optimizer.reset(state.optimizer)
            state.blocks, state.indices, state.grads = blocks, indices, None
        if state.grads is None:
            self._evaluate(problem, epoch, state)
        seen: list[tuple[dict[str, Any], dict[str, float]]] = []

        def objective(sub: Mapping[str, Any]) -> tuple[float, dict[str, Any]]:
            full = dict(problem.params)
            full.update(sub)
            value, grads, terms = problem.evaluate(full, blocks, epoch, indices)
            seen.append((grads, terms))
            return value, grads

        step = problem.optimizer.step({b: problem.params[b] for b in blocks}, state.value,
                                      state.grads, objective, state.optimizer,
                                      preconditioner=problem.preconditioner(
                                          problem.params, blocks, epoch))
        problem.params.update(step.params)
        state.value, state.grads = step.value, dict(step.grads)
        # the terms of the point the optimizer ended on: the evaluation whose gradient arrays
        # it returned (identity, not equality of floats)
        first = blocks[0]
        state.terms = next((terms for grads, terms in reversed(seen)
                            if grads.get(first) is step.grads[first]), state.terms)
        return EpochOutcome(
            loss=state.value, terms=dict(state.terms), step_size=step.step_size,
            evaluations=step.evaluations, accepted=step.accepted, blocks=blocks,
            n_measurements=problem.n_measurements if indices is None else int(indices.size),
            info=dict(step.info))

    def after_projection(self, problem: Problem, epoch: int, state: FullBatchState,
                         outcome: EpochOutcome) -> EpochOutcome:
        problem.optimizer.reset(state.optimizer)
        self._evaluate(problem, epoch, state)
        return attrs.evolve(outcome, loss=state.value, terms=dict(state.terms))

    def export_state(self, problem: Problem, state: FullBatchState
                     ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        arrays, info = problem.optimizer.export_state(state.optimizer)
        out = {f"optimizer.{k}": v for k, v in arrays.items()}
        if state.indices is not None:
            out["indices"] = np.asarray(state.indices)
        return out, {"optimizer": info, "blocks": list(state.blocks),
                     "has_indices": state.indices is not None}

    def import_state(self, problem: Problem, arrays: Mapping[str, np.ndarray],
                     info: Mapping[str, Any]) -> FullBatchState:
        prefix = "optimizer."
        opt_arrays = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        optimizer_state = problem.optimizer.import_state(opt_arrays, info.get("optimizer", {}),
                                                         problem.device)
        indices = np.asarray(arrays["indices"]) if info.get("has_indices") else None
        # the value and gradients at the restored point are evaluated again before the next
        # step: the evaluation is deterministic, so they are the ones the run had
        return FullBatchState(optimizer=optimizer_state, blocks=tuple(info.get("blocks", ())),
                              indices=indices)
