"""Adjoint and finite-difference gradient checks of the propagators, with tilts inside."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
from ptyframe_propagators import ptyframe_register_components
from ptyframe_propagators.higher_order import BetterMultislice, SplitStepScheme, Yoshida
from ptyframe_propagators.multislice import Multislice

from ptyframe.components import PropagationGeometry
from ptyframe.core.device import Device
from ptyframe.core.physics import wavelength_A
from ptyframe.testing import check_adjoint, check_gradient, random_like

CLASSES = (Multislice, BetterMultislice, Yoshida)
N = 16
B = 3
PIXEL_A = 0.25
DEV = Device("cpu", "double")


def setup(cls, n_slices, seed=0, thickness=None):
    """Prepared propagator, wave (1, 2, B, N, N), transmission (S, 2, 1, B, N, N), tilts."""
    rng = np.random.default_rng(seed)
    if thickness is None:
        thickness = [15.0, 25.0] if n_slices == 3 else 10.0
    prop = cls(slice_thickness_A=thickness, rolloff=0.1)
    prop.prepare(PropagationGeometry((N, N), PIXEL_A, wavelength_A(200.0), n_slices, DEV))
    shape = (1, 2, B, N, N)
    wave = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
    tshape = (n_slices, 2, 1, B, N, N)
    trans = np.exp(1j * rng.uniform(-0.5, 0.5, tshape) - rng.uniform(0.0, 0.2, tshape))
    tilts = rng.uniform(-0.03, 0.03, (B, 2))
    return prop, wave, trans, tilts, rng


def test_registered():
    assert set(ptyframe_register_components()) == set(CLASSES)
    assert all(cls.supports_tilts for cls in CLASSES)
    assert BetterMultislice().to_config()["type"] == "better_multislice"
    assert Yoshida(slice_thickness_A=[1.0, 2.0]).slice_thickness_A == (1.0, 2.0)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize(("n_slices", "thickness"), [(1, None), (3, None), (3, 20.0)],
                         ids=["1_slice", "3_slices", "3_slices_equal_gaps"])
def test_gradients_with_tilts(cls, n_slices, thickness):
    """L = sum w |exit(wave, T, t) - target|^2 against central finite differences."""
    prop, wave, trans, tilts, rng = setup(cls, n_slices, thickness=thickness)
    weights = rng.uniform(0.5, 2.0, (2, 2, B, N, N))
    target = random_like(weights.astype(complex), rng)

    def objective(p):
        exit_wave, _ = prop.forward(p["wave"], p["transmission"], keep=False, tilts=p["tilts"])
        return float(np.sum(weights * np.abs(exit_wave - target) ** 2))

    exit_wave, cache = prop.forward(wave, trans, tilts=tilts)
    grad_wave, grad_trans, grad_tilts = prop.vjp(weights * (exit_wave - target), cache)
    assert grad_wave.shape == wave.shape and grad_trans.shape == trans.shape
    assert grad_tilts.shape == (B, 2) and grad_tilts.dtype == np.float64
    params = {"wave": wave, "transmission": trans, "tilts": tilts}
    grads = {"wave": grad_wave, "transmission": grad_trans, "tilts": grad_tilts}
    for block in params:
        for seed in range(2):
            check_gradient(objective, params, grads, block, rng=np.random.default_rng(seed),
                           rtol=1e-5)
    if n_slices == 1:  # no propagation: the tilt cannot matter
        assert np.all(grad_tilts == 0)
    else:
        assert np.abs(grad_tilts).max() > 1.0


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("n_slices", [1, 3])
@pytest.mark.parametrize("tilted", [False, True])
def test_adjoint_in_the_wave(cls, n_slices, tilted):
    prop, wave, trans, tilts, rng = setup(cls, n_slices, seed=1)
    tilts = tilts if tilted else None
    exit_wave, cache = prop.forward(wave, trans, tilts=tilts)
    for _ in range(2):  # the cache stays usable
        check_adjoint(lambda v: prop.forward(v, trans, keep=False, tilts=tilts)[0],
                      lambda g: prop.vjp(g, cache)[0], random_like(wave, rng),
                      random_like(exit_wave, rng), rtol=1e-10)
    assert len(prop.vjp(exit_wave, cache)) == (3 if tilted else 2)


@pytest.mark.parametrize("cls", CLASSES)
def test_zero_tilt_matches_untilted(cls):
    prop, wave, trans, _, rng = setup(cls, 3)
    plain, c0 = prop.forward(wave, trans)
    tilted, c1 = prop.forward(wave, trans, tilts=np.zeros((B, 2)))
    np.testing.assert_allclose(tilted, plain, rtol=1e-13, atol=1e-13)
    g = random_like(plain, rng)
    for a, b in zip(prop.vjp(g, c0), prop.vjp(g, c1)[:2], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("thickness", [[15.0, 25.0], 20.0])
def test_multislice_workspace_with_tilts(thickness):
    """The model's in-place path (workspace) gives the same exit wave and gradients (one
    tilted kernel per gap, or one shared by equal gaps)."""
    prop, wave, trans, tilts, rng = setup(Multislice, 3, thickness=thickness)
    g = random_like(np.empty((2, 2, B, N, N), complex), rng)
    exit_ref, cache = prop.forward(wave, trans, tilts=tilts)
    ref = prop.vjp(g, cache)
    ws = DEV.workspace()
    for _ in range(2):  # buffers reused on the second call
        exit_ws, cache = prop.forward(wave.copy(), trans.copy(), tilts=tilts, workspace=ws)
        np.testing.assert_allclose(exit_ws, exit_ref, rtol=1e-13, atol=1e-13)
        out = prop.vjp(g.copy(), cache)
        for a, b in zip(out, ref, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_generic_scheme_reproduces_multislice():
    """The chain engine of the higher-order schemes, given the plain multislice chain, agrees
    with the hand-written Multislice (two independent implementations, tilts included)."""

    @attrs.define(kw_only=True)
    class ChainMultislice(SplitStepScheme):
        """Multislice as a one-chain scheme."""

        chains = ((1.0, (("T", 1.0), ("P", 1.0))),)

    a, wave, trans, tilts, rng = setup(Multislice, 3)
    b = ChainMultislice(slice_thickness_A=[15.0, 25.0], rolloff=0.1)
    b.prepare(a._geometry)
    ea, ca = a.forward(wave, trans, tilts=tilts)
    eb, cb = b.forward(wave, trans, tilts=tilts)
    np.testing.assert_allclose(eb, ea, rtol=1e-12, atol=1e-12)
    g = random_like(ea, rng)
    for x, y in zip(b.vjp(g, cb), a.vjp(g, ca), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("cls", CLASSES)
def test_higher_order_one_slice_is_transmission(cls):
    prop, wave, trans, tilts, _ = setup(cls, 1)
    exit_wave, _ = prop.forward(wave, trans, tilts=tilts)
    np.testing.assert_allclose(exit_wave, wave * trans[0], rtol=1e-14)


@pytest.mark.parametrize("cls", CLASSES)
def test_bad_tilts(cls):
    prop, wave, trans, _, _ = setup(cls, 3)
    with pytest.raises(ValueError, match="tilts"):
        prop.forward(wave, trans, tilts=np.zeros((B + 1, 2)))
    with pytest.raises(ValueError, match="tilts"):
        prop.forward(wave, trans, tilts=np.zeros((B, 3)))
    with pytest.raises(ValueError, match="slice_thickness_A"):
        cls(slice_thickness_A=-1.0)
    with pytest.raises(ValueError, match="transmission"):
        prop.forward(wave, trans[:2])


def test_single_precision_keeps_dtype():
    dev = Device("cpu", "single")
    for cls in CLASSES:
        prop = cls(slice_thickness_A=5.0)
        prop.prepare(PropagationGeometry((N, N), PIXEL_A, wavelength_A(200.0), 3, dev))
        wave = np.ones((1, 1, B, N, N), np.complex64)
        trans = np.exp(0.3j * np.ones((3, 1, 1, B, N, N))).astype(np.complex64)
        tilts = np.full((B, 2), 0.01, np.float32)
        exit_wave, cache = prop.forward(wave, trans, tilts=tilts)
        assert exit_wave.dtype == np.complex64
        gw, gt, gtl = prop.vjp(exit_wave, cache)
        assert gw.dtype == np.complex64 and gt.dtype == np.complex64
        assert gtl.dtype == np.float32
