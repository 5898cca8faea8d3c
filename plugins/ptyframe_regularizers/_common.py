"""Validators and helpers shared by the first-party regularizers."""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from ptyframe.components import Regularizer
from ptyframe.core.schedules import Constant, Schedule, as_schedule
from ptyframe.core.validators import is_number

__all__ = [
    "weight_field", "weight_at", "block_and_weight",
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


class BlockPenalty(Regularizer):
    """A penalty on one parameter block with a scheduled ``weight``: the shared part of every
    such regularizer (skip an absent block or a zero weight; return the gradient in the
    block's dtype). Subclasses set ``block`` and write :meth:`penalty`."""

    block: ClassVar[str] = ""

    def value_and_grad(self, params: Mapping[str, Any], epoch: int = 0
                       ) -> tuple[float, dict[str, Any]]:
        active = block_and_weight(params, self.block, self.weight, epoch)
        if active is None:
            return 0.0, {}
        array, w = active
        result = self.penalty(array, w, self.device)
        if result is None:
            return 0.0, {}
        value, grad = result
        return value, {self.block: grad.astype(array.dtype, copy=False)}

    @abc.abstractmethod
    def penalty(self, array: Any, w: float, device: Any) -> tuple[float, Any] | None:
        """(w * penalty, dL/d conj(array)) for the block's array at weight ``w`` > 0, or
        None when the penalty does not apply (e.g. a single mode)."""
