"""Data parallelism over MPI: ``mpiexec -n 2 ptyframe run`` equals one process (within 1e-5
relative; bit for bit with ``deterministic``), a failed or killed rank stops the job with a
message naming it, and a 2-rank checkpoint resumes in one process.

Needs the ``mpi`` extra (mpi4py and the mpich wheel); CI installs it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ptyframe import load_registry
from ptyframe.io.results import load_state, read_loss_log
from ptyframe.testing.simulate import simulate_dataset, write_scan_file

pytest.importorskip("mpi4py", reason="the mpi extra (mpi4py, mpich) is not installed")

CONFIG = """
epochs = {epochs}
progress = false
batch_size = 16
[data]
path = "{data}"
[experiment]
from_metadata = true
[refine]
object = true
probe = {{type = "from", start = 1}}
positions = {{type = "from", start = 2}}
[device]
kind = "cpu"
precision = "single"
[parallel]
deterministic = {deterministic}
chunk = 16
[output]
dir = "{out}"
"""

FAILING_RANK = """
import os, signal, sys
from ptyframe.apps.config import build_reconstruction, load_config
rec, _ = build_reconstruction(load_config(sys.argv[1]), ".")
def fail(report):
    if report.epoch == 2 and rec.communicator.rank == 1:
        if sys.argv[2] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError("disk gone")
rec.run(6, callbacks=[fail])
"""


def _mpiexec() -> str:
    local = Path(sys.executable).parent / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if found is None:
        pytest.skip("no mpiexec next to the interpreter or on PATH")
    return found


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mpi")
    prop = load_registry().create("propagator", {"type": "multislice"})
    sim = simulate_dataset(prop, window=24, scan_shape=(8, 8), step_A=0.7,
                           dose_per_pattern=1e5, seed=5, position_jitter_A=0.1)
    return write_scan_file(sim, folder / "scan.h5")


def _config(folder: Path, data: Path, out: str, deterministic: bool, epochs: int) -> Path:
    path = folder / f"{out}.toml"
    path.write_text(CONFIG.format(epochs=epochs, data=data.as_posix(), out=out,
                                  deterministic=str(deterministic).lower()))
    return path


def _run(config: Path, ranks: int, epochs: int | None = None, timeout: float = 300
         ) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "ptyframe", "run", str(config)]
    if epochs is not None:
        command += ["--epochs", str(epochs)]
    if ranks > 1:
        command = [_mpiexec(), "-n", str(ranks), *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result


def _state(out: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    arrays, _ = load_state(out)
    return arrays, read_loss_log(out / "loss.csv")["loss"]


@pytest.mark.slow
@pytest.mark.parametrize("deterministic", [False, True])
def test_two_ranks_equal_one_process(tmp_path, data_file, deterministic):
    one = _config(tmp_path, data_file, "one", deterministic, 6)
    two = _config(tmp_path, data_file, "two", deterministic, 6)
    _run(one, 1)
    result = _run(two, 2)
    assert "rank 1 of 2" in result.stderr and "measurements [32, 64)" in result.stderr
    assert (result.stdout + result.stderr).count("finished 6 epochs") == 1  # rank 0 alone reports
    (a, loss_a), (b, loss_b) = _state(tmp_path / "one"), _state(tmp_path / "two")
    for name in ("object", "probe", "positions"):
        if deterministic:
            np.testing.assert_array_equal(b[name], a[name], err_msg=name)
        else:
            scale = np.abs(a[name]).max()
            assert np.abs(b[name] - a[name]).max() <= 1e-5 * scale, name
    if deterministic:
        np.testing.assert_array_equal(loss_b, loss_a)
    else:
        np.testing.assert_allclose(loss_b, loss_a, rtol=1e-5)


@pytest.mark.slow
def test_two_rank_checkpoint_resumes_in_one_process(tmp_path, data_file):
    whole = _config(tmp_path, data_file, "whole", True, 6)
    split = _config(tmp_path, data_file, "split", True, 6)
    _run(whole, 1)
    _run(split, 2, epochs=3)
    _run(split, 1)  # finds the 2-rank checkpoint at epoch 3 and runs the last 3 epochs
    (a, loss_a), (b, loss_b) = _state(tmp_path / "whole"), _state(tmp_path / "split")
    for name in ("object", "probe", "positions"):
        np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    np.testing.assert_array_equal(loss_b, loss_a)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["raise", "kill"])
def test_a_failed_rank_stops_every_rank_naming_it(tmp_path, data_file, how):
    config = _config(tmp_path, data_file, "fail", False, 6)
    script = tmp_path / "fail.py"
    script.write_text(FAILING_RANK)
    result = subprocess.run([_mpiexec(), "-n", "2", sys.executable, str(script), str(config),
                             how], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    if how == "raise":
        assert "rank 1 of 2 failed: OSError: disk gone" in output
    else:
        # the roster printed at the start maps the launcher's report of the killed
        # process (its pid) to rank 1
        roster = [line for line in output.splitlines() if line.startswith("ptyframe: rank 1")]
        assert roster, output
        pid = roster[0].split("pid ")[1].split()[0]
        assert f"PID {pid}" in output, output
