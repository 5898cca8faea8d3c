"""Forward model: adjoint tests of its linear pieces and finite-difference gradient checks."""

import numpy as np
import pytest
from ptyframe_losses.intensity_losses import LeastSquares, LeastSquaresSqrt, PoissonML
from ptyframe_propagators.multislice import Multislice

from ptyframe.components import PropagationGeometry
from ptyframe.core.device import Device
from ptyframe.testing import check_adjoint, check_gradient, random_like
from ptyframe.testing.problems import random_far_field_problem

LOSSES = [LeastSquaresSqrt(), PoissonML(), LeastSquares()]


def make_problem(n_slices, n_obj_modes, n_probe_modes, loss, batch_size=3, seed=1, n=16, N=7):
    return random_far_field_problem(
        Device("cpu", "double"), Multislice(slice_thickness_A=[2.0] * max(n_slices - 1, 1)),
        loss, n_slices=n_slices, n_object_modes=n_obj_modes, n_probe_modes=n_probe_modes,
        batch_size=batch_size, seed=seed, n=n, n_measurements=N)


@pytest.mark.parametrize("loss", LOSSES, ids=lambda c: c.name)
@pytest.mark.parametrize("layers", [(1, 1, 1), (3, 1, 1), (1, 2, 3), (3, 2, 2)],
                         ids=lambda t: "S{}_K{}_M{}".format(*t))
@pytest.mark.parametrize("block", ["object", "probe", "positions"])
def test_gradient_matches_finite_difference(loss, layers, block):
    model, params, rng = make_problem(*layers, loss)
    _, grads = model.value_and_grad(params)

    def objective(p):
        return model.value_and_grad(p, refine=())[0]

    check_gradient(objective, params, grads, block, rng=rng, rtol=1e-5)


def test_batching_does_not_change_value_or_gradient():
    model_a, params, _ = make_problem(2, 1, 2, LeastSquaresSqrt(), batch_size=2)
    model_b, _, _ = make_problem(2, 1, 2, LeastSquaresSqrt(), batch_size=100)
    va, ga = model_a.value_and_grad(params)
    vb, gb = model_b.value_and_grad(params)
    assert va == pytest.approx(vb, rel=1e-12)
    for key in ga:
        np.testing.assert_allclose(ga[key], gb[key], rtol=1e-10, atol=1e-12)


def test_subset_of_indices_matches_full_sum():
    model, params, _ = make_problem(1, 1, 1, LeastSquares(), batch_size=2)
    total, _ = model.value_and_grad(params, refine=())
    part_a, _ = model.value_and_grad(params, refine=(), indices=np.array([0, 2, 4, 6]))
    part_b, _ = model.value_and_grad(params, refine=(), indices=np.array([1, 3, 5]))
    assert part_a + part_b == pytest.approx(total, rel=1e-12)


@pytest.mark.parametrize("n_slices", [2, 4])
def test_multislice_adjoints(n_slices):
    rng = np.random.default_rng(3)
    dev = Device("cpu", "double")
    prop = Multislice(slice_thickness_A=1.5, rolloff=0.1)
    prop.prepare(PropagationGeometry((16, 16), 0.3, 0.025, n_slices, dev))
    wave = random_like(np.zeros((1, 2, 3, 16, 16), complex), rng)
    trans = random_like(np.zeros((n_slices, 2, 1, 3, 16, 16), complex), rng)
    exit_wave, cache = prop.forward(wave, trans)
    y = random_like(exit_wave, rng)
    # linear in the incident wave for a fixed object
    check_adjoint(lambda w: prop.forward(w, trans)[0],
                  lambda g: prop.vjp(g, prop.forward(wave, trans)[1])[0], wave, y, rtol=1e-10)
    # the Fresnel step alone
    check_adjoint(lambda w: prop.propagate(w, 0), lambda g: prop.propagate_adjoint(g, 0),
                  wave[0], random_like(wave[0], rng), rtol=1e-10)


def test_intensity_is_conserved_for_a_pure_phase_object():
    # |FFT_ortho| preserves norm and a unit-modulus transmission preserves it too
    model, params, _ = make_problem(1, 1, 2, LeastSquares())
    params["object"] = np.exp(1j * np.angle(params["object"]))
    patterns = model.intensities(params)
    power = np.sum(np.abs(params["probe"]) ** 2)
    np.testing.assert_allclose(patterns.sum(axis=(1, 2)), power, rtol=1e-10)


def test_bad_block_shapes_are_reported():
    model, params, _ = make_problem(1, 1, 1, LeastSquares())
    bad = dict(params, probe=params["probe"][:, :8])
    with pytest.raises(ValueError, match="probe"):
        model.check_blocks(bad)
    bad = dict(params, positions=params["positions"] + 100)
    with pytest.raises(ValueError, match="positions"):
        model.check_blocks(bad)


def test_window_gather_and_scatter_are_adjoint():
    rng = np.random.default_rng(5)
    dev = Device("cpu", "double")
    planes = random_like(np.zeros((3, 30, 30), complex), rng)
    corners = rng.integers(0, 30 - 8, (6, 2))
    out = np.empty((3, 6, 8, 8), complex)
    dev.gather_windows(planes, corners, out)
    np.testing.assert_array_equal(out[1, 4], planes[1, corners[4, 0]:corners[4, 0] + 8,
                                                    corners[4, 1]:corners[4, 1] + 8])

    def scatter(v):
        target = np.zeros_like(planes)
        dev.scatter_add_windows(target, corners, v)
        return target

    check_adjoint(lambda p: dev.gather_windows(p, corners, np.empty_like(out)), scatter,
                  planes, random_like(out, rng), rtol=1e-12)


def test_workspace_reuses_memory_for_smaller_batches():
    ws = Device("cpu", "single").workspace()
    a = ws.get("x", (4, 8, 8), np.complex64)
    b = ws.get("x", (2, 8, 8), np.complex64)
    assert np.shares_memory(a, b) and b.flags.c_contiguous and b.shape == (2, 8, 8)
    c = ws.get("x", (8, 8, 8), np.complex64)  # larger: new memory
    assert c.shape == (8, 8, 8) and not np.shares_memory(a, c)


def test_repeated_evaluations_are_identical():
    # work buffers are reused between batches and calls: nothing may leak from one to the next
    model, params, _ = make_problem(3, 2, 2, LeastSquaresSqrt(), batch_size=3)
    v1, g1 = model.value_and_grad(params)
    model.intensities(params)
    v2, g2 = model.value_and_grad(params, indices=np.array([6, 1, 2, 3, 4, 5, 0]))
    assert v1 == pytest.approx(v2, rel=1e-12)
    for key in g1:
        np.testing.assert_allclose(g1[key], g2[key], rtol=1e-10, atol=1e-12)
