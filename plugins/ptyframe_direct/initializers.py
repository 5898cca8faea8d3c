"""Start an iterative reconstruction from the phase of a direct method (DPC, WDD, tcBF)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import attrs
import numpy as np
from scipy import ndimage

from ptyframe.components import InitContext, ObjectInitializer
from ptyframe.core.validators import finite, non_negative, to_float

__all__ = ["DirectPhaseObject", "phase_on_grid"]


def _path(value: Any) -> str:
    if isinstance(value, Path):
        return str(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"DirectPhaseObject.path: expected a path to a phase .npy file or a "
                         f"direct-result folder, found {value!r}")
    return value


def _optional_pair(value: Any) -> list[float] | None:
    if value is None:
        return None
    try:
        items = [float(v) for v in value]
    except (TypeError, ValueError):
        items = []
    if len(items) != 2 or not all(math.isfinite(v) for v in items):
        raise ValueError(f"DirectPhaseObject.origin_A: expected None or two numbers (y, x) in "
                         f"Å, found {value!r}")
    return items


def _optional_pixel(value: Any) -> list[float] | None:
    if value is None:
        return None
    items: list[float] = []
    try:
        items = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    except (TypeError, ValueError):
        items = []
    if len(items) == 1:
        items = items * 2
    if len(items) != 2 or not all(math.isfinite(v) and v > 0 for v in items):
        raise ValueError(f"DirectPhaseObject.pixel_size_A: expected None, a positive number or "
                         f"a (y, x) pair in Å, found {value!r}")
    return items


def phase_on_grid(phase: np.ndarray, pixel_yx_A: tuple[float, float],
                  origin_A: tuple[float, float], rotation_deg: float, grid: Any,
                  order: int = 3) -> np.ndarray:
    """Resample a scan-frame image onto a reconstruction grid (specimen frame).

    Image pixel (iy, ix) lies at scan-frame position ``s = origin_A + (iy, ix) * pixel`` and
    at specimen position ``R(theta) s`` (``x' = cos x - sin y``, ``y' = sin x + cos y``, the
    ``scan_grid`` convention). Grid pixel (gy, gx) is at ``grid.origin_A + (gy, gx) *
    grid.pixel_size_A``. The image mean is removed; outside the image the result fades
    linearly to 0 over one image pixel.
    """
    img = np.asarray(phase, dtype=float)
    img = img - img.mean()
    ny, nx = grid.object_shape
    py = grid.origin_A[0] + np.arange(ny) * grid.pixel_size_A
    px = grid.origin_A[1] + np.arange(nx) * grid.pixel_size_A
    yy, xx = np.meshgrid(py, px, indexing="ij")
    t = math.radians(rotation_deg)
    c, s = math.cos(t), math.sin(t)
    # scan frame = R^T p:  x = c x' + s y', y = -s x' + c y'
    sy = (-s * xx + c * yy - origin_A[0]) / pixel_yx_A[0]
    sx = (c * xx + s * yy - origin_A[1]) / pixel_yx_A[1]
    values = ndimage.map_coordinates(img, [sy, sx], order=order, mode="nearest")
    dy = np.maximum(0.0, np.maximum(-sy, sy - (img.shape[0] - 1)))
    dx = np.maximum(0.0, np.maximum(-sx, sx - (img.shape[1] - 1)))
    taper = np.clip(1.0 - dy, 0.0, 1.0) * np.clip(1.0 - dx, 0.0, 1.0)
    return values * taper


@attrs.define(kw_only=True)
class DirectPhaseObject(ObjectInitializer):
    """Object = exp(i phase) from a saved direct-method phase, resampled onto the
    reconstruction grid, so that a DPC / WDD / tcBF result starts an iterative run.

    * ``path``: a phase ``.npy`` (Y, X) in radians, or a result folder written by
      ``ptyframe.apps.direct.save_direct_result`` (its ``phase.npy`` is used); required
    * ``pixel_size_A``: pixel size of the phase image, Å, a number or (y, x) (None: from the
      ``values.json`` next to the phase)
    * ``origin_A``: scan-frame position (y, x) of image pixel (0, 0) relative to scan point
      (0, 0), Å (None: from the ``values.json``, else (0, 0))
    * ``rotation_deg``: scan-frame rotation, degrees (None: the experiment's
      ``scan_rotation_deg``, the frame of the ``scan_grid`` positions)
    * ``scale``: multiplier of the phase, >= 0 (e.g. < 1 to start conservatively)
    * ``mode_noise_rad``: standard deviation of the random phase given to object modes after
      the first, radians (as the vacuum initializer)

    The ``values.json`` keys read are ``pixel_size_yx_A`` (or ``pixel_size_A``) and
    ``origin_A``. Scan point (0, 0) is placed where the ``scan_grid`` initializer puts it
    (the raster rotated about its centre); ``origin_A`` is relative to it. The phase is split
    evenly over the slices.
    """

    name = "direct_phase"
    path: str = attrs.field(converter=_path)
    pixel_size_A: list[float] | None = attrs.field(default=None, converter=_optional_pixel)
    origin_A: list[float] | None = attrs.field(default=None, converter=_optional_pair)
    rotation_deg: float | None = attrs.field(
        default=None, converter=to_float, validator=finite(unit="degrees", optional=True))
    scale: float = attrs.field(default=1.0, converter=to_float, validator=non_negative())
    mode_noise_rad: float = attrs.field(default=1e-2, converter=to_float, validator=non_negative())

    def _files(self) -> tuple[Path, Path | None]:
        p = Path(self.path)
        if p.is_dir():
            p = p / "phase.npy"
        if not p.is_file():
            raise FileNotFoundError(f"DirectPhaseObject.path: phase file not found: {str(p)!r}")
        side = p.parent / "values.json"
        return p, side if side.is_file() else None

    def load(self) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
        """The phase (Y, X) rad, its pixel size (y, x) Å and origin (y, x) Å."""
        phase_path, side = self._files()
        phase = np.load(phase_path, allow_pickle=False)
        if phase.ndim != 2 or np.iscomplexobj(phase) or not np.all(np.isfinite(phase)):
            raise ValueError(f"DirectPhaseObject.path: expected a finite real 2-D phase in "
                             f"{str(phase_path)!r}, found dtype {phase.dtype}, shape "
                             f"{phase.shape}")
        meta: dict[str, Any] = {}
        if side is not None:
            with open(side, encoding="utf-8") as fh:
                record = json.load(fh)
            meta = dict(record.get("values", {}))
            if "pixel_size_yx_A" not in meta and record.get("pixel_size_A") is not None:
                meta["pixel_size_yx_A"] = [record["pixel_size_A"]] * 2
        pixel = self.pixel_size_A or _optional_pixel(meta.get("pixel_size_yx_A"))
        if pixel is None:
            raise ValueError(f"DirectPhaseObject.pixel_size_A: not given and no values.json "
                             f"with the pixel size next to {str(phase_path)!r}")
        origin = self.origin_A or _optional_pair(meta.get("origin_A")) or [0.0, 0.0]
        return phase, (pixel[0], pixel[1]), (origin[0], origin[1])

    def build(self, context: InitContext, shape_yx: tuple[int, int], n_slices: int,
              n_modes: int) -> np.ndarray:
        if context.grid is None:
            raise ValueError("DirectPhaseObject: needs the reconstruction grid "
                             "(InitContext.grid), found None")
        phase, pixel, origin = self.load()
        grid = context.grid
        if tuple(shape_yx) != tuple(grid.object_shape):
            grid = attrs.evolve(grid, object_shape=tuple(int(v) for v in shape_yx))
        exp = context.experiment
        theta = self.rotation_deg if self.rotation_deg is not None else float(
            getattr(exp, "scan_rotation_deg", 0.0))
        # scan point (0, 0) where scan_grid puts it: the raster rotated about its centre
        scan = getattr(exp, "scan_shape", None)
        step = exp.scan_step_yx_A if getattr(exp, "scan_step_A", None) is not None else pixel
        if scan is not None:
            c = np.array([(scan[0] - 1) * step[0] / 2, (scan[1] - 1) * step[1] / 2])
            t = math.radians(theta)
            rc = np.array([math.sin(t) * c[1] + math.cos(t) * c[0],
                           math.cos(t) * c[1] - math.sin(t) * c[0]])
            shift = c - rc  # specimen position of scan point (0, 0)
        else:
            shift = np.zeros(2)
        # express the grid in a frame whose origin is scan point (0, 0)
        local = attrs.evolve(grid, origin_A=(grid.origin_A[0] - shift[0],
                                             grid.origin_A[1] - shift[1]))
        values = self.scale * phase_on_grid(phase, pixel, origin, theta, local)
        obj = np.empty((n_slices, n_modes, *grid.object_shape), dtype=complex)
        obj[:] = np.exp(1j * values / n_slices)
        if n_modes > 1 and self.mode_noise_rad > 0:
            noise = context.rng.standard_normal((n_slices, n_modes - 1, *grid.object_shape))
            obj[:, 1:] *= np.exp(1j * self.mode_noise_rad * noise)
        return obj
