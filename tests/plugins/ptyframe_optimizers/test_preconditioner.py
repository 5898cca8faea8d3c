"""The quasi-Newton family's optional diagonal preconditioner."""

from __future__ import annotations

import numpy as np
import pytest
from ptyframe_optimizers.quasi_newton import GradientDescent, QuasiNewton

from ptyframe.testing import prepared


def diagonal_problem(curvatures: np.ndarray):
    """L = sum_i h_i (x_i - 1)^2 (real x): a badly scaled bowl with minimum at 1."""

    def objective(p):
        r = p["x"] - 1.0
        return float(np.sum(curvatures * r * r)), {"x": curvatures * r}  # 1/2 dL/dx

    return objective


def iterations_to(opt, objective, n, preconditioner=None, tol=1e-8, limit=400):
    opt = prepared(opt)
    state = opt.init_state()
    params = {"x": np.zeros(n)}
    value, grads = objective(params)
    for i in range(limit):
        res = opt.step(params, value, grads, objective, state, preconditioner=preconditioner)
        params, value, grads = res.params, res.value, res.grads
        if np.max(np.abs(params["x"] - 1.0)) < tol:
            return i + 1
    return limit


def test_exact_diagonal_preconditioner_lets_lbfgs_solve_a_badly_scaled_bowl_at_once():
    h = np.logspace(-3, 3, 40)
    objective = diagonal_problem(h)
    opt = QuasiNewton(history_length=3)
    assert iterations_to(opt, objective, h.size) == 400  # 1e6 condition number: stuck
    assert iterations_to(opt, objective, h.size, preconditioner={"x": 1.0 / h}) <= 3


def test_preconditioned_gradient_descent_converges_where_plain_does_not():
    h = np.logspace(-3, 3, 40)
    objective = diagonal_problem(h)
    assert iterations_to(GradientDescent(), objective, h.size) == 400
    # the unscaled first trial (parameter norm 1) and weak Wolfe steps: linear convergence
    assert iterations_to(GradientDescent(), objective, h.size,
                         preconditioner={"x": 1.0 / h}) < 200


def test_preconditioner_for_a_block_not_stepped_is_ignored():
    h = np.ones(4)
    steps = iterations_to(QuasiNewton(), diagonal_problem(h), 4,
                          preconditioner={"other": np.ones(3)})
    assert steps <= 3


@pytest.mark.parametrize("bad, message", [
    (np.ones(3), "broadcasting"),
    (-np.ones(4), "> 0"),
    (np.full(4, np.nan), "> 0"),
    (np.ones(4, complex), "real"),
])
def test_bad_preconditioner_is_one_clear_error(bad, message):
    opt = prepared(QuasiNewton())
    objective = diagonal_problem(np.ones(4))
    params = {"x": np.zeros(4)}
    value, grads = objective(params)
    with pytest.raises(ValueError, match=message) as info:
        opt.step(params, value, grads, objective, opt.init_state(), preconditioner={"x": bad})
    assert "preconditioner['x']" in str(info.value)
