"""Propagator: carries an incident wave through the object slices to the exit surface."""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from .base import ModelComponent

__all__ = ["Propagator", "PropagationGeometry"]


class PropagationGeometry:
    """What a propagator needs to know about the grid, fixed for one reconstruction: the
    subset of :class:`~ptyframe.components.ModelContext` a propagator may depend on.

    Attributes: ``shape`` (ny, nx) window in pixels, ``pixel_size_A``, ``wavelength_A``,
    ``n_slices``, ``device``.
    """

    def __init__(self, shape: tuple[int, int], pixel_size_A: float, wavelength_A: float,
                 n_slices: int, device: Any) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.pixel_size_A = float(pixel_size_A)
        self.wavelength_A = float(wavelength_A)
        self.n_slices = int(n_slices)
        self.device = device


class Propagator(ModelComponent):
    """Multiple-scattering model from an incident wave and per-slice transmission windows.

    Shapes (leading batch axes are free and broadcast):
    ``wave``: (..., ny, nx) incident wave at the entrance surface;
    ``transmission``: (n_slices, ..., ny, nx) object transmission windows.

    ``forward`` returns the exit wave (the broadcast shape of wave and one transmission slice)
    and a cache; ``vjp`` maps dL/d conj(exit) to dL/d conj(wave) and dL/d conj(transmission),
    each with the shape of the corresponding input (summed over axes that were broadcast).

    Propagators with ``supports_tilts = True`` also accept ``tilts=`` (B, 2) real radians
    [t_y, t_x], one beam tilt *inside* the specimen per measurement along the batch axis
    (axis -3 of ``wave``): each propagation step uses the kernel
    exp(-i pi dz (lambda q^2 + 2 (q_y t_y + q_x t_x))). When ``forward`` was given tilts,
    ``vjp`` returns a third item, dL/dt with the real-block convention (1/2 dL/dt), (B, 2).
    Propagators with ``uses_workspace = True`` accept ``workspace=`` (a
    :class:`ptyframe.core.device.Workspace` owned by the caller) in :meth:`forward` and take
    their work buffers from it.
    """

    kind = "propagator"
    #: forward accepts ``tilts=`` (see above)
    supports_tilts: ClassVar[bool] = False
    #: forward accepts ``workspace=`` (work buffers lent by the caller)
    uses_workspace: ClassVar[bool] = False
    #: with one slice, forward is the plain product exit = wave T_0 (no propagation): the model
    #: may then fuse the window gather with the product and the adjoint with the scatter-add
    #: (``Device.kernels.fuses_windows``) and not call forward / vjp (subclasses that change
    #: the one-slice model set it False)
    single_slice_product: ClassVar[bool] = False

    @abc.abstractmethod
    def prepare(self, geometry: PropagationGeometry) -> None:
        """Bind ``geometry.device`` and precompute kernels on it; called once before use.
        Implementations call ``super().prepare(geometry)`` first."""
        super().prepare(geometry)

    @abc.abstractmethod
    def forward(self, wave: Any, transmission: Any, keep: bool = True) -> tuple[Any, Any]:
        """Exit wave and a cache for :meth:`vjp` (``keep=False``: no cache needed)."""

    @abc.abstractmethod
    def vjp(self, grad_exit: Any, cache: Any) -> tuple[Any, Any]:
        """(dL/d conj(wave), dL/d conj(transmission)) from dL/d conj(exit)."""
