"""Line-searched L-BFGS on a dictionary of complex or real parameter blocks.

Conventions
-----------
Gradients follow ptyframe's convention g = dL/d conj(p) (1/2 dL/dp for real blocks), so the
change of the loss along a direction d is ``2 Re<g, d>`` with the real inner product
``Re<a, b> = sum(real(conj(a) * b))`` summed over all blocks. In that inner product a complex
block is just a real vector of twice the size, and Newton's step is ``d = -H g`` with H the
inverse of the Hessian of ``L/2`` -- which is what the secant pairs (s = dp, y = dg) estimate,
so that a well-conditioned quasi-Newton direction wants a step of 1.

Direction
---------
Two-loop recursion over the stored pairs with one shared ``rho = 1/Re<s, y>`` (all blocks
together) and a block-diagonal initial inverse Hessian ``H0 = diag(gamma_b)`` with one
Barzilai-Borwein factor per block, ``gamma_b = Re<s_b, y_b> / Re<y_b, y_b>`` from the newest
pair (``block_scaling=False``: one shared ``gamma = Re<s, y> / Re<y, y>``). A pair is stored only
when ``Re<s, y> > 0``. A block whose own curvature is not positive keeps its previous factor
(or the shared one).

Preconditioner
--------------
An optional diagonal preconditioner ``{block: M_b}`` (positive real arrays broadcasting
against the block, e.g. one factor per scan position from its local Gauss-Newton curvature)
shapes the initial inverse Hessian: ``H0 = diag(gamma_b M_b)`` with
``gamma_b = Re<s_b, y_b> / Re<y_b, M_b y_b>``; the unscaled direction is ``-M g``. The line
search still uses the true gradient, so the preconditioner changes the path, not the
objective.

Initial trial step
------------------
* With curvature information (pairs, or the per-block factors remembered across a
  :meth:`QuasiNewton.reset`): the direction is already scaled, the first trial is 1.
* Without (first iteration, after a rejected step, or gradient descent): the direction is -g
  and the first trial is the last step accepted along -g or, the very first time,
  ``initial_step * min(1, 1/||g||)`` -- the parameters move by ``initial_step`` in norm (a step
  of 1 when the gradient is already small, so a tiny gradient never asks for a huge step).

Line search (weak Wolfe with bracketing)
----------------------------------------
A trial ``a`` is evaluated at ``p + a d``. It satisfies Armijo when it is finite and
``f(a) <= f0 + c1 a dphi0``; it is accepted when it also satisfies the *weak* curvature
condition ``dphi(a) >= c2 dphi0`` (a step past the 1-D minimum is fine as long as it decreased
the loss enough; strong Wolfe would reject it). Armijo fails -> the step is an upper bracket
end and ``a *= reduce_factor`` (or, once a lower end is known, bisection). Armijo holds but the
curvature fails -> the step is a lower bracket end and an acceptable fallback, and
``a *= optimism`` (or bisection once an upper end is known). After ``max_count`` trials, or
when the trial falls below ``min_step``, the best Armijo trial is accepted ("armijo_only"); if
there is none, the step is rejected: parameters unchanged, history and scaling cleared,
``accepted=False``, ``step_size=0``.
"""

from __future__ import annotations

import math
import numbers
from collections import deque
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np

from ptyframe.components import Alias, Objective, Optimizer, StepResult
from ptyframe.core.device import Device

__all__ = [
    "ConjugateGradient", "CurvaturePair", "GradientDescent", "QuasiNewton", "QuasiNewtonState",
]


# --------------------------------------------------------------------------- validators

def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(
        value)


def _open_interval(low: float, high: float):
    def check(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not _real(value) or not low < value < high:
            raise ValueError(
                f"{attribute.name}: expected a number in ({low}, {high}), found {value!r}")
    return check


def _closed_interval(low: float, high: float):
    def check(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not _real(value) or not low <= value <= high:
            raise ValueError(
                f"{attribute.name}: expected a number in [{low}, {high}], found {value!r}")
    return check


def _greater_than(low: float):
    def check(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not _real(value) or not value > low:
            raise ValueError(
                f"{attribute.name}: expected a finite number > {low}, found {value!r}")
    return check


def _positive_int(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{attribute.name}: expected an integer >= 1, found {value!r}")


def _is_bool(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{attribute.name}: expected true or false, found {value!r}")


def _history_converter(value: Any) -> Any:
    """"inf", -1 and math.inf mean unlimited (stored as "inf"); integers stay integers."""
    if isinstance(value, str) and value.strip().lower() in ("inf", "infinite", "infinity"):
        return "inf"
    if isinstance(value, float) and math.isinf(value) and value > 0:
        return "inf"
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return "inf" if int(value) == -1 else int(value)
    return value


def _history_validator(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value != "inf" and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise ValueError(
            f"{attribute.name}: expected an integer >= 0, or \"inf\" / -1 for unlimited, "
            f"found {value!r}")


# --------------------------------------------------------------------------- block algebra

def _dot(a: Mapping[str, Any], b: Mapping[str, Any], xp: Any) -> float:
    """Re<a, b> summed over the blocks."""
    return sum(_bdot(a[k], b[k], xp) for k in a)


def _bdot(a: Any, b: Any, xp: Any) -> float:
    """Re<a, b> accumulated in double precision.

    Deliberately not ``vdot``: multi-threaded BLAS dot products were measured 100x slower than
    a plain reduction on a busy 2-core machine.
    """
    if xp.iscomplexobj(a) or xp.iscomplexobj(b):
        a_c = a if xp.iscomplexobj(a) else a.astype(b.dtype)
        b_c = b if xp.iscomplexobj(b) else b.astype(a.dtype)
        return float((a_c.real * b_c.real).sum(dtype=xp.float64)
                     + (a_c.imag * b_c.imag).sum(dtype=xp.float64))
    return float((a * b).sum(dtype=xp.float64))


def _like(d: Any, p: Any, xp: Any) -> Any:
    """``d`` in the dtype of block ``p`` (real part for a real block)."""
    if xp.iscomplexobj(d) and not xp.iscomplexobj(p):
        d = xp.real(d)
    return d.astype(p.dtype, copy=False)


# --------------------------------------------------------------------------- state

@attrs.frozen(eq=False)
class CurvaturePair:
    """One secant pair: s = p_new - p_old, y = g_new - g_old, rho = 1/Re<s, y>."""

    s: dict[str, Any]
    y: dict[str, Any]
    rho: float


@attrs.define(eq=False)
class QuasiNewtonState:
    """Explicit state of a :class:`QuasiNewton` optimizer.

    ``history``: the stored curvature pairs, oldest first; ``scales``: per-block
    Barzilai-Borwein factors of the initial inverse Hessian (kept across :meth:`reset`);
    ``layout``: block names, shapes and dtypes the history belongs to (a change drops it);
    ``step_size``: last accepted step; ``gd_step``: first trial of the next unscaled -g step;
    counters of iterations, objective evaluations, rejected steps, resets and curvature pairs
    skipped for non-positive curvature.
    """

    history: deque = attrs.field(factory=deque)
    scales: dict[str, float] | None = None
    layout: dict[str, tuple] | None = None
    step_size: float = 0.0
    gd_step: float = 0.0
    iterations: int = 0
    evaluations: int = 0
    rejections: int = 0
    resets: int = 0
    skipped_pairs: int = 0


#: scalar fields of QuasiNewtonState (step sizes, then counters), saved as JSON numbers
_FLOAT_STATE = ("step_size", "gd_step")
_INT_STATE = ("iterations", "evaluations", "rejections", "resets", "skipped_pairs")


# --------------------------------------------------------------------------- optimizer

@attrs.define(kw_only=True)
class QuasiNewton(Optimizer):
    """L-BFGS with a weak-Wolfe line search (see the module docstring for the algorithm).

    * ``history_length``: curvature pairs kept: 0 = gradient descent, 1 = conjugate-gradient
      like, N = L-BFGS, "inf" (or -1) = all [hist_length]
    * ``c1``: Armijo (sufficient decrease) constant of the Wolfe line search, 0 < c1 < c2
      [wolfe_c1_constant]
    * ``c2``: curvature constant of the (weak) Wolfe line search, c1 < c2 < 1
      [wolfe_c2_constant]
    * ``reduce_factor``: step multiplier, in [0.1, 0.9], when the Armijo condition fails
      [reduce_factor]
    * ``optimism``: step multiplier, > 1, when only the curvature condition fails [optimism]
    * ``max_count``: objective evaluations per line search at most (the reference's value + 2)
      [max_count]
    * ``min_step``: smallest trial step, > 0; below it the line search stops [min_step]
    * ``initial_step``: distance (parameter norm) of the first trial along an unscaled -g
      direction [update_step_bfgs]
    * ``block_scaling``: one Barzilai-Borwein factor per parameter block in the initial
      inverse Hessian (false: one shared factor)

    When the line search stops without a Wolfe step (``max_count`` or ``min_step``), the best
    Armijo trial is accepted; without one the step is rejected and the history cleared.
    """

    name = "quasi_newton"
    aliases = (Alias("lbfgs", {"history_length": 10}), Alias("l-bfgs", {"history_length": 10}))

    history_length: int | str = attrs.field(
        default=10, converter=_history_converter, validator=_history_validator)
    c1: float = attrs.field(default=1e-4, validator=_open_interval(0.0, 1.0))
    c2: float = attrs.field(default=0.9, validator=_open_interval(0.0, 1.0))
    reduce_factor: float = attrs.field(default=0.5, validator=_closed_interval(0.1, 0.9))
    optimism: float = attrs.field(default=3.0, validator=_greater_than(1.0))
    max_count: int = attrs.field(default=15, validator=_positive_int)
    min_step: float = attrs.field(default=1e-20, validator=_greater_than(0.0))
    initial_step: float = attrs.field(default=1.0, validator=_greater_than(0.0))
    block_scaling: bool = attrs.field(default=True, validator=_is_bool)

    def __attrs_post_init__(self) -> None:
        if not self.c1 < self.c2:
            raise ValueError(f"c2: expected a number in (c1={self.c1}, 1), found {self.c2!r}")

    @property
    def max_history(self) -> int | None:
        """Number of pairs kept (None: unlimited)."""
        return None if self.history_length == "inf" else int(self.history_length)

    # ----------------------------------------------------------------- state handling
    def init_state(self) -> QuasiNewtonState:
        return QuasiNewtonState()

    def reset(self, state: QuasiNewtonState) -> None:
        """Forget the curvature pairs; the per-block scaling factors are kept."""
        state.history.clear()
        state.resets += 1

    def export_state(self, state: QuasiNewtonState
                     ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Host copies of the curvature pairs (``history.<i>.s.<block>``,
        ``history.<i>.y.<block>``) and the JSON-able rest: ``rho`` per pair, the block order,
        scaling factors, layout, step sizes and counters."""
        arrays: dict[str, np.ndarray] = {}
        for i, pair in enumerate(state.history):
            for part, blocks in (("s", pair.s), ("y", pair.y)):
                for block, array in blocks.items():
                    host = self.device.to_host(array)
                    arrays[f"history.{i}.{part}.{block}"] = host.copy() if host is array else host
        info: dict[str, Any] = {
            "history": [{"rho": pair.rho, "blocks": list(pair.s)} for pair in state.history],
            "scales": None if state.scales is None else dict(state.scales),
            "layout": None if state.layout is None else {
                k: [list(shape), dtype] for k, (shape, dtype) in state.layout.items()},
            **{field: float(getattr(state, field)) for field in _FLOAT_STATE},
            **{field: int(getattr(state, field)) for field in _INT_STATE},
        }
        return arrays, info

    def import_state(self, arrays: Mapping[str, np.ndarray], info: Mapping[str, Any],
                     device: Device) -> QuasiNewtonState:
        """The state :meth:`export_state` described, its arrays on ``device`` with their
        original dtype; a missing array is a ValueError naming it."""
        history: deque = deque()
        for i, pair in enumerate(info.get("history", ())):
            parts = {}
            for part in ("s", "y"):
                blocks = {}
                for block in pair["blocks"]:
                    key = f"history.{i}.{part}.{block}"
                    if key not in arrays:
                        raise ValueError(f"optimizer state: expected array {key!r}, found only "
                                         f"{sorted(arrays)}")
                    host = np.asarray(arrays[key])
                    blocks[block] = device.asarray(host, dtype=host.dtype)
                parts[part] = blocks
            history.append(CurvaturePair(s=parts["s"], y=parts["y"], rho=float(pair["rho"])))
        scales = info.get("scales")
        layout = info.get("layout")
        return QuasiNewtonState(
            history=history,
            scales=None if scales is None else {k: float(v) for k, v in scales.items()},
            layout=None if layout is None else {
                k: (tuple(int(n) for n in shape), str(dtype)) for k, (shape, dtype) in
                layout.items()},
            **{field: float(info[field]) for field in _FLOAT_STATE if field in info},
            **{field: int(info[field]) for field in _INT_STATE if field in info})

    def _forget(self, state: QuasiNewtonState) -> None:
        """Forget everything learned about the objective (after a rejected step)."""
        self.reset(state)
        state.scales = None

    # ----------------------------------------------------------------- direction
    def _direction(self, grads: dict[str, Any], state: QuasiNewtonState, xp: Any,
                   precond: Mapping[str, Any] | None = None
                   ) -> tuple[dict[str, Any], float, bool]:
        """(d = -H g, first trial step, whether d carries curvature scaling)."""
        precond = precond or {}

        def apply(k: str, v: Any) -> Any:
            return v * precond[k] if k in precond else v

        if self.max_history != 0 and (state.history or state.scales):
            q = dict(grads)
            alphas = []
            for pair in reversed(state.history):
                alpha = pair.rho * _dot(pair.s, q, xp)
                q = {k: q[k] - alpha * pair.y[k] for k in q}
                alphas.append(alpha)
            r = {k: state.scales[k] * apply(k, q[k]) for k in q}
            for pair, alpha in zip(state.history, reversed(alphas), strict=True):
                beta = pair.rho * _dot(pair.y, r, xp)
                r = {k: r[k] + (alpha - beta) * pair.s[k] for k in r}
            return {k: -r[k] for k in r}, 1.0, True
        d = {k: -apply(k, g) for k, g in grads.items()}
        if state.gd_step > 0:
            a0 = state.gd_step
        else:
            norm = math.sqrt(max(_dot(d, d, xp), 0.0))
            a0 = self.initial_step * min(1.0, 1.0 / norm) if norm > 0 else self.initial_step
        return d, a0, False

    # ----------------------------------------------------------------- curvature pair
    def _update_history(self, state: QuasiNewtonState, old: dict[str, Any],
                        new: dict[str, Any], g_old: dict[str, Any], g_new: dict[str, Any],
                        xp: Any, precond: Mapping[str, Any] | None = None) -> bool:
        if self.max_history == 0:
            return False
        precond = precond or {}
        s = {k: new[k] - old[k] for k in new}
        y = {k: g_new[k] - g_old[k] for k in new}
        sy_b = {k: _bdot(s[k], y[k], xp) for k in s}
        yy_b = {k: _bdot(y[k], y[k] * precond[k] if k in precond else y[k], xp) for k in s}
        sy, yy = sum(sy_b.values()), sum(yy_b.values())
        if not (math.isfinite(sy) and math.isfinite(yy) and sy > 0 and yy > 0):
            state.skipped_pairs += 1
            return False
        shared = sy / yy
        previous = state.scales or {}
        scales = {}
        for k in s:
            if not self.block_scaling:
                scales[k] = shared
            elif sy_b[k] > 0 and yy_b[k] > 0:
                scales[k] = sy_b[k] / yy_b[k]
            else:
                scales[k] = previous.get(k, shared)
        state.scales = scales
        state.history.append(CurvaturePair(s=s, y=y, rho=1.0 / sy))
        while self.max_history is not None and len(state.history) > self.max_history:
            state.history.popleft()
        return True

    # ----------------------------------------------------------------- step
    @staticmethod
    def _check_preconditioner(preconditioner: Mapping[str, Any] | None,
                              params: Mapping[str, Any], xp: Any) -> dict[str, Any]:
        """The preconditioner's entries for the blocks stepped here, checked: real, finite,
        positive, broadcasting against the block."""
        out: dict[str, Any] = {}
        for k, m in (preconditioner or {}).items():
            if k not in params:
                continue
            if xp.iscomplexobj(m):
                raise ValueError(f"preconditioner[{k!r}]: expected a real array, found complex")
            try:
                np.broadcast_shapes(tuple(m.shape), tuple(params[k].shape))
            except ValueError:
                raise ValueError(f"preconditioner[{k!r}]: expected a shape broadcasting to "
                                 f"{tuple(params[k].shape)}, found {tuple(m.shape)}") from None
            if not bool(xp.all(xp.isfinite(m))) or not bool(xp.all(m > 0)):
                raise ValueError(f"preconditioner[{k!r}]: expected finite values > 0")
            out[k] = m
        return out

    def step(self, params: Mapping[str, Any], value: float, grads: Mapping[str, Any],
             objective: Objective, state: QuasiNewtonState,
             preconditioner: Mapping[str, Any] | None = None) -> StepResult:
        xp = self.device.xp
        precond = self._check_preconditioner(preconditioner, params, xp)
        f0 = float(value)
        if not math.isfinite(f0):
            raise ValueError(f"value: expected a finite objective value at the current point, "
                             f"found {f0}")
        params = dict(params)
        if set(grads) != set(params):
            raise ValueError(f"grads: expected one gradient per block {sorted(params)}, "
                             f"found {sorted(grads)}")
        g0 = {k: grads[k] for k in params}
        state.iterations += 1

        layout = {k: (tuple(p.shape), str(p.dtype)) for k, p in params.items()}
        was_reset = False
        if state.layout != layout:
            if state.layout is not None:
                self._forget(state)
                state.gd_step = 0.0
                was_reset = True
            state.layout = layout

        d, a0, scaled = self._direction(g0, state, xp, precond)
        dphi0 = 2.0 * _dot(g0, d, xp)
        if scaled and not (math.isfinite(dphi0) and dphi0 < 0):
            # not a descent direction: drop the curvature information, use -g
            self._forget(state)
            was_reset = True
            d, a0, scaled = self._direction(g0, state, xp, precond)
            dphi0 = 2.0 * _dot(g0, d, xp)
        d = {k: _like(d[k], params[k], xp) for k in params}

        def result(p, f, g, a, evals, accepted, status):
            return StepResult(
                params=p, value=f, grads=g, step_size=a, evaluations=evals,
                accepted=accepted,
                info={"directional_derivative": dphi0, "history": len(state.history),
                      "line_search": status, "reset": was_reset, "initial_trial": a0})

        if not (math.isfinite(dphi0) and dphi0 < 0):
            # zero gradient (a stationary point) or a non-finite one: nothing to do
            status = "converged" if dphi0 == 0 else "rejected"
            if status == "rejected":
                state.rejections += 1
            return result(params, f0, dict(g0), 0.0, 0, False, status)

        best = None  # (value, params, grads, step) of the best Armijo trial
        lo, hi = 0.0, math.inf
        a, evals, smallest, status = a0, 0, a0, "rejected"
        while evals < self.max_count and a >= self.min_step:
            trial = {k: (params[k] + a * d[k]).astype(params[k].dtype, copy=False)
                     for k in params}
            f, g = objective(trial)
            f = float(f)
            evals += 1
            smallest = min(smallest, a)
            dphi = 2.0 * _dot({k: g[k] for k in params}, d, xp) if math.isfinite(f) else math.nan
            if not (math.isfinite(f) and math.isfinite(dphi)) or f > f0 + self.c1 * a * dphi0:
                hi = a
                a = 0.5 * (lo + hi) if lo > 0 else a * self.reduce_factor
                continue
            if best is None or f < best[0]:
                best = (f, trial, g, a)
            if dphi >= self.c2 * dphi0:
                best, status = (f, trial, g, a), "wolfe"
                break
            lo = a
            a = 0.5 * (lo + hi) if math.isfinite(hi) else a * self.optimism
        state.evaluations += evals

        if best is None:
            self._forget(state)
            state.rejections += 1
            if not scaled:  # continue shrinking from where this search stopped
                state.gd_step = smallest * self.reduce_factor
            state.step_size = 0.0
            return result(params, f0, dict(g0), 0.0, evals, False, "rejected")

        if status != "wolfe":
            status = "armijo_only"
        f, new, g, a = best
        g = {k: g[k] for k in params}
        if not scaled:
            state.gd_step = a
        state.step_size = a
        self._update_history(state, params, new, g0, g, xp, precond)
        return result(new, f, g, a, evals, True, status)


@attrs.define(kw_only=True)
class GradientDescent(QuasiNewton):
    """Steepest descent with the same line search (no curvature history)."""

    name = "gradient_descent"

    history_length: int = attrs.field(default=0, init=False)


@attrs.define(kw_only=True)
class ConjugateGradient(QuasiNewton):
    """One-pair memory L-BFGS, which behaves like nonlinear conjugate gradient."""

    name = "conjugate_gradient"

    history_length: int = attrs.field(default=1, init=False)
