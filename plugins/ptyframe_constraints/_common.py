"""Shared pieces of the first-party constraints: the retraction/projection base class,
settings, Fourier filters.

Fourier conventions: frequencies f are in cycles per pixel (``fftfreq``), so Nyquist is 0.5;
"fraction of Nyquist" r = 2 |f|. Arrays are filtered over their last two axes (Y, X), with the
FFT's periodic boundary conditions.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import attrs
import numpy as np

from ptyframe.components import Constraint
from ptyframe.core.schedules import Schedule, as_schedule

__all__ = [
    "BlockProjection", "when_field", "relative_change",
    "fourier_filter",
    "to_device_mask",
]


class BlockProjection(Constraint):
    """Base of constraints that map parameter blocks onto a constraint set and restrict the
    gradients to it.

    Subclasses name the blocks (:meth:`blocks`), the retraction onto the set
    (:meth:`retract`, used by :meth:`apply`) and the gradient projection (:meth:`project`,
    used by :meth:`project_gradient`), and define a ``reset_tolerance`` field: :meth:`apply`
    returns True (reset the optimizer history) when it changed any block by a relative L2
    norm ||new - old|| / ||old|| above it.
    """

    reset_tolerance: float

    @abc.abstractmethod
    def blocks(self) -> Iterable[str]:
        """Names of the constrained parameter blocks."""

    @abc.abstractmethod
    def retract(self, block: str, value: Any, params: Mapping[str, Any], device: Any) -> Any:
        """``value`` (block ``block``) mapped onto the constraint set, same dtype."""

    @abc.abstractmethod
    def project(self, block: str, grad: Any, params: Mapping[str, Any], device: Any) -> Any:
        """Gradient ``grad`` of block ``block`` restricted to the allowed directions."""

    def apply(self, params: MutableMapping[str, Any], epoch: int) -> bool:
        device = self.device
        changed = False
        for block in self.blocks():
            old = params[block]
            new = self.retract(block, old, params, device)
            changed |= relative_change(old, new, device.xp) > self.reset_tolerance
            params[block] = new
        return changed

    def project_gradient(self, grads: dict[str, Any], params: Mapping[str, Any],
                         epoch: int) -> dict[str, Any]:
        device = self.device
        present = [block for block in self.blocks() if block in grads]
        if not present:
            return grads
        out = dict(grads)
        for block in present:
            out[block] = self.project(block, grads[block], params, device)
        return out


def when_field(default: Any = True) -> Any:
    """The ``when`` setting: a Schedule of bool (plain values become a Constant)."""
    return attrs.field(default=default, converter=as_schedule, validator=_schedule_validator)


def _schedule_validator(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, Schedule):
        raise ValueError(f"{attribute.name}: expected a bool or a schedule, found {value!r}")


def relative_change(old: Any, new: Any, xp: Any) -> float:
    """||new - old|| / ||old|| (L2 over the whole array, accumulated in double precision)."""
    diff = float(xp.sum(xp.abs(new - old) ** 2, dtype=xp.float64))
    ref = float(xp.sum(xp.abs(old) ** 2, dtype=xp.float64))
    return math.sqrt(diff / ref) if ref > 0 else math.sqrt(diff)


def to_device_mask(mask: np.ndarray, like: Any, device: Any) -> Any:
    """A real host mask on ``device`` in the real precision of the array ``like``."""
    real_dtype = like.real.dtype
    return device.xp.asarray(mask, dtype=real_dtype)


def fourier_filter(array: Any, transfer: Any, device: Any, real: bool = False) -> Any:
    """IFFT[transfer * FFT[array]] over the last two axes; ``real``: keep the real part."""
    out = device.ifft2(device.fft2(array) * transfer)
    return out.real if real else out
