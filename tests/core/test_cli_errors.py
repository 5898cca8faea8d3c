"""The ``ptyframe`` command turns every user error into one message with the parameter's
location and a non-zero exit; a plugin's exception names the plugin and its distribution; a
bug in ptyframe shows its traceback and asks to report it."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap

import attrs
import numpy as np
import pytest

from ptyframe import load_registry
from ptyframe.apps.cli import main
from ptyframe.apps.migrate import migrate_reference_parameters
from ptyframe.testing.simulate import simulate_dataset, write_scan_file

PLUGIN = '''
import attrs
from ptyframe_losses.intensity_losses import LeastSquaresSqrt
from ptyframe.registry.loader import hookimpl


@attrs.define
class BoomInit(LeastSquaresSqrt):
    name = "boom_init"

    def __attrs_post_init__(self):
        raise RuntimeError("cannot start")


@attrs.define
class BoomRun(LeastSquaresSqrt):
    name = "boom_run"

    def value_and_grad(self, intensity, measured, overwrite=False):
        raise KeyError("kaboom")


@hookimpl
def ptyframe_register_components():
    return [BoomInit, BoomRun]
'''


EXPERIMENT = ("[experiment]\nvoltage_kV = 200\nconvergence_angle_mrad = 20\n"
              "detector_pixel_size_inv_A = 0.05\n")


@pytest.fixture(scope="module")
def sim():
    prop = load_registry().create("propagator", {"type": "multislice"})
    return simulate_dataset(prop, window=16, scan_shape=(4, 4), step_A=0.8, seed=1,
                            dose_per_pattern=1e5)


@pytest.fixture
def boom_site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    info = site / "fake_boom-2.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-boom\nVersion: 2.0\n")
    (info / "entry_points.txt").write_text("[ptyframe]\nboom = fake_boom_mod\n")
    (site / "fake_boom_mod.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield site
    sys.modules.pop("fake_boom_mod", None)


def _write(tmp_path, text, name="run.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _config(tmp_path, sim, extra="", data=None):
    data = data if data is not None else write_scan_file(sim, tmp_path / "scan.h5")
    return _write(tmp_path, f"""
        epochs = 2
        progress = false
        {extra}
        [data]
        path = "{data.as_posix()}"
        [experiment]
        from_metadata = true
        [device]
        kind = "cpu"
        """)


def _error(capsys, argv, status=2):
    assert main(argv) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("ptyframe: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("text, expected", [
    ('[data]\npath = 123\n', "config [data] path: expected a file name (a string), found int"),
    ('[data]\npath = "x.h5"\npreprocessing = "bin2"\n', "preprocessing: expected a table"),
    ('[data]\npath = "x.h5"\npreprocessing = {binning = 2}\n', "unknown entries ['binning']"),
    ('[data]\npath = "x.h5"\npreprocessing = {bin = 0}\n', "preprocessing.bin: expected"),
    ("", "experiment: missing voltage_kV, convergence_angle_mrad"),
])
def test_bad_data_sections(tmp_path, capsys, text, expected):
    if text:
        text += EXPERIMENT
    assert expected in _error(capsys, ["run", str(_write(tmp_path, text))])


def test_json_top_level_list(tmp_path, capsys):
    path = tmp_path / "run.json"
    path.write_text("[1, 2]")
    assert "expected a JSON object of settings at the top level, found list" in _error(
        capsys, ["run", str(path)])


def test_directory_as_data_path(tmp_path, capsys):
    (tmp_path / "scans").mkdir()
    path = _write(tmp_path, '[data]\npath = "scans"\n' + EXPERIMENT)
    assert "is a directory; expected an .h5 or .npy file" in _error(capsys, ["run", str(path)])


def test_all_zero_data_is_refused(tmp_path, capsys, sim):
    zero = attrs.evolve(sim, patterns=np.zeros_like(sim.patterns))
    data = write_scan_file(zero, tmp_path / "zero.h5")
    assert "every measured value" in _error(
        capsys, ["run", str(_config(tmp_path, sim, data=data))])


@pytest.mark.parametrize("extra, location", [
    ('refine = {probe = {type = "every", n = -1}}', "refine.probe.n: expected an integer >= 0"),
    ('regularizers = [{type = "l1_phase"}, {type = "l1_phase", weight = -1}]',
     "regularizers[1]: regularizer 'l1_phase'"),
    ('loss_weight = {type = "every", n = -2}', "loss_weight.n: expected an integer >= 0"),
])
def test_errors_name_their_config_location(tmp_path, capsys, sim, extra, location):
    assert location in _error(capsys, ["run", str(_config(tmp_path, sim, extra))])


def test_a_huge_name_is_not_echoed_whole(tmp_path, capsys, sim):
    huge = "x" * 100_000
    err = _error(capsys, ["run", str(_config(tmp_path, sim, f'loss = {{type = "{huge}"}}'))])
    assert len(err) < 5_000


def test_block_of_an_unknown_plugin(capsys):
    assert "'no-such-plugin' matches no installed plugin" in _error(
        capsys, ["plugins", "--block", "no-such-plugin"])


def test_blocked_plugins_are_named_when_a_lookup_fails():
    registry = load_registry(blocked=["ptyframe:losses"])
    with pytest.raises(KeyError, match="blocked on request: plugin 'losses'"):
        registry.entry("loss", "lsq_sqrt")


def test_negative_epoch_max_is_not_migrated():
    with pytest.raises(ValueError, match="epoch_max.*expected an integer >= 0, found -5"):
        migrate_reference_parameters({"epoch_max": -5})


def test_plugin_constructor_failure_names_the_plugin(tmp_path, capsys, sim, boom_site):
    err = _error(capsys, ["run", str(_config(tmp_path, sim, 'loss = {type = "boom_init"}'))])
    assert "loss 'boom_init'" in err and "fake-boom 2.0" in err and "cannot start" in err


def test_plugin_failure_during_the_run_names_the_plugin(tmp_path, capsys, sim, boom_site):
    err = _error(capsys, ["run", str(_config(tmp_path, sim, 'loss = {type = "boom_run"}'))],
                 status=4)
    assert "plugin 'boom' (distribution fake-boom 2.0) raised KeyError" in err
    assert "kaboom" in err


def test_a_bug_in_ptyframe_shows_the_traceback(tmp_path, capsys, sim, monkeypatch):
    from ptyframe.engine import reconstruction

    def broken(self, *args, **kwargs):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(reconstruction.Reconstruction, "_build_model", broken)
    assert main(["run", str(_config(tmp_path, sim))]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: oops" in err
    assert "this is a bug in ptyframe; please report it" in err


def test_json_config_round_trip_still_works(tmp_path, capsys, sim):
    data = write_scan_file(sim, tmp_path / "scan.h5")
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"epochs": 1, "progress": False, "data": {"path": str(data)},
                                "experiment": {"from_metadata": True},
                                "device": {"kind": "cpu"}}))
    assert main(["run", str(path)]) == 0
