"""LossMetric: compares modelled and measured intensities."""

from __future__ import annotations

import abc
from typing import Any

from .base import Component

__all__ = ["LossMetric"]


class LossMetric(Component):
    """Data-fidelity term L(I, M) summed over pixels and patterns.

    ``value_and_grad(intensity, measured, xp)`` returns the loss of this batch (a float) and
    dL/dI (real, same shape as ``intensity``). ``intensity`` and ``measured`` are on the same
    device and in the same (FFT) pixel order; ``xp`` is the array namespace.
    """

    kind = "loss"

    def prepare(self, context: Any) -> None:  # noqa: B027 - optional hook
        """Precompute from the :class:`ModelContext` (e.g. detector masks in the pixel order of
        the modelled intensities, ``context.to_detector_order``); called once before use."""

    @abc.abstractmethod
    def value_and_grad(self, intensity: Any, measured: Any, xp: Any) -> tuple[float, Any]:
        ...

    def prepare_measured(self, measured: Any, xp: Any) -> Any:
        """Hook to precompute from the data once (e.g. sqrt(M)); default: unchanged."""
        return measured
