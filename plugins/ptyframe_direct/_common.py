"""Helpers shared by the direct methods (DPC, iterative DPC, WDD/SSB, tcBF).

Conventions (the project's; see the README):

* Patterns are ``[ky, kx]`` with zero frequency at pixel (N/2, N/2); a detector pixel index
  ``i`` has the spatial frequency ``k = (i - N/2) * dk`` (1/Å).
* Scan points are row-major (y slow, x fast); scan point (iy, ix) lies at ``(iy, ix) * step``
  (Å) in the **scan frame**. The scan frame is rotated against the detector/specimen frame by
  ``theta`` (the experiment's ``scan_rotation_deg``): specimen position ``p = R(theta) s`` with
  ``x' = cos x - sin y``, ``y' = sin x + cos y`` (as the ``scan_grid`` position initializer).
  A vector measured on the detector (a COM shift, a spatial frequency) therefore has the
  scan-frame components ``R(theta)^T v``. ``transpose`` means the raw detector's (ky, kx)
  axes are swapped; the swap is undone before the rotation.
* Direct-method images live on the scan frame: array pixel (iy, ix) sits at
  ``values["origin_A"] + (iy, ix) * values["pixel_size_yx_A"]`` (Å, scan frame, relative to
  scan point (0, 0)).

Everything that touches the 4D data runs through a :class:`ptyframe.core.device.Device` (``xp``,
``fft2``/``ifft2``); host-side code here is limited to small (scan-sized) arrays.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ptyframe.core.experiment import Experiment
from ptyframe.core.physics import aberration_function, aperture, spatial_frequencies
from ptyframe.io.data import Dataset

__all__ = [
    "as_dataset",
    "scan_geometry",
    "iter_scan_rows",
    "rows_per_chunk",
    "center_of_mass",
    "to_scan_frame",
    "fit_rotation_by_curl",
    "curl_fraction",
    "fourier_integrate",
    "probe_spectrum",
    "skewness",
]


# ---------------------------------------------------------------------------- data access
def as_dataset(data: Any, experiment: Experiment) -> Dataset:
    """A :class:`Dataset` from a Dataset or an (N, ky, kx) / (sy, sx, ky, kx) array."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, np.ndarray):
        arr = np.asarray(data)
        scan = experiment.scan_shape if arr.ndim == 3 else None
        return Dataset.from_array(arr, scan_shape=scan)
    raise ValueError(f"dataset: expected a ptyframe.io.data.Dataset or a numpy array of patterns, "
                     f"found {type(data).__name__}")


def scan_geometry(dataset: Dataset, experiment: Experiment
                  ) -> tuple[tuple[int, int], tuple[float, float]]:
    """Scan shape (sy, sx) and step (y, x) in Å; raises ValueError naming what is missing."""
    scan = dataset.scan_shape or experiment.scan_shape
    if scan is None:
        raise ValueError("scan_shape: direct methods need a raster scan (sy, sx); give it in "
                         "the experiment or the dataset, found None")
    scan = (int(scan[0]), int(scan[1]))
    if scan[0] * scan[1] != len(dataset):
        raise ValueError(f"scan_shape: expected sy * sx = number of patterns {len(dataset)}, "
                         f"found {scan}")
    if dataset.scan_shape is not None and experiment.scan_shape is not None and \
            tuple(dataset.scan_shape) != tuple(experiment.scan_shape):
        raise ValueError(f"scan_shape: the dataset has {tuple(dataset.scan_shape)} but the "
                         f"experiment says {tuple(experiment.scan_shape)}")
    if min(scan) < 2:
        raise ValueError(f"scan_shape: expected at least 2 x 2 scan points, found {scan}")
    if experiment.scan_step_A is None:
        raise ValueError("scan_step_A: direct methods need the scan step in Å, found None")
    return scan, experiment.scan_step_yx_A


def rows_per_chunk(scan_shape: tuple[int, int], pattern_shape: tuple[int, int],
                   max_bytes: float, bytes_per_value: int = 4) -> int:
    """Whole scan rows whose patterns take at most ``max_bytes`` (at least one row)."""
    per_row = scan_shape[1] * pattern_shape[0] * pattern_shape[1] * bytes_per_value
    return max(1, min(scan_shape[0], int(max_bytes // max(per_row, 1))))


def iter_scan_rows(dataset: Dataset, scan_shape: tuple[int, int], max_bytes: float
                   ) -> Iterator[tuple[int, int, np.ndarray]]:
    """Stream the data as blocks of whole scan rows: yields ``(row_start, row_stop, patterns)``
    with ``patterns`` float32 (n_rows * sx, ky, kx) (preprocessing applied). One block takes
    at most ``max_bytes`` as float32 (but always at least one row)."""
    sy, sx = scan_shape
    step = rows_per_chunk(scan_shape, dataset.pattern_shape, max_bytes)
    for y0 in range(0, sy, step):
        y1 = min(sy, y0 + step)
        yield y0, y1, dataset.read(np.arange(y0 * sx, y1 * sx), dtype=np.float32)


# ---------------------------------------------------------------------------- detector
def center_of_mass(patterns: Any, ky: Any, kx: Any, xp: Any, weight: Any = None
                   ) -> tuple[Any, Any, Any]:
    """Centre of mass (1/Å) of patterns (n, ky, kx) on the device: ``<k> = sum k I / sum I``.

    ``weight`` (ky, kx) optionally masks detector pixels. Returns (com_y, com_x, total) each
    (n,); patterns without counts get a COM of 0.
    """
    p = patterns if weight is None else patterns * weight
    total = p.sum(axis=(-2, -1))
    safe = xp.where(total > 0, total, 1)
    cy = (p * ky).sum(axis=(-2, -1)) / safe
    cx = (p * kx).sum(axis=(-2, -1)) / safe
    cy = xp.where(total > 0, cy, 0)
    cx = xp.where(total > 0, cx, 0)
    return cy, cx, total


def to_scan_frame(vy: Any, vx: Any, rotation_deg: float, transpose: bool
                  ) -> tuple[Any, Any]:
    """Detector-frame vector components -> scan frame: undo the transpose, then apply
    ``R(theta)^T`` (see the module docstring)."""
    if transpose:
        vy, vx = vx, vy
    t = math.radians(rotation_deg)
    c, s = math.cos(t), math.sin(t)
    # R^T (vx, vy): x = c vx + s vy, y = -s vx + c vy
    return -s * vx + c * vy, c * vx + s * vy


def _derivatives(field: np.ndarray, step_yx: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Central differences (d/dy, d/dx) in 1/Å on the interior (sy-2, sx-2)."""
    dy = (field[2:, 1:-1] - field[:-2, 1:-1]) / (2 * step_yx[0])
    dx = (field[1:-1, 2:] - field[1:-1, :-2]) / (2 * step_yx[1])
    return dy, dx


def _curl_quadratic(cy: np.ndarray, cx: np.ndarray, step_yx: tuple[float, float]
                    ) -> tuple[np.ndarray, float]:
    """Mean squared curl of the rotated field as a quadratic form in (cos t, sin t).

    With (u, v) = R^T (cx, cy): curl = du_v/dx - du_u/dy = cos t * A - sin t * B,
    A = d cy/dx - d cx/dy, B = d cx/dx + d cy/dy (the divergence). Returns the 2x2 matrix
    M with mean(curl^2) = (c, s) M (c, s)^T, and the mean squared gradient magnitude.
    """
    cy_dy, cy_dx = _derivatives(cy, step_yx)
    cx_dy, cx_dx = _derivatives(cx, step_yx)
    a = cy_dx - cx_dy
    b = cx_dx + cy_dy
    m = np.array([[np.mean(a * a), -np.mean(a * b)], [-np.mean(a * b), np.mean(b * b)]])
    return m, float(np.mean(a * a) + np.mean(b * b))


def curl_fraction(cy: np.ndarray, cx: np.ndarray, step_yx: tuple[float, float],
                  rotation_deg: float, transpose: bool) -> float:
    """mean(curl^2) / mean(curl^2 + div^2) of the field rotated to the scan frame (0: a
    perfect gradient field; the value is rotation-invariant in the denominator)."""
    if transpose:
        cy, cx = cx, cy
    m, total = _curl_quadratic(cy, cx, step_yx)
    t = math.radians(rotation_deg)
    v = np.array([math.cos(t), math.sin(t)])
    return float(v @ m @ v / total) if total > 0 else 0.0


def fit_rotation_by_curl(cy: np.ndarray, cx: np.ndarray, step_yx: tuple[float, float],
                         transposes: Sequence[bool] = (False, True)
                         ) -> dict[str, Any]:
    """Scan-detector rotation (and transpose) minimising the curl of the COM field.

    ``cy, cx``: detector-frame COM (sy, sx) (any unit). The mean squared curl is a quadratic
    form in (cos t, sin t) (:func:`_curl_quadratic`), so its minimum over all angles is the
    eigenvector of the smallest eigenvalue: an exact search, defined modulo 180 degrees (a
    field and its negative are equally curl-free). For each transpose state the minimum is
    found; the state with the smaller curl fraction wins. Returns ``rotation_deg`` (in
    [-90, 90)), ``transpose``, ``curl_fraction`` and ``curl_fraction_by_transpose``.
    """
    best: dict[str, Any] | None = None
    by_state: dict[str, float] = {}
    for transpose in transposes:
        a, b = (cx, cy) if transpose else (cy, cx)
        m, total = _curl_quadratic(np.asarray(a, float), np.asarray(b, float), step_yx)
        w, v = np.linalg.eigh(m)
        c, s = v[:, 0]
        angle = math.degrees(math.atan2(s, c))
        angle = (angle + 90.0) % 180.0 - 90.0
        frac = float(w[0] / total) if total > 0 else 0.0
        by_state[str(bool(transpose))] = frac
        if best is None or frac < best["curl_fraction"]:
            best = {"rotation_deg": angle, "transpose": bool(transpose), "curl_fraction": frac}
    assert best is not None
    best["curl_fraction_by_transpose"] = by_state
    return best


def skewness(image: np.ndarray) -> float:
    """Sample skewness of an image (0 for a constant image)."""
    a = np.asarray(image, dtype=float).ravel()
    a = a - a.mean()
    var = float(np.mean(a * a))
    return float(np.mean(a**3) / var**1.5) if var > 0 else 0.0


# ---------------------------------------------------------------------------- integration
def fourier_integrate(grad_y: Any, grad_x: Any, step_yx: tuple[float, float], device: Any,
                      high_pass: float = 0.0, low_pass: float = 0.0,
                      pad_factor: float = 2.0) -> Any:
    """Phase phi (rad) whose gradient best matches (grad_y, grad_x) (rad/Å), on the device.

    ``phi = IFFT[(ky F(gy) + kx F(gx)) / (2 pi i (high_pass + k^2 + low_pass k^4))]`` (k in
    1/Å, FFT over the scan grid; ``high_pass`` in 1/Å^2, ``low_pass`` in Å^2); the k = 0 term
    (the unknown mean phase) is 0. This is the least-squares solution of grad(phi) = g with
    spectral derivatives ``F(d phi/dx) = 2 pi i kx F(phi)``, plus Tikhonov terms. The fields
    are zero-padded to ``ceil(pad_factor * shape)`` to weaken the periodic wrap-around; the
    result is cropped back to the input shape (device array, real).
    """
    xp = device.xp
    shape = tuple(int(s) for s in grad_y.shape)
    padded = tuple(max(s, int(math.ceil(pad_factor * s))) for s in shape)
    gy = xp.zeros(padded, dtype=device.complex_dtype)
    gx = xp.zeros(padded, dtype=device.complex_dtype)
    gy[:shape[0], :shape[1]] = grad_y
    gx[:shape[0], :shape[1]] = grad_x
    ky, kx = spatial_frequencies(padded, step_yx, nyquist_zero=True, xp=xp,
                                 dtype=device.real_dtype)
    k2 = ky * ky + kx * kx
    denom = 2j * np.pi * (high_pass + k2 + low_pass * k2 * k2)
    num = ky * device.fft2(gy) + kx * device.fft2(gx)
    spec = xp.where(denom != 0, num / xp.where(denom != 0, denom, 1), 0)
    phi = device.ifft2(spec).real
    return phi[:shape[0], :shape[1]]


# ---------------------------------------------------------------------------- probe model
def probe_spectrum(qy: Any, qx: Any, experiment: Experiment,
                   aberrations: Mapping[str, float] | None, xp: Any,
                   edge_width_px: float = 1.0) -> Any:
    """Probe in reciprocal space A(q) exp(-i chi(q)) at arbitrary frequencies (1/Å), on the
    namespace ``xp``; ``aberrations`` {Krivanek name: Å} (None: the experiment's), aperture
    edge ``edge_width_px`` detector pixels wide."""
    lam = experiment.wavelength_A
    ab = experiment.aberrations if aberrations is None else aberrations
    amp = aperture(xp.hypot(qy, qx), lam, experiment.convergence_angle_mrad, edge_width_px,
                   experiment.dk_inv_A, xp)
    return amp * xp.exp(-1j * aberration_function(qy, qx, lam, ab, xp))
