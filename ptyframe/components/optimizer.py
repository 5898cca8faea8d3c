"""Optimizer: one step of a descent method on a dictionary of parameter blocks."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .base import ModelComponent

__all__ = ["Optimizer", "Objective", "StepResult"]

#: objective(params) -> (value, {block: dL/d conj(block)}) for the blocks being refined.
Objective = Callable[[Mapping[str, Any]], tuple[float, dict[str, Any]]]


@attrs.define
class StepResult:
    """Outcome of one optimizer step.

    ``params``/``value``/``grads`` describe the point the optimizer ends on (the old point
    when the step was rejected); ``step_size`` is the accepted line-search step (0 when
    rejected); ``evaluations`` counts objective calls; ``accepted`` says whether the
    parameters moved.
    """

    params: dict[str, Any]
    value: float
    grads: dict[str, Any]
    step_size: float
    evaluations: int
    accepted: bool
    info: dict[str, Any] = attrs.field(factory=dict)


class Optimizer(ModelComponent):
    """Descent on blocks of complex or real arrays.

    Gradient convention: g = dL/d conj(p) (for real blocks 1/2 dL/dp), so that
    dL = 2 Re <g, dp> and -g is a descent direction. The optimizer keeps its state in an
    explicit object returned by :meth:`init_state`, never in the component.
    """

    kind = "optimizer"

    @abc.abstractmethod
    def init_state(self) -> Any:
        """Fresh state (empty history)."""

    @abc.abstractmethod
    def reset(self, state: Any) -> None:
        """Forget the curvature history (after a constraint or a change of active blocks)."""

    @abc.abstractmethod
    def step(self, params: Mapping[str, Any], value: float, grads: Mapping[str, Any],
             objective: Objective, state: Any) -> StepResult:
        """One iteration from ``params`` where the objective is ``value`` with ``grads``."""

