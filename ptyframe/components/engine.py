"""Engine: how the epochs of an iterative reconstruction move the parameters.

A :class:`Reconstruction` runs a template of steps per epoch — the engine's :meth:`Engine.epoch`
(evaluate, step), the projections (constraints, object growth; the engine hears of them
through :meth:`Engine.after_projection`), the report and the checkpoint. The engine sees the
reconstruction only through the :class:`Problem` interface, and keeps everything it needs
between epochs in an explicit state object that :meth:`Engine.export_state` turns into host
arrays plus JSON values, so that a checkpoint holds it and a resumed run continues bit for bit.

The full-batch quasi-Newton engine (``full_batch``) is one plugin; a mini-batch or a
distributed engine sits beside it without touching the core.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np

from .base import Component

__all__ = ["Engine", "Problem", "EpochOutcome"]


class Problem(abc.ABC):
    """What an engine may use of a reconstruction.

    ``params``: the live parameter blocks (device arrays; the engine replaces entries);
    ``device``; ``optimizer``: the configured optimizer component; ``n_measurements``.
    """

    params: dict[str, Any]
    device: Any
    optimizer: Any
    n_measurements: int

    @abc.abstractmethod
    def active_blocks(self, epoch: int) -> tuple[str, ...]:
        """Blocks refined at ``epoch`` (in block-table order)."""

    @abc.abstractmethod
    def indices(self, epoch: int) -> np.ndarray | None:
        """Measurements used at ``epoch`` (None: all)."""

    @abc.abstractmethod
    def evaluate(self, params: Mapping[str, Any], blocks: tuple[str, ...], epoch: int,
                 indices: np.ndarray | None = None
                 ) -> tuple[float, dict[str, Any], dict[str, float]]:
        """(total loss, gradients of ``blocks``, loss terms) at ``params`` over ``indices``
        (None: the epoch's sequence). Regularizers are included; gradient projections of the
        active constraints are applied."""

    @abc.abstractmethod
    def loss_weight(self, epoch: int) -> float:
        """Factor on the data term at ``epoch``."""

    @abc.abstractmethod
    def reset_history(self, epoch: int) -> bool:
        """Whether the configuration asks to forget curvature history at ``epoch``."""

    def preconditioner(self, params: Mapping[str, Any], blocks: tuple[str, ...],
                       epoch: int) -> dict[str, Any]:
        """Diagonal preconditioners ``{block: M}`` for the optimizer's step at ``epoch`` (see
        :meth:`Optimizer.step`); default none."""
        return {}


@attrs.define
class EpochOutcome:
    """What one epoch did: ``loss`` (total, at the end point), ``terms`` (data_loss and
    each regularizer), ``step_size`` (0 when no step was taken), ``evaluations`` (objective
    calls), ``accepted``, ``blocks`` refined, ``n_measurements`` used, ``info`` (engine
    details, e.g. the line-search outcome)."""

    loss: float
    terms: dict[str, float]
    step_size: float
    evaluations: int
    accepted: bool
    blocks: tuple[str, ...]
    n_measurements: int
    info: dict[str, Any] = attrs.field(factory=dict)


class Engine(Component):
    """An iterative reconstruction strategy (one :meth:`epoch` at a time)."""

    kind = "engine"

    @abc.abstractmethod
    def init_state(self, problem: Problem) -> Any:
        """Fresh state for a run on ``problem``."""

    @abc.abstractmethod
    def epoch(self, problem: Problem, epoch: int, state: Any) -> EpochOutcome:
        """Run epoch ``epoch`` (0-based): move ``problem.params``; update ``state``."""

    def after_projection(self, problem: Problem, epoch: int, state: Any,
                         outcome: EpochOutcome) -> EpochOutcome:
        """The parameters were changed by hand after :meth:`epoch` (a constraint, a grown
        object); return the outcome to report. Default: nothing to update."""
        return outcome

    def export_state(self, problem: Problem, state: Any
                     ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """State -> (host arrays, JSON-able values) for a checkpoint. Default: stateless."""
        return {}, {}

    def import_state(self, problem: Problem, arrays: Mapping[str, np.ndarray],
                     info: Mapping[str, Any]) -> Any:
        """Inverse of :meth:`export_state`. Default: a fresh state."""
        return self.init_state(problem)
