"""Epoch-dependent settings written as string lambdas (the reference tool's style) -> Schedules.

The reference tool accepts iteration-dependent settings as lambdas of the epoch number, e.g.
``"lambda x: x % 10 == 0"``. ptyframe never evaluates such text: :func:`parse_lambda` parses it
with :func:`ast.parse`, checks that it is one of the simple forms below and interprets the
syntax tree itself (no ``eval``, ``exec`` or ``compile``), then returns the equivalent
:class:`~ptyframe.core.schedules.Schedule`. ``x`` is the epoch number, starting at 0 (the same
numbering ptyframe's schedules use).

Supported bodies (``x`` being the lambda's one argument):

* constants: ``3``, ``1e-3``, ``True``, ``-2/3``, ``np.inf`` / ``math.inf`` / ``math.pi``;
* comparisons of ``x`` with constants, also chained: ``x > 10``, ``x >= 10``, ``x < 20``,
  ``10 <= x < 20``, ``x == 5``;
* periodic terms ``x % n`` (``n`` a positive integer), e.g. ``x % 5 == 0``, ``x % 5 == 2``;
* ``and``, ``or``, ``not``, ``a if cond else b`` and arithmetic (``+ - * / // % **``) on the
  above, e.g. ``0.1 if x < 20 else 0``, ``x > 10 and x % 5 == 0``, ``1e-3 * (x > 5)``.

Any other use of ``x`` (``x * 2``, ``x / 100``, function calls, attribute access other than the
constants above) is refused with a ``ValueError`` naming the parameter and quoting the text.

Every supported body is eventually periodic in ``x``; the result is the simplest schedule that
agrees with it at *every* epoch: :class:`Constant`, :class:`FromEpoch`, :class:`Until`,
:class:`EveryN` (one "on" epoch per period, from an offset) or :class:`Piecewise` (anything that
becomes constant, e.g. ``x % 5 == 0 and x < 20``); comparisons with thresholds beyond 2**31
epochs count as never switching. A body that stays periodic in a way no
schedule expresses (e.g. ``x % 5 < 2``) is refused.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from ptyframe.core.schedules import Constant, EveryN, FromEpoch, Piecewise, Schedule, Until

__all__ = ["parse_lambda", "to_schedule", "map_schedule_values", "MAX_SOURCE_LENGTH"]

#: longest lambda text accepted, characters
MAX_SOURCE_LENGTH = 1000
#: most breakpoints a Piecewise result may have
_MAX_BREAKPOINTS = 512
#: most epochs evaluated to resolve a periodic body (threshold + 2 periods)
_MAX_PERIODIC_SPAN = 200_000
#: thresholds beyond this many epochs count as infinite (no run gets there)
_MAX_EPOCH = 2**31
#: largest integer exponent evaluated exactly (larger ones use floats, which overflow cleanly)
_MAX_INT_EXPONENT = 64

_NAMED_CONSTANTS = {
    ("np", "inf"): math.inf, ("numpy", "inf"): math.inf, ("math", "inf"): math.inf,
    ("np", "pi"): math.pi, ("numpy", "pi"): math.pi, ("math", "pi"): math.pi,
    ("np", "e"): math.e, ("numpy", "e"): math.e, ("math", "e"): math.e,
}

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CMPOPS: dict[type, Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne,
}


class _Unsupported(ValueError):
    """Raised inside the analysis; re-raised with the parameter name and the source text."""


# --------------------------------------------------------------------------- analysis
class _Body:
    """A checked lambda body: its syntax tree, argument name, thresholds and moduli."""

    def __init__(self, node: ast.expr, arg: str) -> None:
        self.node = node
        self.arg = arg
        self.thresholds: list[float] = []
        self.moduli: list[int] = []
        self._check(node, parent_ok=False)

    # -- structure ---------------------------------------------------------------------
    def _is_x(self, node: ast.AST) -> bool:
        return isinstance(node, ast.Name) and node.id == self.arg

    def _uses_x(self, node: ast.AST) -> bool:
        return any(self._is_x(n) for n in ast.walk(node))

    def _modulus(self, node: ast.AST) -> int | None:
        """n when ``node`` is ``x % n`` with a constant positive integer n."""
        if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod)
                and self._is_x(node.left)):
            return None
        if self._uses_x(node.right):
            raise _Unsupported("the modulus of x % n must be a constant")
        n = self._constant(node.right)
        if isinstance(n, bool) or not isinstance(n, (int, float)) or n != int(n) or n < 1:
            raise _Unsupported(f"x % n needs a positive integer n, found {n!r}")
        return int(n)

    def _constant(self, node: ast.expr) -> Any:
        """Value of an x-free expression."""
        return _evaluate(node, self.arg, None)

    def _check(self, node: ast.AST, parent_ok: bool) -> None:
        """Walk the tree; x may appear only directly in a comparison or as ``x % n``."""
        if self._is_x(node):
            if not parent_ok:
                raise _Unsupported(
                    f"{self.arg!r} may only be compared with a constant or used as "
                    f"{self.arg} % n")
            return
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, (bool, int, float)) and node.value is not None:
                raise _Unsupported(f"constant {node.value!r} is not a number or boolean")
            return
        if isinstance(node, ast.Attribute):
            if _named_constant(node) is None:
                raise _Unsupported(f"attribute {ast.unparse(node)!r} is not a known constant")
            return
        if isinstance(node, ast.Compare):
            if not all(type(op) in _CMPOPS for op in node.ops):
                raise _Unsupported("only <, <=, >, >=, ==, != comparisons are supported")
            operands = [node.left, *node.comparators]
            for i, operand in enumerate(operands):
                if not self._is_x(operand):
                    n = self._modulus(operand)
                    if n is not None:
                        self.moduli.append(n)
                    else:
                        self._check(operand, parent_ok=False)
                    continue
                for j in (i - 1, i + 1):
                    if not 0 <= j < len(operands):
                        continue
                    if self._uses_x(operands[j]):
                        raise _Unsupported(
                            f"{self.arg} may only be compared with constants, found "
                            f"{ast.unparse(operands[j])!r}")
                    value = self._constant(operands[j])
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        raise _Unsupported(f"cannot compare {self.arg} with {value!r}")
                    self.thresholds.append(float(value))
            return
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _BINOPS:
                raise _Unsupported(f"operator {type(node.op).__name__} is not supported")
            n = self._modulus(node)
            if n is not None:
                self.moduli.append(n)
                return
            self._check(node.left, parent_ok=False)
            self._check(node.right, parent_ok=False)
            return
        if isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, (ast.Not, ast.USub, ast.UAdd)):
                raise _Unsupported(f"operator {type(node.op).__name__} is not supported")
            self._check(node.operand, parent_ok=False)
            return
        if isinstance(node, ast.BoolOp):
            for value in node.values:
                self._check(value, parent_ok=False)
            return
        if isinstance(node, ast.IfExp):
            for part in (node.test, node.body, node.orelse):
                self._check(part, parent_ok=False)
            return
        raise _Unsupported(f"{type(node).__name__} expressions are not supported "
                           f"({ast.unparse(node)!r})")

    # -- evaluation --------------------------------------------------------------------
    def __call__(self, epoch: int) -> Any:
        return _evaluate(self.node, self.arg, epoch)


def _named_constant(node: ast.Attribute) -> float | None:
    if isinstance(node.value, ast.Name):
        return _NAMED_CONSTANTS.get((node.value.id, node.attr))
    return None


def _power(base: Any, exponent: Any) -> Any:
    if (isinstance(base, int) and isinstance(exponent, int)
            and abs(exponent) > _MAX_INT_EXPONENT):
        return float(base) ** float(exponent)
    return base ** exponent


def _evaluate(node: ast.AST, arg: str, x: int | None) -> Any:
    """Interpret a checked expression at ``x`` (None: the expression must not use x)."""
    if isinstance(node, ast.Name):
        if node.id != arg:
            raise _Unsupported(f"unknown name {node.id!r}")
        if x is None:
            raise _Unsupported(f"{arg!r} used where a constant is expected")
        return x
    if isinstance(node, ast.Constant):
        if not isinstance(node.value, (bool, int, float)) and node.value is not None:
            raise _Unsupported(f"constant {node.value!r} is not a number or boolean")
        return node.value
    if isinstance(node, ast.Attribute):
        value = _named_constant(node)
        if value is None:
            raise _Unsupported(f"attribute {ast.unparse(node)!r} is not a known constant")
        return value
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, arg, x)
        if isinstance(node.op, ast.Not):
            return not operand
        if isinstance(node.op, ast.USub):
            return -operand
        if isinstance(node.op, ast.UAdd):
            return +operand
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left = _evaluate(node.left, arg, x)
        right = _evaluate(node.right, arg, x)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        return _BINOPS[type(node.op)](left, right)
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            value: Any = True
            for part in node.values:
                value = _evaluate(part, arg, x)
                if not value:
                    return value
            return value
        value = False
        for part in node.values:
            value = _evaluate(part, arg, x)
            if value:
                return value
        return value
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, arg, x)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _evaluate(comparator, arg, x)
            if not _CMPOPS[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        test = _evaluate(node.test, arg, x)
        return _evaluate(node.body if test else node.orelse, arg, x)
    raise _Unsupported(f"{type(node).__name__} expressions are not supported")


# --------------------------------------------------------------------------- to a schedule
def _same(a: Any, b: Any) -> bool:
    """Equal values of the same kind (True and 1 differ; NaN equals NaN)."""
    if isinstance(a, bool) != isinstance(b, bool) or (a is None) != (b is None):
        return False
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def _change_points(thresholds: list[float]) -> list[int]:
    """Epochs at which a comparison of x with one of ``thresholds`` can change value."""
    points = {0}
    for c in thresholds:
        if math.isfinite(c) and abs(c) < _MAX_EPOCH:
            f = math.floor(c)
            points.update(p for p in (f, f + 1) if p >= 0)
    return sorted(points)


def _piecewise(starts: list[int], values: list[Any]) -> Schedule:
    """Simplest schedule for the step function ``values[i]`` from ``starts[i]`` (starts[0]=0)."""
    breakpoints: list[list[Any]] = []
    for start, value in zip(starts, values, strict=True):
        if not breakpoints or not _same(breakpoints[-1][1], value):
            breakpoints.append([start, value])
    if len(breakpoints) == 1:
        return Constant(breakpoints[0][1])
    if len(breakpoints) == 2 and all(isinstance(v, bool) for _, v in breakpoints):
        (_, first), (switch, _) = breakpoints
        return Until(switch) if first else FromEpoch(switch)
    if len(breakpoints) > _MAX_BREAKPOINTS:
        raise _Unsupported(f"the value changes {len(breakpoints) - 1} times; at most "
                           f"{_MAX_BREAKPOINTS - 1} changes are supported")
    return Piecewise(breakpoints)


def _minimal_period(cycle: list[Any]) -> int:
    n = len(cycle)
    for d in range(1, n + 1):
        if n % d == 0 and all(_same(cycle[i], cycle[i % d]) for i in range(n)):
            return d
    return n


def _to_schedule(body: _Body) -> Schedule:
    points = _change_points(body.thresholds)
    period = math.lcm(*body.moduli) if body.moduli else 1
    if period == 1:
        return _piecewise(points, [body(p) for p in points])
    start = points[-1]  # from here on every comparison with x is constant
    span = start + 2 * period
    if span > _MAX_PERIODIC_SPAN:
        raise _Unsupported(f"periodic terms (period {period}) combined with thresholds up to "
                           f"{start} are too large to resolve")
    values = [body(e) for e in range(span)]
    p = _minimal_period(values[start:start + period])
    if p == 1:
        return _piecewise(list(range(start + 1)), values[:start + 1])
    cycle = values[start:start + p]
    counts = [sum(_same(v, w) for w in cycle) for v in cycle]
    distinct = {i for i in range(p) if all(not _same(cycle[i], cycle[j]) for j in range(i))}
    if len(distinct) == 2:
        # the value taken once per period is "on"; with period 2 either may be, truthy first
        singles = sorted((i for i in range(p) if counts[i] == 1),
                         key=lambda i: not bool(cycle[i]))
        for pos in singles:
            on = cycle[pos]
            off = next(v for v in cycle if not _same(v, on))
            for offset in range(start + p):
                if _same(values[offset], on) and all(
                        _same(values[e], on if e >= offset and (e - offset) % p == 0 else off)
                        for e in range(span)):
                    return EveryN(p, offset=offset, on=on, off=off)
    raise _Unsupported(
        f"the value repeats with period {p} in a way no schedule expresses (EveryN has one "
        "'on' epoch per period, from an offset)")


# --------------------------------------------------------------------------- public API
def parse_lambda(source: str, parameter: str = "value") -> Schedule:
    """The :class:`Schedule` equal to the string lambda ``source`` at every epoch.

    ``parameter`` names the setting in error messages. Raises ``ValueError`` (naming the
    parameter and quoting ``source``) for text that is not a supported one-argument lambda.
    """
    if not isinstance(source, str):
        raise ValueError(f"{parameter}: expected a lambda as a string, found "
                         f"{type(source).__name__}")
    text = source.strip()

    def fail(why: str) -> ValueError:
        return ValueError(f"{parameter}: unsupported expression {source!r}: {why}")

    if len(text) > MAX_SOURCE_LENGTH:
        raise fail(f"longer than {MAX_SOURCE_LENGTH} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise fail(f"not valid Python syntax ({type(exc).__name__})") from None
    lam = tree.body
    if not isinstance(lam, ast.Lambda):
        raise fail("expected 'lambda x: ...'")
    args = lam.args
    if (len(args.args) != 1 or args.posonlyargs or args.kwonlyargs or args.vararg
            or args.kwarg or args.defaults):
        raise fail("expected a lambda of exactly one argument, the epoch number")
    try:
        body = _Body(lam.body, args.args[0].arg)
        return _to_schedule(body)
    except _Unsupported as exc:
        raise fail(str(exc)) from None
    except (ArithmeticError, TypeError, ValueError, RecursionError, MemoryError) as exc:
        raise fail(f"evaluating it failed ({type(exc).__name__}: {exc})") from None


def to_schedule(value: Any, parameter: str = "value") -> Schedule:
    """Schedule from a reference-style value: a Schedule, a string lambda or a plain value.

    Python functions (``lambda`` objects) are refused: their code cannot be inspected safely.
    """
    if isinstance(value, Schedule):
        return value
    if isinstance(value, str) and value.lstrip().startswith("lambda"):
        return parse_lambda(value, parameter)
    if callable(value) and not isinstance(value, type):
        raise ValueError(
            f"{parameter}: a Python function cannot be inspected safely; give the lambda as a "
            f"string (e.g. \"lambda x: x > 10\") or a ptyframe Schedule (FromEpoch, EveryN, ...)")
    if isinstance(value, dict) and "type" in value:
        return Schedule.from_config(value)
    return Constant(value)


def map_schedule_values(schedule: Schedule, fn: Callable[[Any], Any]) -> Schedule:
    """The same schedule with every value it can take replaced by ``fn(value)``."""
    if isinstance(schedule, Constant):
        return Constant(fn(schedule.value))
    if isinstance(schedule, EveryN):
        return EveryN(schedule.n, offset=schedule.offset, on=fn(schedule.on),
                      off=fn(schedule.off))
    if isinstance(schedule, FromEpoch):
        return FromEpoch(schedule.start, on=fn(schedule.on), off=fn(schedule.off))
    if isinstance(schedule, Until):
        return Until(schedule.stop, on=fn(schedule.on), off=fn(schedule.off))
    if isinstance(schedule, Piecewise):
        return Piecewise([[e, fn(v)] for e, v in schedule.breakpoints],
                         before=None if schedule.before is None else fn(schedule.before))
    raise ValueError(f"cannot convert the values of a {type(schedule).__name__} schedule")
