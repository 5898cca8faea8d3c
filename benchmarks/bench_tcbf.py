"""tcBF speed and accuracy against its baseline implementation, measured in the same run.

Usage::

    python benchmarks/bench_tcbf.py [--file ../shared/data/defocused_bf.h5] [--baseline 6b94b15]
                                    [--repeat 1] [--rotate DEG ...] [--precision single]

The baseline is ``plugins/ptyframe_direct/tcbf.py`` at git revision ``--baseline`` (default
6b94b15, before the speed and robustness work of issue 9), read with ``git show`` and imported
as a temporary module: it imports only ptyframe's core (components, physics, validators, data),
which its revision shares with this one, so both run on the same data, device and library
versions. Each method runs from nothing (the file's aberrations are removed from the experiment;
the rotation prior is the file's scan rotation) with its default settings:

* ``baseline``: the old default (no transpose search);
* ``current``: the new default (both transpose states tried);
* ``current, transpose=False``: the same work as the baseline.

For each it prints wall and CPU time (best of ``--repeat``), the speed ratio against the
baseline, and the fitted C10 and rotation against the truth in the file's metadata
(``C10_A``, ``scan_rotation_deg``). ``--rotate`` adds cases with the patterns rotated by these
angles about the optical axis (``rotate_patterns``; a scan rotation of that angle), where the
truth is the given angle.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import h5py
import numpy as np

from ptyframe import Dataset, Device, load_experiment
from ptyframe.testing.simulate import rotate_patterns

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FILE = ROOT / ".." / "shared" / "data" / "defocused_bf.h5"


def load_baseline(revision: str, folder: Path) -> Any:
    """The tcBF module at ``revision`` imported from a temporary file."""
    text = subprocess.run(["git", "show", f"{revision}:plugins/ptyframe_direct/tcbf.py"],
                          cwd=ROOT, check=True, capture_output=True, text=True).stdout
    path = folder / f"tcbf_baseline_{revision}.py"
    path.write_text(text, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def timed(method: Any, patterns: np.ndarray, experiment: Any, device: Device, repeat: int
          ) -> tuple[Any, float, float]:
    """(result, best wall s, best CPU s) over ``repeat`` runs."""
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        data = Dataset.from_array(patterns, scan_shape=experiment.scan_shape)
        w0, c0 = time.perf_counter(), time.process_time()
        result = method.run(data, experiment, device)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return result, min(walls), min(cpus)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    parser.add_argument("--baseline", default="6b94b15", help="git revision of the baseline")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--rotate", type=float, nargs="*", default=[],
                        help="also run with the patterns rotated by these angles, deg")
    parser.add_argument("--precision", default="single", choices=("single", "double"))
    args = parser.parse_args(argv)

    from ptyframe_direct.tcbf import TiltCorrectedBF

    path = args.file.resolve()
    truth = load_experiment(path)
    with h5py.File(path, "r") as fh:
        patterns = np.asarray(fh["data"][()], dtype=np.float32)
        true_c10 = float(fh.attrs.get("C10_A", -truth.defocus_A))
        true_rot = float(fh.attrs.get("scan_rotation_deg", 0.0))
    blind = attrs.evolve(truth, aberrations={})
    device = Device("cpu", args.precision)
    print(f"{path.name}: {patterns.shape[0]} patterns {patterns.shape[1:]}, scan "
          f"{truth.scan_shape}; truth C10 {true_c10:g} Å, rotation {true_rot:g} deg; "
          f"{device}; best of {args.repeat}")
    with tempfile.TemporaryDirectory() as tmp:
        baseline = load_baseline(args.baseline, Path(tmp))
        methods = [(f"baseline {args.baseline}", baseline.TiltCorrectedBF()),
                   ("current", TiltCorrectedBF()),
                   ("current, transpose=False", TiltCorrectedBF(transpose=False))]
        for angle in [0.0, *args.rotate]:
            data = patterns if angle == 0.0 else rotate_patterns(patterns, angle)
            rot_truth = true_rot + angle
            print(f"\npatterns rotated by {angle:g} deg (true rotation {rot_truth:g} deg)")
            ref = None
            for label, method in methods:
                result, wall, cpu = timed(method, data, blind, device, args.repeat)
                v = result.values
                ref = ref or (wall, cpu)
                c10 = v["aberrations_A"]["C10"]
                err = abs((v["rotation_deg"] - rot_truth + 180.0) % 360.0 - 180.0)
                others = {k: round(x, 1) for k, x in v["aberrations_A"].items() if k != "C10"}
                print(f"  {label:26s} wall {wall:6.2f} s ({ref[0] / wall:4.1f}x)  CPU "
                      f"{cpu:6.2f} s ({ref[1] / cpu:4.1f}x)  C10 {c10:8.1f} Å "
                      f"({100 * (c10 - true_c10) / true_c10:+.1f} %)  rotation "
                      f"{v['rotation_deg']:7.2f} deg (error {err:.2f})  transpose "
                      f"{v['transpose']}")
                print(f"  {'':26s} other terms {others} Å; significant "
                      f"{v.get('significant_terms', '-')}; warnings {len(v.get('warnings', []))}")
                for text in v.get("warnings", []):
                    print(f"  {'':26s}   {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
