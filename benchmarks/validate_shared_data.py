"""Reconstruct a validation dataset of ../shared/data from its metadata alone and compare the
phase with the ground truth stored in the file.

    python benchmarks/validate_shared_data.py sto_thin [--epochs 100] [--slices 1]

The reconstruction sees only the patterns and the metadata (voltage, aperture, calibration,
defocus, nominal scan grid); ground truth (gt_transmission_phase, positions) is read only
afterwards to score it: Pearson correlation of the phases over the scanned area, after
removing the global phase offset and a sub-pixel shift, with a mild low-pass (sigma 0.5 px).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import h5py
import numpy as np
from ptyframe_initializers.positions import scan_grid

from ptyframe import Dataset, Device, FromEpoch, Reconstruction, load_experiment, load_registry
from ptyframe.testing.validation import phase_correlation, position_error_A

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def truth_on_recon_grid(path: Path, result, positions_A: np.ndarray):
    """Ground-truth phase and reconstructed phase on a common window over the scanned area."""
    with h5py.File(path, "r") as fh:
        gt = fh["gt_transmission_phase"][()]
        nominal = fh["positions_nominal_A"][()]
        origin = np.array(fh.attrs.get("gt_origin_yx_A", [0, 0]), dtype=float)
    dx = result.grid.pixel_size_A
    # frame offset between our scan-grid frame and the simulation frame: both rasters are
    # rotated about their centres, so the centres correspond (the first corners do not when
    # the scan is rotated)
    frame = nominal.mean(axis=0) - positions_A.mean(axis=0)
    lo = nominal.min(axis=0)
    hi = nominal.max(axis=0)
    gy = np.arange(gt.shape[0]) * dx + origin[0]
    gx = np.arange(gt.shape[1]) * dx + origin[1]
    iy = np.nonzero((gy >= lo[0]) & (gy <= hi[0]))[0]
    ix = np.nonzero((gx >= lo[1]) & (gx <= hi[1]))[0]
    gt_crop = gt[iy[0]:iy[-1] + 1, ix[0]:ix[-1] + 1]
    ry = np.round((gy[iy[0]] - frame[0] - result.grid.origin_A[0]) / dx).astype(int)
    rx = np.round((gx[ix[0]] - frame[1] - result.grid.origin_A[1]) / dx).astype(int)
    rec_crop = result.phase[ry:ry + gt_crop.shape[0], rx:rx + gt_crop.shape[1]]
    return rec_crop, gt_crop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", default="sto_thin")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR,
                        help="folder of the <name>.h5 files (default: ../shared/data); a name "
                             "that is a path to a file is read from there")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--slices", type=int, default=1)
    parser.add_argument("--slice-thickness", type=float, default=None,
                        help="Å; default: sample thickness / slices from the metadata")
    parser.add_argument("--probe-modes", type=int, default=1)
    parser.add_argument("--loss", default=None,
                        help="ml (Poisson; right for counting data) or lsq_sqrt (default: the "
                             "Reconstruction's: ml for counts)")
    parser.add_argument("--validation-fraction", type=float, default=0.05,
                        help="patterns held out for the validation loss (0: none)")
    parser.add_argument("--keep-best-confidence", type=float, default=0.95,
                        help="confidence of the test by which a later epoch counts as worse "
                             "than the lowest held-out loss (0: keep the lowest)")
    parser.add_argument("--last", action="store_true",
                        help="keep the last epoch, not the best-validated one")
    parser.add_argument("--no-position-scaling", action="store_true",
                        help="no per-position Gauss-Newton scaling of the position update")
    parser.add_argument("--scan-model", default="affine", choices=("affine", "none"),
                        help="global scan model of the refined positions (default: affine)")
    parser.add_argument("--jitter-prior", type=float, default=None,
                        help="Å: rms of the Gaussian prior on the local jitter (0: none; "
                             "default: 0.2 with the ml loss)")
    parser.add_argument("--positions-from", type=int, default=5,
                        help="epoch position refinement starts at (with --positions)")
    parser.add_argument("--precision", default="single")
    parser.add_argument("--positions", action="store_true", help="refine scan positions")
    parser.add_argument("--output", default=None)
    parser.add_argument("--noiseless", action="store_true",
                        help="reconstruct data_noiseless x electrons_per_pattern (diagnostic)")
    args = parser.parse_args()

    path = Path(args.name) if Path(args.name).is_file() else args.data_dir / f"{args.name}.h5"
    experiment = load_experiment(path)
    dataset = Dataset.from_file(path, scan_shape=experiment.scan_shape)
    if args.noiseless:
        with h5py.File(path, "r") as fh:
            counts = fh["data_noiseless"][()] * float(fh.attrs["electrons_per_pattern"])
        dataset = Dataset.from_array(counts, scan_shape=experiment.scan_shape)
    with h5py.File(path, "r") as fh:
        thickness = float(fh.attrs.get("sample_thickness_A", 0.0))
    registry = load_registry()
    dz = args.slice_thickness or (thickness / args.slices if thickness else 1.0)
    rec = Reconstruction(
        dataset, experiment,
        propagator=registry.create("propagator", {"type": "multislice",
                                                  "slice_thickness_A": dz}),
        loss=registry.create("loss", {"type": args.loss}) if args.loss else None,
        n_slices=args.slices, n_probe_modes=args.probe_modes,
        refine_probe=FromEpoch(5),
        refine_positions=FromEpoch(args.positions_from) if args.positions else False,
        validation_fraction=args.validation_fraction, keep_best=not args.last,
        keep_best_confidence=args.keep_best_confidence,
        position_scaling=not args.no_position_scaling, scan_model=args.scan_model,
        jitter_prior_A=args.jitter_prior,
        device=Device("auto", args.precision), output_dir=args.output, progress=False,
        figures=False, result_file=False)
    start = time.perf_counter()
    result = rec.run(args.epochs)
    elapsed = time.perf_counter() - start
    nominal_ours = scan_grid(experiment.scan_shape, experiment.scan_step_yx_A,
                             experiment.scan_rotation_deg)
    rec_crop, gt_crop = truth_on_recon_grid(path, result, nominal_ours)
    corr = phase_correlation(rec_crop, gt_crop, lowpass_sigma_px=0.5)
    corr_raw = phase_correlation(rec_crop, gt_crop)
    print(f"{args.name}: {len(dataset)} patterns {dataset.pattern_shape}, {args.slices} slice(s)"
          f" of {dz:.3g} Å, {args.probe_modes} probe mode(s), loss {args.loss}, "
          f"{args.epochs} epochs in {elapsed:.1f} s on {rec.device}")
    print(f"  final loss {result.loss[-1]:.6g} (first {result.loss[0]:.6g})")
    print(f"  phase correlation with ground truth: {corr:.4f} (low-pass 0.5 px), "
          f"{corr_raw:.4f} (raw), over {gt_crop.shape} px of the scanned area; result from "
          f"epoch {result.best_epoch or result.epochs} (loss {rec.loss.name})")
    with h5py.File(path, "r") as fh:
        true = fh["positions_A"][()]
        nominal = fh["positions_nominal_A"][()]
    # the true positions in our frame (both rasters are centred on the same point)
    true_ours = true - (nominal.mean(axis=0) - nominal_ours.mean(axis=0))
    print(f"  position error (rms, global shift removed): "
          f"{position_error_A(result.positions_A, true_ours):.4f} Å "
          f"(nominal grid: {position_error_A(nominal_ours, true_ours):.4f} Å)")


if __name__ == "__main__":
    main()
