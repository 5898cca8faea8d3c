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
    wall time per stage.
    """

    method: str
    arrays: dict[str, np.ndarray]
    values: dict[str, Any] = attrs.field(factory=dict)
    pixel_size_A: float | None = None
    timings_s: dict[str, float] = attrs.field(factory=dict)


class DirectMethod(Component):
    """Maps a dataset and its experiment description to a :class:`DirectResult`."""

    kind = "direct_method"

    @abc.abstractmethod
    def run(self, dataset: Any, experiment: Any, device: Any) -> DirectResult:
        """Reconstruct from ``dataset`` (a :class:`ptyframe.data.Dataset`)."""
