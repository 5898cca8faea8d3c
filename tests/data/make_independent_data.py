"""Generate the independent validation data in tests/data/indep_*.npz with abTEM.

The files are simulated by abTEM (a multislice code nobody on this project wrote), so the
tests in tests/independent/ check ptyframe's forward models and reconstructions against an
outside simulator instead of against ptyframe's own ``ptyframe.testing.simulate``.
This script is kept in the repository but is not run by the test suite or CI; the .npz files
it writes are committed. Regenerate them (about a minute on 2 cores) with

    pip install abtem==1.0.11 ase
    python tests/data/make_independent_data.py            # writes next to this file

Specimen: SrTiO3 [001] (a = 3.905 Å), a periodic 2 x 2 unit-cell supercell (7.81 Å square)
sampled on 32 x 32 pixels (0.244 Å), Lobato potential, 'infinite' projection, static
lattice. The simulation cell *is* the 32 x 32 probe window: abTEM's periodic multislice then
computes exactly what a window-based model computes for a periodic object (every scan
position sees a cyclic shift of the cell), so agreement is limited only by the physics and
conventions of the two codes, not by sampling or cropping.

Files (arrays float32 / complex64, [y, x] order; every file holds ``metadata``, a JSON string
with units and conventions):

* indep_far_field.npz     (a) 4D-STEM, 1 unit cell in one slice, 5 x 5 scan
* indep_multislice.npz    (b) 4D-STEM, 4 unit cells (15.6 Å) in 8 slices of 1.95 Å, 4 x 4 scan
* indep_mixed_state.npz   (c) 4D-STEM with a defocus spread: incoherent weighted sum of the
                          patterns of 5 coherent probes (probe modes = sqrt(weight) x probe)
* indep_focal_series.npz  (d) plane-wave images at 4 defocus values (both signs)
* indep_larbed.npz        (e) one probe position, 3 x 3 beam tilts (+-20 mrad), 4 unit cells
                          (15.6 Å) in 2 slices of 7.81 Å

Conventions written into every file:

* Defocus df = -C10 (abTEM's), positive = underfocus; chi(k) = 2 pi / lambda (C10 a^2 / 2 +
  Cs a^4 / 4), a = lambda |k|; probe(k) = A(k) exp(-i chi); a defocused image is
  IFFT[FFT(exit) exp(-i chi)].
* Patterns ``patterns`` (N, 32, 32): |FFT(exit)|^2 as fractions of the incident beam, zero
  frequency at pixel (16, 16) (fftshifted), abTEM's ``PixelatedDetector(max_angle="full")``.
* ``probe`` (modes, 32, 32): abTEM's probe centred on window pixel (16, 16), scaled by
  sqrt(32 * 32) so that sum |probe|^2 = 1 (then |FFT_ortho(probe)|^2 is in the units of
  ``patterns``).
* ``positions_A`` (N, 2): probe centres (y, x) in Å, in the cell frame where cell pixel
  (iy, ix) is at (iy, ix) * pixel_size_A; ``transmission`` (slices, 32, 32) = exp(i sigma V)
  per slice as abTEM transmits it (V: projected slice potential, V Å; band-limited by abTEM's
  anti-aliasing aperture), same frame.
* abTEM's multislice: transmit, then propagate by the slice thickness (also after the last
  slice); its propagator carries the 2/3-Nyquist anti-aliasing aperture (taper 0.01).
* Tilts (LARBED): abTEM ``tilt=(t_x, t_y)`` mrad: every Fresnel step over dz is multiplied by
  exp(-2 pi i dz (k_x tan t_x + k_y tan t_y)) (the wave drifts by dz tan t; no phase ramp on
  the incident wave, i.e. tilted illumination with de-scan). Stored as ``tilts_rad``
  (N, 2) = (t_y, t_x) radians.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import abtem  # noqa: E402
import ase  # noqa: E402
import dask  # noqa: E402
import numpy as np  # noqa: E402
from abtem.antialias import AntialiasAperture  # noqa: E402
from abtem.core.energy import energy2sigma, energy2wavelength  # noqa: E402
from ase import Atoms  # noqa: E402

dask.config.set(scheduler="synchronous")
abtem.config.set({"dask.lazy": False, "fftw.threads": 1, "diagnostics.progress_bar": False})

HERE = Path(__file__).resolve().parent
A_STO = 3.905  # Å
REPS = 2  # unit cells per side of the (periodic) cell
N = 32  # pixels per side: cell = window
ENERGY_EV = 200e3
LAM = float(energy2wavelength(ENERGY_EV))  # Å
SIGMA = float(energy2sigma(ENERGY_EV))  # rad / (V Å)
CELL_A = REPS * A_STO
PIXEL_A = CELL_A / N


def sto(thickness_uc: int) -> Atoms:
    """SrTiO3 [001], REPS x REPS cells, atomic planes in the middle of a/2-thick slices."""
    unit = Atoms("SrTiO3", scaled_positions=[(0, 0, 0), (.5, .5, .5), (.5, .5, 0),
                                             (.5, 0, .5), (0, .5, .5)],
                 cell=[A_STO] * 3, pbc=True)
    atoms = unit.repeat((REPS, REPS, thickness_uc))
    atoms.positions[:, 2] += A_STO / 4
    return atoms


def potential(thickness_uc: int, slice_A: float) -> tuple[object, np.ndarray, np.ndarray]:
    """abTEM potential, its transmission (S, y, x) complex64 and slice potentials (S, y, x)."""
    pot = abtem.Potential(sto(thickness_uc), gpts=(N, N), slice_thickness=slice_A,
                          parametrization="lobato", projection="infinite").build(lazy=False)
    # abTEM band-limits each slice's transmission with its anti-aliasing aperture before
    # transmitting (conventional_multislice_step): store what it actually multiplies by
    trans = np.stack([np.asarray(AntialiasAperture().bandlimit(
        s.transmission_function(ENERGY_EV), in_place=False).array)[0]
        for s in pot.generate_slices()]).transpose(0, 2, 1)
    v = np.asarray(pot.array).transpose(0, 2, 1)
    return pot, trans.astype(np.complex64), v.astype(np.float32)


def yx(array: np.ndarray) -> np.ndarray:
    """abTEM [..., x, y] -> [..., y, x]."""
    return np.swapaxes(np.asarray(array), -1, -2)


def make_probe(pot: object, defocus_A: float, semiangle_mrad: float,
               tilt_mrad: tuple[float, float] = (0.0, 0.0)) -> abtem.Probe:
    probe = abtem.Probe(energy=ENERGY_EV, semiangle_cutoff=semiangle_mrad, defocus=defocus_A,
                        tilt=tilt_mrad)
    probe.grid.match(pot)
    return probe


def centred_probe(probe: abtem.Probe) -> np.ndarray:
    """The probe at window pixel (N/2, N/2), [y, x], scaled to sum |P|^2 = 1."""
    c = (N // 2) * PIXEL_A
    wave = yx(probe.build(scan=abtem.CustomScan([[c, c]])).array)[0]
    return (wave * N).astype(np.complex64)


def patterns(probe: abtem.Probe, pot: object, positions_A: np.ndarray) -> np.ndarray:
    """abTEM far-field patterns (n, y, x), fftshifted, fractions of the beam."""
    scan = abtem.CustomScan(positions_A[:, ::-1].copy())  # abTEM wants (x, y)
    meas = probe.multislice(pot, scan=scan, detectors=abtem.PixelatedDetector(
        max_angle="full"), lazy=False)
    arr = np.asarray(meas.array).reshape(len(positions_A), N, N)
    return yx(arr).astype(np.float32)


def scan_grid(n: int, step_A: float) -> np.ndarray:
    """(n*n, 2) row-major (y slow) positions (y, x) Å around the cell centre."""
    offsets = (np.arange(n) - (n - 1) / 2) * step_A
    gy, gx = np.meshgrid(offsets, offsets, indexing="ij")
    return np.stack([gy.ravel(), gx.ravel()], axis=1) + CELL_A / 2


def base_metadata(kind: str, thickness_uc: int, slice_A: float, n_slices: int) -> dict:
    return {
        "kind": kind,
        "generator": "tests/data/make_independent_data.py (abTEM multislice)",
        "abtem_version": abtem.__version__, "ase_version": ase.__version__,
        "specimen": f"SrTiO3 [001], a = {A_STO} Å, {REPS} x {REPS} unit cells (periodic "
                    f"cell {CELL_A:.4f} Å), {thickness_uc} unit cell(s) = "
                    f"{thickness_uc * A_STO:.3f} Å thick; Lobato, infinite projection",
        "voltage_kV": ENERGY_EV / 1e3, "wavelength_A": LAM,
        "sigma_rad_per_VA": SIGMA, "pixel_size_A": PIXEL_A, "window_px": N,
        "cell_A": CELL_A, "slice_thickness_A": slice_A, "n_slices": n_slices,
        "defocus_convention": "defocus_A = -C10 (abTEM), positive = underfocus; chi = 2 pi / "
                              "lambda (C10 a^2/2 + Cs a^4/4); probe(k) = A(k) exp(-i chi)",
        "pattern_convention": "patterns[n, ky, kx] = |FFT(exit)|^2, fraction of the beam, "
                              "zero frequency at pixel (N/2, N/2) (fftshifted), no flip",
        "probe_convention": "probe[m] centred at window pixel (N/2, N/2), [y, x]; sum over "
                            "modes of sum |probe|^2 = 1; |FFT_ortho(probe)|^2 in pattern units",
        "position_convention": "positions_A[n] = (y, x) probe centre, Å, cell frame: cell "
                               "pixel (iy, ix) at (iy, ix) * pixel_size_A; the cell is periodic",
        "transmission_convention": "transmission[s] = exp(i sigma V_s) band-limited by the "
                                   "anti-aliasing aperture, as abTEM transmits slice s, [y, x], "
                                   "cell frame",
        "multislice_convention": "abTEM: transmit slice s, then propagate by "
                                 "slice_thickness_A with exp(-i pi lambda dz k^2) and the "
                                 "2/3-Nyquist anti-aliasing aperture (also after the last "
                                 "slice)",
    }


def save(name: str, metadata: dict, **arrays: np.ndarray) -> None:
    path = HERE / name
    np.savez_compressed(path, metadata=np.array(json.dumps(metadata)), **arrays)
    print(f"wrote {path.name}: {path.stat().st_size / 1024:.0f} kB")


def far_field() -> None:
    """(a) single slice, coherent probe, 5 x 5 scan with sub-pixel steps."""
    pot, trans, v = potential(1, A_STO)
    defocus, semiangle = 50.0, 20.0
    probe = make_probe(pot, defocus, semiangle)
    pos = scan_grid(5, 0.45)
    md = base_metadata("far_field", 1, A_STO, 1)
    md.update(defocus_A=defocus, C10_A=float(probe.aberrations.C10), semiangle_mrad=semiangle,
              scan_step_A=0.45, scan_shape=[5, 5])
    save("indep_far_field.npz", md, patterns=patterns(probe, pot, pos),
         probe=centred_probe(probe)[None], positions_A=pos, transmission=trans,
         potential_projected=v.sum(0))


def multislice() -> None:
    """(b) 4 unit cells in 8 slices, focused probe, 4 x 4 scan."""
    slice_A = A_STO / 2
    pot, trans, v = potential(4, slice_A)
    defocus, semiangle = 0.0, 20.0
    probe = make_probe(pot, defocus, semiangle)
    pos = scan_grid(4, 0.6)
    md = base_metadata("multislice", 4, slice_A, trans.shape[0])
    md.update(defocus_A=defocus, semiangle_mrad=semiangle, scan_step_A=0.6, scan_shape=[4, 4])
    save("indep_multislice.npz", md, patterns=patterns(probe, pot, pos),
         probe=centred_probe(probe)[None], positions_A=pos, transmission=trans,
         potential_projected=v.sum(0))


def mixed_state() -> None:
    """(c) defocus spread: 5 defocus values, Gaussian weights, patterns summed incoherently."""
    pot, trans, v = potential(1, A_STO)
    mean, spread, semiangle = 50.0, 40.0, 20.0
    offsets = np.linspace(-2.0, 2.0, 5) * spread
    weights = np.exp(-0.5 * (offsets / spread) ** 2)
    weights /= weights.sum()
    pos = scan_grid(4, 0.6)
    total = np.zeros((len(pos), N, N))
    modes = []
    for df, w in zip(mean + offsets, weights, strict=True):
        probe = make_probe(pot, float(df), semiangle)
        total += w * patterns(probe, pot, pos)
        modes.append(np.sqrt(w) * centred_probe(probe))
    md = base_metadata("mixed_state", 1, A_STO, 1)
    md.update(defocus_A=mean, defocus_spread_sigma_A=spread, semiangle_mrad=semiangle,
              mode_defocus_A=(mean + offsets).tolist(), mode_weights=weights.tolist(),
              scan_step_A=0.6, scan_shape=[4, 4],
              partial_coherence="patterns = sum_m w_m |FFT(exit_m)|^2 over the mode defoci "
                                "(sum w_m = 1); probe[m] = sqrt(w_m) x coherent probe m, so "
                                "the patterns are the SUM over probe modes")
    save("indep_mixed_state.npz", md, patterns=total.astype(np.float32),
         probe=np.stack(modes).astype(np.complex64), positions_A=pos, transmission=trans,
         potential_projected=v.sum(0))


def focal_series() -> None:
    """(d) plane wave through 1 unit cell; images at 4 defocus values (both signs)."""
    pot, trans, v = potential(1, A_STO)
    wave = abtem.PlaneWave(energy=ENERGY_EV)
    wave.grid.match(pot)
    exit_wave = wave.multislice(pot, lazy=False)
    defoci = np.array([-250.0, -80.0, 100.0, 300.0])
    images = [yx(exit_wave.apply_ctf(defocus=float(df)).intensity().array) for df in defoci]
    md = base_metadata("focal_series", 1, A_STO, 1)
    md.update(defocus_A=defoci.tolist(), illumination="plane wave, amplitude 1 per pixel",
              image_convention="images[n] = |IFFT[FFT(exit) exp(-i chi_n)]|^2, chi_n = "
                               "2 pi / lambda C10_n a^2 / 2, C10_n = -defocus_A[n] (abTEM "
                               "Waves.apply_ctf(defocus=...)); natural pixel order, cell frame",
              exit_wave_convention="exit_wave = abTEM plane-wave exit wave (transmitted, "
                                   "then propagated by slice_thickness_A), cell frame")
    save("indep_focal_series.npz", md, images=np.stack(images).astype(np.float32),
         exit_wave=yx(exit_wave.array).astype(np.complex64), defocus_A=defoci,
         transmission=trans, potential_projected=v.sum(0))


def larbed() -> None:
    """(e) one probe position at the cell centre, 3 x 3 tilts, 4 unit cells in 2 slices."""
    pot, trans, v = potential(4, 2 * A_STO)
    defocus, semiangle = 100.0, 15.0
    grid = np.array([-20.0, 0.0, 20.0])  # mrad
    ty, tx = np.meshgrid(grid, grid, indexing="ij")
    tilts_mrad = np.stack([ty.ravel(), tx.ravel()], axis=1)  # (t_y, t_x)
    pos = np.full((1, 2), CELL_A / 2)
    pats = [patterns(make_probe(pot, defocus, semiangle, (float(t[1]), float(t[0]))),
                     pot, pos)[0] for t in tilts_mrad]
    md = base_metadata("larbed", 4, 2 * A_STO, trans.shape[0])
    md.update(defocus_A=defocus, semiangle_mrad=semiangle,
              tilt_convention="tilts_rad[n] = (t_y, t_x) radians = abTEM tilt (t_x, t_y) "
                              "mrad / 1e3: each Fresnel step over dz times exp(-2 pi i dz "
                              "(k_x tan t_x + k_y tan t_y)); the incident probe carries no "
                              "ramp (tilted illumination + de-scan)")
    save("indep_larbed.npz", md, patterns=np.stack(pats).astype(np.float32),
         probe=centred_probe(make_probe(pot, defocus, semiangle))[None],
         positions_A=np.repeat(pos, len(tilts_mrad), axis=0), tilts_rad=tilts_mrad / 1e3,
         transmission=trans, potential_projected=v.sum(0))


def main() -> None:
    far_field()
    multislice()
    mixed_state()
    focal_series()
    larbed()


if __name__ == "__main__":
    main()
