"""Numerical checks every component author can run: adjoint (dot-product) and gradient tests,
and a minimal :class:`ModelContext` to prepare a component outside a reconstruction.

Gradient convention checked here: g = dL/d conj(p) for complex blocks and g = 1/2 dL/dp for
real blocks, so that the directional derivative along d is 2 Re <g, d> for every block.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np

from ptyframe.components import ModelComponent, ModelContext
from ptyframe.core.device import Device

__all__ = ["random_like", "inner", "check_adjoint", "check_gradient", "GradientCheckError",
           "model_context", "prepared"]

C = TypeVar("C", bound=ModelComponent)


class GradientCheckError(AssertionError):
    """A gradient or adjoint check failed."""


def _host(a: Any) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


def model_context(device: Device | None = None, **fields: Any) -> ModelContext:
    """A :class:`ModelContext` for tests: ``device`` (default: CPU, double precision) and the
    given ``fields``; the rest are placeholders (window (1, 1), 1 Å pixels, 0.025 Å
    wavelength, one measurement) for components that do not depend on them."""
    defaults: dict[str, Any] = {"window": (1, 1), "pixel_size_A": 1.0, "wavelength_A": 0.025,
                                "n_measurements": 1}
    defaults.update(fields)
    return ModelContext(device=device if device is not None else Device("cpu", "double"),
                        **defaults)


def prepared(component: C, device: Device | None = None, **fields: Any) -> C:
    """``component`` after ``prepare(model_context(device, **fields))``, for one-line use in
    tests: ``loss = prepared(MyLoss())``."""
    component.prepare(model_context(device, **fields))
    return component


def random_like(array: Any, rng: np.random.Generator, device: Device | None = None) -> Any:
    """Random array with the shape and dtype (real/complex) of ``array``, on ``device`` (host
    NumPy when None)."""
    xp = np if device is None else device.xp
    shape = array.shape
    if np.iscomplexobj(array):
        host = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    else:
        host = rng.standard_normal(shape)
    return xp.asarray(host.astype(array.dtype))


def inner(a: Any, b: Any) -> complex:
    """<a, b> = sum conj(a) b, accumulated in double precision."""
    return complex(np.vdot(_host(a).astype(np.complex128).ravel(),
                           _host(b).astype(np.complex128).ravel()))


def check_adjoint(forward: Callable[[Any], Any], adjoint: Callable[[Any], Any], x: Any,
                  y: Any, rtol: float = 1e-6) -> float:
    """Dot-product test <y, A x> == <A^H y, x> for a linear ``forward`` and its ``adjoint``.

    Returns the relative mismatch; raises :class:`GradientCheckError` above ``rtol``.
    """
    lhs = inner(y, forward(x))
    rhs = inner(adjoint(y), x)
    err = abs(lhs - rhs) / max(abs(lhs), abs(rhs), 1e-300)
    if err > rtol:
        raise GradientCheckError(
            f"adjoint test failed: <y, A x> = {lhs:.10g}, <A^H y, x> = {rhs:.10g}, "
            f"relative mismatch {err:.3g} > {rtol:g}"
        )
    return err


def check_gradient(objective: Callable[[Mapping[str, Any]], float],
                   params: Mapping[str, Any], grads: Mapping[str, Any], block: str,
                   rng: np.random.Generator | None = None, step: float | None = None,
                   direction: Any | None = None, rtol: float = 1e-4,
                   device: Device | None = None) -> float:
    """Central finite difference of ``objective`` along a random direction in ``block``.

    Compares (L(p + h d) - L(p - h d)) / (2 h) with 2 Re <g, d>. ``step`` defaults to a value
    suited to the block's precision and size; the random direction is made on ``device``
    (host NumPy when None). Returns the relative error; raises
    :class:`GradientCheckError` above ``rtol``.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    base = params[block]
    d = direction if direction is not None else random_like(base, rng, device)
    scale = float(np.linalg.norm(_host(base).ravel())) / max(
        float(np.linalg.norm(_host(d).ravel())), 1e-300)
    if step is None:
        single = _host(base).dtype in (np.float32, np.complex64)
        step = (1e-3 if single else 1e-6) * max(scale, 1e-3)

    def shifted(sign: float) -> float:
        trial = dict(params)
        trial[block] = base + (sign * step) * d
        return float(objective(trial))

    numeric = (shifted(+1.0) - shifted(-1.0)) / (2 * step)
    analytic = 2.0 * inner(grads[block], d).real
    err = abs(numeric - analytic) / max(abs(numeric), abs(analytic), 1e-300)
    if err > rtol:
        raise GradientCheckError(
            f"gradient check failed for block {block!r}: finite difference {numeric:.10g}, "
            f"analytic 2 Re<g, d> = {analytic:.10g}, relative error {err:.3g} > {rtol:g}"
        )
    return err
