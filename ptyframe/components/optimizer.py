"""Optimizer: one step of a descent method on a dictionary of parameter blocks."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np

from .base import ModelComponent

if TYPE_CHECKING:
    from ptyframe.core.device import Device

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
    explicit object returned by :meth:`init_state`, never in the component; the state
    round-trips through :meth:`export_state` / :meth:`import_state` (host arrays + JSON-able
    values) so that a resumed run continues bit for bit.
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
             objective: Objective, state: Any,
             preconditioner: Mapping[str, Any] | None = None) -> StepResult:
        """One iteration from ``params`` where the objective is ``value`` with ``grads``.

        ``preconditioner``: optional ``{block: M}`` with M a positive real array that
        broadcasts against the block: an element-wise (diagonal) approximation of the inverse
        Hessian's shape within that block (its overall scale is the optimizer's business). A
        block without an entry is preconditioned by 1."""

    @abc.abstractmethod
    def export_state(self, state: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, info)``: host copies of the state's arrays (e.g. curvature history),
        keyed by flat names, and the JSON-able rest (step sizes, counters, layout)."""

    @abc.abstractmethod
    def import_state(self, arrays: Mapping[str, np.ndarray], info: Mapping[str, Any],
                     device: Device) -> Any:
        """The state :meth:`export_state` described, its arrays on ``device`` with their
        original dtype."""
