"""LARBED-style reconstruction: one probe position, a series of beam tilts.

The beam is rocked over a grid of tilts before the specimen (tilt_mode 4: the same tilt also
steers propagation inside the specimen, and is undone after it, as a de-scan), and one
diffraction pattern is recorded per tilt. A multislice object is reconstructed from the
rocking series with the tilts known; add ``--refine-tilts`` to refine them too.

    python examples/larbed.py --output larbed-out [--quick]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ptyframe import Device, Experiment, Reconstruction, load_registry
from ptyframe.core.physics import aberration_function, aperture, spatial_frequencies, wavelength_A
from ptyframe.engine.model import PtychographyModel
from ptyframe.testing.simulate import random_atoms_phase
from ptyframe.testing.validation import phase_correlation

#: a defocused probe lights most of the window (about 2 * alpha * defocus = 6 Å wide)
CONVERGENCE_MRAD = 20.0
DEFOCUS_A = 150.0


def simulate(window: int, pixel: float, tilts: np.ndarray, seed: int = 0) -> dict:
    """Rocking series of a two-slice specimen under a small-convergence probe."""
    rng = np.random.default_rng(seed)
    registry = load_registry()
    lam = wavelength_A(200.0)
    dev = Device("cpu", "double")
    prop = registry.create("propagator", {"type": "multislice", "slice_thickness_A": 4.0})
    shape = (window + 1, window + 1)
    obj = np.stack([np.exp((1j - 0.05) * random_atoms_phase(shape, pixel, rng))
                    for _ in range(2)])[:, None]
    qy, qx = spatial_frequencies((window, window), pixel)
    dk = 1.0 / (window * pixel)
    spec = aperture(np.hypot(qy, qx), lam, CONVERGENCE_MRAD, 1.0, dk) * np.exp(
        -1j * aberration_function(qy, qx, lam, {"C10": -DEFOCUS_A}))
    probe = np.fft.fftshift(np.fft.ifft2(spec))[None]
    probe *= np.sqrt(1e5 / np.sum(np.abs(probe) ** 2))
    n = tilts.shape[0]
    model = PtychographyModel.from_geometry(prop, None, dev, (window, window), pixel, lam, 2, None,
                              tilt_mode=4, n_measurements=n)
    params = {"object": obj, "probe": probe, "positions": np.zeros((n, 2)), "tilts": tilts}
    model.check_blocks(params)
    patterns = np.fft.fftshift(model.intensities(params), axes=(-2, -1))
    patterns = rng.poisson(patterns).astype(np.float32)
    return {"patterns": patterns, "object": obj, "probe": probe, "wavelength": lam,
            "dk": dk}


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("larbed-out"))
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--quick", action="store_true", help="small and fast (tests)")
    parser.add_argument("--refine-tilts", action="store_true")
    args = parser.parse_args(argv)
    window, pixel = (32, 0.25) if args.quick else (48, 0.2)
    grid = np.linspace(-8e-3, 8e-3, 5)  # radians
    ty, tx = np.meshgrid(grid, grid, indexing="ij")
    tilts = np.zeros((ty.size, 6))
    tilts[:, 0], tilts[:, 1] = ty.ravel(), tx.ravel()      # before
    tilts[:, 2], tilts[:, 3] = ty.ravel(), tx.ravel()      # inside
    tilts[:, 4], tilts[:, 5] = -ty.ravel(), -tx.ravel()    # after: de-scan
    sim = simulate(window, pixel, tilts)
    registry = load_registry()
    experiment = Experiment(voltage_kV=200.0, convergence_angle_mrad=CONVERGENCE_MRAD,
                            detector_pixel_size_inv_A=sim["dk"],
                            aberrations={"C10": -DEFOCUS_A})
    rec = Reconstruction(sim["patterns"], experiment, n_slices=2,
                         propagator=registry.create("propagator", {
                             "type": "multislice", "slice_thickness_A": 4.0}),
                         loss=registry.create("loss", {"type": "ml"}),
                         positions_A=np.zeros((tilts.shape[0], 2)), tilt_mode=4, tilts=tilts,
                         refine_tilts=args.refine_tilts, initial_probe=sim["probe"],
                         refine_probe=False, object_margin_px=0, device=Device("auto"),
                         progress=False, output_dir=args.output)
    result = rec.run(args.epochs if not args.quick else 40)
    truth = np.angle(sim["object"][:, 0]).sum(axis=0)
    # the probe lights the window's centre: score the central half
    c = slice(window // 4, 3 * window // 4)
    corr = phase_correlation(result.phase[c, c], truth[c, c])
    print(f"LARBED: {tilts.shape[0]} tilts, phase correlation (central region) {corr:.4f}; "
          f"figures in {Path(args.output) / 'figures'}")
    return corr


if __name__ == "__main__":
    main()
