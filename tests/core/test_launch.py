"""``ptyframe run config --gpus 0,1``: parsing, the mpiexec command and its environment, the
GPU each rank picks, and clear errors (no GPU is needed: CuPy and the launcher are faked)."""

from __future__ import annotations

import sys
import types

import pytest

import ptyframe.apps.launch as launch_module
import ptyframe.core.device as device_module
from ptyframe import load_registry
from ptyframe.apps.cli import main
from ptyframe.apps.config import build_reconstruction, load_config
from ptyframe.apps.launch import (
    GPUS_VARIABLE,
    gpu_for_rank,
    gpus_from_environment,
    launch_command,
    parse_gpus,
)
from ptyframe.testing.simulate import simulate_dataset, write_scan_file

CONFIG = """
epochs = 2
progress = false
[data]
path = "{data}"
[experiment]
from_metadata = true
[device]
kind = "{kind}"
"""


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    prop = load_registry().create("propagator", {"type": "multislice"})
    sim = simulate_dataset(prop, window=16, scan_shape=(4, 4), step_A=0.7, seed=3)
    return write_scan_file(sim, tmp_path_factory.mktemp("launch") / "scan.h5")


def config_file(tmp_path, data_file, kind="auto"):
    path = tmp_path / f"run_{kind}.toml"
    path.write_text(CONFIG.format(data=data_file, kind=kind))
    return path


def test_parse_gpus():
    assert parse_gpus("0,1, 3") == [0, 1, 3]
    for bad in ("", "0,,1", "a", "-1", "0,0"):
        with pytest.raises(ValueError, match="--gpus: expected"):
            parse_gpus(bad)


def test_ranks_pick_gpus_by_local_rank():
    assert [gpu_for_rank([2, 5], r) for r in range(4)] == [2, 5, 2, 5]
    assert gpus_from_environment({}) is None
    assert gpus_from_environment({GPUS_VARIABLE: "4,6"}) == [4, 6]
    with pytest.raises(ValueError, match=GPUS_VARIABLE):
        gpus_from_environment({GPUS_VARIABLE: "x"})


def test_bad_gpus_and_cpu_config_are_clear_errors(tmp_path, data_file, capsys, monkeypatch):
    monkeypatch.delenv(GPUS_VARIABLE, raising=False)
    path = config_file(tmp_path, data_file)
    assert main(["run", str(path), "--gpus", "0,x"]) == 2
    assert "--gpus: expected comma-separated GPU ids" in capsys.readouterr().err
    cpu = config_file(tmp_path, data_file, kind="cpu")
    assert main(["run", str(cpu), "--gpus", "0,1"]) == 2
    assert "[device] kind is 'cpu'" in capsys.readouterr().err
    monkeypatch.setattr(device_module, "cupy_available", lambda: False)
    assert main(["run", str(path), "--gpus", "0,1"]) == 2
    assert "--gpus: expected CuPy with CUDA devices" in capsys.readouterr().err


def test_launch_starts_one_rank_per_gpu(tmp_path, data_file, monkeypatch):
    monkeypatch.delenv(GPUS_VARIABLE, raising=False)
    fake_cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 4)))
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy)
    monkeypatch.setattr(device_module, "cupy_available", lambda: True)
    monkeypatch.setattr(launch_module, "find_mpiexec", lambda: "/opt/mpi/bin/mpiexec")
    started = {}

    def fake_run(cmd, env, check):
        started.update(cmd=cmd, env=env)
        return types.SimpleNamespace(returncode=7)

    monkeypatch.setattr(launch_module.subprocess, "run", fake_run)
    path = config_file(tmp_path, data_file)
    assert main(["run", str(path), "--gpus", "1,3", "--epochs", "3"]) == 7
    assert started["cmd"] == launch_command("/opt/mpi/bin/mpiexec", [1, 3], path,
                                            ["--epochs", "3"])
    assert started["cmd"][:3] == ["/opt/mpi/bin/mpiexec", "-n", "2"]
    assert started["env"][GPUS_VARIABLE] == "1,3"
    assert main(["run", str(path), "--gpus", "2"]) == 7  # one GPU: no launcher
    assert started["cmd"][0] == sys.executable and started["env"][GPUS_VARIABLE] == "2"
    assert main(["run", str(path), "--gpus", "1,4"]) == 2  # only 4 GPUs visible


def test_a_rank_started_by_gpus_uses_a_gpu(tmp_path, data_file, monkeypatch):
    monkeypatch.setenv(GPUS_VARIABLE, "0,1")
    monkeypatch.setattr(device_module, "cupy_available", lambda: False)
    path = config_file(tmp_path, data_file)
    # the rank asks for the GPU of its list; without CuPy here that is the Device's error
    with pytest.raises(RuntimeError, match="device kind 'gpu' requested"):
        build_reconstruction(load_config(path), tmp_path)
    with pytest.raises(ValueError, match="kind is 'cpu'"):
        build_reconstruction(load_config(config_file(tmp_path, data_file, "cpu")), tmp_path)
