"""Penalties on per-measurement scan quantities: ``positions`` (N, 2) window corners in pixels
(y, x) and ``tilts`` (N or 1, 6) radians, for a raster scan of ``context.scan_shape`` =
(rows, cols): y slow, x fast, row-major (measurement n = row * cols + col).

Gradients follow the real-block convention g = 1/2 dR/dx, same shape and dtype as the block.
A weight of 0 at an epoch contributes nothing (and (0.0, {}) when every weight is 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from ptyframe.components import ModelContext, Regularizer
from ptyframe.core.validators import one_of

from ._common import BlockPenalty, weight_at, weight_field

__all__ = ["PositionSmoothness", "TiltSmoothness", "AffineDeformation"]

_SCAN_BLOCKS = ("positions", "tilts")


def _sum(xp: Any, a: Any) -> float:
    return float(xp.sum(a, dtype=xp.float64))


def _scan_shape(name: str, context: ModelContext) -> tuple[int, int]:
    """context.scan_shape checked against context.n_measurements."""
    shape = context.scan_shape
    if shape is None:
        raise ValueError(f"{name}: needs the raster scan's shape; context.scan_shape: expected "
                         f"(rows, cols), found None (give the experiment a scan_shape)")
    try:
        rows, cols = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: context.scan_shape: expected (rows, cols), found "
                         f"{shape!r}") from None
    if rows < 1 or cols < 1 or rows * cols != int(context.n_measurements):
        raise ValueError(f"{name}: context.scan_shape: expected rows * cols = "
                         f"{context.n_measurements} measurements, found {shape!r}")
    return rows, cols


@attrs.define(kw_only=True)
class PositionSmoothness(Regularizer):
    """Smoothness of a scan quantity along the raster: penalises jitter, keeps scan distortions.

    With x[r, c] the block's row n = r * cols + c (a vector: (y, x) pixels for positions, the
    six tilt angles for tilts):

    * fast axis: R_fast = fast_weight * sum_{r, 1 <= c <= cols-2} |x[r, c-1] - 2 x[r, c] +
      x[r, c+1]|^2 (squared second differences within each row; a uniform step costs 0);
    * slow axis, on the row means m_r = mean_c x[r, c], for the interior rows 1 <= r <= rows-2:
      d_r = m_r - (m_{r-1} + m_{r+1}) / 2 (half the second difference) and the local half step
      s_r = (m_{r+1} - m_{r-1}) / 2; per (y, x) pair of components (positions: one pair;
      tilts: before, inside, after)
      R_slow = slow_weight * sum_r max(0, |d_r| - slow_tolerance * |s_r|)^2.

    The slow tolerance (the reference's slow_axis_reg_coeff) lets a row mean deviate from the
    midpoint of its neighbours by that fraction of the local row-to-row step without cost
    (row-to-row drift of the slow scan is common); 0 penalises every deviation, so that
    R_slow = slow_weight / 4 * sum |second difference of the row means|^2. The hinge squared
    is differentiable. A common tilt (one row for all measurements) is not penalised.

    * ``fast_weight``: weight of the fast-axis term, per px^2 (positions) or per rad^2
      (tilts), >= 0 [fast_axis_reg_weight_positions]
    * ``slow_weight``: weight of the slow-axis term, per px^2 (positions) or per rad^2
      (tilts), >= 0 [slow_axis_reg_weight_positions]
    * ``slow_tolerance``: free deviation of a row mean, as a fraction of the local row-to-row
      step, >= 0 (dimensionless) [slow_axis_reg_coeff_positions]
    * ``block``: the block penalised, "positions" or "tilts"

    ``prepare`` needs ``context.scan_shape`` with rows * cols = N.

    Reference: fast_axis_reg_weight_positions, slow_axis_reg_weight_positions,
    slow_axis_reg_coeff_positions (and the *_tilts keys with block = "tilts"); same formulas
    and weight scale.
    """

    name = "position_smoothness"
    fast_weight: Any = weight_field(1.0)
    slow_weight: Any = weight_field(1.0)
    slow_tolerance: Any = weight_field(0.0)
    block: str = attrs.field(default="positions", validator=one_of(_SCAN_BLOCKS))
    _scan: tuple[int, int] | None = attrs.field(init=False, default=None, repr=False, eq=False)

    def prepare(self, context: ModelContext) -> None:
        super().prepare(context)
        self._scan = _scan_shape(self.name, context)

    def value_and_grad(self, params: Mapping[str, Any], epoch: int = 0
                       ) -> tuple[float, dict[str, Any]]:
        device = self.device
        x = params.get(self.block)
        if x is None:
            return 0.0, {}
        w_fast = weight_at(self.fast_weight, epoch, "fast_weight")
        w_slow = weight_at(self.slow_weight, epoch, "slow_weight")
        tolerance = weight_at(self.slow_tolerance, epoch, "slow_tolerance")
        if (w_fast == 0 and w_slow == 0) or (self.block == "tilts" and x.shape[0] == 1):
            return 0.0, {}
        if self._scan is None:
            raise RuntimeError(f"{self.name}: call prepare(context) before value_and_grad "
                               f"(the scan shape comes from the context)")
        rows, cols = self._scan
        if x.ndim != 2 or x.shape[0] != rows * cols:
            raise ValueError(f"{self.block}: expected {rows * cols} rows (scan_shape "
                             f"{(rows, cols)}), found shape {tuple(x.shape)}")
        xp = device.xp
        grid = x.reshape(rows, cols, x.shape[1])
        grad = xp.zeros_like(grid)
        value = 0.0
        if w_fast > 0 and cols >= 3:
            d2 = grid[:, :-2] - 2.0 * grid[:, 1:-1] + grid[:, 2:]
            value += w_fast * _sum(xp, d2 * d2)
            d2 *= w_fast  # g = 1/2 dR/dx = w D^T D x
            grad[:, :-2] += d2
            grad[:, 1:-1] -= 2.0 * d2
            grad[:, 2:] += d2
        if w_slow > 0 and rows >= 3:
            value += self._slow(xp, grid, grad, w_slow, tolerance)
        return value, {self.block: grad.reshape(x.shape).astype(x.dtype, copy=False)}

    @staticmethod
    def _slow(xp: Any, grid: Any, grad: Any, weight: float, tolerance: float) -> float:
        """Add 1/2 dR_slow/dx to ``grad`` (rows, cols, m); return R_slow."""
        rows, cols, m = grid.shape
        group = 2 if m % 2 == 0 else 1
        means = grid.mean(axis=1)  # (rows, m)
        dev = means[1:-1] - 0.5 * (means[:-2] + means[2:])
        step = 0.5 * (means[2:] - means[:-2])
        dev_g = dev.reshape(rows - 2, m // group, group)
        step_g = step.reshape(rows - 2, m // group, group)
        dev_norm = xp.sqrt(xp.sum(dev_g * dev_g, axis=-1))
        step_norm = xp.sqrt(xp.sum(step_g * step_g, axis=-1))
        excess = xp.maximum(dev_norm - tolerance * step_norm, 0.0)
        value = weight * _sum(xp, excess * excess)
        # 1/2 dR/d dev = w excess dev/|dev|; 1/2 dR/d step = -w tol excess step/|step|
        # (both 0 where excess = 0, which covers |dev| = 0; a zero step gets the subgradient 0)
        g_dev = (weight * excess / xp.where(dev_norm > 0, dev_norm, 1.0))[..., None] * dev_g
        g_step = (-weight * tolerance * excess
                  / xp.where(step_norm > 0, step_norm, 1.0))[..., None] * step_g
        g_dev = g_dev.reshape(rows - 2, m)
        g_step = g_step.reshape(rows - 2, m)
        g_means = xp.zeros_like(means)
        g_means[1:-1] += g_dev
        g_means[:-2] += -0.5 * g_dev - 0.5 * g_step
        g_means[2:] += -0.5 * g_dev + 0.5 * g_step
        grad += (g_means / cols)[:, None, :]
        return value


@attrs.define(kw_only=True)
class TiltSmoothness(PositionSmoothness):
    """``position_smoothness`` applied to the per-measurement tilts (N, 6) (rad): fast-axis
    second differences of each tilt angle within each row and slow-axis curvature of the row
    means per (y, x) pair (before, inside, after). A common tilt of shape (1, 6) is left
    alone.

    * ``fast_weight``: weight of the fast-axis term, per rad^2, >= 0
      [fast_axis_reg_weight_tilts]
    * ``slow_weight``: weight of the slow-axis term, per rad^2, >= 0
      [slow_axis_reg_weight_tilts]
    * ``slow_tolerance``: free deviation of a row mean, as a fraction of the local row-to-row
      step, >= 0 (dimensionless) [slow_axis_reg_coeff_tilts]
    * ``block``: the block penalised, "tilts" (or "positions")

    Reference: fast_axis_reg_weight_tilts, slow_axis_reg_weight_tilts,
    slow_axis_reg_coeff_tilts.
    """

    name = "tilt_smoothness"
    block: str = attrs.field(default="tilts", validator=one_of(_SCAN_BLOCKS))


@attrs.define(kw_only=True)
class AffineDeformation(BlockPenalty):
    """Distance of the scan positions from the best affine image of the ideal raster.

    R = weight * min_{A, b} sum_n |p_n - A g_n - b|^2 = weight * |(I - H) p|^2

    with p_n the positions (pixels), g_n = (row, col) of measurement n on the ideal grid of
    ``context.scan_shape`` (row-major) and H the least-squares projection onto the affine
    functions of the grid (columns row, col, 1; recomputed from the current positions at
    every call). Any affine map of the scan (step, rotation, shear, drift, offset) is free;
    local deformations are penalised. By the envelope theorem the gradient is just the
    residual: g = 1/2 dR/dp = weight (I - H) p.

    * ``weight``: weight of the penalty, per px^2, >= 0

    ``prepare`` needs ``context.scan_shape`` with rows * cols = N.

    Reference: the "deformation" position regularizer of the reference's notes (REFERENCE.md).
    """

    name = "deformation"
    weight: Any = weight_field(1.0)
    _basis_host: Any = attrs.field(init=False, default=None, repr=False, eq=False)
    _basis: Any = attrs.field(init=False, default=None, repr=False, eq=False)

    def prepare(self, context: ModelContext) -> None:
        super().prepare(context)
        rows, cols = _scan_shape(self.name, context)
        iy, ix = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        design = np.stack([iy.ravel(), ix.ravel(), np.ones(rows * cols)], axis=1).astype(float)
        # orthonormal basis of the design's column space (rank 2 for a single row or column)
        u, s, _ = np.linalg.svd(design, full_matrices=False)
        rank = int(np.sum(s > 1e-10 * s[0]))
        self._basis_host = u[:, :rank]
        self._basis = None

    def basis(self, device: Any) -> Any:
        """(N, rank) orthonormal basis of the affine functions of the raster, on ``device``."""
        if self._basis_host is None:
            raise RuntimeError("deformation: call prepare(context) before value_and_grad "
                               "(the ideal grid comes from context.scan_shape)")
        key = (device.kind, np.dtype(device.real_dtype).name)
        if self._basis is None or self._basis[0] != key:
            self._basis = (key, device.real(self._basis_host))
        return self._basis[1]

    block: ClassVar[str] = "positions"

    def penalty(self, pos: Any, w: float, device: Any) -> tuple[float, Any] | None:
        basis = self.basis(device)
        if pos.ndim != 2 or pos.shape[0] != basis.shape[0]:
            raise ValueError(f"positions: expected {basis.shape[0]} rows (the prepared "
                             f"scan_shape), found shape {tuple(pos.shape)}")
        xp = device.xp
        basis = basis.astype(pos.dtype, copy=False)
        residual = pos - basis @ (basis.T @ pos)
        value = w * _sum(xp, residual * residual)
        return value, (w * residual)
