"""Tilt-corrected bright field first, then ptychography started from what it measured.

    python examples/tcbf_then_ptychography.py                      # simulated, unknown defocus
    python examples/tcbf_then_ptychography.py ../shared/data/defocused_bf.h5 --epochs 30
    python examples/tcbf_then_ptychography.py --defocus 400 --rotation 15 --epochs 20

tcBF (registry name ``tcbf``) fits the probe aberrations (defocus, astigmatism, coma, ...) and
the scan rotation from the parallax of the bright-field pixel images, without any prior
knowledge of them. :func:`ptyframe_direct.tcbf.experiment_from_tcbf` puts the fitted values
into the :class:`~ptyframe.Experiment`, so that the default ``aperture`` probe initializer
builds the aberrated probe and the ``scan_grid`` position initializer the rotated raster of
the iterative reconstruction.

Default data: ptyframe's own simulator (200 kV, 15 mrad, 300 Å underfocus, 24 x 24 scan at
0.7 Å, 1e4 electrons per pattern); the experiment handed to tcBF knows neither the defocus
nor the rotation. With ``--compare`` (default for simulated data) the same reconstruction is
also run from the uninformed experiment (in-focus probe, unrotated scan), and both phases are
scored against the simulated truth. A file is read with its metadata
(:func:`ptyframe.load_experiment`); ``--ignore-metadata-aberrations`` drops the aberrations the
metadata gives, to check that tcBF finds them alone.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import attrs
from ptyframe_direct.tcbf import experiment_from_tcbf

from ptyframe import Dataset, Device, Reconstruction, load_experiment, load_registry
from ptyframe.apps.direct import run_direct
from ptyframe.testing.validation import phase_correlation, resample_to_grid, scanned_region_mask


def simulated(defocus_A: float, rotation_deg: float):
    """Simulated data with a known defocus and scan rotation (positions = R(theta) raster)."""
    from ptyframe_initializers.positions import scan_grid

    import ptyframe.testing.simulate as simulate_module

    registry = load_registry()
    original = simulate_module.scan_positions
    if rotation_deg:  # the simulator's raster, rotated about its centre
        simulate_module.scan_positions = lambda shape, step, origin: scan_grid(
            shape, (step, step), rotation_deg)
    try:
        sim = simulate_module.simulate_dataset(
            registry.create("propagator", {"type": "multislice"}), window=32,
            pixel_size_A=0.4, voltage_kV=200.0, convergence_angle_mrad=15.0,
            defocus_A=defocus_A, scan_shape=(24, 24), step_A=0.7, dose_per_pattern=1e4,
            seed=1)
    finally:
        simulate_module.scan_positions = original
    uninformed = attrs.evolve(sim.experiment, aberrations={}, scan_rotation_deg=0.0)
    return Dataset.from_array(sim.patterns, scan_shape=sim.experiment.scan_shape), \
        uninformed, sim


def score(sim, result) -> float:
    """Phase correlation with the simulated truth over the scanned region."""
    truth = resample_to_grid(sim.phase, sim.grid, result.grid)
    mask = scanned_region_mask(result.grid, sim.positions_A)
    return phase_correlation(result.phase, truth, mask=mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=None,
                        help="4D-STEM file (.h5/.npy); default: simulated data")
    parser.add_argument("--defocus", type=float, default=300.0,
                        help="simulated defocus, Å (positive = underfocus)")
    parser.add_argument("--rotation", type=float, default=0.0,
                        help="simulated scan rotation, degrees")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--output", default="tcbf_then_ptychography")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    parser.add_argument("--ignore-metadata-aberrations", action="store_true")
    parser.add_argument("--compare", action=argparse.BooleanOptionalAction, default=None,
                        help="also reconstruct from the uninformed experiment "
                             "(default: on for simulated data)")
    args = parser.parse_args()

    sim = None
    if args.data is None:
        dataset, experiment, sim = simulated(args.defocus, args.rotation)
        print(f"simulated: C10 = {sim.experiment.aberrations['C10']:.1f} Å "
              f"(defocus {-sim.experiment.aberrations['C10']:.1f} Å), scan rotation "
              f"{args.rotation:.1f} deg; tcBF is told neither")
    else:
        experiment = load_experiment(args.data)
        if args.ignore_metadata_aberrations:
            experiment = attrs.evolve(experiment, aberrations={})
        dataset = Dataset.from_file(args.data, scan_shape=experiment.scan_shape)
    device = Device(args.device, "single")
    output = Path(args.output)

    t0 = time.perf_counter()
    result = run_direct("tcbf", dataset, experiment, device, output_dir=output)
    values = result.values
    print(f"tcBF ({time.perf_counter() - t0:.1f} s): C10 = {values['aberrations_A']['C10']:.1f} "
          f"Å (defocus_A = {values['defocus_A']:.1f}), rotation {values['rotation_deg']:.2f} "
          f"deg, transpose {values['transpose']}, shift-fit residual "
          f"{values['residual_rms_A']:.3f} Å")
    print("  aberrations (Å):", {k: round(v, 1) for k, v in values["aberrations_A"].items()})
    print(f"  tcBF image and phase: {result.phase.shape} at {result.pixel_size_A:.3f} Å -> "
          f"{output / 'tcbf'}")

    informed = experiment_from_tcbf(experiment, result)
    runs = [("from tcBF", informed)]
    if args.compare or (args.compare is None and sim is not None):
        runs.append(("uninformed", experiment))
    for label, exp in runs:
        rec = Reconstruction(dataset, exp, device=device, refine_probe=True, progress=False,
                             output_dir=output / label.replace(" ", "_"))
        t1 = time.perf_counter()
        out = rec.run(args.epochs)
        line = (f"ptychography {label}: loss {out.loss[0]:.4g} -> {out.loss[-1]:.4g} in "
                f"{args.epochs} epochs ({time.perf_counter() - t1:.1f} s)")
        if sim is not None:
            line += f"; phase correlation with the truth {score(sim, out):.3f}"
        print(line)


if __name__ == "__main__":
    main()
