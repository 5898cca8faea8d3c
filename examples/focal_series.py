"""Focal-series (near-field) reconstruction: defocused images of one area.

A plane wave passes a thin specimen; each image is recorded at its own defocus (the
``near_field`` detector, with flux-preserving partial-coherence damping ``alpha``). Defocus in
Å = -C10, positive = underfocus, as in abTEM and in the probe's aberrations. The object
phase is retrieved from the series by the same gradient machinery as ptychography.

    python examples/focal_series.py --output focal-series-out [--quick]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ptyframe import Device, Experiment, Reconstruction, load_registry
from ptyframe.core.physics import wavelength_A
from ptyframe.testing.focal_series import simulate_focal_series
from ptyframe.testing.validation import phase_correlation


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("focal-series-out"))
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--quick", action="store_true", help="small and fast (tests)")
    args = parser.parse_args(argv)
    window, pixel = (32, 0.25) if args.quick else (64, 0.2)
    defoci = np.array([-600.0, -300.0, -100.0, 100.0, 300.0, 600.0])  # Å, underfocus > 0
    registry = load_registry()
    detector = registry.create("detector", {"type": "near_field", "pixel_size_A": pixel,
                                            "defocus_A": defoci.tolist(), "alpha": 1e-4})
    propagator = registry.create("propagator", {"type": "multislice"})
    series = simulate_focal_series(propagator, detector, window=window, pixel_size_A=pixel,
                                   wavelength_A=wavelength_A(200.0), defocus_A=defoci,
                                   counts_per_pixel=2e3)
    experiment = Experiment(voltage_kV=200.0, convergence_angle_mrad=1.0,
                            detector_pixel_size_inv_A=1.0 / (window * pixel))
    rec = Reconstruction(series.images, experiment, detector=detector, propagator=propagator,
                         loss=registry.create("loss", {"type": "ml"}),
                         positions_A=np.zeros((len(defoci), 2)),
                         initial_probe=series.illumination, refine_probe=False,
                         object_margin_px=0, device=Device("auto"), progress=False,
                         output_dir=args.output)
    result = rec.run(args.epochs if not args.quick else 40)
    m = series.corner_px[0]
    truth = series.phase[m:m + window, m:m + window]
    corr = phase_correlation(result.phase[:window, :window], truth)
    print(f"focal series: {len(defoci)} images, phase correlation with the truth {corr:.4f}; "
          f"figures in {Path(args.output) / 'figures'}")
    return corr


if __name__ == "__main__":
    main()
