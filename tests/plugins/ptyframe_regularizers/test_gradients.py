"""Numerical contracts of the first-party regularizers: finite-difference gradients (double
precision, rtol 1e-5) on random parameters with 2 slices x 2 object modes and 2 probe modes,
exact values on cases with a known answer, schedules, untouched inputs and validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from ptyframe_regularizers.probe_regularizers import aperture_disk, cosine_window
from scipy import ndimage

from ptyframe import Device, FromEpoch, Piecewise, load_registry
from ptyframe.components import ModelContext
from ptyframe.core.experiment import Experiment
from ptyframe.testing import check_gradient

REGISTRY = load_registry()
DEVICE = Device("cpu", "double")
WINDOW = (16, 16)
PIXEL_A = 0.25
SCAN = (4, 5)
N = SCAN[0] * SCAN[1]
DZ_A = 5.0
EXPERIMENT = Experiment(voltage_kV=200.0, convergence_angle_mrad=25.0,
                        detector_pixel_size_inv_A=1.0 / (WINDOW[0] * PIXEL_A),
                        aberrations={"C10": -50.0}, scan_shape=SCAN, scan_step_A=0.6)
NAMES = ("atv", "l1_phase", "l1_absorption", "mixed_variance", "missing_wedge",
         "probe_fourier_mask", "probe_window", "position_smoothness", "tilt_smoothness",
         "deformation")
#: the block each regularizer penalises
BLOCK = {"atv": "object", "l1_phase": "object", "l1_absorption": "object",
         "mixed_variance": "object", "missing_wedge": "object", "probe_fourier_mask": "probe",
         "probe_window": "probe", "position_smoothness": "positions", "tilt_smoothness": "tilts",
         "deformation": "positions"}
#: the weight fields of each regularizer
WEIGHTS = {name: ("weight",) for name in NAMES}
WEIGHTS["position_smoothness"] = WEIGHTS["tilt_smoothness"] = ("fast_weight", "slow_weight")


def context(**changes) -> ModelContext:
    settings = dict(window=WINDOW, pixel_size_A=PIXEL_A, wavelength_A=EXPERIMENT.wavelength_A,
                    n_measurements=N, device=DEVICE, measured_shape=WINDOW, scan_shape=SCAN,
                    n_slices=2, slice_thickness_A=(DZ_A,), experiment=EXPERIMENT)
    settings.update(changes)
    return ModelContext(**settings)


def make(name: str, ctx: ModelContext | None = None, **settings):
    """A regularizer made through the registry and prepared with ``ctx`` (default context())."""
    reg = REGISTRY.create("regularizer", {"type": name, **settings})
    reg.prepare(ctx if ctx is not None else context())
    return reg


def grid_positions(step: float = 2.4, origin: float = 1.0) -> np.ndarray:
    iy, ix = np.meshgrid(np.arange(SCAN[0]), np.arange(SCAN[1]), indexing="ij")
    return np.stack([iy.ravel(), ix.ravel()], 1) * step + origin


def random_params(seed: int = 0, n_slices: int = 2, n_modes: int = 2, n_probe_modes: int = 2
                  ) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (n_slices, n_modes, 20, 22)
    obj = np.exp(1j * rng.uniform(-1.0, 1.0, shape) - rng.uniform(-0.2, 0.5, shape))
    probe = (rng.standard_normal((n_probe_modes, *WINDOW))
             + 1j * rng.standard_normal((n_probe_modes, *WINDOW)))
    positions = grid_positions()
    return {"object": obj, "probe": probe,
            "positions": positions + rng.normal(0, 0.5, positions.shape),
            "tilts": rng.normal(0, 1e-3, (N, 6))}


def value(reg, params, epoch: int = 0) -> float:
    return reg.value_and_grad(params, epoch=epoch)[0]


# ============================================================================ gradients
GRADIENT_CASES = [
    ("atv", {}),
    ("atv", {"p": 1.0, "q": 1.0}),
    ("atv", {"p": 1.5, "q": 0.7, "eps": 1e-3}),
    ("atv", {"q": 2.0, "weight": 0.3}),
    ("l1_phase", {}),
    ("l1_phase", {"eps_rad": 0.5}),
    ("l1_absorption", {}),
    ("l1_absorption", {"eps": 0.3}),
    ("mixed_variance", {}),
    ("mixed_variance", {"sigma_px": 3.0, "weight": 5.0}),
    ("mixed_variance", {"sigma_px": 0.0}),
    ("missing_wedge", {}),
    ("missing_wedge", {"beta": 20.0, "weight": 2.0}),
    ("probe_fourier_mask", {}),
    ("probe_fourier_mask", {"radius_mrad": 15.0, "edge_margin_px": 0.0, "weight": 3.0}),
    ("probe_window", {}),
    ("probe_window", {"window": [0.2, 0.6]}),
    ("position_smoothness", {}),
    ("position_smoothness", {"slow_tolerance": 0.1, "fast_weight": 0.0}),
    ("position_smoothness", {"slow_weight": 0.0, "fast_weight": 2.0}),
    ("position_smoothness", {"block": "tilts"}),
    ("tilt_smoothness", {"slow_tolerance": 0.5}),
    ("deformation", {}),
    ("deformation", {"weight": 7.0}),
]


@pytest.mark.parametrize(("name", "settings"), GRADIENT_CASES,
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(GRADIENT_CASES)])
def test_gradient(name, settings):
    params = random_params()
    before = {k: v.copy() for k, v in params.items()}
    reg = make(name, **settings)
    val, grads = reg.value_and_grad(params)
    assert math.isfinite(val) and val > 0
    assert set(grads) == {BLOCK[name] if "block" not in settings else settings["block"]}
    for block, grad in grads.items():
        assert grad.shape == params[block].shape and grad.dtype == params[block].dtype
        for seed in range(3):
            check_gradient(lambda p: value(reg, p), params, grads, block,
                           rng=np.random.default_rng(seed), rtol=1e-5)
    for block, array in params.items():  # inputs are never modified
        np.testing.assert_array_equal(array, before[block], err_msg=block)
    assert value(reg, params) == val  # and repeated calls agree (no state carried over)


def test_slow_tolerance_hinge_is_active_and_inactive():
    """The gradient check above with tolerance covers both sides of the hinge."""
    reg = make("position_smoothness", slow_tolerance=0.1, fast_weight=0.0)
    params = random_params()
    means = params["positions"].reshape(*SCAN, 2).mean(axis=1)
    dev = np.linalg.norm(means[1:-1] - 0.5 * (means[:-2] + means[2:]), axis=1)
    half_step = np.linalg.norm(0.5 * (means[2:] - means[:-2]), axis=1)
    excess = dev - 0.1 * half_step
    assert np.any(excess > 0) and np.any(excess < 0), excess
    assert value(reg, params) == pytest.approx(np.sum(np.maximum(excess, 0) ** 2), rel=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_single_precision_stays_single(name):
    params = random_params(1)
    single = {"object": params["object"].astype(np.complex64),
              "probe": params["probe"].astype(np.complex64),
              "positions": params["positions"].astype(np.float32),
              "tilts": params["tilts"].astype(np.float32)}
    device = Device("cpu", "single")
    reg = make(name, context(device=device))
    val, grads = reg.value_and_grad(single)
    ref_val, ref_grads = make(name).value_and_grad(params)
    assert val == pytest.approx(ref_val, rel=1e-4)
    for block, grad in grads.items():
        assert grad.dtype == single[block].dtype, block
        np.testing.assert_allclose(grad, ref_grads[block], rtol=2e-3,
                                   atol=2e-4 * np.abs(ref_grads[block]).max())


# ============================================================================ schedules, blocks
@pytest.mark.parametrize("name", NAMES)
def test_weight_zero_at_an_epoch_costs_nothing(name):
    params = random_params()
    off_until_3 = {field: FromEpoch(3, on=1.0, off=0.0) for field in WEIGHTS[name]}
    reg = make(name, **off_until_3)
    assert reg.value_and_grad(params, epoch=0) == (0.0, {})
    assert reg.value_and_grad(params, epoch=2) == (0.0, {})
    val, grads = reg.value_and_grad(params, epoch=3)
    assert val > 0 and set(grads) == {BLOCK[name]}
    # a ramped weight scales the value
    ramp = make(name, **{f: Piecewise([[0, 1.0], [5, 2.5]]) for f in WEIGHTS[name]})
    assert value(ramp, params, epoch=7) == pytest.approx(2.5 * value(ramp, params), rel=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_absent_block_is_skipped(name):
    params = random_params()
    del params[BLOCK[name]]
    assert make(name).value_and_grad(params) == (0.0, {})


def test_nothing_to_penalise():
    one_mode = random_params(n_modes=1)
    assert make("mixed_variance").value_and_grad(one_mode) == (0.0, {})
    one_slice = random_params(n_slices=1)
    reg = make("missing_wedge", context(n_slices=1, slice_thickness_A=None))
    assert reg.value_and_grad(one_slice) == (0.0, {})
    common_tilt = dict(random_params(), tilts=np.full((1, 6), 1e-3))
    assert make("tilt_smoothness").value_and_grad(common_tilt) == (0.0, {})


def test_schedule_going_negative_is_reported():
    reg = make("atv", weight=Piecewise([[0, 1.0], [3, -1.0]]))
    assert value(reg, random_params(), epoch=2) > 0
    with pytest.raises(ValueError, match="weight.*epoch 3"):
        value(reg, random_params(), epoch=3)


def test_configuration_round_trips_with_schedules():
    reg = REGISTRY.create("regularizer", {
        "type": "position_smoothness", "fast_weight": {"type": "from", "start": 4, "on": 2.0,
                                                       "off": 0.0},
        "slow_weight": 0.5, "slow_tolerance": {"type": "linear", "start": 0, "end": 10,
                                               "start_value": 0.0, "end_value": 0.3}})
    config = json.loads(json.dumps(reg.to_config()))
    again = REGISTRY.create("regularizer", config)
    assert again.to_config() == config
    assert again.fast_weight(3) == 0.0 and again.fast_weight(4) == 2.0
    assert again.slow_tolerance(5) == pytest.approx(0.15)


# ============================================================================ validation
BAD_SETTINGS = [
    ("atv", {"weight": -1.0}, "weight"),
    ("atv", {"weight": "strong"}, "weight"),
    ("atv", {"weight": math.inf}, "weight"),
    ("atv", {"p": 0.5}, "p"),
    ("atv", {"q": 0.0}, "q"),
    ("atv", {"eps": 0.0}, "eps"),
    ("l1_phase", {"eps_rad": -1e-3}, "eps_rad"),
    ("l1_absorption", {"eps": "small"}, "eps"),
    ("mixed_variance", {"sigma_px": -1.0}, "sigma_px"),
    ("missing_wedge", {"beta": 0.0}, "beta"),
    ("probe_fourier_mask", {"radius_mrad": -25.0}, "radius_mrad"),
    ("probe_fourier_mask", {"edge_margin_px": -1.0}, "edge_margin_px"),
    ("probe_fourier_mask", {"mask_path": "no_such_mask.npy"}, "mask_path"),
    ("probe_fourier_mask", {"mask_path": "mask.txt"}, "mask_path"),
    ("probe_window", {"window": [0.9, 0.5]}, "window"),
    ("probe_window", {"window": [0.5]}, "window"),
    ("probe_window", {"window_path": "no_such_window.npy"}, "window_path"),
    ("position_smoothness", {"fast_weight": -2.0}, "fast_weight"),
    ("position_smoothness", {"slow_tolerance": -0.1}, "slow_tolerance"),
    ("position_smoothness", {"block": "object"}, "block"),
    ("tilt_smoothness", {"slow_weight": None}, "slow_weight"),
    ("deformation", {"weight": True}, "weight"),
]


@pytest.mark.parametrize(("name", "settings", "field"), BAD_SETTINGS,
                         ids=[f"{n}-{f}-{i}" for i, (n, _, f) in enumerate(BAD_SETTINGS)])
def test_bad_settings_name_the_field(name, settings, field):
    with pytest.raises(ValueError, match=rf"\b{field}\b"):
        REGISTRY.create("regularizer", {"type": name, **settings})


def test_both_mask_sources_are_refused(tmp_path):
    path = tmp_path / "mask.npy"
    np.save(path, np.ones(WINDOW))
    with pytest.raises(ValueError, match="radius_mrad"):
        REGISTRY.create("regularizer", {"type": "probe_fourier_mask", "radius_mrad": 20.0,
                                        "mask_path": str(path)})


@pytest.mark.parametrize("name", ["position_smoothness", "tilt_smoothness", "deformation"])
def test_scan_shape_is_required_and_checked(name):
    reg = REGISTRY.create("regularizer", {"type": name})
    with pytest.raises(ValueError, match="scan_shape.*None"):
        reg.prepare(context(scan_shape=None))
    with pytest.raises(ValueError, match=r"scan_shape.*20 measurements.*\(3, 5\)"):
        reg.prepare(context(scan_shape=(3, 5)))
    reg.prepare(context(scan_shape=(5, 4)))  # consistent with N, but not with these positions
    params = random_params()
    params["positions"] = params["positions"][:12]
    params["tilts"] = params["tilts"][:12]
    with pytest.raises(ValueError, match=r"expected 20 rows.*\(12, "):
        reg.value_and_grad(params)


def test_array_files_are_checked_in_prepare(tmp_path):
    wrong_shape = tmp_path / "mask.npy"
    np.save(wrong_shape, np.ones((8, 8)))
    reg = REGISTRY.create("regularizer", {"type": "probe_fourier_mask",
                                          "mask_path": str(wrong_shape)})
    with pytest.raises(ValueError, match=r"mask_path.*\(16, 16\).*\(8, 8\)"):
        reg.prepare(context())
    out_of_range = tmp_path / "window.npy"
    np.save(out_of_range, np.full(WINDOW, 2.0))
    reg = REGISTRY.create("regularizer", {"type": "probe_window",
                                          "window_path": str(out_of_range)})
    with pytest.raises(ValueError, match=r"window_path.*\[0.0, 1.0\]"):
        reg.prepare(context())


def test_missing_wedge_needs_the_slice_distance():
    reg = REGISTRY.create("regularizer", {"type": "missing_wedge"})
    with pytest.raises(ValueError, match="slice_thickness_A"):
        reg.prepare(context(slice_thickness_A=None))


def test_probe_window_shape_must_match_the_mask():
    reg = make("probe_fourier_mask")
    params = {"probe": np.ones((1, 8, 8), dtype=complex)}
    with pytest.raises(ValueError, match=r"probe.*\(16, 16\).*\(8, 8\)"):
        reg.value_and_grad(params)


def test_unprepared_use_says_what_to_do():
    reg = REGISTRY.create("regularizer", {"type": "deformation"})
    with pytest.raises(RuntimeError, match="prepare"):
        reg.value_and_grad(random_params())


# ============================================================================ known values
def test_atv_of_an_edge_without_wrap_around():
    """O = 1 except the last column = c: one jump per row (a periodic difference would count
    a second jump between the last and the first column)."""
    c = 0.6 * np.exp(0.4j)
    obj = np.ones((1, 1, 6, 7), dtype=complex)
    obj[..., -1] = c
    eps = 1e-12
    reg = make("atv", weight=2.0, eps=eps)
    expected = 2.0 * 6 * (math.sqrt(abs(c - 1) ** 2 + eps) - math.sqrt(eps))
    assert value(reg, {"object": obj}) == pytest.approx(expected, rel=1e-9)
    assert value(reg, {"object": np.full((2, 2, 5, 5), c)}) == pytest.approx(0.0, abs=1e-12)
    # anisotropic p = 1: |dx| + |dy| summed over pixels (both jumps of a corner pixel count)
    obj = np.ones((1, 1, 5, 5), dtype=complex)
    obj[..., 2, 2] = c
    reg = make("atv", p=1.0, eps=1e-14)
    assert value(reg, {"object": obj}) == pytest.approx(4 * abs(c - 1), rel=1e-6)


def test_l1_values():
    phase = np.array([-0.3, 0.0, 0.2, 1.0])
    absorption = np.array([0.1, 0.0, -0.05, 0.4])
    obj = np.exp(1j * phase - absorption).reshape(1, 1, 2, 2)
    eps = 1e-3
    reg = make("l1_phase", weight=3.0, eps_rad=eps)
    expected = 3.0 * np.sum(np.sqrt(phase**2 + eps**2) - eps)
    assert value(reg, {"object": obj}) == pytest.approx(expected, rel=1e-12)
    reg = make("l1_absorption", weight=0.5, eps=eps)
    expected = 0.5 * np.sum(np.sqrt(absorption**2 + eps**2) - eps)
    assert value(reg, {"object": obj}) == pytest.approx(expected, rel=1e-12)


def test_mixed_variance_against_a_direct_gaussian_filter():
    params = random_params(3, n_slices=2, n_modes=3)
    obj = params["object"]
    sigma = 2.0
    reg = make("mixed_variance", weight=1.5, sigma_px=sigma)
    centred = obj - obj.mean(axis=1, keepdims=True)

    def blur(a):
        return (ndimage.gaussian_filter(a.real, sigma, mode="wrap", axes=(-2, -1))
                + 1j * ndimage.gaussian_filter(a.imag, sigma, mode="wrap", axes=(-2, -1)))

    expected = 1.5 / 3 * np.sum(np.abs(blur(centred)) ** 2)
    assert value(reg, params) == pytest.approx(expected, rel=1e-3)
    same = np.repeat(obj[:, :1], 3, axis=1)
    assert value(reg, {"object": same}) == pytest.approx(0.0, abs=1e-20)


def test_missing_wedge_values():
    reg = make("missing_wedge", weight=2.0, beta=10.0)
    rng = np.random.default_rng(0)
    layer = np.exp(1j * rng.uniform(-1, 1, (1, 1, 12, 10)))
    columnar = np.repeat(layer, 3, axis=0)  # the same in every slice: only kz = 0
    assert value(reg, {"object": columnar}) < 1e-20 * np.sum(np.abs(columnar) ** 2)
    # two uniform slices 1 and c: all the difference sits at k_perp = 0, kz != 0 (W = 1)
    c = 0.8 * np.exp(0.3j)
    stack = np.ones((2, 1, 12, 10), dtype=complex)
    stack[1] = c
    assert value(reg, {"object": stack}) == pytest.approx(2.0 * abs(1 - c) ** 2 * 12 * 10 / 2,
                                                          rel=1e-12)
    # W = 1/2 on the cone |kz| = |k_perp| / beta
    weights = reg.wedge_weights((2, 12, 10), DEVICE)
    kz = abs(np.fft.fftfreq(2, DZ_A)[1])
    ky = np.fft.fftfreq(12, PIXEL_A)
    kx = np.fft.fftfreq(10, PIXEL_A)
    k_perp = np.hypot(ky[:, None], kx[None, :])
    expected = 2 / np.pi * np.arctan(np.where(k_perp > 0, (10.0 * kz) ** 2
                                              / np.where(k_perp > 0, k_perp, 1) ** 2, np.inf))
    np.testing.assert_allclose(weights[1], expected, rtol=1e-12)
    np.testing.assert_array_equal(weights[0], 0.0)


def test_probe_fourier_mask_values(tmp_path):
    ctx = context()
    disk = aperture_disk(WINDOW, PIXEL_A, EXPERIMENT.wavelength_A, 25.0, 1.0)
    assert 0 < disk.sum() < disk.size
    rng = np.random.default_rng(0)
    spectrum = (rng.standard_normal((2, *WINDOW)) + 1j * rng.standard_normal((2, *WINDOW)))
    inside = np.fft.fftshift(np.fft.ifft2(spectrum * disk, norm="ortho"), axes=(-2, -1))
    reg = make("probe_fourier_mask", ctx, weight=4.0)  # radius: the experiment's 25 mrad
    assert value(reg, {"probe": inside}) < 1e-25 * np.sum(np.abs(inside) ** 2)
    leak = spectrum * disk
    leak[1, 0, WINDOW[1] // 2] = 3.0 - 1.0j  # one pixel at the Nyquist frequency
    probe = np.fft.fftshift(np.fft.ifft2(leak, norm="ortho"), axes=(-2, -1))
    assert value(reg, {"probe": probe}) == pytest.approx(4.0 * 10.0, rel=1e-10)
    # the same mask given as a centred .npy file
    path = tmp_path / "aperture.npy"
    np.save(path, np.fft.fftshift(disk))
    from_file = make("probe_fourier_mask", ctx, weight=4.0, mask_path=str(path))
    assert value(from_file, {"probe": probe}) == pytest.approx(40.0, rel=1e-10)
    # several probes (n_probes, modes, ny, nx) are penalised alike
    stacked = np.stack([probe, probe])
    assert value(reg, {"probe": stacked}) == pytest.approx(80.0, rel=1e-10)


def test_probe_window_values_and_no_mutation(tmp_path):
    window = cosine_window(WINDOW, 0.5, 1.0)
    c = WINDOW[0] // 2
    assert window[c, c] == 1.0 and window[0, 0] == 0.0 and window[c, 0] == 0.0
    assert window[c, c - 6] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))  # rho 0.75
    probe = random_params()["probe"]
    keep = probe.copy()
    reg = make("probe_window", weight=2.0, window=[0.5, 1.0])
    expected = 2.0 * np.sum(np.abs(probe) ** 2 * (1 - window) ** 2)
    for _ in range(3):  # the reference's window penalty rescaled its window on every call
        val, grads = reg.value_and_grad({"probe": probe})
        assert val == pytest.approx(expected, rel=1e-12)
    np.testing.assert_array_equal(probe, keep)
    np.testing.assert_allclose(grads["probe"], 2.0 * (1 - window) ** 2 * probe, rtol=1e-12)
    path = tmp_path / "window.npy"
    np.save(path, window)
    from_file = make("probe_window", weight=2.0, window_path=str(path))
    assert value(from_file, {"probe": probe}) == pytest.approx(expected, rel=1e-12)


def test_position_smoothness_values():
    reg = make("position_smoothness", fast_weight=1.0, slow_weight=1.0)
    # any affine map of the raster (step, rotation, shear, offset) is perfectly smooth
    affine = grid_positions() @ np.array([[1.0, 0.2], [-0.1, 0.9]]) + 3.0
    assert value(reg, {"positions": affine}) == pytest.approx(0.0, abs=1e-20)
    # one position moved by d along x: fast-axis second differences (1, -2, 1) * d, and the
    # row mean moves by d / cols (row 1 is interior, so its half second difference is d/cols)
    d = 0.3
    moved = affine.copy()
    moved[1 * SCAN[1] + 2, 1] += d
    fast = (1 + 4 + 1) * d**2
    slow = (d / SCAN[1]) ** 2 * (1 + 0.25)  # row 1 itself and its neighbour row 2
    assert value(reg, {"positions": moved}) == pytest.approx(fast + slow, rel=1e-12)
    tolerant = make("position_smoothness", fast_weight=0.0, slow_tolerance=1.0)
    assert value(tolerant, {"positions": moved}) == 0.0  # |d| / cols < the row step


def test_deformation_values():
    reg = make("deformation", weight=3.0)
    affine = grid_positions() @ np.array([[1.1, 0.3], [-0.2, 0.95]]) - 2.0
    val, grads = reg.value_and_grad({"positions": affine})
    assert val == pytest.approx(0.0, abs=1e-20) and np.abs(grads["positions"]).max() < 1e-12
    rng = np.random.default_rng(4)
    bumped = affine + rng.normal(0, 0.2, affine.shape)
    iy, ix = np.meshgrid(np.arange(SCAN[0]), np.arange(SCAN[1]), indexing="ij")
    design = np.stack([iy.ravel(), ix.ravel(), np.ones(N)], 1)
    coef, *_ = np.linalg.lstsq(design, bumped, rcond=None)
    residual = bumped - design @ coef
    val, grads = reg.value_and_grad({"positions": bumped})
    assert val == pytest.approx(3.0 * np.sum(residual**2), rel=1e-10)
    np.testing.assert_allclose(grads["positions"], 3.0 * residual, atol=1e-12)
