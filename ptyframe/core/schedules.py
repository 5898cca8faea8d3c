"""Iteration-dependent settings as serialisable objects (never eval'd strings).

A schedule maps an epoch (0-based int) to a value. ``Schedule.from_config`` rebuilds any
schedule from its ``to_config()`` dict; a bare value means :class:`Constant`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

import attrs

from ptyframe.core.validators import non_negative_int, to_int

__all__ = [
    "Schedule", "Constant", "EveryN", "FromEpoch", "Until", "Piecewise", "Linear",
    "as_schedule",
]


class Schedule(abc.ABC):
    """value = schedule(epoch)."""

    type_name: ClassVar[str] = ""

    @abc.abstractmethod
    def __call__(self, epoch: int) -> Any: ...

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type_name}
        out.update(attrs.asdict(self, recurse=False))
        for key, value in list(out.items()):
            if isinstance(value, tuple):
                out[key] = [list(v) if isinstance(v, tuple) else v for v in value]
        return out

    @staticmethod
    def from_config(config: Any) -> Schedule:
        """Build a schedule from a dict ``{"type": ..., ...}``; anything else is a Constant."""
        if isinstance(config, Schedule):
            return config
        if isinstance(config, dict) and "type" in config:
            kind = config["type"]
            classes = {c.type_name: c for c in (Constant, EveryN, FromEpoch, Until, Piecewise,
                                                 Linear)}
            if kind not in classes:
                raise ValueError(
                    f"schedule type: expected one of {sorted(classes)}, found {kind!r}"
                )
            kwargs = {k: v for k, v in config.items() if k != "type"}
            try:
                return classes[kind](**kwargs)
            except TypeError as exc:
                raise ValueError(f"schedule {kind!r}: bad settings {kwargs}: {exc}") from None
        return Constant(config)


@attrs.frozen
class Constant(Schedule):
    """The same value at every epoch."""

    type_name: ClassVar[str] = "constant"
    value: Any

    def __call__(self, epoch: int) -> Any:
        return self.value


@attrs.frozen
class EveryN(Schedule):
    """``on`` at epochs where (epoch - offset) % n == 0 (and epoch >= offset), else ``off``."""

    type_name: ClassVar[str] = "every"
    n: int = attrs.field(converter=to_int, validator=non_negative_int())
    offset: int = attrs.field(default=0, converter=to_int, validator=non_negative_int())
    on: Any = True
    off: Any = False

    def __attrs_post_init__(self) -> None:
        if self.n == 0:
            raise ValueError("n: expected an integer >= 1, found 0")

    def __call__(self, epoch: int) -> Any:
        return self.on if epoch >= self.offset and (epoch - self.offset) % self.n == 0 else self.off


@attrs.frozen
class FromEpoch(Schedule):
    """``off`` before ``start``, ``on`` from ``start`` (inclusive) onwards."""

    type_name: ClassVar[str] = "from"
    start: int = attrs.field(converter=to_int, validator=non_negative_int())
    on: Any = True
    off: Any = False

    def __call__(self, epoch: int) -> Any:
        return self.on if epoch >= self.start else self.off


@attrs.frozen
class Until(Schedule):
    """``on`` before ``stop`` (exclusive), ``off`` afterwards."""

    type_name: ClassVar[str] = "until"
    stop: int = attrs.field(converter=to_int, validator=non_negative_int())
    on: Any = True
    off: Any = False

    def __call__(self, epoch: int) -> Any:
        return self.on if epoch < self.stop else self.off


def _breakpoints(value: Sequence[Sequence[Any]]) -> tuple[tuple[int, Any], ...]:
    pairs = tuple((int(e), v) for e, v in value)
    starts = [e for e, _ in pairs]
    if not pairs or starts != sorted(starts) or len(set(starts)) != len(starts):
        raise ValueError(
            f"breakpoints: expected [[epoch, value], ...] with strictly increasing epochs, "
            f"found {value!r}"
        )
    return pairs


@attrs.frozen
class Piecewise(Schedule):
    """Step function: the value of the last breakpoint whose epoch <= epoch.

    ``Piecewise([[0, 0.1], [20, 0.0]])`` is 0.1 for epochs 0..19 and 0 from 20. Before the
    first breakpoint the value is ``before``.
    """

    type_name: ClassVar[str] = "piecewise"
    breakpoints: tuple[tuple[int, Any], ...] = attrs.field(converter=_breakpoints)
    before: Any = None

    def __call__(self, epoch: int) -> Any:
        value = self.before
        for start, v in self.breakpoints:
            if epoch >= start:
                value = v
            else:
                break
        return value


@attrs.frozen
class Linear(Schedule):
    """Linear ramp from ``start_value`` at ``start`` to ``end_value`` at ``end`` (held outside)."""

    type_name: ClassVar[str] = "linear"
    start: int = attrs.field(converter=to_int, validator=non_negative_int())
    end: int = attrs.field(converter=to_int, validator=non_negative_int())
    start_value: float = 0.0
    end_value: float = 1.0

    def __attrs_post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError(f"end: expected an epoch after start={self.start}, found {self.end}")

    def __call__(self, epoch: int) -> float:
        t = min(max((epoch - self.start) / (self.end - self.start), 0.0), 1.0)
        return self.start_value + t * (self.end_value - self.start_value)


def as_schedule(value: Any) -> Schedule:
    """attrs converter: plain values become :class:`Constant`, dicts are parsed."""
    return Schedule.from_config(value)
