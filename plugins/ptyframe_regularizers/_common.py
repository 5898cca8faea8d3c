"""Validators and helpers shared by the first-party regularizers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from ptyframe.core.schedules import Constant, Schedule, as_schedule
from ptyframe.core.validators import is_number

__all__ = [
    "weight_field", "weight_at", "block_and_weight", "optional_npy_path", "load_npy",
]


def _check_weight(name: str, value: Any, where: str = "") -> float:
    if not is_number(value) or not math.isfinite(float(value)) or float(value) < 0:
        raise ValueError(f"{name}: expected a finite number >= 0{where}, found {value!r}")
    return float(value)


def _weight_validator(_inst: Any, attribute: attrs.Attribute, value: Schedule) -> None:
    """A constant weight is checked now; other schedules when they are evaluated."""
    if isinstance(value, Constant):
        _check_weight(attribute.name, value.value)


def weight_field(default: float, **kwargs: Any) -> Any:
    """attrs field for a non-negative weight that may vary with the epoch (a Schedule)."""
    return attrs.field(default=Constant(default), converter=as_schedule,
                       validator=_weight_validator, **kwargs)


def weight_at(schedule: Schedule, epoch: int, name: str) -> float:
    """The weight ``schedule(epoch)`` as a float >= 0 (ValueError naming ``name`` otherwise)."""
    return _check_weight(name, schedule(epoch), f" at epoch {epoch}")


def block_and_weight(params: Any, block: str, weight: Schedule, epoch: int
                     ) -> tuple[Any, float] | None:
    """(params[block], weight at ``epoch``), or None when the block is absent or the weight is
    0 at this epoch (the penalty is then 0 with no gradient)."""
    array = params.get(block)
    if array is None:
        return None
    w = weight_at(weight, epoch, "weight")
    return None if w == 0 else (array, w)


def optional_npy_path(_inst: Any, attribute: attrs.Attribute, value: str | None) -> None:
    """None, or the path of an existing ``.npy`` file."""
    if value is None:
        return
    if not isinstance(value, str) or not value.endswith(".npy"):
        raise ValueError(f"{attribute.name}: expected the path of a .npy file or None, "
                         f"found {value!r}")
    if not Path(value).is_file():
        raise ValueError(f"{attribute.name}: expected an existing .npy file, found no file at "
                         f"{value!r}")


def load_npy(name: str, path: str, shape: tuple[int, ...], low: float = 0.0,
             high: float = 1.0) -> np.ndarray:
    """A real array of ``shape`` with values in [low, high] from a .npy file (never unpickled)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{name}: cannot read {path!r} as a .npy array: {exc}") from None
    if np.iscomplexobj(array) or not np.issubdtype(array.dtype, np.number) and (
            array.dtype != np.bool_):
        raise ValueError(f"{name}: expected a real array in {path!r}, found dtype {array.dtype}")
    array = np.asarray(array, dtype=float)
    if array.shape != tuple(shape):
        raise ValueError(f"{name}: expected an array of shape {tuple(shape)} in {path!r}, found "
                         f"{array.shape}")
    if not np.all(np.isfinite(array)) or array.min() < low or array.max() > high:
        raise ValueError(f"{name}: expected finite values in [{low}, {high}] in {path!r}, found "
                         f"range [{np.nanmin(array):g}, {np.nanmax(array):g}]")
    return array
