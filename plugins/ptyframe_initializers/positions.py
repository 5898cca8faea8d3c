"""Scan-position initializers (positions in Å, (y, x), specimen frame)."""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np

from ptyframe.components import InitContext, PositionInitializer

__all__ = ["ScanGridPositions", "PositionsFromFile", "scan_grid"]


def scan_grid(scan_shape: tuple[int, int], step_yx_A: tuple[float, float],
              rotation_deg: float = 0.0) -> np.ndarray:
    """Row-major raster (y slow, x fast) rotated by ``rotation_deg`` about its centre, Å.

    Rotation: x' = cos t u - sin t v, y' = sin t u + cos t v for (u, v) = (x, y) - centre.
    """
    iy, ix = np.meshgrid(np.arange(scan_shape[0]), np.arange(scan_shape[1]), indexing="ij")
    v = iy.ravel() * step_yx_A[0]
    u = ix.ravel() * step_yx_A[1]
    cv, cu = v.mean(), u.mean()
    t = np.deg2rad(rotation_deg)
    x = cu + np.cos(t) * (u - cu) - np.sin(t) * (v - cv)
    y = cv + np.sin(t) * (u - cu) + np.cos(t) * (v - cv)
    return np.stack([y, x], axis=1)


@attrs.define(kw_only=True)
class ScanGridPositions(PositionInitializer):
    """Raster from the experiment's scan_shape, scan_step_A and scan_rotation_deg."""

    name = "scan_grid"

    def build(self, context: InitContext) -> np.ndarray:
        exp = context.experiment
        if exp.scan_shape is None:
            raise ValueError("positions initializer 'scan_grid': experiment.scan_shape is None")
        n = exp.scan_shape[0] * exp.scan_shape[1]
        if n != context.n_measurements:
            raise ValueError(
                f"scan_shape: {exp.scan_shape} gives {n} positions but the data has "
                f"{context.n_measurements} patterns"
            )
        return scan_grid(exp.scan_shape, exp.scan_step_yx_A, exp.scan_rotation_deg)


@attrs.define(kw_only=True)
class PositionsFromFile(PositionInitializer):
    """Positions (N, 2) in Å from a .npy file or an HDF5 dataset (default ``positions_A``).

    * ``path``: ``.npy`` file of the probe positions (N, 2), (y, x) in Å, specimen frame, or an
      HDF5 file holding them; required [positions]
    * ``dataset``: name of the dataset in an HDF5 file (not used for ``.npy``)
    """

    name = "from_file"
    path: str
    dataset: str = "positions_A"

    def build(self, context: InitContext) -> np.ndarray:
        path = Path(self.path)
        if not path.exists():
            raise FileNotFoundError(f"positions path: {path} does not exist")
        if path.suffix == ".npy":
            pos = np.load(path, allow_pickle=False)
        else:
            import h5py

            with h5py.File(path, "r") as fh:
                if self.dataset not in fh:
                    raise ValueError(f"positions: {path} has no dataset {self.dataset!r}")
                pos = fh[self.dataset][()]
        pos = np.asarray(pos, dtype=float)
        if pos.shape != (context.n_measurements, 2):
            raise ValueError(f"positions: expected shape ({context.n_measurements}, 2), found "
                             f"{pos.shape} in {path}")
        return pos
