"""``ptyframe demo``: simulate a small dataset, reconstruct it, write figures.

Everything runs on built-in synthetic data (no files needed): the project's simulator makes a
two-slice specimen of Gaussian atoms scanned by a defocused 200 kV probe, with Poisson noise
and small scan-position errors; the reconstruction refines object, probe and positions.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ptyframe.core.device import Device
from ptyframe.core.schedules import FromEpoch
from ptyframe.engine.reconstruction import Reconstruction, ReconstructionResult
from ptyframe.io.folder_lock import FolderLock
from ptyframe.io.results import OutputFolder
from ptyframe.registry.loader import load_registry
from ptyframe.testing.simulate import SimulatedData, simulate_dataset
from ptyframe.testing.validation import phase_correlation, position_error_A, scanned_region_mask

__all__ = ["run_demo", "save_figures", "common_region"]


def save_figures(result: ReconstructionResult, truth: SimulatedData | None, folder: Path
                 ) -> list[Path]:
    """``phase_vs_truth.png``: the reconstructed and the true phase side by side, cropped to
    the scanned area, on the same colour scale (the run itself writes object, probe,
    positions and loss figures, :mod:`ptyframe.io.figures`). Nothing without a truth."""
    from ptyframe.io.figures import (
        PHASE_CMAP,
        image_panel,
        new_figure,
        pixel_extent,
        robust_limits,
        scale_bar,
    )

    if truth is None:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    mask = scanned_region_mask(result.grid, truth.nominal_positions_A)
    rec, true, inside = common_region(result, truth, mask)
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    crop = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    rec, true = rec[crop], true[crop]
    rec = rec - np.median(rec) + np.median(true)  # a phase is known up to a constant
    px = result.grid.pixel_size_A
    extent = pixel_extent(px * np.arange(rec.shape[0]), px * np.arange(rec.shape[1]), px)
    limits = robust_limits(np.concatenate([rec.ravel(), true.ravel()]))
    fig = new_figure(9.5, 4.2)
    axes = fig.subplots(1, 2)
    for ax, image, title in zip(axes, (rec, true), ("reconstructed phase", "true phase"),
                                strict=True):
        image_panel(fig, ax, image, extent, PHASE_CMAP, title, "phase (rad)", limits=limits)
        ax.set_xlabel("x (Å)")
        ax.set_ylabel("y (Å)")
        scale_bar(ax, extent)
    fig.suptitle("scanned area, common colour scale (reconstruction offset to the truth's "
                 "median)", fontsize=10)
    path = folder / "phase_vs_truth.png"
    fig.savefig(path, dpi=110)
    return [path]


def run_demo(output_dir: str | Path = "ptyframe-demo", epochs: int | None = None,
             quick: bool = False, device: Device | None = None) -> dict[str, Any]:
    """Simulate, reconstruct and write the output folder plus PNG figures; returns figures."""
    output_dir = Path(output_dir)
    registry = load_registry()
    thickness = 2.0
    truth = simulate_dataset(
        registry.create("propagator", {"type": "multislice", "slice_thickness_A": thickness}),
        window=32 if quick else 48, pixel_size_A=0.25, voltage_kV=200.0,
        convergence_angle_mrad=25.0, defocus_A=40.0, n_slices=2,
        scan_shape=(10, 10) if quick else (16, 16), step_A=0.6, position_jitter_A=0.1,
        dose_per_pattern=1e6, seed=7)
    epochs = epochs if epochs is not None else (40 if quick else 120)
    log = logging.getLogger("ptyframe")
    log.info("demo: %d simulated patterns of %dx%d px, 2 slices, %d epochs -> %s",
             *truth.patterns.shape, epochs, output_dir)
    rec = Reconstruction(
        truth.patterns, truth.experiment, positions_A=truth.nominal_positions_A,
        propagator=registry.create("propagator", {"type": "multislice",
                                                  "slice_thickness_A": thickness}),
        n_slices=2, refine_probe=FromEpoch(3), refine_positions=FromEpoch(15),
        device=device or Device("auto", "single"), output_dir=output_dir, registry=registry)
    with FolderLock(output_dir) as lock:  # each demo is a new run: the folder's is replaced
        rec.hold_folder_lock(lock)
        OutputFolder(output_dir).clear_run()
        start = time.perf_counter()
        result = rec.run(epochs)
    elapsed = time.perf_counter() - start
    mask = scanned_region_mask(result.grid, truth.nominal_positions_A)
    corr = phase_correlation(*common_region(result, truth, mask))
    pos_before = position_error_A(truth.nominal_positions_A, truth.positions_A)
    pos_after = position_error_A(result.positions_A, truth.positions_A)
    figures = save_figures(result, truth, output_dir / "figures")
    figures += sorted((output_dir / "figures").glob("*.png"))
    log.info("demo: %.1f s, final loss %.5g, phase correlation with the truth %.4f, position "
             "error %.3f -> %.3f Å", elapsed, result.loss[-1], corr, pos_before, pos_after)
    for path in sorted(set(figures)):
        log.info("wrote %s", path)
    return {"phase_correlation": corr, "position_error_A": pos_after, "figures": figures,
            "result": result}


def common_region(result: ReconstructionResult, truth: SimulatedData,
                  mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reconstructed phase, true phase and mask cropped to the overlap of the two grids.

    Both grids share the pixel size and the specimen frame; their origins differ by a whole
    number of pixels.
    """
    offset = np.round((np.array(truth.grid.origin_A) - np.array(result.grid.origin_A))
                      / result.grid.pixel_size_A).astype(int)
    rec_phase, true_phase = result.phase, truth.phase
    lo = np.maximum(0, offset)
    hi = np.minimum(rec_phase.shape, offset + np.array(true_phase.shape))
    rec_sl = (slice(lo[0], hi[0]), slice(lo[1], hi[1]))
    true_sl = (slice(lo[0] - offset[0], hi[0] - offset[0]),
               slice(lo[1] - offset[1], hi[1] - offset[1]))
    return rec_phase[rec_sl], true_phase[true_sl], mask[rec_sl]
