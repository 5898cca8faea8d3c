"""Direct (non-iterative) phase retrieval: DPC, iterative DPC, WDD/SSB and tcBF.

    python examples/direct_methods.py scan.h5 --method dpc --method wdd --output direct_out
    python examples/direct_methods.py --simulate --method wdd --output direct_out
    python examples/direct_methods.py scan.h5 --method '{"type": "wdd", "mode": "ssb"}'
    python examples/direct_methods.py scan.h5 --method dpc --reconstruct 20 --output out

The experiment (voltage, aperture, detector calibration, scan, defocus) is read from the
file's metadata (HDF5 attributes and/or a same-stem .json sidecar; see
``ptyframe.io.metadata``). ``--simulate`` makes a small dataset with ptyframe's own simulator
instead. Each method writes ``OUTPUT/<method>/`` with ``phase.npy``, PNG figures and
``values.json`` (fitted rotation, aberrations, timings). ``--reconstruct N`` then runs N epochs
of iterative ptychography started from the first method's phase (object initializer
``direct_phase``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ptyframe import Dataset, Device, Reconstruction, load_experiment, load_registry
from ptyframe.apps.direct import method_label, parse_method_spec, run_direct


def _data(args: argparse.Namespace):
    if args.simulate:
        from ptyframe.testing.simulate import simulate_dataset

        registry = load_registry()
        sim = simulate_dataset(registry.create("propagator", {"type": "multislice",
                                                              "slice_thickness_A": 2.0}),
                               window=32, scan_shape=(24, 24), step_A=0.4, defocus_A=0.0,
                               phase_scale=0.5, dose_per_pattern=5e4)
        return Dataset.from_array(sim.patterns, scan_shape=sim.experiment.scan_shape), \
            sim.experiment
    if args.data is None:
        raise SystemExit("give a data file or --simulate")
    experiment = load_experiment(args.data)
    return Dataset.from_file(args.data, scan_shape=experiment.scan_shape), experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=None, help="4D-STEM file (.h5 / .npy)")
    parser.add_argument("--simulate", action="store_true", help="use simulated data")
    parser.add_argument("--method", action="append", default=None,
                        help="dpc, dpc_iterative, wdd, tcbf or a JSON configuration; "
                             "repeatable (default: dpc and wdd)")
    parser.add_argument("--output", default="direct_output", help="output folder")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    parser.add_argument("--reconstruct", type=int, default=0, metavar="EPOCHS",
                        help="then run iterative ptychography from the first method's phase")
    args = parser.parse_args()

    dataset, experiment = _data(args)
    device = Device(args.device, "single")
    methods = [parse_method_spec(m) for m in (args.method or ["dpc", "wdd"])]
    registry = load_registry()
    first = None
    for spec in methods:
        method = registry.create("direct_method", {"type": spec} if isinstance(spec, str)
                                 else spec)
        label = method_label(method)  # e.g. "wdd_ssb" for {"type": "wdd", "mode": "ssb"}
        result = run_direct(method, dataset, experiment, device, output_dir=args.output,
                            name=label)
        first = first or label
        shown = {k: result.values[k] for k in ("rotation_deg", "transpose", "aberrations_A",
                                               "mode") if k in result.values}
        print(f"{label}: phase {result.phase.shape} at {result.pixel_size_A:.3g} Å in "
              f"{result.timings_s['run_direct_total']:.2f} s; {shown}; "
              f"-> {Path(args.output) / label}")
    if args.reconstruct and first is not None:
        init = registry.create("object_initializer", {
            "type": "direct_phase", "path": str(Path(args.output) / first)})
        rec = Reconstruction(dataset, experiment, object_initializer=init, device=device,
                             output_dir=Path(args.output) / "iterative", progress=False)
        out = rec.run(args.reconstruct)
        print(f"iterative reconstruction from {first}: loss {out.loss[0]:.4g} -> "
              f"{out.loss[-1]:.4g} in {args.reconstruct} epochs -> {rec.output_dir}")


if __name__ == "__main__":
    main()
