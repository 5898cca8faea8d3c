"""Reconstructions that recover the model's other quantities from the project's own simulated
data: beam current, static background, tilts, local aberrations per sub-scan, object modes,
and the data options (sequence, load_one_by_one, padded detector, dynamic resizing).

Thresholds are measured values with margin (measured figures in the comments).
"""

from __future__ import annotations

import numpy as np
import pytest

from ptyframe import Device, FromEpoch, Reconstruction, load_registry
from ptyframe.io.data import Dataset
from ptyframe.testing.simulate import SimulatedData, simulate_dataset
from ptyframe.testing.validation import phase_correlation, scanned_region_mask

REGISTRY = load_registry()
WINDOW = 24
SCAN = (8, 8)
N = SCAN[0] * SCAN[1]
COUNTS = 1e4


def simulate(**kwargs) -> SimulatedData:
    prop = REGISTRY.create("propagator", {"type": "multislice", "slice_thickness_A": 2.0})
    kwargs.setdefault("seed", 3)
    return simulate_dataset(prop, window=WINDOW, scan_shape=SCAN, step_A=0.6, **kwargs)


def build(sim: SimulatedData, patterns: np.ndarray | None = None, **kwargs) -> Reconstruction:
    kwargs.setdefault("loss", REGISTRY.create("loss", {"type": "lsq_sqrt"}))
    kwargs.setdefault("positions_A", sim.positions_A)
    return Reconstruction(COUNTS * sim.patterns if patterns is None else patterns,
                          sim.experiment, device=Device("cpu", "double"), progress=False,
                          **kwargs)


def true_probe(sim: SimulatedData) -> np.ndarray:
    return sim.probe * np.sqrt(COUNTS)


def correlation(rec: Reconstruction, sim: SimulatedData) -> float:
    result = rec.result()
    mask = scanned_region_mask(result.grid, sim.positions_A)
    return phase_correlation(result.phase, sim.phase, mask=mask)


def test_beam_current_is_recovered():
    rng = np.random.default_rng(1)
    current = 1 + 0.25 * rng.uniform(-1, 1, N)
    sim = simulate(beam_current=current)
    rec = build(sim, initial_probe=true_probe(sim), refine_probe=False,
                refine_beam_current=FromEpoch(3))
    rec.run(40)
    found = rec.result().extra["beam_current"]
    err = np.abs(found / found.mean() - current / current.mean()).max()
    assert err < 0.02  # measured 0.0016
    assert correlation(rec, sim) > 0.99  # measured 0.99993


def test_static_background_is_recovered_and_helps():
    sim = simulate()
    mean_pixel = COUNTS / WINDOW**2
    k = np.hypot(*np.meshgrid(np.arange(WINDOW) - WINDOW // 2, np.arange(WINDOW) - WINDOW // 2,
                              indexing="ij"))
    background = mean_pixel * (0.3 + 0.2 * np.exp(-(k / 8) ** 2))
    patterns = COUNTS * sim.patterns + background
    rec = build(sim, patterns, refine_static_background=FromEpoch(2))
    rec.run(60)
    found = rec.result().extra["static_background"]
    outer = k > 10  # outside the bright field, where the background dominates
    rel = np.abs(found[outer] - background[outer]).mean() / background[outer].mean()
    assert rel < 0.1  # measured 0.025 (0.008 after 150 epochs)
    plain = build(sim, patterns)
    plain.run(60)
    # measured 0.944 with the background refined, 0.119 without (0.986 / 0.104 at 150 epochs)
    assert correlation(rec, sim) > 0.9
    assert correlation(plain, sim) < 0.5


def test_per_measurement_tilts_after_the_specimen_are_recovered():
    rng = np.random.default_rng(4)
    tilts = np.zeros((N, 6))
    tilts[:, 4:6] = rng.normal(0, 1.5e-3, (N, 2))  # detector-plane shifts ~0.35 px
    sim = simulate(tilts=tilts, tilt_mode=1)
    rec = build(sim, initial_probe=true_probe(sim), refine_probe=False, tilt_mode=1,
                tilts=np.zeros((N, 6)), refine_tilts=FromEpoch(2))
    rec.run(50)
    found = rec.result().extra["tilts"][:, 4:6]
    # a common tilt is shared with an object phase ramp: compare deviations from the mean
    found = found - found.mean(axis=0)
    true = tilts[:, 4:6] - tilts[:, 4:6].mean(axis=0)
    rms = np.sqrt(np.mean((found - true) ** 2))
    assert rms < 0.1 * np.sqrt(np.mean(true**2))  # measured 0.0015
    assert np.all(rec.result().extra["tilts"][:, :4] == 0)  # unused tilts not moved


def test_common_tilt_before_the_specimen_is_recovered_with_a_known_object():
    sim = simulate(tilts=np.array([[2e-3, -1e-3, 0, 0, 0, 0]]), tilt_mode=2)
    rec = build(sim, initial_probe=true_probe(sim), refine_probe=False, refine_object=False,
                initial_object=sim.object, tilt_mode=2, refine_tilts=True)
    rec.run(15)
    found = rec.result().extra["tilts"][0, :2]
    np.testing.assert_allclose(found, [2e-3, -1e-3], atol=5e-5)  # measured exact to 1e-6


def test_local_aberrations_per_sub_scan_are_recovered():
    marker = (np.arange(N) >= N // 2).astype(int)  # two sub-scans
    truth = np.zeros((2, 3))
    truth[0] = [-20.0, 8.0, 0.0]   # C10, C12a, C12b (Å)
    truth[1] = [25.0, 0.0, -8.0]
    sim = simulate(aberrations_array=truth, aberration_marker=marker)
    rec = build(sim, initial_probe=true_probe(sim), refine_probe=False,
                aberrations_array=np.zeros((2, 3)), aberration_marker=marker,
                refine_aberrations=FromEpoch(2))
    rec.run(60)
    found = rec.result().extra["aberrations"]
    np.testing.assert_allclose(found, truth, atol=2.0)  # measured within 0.41 Å
    assert correlation(rec, sim) > 0.99


def test_object_modes_fit_an_incoherent_mixture():
    sim = simulate(n_object_modes=2, phase_scale=0.8)
    losses = {}
    for modes in (1, 2):
        rec = build(sim, n_object_modes=modes, initial_probe=true_probe(sim),
                    refine_probe=False)
        rec.run(60)
        losses[modes] = rec.loss_history[-1]
    assert losses[2] < 0.2 * losses[1]  # measured 0.75 vs 24.5 (ratio 0.03)


def test_sequence_load_one_by_one_and_padded_detector(tmp_path):
    sim = simulate()
    path = tmp_path / "scan.npy"
    np.save(path, (COUNTS * sim.patterns).astype(np.float32))
    dataset = Dataset.from_file(path, scan_shape=SCAN)
    detector = REGISTRY.create("detector", {"type": "far_field", "pad_px": 4})
    rec = Reconstruction(dataset, sim.experiment, positions_A=sim.positions_A,
                         device=Device("cpu", "double"), progress=False, load_one_by_one=True,
                         detector=detector, sequence=list(range(0, N, 2)),
                         loss=REGISTRY.create("loss", {"type": "lsq_sqrt"}))
    rec.run(40)
    result = rec.result()
    assert result.probe.shape[-1] == WINDOW + 8
    assert result.grid.pixel_size_A == pytest.approx(sim.grid.pixel_size_A * WINDOW
                                                     / (WINDOW + 8))
    mask = scanned_region_mask(result.grid, sim.positions_A)
    from ptyframe.testing.validation import resample_to_grid

    truth = resample_to_grid(sim.phase, sim.grid, result.grid)
    assert phase_correlation(result.phase, truth, mask=mask) > 0.97


def test_dynamic_resize_grows_the_object(tmp_path):
    sim = simulate()
    rec = build(sim, object_margin_px=0, dynamically_resize_object=3, output_dir=tmp_path)
    rec.initialize()
    shape0 = rec.params["object"].shape
    rec.run(2)
    assert rec.params["object"].shape[-1] > shape0[-1]
    assert rec.grid.object_shape == rec.params["object"].shape[-2:]


def test_loss_log_has_terms_and_extra_checkpoints(tmp_path):
    sim = simulate()
    reg = None
    if "atv" in REGISTRY.names("regularizer"):
        reg = [REGISTRY.create("regularizer", {"type": "atv", "weight": 1e-3})]
    rec = build(sim, output_dir=tmp_path, refine_beam_current=FromEpoch(1),
                static_background=1.0, regularizers=reg or ())
    rec.run(3)
    header = (tmp_path / "loss.csv").read_text().splitlines()[0]
    assert "memory_mb" in header and "n_measurements" in header
    if reg:
        assert "reg_atv" in header
    for name in ("co.npy", "cp.npy", "cg.npy", "cb.npy", "cs.npy"):
        assert (tmp_path / name).exists(), name
    again = build(sim, output_dir=tmp_path, refine_beam_current=FromEpoch(1),
                  static_background=1.0, regularizers=reg or ())
    assert again.load_checkpoint() == 3
    np.testing.assert_allclose(again.result().extra["static_background"],
                               rec.result().extra["static_background"])


def test_phase_plates_from_hdf5_reach_the_model(tmp_path):
    import h5py

    sim = simulate()
    rng = np.random.default_rng(0)
    plates = rng.normal(0, 0.3, (N, WINDOW, WINDOW))
    path = tmp_path / "plates.h5"
    with h5py.File(path, "w") as f:
        f["configs"] = plates
    rec = build(sim, phase_plates=str(path))
    rec.initialize()
    factor = np.fft.fftshift(rec.model.phase_plates[3])
    np.testing.assert_allclose(np.angle(factor), plates[3], atol=1e-9)
    assert rec.to_config()["phase_plates"] == {"path": str(path), "dataset": "configs"}
    with pytest.raises(ValueError, match="phase_plates"):
        build(sim, phase_plates={"path": str(path), "dataset": "nope"})
    with pytest.raises(ValueError, match="phase_plates"):
        build(sim, phase_plates=plates[:3])
