"""Tests of the probe initializers: aperture options (Hermite modes, defocus spread, extra
defocus, aberration override, beam CTF), binary_aperture, mean_pattern and probe_from_file.

Geometry: 200 kV (lambda = 0.0251 Å), 25 mrad, 32 px window of 0.25 Å pixels, so
dk = 0.125 1/Å and the bright-field disk has a radius of 7.97 detector pixels.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from ptyframe_initializers.probes import (
    ApertureProbe,
    BinaryApertureProbe,
    MeanPatternProbe,
    ProbeFromFile,
    hermite_probe_modes,
)

from ptyframe.components import InitContext
from ptyframe.core.experiment import Experiment, ReconstructionGrid
from ptyframe.registry.loader import load_registry
from ptyframe.testing.simulate import simulate_dataset

REGISTRY = load_registry()
WINDOW = 32
PIXEL_A = 0.25
DK = 1.0 / (WINDOW * PIXEL_A)


def context(aberrations=None, mean_pattern="disk") -> InitContext:
    exp = Experiment(voltage_kV=200.0, convergence_angle_mrad=25.0, detector_pixel_size_inv_A=DK,
                     aberrations={"C10": -50.0} if aberrations is None else aberrations)
    grid = ReconstructionGrid.covering(np.zeros((1, 2)), (WINDOW, WINDOW), DK)
    if isinstance(mean_pattern, str):
        k = (np.arange(WINDOW) - WINDOW // 2) * DK
        mrad = np.hypot(k[:, None], k[None, :]) * exp.wavelength_A * 1e3
        mean_pattern = np.where(mrad <= 25.0, 60.0, 0.2)
    return InitContext(exp, grid, mean_pattern, 9, np.random.default_rng(0))


def spectrum(mode: np.ndarray) -> np.ndarray:
    """FFT-order spectrum of a centred real-space probe mode."""
    return np.fft.fft2(np.fft.ifftshift(mode))


def overlaps(modes: np.ndarray) -> np.ndarray:
    """|<m_i, m_j>| / (|m_i| |m_j|) for i != j (0 for orthogonal modes)."""
    flat = modes.reshape(len(modes), -1)
    flat = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    gram = np.abs(flat.conj() @ flat.T)
    return gram[~np.eye(len(modes), dtype=bool)]


def fitted_defocus_A(mode: np.ndarray, ctx: InitContext, q_fraction: float = 0.8) -> float:
    """Defocus (Å, underfocus positive) from the spectrum phase: phase = a + pi lam df q^2,
    least squares over the aperture (|q| < q_fraction * alpha / lam, no phase wrap)."""
    lam = ctx.experiment.wavelength_A
    spec = spectrum(mode)
    q = np.hypot(*np.meshgrid(np.fft.fftfreq(WINDOW, PIXEL_A), np.fft.fftfreq(WINDOW, PIXEL_A),
                              indexing="ij"))
    inside = q < q_fraction * 25e-3 / lam
    phase = np.angle(spec[inside] / spec[0, 0])
    design = np.stack([np.ones(inside.sum()), np.pi * lam * q[inside] ** 2], axis=1)
    coeffs, *_ = np.linalg.lstsq(design, phase, rcond=None)
    return float(coeffs[1])


# ============================================================================ Hermite modes
@pytest.mark.parametrize("n_modes", [1, 3, 6])
def test_hermite_modes_shapes_orthogonality_power(n_modes):
    ctx = context()
    probe = ApertureProbe(hermite_modes=(3, 2), extra_mode_power=0.2).build(ctx, n_modes)
    assert probe.shape == (n_modes, WINDOW, WINDOW) and np.iscomplexobj(probe)
    total = float(np.sum(np.abs(probe) ** 2))
    np.testing.assert_allclose(total, ctx.mean_pattern.sum(), rtol=1e-12)
    if n_modes > 1:
        assert overlaps(probe).max() < 1e-10
        powers = np.sum(np.abs(probe) ** 2, axis=(1, 2)) / total
        np.testing.assert_allclose(powers, [0.8] + [0.2 / (n_modes - 1)] * (n_modes - 1),
                                   rtol=1e-12)
    with pytest.raises(ValueError, match="hermite_modes: .* gives 6 modes"):
        ApertureProbe(hermite_modes=(3, 2)).build(ctx, 7)


def test_hermite_modes_of_a_gaussian_are_hermite_gauss_modes():
    """For a Gaussian probe the modes are the Hermite-Gauss functions H_i(x/w) H_j(y/w)
    exp(-r^2 / 2 w^2) (order (0,0), (1,0), (0,1), (2,0), (1,1), (0,2))."""
    w = 3.0
    c = np.arange(WINDOW) - WINDOW // 2
    y, x = c[:, None] / w, c[None, :] / w
    gauss = np.exp(-(x**2 + y**2) / 2) * np.exp(0.3j)
    modes = hermite_probe_modes(gauss, (3, 3), 6, 0.5)
    expected = [np.ones_like(x * y), 2 * x + 0 * y, 2 * y + 0 * x, 4 * x**2 - 2 + 0 * y,
                4 * x * y, 4 * y**2 - 2 + 0 * x]
    for mode, poly in zip(modes, expected, strict=True):
        target = (gauss * poly).ravel()
        corr = abs(np.vdot(target, mode.ravel())) / (np.linalg.norm(target)
                                                     * np.linalg.norm(mode))
        assert corr > 0.9999, corr


def test_default_modes_are_orthogonal_and_share_the_power():
    ctx = context()
    probe = REGISTRY.create("probe_initializer", {"type": "aperture"}).build(ctx, 4)
    assert overlaps(probe).max() < 1e-10
    np.testing.assert_allclose(np.sum(np.abs(probe) ** 2), ctx.mean_pattern.sum(), rtol=1e-12)


# ============================================================================ defocus
def test_defocus_spread_modes_recover_their_defocus():
    ctx = context(aberrations={})
    spread = (0.0, 20.0, -30.0)
    init = ApertureProbe(defocus_spread_A=spread, extra_mode_power=0.3)
    probe = init.build(ctx, 3)
    assert probe.shape == (3, WINDOW, WINDOW)
    np.testing.assert_allclose(np.sum(np.abs(probe) ** 2), ctx.mean_pattern.sum(), rtol=1e-12)
    np.testing.assert_allclose(np.sum(np.abs(probe) ** 2, axis=(1, 2)) / ctx.mean_pattern.sum(),
                               [0.7, 0.15, 0.15], rtol=1e-12)
    recovered = [fitted_defocus_A(mode, ctx) for mode in probe]
    np.testing.assert_allclose(recovered, spread, atol=0.05)
    # the fit is sensitive: a mode of another defocus is told apart
    assert abs(fitted_defocus_A(ApertureProbe(extra_defocus_A=21.0).build(ctx, 1)[0], ctx)
               - 20.0) > 0.7
    with pytest.raises(ValueError, match="defocus_spread_A: expected one defocus per probe mode"):
        init.build(ctx, 2)
    with pytest.raises(ValueError, match="expected either hermite_modes or defocus_spread_A"):
        ApertureProbe(defocus_spread_A=spread, hermite_modes=(2, 2))


def test_extra_defocus_and_aberration_override():
    ctx = context(aberrations={"C10": -50.0})
    # the experiment's 50 Å underfocus wraps the phase; the override replaces it
    probe = ApertureProbe(aberrations={"C10": -15.0}, extra_defocus_A=10.0).build(ctx, 1)[0]
    assert fitted_defocus_A(probe, ctx) == pytest.approx(25.0, abs=0.3)
    # a Krivanek-ordered list is the same as the dict
    as_list = ApertureProbe(aberrations=[-15.0, 4.0, -3.0], extra_defocus_A=10.0).build(ctx, 1)
    as_dict = ApertureProbe(aberrations={"C10": -15.0, "C12a": 4.0, "C12b": -3.0},
                            extra_defocus_A=10.0).build(ctx, 1)
    np.testing.assert_allclose(as_list, as_dict, rtol=1e-12, atol=1e-12)
    assert not np.allclose(as_list[0], probe)
    with pytest.raises(ValueError, match="aberrations: unknown coefficient 'C99'"):
        ApertureProbe(aberrations={"C99": 1.0})
    with pytest.raises(ValueError, match="aberrations: expected at most"):
        ApertureProbe(aberrations=[0.0] * 40)


# ============================================================================ beam CTF
def test_beam_ctf_multiplies_the_spectrum(tmp_path):
    ctx = context()
    rng = np.random.default_rng(0)
    ctf = np.exp(1j * rng.uniform(-1, 1, (WINDOW, WINDOW))) * rng.uniform(0.5, 1, (WINDOW,
                                                                                   WINDOW))
    path = tmp_path / "ctf.npy"
    np.save(path, ctf)
    with_ctf = ApertureProbe(beam_ctf=str(path), edge_width_px=0).build(ctx, 1)[0]
    plain = ApertureProbe(edge_width_px=0).build(ctx, 1)[0]
    a, b = spectrum(with_ctf), spectrum(plain)
    inside = np.abs(b) > 1e-6 * np.abs(b).max()
    ratio = a[inside] / b[inside]
    expected = np.fft.ifftshift(ctf)[inside]
    # equal up to the power normalisation (a real constant)
    scale = np.vdot(expected, ratio).real / np.vdot(expected, expected).real
    np.testing.assert_allclose(ratio, scale * expected, rtol=1e-9)
    np.testing.assert_allclose(np.sum(np.abs(with_ctf) ** 2), ctx.mean_pattern.sum(), rtol=1e-12)
    np.save(tmp_path / "small.npy", ctf[:16, :16])
    with pytest.raises(ValueError, match=r"beam_ctf: expected shape \(32, 32\)"):
        ApertureProbe(beam_ctf=str(tmp_path / "small.npy")).build(ctx, 1)
    with pytest.raises(ValueError, match="beam_ctf: file not found"):
        ApertureProbe(beam_ctf=str(tmp_path / "missing.npy"))


# ============================================================================ binary aperture
def test_binary_aperture_radius_from_a_simulated_mean_pattern():
    propagator = REGISTRY.create("propagator", {"type": "multislice", "slice_thickness_A": 2.0})
    sim = simulate_dataset(propagator, window=WINDOW, pixel_size_A=PIXEL_A, scan_shape=(4, 4),
                           step_A=0.6, seed=1)
    mean_pattern = sim.patterns.mean(axis=0).astype(float) * 1e4
    grid = ReconstructionGrid.covering(sim.positions_A, (WINDOW, WINDOW), DK)
    ctx = InitContext(sim.experiment, grid, mean_pattern, len(sim.patterns))
    true_radius = 25e-3 / sim.experiment.wavelength_A / DK  # 7.97 px
    init = BinaryApertureProbe()
    mask = init.aperture_mask(ctx)
    radius = np.sqrt(mask.sum() / np.pi)
    assert abs(radius - true_radius) < 1.0, (radius, true_radius)
    probe = init.build(ctx, 2)
    assert probe.shape == (2, WINDOW, WINDOW)
    np.testing.assert_allclose(np.sum(np.abs(probe) ** 2), mean_pattern.sum(), rtol=1e-12)
    # the probe's spectrum is the binary aperture, with the experiment's defocus as phase
    amp = np.abs(spectrum(probe[0]))
    np.testing.assert_array_equal(amp > 1e-6 * amp.max(), np.fft.ifftshift(mask))
    with pytest.raises(ValueError, match="threshold: no pixel"):
        BinaryApertureProbe(threshold=1e6).build(ctx, 1)
    with pytest.raises(ValueError, match="threshold"):
        BinaryApertureProbe(threshold=-1)
    with pytest.raises(ValueError, match="needs measured data"):
        init.build(InitContext(sim.experiment, grid, None, 16), 1)


def test_mean_pattern_probe_with_hermite_modes():
    ctx = context()
    probe = MeanPatternProbe(hermite_modes=(2, 2)).build(ctx, 4)
    assert overlaps(probe).max() < 1e-10
    np.testing.assert_allclose(np.sum(np.abs(probe) ** 2), ctx.mean_pattern.sum(), rtol=1e-12)


# ============================================================================ probe from file
def file_probe(n_modes: int = 2) -> np.ndarray:
    c = np.arange(WINDOW) - WINDOW // 2
    r2 = c[:, None] ** 2 + c[None, :] ** 2
    base = np.exp(-r2 / 20.0 + 0.02j * r2)
    return np.stack([base * (1 + 0.1 * k * c[None, :]) for k in range(n_modes)])


def test_probe_from_file_layouts(tmp_path):
    ctx = context()
    stack = file_probe(2)
    np.save(tmp_path / "mine.npy", stack)
    np.save(tmp_path / "ref.npy", np.moveaxis(stack, 0, -1))  # the reference's (ny, nx, modes)
    np.save(tmp_path / "one.npy", stack[0])
    mine = ProbeFromFile(path=str(tmp_path / "mine.npy")).build(ctx, 2)
    ref = ProbeFromFile(path=str(tmp_path / "ref.npy")).build(ctx, 2)
    explicit = ProbeFromFile(path=str(tmp_path / "ref.npy"), layout="reference").build(ctx, 2)
    np.testing.assert_allclose(ref, mine, rtol=1e-12)
    np.testing.assert_allclose(explicit, mine, rtol=1e-12)
    # rescaled copy of the file, total intensity = the mean pattern's
    np.testing.assert_allclose(np.sum(np.abs(mine) ** 2), ctx.mean_pattern.sum(), rtol=1e-12)
    scale = np.sqrt(ctx.mean_pattern.sum() / np.sum(np.abs(stack) ** 2))
    np.testing.assert_allclose(mine, stack * scale, rtol=1e-12)
    kept = ProbeFromFile(path=str(tmp_path / "mine.npy"), rescale=False).build(ctx, 1)
    np.testing.assert_allclose(kept, stack[:1], rtol=1e-12)
    one = ProbeFromFile(path=str(tmp_path / "one.npy")).build(ctx, 1)
    np.testing.assert_allclose(one[0], mine[0] / np.linalg.norm(mine[0]) * np.linalg.norm(one),
                               rtol=1e-12)


def test_probe_from_file_adds_orthogonal_modes(tmp_path):
    ctx = context()
    stack = file_probe(2)
    np.save(tmp_path / "p.npy", stack)
    probe = ProbeFromFile(path=str(tmp_path / "p.npy"), extra_mode_power=0.25).build(ctx, 5)
    assert probe.shape == (5, WINDOW, WINDOW)
    flat = probe.reshape(5, -1)
    # added modes are orthogonal to the file's modes and to each other
    assert overlaps(probe[2:]).max() < 1e-10
    assert np.abs(flat[:2].conj() @ flat[2:].T).max() < 1e-10 * np.linalg.norm(flat[0]) ** 2
    powers = np.sum(np.abs(probe) ** 2, axis=(1, 2))
    np.testing.assert_allclose(powers[2:].sum() / powers.sum(), 0.25, rtol=1e-12)
    np.testing.assert_allclose(powers.sum(), ctx.mean_pattern.sum(), rtol=1e-12)


def test_probe_from_file_rejects_bad_input(tmp_path):
    ctx = context()
    with pytest.raises(ValueError, match="path: file not found"):
        ProbeFromFile(path=str(tmp_path / "missing.npy"))
    np.save(tmp_path / "square.npy", np.ones((WINDOW, WINDOW, WINDOW), complex))
    with pytest.raises(ValueError, match="layout: .* fits both layouts"):
        ProbeFromFile(path=str(tmp_path / "square.npy")).build(ctx, 1)
    np.save(tmp_path / "small.npy", np.ones((2, 16, 16), complex))
    with pytest.raises(ValueError, match=r"path: expected a probe on the window \(32, 32\)"):
        ProbeFromFile(path=str(tmp_path / "small.npy")).build(ctx, 1)
    np.save(tmp_path / "nan.npy", np.full((WINDOW, WINDOW), np.nan))
    with pytest.raises(ValueError, match="path: .* NaN"):
        ProbeFromFile(path=str(tmp_path / "nan.npy"))
    with pytest.raises(ValueError, match="layout: expected"):
        ProbeFromFile(path=str(tmp_path / "small.npy"), layout="yx")


# ============================================================================ configs
def test_configs_round_trip_through_the_registry(tmp_path):
    np.save(tmp_path / "ctf.npy", np.ones((WINDOW, WINDOW), complex))
    np.save(tmp_path / "probe.npy", file_probe(1))
    configs = [
        ("aperture", {"hermite_modes": [3, 2], "extra_defocus_A": 12.5,
                      "aberrations": [-10.0, 2.0], "beam_ctf": str(tmp_path / "ctf.npy")}),
        ("aperture", {"defocus_spread_A": [0.0, 15.0, -15.0]}),
        ("mean_pattern", {"aberrations": {"C10": -5.0, "C30": 1e4}}),
        ("binary_aperture", {"threshold": 0.5, "hermite_modes": [2, 2]}),
        ("probe_from_file", {"path": str(tmp_path / "probe.npy"), "layout": "modes_first"}),
    ]
    ctx = context()
    for name, settings in configs:
        component = REGISTRY.create("probe_initializer", {"type": name, **settings})
        config = json.loads(json.dumps(component.to_config()))
        rebuilt = REGISTRY.create("probe_initializer", config)
        assert rebuilt.to_config() == config
        n = 3 if name != "binary_aperture" else 4
        np.testing.assert_allclose(rebuilt.build(ctx, n), component.build(ctx, n), rtol=1e-12)
