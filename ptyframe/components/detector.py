"""Detector: from exit waves to the intensities the loss compares with the measurements."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np

from ptyframe.core.fused import PixelLoss

from .base import ModelComponent
from .context import ModelContext

__all__ = ["Detector"]


class Detector(ModelComponent):
    """Propagation from the exit surface to the detector plane, and intensity formation.

    Shapes: ``waves`` (K, M, B, ny, nx) exit waves of K object modes, M probe modes and a
    batch of B measurements on the model window; the intensity is
    ``(1/K) sum_k sum_m |D(wave_k,m)|**2`` mapped onto the measured grid, (B, *measured_shape).
    ``indices`` are the measurement numbers of the batch (host int array), for detectors whose
    propagation differs per measurement (near-field defocus series).

    :meth:`vjp` maps dL/dI (real, measured grid) to dL/d conj(waves) (shape of ``waves``).
    Measurements are handed over centred (zero frequency at N//2 for diffraction patterns);
    :meth:`to_detector_order` maps them (host arrays, trailing two axes) to the pixel order
    :meth:`forward` produces, once, before the run.

    Detectors with ``uses_workspace = True`` accept ``workspace=`` (a
    :class:`ptyframe.core.device.Workspace` owned by the caller) in :meth:`forward`.
    """

    kind = "detector"
    #: "diffraction" (far-field patterns) or "image" (real-space images, e.g. focal series)
    measurement_space: ClassVar[str] = "diffraction"
    #: forward accepts ``workspace=`` (work buffers lent by the caller)
    uses_workspace: ClassVar[bool] = False

    def model_window(self, measured_shape: tuple[int, int]) -> tuple[int, int]:
        """Model wave window (ny, nx) for measurements of ``measured_shape``."""
        return (int(measured_shape[0]), int(measured_shape[1]))

    @abc.abstractmethod
    def object_pixel_size_A(self, experiment: Any, measured_shape: tuple[int, int]) -> float:
        """Object (and probe) pixel size in Å implied by the calibration of ``experiment``."""

    def pattern_on_model_grid(self, centred: np.ndarray) -> np.ndarray:
        """A centred measured pattern (my, mx) resampled onto the model window (centred, same
        total counts), e.g. the mean pattern for probe initializers; default: unchanged."""
        return centred

    def to_detector_order(self, centred: np.ndarray) -> np.ndarray:
        """Measured arrays (..., my, mx), centred, in the order :meth:`forward` produces."""
        return centred

    def from_detector_order(self, arrays: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`to_detector_order`."""
        return arrays

    @abc.abstractmethod
    def prepare(self, context: ModelContext) -> None:
        """Bind ``context.device`` and precompute kernels on it for ``context.window``.
        Implementations call ``super().prepare(context)`` first."""
        super().prepare(context)

    @abc.abstractmethod
    def forward(self, waves: Any, indices: np.ndarray, keep: bool = True) -> tuple[Any, Any]:
        """Intensities (B, *measured_shape) and a cache for :meth:`vjp`."""

    @abc.abstractmethod
    def vjp(self, grad_intensity: Any, cache: Any) -> Any:
        """dL/d conj(waves) from dL/dI."""

    @property
    def fuses_pixel_loss(self) -> bool:
        """True when :meth:`loss_and_vjp` is a fused pass worth taking instead of
        :meth:`forward`, the loss and :meth:`vjp` (default False: the model then keeps them
        apart)."""
        return False

    def loss_and_vjp(self, waves: Any, indices: np.ndarray, measured: Any, loss: PixelLoss,
                     workspace: Any) -> tuple[float, Any]:
        """Forward, a pixel-wise loss and the adjoint: (L, dL/d conj(waves)) for intensities
        compared with ``measured`` (prepared rows, detector order) through ``loss``; ``waves``
        may be overwritten. This default composes :meth:`forward`, the device kernels'
        ``pixel_loss`` (in the intensity's memory, as an overwriting loss does) and
        :meth:`vjp`; detectors with a fused kernel override it and set
        :attr:`fuses_pixel_loss`."""
        intensity, cache = self.forward(waves, indices, keep=True)
        value, grad_intensity = self.device.kernels.pixel_loss(intensity, measured, loss)
        return value, self.vjp(grad_intensity, cache)
