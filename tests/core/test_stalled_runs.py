"""A run that cannot make progress stops with a message naming the cause (component, block,
epoch) and a non-zero exit; the last good checkpoint is left as it was."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ptyframe import Device, Reconstruction, load_registry
from ptyframe.engine.health import HealthWatch, RunStalled
from ptyframe.io.results import load_state
from ptyframe.testing.simulate import simulate_dataset, write_scan_file

POISON = '''
import attrs
from ptyframe_losses.intensity_losses import LeastSquaresSqrt
from ptyframe.registry.loader import hookimpl


@attrs.define
class NanAfter(LeastSquaresSqrt):
    """lsq_sqrt whose gradient turns NaN from the ``start``-th call on."""

    name = "nan_after"
    start: int = 5
    calls: int = attrs.field(default=0, init=False, eq=False)

    def value_and_grad(self, intensity, measured, overwrite=False):
        self.calls += 1
        value, grad = super().value_and_grad(intensity, measured, overwrite)
        if self.calls >= self.start:
            grad = grad * float("nan")
        return value, grad


@attrs.define
class Uphill(LeastSquaresSqrt):
    """lsq_sqrt with the gradient's sign flipped: no step can ever decrease the loss."""

    name = "uphill"

    def value_and_grad(self, intensity, measured, overwrite=False):
        value, grad = super().value_and_grad(intensity, measured, overwrite)
        return value, -grad


@hookimpl
def ptyframe_register_components():
    return [NanAfter, Uphill]
'''


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """A fake distribution ``fake-poison`` (entry point ``poison``) in its own folder."""
    site = tmp_path_factory.mktemp("poison_site")
    info = site / "fake_poison-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-poison\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[ptyframe]\npoison = fake_poison_mod\n")
    (site / "fake_poison_mod.py").write_text(textwrap.dedent(POISON))
    return site


@pytest.fixture(scope="module")
def sim():
    prop = load_registry().create("propagator", {"type": "multislice"})
    return simulate_dataset(prop, window=16, scan_shape=(5, 5), step_A=0.8, seed=3,
                            dose_per_pattern=1e5)


def _rec(sim, tmp_path, **kwargs):
    return Reconstruction(sim.patterns, sim.experiment, positions_A=sim.positions_A,
                          device=Device("cpu", "double"), progress=False, batch_size=10_000,
                          output_dir=tmp_path / "out", **kwargs)


def test_nan_from_the_fifth_evaluation_names_the_component(sim, tmp_path, plugin_site,
                                                           monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_site))
    registry = load_registry()
    loss = registry.create("loss", {"type": "nan_after", "start": 5})
    rec = _rec(sim, tmp_path, loss=loss, registry=registry, save_every=1)
    with pytest.raises(RunStalled) as info:
        rec.run(30)
    message = str(info.value)
    assert "loss 'nan_after'" in message and "fake-poison" in message
    assert "non-finite gradient of block" in message
    assert "objective evaluation 5" in message
    assert f"epoch {info.value.epoch + 1}" in message
    assert info.value.epoch < 30
    arrays, epoch = load_state(tmp_path / "out")  # the last good checkpoint
    assert epoch == info.value.epoch
    assert all(np.isfinite(a).all() for a in arrays.values())


def test_nan_at_the_start_names_the_component(sim, tmp_path, plugin_site, monkeypatch):
    """The optimizer refuses a non-finite starting value; the message says who made it."""
    monkeypatch.syspath_prepend(str(plugin_site))
    registry = load_registry()
    loss = registry.create("loss", {"type": "nan_after", "start": 1})
    rec = _rec(sim, tmp_path, loss=loss, registry=registry)
    with pytest.raises(RunStalled, match="loss 'nan_after'.*epoch 1 .objective evaluation 1"):
        rec.run(3)
    assert not (tmp_path / "out" / "state.json").exists()  # nothing checkpointed


def test_rejected_steps_in_a_row_stop_the_run(sim, tmp_path, plugin_site, monkeypatch):
    """A gradient that points uphill leaves every step rejected: the run stops after
    ``max_rejected_epochs`` epochs instead of "finishing"."""
    monkeypatch.syspath_prepend(str(plugin_site))
    registry = load_registry()
    rec = _rec(sim, tmp_path, loss=registry.create("loss", {"type": "uphill"}),
               registry=registry, max_rejected_epochs=3)
    with pytest.raises(RunStalled, match="3 epochs in a row ended with every step rejected"
                       ) as info:
        rec.run(30)
    assert info.value.epoch == 2
    assert "no NaN or infinity was seen" in str(info.value)


def test_health_watch_counts_and_resets():
    watch = HealthWatch(3)
    for epoch in range(2):
        watch.after_epoch(np, epoch, 1.0, False, False, {"object": np.ones(3)})
    watch.after_epoch(np, 2, 1.0, True, False, {"object": np.ones(3)})  # progress resets
    assert watch.rejected_in_a_row == 0
    watch.after_epoch(np, 3, 1.0, False, True, {"object": np.ones(3)})  # converged: fine
    assert watch.rejected_in_a_row == 0
    with pytest.raises(RunStalled, match="block 'probe' holds non-finite"):
        watch.after_epoch(np, 4, 1.0, True, False, {"probe": np.array([np.nan])})
    with pytest.raises(RunStalled, match="the loss is nan"):
        watch.after_epoch(np, 5, float("nan"), True, False, {})


def test_max_rejected_epochs_is_validated():
    from ptyframe.engine.specs import SolverSpec

    with pytest.raises(ValueError, match="max_rejected_epochs"):
        SolverSpec(max_rejected_epochs=0)


def test_cli_exits_non_zero_with_the_plugin_named(sim, tmp_path, plugin_site):
    data = write_scan_file(sim, tmp_path / "scan.h5")
    config = tmp_path / "run.toml"
    config.write_text(textwrap.dedent(f"""
        epochs = 30
        progress = false
        batch_size = 10000
        [data]
        path = "{data.as_posix()}"
        [experiment]
        from_metadata = true
        [loss]
        type = "nan_after"
        [device]
        kind = "cpu"
        [output]
        dir = "out"
        save_every = 1
        """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(plugin_site), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "ptyframe", "run", str(config)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "finished" not in proc.stdout
    assert "nan_after" in proc.stderr and "fake-poison" in proc.stderr
    assert "Traceback" not in proc.stderr
