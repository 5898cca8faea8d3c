"""Each regularizer family at work in a Reconstruction of the project's simulated data, with the
same run repeated without it: the asserted outcome is the physical effect the penalty is for.

Small problems (16 px window, 8 x 8 or 10 x 10 scan, 0.25 Å pixels, 200 kV, 25 mrad) in double
precision on the CPU; every figure quoted in a comment was measured with this file's settings.
The Reconstruction prepares the regularizers with its ModelContext (scan shape, slice
distance, wavelength, grid) and passes the epoch.
"""

from __future__ import annotations

import functools

import attrs
import numpy as np
from ptyframe_regularizers.probe_regularizers import aperture_disk, cosine_window
from scipy import ndimage

from ptyframe import Device, FromEpoch, Reconstruction, load_registry
from ptyframe.components import ModelContext
from ptyframe.engine.model import FarFieldModel
from ptyframe.testing.simulate import SimulatedData, simulate_dataset
from ptyframe.testing.validation import (
    phase_correlation,
    position_error_A,
    resample_to_grid,
    scanned_region_mask,
)

REGISTRY = load_registry()
WINDOW = 16
STEP_A = 0.6


def multislice(dz_A: float = 2.0):
    return REGISTRY.create("propagator", {"type": "multislice", "slice_thickness_A": dz_A})


def regularizer(name: str, **settings):
    return REGISTRY.create("regularizer", {"type": name, **settings})


def reconstruct(sim: SimulatedData, epochs: int, regularizers=(), *, dz_A: float = 2.0,
                experiment=None, **kwargs):
    """Run a Reconstruction of ``sim`` (true positions, fixed probe unless told otherwise).

    The Reconstruction prepares the regularizers with its ModelContext and evaluates their
    weights at each epoch."""
    kwargs.setdefault("positions_A", sim.positions_A)
    kwargs.setdefault("refine_probe", False)
    # the figures below were measured with lsq_sqrt on every pattern, last epoch kept (the
    # defaults before ml became the default for counts and patterns were held out); each
    # test compares a run with and without a penalty under these same settings
    kwargs.setdefault("loss", REGISTRY.create("loss", {"type": "lsq_sqrt"}))
    kwargs.setdefault("validation_fraction", 0.0)
    rec = Reconstruction(sim.patterns, experiment or sim.experiment, propagator=multislice(dz_A),
                         device=Device("cpu", "double"), progress=False,
                         regularizers=list(regularizers), **kwargs)
    return rec.run(epochs)


def correlation(sim: SimulatedData, result, recon=None, truth=None) -> float:
    """Phase correlation over the scanned region (global phase and shift removed)."""
    truth = resample_to_grid(sim.phase if truth is None else truth, sim.grid, result.grid)
    mask = scanned_region_mask(result.grid, sim.positions_A)
    return phase_correlation(result.phase if recon is None else recon, truth, mask=mask)


def simulate(dose: float, seed: int, scan=(8, 8), **kwargs) -> SimulatedData:
    return simulate_dataset(multislice(kwargs.pop("dz_A", 2.0)), window=WINDOW, scan_shape=scan,
                            step_A=STEP_A, dose_per_pattern=dose, seed=seed, **kwargs)


@functools.cache
def low_dose() -> SimulatedData:
    return simulate(1e3, seed=0)


@functools.cache
def low_dose_plain():
    return reconstruct(low_dose(), 40)


# ============================================================================ object
def test_atv_denoises_a_low_dose_reconstruction():
    # 1e3 electrons per pattern, 40 epochs, fixed probe. Measured phase correlation with the
    # truth: 0.898 without, 0.971 with atv weight 10 (weight 3: 0.94, 30: 0.89 - too smooth;
    # seeds 1, 2, 4: 0.80 -> 0.97, 0.72 -> 0.91, 0.84 -> 0.97)
    sim = low_dose()
    plain = correlation(sim, low_dose_plain())
    with_atv = correlation(sim, reconstruct(sim, 40, [regularizer("atv", weight=10.0)]))
    assert plain < 0.93, plain
    assert with_atv >= 0.96 and with_atv >= plain + 0.04, (plain, with_atv)


def _absorption_rms_error(sim: SimulatedData, result) -> float:
    truth = resample_to_grid(-np.log(np.abs(sim.object[0, 0])), sim.grid, result.grid)
    mask = scanned_region_mask(result.grid, sim.positions_A)
    return float(np.sqrt(np.mean((-np.log(np.abs(result.object[0, 0])) - truth)[mask] ** 2)))


def test_l1_absorption_suppresses_absorption_noise():
    # the specimen absorbs weakly (-log|O| = 0.05 phase, RMS 0.003 over the scan); at 1e3
    # electrons the unregularised absorption map is noise: RMS error 0.026 (measured), 0.0038
    # with l1_absorption weight 10, phase correlation 0.898 -> 0.909
    sim = low_dose()
    plain = low_dose_plain()
    result = reconstruct(sim, 40, [regularizer("l1_absorption", weight=10.0)])
    before, after = _absorption_rms_error(sim, plain), _absorption_rms_error(sim, result)
    assert after < 0.3 * before, (before, after)
    assert correlation(sim, result) >= correlation(sim, plain) - 0.01


def test_l1_phase_favours_a_sparse_phase():
    # atoms on an empty background: the L1 norm of the phase removes background noise.
    # Measured: 0.898 -> 0.918 (weight 3); weight 30 flattens the atoms too (0.41)
    sim = low_dose()
    plain = correlation(sim, low_dose_plain())
    sparse = correlation(sim, reconstruct(sim, 40, [regularizer("l1_phase", weight=3.0)]))
    assert sparse >= plain + 0.01, (plain, sparse)


def _mode_difference(result, sim, sigma_px: float) -> tuple[float, float]:
    """RMS of O_1 - O_2 over the scanned region: as is, and low-pass filtered."""
    diff = result.object[0, 0] - result.object[0, 1]
    low = (ndimage.gaussian_filter(diff.real, sigma_px)
           + 1j * ndimage.gaussian_filter(diff.imag, sigma_px))
    mask = scanned_region_mask(result.grid, sim.positions_A)
    return (float(np.sqrt(np.mean(np.abs(diff[mask]) ** 2))),
            float(np.sqrt(np.mean(np.abs(low[mask]) ** 2))))


def test_mixed_variance_keeps_object_modes_alike_at_low_frequencies():
    # two object modes for a one-state specimen (1e4 electrons). Measured RMS of O_1 - O_2:
    # low-pass (sigma 2 px) 0.0043 -> 0.0012 with weight 100, sigma_px 2, while the full
    # difference only goes 0.0093 -> 0.0075: the penalty acts on the low frequencies
    sim = simulate(1e4, seed=0)
    plain = reconstruct(sim, 40, n_object_modes=2)
    tied = reconstruct(sim, 40, [regularizer("mixed_variance", weight=100.0, sigma_px=2.0)],
                       n_object_modes=2)
    (full0, low0), (full1, low1) = _mode_difference(plain, sim, 2.0), _mode_difference(tied, sim,
                                                                                        2.0)
    assert low1 < 0.4 * low0, (low0, low1)
    assert full1 / full0 > 2 * low1 / low0, (full0, full1, low0, low1)
    assert correlation(sim, tied) >= correlation(sim, plain) - 0.005


def _columnar(sim: SimulatedData, dz_A: float, dose: float, seed: int) -> SimulatedData:
    """``sim`` re-simulated with a columnar specimen: every slice carries the same half of the
    first slice's transmission (a crystal on zone axis has no structure along the beam)."""
    n_slices = sim.object.shape[0]
    layer = np.exp(np.log(sim.object[0]) / n_slices)
    obj = np.repeat(layer[None], n_slices, axis=0)
    device = Device("cpu", "double")
    model = FarFieldModel.from_geometry(multislice(dz_A), None, device, (WINDOW, WINDOW),
                          sim.grid.pixel_size_A, sim.experiment.wavelength_A, n_slices, None)
    params = {"object": device.complex(obj), "probe": device.complex(sim.probe * np.sqrt(dose)),
              "positions": device.real(sim.grid.positions_to_pixels(sim.positions_A))}
    expected = np.fft.fftshift(device.to_host(model.intensities(params)), axes=(-2, -1))
    patterns = np.random.default_rng(seed).poisson(np.clip(expected, 0, None))
    return attrs.evolve(sim, patterns=patterns.astype(np.float32), object=obj)


def test_missing_wedge_recovers_the_slices_of_a_columnar_specimen():
    # 2 slices 20 Å apart, 1e4 electrons, 60 epochs. The depth of field (~lambda / alpha^2 =
    # 40 Å) leaves the low lateral frequencies of each slice undetermined; the wedge prior
    # (beta = 1 / alpha = 40) puts them where a columnar specimen has them. Measured: summed
    # phase 0.738 -> 0.895, slices 0.62/0.77 -> 0.78/0.96 with weight 1000
    dz = 20.0
    sim = _columnar(simulate(None, seed=1, scan=(10, 10), n_slices=2, dz_A=dz), dz, 1e4, seed=5)
    wedge = regularizer("missing_wedge", weight=1000.0, beta=40.0)
    results = [reconstruct(sim, 60, regs, dz_A=dz, n_slices=2) for regs in ([], [wedge])]
    summed = [correlation(sim, r) for r in results]
    slices = [[correlation(sim, r, np.angle(r.object[s, 0]), np.angle(sim.object[s, 0]))
               for s in range(2)] for r in results]
    assert summed[1] >= summed[0] + 0.08, summed
    assert min(slices[1]) >= min(slices[0]) + 0.08, slices
    # the penalty it minimised is indeed smaller: the spectrum outside the wedge is emptied
    probe = regularizer("missing_wedge", weight=1.0, beta=40.0)
    probe.prepare(ModelContext(window=(WINDOW, WINDOW), pixel_size_A=sim.grid.pixel_size_A,
                               wavelength_A=sim.experiment.wavelength_A,
                               n_measurements=len(sim.patterns), device=Device("cpu", "double"),
                               n_slices=2, slice_thickness_A=(dz,)))
    outside = [probe.value_and_grad({"object": r.object}, Device("cpu", "double"))[0]
               for r in results]
    assert outside[1] < 0.1 * outside[0], outside


# ============================================================================ probe
def _outside_fraction(probe: np.ndarray, radius_mrad: float, wavelength_A: float) -> float:
    disk = aperture_disk(probe.shape[-2:], 0.25, wavelength_A, radius_mrad, 1.0)
    power = np.abs(np.fft.fft2(probe, norm="ortho")) ** 2
    return float(np.sum(power * (1 - disk)) / np.sum(power))


def test_probe_fourier_mask_removes_power_outside_the_aperture():
    # the metadata give a 35 mrad aperture (true: 25), so the initial probe is too wide in
    # reciprocal space; the probe is refined from the first epoch (1e4 electrons, 40 epochs).
    # The mask at the true 25 mrad: power outside 2.9e-5 -> 1.6e-6 of the probe and phase
    # correlation 0.901 -> 0.974 (weight 100, i.e. ~N measurements; measured)
    sim = simulate(1e4, seed=2)
    wrong = attrs.evolve(sim.experiment, convergence_angle_mrad=35.0)
    lam = sim.experiment.wavelength_A
    # (the metadata check would refuse the wrong angle: the disc says 25 mrad)
    plain = reconstruct(sim, 40, experiment=wrong, refine_probe=True, check_metadata=False)
    masked = reconstruct(sim, 40, [regularizer("probe_fourier_mask", weight=100.0,
                                               radius_mrad=25.0)],
                         experiment=wrong, refine_probe=True, check_metadata=False)
    before, after = _outside_fraction(plain.probe, 25, lam), _outside_fraction(masked.probe, 25,
                                                                               lam)
    assert after < 0.2 * before, (before, after)
    assert correlation(sim, masked) >= correlation(sim, plain) + 0.04


def test_probe_window_keeps_the_probe_inside_its_window():
    # the probe starts 50 Å over-defocused, so wide that it wraps around the 4 Å window; the
    # window penalty ([0.6, 1.0], weight 10) pulls it back (1e4 electrons, 40 epochs). Measured
    # edge power (1 - window)^2 |P|^2: 0.27 -> 0.027 of the probe (truth: 0.056); phase
    # correlation 0.62 -> 0.84 (other seeds: 0.71 -> 0.82, 0.72 -> 0.97, 0.26 -> 0.75)
    sim = simulate(1e4, seed=2)
    start = REGISTRY.create("probe_initializer", {"type": "aperture", "extra_defocus_A": 50.0})
    damping = (1 - cosine_window((WINDOW, WINDOW), 0.6, 1.0)) ** 2

    def edge(probe):
        return float(np.sum(np.abs(probe) ** 2 * damping) / np.sum(np.abs(probe) ** 2))

    plain = reconstruct(sim, 40, refine_probe=True, probe_initializer=start)
    windowed = reconstruct(sim, 40, [regularizer("probe_window", weight=10.0,
                                                 window=[0.6, 1.0])],
                           refine_probe=True, probe_initializer=start)
    assert edge(windowed.probe) < 0.2 * edge(plain.probe), (edge(plain.probe),
                                                            edge(windowed.probe))
    assert edge(windowed.probe) < edge(sim.probe)
    assert correlation(sim, windowed) >= correlation(sim, plain) + 0.1


# ============================================================================ scan
@functools.cache
def jittered_start() -> tuple[SimulatedData, np.ndarray]:
    """A regular raster (the truth) and a start 0.2 Å (RMS per axis) off it, 1e3 electrons."""
    sim = simulate(1e3, seed=3)
    start = sim.positions_A + np.random.default_rng(7).normal(0, 0.2, sim.positions_A.shape)
    return sim, start


@functools.cache
def jittered_plain() -> float:
    sim, start = jittered_start()
    result = reconstruct(sim, 40, positions_A=start, refine_positions=FromEpoch(5))
    return position_error_A(result.positions_A, sim.positions_A)


def test_position_smoothness_reduces_position_errors_at_low_dose():
    # RMS position error (common offset removed): start 0.248 Å; refined without a
    # regularizer 0.364 Å (the noise moves them further), with position_smoothness
    # (fast and slow weight 100) 0.104 Å (measured)
    sim, start = jittered_start()
    assert position_error_A(start, sim.positions_A) > 0.2
    smooth = reconstruct(sim, 40, [regularizer("position_smoothness", fast_weight=100.0,
                                               slow_weight=100.0)],
                         positions_A=start, refine_positions=FromEpoch(5))
    error = position_error_A(smooth.positions_A, sim.positions_A)
    assert error < 0.5 * jittered_plain(), (jittered_plain(), error)


def test_deformation_pulls_positions_onto_an_affine_raster():
    # same start; deformation weight 10: 0.364 -> 0.047 Å (measured)
    sim, start = jittered_start()
    affine = reconstruct(sim, 40, [regularizer("deformation", weight=10.0)],
                         positions_A=start, refine_positions=FromEpoch(5))
    error = position_error_A(affine.positions_A, sim.positions_A)
    assert error < 0.25 * jittered_plain(), (jittered_plain(), error)
    assert error < 0.1


def test_tilt_smoothness_removes_tilt_jitter():
    # detector-plane (after-specimen) tilts that vary linearly across the scan (descan), up to
    # 1.5 mrad; per-measurement tilts refined from zero at 1e3 electrons (40 epochs). The
    # error of the refined tilts (common tilt removed) splits into an affine ramp, which the
    # smoothness penalty leaves alone by design, and jitter. Measured: jitter 2.1e-4 ->
    # 8.2e-5 rad with fast and slow weight 1e8 per rad^2; phase correlation 0.728 -> 0.792
    iy, ix = (g.ravel() for g in np.meshgrid(np.arange(8), np.arange(8), indexing="ij"))
    n = iy.size
    tilts = np.zeros((n, 6))
    tilts[:, 4] = 1.5e-3 * (iy - 3.5) / 3.5
    tilts[:, 5] = -1.0e-3 * (ix - 3.5) / 3.5 + 0.5e-3 * (iy - 3.5) / 3.5
    sim = simulate(1e3, seed=6, tilts=tilts, tilt_mode=1)
    design = np.stack([iy, ix, np.ones(n)], axis=1)

    def jitter(result) -> float:
        error = result.extra["tilts"][:, 4:6] - tilts[:, 4:6]
        coef, *_ = np.linalg.lstsq(design, error, rcond=None)
        return float(np.sqrt(np.mean((error - design @ coef) ** 2)))

    runs = [reconstruct(sim, 40, regs, tilt_mode=1, tilts=np.zeros((n, 6)),
                        refine_tilts=FromEpoch(2))
            for regs in ([], [regularizer("tilt_smoothness", fast_weight=1e8,
                                          slow_weight=1e8)])]
    assert jitter(runs[1]) < 0.5 * jitter(runs[0]), [jitter(r) for r in runs]
    assert correlation(sim, runs[1]) >= correlation(sim, runs[0]) + 0.03
    assert np.all(runs[1].extra["tilts"][:, :4] == 0)  # tilts the model does not use
