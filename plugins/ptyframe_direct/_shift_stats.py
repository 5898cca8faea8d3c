"""Statistics of the tcBF shift fit: standard errors and significance pruning.

The shift model (``tcbf.ShiftModel``) is fitted to measured image shifts by least squares.
Near the solution it is linear in its parameters, so with the Jacobian J (2G x p, Å per
parameter unit) and a residual scale s (Å) the one-sigma standard errors are
``sqrt(diag(s^2 (J^T J)^-1))``. The residual scale is robust (1.4826 x the median absolute
residual, corrected for the fitted degrees of freedom) so that a few failed correlation peaks
(which the soft-l1 fit down-weights) do not inflate every error bar.

A coefficient is *significant* when |value| / standard error >= ``threshold`` and its effect
on the data is large enough (for tcBF: it moves some image by a minimum fraction of a scan
pixel; the standard errors treat the shifts as independent, which neighbouring pixels measured
against one reference are not, and systematic errors of a few hundredths of a pixel -- pattern
interpolation, crystal side bands -- are not noise at all). Pruning removes
the least significant of the prunable coefficients, refits, and repeats until every kept
coefficient passes (backward elimination): a coefficient that only absorbs noise or a
systematic error of a few hundredths of a pixel is then reported as 0 instead of tens or
hundreds of Å.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["robust_scale", "standard_errors", "prune_by_significance"]


def robust_scale(residuals: np.ndarray, n_params: int) -> float:
    """Robust one-sigma scale (units of ``residuals``) of a fit with ``n_params`` parameters:
    1.4826 median |r| x sqrt(n / (n - p)) (the RMS where more than half the residuals are 0;
    always > 0)."""
    r = np.asarray(residuals, dtype=float).ravel()
    n = r.size
    dof = max(n - n_params, 1)
    mad = 1.4826 * float(np.median(np.abs(r))) * np.sqrt(n / dof)
    if mad > 0:
        return mad
    return max(float(np.sqrt(np.sum(r * r) / dof)), 1e-300)


def standard_errors(jacobian: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """One-sigma standard errors of the parameters, sqrt(diag(s^2 (J^T J)^+)), with s from
    :func:`robust_scale` (``jacobian`` (n, p), ``residuals`` (n,)); inf for a parameter the
    data do not determine (a zero column)."""
    jac = np.asarray(jacobian, dtype=float)
    scale = robust_scale(residuals, jac.shape[1])
    norms = np.linalg.norm(jac, axis=0)
    ok = norms > 0
    out = np.full(jac.shape[1], np.inf)
    if not ok.any():
        return out
    jn = jac[:, ok] / norms[ok]
    cov = np.linalg.pinv(jn.T @ jn, rcond=1e-12)
    out[ok] = scale * np.sqrt(np.clip(np.diag(cov), 0.0, None)) / norms[ok]
    return out


def prune_by_significance(names: Sequence[str], fit: Callable[[tuple[str, ...]], Any],
                          assess: Callable[[Any], tuple[np.ndarray, np.ndarray, np.ndarray]],
                          prunable: Callable[[str], bool], threshold: float
                          ) -> tuple[Any, tuple[str, ...], dict[str, dict[str, float]]]:
    """Backward elimination of insignificant coefficients.

    ``fit(names)`` fits the model with these coefficients and returns a fit object;
    ``assess(fit)`` gives, in ``names`` order, the coefficient values, their standard errors
    and an effect ratio (the coefficient's effect on the data over the smallest effect worth
    keeping; pass ones to ignore it). A prunable coefficient is weak when |value| / error <
    ``threshold`` or its effect ratio < 1; while one is weak, the weakest (smallest
    min(t / threshold, effect ratio)) is removed and the model refitted. ``threshold`` <= 0
    keeps everything. Returns the last fit, the kept names and
    ``{name: {"value", "error", "t", "effect"}}`` for every coefficient ever fitted, taken
    from the last fit that contained it (pruned ones as they were when removed).
    """
    kept = tuple(names)
    record: dict[str, dict[str, float]] = {}
    result = fit(kept)
    while True:
        values, errors, effect = assess(result)
        t = np.abs(values) / np.where(errors > 0, errors, np.inf)
        for name, v, e, tt, ef in zip(kept, values, errors, t, effect, strict=True):
            record[name] = {"value": float(v), "error": float(e), "t": float(tt),
                            "effect": float(ef)}
        if threshold <= 0:
            return result, kept, record
        strength = np.minimum(t / threshold, np.asarray(effect, dtype=float))
        weak = [(st, name) for name, st in zip(kept, strength, strict=True)
                if prunable(name) and st < 1.0]
        if not weak:
            return result, kept, record
        drop = min(weak)[1]
        kept = tuple(n for n in kept if n != drop)
        result = fit(kept)
