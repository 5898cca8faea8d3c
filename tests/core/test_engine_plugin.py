"""A second engine as a plugin: mini-batch gradient descent, written in the test folder,
installed through an entry point of a (fake) distribution, runs a reconstruction."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from ptyframe import Device, Reconstruction, load_registry
from ptyframe.testing.simulate import simulate_dataset
from ptyframe.testing.validation import phase_correlation, resample_to_grid, scanned_region_mask

PLUGIN_DIR = Path(__file__).parent / "engine_plugin"
MODULE = "ptyframe_minibatch_engine"


@pytest.fixture
def engine_plugin(tmp_path, monkeypatch):
    """The plugin module on sys.path plus a dist-info folder naming it as a ``ptyframe``
    entry point, as ``pip install`` would leave it."""
    dist = tmp_path / "ptyframe_minibatch_engine-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ptyframe-minibatch-engine\n"
                                   "Version: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[ptyframe]\nminibatch = {MODULE}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    importlib.invalidate_caches()
    yield
    sys.modules.pop(MODULE, None)


def test_minibatch_engine_plugin_reconstructs(engine_plugin):
    registry = load_registry(strict=True)
    assert "minibatch_gd" in registry.names("engine")
    assert registry.entry("engine", "minibatch_gd").distribution == "ptyframe-minibatch-engine"
    multislice = registry.create("propagator", {"type": "multislice", "slice_thickness_A": 2.0})
    sim = simulate_dataset(multislice, window=24, scan_shape=(10, 10), step_A=0.6, seed=0)
    engine = registry.create("engine", {"type": "minibatch_gd", "batch": 20})
    rec = Reconstruction(sim.patterns * 1e4, sim.experiment, positions_A=sim.positions_A,
                         propagator=multislice, engine=engine, refine_probe=False,
                         initial_probe=sim.probe,
                         device=Device("cpu", "double"), progress=False, registry=registry)
    result = rec.run(40)
    truth = resample_to_grid(sim.phase, sim.grid, result.grid)
    score = phase_correlation(result.phase, truth,
                              mask=scanned_region_mask(result.grid, sim.positions_A))
    # measured: 0.977 after 40 epochs of 5 mini-batches (0.77 after 20; the full-batch engine
    # reaches 0.999); the loss falls to 5e-4 of its start
    assert result.loss[-1] < 0.01 * result.loss[0]
    assert score > 0.95
    assert rec.to_config()["engine"]["type"] == "minibatch_gd"
