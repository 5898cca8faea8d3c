"""Compressed ptychography: reconstruct from virtual-detector signals instead of patterns.

Each pattern is reduced to a few numbers (rings x sectors of an annular virtual detector,
:func:`ptyframe.io.compression.annular_masks`); the reconstruction compares the model's patterns
through the same masks with a compressed loss (``gaussian_compressed``; also
``lsq_compressed`` and ``poisson_compressed``).

    python examples/compressed_ptychography.py --output compressed-out [--quick]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ptyframe import Device, Reconstruction, load_registry
from ptyframe.apps.demo import save_figures
from ptyframe.io.compression import annular_masks, compress
from ptyframe.testing.simulate import simulate_dataset
from ptyframe.testing.validation import phase_correlation, scanned_region_mask


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("compressed-out"))
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--loss", default="gaussian_compressed")
    parser.add_argument("--quick", action="store_true", help="small and fast (tests)")
    args = parser.parse_args(argv)
    registry = load_registry()
    window = 24 if args.quick else 32
    sim = simulate_dataset(registry.create("propagator", {"type": "multislice"}),
                           window=window, scan_shape=(10, 10), step_A=0.6, seed=5,
                           dose_per_pattern=1e5)
    masks = annular_masks((window, window), radii=np.linspace(0, window / 2, 5), n_sectors=4)
    signals = compress(sim.patterns, masks)
    args.output.mkdir(parents=True, exist_ok=True)
    mask_path = args.output / "masks.npy"
    np.save(mask_path, masks)
    print(f"{sim.patterns.shape[0]} patterns of {window}x{window} pixels -> {masks.shape[0]} "
          f"signals each ({window * window / masks.shape[0]:.0f}x compression)")
    rec = Reconstruction(signals, sim.experiment, positions_A=sim.positions_A,
                         loss=registry.create("loss", {"type": args.loss,
                                                       "masks_path": str(mask_path)}),
                         refine_probe=False, device=Device("auto"), progress=False,
                         output_dir=args.output)
    result = rec.run(args.epochs if not args.quick else 60)
    mask = scanned_region_mask(result.grid, sim.positions_A)
    corr = phase_correlation(result.phase, sim.phase, mask=mask)
    save_figures(result, sim, args.output)
    print(f"compressed ({args.loss}): phase correlation with the truth {corr:.4f}; figures "
          f"in {args.output}")
    return corr


if __name__ == "__main__":
    main()
