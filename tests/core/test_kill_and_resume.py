"""A run killed with SIGKILL at a random moment and resumed gives, bit for bit, the object,
probe, positions and loss log of an uninterrupted run (the optimizer's history, the engine's
state and the batch size travel with every checkpoint)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ptyframe import load_registry
from ptyframe.io.results import load_state, read_loss_log
from ptyframe.testing.simulate import simulate_dataset, write_scan_file

EPOCHS = 40
#: kills per test (the issue asks for at least 10 in the test suite's time budget)
TRIALS = 10

CONFIG = """
epochs = {epochs}
progress = false
[data]
path = "{data}"
[experiment]
from_metadata = true
[loss]
type = "ml"
[refine]
object = true
probe = {{type = "from", start = 3}}
positions = {{type = "from", start = 6}}
[device]
kind = "cpu"
precision = "single"
[output]
dir = "{out}"
"""

#: loss.csv columns that must agree (time_s and memory_mb are measurements of the machine)
COMPARED = ("epoch", "loss", "data_loss", "step_size", "evaluations", "accepted")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kill")
    prop = load_registry().create("propagator", {"type": "multislice"})
    sim = simulate_dataset(prop, window=24, scan_shape=(8, 8), step_A=0.7,
                           dose_per_pattern=1e5, seed=5, position_jitter_A=0.1)
    return write_scan_file(sim, folder / "scan.h5")


def _command(folder, data, out):
    config = folder / f"{out}.toml"
    config.write_text(CONFIG.format(epochs=EPOCHS, data=data.as_posix(), out=out))
    return [sys.executable, "-m", "ptyframe", "run", str(config)]


def _rows(log_path) -> int:
    try:
        return max(0, len(log_path.read_text().splitlines()) - 1)
    except OSError:
        return 0


def _final(out):
    arrays, epoch = load_state(out)
    log = read_loss_log(out / "loss.csv")
    return arrays, epoch, log


@pytest.mark.slow
def test_kill_at_random_moments_then_resume_is_bit_identical(tmp_path, data_file):
    env = dict(os.environ, PYTHONHASHSEED="0")
    subprocess.run(_command(tmp_path, data_file, "whole"), check=True, env=env,
                   capture_output=True, timeout=600)
    reference, epoch, reference_log = _final(tmp_path / "whole")
    assert epoch == EPOCHS
    rng = np.random.default_rng()
    out = tmp_path / "killed"
    kills = 0
    seed = int(rng.integers(2**31))
    rng = np.random.default_rng(seed)  # printed on failure, to replay the same moments
    for target in sorted(rng.choice(np.arange(2, EPOCHS - 4), size=TRIALS, replace=False)):
        proc = subprocess.Popen(_command(tmp_path, data_file, "killed"), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while _rows(out / "loss.csv") < target and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(float(rng.uniform(0.0, 0.05)))  # anywhere inside an epoch or a checkpoint
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= TRIALS - 2, f"only {kills} of {TRIALS} runs could be killed (seed {seed})"
    finished = subprocess.run(_command(tmp_path, data_file, "killed"), env=env,
                              capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert "resuming from epoch" in finished.stdout
    arrays, epoch, log = _final(out)
    assert epoch == EPOCHS
    for name in ("object", "probe", "positions"):
        assert np.array_equal(arrays[name], reference[name]), (name, seed)
    for column in COMPARED:
        assert np.array_equal(log[column], reference_log[column]), (column, seed)
