"""Compressed ptychography through the Reconstruction: virtual-detector signals (N, K) and a
compressed loss, with the probe initialised from the masks' back-projected mean pattern."""

import numpy as np

from ptyframe import Device, Reconstruction, load_registry
from ptyframe.io.compression import annular_masks, compress
from ptyframe.testing.simulate import simulate_dataset
from ptyframe.testing.validation import phase_correlation, scanned_region_mask

REGISTRY = load_registry()


def test_reconstruction_from_virtual_detector_signals(tmp_path):
    prop = REGISTRY.create("propagator", {"type": "multislice"})
    sim = simulate_dataset(prop, window=24, scan_shape=(10, 10), step_A=0.6, seed=5)
    patterns = 1e4 * sim.patterns
    masks = annular_masks((24, 24), radii=(0, 3, 6, 9, 12), n_sectors=4)
    signals = compress(patterns, masks)
    path = tmp_path / "masks.npy"
    np.save(path, masks)
    loss = REGISTRY.create("loss", {"type": "gaussian_compressed", "masks_path": str(path)})
    rec = Reconstruction(signals, sim.experiment, loss=loss, positions_A=sim.positions_A,
                         device=Device("cpu", "double"), progress=False,
                         refine_probe=False)
    rec.run(80)
    result = rec.result()
    mask = scanned_region_mask(result.grid, sim.positions_A)
    corr = phase_correlation(result.phase, sim.phase, mask=mask)
    assert corr > 0.9, corr
    assert rec.to_config()["loss"]["masks_path"] == str(path)
