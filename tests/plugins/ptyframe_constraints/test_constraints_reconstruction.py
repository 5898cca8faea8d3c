"""Constraints inside real reconstructions of the project's own simulated data.

Small set-up (24 px window, 0.25 Å pixels, 6 x 6 scan, 0.6 Å step, 200 kV, 25 mrad, 50 Å
defocus; noise-free patterns scaled to 1e4 counts), double precision on the CPU, true
positions, probe refined from epoch 5. Each run takes well under a second. Phases are scored
over the scanned region against the truth (global phase and shift removed). Thresholds are
measured values (in the comments) with a margin, next to the unconstrained runs they are
compared with.
"""

from __future__ import annotations

import numpy as np
import pytest
from ptyframe_constraints.object_constraints import PhaseOnlyObject, RestartFromVacuum
from ptyframe_constraints.probe_constraints import (
    OrthogonalProbeModes,
    ProbeFourierProjection,
    ProbePhaseOnly,
    probe_spectrum,
)

from ptyframe import Device, FromEpoch, Reconstruction, load_registry
from ptyframe.testing.simulate import SimulatedData, simulate_dataset
from ptyframe.testing.validation import phase_correlation, resample_to_grid, scanned_region_mask

REGISTRY = load_registry()
WINDOW = 24
SCAN = (6, 6)
CPU = Device("cpu", "double")


def multislice():
    return REGISTRY.create("propagator", {"type": "multislice", "slice_thickness_A": 2.0})


def simulate(**kwargs) -> SimulatedData:
    return simulate_dataset(multislice(), window=WINDOW, scan_shape=SCAN, step_A=0.6,
                            **kwargs)


def reconstruct(sim: SimulatedData, epochs: int, callbacks=(), **kwargs):
    kwargs.setdefault("refine_probe", FromEpoch(5))
    rec = Reconstruction(sim.patterns * 1e4, sim.experiment, positions_A=sim.positions_A,
                         propagator=multislice(), device=CPU, progress=False, **kwargs)
    return rec, rec.run(epochs, callbacks=callbacks)


def correlation(sim: SimulatedData, result) -> float:
    truth = resample_to_grid(sim.phase, sim.grid, result.grid)
    return phase_correlation(result.phase, truth,
                             mask=scanned_region_mask(result.grid, sim.positions_A))


def max_overlap(modes: np.ndarray) -> float:
    """Largest normalised off-diagonal |<P_i, P_j>| / (||P_i|| ||P_j||)."""
    flat = modes.reshape(modes.shape[0], -1)
    s = flat.conj() @ flat.T
    norm = np.sqrt(np.abs(np.diag(s)))
    return float(np.abs(s / np.outer(norm, norm) - np.eye(len(norm))).max())


@pytest.fixture(scope="module")
def coherent() -> SimulatedData:
    return simulate()


def test_phase_only_object_on_a_pure_phase_specimen():
    # measured (40 epochs): corr 0.9955, final loss 0.41, no history reset at all (the
    # projected gradient keeps |O| = 1 to second order); unconstrained: 0.9951, loss 0.92,
    # |O| off by up to 0.12
    sim = simulate(absorption=0.0)
    assert np.allclose(np.abs(sim.object), 1.0)
    _, result = reconstruct(sim, 40, constraints=[PhaseOnlyObject()])
    assert np.abs(np.abs(result.object) - 1.0).max() < 1e-12
    assert correlation(sim, result) >= 0.99
    _, free = reconstruct(sim, 40)
    assert np.abs(np.abs(free.object) - 1.0).max() > 0.01  # the constraint did something
    assert result.loss[-1] < free.loss[-1]


def test_orthogonal_probe_modes_in_a_mixed_state_reconstruction():
    # 3 modes, 20 % of the power outside the main one. Measured (40 epochs): orthogonal
    # 0.9911 (loss 4.2), modes orthogonal to 2e-16; without the constraint 0.9897 (loss 4.3),
    # modes overlapping by 2.3e-3
    sim = simulate(n_probe_modes=3, probe_mode_power=0.2)
    _, result = reconstruct(sim, 40, n_probe_modes=3, constraints=[OrthogonalProbeModes()])
    _, free = reconstruct(sim, 40, n_probe_modes=3)
    assert max_overlap(result.probe) < 1e-10
    assert max_overlap(free.probe) > 1e-4
    power = np.sum(np.abs(result.probe) ** 2, axis=(1, 2))
    assert np.all(np.diff(power) < 0)
    assert correlation(sim, result) >= max(correlation(sim, free) - 2e-3, 0.98)


def test_restart_from_vacuum_resets_the_object(coherent):
    # measured: loss 3.46 at epoch 20 -> 435 right after the restart, back to 3.8 by epoch 40,
    # corr 0.9906 (the probe refined before the restart is kept)
    snapshots = {}

    def keep(report):
        snapshots[report.epoch] = np.array(report.params["object"])

    _, result = reconstruct(coherent, 40, callbacks=[keep],
                            constraints=[RestartFromVacuum(epochs=[20])])
    assert np.array_equal(snapshots[21], np.ones_like(snapshots[21]))  # after epoch 20
    assert np.abs(snapshots[20] - 1).max() > 0.1 and np.abs(snapshots[22] - 1).max() > 0.01
    assert result.loss[20] > 50 * result.loss[19]
    assert result.loss[-1] < 0.05 * result.loss[20]
    assert correlation(coherent, result) >= 0.98


def test_probe_phase_only_keeps_the_aperture(coherent):
    # known aberrations: the probe's spectral modulus stays the initial aperture's (to 1e-15),
    # corr 1.0000 after 60 epochs (unconstrained 0.9964)
    rec = Reconstruction(coherent.patterns * 1e4, coherent.experiment,
                         positions_A=coherent.positions_A, propagator=multislice(), device=CPU,
                         progress=False, refine_probe=FromEpoch(5),
                         constraints=[ProbePhaseOnly()])
    initial = np.abs(probe_spectrum(np.array(rec.initialize()["probe"]), CPU))
    result = rec.run(60)
    final = np.abs(probe_spectrum(result.probe, CPU))
    np.testing.assert_allclose(final, initial, atol=1e-10 * initial.max())
    assert correlation(coherent, result) >= 0.995


def test_probe_fourier_projection_in_a_reconstruction(coherent):
    # disk of 28 mrad (the 25 mrad aperture plus its soft edge of half a detector pixel,
    # 2.1 mrad): spectrum outside the disk stays 0, corr 0.9988 after 60 epochs.
    # Negative control (measured): a 26 mrad disk cuts the aperture's edge -> corr 0.64.
    constraint = ProbeFourierProjection(radius_mrad=28.0)
    _, result = reconstruct(coherent, 60, constraints=[constraint])
    outside = constraint.mask == 0
    spectrum = np.fft.fft2(result.probe)
    assert outside.sum() > 0.5 * outside.size
    assert np.abs(spectrum[:, outside]).max() < 1e-10 * np.abs(spectrum).max()
    assert correlation(coherent, result) >= 0.99
    _, cut = reconstruct(coherent, 60, constraints=[ProbeFourierProjection(radius_mrad=26.0)])
    assert correlation(coherent, cut) < 0.9
