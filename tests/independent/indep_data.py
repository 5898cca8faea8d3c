"""Loading and scoring helpers for the tests against the abTEM data in tests/data/indep_*.npz
(written by tests/data/make_independent_data.py; conventions in each file's ``metadata``).

The simulation cell of every file is periodic and exactly one 32 x 32 probe window, so an
object of any size is the cell tiled: object pixel p holds cell pixel (p - offset) mod 32.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ptyframe.core.experiment import ReconstructionGrid
from ptyframe.testing.validation import fourier_shift

DATA = Path(__file__).resolve().parent.parent / "data"


def load(name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and metadata of ``tests/data/indep_<name>.npz``."""
    with np.load(DATA / f"indep_{name}.npz") as z:
        arrays = {k: z[k] for k in z.files if k != "metadata"}
        metadata = json.loads(str(z["metadata"]))
    return arrays, metadata


def tiled_object(cell: np.ndarray, positions_A: np.ndarray, pixel_A: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Object (S, 1, Y, X) tiled from the periodic ``cell`` (S, n, n) and the model's window
    corners (N, 2) in pixels (probe centre = corner + n // 2, ptyframe's convention) for probe
    centres ``positions_A`` (N, 2) Å in the cell frame."""
    n = cell.shape[-1]
    centre_px = np.asarray(positions_A, dtype=float) / pixel_A
    offset = n - np.floor(centre_px.min(axis=0)) + n // 2  # keeps every corner >= n // 2
    corners = centre_px + offset - n // 2
    size = int(np.ceil(corners.max())) + n + 1
    iy = (np.arange(size) - int(offset[0])) % n
    ix = (np.arange(size) - int(offset[1])) % n
    return cell[:, iy][:, :, ix][:, None].astype(complex), corners


def truth_on_grid(cell_image: np.ndarray, grid: ReconstructionGrid) -> np.ndarray:
    """A periodic real cell image (n, n) (cell pixel (iy, ix) at (iy, ix) * pixel, Å) sampled
    on the object pixels of ``grid``, by an exact Fourier shift of the band-limited cell."""
    n = cell_image.shape[-1]
    start = np.asarray(grid.origin_A, dtype=float) / grid.pixel_size_A
    whole = np.floor(start)
    # shifted(r) = cell(r + frac): object pixel 0 sits at cell coordinate start
    shifted = fourier_shift(cell_image, -(start - whole))
    iy = (np.arange(grid.object_shape[0]) + int(whole[0])) % n
    ix = (np.arange(grid.object_shape[1]) + int(whole[1])) % n
    return shifted[iy][:, ix]


def band_mask(n: int, fraction: float = 0.6) -> np.ndarray:
    """Centred (n, n) disk |k| <= fraction x Nyquist: inside abTEM's 2/3-Nyquist anti-aliasing
    aperture, where both codes model the scattering."""
    f = np.fft.fftshift(np.fft.fftfreq(n)) / 0.5
    return np.hypot(f[:, None], f[None, :]) <= fraction


def relative_residual(model: np.ndarray, reference: np.ndarray,
                      mask: np.ndarray | None = None) -> float:
    """sqrt(sum (model - reference)^2 / sum reference^2) over ``mask`` (broadcast)."""
    w = np.ones(reference.shape[-2:]) if mask is None else mask
    return float(np.sqrt(np.sum((model - reference) ** 2 * w) / np.sum(reference**2 * w)))


def pearson_near(recon: np.ndarray, truth: np.ndarray, mask: np.ndarray,
                 max_shift_px: float = 1.5, step_px: float = 0.125) -> tuple[float, np.ndarray]:
    """Best phase Pearson correlation over sub-pixel shifts of ``recon`` within
    ``max_shift_px`` of the placement the position convention predicts (zero shift), inside
    ``mask``; returns (correlation, shift (y, x) px). A misplaced reconstruction (wrong
    position convention, wrong sign) cannot borrow a lattice-equivalent peak further away."""
    best, best_shift = -2.0, np.zeros(2)
    b = truth[mask] - truth[mask].mean()
    offsets = np.arange(-max_shift_px, max_shift_px + 1e-9, step_px)
    for sy in offsets:
        for sx in offsets:
            a = fourier_shift(recon, (sy, sx))[mask]
            a = a - a.mean()
            c = float(np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)))
            if c > best:
                best, best_shift = c, np.array([sy, sx])
    return best, best_shift


def far_field_patterns(arrays: dict[str, np.ndarray], metadata: dict[str, Any],
                       propagator: Any, transmission: np.ndarray | None = None,
                       tilts: np.ndarray | None = None, detector: Any = None) -> np.ndarray:
    """ptyframe's modelled patterns (N, n, n), centred like the data, for the true probe,
    positions and transmission (or ``transmission`` (S, n, n) instead); ``tilts`` (N, 6)
    with tilt_mode 0 (inside the specimen only)."""
    from ptyframe.core.device import Device
    from ptyframe.engine.model import PtychographyModel

    n, px = metadata["window_px"], metadata["pixel_size_A"]
    cell = arrays["transmission"] if transmission is None else transmission
    obj, corners = tiled_object(cell, arrays["positions_A"], px)
    model = PtychographyModel.from_geometry(propagator, None, Device("cpu", "double"), (n, n), px,
                              metadata["wavelength_A"], obj.shape[0], None,
                              n_measurements=len(corners), detector=detector)
    params = {"object": obj, "probe": arrays["probe"].astype(complex), "positions": corners}
    if tilts is not None:
        params["tilts"] = tilts
    model.check_blocks(params)
    return np.fft.fftshift(model.intensities(params), axes=(-2, -1))
