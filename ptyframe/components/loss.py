"""LossMetric: compares modelled and measured intensities."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from ptyframe.core.fused import PixelLoss

from .base import ModelComponent

__all__ = ["LossMetric"]


class LossMetric(ModelComponent):
    """Data-fidelity term L(I, M) summed over pixels and patterns.

    ``value_and_grad(intensity, measured)`` returns the loss of this batch (a float) and
    dL/dI (real, same shape as ``intensity``). ``intensity`` and ``measured`` are on
    :attr:`device` and in the same (FFT) pixel order.

    Losses with ``can_overwrite = True`` also accept ``overwrite=True`` in
    :meth:`value_and_grad`: the returned gradient may then reuse the memory of ``intensity``.
    """

    kind = "loss"
    #: value_and_grad accepts ``overwrite=True`` (the gradient may reuse ``intensity``)
    can_overwrite: ClassVar[bool] = False

    def prepare(self, context: Any) -> None:
        """Bind the device and precompute from the :class:`ModelContext` (e.g. detector masks in
        the pixel order of the modelled intensities, ``context.to_detector_order``); called
        once before use."""
        super().prepare(context)

    @abc.abstractmethod
    def value_and_grad(self, intensity: Any, measured: Any) -> tuple[float, Any]:
        ...

    def pixel_loss(self) -> PixelLoss | None:
        """This loss as a :class:`~ptyframe.core.fused.PixelLoss` (a pixel-wise form the
        Device's kernels evaluate in one pass with the far-field intensity and its adjoint),
        or None (default) when it has none. It must equal :meth:`value_and_grad` on the
        rows of :meth:`prepare_measured` within round-off."""
        return None

    def fusable_pixel_loss(self) -> PixelLoss | None:
        """:meth:`pixel_loss`, but None when a subclass overrides :meth:`value_and_grad` or
        :meth:`prepare_measured` below the class that declared the pixel form (the form
        would no longer describe the loss in use). The model asks this, not
        :meth:`pixel_loss`."""
        mro = type(self).__mro__
        owner = next(k for k in mro if "pixel_loss" in vars(k))
        for method in ("value_and_grad", "prepare_measured"):
            defining = next(k for k in mro if method in vars(k))
            if not issubclass(owner, defining):
                return None
        return self.pixel_loss()

    def prepare_measured(self, measured: Any) -> Any:
        """Hook to precompute from the data once (e.g. sqrt(M)); default: unchanged."""
        return measured
