"""Global scan model: the scan's affine map and slow drift, fitted apart from the local jitter.

A scan position is written as its starting (nominal) value plus a correction, and the
correction of the training positions is split in two by least squares:

    p_n - p0_n = G_n c + r_n

* the *global* part ``G c``: an affine map of the starting positions (translation, rotation,
  scale, shear: columns 1, y0, x0 of ``G``, the same for both components) plus, with
  ``drift_order`` k > 0, a drift along the slow scan axis in powers 2 .. k + 1 of the
  measurement's slow-axis row (a drift linear in time is already affine);
* the *local* jitter ``r``, what the global part leaves.

:func:`project_scan` returns the positions with the global part kept, the mean translation
removed (a common shift of every position is a shift of the object: the data cannot tell it)
and the jitter multiplied by ``1 - damping``. The Reconstruction applies it after every
position step when ``jitter_damping`` > 0; being a by-hand change of the parameters it makes
the engine forget its optimizer history, which slows convergence on clean data (measured on the
project's simulator: 0.011 Å -> 0.05 Å after 60 epochs), so it is off by default. Damping is
the proximal step of a quadratic jitter penalty; the prior below is the same idea as a loss
term, without the reset.

A Gaussian prior on the jitter, :func:`jitter_prior`, adds to the loss

    R = sum_n |r_n|^2 / (2 sigma^2)        (r_n, sigma in the same unit)

with sigma the expected rms jitter per axis. With the ``ml`` loss (the Poisson negative
log-likelihood in counts, the default for counting data) the sum is the negative log
posterior, so the refined positions are the maximum a-posteriori estimate and the prior's
strength needs no tuning: where the patterns fix a position well (high dose, strong contrast)
the data term dominates; where they do not (low dose, weak specimen), the jitter is pulled
towards the global scan model instead of fitting noise. The affine and drift part is free.

The prior is the Bayesian answer when the object is known. It is not, and with few electrons
the joint fit of object and positions moves positions to fit the noise of an object fitted to
the same noise (the object pixels are nuisance parameters that absorb part of each position's
information): on the project's simulator the error rose 22 % above its start at 10^3 e/Å²
with the 0.2 Å prior (13 % with a 0.1 Å prior, the true jitter), 7-14 % at 5*10^3 e/Å², where
the known-object bound promises a 4x smaller error. :func:`jitter_resolved` therefore asks
first whether the patterns hold enough information to locate the positions well inside the
prior: the median over the training positions of the Fisher-information bound ``F`` of
:func:`ptyframe.engine.position_scaling.position_information` (less the object noise's least
share) times ``sigma^2``, the ratio of the data's precision to the prior's, must reach
``min_information``. Below it the local jitter is held (its gradient removed by
:func:`restrict_to_global`): the positions follow the global scan model only (still fitted),
until the object carries enough contrast. The default :data:`DEFAULT_JITTER_MIN_INFORMATION`
asks that the data alone locate a position to a fifth of the prior width (a factor 25 in
precision), the margin the joint fit needed on the project's simulator (released at
>= 10^4 e/Å², held at <= 5*10^3 e/Å² on a specimen of strong contrast).

The affine part is free but converges slowly: rotating (or scaling) the object and the
positions together about the scan centre leaves each exit wave a rotated copy of itself when
the probe is round, so the patterns see the error only as a rotation (scale) of the whole
pattern by the same 3° (2 %) in the detector frame, a small change carried by the dark-field
counts. Measured on the project's simulator at 10^5 e/Å² (3° and 2 % error, start 0.18 Å
affine part): 0.10 Å after 60 epochs with the probe refined, 0.091 Å with the true probe
fixed and 0.054 Å after 150 epochs: converging, not stuck. With a fixed, astigmatic probe
(C12a = 100 Å), whose shape is not rotation-invariant, 0.079 Å after 60 epochs but
0.093 Å after 150: not the clear improvement the symmetry argument predicts (a probe that is
refined rotates along with the object). Finding scan rotation and scale is the geometry
step's job (tcBF parallax) before iterating.

Stateless: everything depends on the starting positions and the scan shape, so a resumed run
projects exactly as the uninterrupted one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["DEFAULT_JITTER_MIN_INFORMATION", "DEFAULT_JITTER_PRIOR_A", "global_basis",
           "jitter_prior", "jitter_resolved", "project_scan", "restrict_to_global",
           "split_correction"]

#: Å, rms per axis: the jitter prior used with the ``ml`` loss when none is given; wider than
#: the scan noise of a well-behaved instrument (so real jitter is found, not shrunk away),
#: narrow enough to keep positions the patterns cannot fix from wandering by a scan step
DEFAULT_JITTER_PRIOR_A = 0.2

#: the median position information, in units of the jitter prior's precision 1/sigma^2, the
#: patterns must hold for the local jitter to be refined (see the module docstring)
DEFAULT_JITTER_MIN_INFORMATION = 25.0


def global_basis(start: np.ndarray, slow_row: np.ndarray | None = None,
                 drift_order: int = 0) -> np.ndarray:
    """(N, k) orthonormal basis of the global corrections of ``start`` (N, 2) positions (any
    unit): affine (1, y0, x0), plus powers 2 .. ``drift_order`` + 1 of ``slow_row`` (N,), the
    slow-axis row of each position in the raster (required when ``drift_order`` > 0).
    Columns without support (a single row, collinear positions) are dropped."""
    start = np.asarray(start, dtype=float)
    if start.ndim != 2 or start.shape[1] != 2:
        raise ValueError(f"positions: expected shape (N, 2), found {start.shape}")
    if isinstance(drift_order, bool) or not isinstance(drift_order, (int, np.integer)) \
            or drift_order < 0:
        raise ValueError(f"scan_drift_order: expected an integer >= 0, found {drift_order!r}")
    n = start.shape[0]
    centred = start - start.mean(axis=0)
    scale = float(np.abs(centred).max()) or 1.0
    columns = [np.ones(n), centred[:, 0] / scale, centred[:, 1] / scale]
    if drift_order > 0:
        if slow_row is None or np.shape(slow_row) != (n,):
            raise ValueError(f"scan_drift_order: needs the slow-axis row of each of the {n} "
                             f"positions (a raster scan_shape), found "
                             f"{None if slow_row is None else np.shape(slow_row)}")
        t = np.asarray(slow_row, dtype=float)
        span = float(t.max() - t.min()) or 1.0
        t = 2.0 * (t - t.min()) / span - 1.0  # in [-1, 1]
        columns += [t ** (k + 2) for k in range(int(drift_order))]
    design = np.stack(columns, axis=1)
    u, s, _ = np.linalg.svd(design, full_matrices=False)
    rank = int(np.sum(s > 1e-9 * s[0]))
    return u[:, :rank]


def split_correction(current: np.ndarray, start: np.ndarray, basis: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(global, local) parts of the correction ``current - start`` (N, 2) on the orthonormal
    ``basis`` (N, k) (host arrays)."""
    delta = np.asarray(current, dtype=float) - np.asarray(start, dtype=float)
    fitted = basis @ (basis.T @ delta)
    return fitted, delta - fitted


def project_scan(current: Any, start: Any, rows: np.ndarray, basis: np.ndarray,
                 damping: float, xp: Any) -> Any:
    """``current`` (N, 2) with the correction of ``rows`` (the positions fitted; ``basis``
    (len(rows), k) built on their starting values) replaced by its global part less the mean
    translation plus ``1 - damping`` times its local part; other rows unchanged. Device
    arrays in and out (the fit itself is a small host computation, in double precision)."""
    if not 0 <= damping < 1:
        raise ValueError(f"jitter_damping: expected a number in [0, 1), found {damping!r}")
    host_cur = np.asarray(_to_host(current, xp), dtype=float)[rows]
    host_start = np.asarray(_to_host(start, xp), dtype=float)[rows]
    fitted, local = split_correction(host_cur, host_start, basis)
    fitted -= (host_cur - host_start).mean(axis=0)
    new = host_start + fitted + (1.0 - damping) * local
    out = current.copy()
    out[xp.asarray(rows)] = xp.asarray(new, dtype=current.dtype)
    return out


def _to_host(array: Any, xp: Any) -> np.ndarray:
    return array.get() if hasattr(array, "get") and xp is not np else np.asarray(array)


def jitter_prior(current: Any, start: Any, rows: np.ndarray, basis: np.ndarray,
                 sigma_px: float, xp: Any) -> tuple[float, Any]:
    """Value and gradient (real-block convention ``g = 1/2 dR/dp``, shape of ``current``) of
    ``R = sum |r|^2 / (2 sigma_px^2)`` over the local jitter ``r`` of ``rows`` (``basis`` as
    in :func:`project_scan`); positions and ``sigma_px`` in pixels."""
    if not sigma_px > 0:
        raise ValueError(f"jitter_prior_A: expected a number > 0, found {sigma_px!r} px")
    host_cur = np.asarray(_to_host(current, xp), dtype=float)[rows]
    host_start = np.asarray(_to_host(start, xp), dtype=float)[rows]
    _, local = split_correction(host_cur, host_start, basis)
    value = float(np.sum(local * local)) / (2.0 * sigma_px**2)
    grad = np.zeros(tuple(current.shape))
    grad[rows] = local / (2.0 * sigma_px**2)
    return value, xp.asarray(grad, dtype=current.dtype)


def jitter_resolved(information: np.ndarray, sigma_px: float, min_information: float
                    ) -> tuple[bool, float]:
    """(whether the local jitter is refined, the median of ``information * sigma_px^2``).

    ``information``: (N, 2) Fisher information per position and axis (1/pixel^2) of the
    training positions; ``sigma_px``: the jitter prior (pixels); ``min_information``: the
    threshold on the median (0: always refined).
    """
    if not sigma_px > 0:
        raise ValueError(f"jitter_prior_A: expected a number > 0, found {sigma_px!r} px")
    if not min_information >= 0:
        raise ValueError(f"jitter_min_information: expected a number >= 0, found "
                         f"{min_information!r}")
    values = np.asarray(information, dtype=float)
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ValueError(f"information: expected finite values for {values.shape} positions, "
                         f"found {values.size - int(np.isfinite(values).sum())} not finite")
    ratio = float(np.median(values)) * sigma_px**2
    return ratio >= min_information, ratio


def restrict_to_global(grad: Any, rows: np.ndarray, basis: np.ndarray, xp: Any) -> Any:
    """``grad`` (N, 2) with the rows ``rows`` replaced by their projection on the global
    ``basis`` (len(rows), k) and every other row zero: the gradient of the objective
    restricted to positions that follow the global scan model (an unpreconditioned step stays
    on it)."""
    host = np.asarray(_to_host(grad, xp), dtype=float)[rows]
    out = np.zeros(tuple(grad.shape))
    out[rows] = basis @ (basis.T @ host)
    return xp.asarray(out, dtype=grad.dtype)
