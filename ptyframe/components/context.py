"""What the model components (detector, loss, regularizers, constraints, optimizer) may know
about the reconstruction, handed to their ``prepare``."""

from __future__ import annotations

from typing import Any

import attrs

from ptyframe.core.blocks import BLOCK_NAMES

__all__ = ["ModelContext", "PARAMETER_BLOCKS"]

#: every parameter block a model may hold (names, in the order of the block table
#: :data:`ptyframe.core.blocks.PARAMETER_BLOCKS`, which documents their layouts)
PARAMETER_BLOCKS = BLOCK_NAMES


@attrs.define
class ModelContext:
    """Read-only facts about one reconstruction, handed to components' ``prepare``.

    ``device`` is the one way a component receives its :class:`~ptyframe.core.device.Device`
    (see :class:`~ptyframe.components.ModelComponent`).

    ``window``: (ny, nx) model wave window in pixels; ``measured_shape``: shape of one
    measurement as compared by the loss; ``pixel_size_A``: object pixel (Å);
    ``wavelength_A``; ``n_measurements``; ``scan_shape``: (rows, cols) or None;
    ``n_slices``; ``slice_thickness_A``: per gap, or None; ``experiment``, ``grid``;
    ``device``; ``to_detector_order``: maps centred host arrays (..., my, mx) to the pixel
    order of the modelled intensities (FFT order in the far field).
    """

    window: tuple[int, int]
    pixel_size_A: float
    wavelength_A: float
    n_measurements: int
    device: Any
    measured_shape: tuple[int, ...] = ()
    scan_shape: tuple[int, int] | None = None
    n_slices: int = 1
    slice_thickness_A: tuple[float, ...] | None = None
    experiment: Any = None
    grid: Any = None
    to_detector_order: Any = None
