"""Reconstruct a 4D-STEM HDF5 file (laid out like ../shared/data) with the Python API.

    python examples/reconstruct_h5.py ../shared/data/sto_thin.h5 --epochs 100 --output out

Every setting comes from the file's metadata; components are chosen by name from the
registry (any installed plugin works the same way).
"""

import argparse

from ptyframe import Dataset, Device, FromEpoch, Reconstruction, load_experiment, load_registry
from ptyframe.apps.demo import save_figures

parser = argparse.ArgumentParser()
parser.add_argument("path")
parser.add_argument("--epochs", type=int, default=100)
parser.add_argument("--slices", type=int, default=1)
parser.add_argument("--slice-thickness", type=float, default=2.0, help="Å")
parser.add_argument("--probe-modes", type=int, default=1)
parser.add_argument("--output", default="reconstruction_output")
args = parser.parse_args()

experiment = load_experiment(args.path)
dataset = Dataset.from_file(args.path, scan_shape=experiment.scan_shape)
registry = load_registry()
rec = Reconstruction(
    dataset,
    experiment,
    propagator=registry.create("propagator", {"type": "multislice",
                                              "slice_thickness_A": args.slice_thickness}),
    loss=registry.create("loss", {"type": "ml"}),  # Poisson: counting data
    optimizer=registry.create("optimizer", {"type": "quasi_newton", "history_length": 10}),
    n_slices=args.slices,
    n_probe_modes=args.probe_modes,
    refine_probe=FromEpoch(5),
    device=Device("auto", "single"),
    output_dir=args.output,
    checkpoint_every=25,
)
result = rec.run(args.epochs)
for path in save_figures(result, None, rec.output_dir / "figures"):
    print("wrote", path)
