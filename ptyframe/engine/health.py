"""Is the run making progress? Non-finite values and streaks of rejected steps.

One role: watch each objective evaluation (which component produced a NaN or an infinity, for
which block, at which epoch) and each epoch's outcome, and stop a run that cannot make
progress with :class:`RunStalled` naming the cause, instead of reporting success.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs

__all__ = ["NonFiniteValue", "RunStalled", "HealthWatch"]


class RunStalled(RuntimeError):
    """The run cannot make progress; the message names the cause (component, block, epoch).
    The last checkpoint written before it is left untouched."""

    def __init__(self, message: str, epoch: int) -> None:
        super().__init__(message)
        self.epoch = epoch


@attrs.frozen
class NonFiniteValue:
    """The first non-finite value seen: who produced it (``source``, e.g. ``loss 'lsq_sqrt'
    (plugin 'losses' (distribution ptyframe 0.1.0))``), what (``value`` or ``gradient of
    block 'object'``), at which epoch (0-based) and objective evaluation (1-based)."""

    source: str
    what: str
    epoch: int
    evaluation: int
    at_current: bool = False

    def describe(self) -> str:
        return (f"{self.source} produced a non-finite {self.what} at epoch {self.epoch + 1} "
                f"(objective evaluation {self.evaluation})")


def _finite_array(xp: Any, array: Any) -> bool:
    """Whether every element is finite (``xp``: numpy or cupy, the array's module)."""
    return bool(xp.isfinite(array).all())


class HealthWatch:
    """Watches one reconstruction. ``max_rejected``: epochs in a row without an accepted step
    after which the run stops."""

    def __init__(self, max_rejected: int) -> None:
        self.max_rejected = int(max_rejected)
        self.evaluations = 0
        self.rejected_in_a_row = 0
        self.first_fault: NonFiniteValue | None = None

    # -- per evaluation ------------------------------------------------------------------
    def count_evaluation(self) -> None:
        self.evaluations += 1

    def check(self, xp: Any, source: Callable[[], str], epoch: int, value: Any,
              grads: Mapping[str, Any] | None = None, at_current: bool = False) -> None:
        """Record the first non-finite ``value`` or gradient produced by the component that
        ``source()`` describes (called only then). ``at_current``: the evaluation is at the
        current parameters (not a line-search trial, which may overshoot): no step can start
        from there, so the epoch ends the run."""
        if self.first_fault is not None and (self.first_fault.at_current or not at_current):
            return  # keep the first fault, unless a trial's is followed by a fatal one
        what = None
        try:
            if not math.isfinite(float(value)):
                what = f"value ({float(value)!r})"
        except (TypeError, ValueError):
            what = f"value ({value!r})"
        for block, grad in (grads or {}).items():
            if what is None and not _finite_array(xp, grad):
                what = f"gradient of block {block!r}"
        if what is not None:
            self.first_fault = NonFiniteValue(source(), what, epoch, self.evaluations,
                                              at_current)

    # -- per epoch ------------------------------------------------------------------------
    def after_epoch(self, xp: Any, epoch: int, loss: float, accepted: bool, converged: bool,
                    params: Mapping[str, Any]) -> None:
        """Raise :class:`RunStalled` when the objective at the current parameters was not
        finite, the epoch left non-finite parameters or loss, or it ended the
        ``max_rejected``-th rejected step in a row."""
        fault = self.first_fault
        if fault is not None and fault.at_current and fault.epoch == epoch:
            raise RunStalled(self._message(epoch, "no step can start from the current "
                                           "parameters"), epoch)
        for block, array in params.items():
            if not _finite_array(xp, array):
                raise RunStalled(self._message(
                    epoch, f"block {block!r} holds non-finite values after the step"), epoch)
        if not math.isfinite(loss):
            raise RunStalled(self._message(epoch, f"the loss is {loss!r}"), epoch)
        if accepted or converged:
            self.rejected_in_a_row = 0
            return
        self.rejected_in_a_row += 1
        if self.rejected_in_a_row >= self.max_rejected:
            raise RunStalled(self._message(
                epoch, f"{self.rejected_in_a_row} epochs in a row ended with every step "
                "rejected"), epoch)

    def failed(self, epoch: int, exc: BaseException) -> RunStalled | None:
        """A :class:`RunStalled` explaining ``exc`` raised by the engine when a non-finite
        value was seen during this epoch; None otherwise (``exc`` is then not ours to explain).
        """
        if self.first_fault is None or self.first_fault.epoch != epoch:
            return None
        return RunStalled(self._message(epoch, f"{type(exc).__name__}: {exc}"), epoch)

    def _message(self, epoch: int, what: str) -> str:
        cause = (f"; cause: {self.first_fault.describe()}" if self.first_fault is not None
                 else "; no NaN or infinity was seen: check the step size, the weights of "
                 "the loss terms and the loss's settings (e.g. a zero epsilon)")
        return (f"the run stopped at epoch {epoch + 1} without progress: {what}{cause}. "
                "The last checkpoint in the output folder is the last good state.")
