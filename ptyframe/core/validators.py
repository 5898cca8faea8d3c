"""Shared attrs validators and converters for settings of the core and of plugins.

Every check fails with one message that names the setting (``Owner.field``), what was
expected and what was found, e.g. ``FarFieldDetector.upsample: expected an integer >= 1,
found 0``. Each factory takes ``error``, the exception class to raise (a ValueError subclass
such as :class:`ptyframe.io.data.DataError`; default ValueError), and where it makes sense
``unit`` (text shown after the expectation, e.g. "Å") and ``optional`` (None is accepted).

Usage::

    epsilon: float = attrs.field(default=1e-6, converter=to_float, validator=positive())
    upsample: int = attrs.field(default=1, validator=positive_int())
    mode: str = attrs.field(default="wdd", validator=one_of(("wdd", "ssb")))
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
import numpy as np

__all__ = [
    "Validator",
    "field_label",
    "is_number",
    "is_integer",
    "to_float",
    "to_int",
    "number_check",
    "finite",
    "positive",
    "non_negative",
    "at_least",
    "in_range",
    "probability",
    "fraction",
    "integer_at_least",
    "positive_int",
    "non_negative_int",
    "boolean",
    "one_of",
    "int_pair",
    "npy_path",
    "reject_unknown_keys",
]

#: an attrs validator: (instance, attribute, value) -> None, raising on a bad value
Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]
ErrorType = type[Exception]


def field_label(inst: Any, attribute: attrs.Attribute) -> str:
    """``Owner.field``: the class name of ``inst`` and the attribute's name."""
    return f"{type(inst).__name__}.{attribute.name}"


def is_number(value: Any) -> bool:
    """A real number (Python or numpy int/float), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_))


def is_integer(value: Any) -> bool:
    """A Python or numpy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def to_float(value: Any) -> Any:
    """attrs converter: a number (or a 0-d numeric array) becomes a float; anything else
    (None, bools, strings, sequences) is passed on unchanged for the validator to name."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    return float(value) if is_number(value) else value


def to_int(value: Any) -> Any:
    """attrs converter: a numpy integer becomes a Python int (JSON-serialisable); anything else
    is passed on unchanged for the validator to name."""
    return int(value) if is_integer(value) else value


def _expected(text: str, unit: str, optional: bool) -> str:
    text = f"{text} ({unit})" if unit else text
    return f"None or {text}" if optional else text


def number_check(accept: Callable[[float], bool], expected: str, *, unit: str = "",
                 optional: bool = False, error: ErrorType = ValueError) -> Validator:
    """Validator of a finite real number (not a bool) for which ``accept(value)`` holds;
    ``expected`` describes it for the message ("a finite number > 0")."""
    what = _expected(expected, unit, optional)

    def check(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if optional and value is None:
            return
        if not (is_number(value) and math.isfinite(value) and accept(value)):
            raise error(f"{field_label(inst, attribute)}: expected {what}, found {value!r}")

    return check


def finite(*, unit: str = "", optional: bool = False, error: ErrorType = ValueError
           ) -> Validator:
    """A finite number."""
    return number_check(lambda v: True, "a finite number", unit=unit, optional=optional,
                        error=error)


def positive(*, unit: str = "", optional: bool = False, error: ErrorType = ValueError
             ) -> Validator:
    """A finite number > 0."""
    return number_check(lambda v: v > 0, "a positive finite number", unit=unit,
                        optional=optional, error=error)


def non_negative(*, unit: str = "", optional: bool = False, error: ErrorType = ValueError
                 ) -> Validator:
    """A finite number >= 0."""
    return number_check(lambda v: v >= 0, "a finite number >= 0", unit=unit, optional=optional,
                        error=error)


def at_least(low: float, *, unit: str = "", optional: bool = False,
             error: ErrorType = ValueError) -> Validator:
    """A finite number >= ``low``."""
    return number_check(lambda v: v >= low, f"a finite number >= {low:g}", unit=unit,
                        optional=optional, error=error)


def in_range(low: float, high: float, *, low_open: bool = False, high_open: bool = False,
             unit: str = "", optional: bool = False, error: ErrorType = ValueError
             ) -> Validator:
    """A finite number in [low, high]; ``low_open`` / ``high_open`` exclude the bound."""
    bounds = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def accept(v: float) -> bool:
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)

    return number_check(accept, f"a number in {bounds}", unit=unit, optional=optional,
                        error=error)


def probability(*, optional: bool = False, error: ErrorType = ValueError) -> Validator:
    """A number in [0, 1]."""
    return in_range(0.0, 1.0, optional=optional, error=error)


def fraction(*, optional: bool = False, error: ErrorType = ValueError) -> Validator:
    """A number in [0, 1) (a fraction of a whole that stays below it)."""
    return in_range(0.0, 1.0, high_open=True, optional=optional, error=error)


def integer_at_least(low: int, *, optional: bool = False, error: ErrorType = ValueError
                     ) -> Validator:
    """A Python or numpy integer (not a bool) >= ``low``."""
    what = _expected(f"an integer >= {low}", "", optional)

    def check(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if optional and value is None:
            return
        if not (is_integer(value) and value >= low):
            raise error(f"{field_label(inst, attribute)}: expected {what}, found {value!r}")

    return check


def positive_int(*, optional: bool = False, error: ErrorType = ValueError) -> Validator:
    """An integer >= 1."""
    return integer_at_least(1, optional=optional, error=error)


def non_negative_int(*, optional: bool = False, error: ErrorType = ValueError) -> Validator:
    """An integer >= 0."""
    return integer_at_least(0, optional=optional, error=error)


def boolean(*, optional: bool = False, error: ErrorType = ValueError) -> Validator:
    """True or False (Python or numpy bool); with ``optional`` also None."""
    what = "None, True or False" if optional else "True or False"

    def check(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if optional and value is None:
            return
        if not isinstance(value, (bool, np.bool_)):
            raise error(f"{field_label(inst, attribute)}: expected {what}, found {value!r}")

    return check


def one_of(options: Iterable[Any], *, error: ErrorType = ValueError) -> Validator:
    """One of ``options`` (compared with ==)."""
    choices = tuple(options)
    listed = ", ".join(repr(c) for c in choices)

    def check(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value not in choices:
            raise error(f"{field_label(inst, attribute)}: expected one of {listed}, "
                        f"found {value!r}")

    return check


def int_pair(*, low: int | None = None, what: str = "(y, x)", integral_floats: bool = False,
             optional: bool = False, error: ErrorType = ValueError) -> attrs.Converter:
    """attrs converter: two integers -> ``(int, int)``, each >= ``low`` when given.

    ``what`` names the pair's meaning in the message ("(ny, nx)"); ``integral_floats`` also
    accepts floats with integral values (3.0); ``optional`` passes None through.
    """
    kind = "two integers" if low is None else (
        "two positive integers" if low == 1 else f"two integers >= {low}")
    expected = _expected(f"{kind} {what}", "", optional)

    def convert(value: Any, inst: Any, field: attrs.Attribute) -> tuple[int, int] | None:
        if optional and value is None:
            return None
        try:
            items = list(value)
        except TypeError:
            items = []
        ok = len(items) == 2 and all(
            is_integer(v) or (integral_floats and is_number(v) and math.isfinite(v)
                              and int(v) == v) for v in items)
        if ok and low is not None:
            ok = all(v >= low for v in items)
        if not ok:
            raise error(f"{field_label(inst, field)}: expected {expected}, found {value!r}")
        return int(items[0]), int(items[1])

    return attrs.Converter(convert, takes_self=True, takes_field=True)


def positive_int_pair(value: Any, label: str, error: ErrorType = ValueError) -> tuple[int, int]:
    """``value`` as two positive integers (sy, sx) (integral floats accepted); otherwise one
    ``error`` naming ``label``. For shapes read from files and metadata, outside attrs."""
    try:
        pair = tuple(int(v) for v in value)
        ok = len(pair) == 2 and min(pair) >= 1 and all(int(v) == v for v in value)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise error(f"{label}: expected two positive integers (sy, sx), found {value!r}")
    return pair  # type: ignore[return-value]


def npy_path(*, must_exist: bool = False, optional: bool = True, error: ErrorType = ValueError
             ) -> attrs.Converter:
    """attrs converter: the path (str or path-like) of a ``.npy`` file -> str; None passes
    when ``optional``. ``must_exist``: the file must exist now (otherwise it is checked when
    it is read)."""
    expected = "a .npy file path or None" if optional else "a .npy file path"

    def convert(value: Any, inst: Any, field: attrs.Attribute) -> str | None:
        if optional and value is None:
            return None
        text = os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
        if not isinstance(text, str) or not text.endswith(".npy"):
            raise error(f"{field_label(inst, field)}: expected {expected}, found {value!r}")
        if must_exist and not Path(text).is_file():
            raise error(f"{field_label(inst, field)}: expected an existing .npy file, found no "
                        f"file at {text!r}")
        return text

    return attrs.Converter(convert, takes_self=True, takes_field=True)


def reject_unknown_keys(where: str, keys: Iterable[Any], known: Iterable[str],
                        error: ErrorType = ValueError) -> None:
    """One error naming the table ``where`` when ``keys`` holds names outside ``known``:
    ``where: unknown keys ['a', 'b']; expected some of ['x', 'y']``."""
    known = [str(k) for k in known]
    unknown = sorted({str(k) for k in keys} - set(known))
    if unknown:
        raise error(f"{where}: unknown keys {unknown}; expected some of {sorted(known)}")
