"""DirectMethod: a non-iterative reconstruction (DPC, tilt-corrected bright field, WDD)."""

from __future__ import annotations

import abc
from typing import Any

import attrs
import numpy as np

from .base import Component

__all__ = ["DirectMethod", "DirectResult"]


@attrs.define
class DirectResult:
    """Outcome of a direct method (host arrays).

    ``method``: registry name (also the output sub-folder); ``arrays``: named images and maps,
    e.g. ``phase`` (Y, X) radians; ``values``: fitted numbers, JSON-ready (rotation_deg,
    aberrations_A, ...); ``pixel_size_A``: sampling of the 2D ``arrays``; ``timings_s``:
    wall time per stage; ``units``: optional unit of each array (``{"phase": "rad"}``), used
    for figure labels.

    Sampling convention of the 2D images: they live in the scan frame; array pixel (iy, ix) is
    at ``values["origin_A"] + (iy, ix) * values["pixel_size_yx_A"]`` (Å, relative to scan
    point (0, 0); defaults: origin (0, 0) and ``pixel_size_A`` along both axes). DPC and WDD
    images are sampled at the scan points (pixel size = scan step).
    """

    method: str
    arrays: dict[str, np.ndarray]
    values: dict[str, Any] = attrs.field(factory=dict)
    pixel_size_A: float | None = None
    timings_s: dict[str, float] = attrs.field(factory=dict)
    units: dict[str, str] = attrs.field(factory=dict)

    @property
    def phase(self) -> np.ndarray:
        """The ``phase`` array (rad); KeyError naming the available arrays when absent."""
        if "phase" not in self.arrays:
            raise KeyError(f"{self.method}: no 'phase' array; available: "
                           f"{', '.join(sorted(self.arrays)) or 'none'}")
        return self.arrays["phase"]

    @property
    def origin_A(self) -> tuple[float, float]:
        """Scan-frame position (y, x) in Å of array pixel (0, 0), relative to scan point 0."""
        o = self.values.get("origin_A", (0.0, 0.0))
        return (float(o[0]), float(o[1]))

    @property
    def pixel_size_yx_A(self) -> tuple[float, float] | None:
        """Pixel size (y, x) in Å of the 2D arrays (None when unknown)."""
        p = self.values.get("pixel_size_yx_A")
        if p is not None:
            return (float(p[0]), float(p[1]))
        if self.pixel_size_A is None:
            return None
        return (float(self.pixel_size_A), float(self.pixel_size_A))


class DirectMethod(Component):
    """Maps a dataset and its experiment description to a :class:`DirectResult`."""

    kind = "direct_method"

    @abc.abstractmethod
    def run(self, dataset: Any, experiment: Any, device: Any) -> DirectResult:
        """Reconstruct from ``dataset`` (a :class:`ptyframe.io.data.Dataset`)."""
