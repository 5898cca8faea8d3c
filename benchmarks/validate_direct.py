"""Direct methods (tcBF, DPC, WDD/SSB) on the validation datasets of ../shared/data, run from
the files' metadata alone and scored against the ground truth stored in the files.

    python benchmarks/validate_direct.py [defocused_bf sto_thin] [--output DIR]
        [--methods tcbf dpc wdd ...] [--device auto|cpu|gpu] [--precision single|double]

Each method is created through the registry (a method that is not registered is skipped with
a message). For each dataset the script prints, per method: the wall time, the fitted
geometry (scan rotation, transpose; tcBF: aberrations) next to the true values from the
file's metadata, and the Pearson correlation of the phase with ``gt_transmission_phase``.

Ground truth handling (see ../shared/data/README.md): GT pixel (iy, ix) is centred at
``gt_origin_yx_A + (iy, ix) * gt_pixel_size_A`` in the frame of ``positions_A``. A method's
image pixel (iy, ix) lies at the scan-frame position ``values["origin_A"] + (iy, ix) *
pixel`` relative to scan point 0, i.e. at ``positions_nominal_A[0] + R(theta) s`` with the
file's true scan rotation theta (0 here). The GT is smoothed by a Gaussian of 0.4 output
pixels (anti-aliasing when the output is coarser than the GT), sampled there with a cubic
spline, and compared over the scanned region (the bounding box of the scan), after removing
the mean and a sub-pixel shift of at most 0.5 Å (:func:`score`); a second figure adds a mild
low-pass (0.5 output pixels) to both images. For DPC a third figure compares with the GT
averaged over the true probe intensity, which is what the centre of mass measures (a strongly
defocused probe blurs, and on a lattice can invert, the contrast).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from scipy import ndimage

from ptyframe import Dataset, Device, load_experiment, load_registry
from ptyframe.apps.direct import method_label, parse_method_spec, save_direct_result
from ptyframe.testing.validation import align_images, phase_correlation

DATA_DIR = Path(__file__).parents[1] / ".." / "shared" / "data"
DEFAULT_DATASETS = ("defocused_bf", "sto_thin")
DEFAULT_METHODS = ("tcbf", "dpc", "dpc_iterative", "wdd", '{"type": "wdd", "mode": "ssb"}')


def truth_for(path: Path, result: Any, true_rotation_deg: float, blur_by_probe: bool = False
              ) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth phase sampled at the pixels of ``result.phase`` and the mask of the
    pixels inside the scanned region. ``blur_by_probe``: average the GT over the true probe
    intensity |gt_probe(r - R)|^2 first (what DPC measures: the COM is the phase gradient
    averaged over the probe)."""
    with h5py.File(path, "r") as fh:
        gt = np.asarray(fh["gt_transmission_phase"][()], dtype=float)
        if blur_by_probe:
            kernel = np.abs(fh["gt_probe"][()]) ** 2
            gt = ndimage.correlate(gt, kernel / kernel.sum(), mode="wrap")
        nominal = np.asarray(fh["positions_nominal_A"][()], dtype=float)
        gt_origin = np.asarray(fh.attrs["gt_origin_yx_A"], dtype=float)
        gt_px = float(fh.attrs["gt_pixel_size_A"])
        scan_shape = tuple(int(v) for v in fh.attrs["scan_shape"])
        step = float(fh.attrs["scan_step_A"])
    phase = result.phase
    pixel = result.pixel_size_yx_A
    origin = result.origin_A
    iy, ix = np.meshgrid(np.arange(phase.shape[0]), np.arange(phase.shape[1]), indexing="ij")
    sy = origin[0] + iy * pixel[0]
    sx = origin[1] + ix * pixel[1]
    t = math.radians(true_rotation_deg)
    py = nominal[0, 0] + math.sin(t) * sx + math.cos(t) * sy
    px = nominal[0, 1] + math.cos(t) * sx - math.sin(t) * sy
    sigma = 0.4 * max(pixel) / gt_px
    smooth = ndimage.gaussian_filter(gt, sigma, mode="wrap") if sigma > 0.5 else gt
    coords = [(py - gt_origin[0]) / gt_px, (px - gt_origin[1]) / gt_px]
    sampled = ndimage.map_coordinates(smooth, coords, order=3, mode="nearest")
    tol = 1e-6
    mask = ((sy >= -tol) & (sy <= (scan_shape[0] - 1) * step + tol)
            & (sx >= -tol) & (sx <= (scan_shape[1] - 1) * step + tol))
    return sampled, mask


def score(phase: np.ndarray, truth: np.ndarray, mask: np.ndarray,
          pixel_yx_A: tuple[float, float], max_shift_A: float = 0.5
          ) -> tuple[float, float, list[float]]:
    """Correlation (raw and low-passed by 0.5 px) over ``mask`` after removing the mean and
    a sub-pixel shift of at most ``max_shift_A`` (the frames are known from the metadata; a
    larger "best" shift on a crystal would only pair the image with a neighbouring lattice
    site, e.g. a contrast-inverted image half a cell away, so it is rejected). Returns
    (correlation, low-passed correlation, shift (y, x) Å applied)."""
    shifted, shift = align_images(phase, truth, mask=mask)
    shift_A = [float(shift[0] * pixel_yx_A[0]), float(shift[1] * pixel_yx_A[1])]
    if max(abs(v) for v in shift_A) > max_shift_A:
        shifted, shift_A = phase, [0.0, 0.0]
    return (phase_correlation(shifted, truth, mask=mask, align=False),
            phase_correlation(shifted, truth, mask=mask, lowpass_sigma_px=0.5, align=False),
            shift_A)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="*", default=list(DEFAULT_DATASETS),
                        help="dataset names in ../shared/data (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                        help="registry names or JSON configurations")
    parser.add_argument("--output", default=None, help="write DIR/<dataset>/<method>/")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR,
                        help="folder of the <name>.h5 files (default: ../shared/data); a name "
                             "that is a path to a file is read from there")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    parser.add_argument("--precision", default="single", choices=("single", "double"))
    args = parser.parse_args(argv)

    registry = load_registry()
    available = set(registry.names("direct_method"))
    device = Device(args.device, args.precision)
    print(f"direct methods registered: {', '.join(sorted(available)) or 'none'}; {device}")
    for name in args.datasets:
        path = (Path(name) if Path(name).is_file() else args.data_dir / f"{name}.h5").resolve()
        if not path.is_file():
            print(f"{name}: {path} not found, skipped")
            continue
        experiment = load_experiment(path)
        dataset = Dataset.from_file(path, scan_shape=experiment.scan_shape)
        with h5py.File(path, "r") as fh:
            true_rot = float(fh.attrs.get("scan_rotation_deg", 0.0))
        print(f"\n{name}: {len(dataset)} patterns {dataset.pattern_shape}, scan "
              f"{experiment.scan_shape} step {experiment.scan_step_A} Å, "
              f"{experiment.voltage_kV:g} kV, {experiment.convergence_angle_mrad:g} mrad; true: "
              f"aberrations {_fmt(experiment.aberrations)} Å (defocus "
              f"{experiment.defocus_A:g} Å), rotation {true_rot:g} deg, transpose False")
        for spec_text in args.methods:
            spec = parse_method_spec(spec_text)
            kind = spec if isinstance(spec, str) else spec.get("type")
            if kind not in available:
                print(f"  {kind}: not registered, skipped")
                continue
            method = registry.create("direct_method", {"type": spec} if isinstance(spec, str)
                                     else spec)
            label = method_label(method)
            start = time.perf_counter()
            try:
                result = method.run(dataset, experiment, device)
            except Exception as exc:  # noqa: BLE001 - report and go on with the next method
                print(f"  {label}: FAILED: {type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - start
            truth, mask = truth_for(path, result, true_rot)
            corr, corr_lp, shift_A = score(np.asarray(result.phase, dtype=float), truth, mask,
                                           result.pixel_size_yx_A)
            phase = result.phase
            v = result.values
            fitted = {k: v[k] for k in ("rotation_deg", "transpose", "aberrations_A",
                                        "defocus_A", "curl_fraction", "rotation_180_from")
                      if k in v}
            print(f"  {label}: {elapsed:.2f} s; phase {phase.shape} at "
                  f"{_fmt(result.pixel_size_A)} Å; correlation with GT {corr:.3f} "
                  f"(low-pass 0.5 px: {corr_lp:.3f}) over {int(mask.sum())} px, shift "
                  f"{_fmt(shift_A)} Å")
            print(f"    fitted/used: {_fmt(fitted)}")
            if kind in ("dpc", "dpc_iterative"):
                # DPC measures the phase averaged over the probe intensity |P(r - R)|^2
                blurred, _ = truth_for(path, result, true_rot, blur_by_probe=True)
                c_blur = score(np.asarray(result.phase, dtype=float), blurred, mask,
                               result.pixel_size_yx_A)[0]
                print(f"    correlation with GT averaged over the true probe intensity "
                      f"(what DPC measures): {c_blur:.3f}")
            if args.output is not None:
                out = Path(args.output) / name
                folder = save_direct_result(result, out, config=method.to_config(), name=label)
                with open(folder / "validation.json", "w", encoding="utf-8") as fh:
                    json.dump({"correlation": corr, "correlation_lowpass_0p5px": corr_lp,
                               "alignment_shift_A": shift_A, "n_pixels": int(mask.sum()),
                               "time_s": elapsed}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
