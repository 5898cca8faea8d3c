"""An output folder holds one run: a foreign run is refused, a compatible one resumed (and
said so), ``--resume`` / ``--overwrite`` decide otherwise, configurations are kept, and a
second writer is stopped by the lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from ptyframe import Device, Reconstruction, load_registry
from ptyframe.apps.cli import main
from ptyframe.engine.run_record import RUN_FILE, ForeignRunError, differences
from ptyframe.io.folder_lock import LOCK_FILE, FolderBusy, FolderLock
from ptyframe.io.results import load_state, read_loss_log
from ptyframe.testing.simulate import simulate_dataset, write_scan_file


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """Two scans of the same shape (different specimens)."""
    folder = tmp_path_factory.mktemp("scans")
    prop = load_registry().create("propagator", {"type": "multislice"})
    out = []
    for seed in (1, 2):
        sim = simulate_dataset(prop, window=16, scan_shape=(4, 4), step_A=0.8, seed=seed,
                               dose_per_pattern=1e5)
        out.append(write_scan_file(sim, folder / f"scan{seed}.h5"))
    return out


def _config(tmp_path, data, loss="lsq_sqrt", epochs=3, name="run.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(f"""
        epochs = {epochs}
        progress = false
        [data]
        path = "{data.as_posix()}"
        [experiment]
        from_metadata = true
        [loss]
        type = "{loss}"
        [device]
        kind = "cpu"
        [output]
        dir = "out"
        """))
    return path


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()
            and p.name != LOCK_FILE}


def test_compatible_folder_resumes_and_says_so(tmp_path, scans, capsys):
    config = _config(tmp_path, scans[0])
    assert main(["run", str(config)]) == 0
    assert main(["run", str(config), "--epochs", "5"]) == 0
    captured = capsys.readouterr()
    out = captured.out + captured.err  # the final line goes through the ptyframe logger
    assert "resuming from epoch 3" in out and "finished 5 epochs" in out
    assert load_state(tmp_path / "out")[1] == 5
    assert list(read_loss_log(tmp_path / "out")["epoch"]) == [1, 2, 3, 4, 5]


def test_foreign_run_with_the_same_shapes_is_refused(tmp_path, scans, capsys):
    assert main(["run", str(_config(tmp_path, scans[0]))]) == 0
    before = _snapshot(tmp_path / "out")
    other = _config(tmp_path, scans[1], name="other.toml")
    assert main(["run", str(other)]) == 2
    err = capsys.readouterr().err
    assert "holds a checkpoint of another run" in err and "data.digest" in err
    assert "--resume" in err and "--overwrite" in err
    assert _snapshot(tmp_path / "out") == before  # parameters.json of the first run kept


def test_changed_loss_is_refused_then_resumed_and_recorded(tmp_path, scans, capsys):
    assert main(["run", str(_config(tmp_path, scans[0]))]) == 0
    changed = _config(tmp_path, scans[0], loss="ml", epochs=5, name="ml.toml")
    assert main(["run", str(changed)]) == 2
    assert "config.loss.type" in capsys.readouterr().err
    assert main(["run", str(changed), "--resume"]) == 0
    assert "resuming from epoch 3" in capsys.readouterr().out
    out = tmp_path / "out"
    assert json.loads((out / "parameters.json").read_text())["loss"]["type"] == "ml"
    assert json.loads((out / "parameters.rev1.json").read_text())["loss"]["type"] == "lsq_sqrt"
    assert json.loads((out / RUN_FILE).read_text())["fingerprint"]["config"]["loss"]["type"] \
        == "ml"
    assert main(["run", str(changed)]) == 0  # now the folder's own run


def test_overwrite_starts_afresh(tmp_path, scans, capsys):
    assert main(["run", str(_config(tmp_path, scans[0], epochs=4))]) == 0
    (tmp_path / "out" / "notes.txt").write_text("mine")
    other = _config(tmp_path, scans[1], epochs=2, name="other.toml")
    assert main(["run", str(other), "--overwrite"]) == 0
    out = tmp_path / "out"
    assert load_state(out)[1] == 2
    assert list(read_loss_log(out)["epoch"]) == [1, 2]
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "parameters.rev1.json").is_file()  # the first run's configuration is kept
    assert main(["run", str(other), "--resume", "--overwrite"]) == 2  # exclusive options


def test_reconstruction_api_refuses_a_foreign_folder(tmp_path):
    prop = load_registry().create("propagator", {"type": "multislice"})
    sims = [simulate_dataset(prop, window=16, scan_shape=(4, 4), step_A=0.8, seed=s)
            for s in (1, 2)]

    def rec(sim):
        return Reconstruction(sim.patterns * 1e4, sim.experiment, positions_A=sim.positions_A,
                              device=Device("cpu", "double"), progress=False,
                              output_dir=tmp_path / "out")

    rec(sims[0]).run(1)
    with pytest.raises(ForeignRunError, match="data.digest"):
        rec(sims[1]).run(1)
    rec(sims[0]).run(1)  # the same run again: allowed


def test_differences_name_config_locations():
    old = {"config": {"regularizers": [{"type": "a", "weight": 1.0}], "n": 1}}
    new = {"config": {"regularizers": [{"type": "a", "weight": 2.0}], "n": 1}}
    assert differences(old, new) == ["config.regularizers[0].weight"]


def test_lock_stops_a_second_writer_thread(tmp_path):
    results = []
    with FolderLock(tmp_path):
        def second():
            try:
                FolderLock(tmp_path).acquire()
                results.append("acquired")
            except FolderBusy as exc:
                results.append(str(exc))

        thread = threading.Thread(target=second)
        thread.start()
        thread.join()
    assert "being written by another ptyframe run" in results[0]
    assert f"pid {os.getpid()}" in results[0]
    with FolderLock(tmp_path):  # released: free again
        pass


def test_two_processes_on_one_folder(tmp_path, scans):
    config = _config(tmp_path, scans[0], epochs=100_000)
    first = subprocess.Popen([sys.executable, "-m", "ptyframe", "run", str(config)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        lock = tmp_path / "out" / LOCK_FILE
        deadline = time.monotonic() + 120
        while first.poll() is None and time.monotonic() < deadline and not (
                lock.is_file() and lock.read_text().startswith("pid")):
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read().decode()
        second = subprocess.run([sys.executable, "-m", "ptyframe", "run", str(config)],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode != 0
        assert "being written by another ptyframe run" in second.stderr
        assert f"pid {first.pid}" in second.stderr
    finally:
        first.kill()
        first.wait()
    # the killed holder's lock is released by the OS: the folder resumes
    assert main(["run", str(_config(tmp_path, scans[0], epochs=1)), "--overwrite"]) == 0
    assert np.isfinite(read_loss_log(tmp_path / "out")["loss"]).all()
