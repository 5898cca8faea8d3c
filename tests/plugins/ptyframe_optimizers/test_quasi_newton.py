"""Tests of the first-party quasi-Newton optimizers (L-BFGS, gradient descent, CG)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ptyframe_optimizers import ptyframe_register_components
from ptyframe_optimizers.quasi_newton import (
    ConjugateGradient,
    GradientDescent,
    QuasiNewton,
    QuasiNewtonState,
)

from ptyframe.components import Optimizer, StepResult
from ptyframe.core.device import Device
from ptyframe.testing import prepared


def run(opt, objective, params, steps, tol=None, solution=None):
    """Iterate ``steps`` times (or until the relative error to ``solution`` is below tol)."""
    opt = prepared(opt)
    state = opt.init_state()
    value, grads = objective(params)
    for i in range(steps):
        res = opt.step(params, value, grads, objective, state)
        params, value, grads = res.params, res.value, res.grads
        if tol is not None and rel_error(params, solution) < tol:
            return params, i + 1, state
    return params, steps, state


def rel_error(params, solution):
    num = sum(np.sum(np.abs(params[k] - solution[k]) ** 2) for k in solution)
    den = sum(np.sum(np.abs(solution[k]) ** 2) for k in solution)
    return float(np.sqrt(num / den))


def quadratic_problem(seed=0, scale=1.0, dtype=np.complex128, rdtype=np.float64):
    """L = ||A z - b||^2 + ||scale C x - d||^2 for complex z (8, 8) and real x (5,)."""
    rng = np.random.default_rng(seed)
    a = (rng.normal(size=(160, 64)) + 1j * rng.normal(size=(160, 64))) / np.sqrt(2)
    z_true = rng.normal(size=(8, 8)) + 1j * rng.normal(size=(8, 8))
    b = a @ z_true.ravel()
    c = rng.normal(size=(12, 5))
    x_true = rng.normal(size=5) / scale
    d = scale * c @ x_true

    def objective(p):
        z, x = p["z"].astype(np.complex128), p["x"].astype(np.float64)
        rz = a @ z.ravel() - b
        rx = scale * c @ x - d
        value = float(np.vdot(rz, rz).real + rx @ rx)
        gz = (a.conj().T @ rz).reshape(8, 8)   # dL/d conj(z)
        gx = scale * c.T @ rx                  # 1/2 dL/dx
        return value, {"z": gz.astype(dtype), "x": gx.astype(rdtype)}

    start = {"z": np.zeros((8, 8), dtype), "x": np.zeros(5, rdtype)}
    return objective, start, {"z": z_true, "x": x_true}


def rosenbrock(p):
    x, y = p["xy"]
    value = (1 - x) ** 2 + 100 * (y - x * x) ** 2
    grad = np.array([-2 * (1 - x) - 400 * x * (y - x * x), 200 * (y - x * x)])
    return float(value), {"xy": 0.5 * grad}


def test_registered_components():
    classes = ptyframe_register_components()
    assert {c.name for c in classes} == {"quasi_newton", "gradient_descent", "conjugate_gradient"}
    for cls in classes:
        assert issubclass(cls, Optimizer) and cls.kind == "optimizer"
        opt = cls()
        config = opt.to_config()
        assert config["type"] == cls.name
        rebuilt = cls(**{k: v for k, v in config.items() if k != "type"})
        assert rebuilt == opt
    assert GradientDescent().history_length == 0
    assert ConjugateGradient().history_length == 1


def test_lbfgs_converges_on_complex_quadratic_faster_than_gd():
    objective, start, solution = quadratic_problem()
    params, n_qn, _ = run(QuasiNewton(history_length=10), objective, start, 60, 1e-8, solution)
    assert rel_error(params, solution) < 1e-8, n_qn
    assert params["z"].dtype == np.complex128 and params["x"].dtype == np.float64
    _, n_gd, _ = run(GradientDescent(), objective, start, 300, 1e-8, solution)
    assert n_qn < n_gd


def test_conjugate_gradient_converges():
    objective, start, solution = quadratic_problem(seed=1)
    params, _, _ = run(ConjugateGradient(), objective, start, 300, 1e-6, solution)
    assert rel_error(params, solution) < 1e-6


def test_single_precision_blocks_keep_dtype():
    objective, start, solution = quadratic_problem(dtype=np.complex64, rdtype=np.float32)
    params, _, _ = run(QuasiNewton(), objective, start, 40, 1e-4, solution)
    assert params["z"].dtype == np.complex64 and params["x"].dtype == np.float32
    assert rel_error(params, solution) < 1e-4


def test_rosenbrock():
    start = {"xy": np.array([-1.2, 1.0])}
    state = QuasiNewton(history_length=10).init_state()
    opt = prepared(QuasiNewton(history_length=10))
    params, (value, grads) = start, rosenbrock(start)
    for _ in range(100):
        res = opt.step(params, value, grads, rosenbrock, state)
        params, value, grads = res.params, res.value, res.grads
        if value < 1e-14:
            break
    np.testing.assert_allclose(params["xy"], [1.0, 1.0], atol=1e-6)
    assert isinstance(state, QuasiNewtonState) and len(state.history) > 0


@pytest.mark.parametrize("bad", ["increasing", "nan"])
def test_rejected_step_resets_history(bad):
    objective, start, _ = quadratic_problem()
    opt = prepared(QuasiNewton(max_count=6))
    state = opt.init_state()
    value, grads = objective(start)
    params = start
    for _ in range(3):  # build some history
        res = opt.step(params, value, grads, objective, state)
        params, value, grads = res.params, res.value, res.grads
    assert len(state.history) == 3

    def broken(p):
        f, g = objective(p)
        if bad == "nan":
            return float("nan"), g
        return value + 1.0, {k: -v for k, v in g.items()}  # always worse, wrong gradient

    res = opt.step(params, value, grads, broken, state)
    assert not res.accepted and res.step_size == 0.0
    assert res.info["line_search"] == "rejected"
    assert res.evaluations == 6
    assert res.params["z"] is params["z"] and res.value == value
    assert len(state.history) == 0 and state.rejections == 1
    # the next step with the sound objective goes on (steepest descent restart)
    res = opt.step(params, value, grads, objective, state)
    assert res.accepted and res.value < value


def test_inputs_not_mutated():
    objective, start, _ = quadratic_problem()
    opt = prepared(QuasiNewton())
    state = opt.init_state()
    value, grads = objective(start)
    params = {k: v + 0.1 for k, v in start.items()}
    for _ in range(4):
        p_copy = {k: v.copy() for k, v in params.items()}
        g_copy = {k: v.copy() for k, v in grads.items()}
        res = opt.step(params, value, grads, objective, state)
        for k in params:
            np.testing.assert_array_equal(params[k], p_copy[k])
            np.testing.assert_array_equal(grads[k], g_copy[k])
            assert res.params[k] is not params[k]
        params, value, grads = res.params, res.value, res.grads


@pytest.mark.parametrize("opt", [GradientDescent(), QuasiNewton(history_length=0)])
def test_history_zero_never_stores_pairs(opt):
    objective, start, _ = quadratic_problem()
    opt = prepared(opt)
    state = opt.init_state()
    params, (value, grads) = start, objective(start)
    for _ in range(10):
        res = opt.step(params, value, grads, objective, state)
        assert res.accepted and res.value <= value
        params, value, grads = res.params, res.value, res.grads
        assert len(state.history) == 0 and state.scales is None


def test_history_length_bound_and_reset():
    objective, start, _ = quadratic_problem()
    opt = QuasiNewton(history_length=3)
    _, _, state = run(opt, objective, start, 8)
    assert len(state.history) == 3
    opt.reset(state)
    assert len(state.history) == 0
    assert QuasiNewton(history_length="inf").max_history is None
    assert QuasiNewton(history_length=-1).history_length == "inf"


@pytest.mark.parametrize("field, value", [
    ("history_length", -2), ("history_length", "many"), ("history_length", 1.5),
    ("c1", 0.0), ("c1", 1.0), ("c2", 1.5), ("c2", 1e-5),
    ("reduce_factor", 0.95), ("reduce_factor", 0.05), ("optimism", 1.0),
    ("max_count", 0), ("max_count", 2.5), ("min_step", 0.0), ("initial_step", -1.0),
    ("initial_step", float("nan")), ("block_scaling", "yes"),
])
def test_bad_settings(field, value):
    with pytest.raises(ValueError, match=field) as info:
        QuasiNewton(**{field: value})
    assert "expected" in str(info.value) and "found" in str(info.value)


def test_badly_scaled_blocks_converge_with_block_scaling():
    objective, start, solution = quadratic_problem(seed=2, scale=1e4)
    params, n_steps, _ = run(QuasiNewton(block_scaling=True), objective, start, 80, 1e-8,
                             solution)
    assert rel_error(params, solution) < 1e-8, n_steps
    # one shared Barzilai-Borwein factor cannot serve both blocks
    params, _, _ = run(QuasiNewton(block_scaling=False), objective, start, 80)
    assert rel_error(params, solution) > 1e-6


def test_step_result_and_zero_gradient():
    opt = prepared(QuasiNewton())
    state = opt.init_state()

    def flat(p):
        return 1.0, {"a": np.zeros(3)}

    res = opt.step({"a": np.ones(3)}, 1.0, {"a": np.zeros(3)}, flat, state)
    assert isinstance(res, StepResult) and not res.accepted
    assert res.info["line_search"] == "converged" and res.evaluations == 0
    with pytest.raises(ValueError, match="value"):
        opt.step({"a": np.ones(3)}, float("nan"), {"a": np.zeros(3)}, flat, state)


# -------------------------------------------------------------------- serialisable state
def _save_and_load(tmp_path, arrays, info):
    """The exported state through .npy files and JSON, as a checkpoint keeps it."""
    folder = tmp_path / f"state{len(list(tmp_path.iterdir()))}"
    folder.mkdir()
    for key, array in arrays.items():
        np.save(folder / f"{key}.npy", array, allow_pickle=False)
    (folder / "info.json").write_text(json.dumps(info, allow_nan=False))
    loaded = {key: np.load(folder / f"{key}.npy", allow_pickle=False) for key in arrays}
    return loaded, json.loads((folder / "info.json").read_text())


def _steps(opt, objective, params, value, grads, state, n):
    for _ in range(n):
        res = opt.step(params, value, grads, objective, state)
        params, value, grads = res.params, res.value, res.grads
    return params, value, grads


PROBLEMS = {
    "complex_and_real": lambda: quadratic_problem(),
    "single_precision": lambda: quadratic_problem(1, dtype=np.complex64, rdtype=np.float32),
    "rosenbrock": lambda: (rosenbrock, {"xy": np.array([-1.2, 1.0])}, None),
}


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("opt", [QuasiNewton(history_length=3), QuasiNewton(), GradientDescent(),
                                 ConjugateGradient()], ids=lambda o: f"{o.name}-{o.history_length}")
@pytest.mark.parametrize(("k", "n"), [(1, 4), (5, 6)])
def test_exported_state_resumes_bit_for_bit(tmp_path, opt, problem, k, n):
    """k steps, export -> .npy + JSON -> import, n steps == k + n steps without a break."""
    opt = prepared(opt)
    objective, start, _ = PROBLEMS[problem]()
    value, grads = objective(start)
    reference = _steps(opt, objective, start, value, grads, opt.init_state(), k + n)

    state = opt.init_state()
    params, value, grads = _steps(opt, objective, start, value, grads, state, k)
    arrays, info = opt.export_state(state)
    assert len(arrays) == 2 * len(state.history) * len(start)
    restored = opt.import_state(*_save_and_load(tmp_path, arrays, info), Device("cpu", "double"))
    assert opt.export_state(restored)[1] == info
    resumed = _steps(opt, objective, params, value, grads, restored, n)

    assert resumed[1] == reference[1]
    for block in start:
        assert resumed[0][block].dtype == reference[0][block].dtype == start[block].dtype
        assert np.array_equal(resumed[0][block], reference[0][block])
        assert np.array_equal(resumed[2][block], reference[2][block])


def test_exported_state_is_a_copy_with_dtypes_and_counters():
    opt = prepared(QuasiNewton())
    objective, start, _ = quadratic_problem(2, dtype=np.complex64, rdtype=np.float32)
    _, _, state = run(opt, objective, start, 4)
    arrays, info = opt.export_state(state)
    assert {a.dtype for k, a in arrays.items() if k.endswith(".z")} == {np.dtype(np.complex64)}
    assert {a.dtype for k, a in arrays.items() if k.endswith(".x")} == {np.dtype(np.float32)}
    assert info["iterations"] == 4 and info["evaluations"] == state.evaluations
    assert info["layout"] == {"z": [[8, 8], "complex64"], "x": [[5], "float32"]}
    for array in arrays.values():
        array[...] = 0  # the exported arrays do not alias the live state
    assert all(np.any(pair.s["z"] != 0) for pair in state.history)
    restored = opt.import_state(arrays, info, Device("cpu", "single"))
    assert restored.layout == state.layout and restored.scales == state.scales
    assert [p.rho for p in restored.history] == [p.rho for p in state.history]


def test_import_names_a_missing_array():
    opt = prepared(QuasiNewton())
    objective, start, _ = quadratic_problem()
    _, _, state = run(opt, objective, start, 3)
    arrays, info = opt.export_state(state)
    del arrays["history.0.y.x"]
    with pytest.raises(ValueError, match="history.0.y.x"):
        opt.import_state(arrays, info, Device("cpu", "double"))


def test_fresh_state_round_trips():
    opt = prepared(QuasiNewton())
    arrays, info = opt.export_state(opt.init_state())
    assert arrays == {} and json.loads(json.dumps(info)) == info
    state = opt.import_state(arrays, info, Device("cpu", "double"))
    assert len(state.history) == 0 and state.scales is None and state.layout is None
