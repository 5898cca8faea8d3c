"""Config files resolve components by name, run end to end, resume, and reject bad input."""

import json

import numpy as np
import pytest

from ptyframe import load_registry
from ptyframe.apps.cli import main
from ptyframe.apps.config import build_reconstruction, load_config, run_config_file
from ptyframe.io.results import load_state, read_loss_log
from ptyframe.testing.simulate import simulate_dataset, write_scan_file


@pytest.fixture(scope="module")
def dataset_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    prop = load_registry().create("propagator", {"type": "multislice"})
    sim = simulate_dataset(prop, window=24, scan_shape=(6, 6), step_A=0.7, dose_per_pattern=1e5,
                           seed=3)
    return write_scan_file(sim, folder / "scan.h5")


def write_toml(folder, text):
    path = folder / "run.toml"
    path.write_text(text)
    return path


CONFIG = """
epochs = 6
progress = false
[data]
path = "{data}"
[experiment]
from_metadata = true
[loss]
type = "ml"
[optimizer]
type = "quasi_newton"
history_length = 5
[refine]
object = true
probe = {{type = "from", start = 2}}
[device]
kind = "cpu"
precision = "double"
[output]
dir = "out"
checkpoint_every = 3
"""


def test_toml_config_runs_and_resumes(tmp_path, dataset_file):
    path = write_toml(tmp_path, CONFIG.format(data=dataset_file))
    result = run_config_file(path)
    assert result.epochs == 6
    out = tmp_path / "out"
    for name in ("co.npy", "cp.npy", "cg.npy", "loss.csv", "parameters.json",
                 "checkpoint_obj_epoch_3.npy", "checkpoint_probe_epoch_6.npy"):
        assert (out / name).exists(), name
    log = read_loss_log(out / "loss.csv")
    assert list(log["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert log["loss"][-1] < log["loss"][0]
    params = json.loads((out / "parameters.json").read_text())
    assert params["loss"]["type"] == "ml" and params["optimizer"]["history_length"] == 5
    # asking for 9 epochs in total continues from the checkpoint at epoch 6
    result = run_config_file(path, epochs=9)
    assert result.epochs == 9
    _, epoch = load_state(out)
    assert epoch == 9
    assert list(read_loss_log(out / "loss.csv")["epoch"]) == list(range(1, 10))


def test_cli_run_and_plugins(tmp_path, dataset_file, capsys):
    path = write_toml(tmp_path, CONFIG.format(data=dataset_file))
    assert main(["run", str(path), "--epochs", "2", "--output", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "co.npy").exists()
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for name in ("multislice", "lsq_sqrt", "ml", "quasi_newton", "aperture", "scan_grid"):
        assert name in out


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.replace("[loss]\ntype = \"ml\"", "[loss]\ntype = \"nope\""), "nope"),
        (lambda c: c.replace("history_length = 5", "history_length = -3"), "history_length"),
        (lambda c: c + "\nunknown_key = 1\n", "unknown_key"),
        (lambda c: c.replace("[refine]", "[refine]\nwobble = true"), "wobble"),
        (lambda c: c + "\ntilt_mode = 7\n", "tilt_mode"),
        (lambda c: c.replace("from_metadata = true",
                             "from_metadata = true\ndetector_pixel_size_mrad = 9.0\n"
                             "detector_pixel_size_inv_A = 0.1"), "inconsistent calibration"),
    ],
)
def test_bad_configs_fail_with_a_clear_message(tmp_path, dataset_file, edit, message):
    path = write_toml(tmp_path, edit(CONFIG.format(data=dataset_file)))
    with pytest.raises((ValueError, KeyError)) as info:
        build_reconstruction(load_config(path), base_dir=tmp_path)
    assert message in str(info.value)


def test_missing_files_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="config"):
        load_config(tmp_path / "absent.toml")
    path = write_toml(tmp_path, CONFIG.format(data=tmp_path / "absent.h5"))
    with pytest.raises((FileNotFoundError, ValueError), match="absent.h5"):
        build_reconstruction(load_config(path), base_dir=tmp_path)
    assert main(["run", str(tmp_path / "absent.toml")]) == 2


def test_demo_writes_figures(tmp_path):
    from ptyframe.apps.demo import run_demo

    out = run_demo(tmp_path / "demo", quick=True, epochs=25)
    for name in ("phase_vs_truth.png", "object.png", "probe.png", "positions.png", "loss.png"):
        png = tmp_path / "demo" / "figures" / name
        assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    assert out["phase_correlation"] > 0.95
    assert np.isfinite(out["position_error_A"])
    run_demo(tmp_path / "demo", quick=True, epochs=2)  # another demo replaces the folder's run
    from ptyframe.io.results import read_loss_log

    assert list(read_loss_log(tmp_path / "demo")["epoch"]) == [1, 2]
