"""What the model components (detector, loss, regularizers, constraints, optimizer) may know
about the reconstruction, handed to their ``prepare``."""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["ModelContext", "PARAMETER_BLOCKS"]

#: every parameter block a model may hold, with its layout (device arrays):
#: ``object`` (n_slices, n_object_modes, Y, X) complex transmission;
#: ``probe`` (n_probe_modes, ny, nx) complex, or (n_probes, n_probe_modes, ny, nx) with a
#: probe marker; real space, centred at pixel (ny//2, nx//2);
#: ``positions`` (N, 2) real: window top-left corners in pixels (y, x);
#: ``tilts`` (N or 1, 6) real radians [y_before, x_before, y_inside, x_inside, y_after, x_after];
#: ``beam_current`` (N,) real intensity factor per measurement;
#: ``static_background`` (my, mx) real s with background = s**2, on the measured grid (centred);
#: ``aberrations`` (n_sets, n_coefficients) real Å, Krivanek order (C10, C12a, C12b, ...).
PARAMETER_BLOCKS = ("object", "probe", "positions", "tilts", "beam_current",
                    "static_background", "aberrations")


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
