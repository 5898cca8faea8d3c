"""A second engine written the way a third party would: mini-batch gradient descent.

Each epoch visits the measurements in a shuffled order, in mini-batches of ``batch``; per
mini-batch it takes one steepest-descent step with a backtracking (Armijo) line search on that
mini-batch, starting from twice the previous accepted step. Its state (the step size and the
shuffling generator) is exported with every checkpoint, so a resumed run continues exactly.

Registered through a (test-made) distribution's ``ptyframe`` entry point, exactly as an
installed plugin would be; nothing in ptyframe/ knows about it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np

from ptyframe import hookimpl
from ptyframe.components import Engine, EpochOutcome, Problem


def _dot(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    return float(sum(np.vdot(a[k], b[k]).real for k in a))


@attrs.define
class MiniBatchState:
    step: float
    rng: np.random.Generator


@attrs.define
class MiniBatchGradientDescent(Engine):
    """Steepest descent over shuffled mini-batches of ``batch`` measurements."""

    name = "minibatch_gd"

    batch: int = 25
    initial_step: float = 1e-3
    seed: int = 0

    def init_state(self, problem: Problem) -> MiniBatchState:
        return MiniBatchState(step=self.initial_step, rng=np.random.default_rng(self.seed))

    def epoch(self, problem: Problem, epoch: int, state: MiniBatchState) -> EpochOutcome:
        blocks = problem.active_blocks(epoch)
        order = state.rng.permutation(problem.n_measurements)
        evaluations, total = 0, 0.0
        for start in range(0, order.size, self.batch):
            subset = np.sort(order[start:start + self.batch])
            f0, g, _ = problem.evaluate(problem.params, blocks, epoch, subset)
            slope = -2.0 * _dot(g, g)
            step, evaluations = 2.0 * state.step, evaluations + 1
            while step > 1e-30:
                trial = dict(problem.params)
                trial.update({b: problem.params[b] - step * g[b] for b in blocks})
                f, _, _ = problem.evaluate(trial, blocks, epoch, subset)
                evaluations += 1
                if f <= f0 + 1e-4 * step * slope:
                    problem.params.update({b: trial[b] for b in blocks})
                    state.step = step
                    break
                step *= 0.5
        total, _, terms = problem.evaluate(problem.params, blocks, epoch, None)
        return EpochOutcome(loss=total, terms=terms, step_size=state.step,
                            evaluations=evaluations + 1, accepted=True, blocks=blocks,
                            n_measurements=problem.n_measurements)

    def export_state(self, problem: Problem, state: MiniBatchState
                     ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        return {}, {"step": state.step, "rng": state.rng.bit_generator.state}

    def import_state(self, problem: Problem, arrays: Mapping[str, np.ndarray],
                     info: Mapping[str, Any]) -> MiniBatchState:
        rng = np.random.default_rng()
        rng.bit_generator.state = dict(info["rng"])
        return MiniBatchState(step=float(info["step"]), rng=rng)


@hookimpl
def ptyframe_register_components():
    return [MiniBatchGradientDescent]
