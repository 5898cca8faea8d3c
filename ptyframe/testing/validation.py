"""Metrics comparing a reconstruction with a known ground truth (simulated data).

Conventions
-----------
* Images are 2-D real arrays on a :class:`~ptyframe.core.experiment.ReconstructionGrid`: object
  pixel ``(iy, ix)`` lies at ``grid.origin_A + (iy, ix) * grid.pixel_size_A`` (Å, (y, x)).
* Shifts are in pixels, (y, x). ``align_images`` returns the displacement that was applied to
  the moving image: ``shifted(r) = moving(r - shift)``.
* Phases are in radians; a reconstructed phase is only defined up to a constant (the global
  phase) and, for ptychography, up to a global translation of object and positions together;
  :func:`phase_correlation` removes both.
* Positions are probe centres (y, x) in Å, shape (N, 2).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ptyframe.core.experiment import ReconstructionGrid
from ptyframe.core.physics import frequency_axis, shift_ramp

__all__ = [
    "align_images",
    "cross_correlation_shift",
    "fourier_shift",
    "phase_correlation",
    "position_error_A",
    "resample_to_grid",
    "scanned_region_mask",
]


def _as_image(name: str, image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D image, found shape {array.shape}")
    if np.iscomplexobj(array):
        raise ValueError(f"{name}: expected a real image (e.g. a phase in rad), found complex")
    array = array.astype(float)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return array


def _check_mask(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != shape:
        raise ValueError(f"mask: expected shape {shape}, found {mask.shape}")
    if mask.sum() < 2:
        raise ValueError("mask: selects fewer than 2 pixels")
    return mask


def fourier_shift(image: np.ndarray, shift_yx: tuple[float, float] | np.ndarray) -> np.ndarray:
    """``image`` translated by ``shift_yx`` pixels: ``out(r) = image(r - shift)``.

    Sub-pixel shifts use a Fourier phase ramp, so the image is treated as periodic: content
    pushed over one edge re-enters at the opposite edge (compare well inside the borders).
    """
    image = _as_image("image", image)
    sy, sx = (float(v) for v in np.asarray(shift_yx, dtype=float).reshape(2))
    return np.fft.ifft2(np.fft.fft2(image) * shift_ramp(image.shape, (sy, sx))).real


def _upsampled_correlation(product: np.ndarray, centre: np.ndarray, upsample: int,
                           half_width: float) -> np.ndarray:
    """Cross-correlation at shifts ``centre + k / upsample`` with |k / upsample| <= half_width.

    ``product`` = FFT(reference) * conj(FFT(moving)); evaluated by a matrix DFT (Guizar-Sicairos
    et al., Opt. Lett. 33, 156 (2008)), cost O(n * N) instead of an upsampled FFT.
    """
    ny, nx = product.shape
    n = int(np.ceil(half_width * upsample))
    offsets = np.arange(-n, n + 1) / upsample
    qy = frequency_axis(ny)
    qx = frequency_axis(nx)
    ky = np.exp(2j * np.pi * np.outer(centre[0] + offsets, qy))  # (K, ny)
    kx = np.exp(2j * np.pi * np.outer(qx, centre[1] + offsets))  # (nx, K)
    return (ky @ product @ kx).real


def cross_correlation_shift(moving: np.ndarray, reference: np.ndarray,
                            upsample: int = 100) -> np.ndarray:
    """Shift (y, x) in pixels that best moves ``moving`` onto ``reference``.

    FFT cross-correlation of the mean-removed images gives the integer peak; a parabola through
    the peak and its neighbours refines it, then an upsampled matrix DFT around that estimate
    (``upsample`` points per pixel) gives the final sub-pixel value. ``upsample=1`` stops at the
    parabolic estimate.
    """
    moving = _as_image("moving", moving)
    reference = _as_image("reference", reference)
    if moving.shape != reference.shape:
        raise ValueError(f"moving: expected the shape of reference {reference.shape}, found "
                         f"{moving.shape}")
    if not isinstance(upsample, (int, np.integer)) or upsample < 1:
        raise ValueError(f"upsample: expected an integer >= 1, found {upsample!r}")
    product = np.fft.fft2(reference - reference.mean()) * np.conj(
        np.fft.fft2(moving - moving.mean()))
    corr = np.fft.ifft2(product).real
    peak = np.array(np.unravel_index(np.argmax(corr), corr.shape))
    shape = np.array(corr.shape)
    shift = peak.astype(float)
    for axis in range(2):
        if shape[axis] < 3:
            continue
        step = np.zeros(2, dtype=int)
        step[axis] = 1
        c0 = corr[tuple(peak)]
        cm = corr[tuple((peak - step) % shape)]
        cp = corr[tuple((peak + step) % shape)]
        denom = cm - 2 * c0 + cp
        if denom < 0:
            shift[axis] += float(np.clip(0.5 * (cm - cp) / denom, -0.5, 0.5))
    shift = np.where(shift > shape / 2, shift - shape, shift)  # signed shifts
    if upsample > 1:
        local = _upsampled_correlation(product, shift, int(upsample), 0.75)
        k = np.array(np.unravel_index(np.argmax(local), local.shape))
        shift = shift + (k - (local.shape[0] - 1) / 2) / upsample
    return shift


def align_images(moving: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None,
                 upsample: int = 100, max_iterations: int = 6, tolerance_px: float = 2e-3
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Translate ``moving`` onto ``reference`` by a sub-pixel shift.

    The shift maximises the cross-correlation (see :func:`cross_correlation_shift`); with a
    ``mask`` only the masked pixels of both images take part (each mean-removed inside the mask,
    zero outside), which keeps unreconstructed borders from biasing the estimate; the shift
    is then refined iteratively (at most ``max_iterations`` estimates, until the correction is
    below ``tolerance_px`` pixels) to remove the bias of the window. Returns
    ``(shifted_moving, shift_yx)`` with ``shifted_moving(r) = moving(r - shift_yx)`` (pixels),
    the whole image shifted (periodically, see :func:`fourier_shift`).
    """
    moving = _as_image("moving", moving)
    reference = _as_image("reference", reference)
    if moving.shape != reference.shape:
        raise ValueError(f"moving: expected the shape of reference {reference.shape}, found "
                         f"{moving.shape}")
    mask = _check_mask(mask, reference.shape)
    if not isinstance(max_iterations, (int, np.integer)) or max_iterations < 1:
        raise ValueError(f"max_iterations: expected an integer >= 1, found {max_iterations!r}")
    if mask is None:
        shift = cross_correlation_shift(moving, reference, upsample=upsample)
        return fourier_shift(moving, shift), shift
    # Windowing both images by the same mask biases the peak towards zero shift (the overlap
    # of the two windows shrinks with the shift), so the residual shift is re-estimated after
    # each correction; the bias is proportional to the residual and vanishes quickly.
    reference_w = np.where(mask, reference - reference[mask].mean(), 0.0)
    shift = np.zeros(2)
    shifted = moving
    for _ in range(max_iterations):
        moving_w = np.where(mask, shifted - shifted[mask].mean(), 0.0)
        residual = cross_correlation_shift(moving_w, reference_w, upsample=upsample)
        shift = shift + residual
        shifted = fourier_shift(moving, shift)
        if np.max(np.abs(residual)) < tolerance_px:
            break
    return shifted, shift


def phase_correlation(recon_phase: np.ndarray, true_phase: np.ndarray,
                      mask: np.ndarray | None = None, lowpass_sigma_px: float | None = None,
                      align: bool = True) -> float:
    """Pearson correlation of a reconstructed phase with the true phase (both rad, (Y, X)).

    Steps: (1) with ``align``, translate the reconstruction onto the truth by the sub-pixel
    shift of :func:`align_images` (restricted to ``mask`` when given) -- the global translation
    of object and positions is a gauge freedom of ptychography; (2) with ``lowpass_sigma_px``,
    smooth both images by a Gaussian of that standard deviation (pixels), which discounts
    frequencies beyond the information limit; (3) remove the mean of each (the global phase
    offset) over ``mask`` (default: all pixels) and return
    ``sum(a b) / sqrt(sum(a^2) sum(b^2))`` over those pixels, in [-1, 1] (0 when either image is
    constant there).
    """
    recon = _as_image("recon_phase", recon_phase)
    truth = _as_image("true_phase", true_phase)
    if recon.shape != truth.shape:
        raise ValueError(f"recon_phase: expected the shape of true_phase {truth.shape}, found "
                         f"{recon.shape}")
    mask = _check_mask(mask, truth.shape)
    if align:
        recon, _ = align_images(recon, truth, mask=mask)
    if lowpass_sigma_px is not None:
        if not (np.isfinite(lowpass_sigma_px) and lowpass_sigma_px >= 0):
            raise ValueError(f"lowpass_sigma_px: expected a number >= 0 or None, found "
                             f"{lowpass_sigma_px!r}")
        if lowpass_sigma_px > 0:
            recon = ndimage.gaussian_filter(recon, float(lowpass_sigma_px), mode="nearest")
            truth = ndimage.gaussian_filter(truth, float(lowpass_sigma_px), mode="nearest")
    if mask is not None:
        recon, truth = recon[mask], truth[mask]
    a = recon.ravel() - recon.mean()
    b = truth.ravel() - truth.mean()
    norm = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
    if norm == 0.0:
        return 0.0
    return float(np.sum(a * b) / norm)


def scanned_region_mask(grid: ReconstructionGrid, positions_A: np.ndarray,
                        shrink_px: float = 0) -> np.ndarray:
    """Boolean (Y, X) mask of object pixels inside the bounding box of the scan positions.

    The probe centre sits at each scan position (Å, (y, x)), so the box spanned by the
    positions is where the object is illuminated from every side and its phase recoverable.
    Object pixel ``(iy, ix)`` is at ``grid.origin_A + (iy, ix) * grid.pixel_size_A``. The box is
    shrunk by ``shrink_px`` pixels on every side (negative values grow it).
    """
    pos = np.asarray(positions_A, dtype=float)
    if pos.ndim != 2 or pos.shape[1] != 2 or pos.shape[0] == 0:
        raise ValueError(f"positions_A: expected shape (N, 2) with N >= 1, found {pos.shape}")
    if not np.all(np.isfinite(pos)):
        raise ValueError("positions_A: contains NaN or infinite values")
    px = float(grid.pixel_size_A)
    margin = float(shrink_px) * px
    lo = pos.min(axis=0) + margin
    hi = pos.max(axis=0) - margin
    y = grid.origin_A[0] + np.arange(grid.object_shape[0]) * px
    x = grid.origin_A[1] + np.arange(grid.object_shape[1]) * px
    tol = 1e-9 * px  # positions on the pixel lattice count as inside
    in_y = (y >= lo[0] - tol) & (y <= hi[0] + tol)
    in_x = (x >= lo[1] - tol) & (x <= hi[1] + tol)
    return in_y[:, None] & in_x[None, :]


def resample_to_grid(image: np.ndarray, source: ReconstructionGrid,
                     target: ReconstructionGrid, order: int = 3) -> np.ndarray:
    """``image`` sampled on ``source`` re-sampled onto the pixels of ``target`` (spline of
    ``order``; points outside ``source`` take the nearest edge value).

    Use it to compare a ground truth simulated on one grid with a reconstruction on another
    (e.g. when the reconstruction grid was built from nominal positions).
    """
    image = _as_image("image", image)
    if image.shape != tuple(source.object_shape):
        raise ValueError(f"image: expected the source grid's shape {source.object_shape}, "
                         f"found {image.shape}")
    ys = (target.origin_A[0] + np.arange(target.object_shape[0]) * target.pixel_size_A
          - source.origin_A[0]) / source.pixel_size_A
    xs = (target.origin_A[1] + np.arange(target.object_shape[1]) * target.pixel_size_A
          - source.origin_A[1]) / source.pixel_size_A
    coords = np.meshgrid(ys, xs, indexing="ij")
    return ndimage.map_coordinates(image, coords, order=order, mode="nearest")


def position_error_A(estimated_A: np.ndarray, true_A: np.ndarray,
                     remove_mean: bool = True) -> float:
    """RMS distance (Å) between estimated and true positions, both (N, 2) (y, x) in Å.

    ``sqrt(mean_n |e_n - t_n - c|^2)`` with ``c`` the mean difference when ``remove_mean`` (a
    common translation of all positions is a gauge freedom: the object moves with them), else
    ``c = 0``.
    """
    est = np.asarray(estimated_A, dtype=float)
    true = np.asarray(true_A, dtype=float)
    if est.ndim != 2 or est.shape[1] != 2:
        raise ValueError(f"estimated_A: expected shape (N, 2), found {est.shape}")
    if true.shape != est.shape:
        raise ValueError(f"true_A: expected the shape of estimated_A {est.shape}, found "
                         f"{true.shape}")
    diff = est - true
    if remove_mean:
        diff = diff - diff.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(diff * diff, axis=1))))
