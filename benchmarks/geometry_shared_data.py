"""The geometry step (``ptyframe geometry``) on the validation datasets of ../shared/data, as
stored and with the patterns rotated or transposed, against the truth of each file.

    python benchmarks/geometry_shared_data.py [defocused_bf sto_thin ...]
        [--variants plain rot+10 transposed ...] [--device auto|cpu|gpu]

Variants: ``plain`` (the file as stored), ``rot<deg>`` (the patterns rotated by <deg> about
the centre pixel with ``ptyframe.testing.simulate.rotate_patterns``: a scan rotation of
<deg> more than the file's), ``transposed`` (ky and kx swapped). The metadata handed to the
step are the file's (so the rotation they give is wrong by <deg> for ``rot`` variants). For
each run it prints the wall and CPU time, what was found, the truth, and the verdict; a
confident verdict with a rotation more than 1 deg, a defocus more than 10 % off the truth or
the wrong transpose is flagged ``WRONG BUT CONFIDENT`` (errors the iterative reconstruction
does not recover from easily; smaller ones are printed as differences).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import h5py
import numpy as np

from ptyframe import Dataset, Device, load_experiment
from ptyframe.apps.geometry import GeometrySettings, find_geometry
from ptyframe.testing.simulate import rotate_patterns

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
FILES = ("defocused_bf", "sto_thin", "sto_rot_jitter", "mos2_mono", "sto_thick")


def _variant(patterns: np.ndarray, name: str) -> tuple[np.ndarray, float, bool]:
    """(patterns, extra rotation in degrees, transposed)."""
    if name == "plain":
        return patterns, 0.0, False
    if name == "transposed":
        return np.ascontiguousarray(np.swapaxes(patterns, 1, 2)), 0.0, True
    if name.startswith("rot"):
        angle = float(name[3:])
        return rotate_patterns(patterns, angle), angle, False
    raise SystemExit(f"--variants: expected plain, transposed or rot<deg>, found {name!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(FILES))
    parser.add_argument("--variants", nargs="+", default=["plain", "rot+10", "transposed"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = Device(args.device, "single")
    for name in args.names:
        path = DATA / f"{name}.h5"
        experiment = load_experiment(path)
        with h5py.File(path, "r") as fh:
            patterns = np.asarray(fh["data"], dtype=np.float32)
            true_rotation = float(fh.attrs.get("rotation_scan_to_detector_deg", 0.0))
            true_defocus = float(fh.attrs["defocus_A"])
        for variant in args.variants:
            data, extra, transposed = _variant(patterns, variant)
            dataset = Dataset.from_array(data, scan_shape=experiment.scan_shape)
            wall, cpu = time.perf_counter(), time.process_time()
            found = find_geometry(dataset, experiment, GeometrySettings(mode="check"), device)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            truth_rotation = true_rotation + extra
            d_rot = (found.rotation_deg - truth_rotation + 180.0) % 360.0 - 180.0
            d_def = (found.defocus_A - true_defocus) / true_defocus if true_defocus else math.nan
            wrong = abs(d_rot) > 1.0 or found.transpose != transposed or (
                not math.isnan(d_def) and abs(d_def) > 0.1)
            verdict = "confident" if found.confident else "NOT confident (" + ", ".join(
                c.name for c in found.failed) + ")"
            if found.confident and wrong:
                verdict = "WRONG BUT CONFIDENT"
            print(f"{name:15s} {variant:10s} wall {wall:6.1f} s cpu {cpu:6.1f} s | rotation "
                  f"{found.rotation_deg:8.2f} (truth {truth_rotation:7.2f}) transpose "
                  f"{found.transpose!s:5s} (truth {transposed!s:5s}) defocus "
                  f"{found.defocus_A:8.1f} Å (truth {true_defocus:7.1f}, {100 * d_def:+.1f} %) "
                  f"| {verdict}",
                  flush=True)
            for check in found.checks:
                print(f"    [{'ok' if check.passed else 'FAIL'}] {check.text}", flush=True)


if __name__ == "__main__":
    main()
