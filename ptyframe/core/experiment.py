"""Experiment description (what the microscope did) and the reconstruction grid derived from it.

Conventions: arrays are [y, x]; positions are (y, x) in Å; the detector's zero frequency is at
pixel (N/2, N/2) of a pattern; aberrations in Krivanek notation, Å (C10 = -defocus).
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from ptyframe.core.physics import (
    ABERRATION_NAMES,
    aberration_coefficients_array,
    angle_to_frequency,
    wavelength_A,
)
from ptyframe.core.validators import int_pair, positive, reject_unknown_keys

__all__ = ["Experiment", "ReconstructionGrid", "windows_outside_object"]


def _aberrations(value: Any) -> dict[str, float]:
    arr = aberration_coefficients_array(value)
    return {name: float(v) for name, v in zip(ABERRATION_NAMES, arr, strict=True) if v != 0.0}


@attrs.frozen(kw_only=True)
class Experiment:
    """Acquisition parameters of one 4D-STEM dataset.

    Attributes
    ----------
    voltage_kV: accelerating voltage, kV.
    convergence_angle_mrad: probe semi-angle, mrad.
    detector_pixel_size_inv_A: reciprocal-space size of one detector pixel, 1/Å (give this
        or ``detector_pixel_size_mrad``; when both are given they must agree within 1%).
    detector_pixel_size_mrad: angular size of one detector pixel, mrad.
    aberrations: {Krivanek name: Å}; C10 = -defocus (positive C10 = overfocus).
    scan_shape: (ny, nx) scan points, row-major (y slow, x fast); None for arbitrary positions.
    scan_step_A: scan step, Å (float, or (y, x) pair).
    scan_rotation_deg: rotation of the scan frame relative to the detector frame, degrees.
    """

    voltage_kV: float = attrs.field(converter=float, validator=positive(unit="kV"))
    convergence_angle_mrad: float = attrs.field(converter=float, validator=positive(unit="mrad"))
    detector_pixel_size_inv_A: float | None = attrs.field(
        default=None, validator=positive(unit="1/Å", optional=True))
    detector_pixel_size_mrad: float | None = attrs.field(
        default=None, validator=positive(unit="mrad", optional=True))
    aberrations: dict[str, float] = attrs.field(factory=dict, converter=_aberrations)
    scan_shape: tuple[int, int] | None = attrs.field(
        default=None, converter=int_pair(low=1, what="(ny, nx)", integral_floats=True,
                                         optional=True))
    scan_step_A: float | tuple[float, float] | None = None
    scan_rotation_deg: float = attrs.field(default=0.0, converter=float)

    def __attrs_post_init__(self) -> None:
        inv, mrad = self.detector_pixel_size_inv_A, self.detector_pixel_size_mrad
        if inv is None and mrad is None:
            raise ValueError(
                "detector pixel size: expected detector_pixel_size_inv_A (1/Å) or "
                "detector_pixel_size_mrad, found neither"
            )
        if inv is not None and mrad is not None:
            implied = angle_to_frequency(mrad, self.wavelength_A)
            if abs(implied - inv) > 0.01 * inv:
                raise ValueError(
                    "inconsistent calibration: detector_pixel_size_mrad="
                    f"{mrad} implies {implied:.5g} 1/Å at {self.voltage_kV} kV, but "
                    f"detector_pixel_size_inv_A={inv}"
                )
        if self.scan_step_A is not None:
            steps = np.atleast_1d(np.asarray(self.scan_step_A, dtype=float))
            if steps.size not in (1, 2) or not np.all(np.isfinite(steps)) or np.any(steps <= 0):
                raise ValueError(
                    f"scan_step_A: expected a positive step or (y, x) pair in Å, "
                    f"found {self.scan_step_A!r}"
                )

    @property
    def wavelength_A(self) -> float:
        return wavelength_A(self.voltage_kV)

    @property
    def dk_inv_A(self) -> float:
        """Detector pixel size in 1/Å."""
        if self.detector_pixel_size_inv_A is not None:
            return float(self.detector_pixel_size_inv_A)
        return angle_to_frequency(float(self.detector_pixel_size_mrad), self.wavelength_A)

    @property
    def defocus_A(self) -> float:
        """Defocus in Å (positive = underfocus), i.e. -C10."""
        return -self.aberrations.get("C10", 0.0)

    @property
    def scan_step_yx_A(self) -> tuple[float, float]:
        if self.scan_step_A is None:
            raise ValueError("scan_step_A: needed to build a scan grid, found None")
        steps = np.atleast_1d(np.asarray(self.scan_step_A, dtype=float))
        return (float(steps[0]), float(steps[-1]))

    def to_config(self) -> dict[str, Any]:
        out = attrs.asdict(self)
        if isinstance(out["scan_shape"], tuple):
            out["scan_shape"] = list(out["scan_shape"])
        if isinstance(out["scan_step_A"], tuple):
            out["scan_step_A"] = list(out["scan_step_A"])
        return out

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Experiment:
        reject_unknown_keys("experiment", config, (f.name for f in attrs.fields(cls)))
        required = [f.name for f in attrs.fields(cls)
                    if f.default is attrs.NOTHING and f.init and f.name not in config]
        if required:
            raise ValueError(
                f"experiment: missing {', '.join(required)} (give them in [experiment], or "
                "set from_metadata = true to read them from the data file)")
        return cls(**config)


def windows_outside_object(corners_px: np.ndarray, window: tuple[int, int],
                           object_shape: tuple[int, ...]) -> str | None:
    """Why probe windows at ``corners_px`` (N, 2) leave a (Y, X) object, or None if they fit.

    A window at corner c covers pixels floor(c) .. floor(c) + window (the extra pixel holds
    the sub-pixel shift's support).
    """
    corners = np.floor(np.asarray(corners_px, dtype=float))
    lo = corners.min(axis=0)
    hi = corners.max(axis=0) + np.array(window)
    if lo.min() < 0 or hi[0] >= object_shape[-2] or hi[1] >= object_shape[-1]:
        return (f"positions: probe windows reach pixels {lo.tolist()}..{hi.tolist()}, outside "
                f"the object of shape {tuple(object_shape[-2:])}; enlarge the object margin")
    return None


@attrs.frozen(kw_only=True)
class ReconstructionGrid:
    """Real-space sampling of the reconstruction.

    ``window`` (ny, nx): probe window = detector grid in pixels; ``pixel_size_A`` =
    1 / (window * dk); ``object_shape`` (Y, X); ``origin_A``: specimen-frame position (y, x) in Å
    of object pixel (0, 0).
    """

    window: tuple[int, int]
    pixel_size_A: float
    object_shape: tuple[int, int]
    origin_A: tuple[float, float]

    @classmethod
    def covering(cls, positions_A: np.ndarray, window: tuple[int, int], dk_inv_A: float,
                 margin_px: int = 4) -> ReconstructionGrid:
        """Smallest grid holding every probe window plus ``margin_px`` pixels on each side."""
        if window[0] != window[1]:
            raise ValueError(f"window: expected a square detector grid, found {window}")
        pixel = 1.0 / (window[0] * dk_inv_A)
        pos = np.asarray(positions_A, dtype=float)
        lo = pos.min(axis=0)
        hi = pos.max(axis=0)
        half = np.array(window) // 2
        origin = lo - (half + margin_px) * pixel
        extent = np.ceil((hi - lo) / pixel).astype(int) + np.array(window) + 2 * margin_px + 1
        return cls(window=tuple(int(w) for w in window), pixel_size_A=float(pixel),
                   object_shape=(int(extent[0]), int(extent[1])),
                   origin_A=(float(origin[0]), float(origin[1])))

    def positions_to_pixels(self, positions_A: np.ndarray) -> np.ndarray:
        """Window top-left corners (float pixels) for probe centres in Å."""
        half = np.array(self.window) // 2
        return (np.asarray(positions_A) - np.array(self.origin_A)) / self.pixel_size_A - half

    def pixels_to_positions(self, corners_px: np.ndarray) -> np.ndarray:
        half = np.array(self.window) // 2
        return (np.asarray(corners_px) + half) * self.pixel_size_A + np.array(self.origin_A)

    def to_config(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.asdict(self).items()}

