"""``ptyframe inspect`` (disc radius against the calibration, template config), ``validate``,
``info``, ``--version`` and ``run --set / --device``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from ptyframe import load_registry
from ptyframe.apps.cli import main
from ptyframe.apps.config import apply_overrides, load_config, parse_override
from ptyframe.apps.inspect import DISC_TOLERANCE, inspect_data, measure_bright_field_disc
from ptyframe.testing.simulate import simulate_dataset, write_scan_file

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SHARED_FILES = sorted(SHARED_DATA.glob("*.h5")) if SHARED_DATA.is_dir() else []


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inspect")
    prop = load_registry().create("propagator", {"type": "multislice"})
    sim = simulate_dataset(prop, window=32, scan_shape=(5, 5), step_A=0.7,
                           dose_per_pattern=1e5, seed=4)
    return write_scan_file(sim, folder / "scan.h5")


def test_disc_of_a_drawn_disc():
    yy, xx = np.indices((64, 64))
    disc = ((yy - 30.0) ** 2 + (xx - 33.0) ** 2 <= 11.0 ** 2).astype(float) * 50 + 0.1
    cy, cx, r = measure_bright_field_disc(disc)
    assert (cy, cx) == pytest.approx((30.0, 33.0), abs=0.05)
    assert r == pytest.approx(11.0, rel=0.03)
    with pytest.raises(ValueError, match="mean pattern"):
        measure_bright_field_disc(np.zeros((8, 8)))


def test_inspect_reports_reader_shapes_metadata_and_disc(scan_file, capsys):
    assert main(["inspect", str(scan_file)]) == 0
    out = capsys.readouterr().out
    assert "reader      hdf5" in out and "25 x 32 x 32 px" in out and "(5, 5)" in out
    assert "acc_voltage_kV" in out and "<- root attribute 'acc_voltage_kV'" in out
    report = inspect_data(scan_file)
    assert abs(report.radius_error) < 0.03, report.format()
    assert not report.warnings


def _altered_copy(src: Path, folder: Path, factor: float) -> Path:
    """A copy of ``src`` whose detector calibration is ``factor`` times the true one (the
    sidecar, which wins over the file, carries the altered values)."""
    dst = folder / src.name
    shutil.copy(src, dst)
    with h5py.File(src, "r") as f:
        attrs = dict(f.attrs)
    side = {k: float(attrs[k]) * factor for k in ("detector_pixel_size_inv_A",
                                                  "detector_pixel_size_mrad") if k in attrs}
    dst.with_suffix(".json").write_text(json.dumps(side))
    return dst


def test_altered_calibration_is_flagged(scan_file, tmp_path, capsys):
    with pytest.warns(UserWarning, match="sidecar"):
        report = inspect_data(_altered_copy(scan_file, tmp_path, 1.10))
    assert report.radius_error == pytest.approx(0.10, abs=0.04)  # predicted 1/1.1 as large
    assert any(w.startswith("CALIBRATION") for w in report.warnings)
    # the same flag from the command line, with an override instead of a file
    exp = inspect_data(scan_file).experiment
    assert main(["inspect", str(scan_file), "--set",
                 f"detector_pixel_size_inv_A={exp.dk_inv_A * 1.1}"]) == 0
    assert "WARNING CALIBRATION" in capsys.readouterr().out


@pytest.mark.skipif(not SHARED_FILES, reason="the shared validation data (../shared/data) "
                    "is not beside the repository")
@pytest.mark.parametrize("path", SHARED_FILES, ids=lambda p: p.name)
def test_shared_data_disc_matches_metadata(path, tmp_path):
    report = inspect_data(path)
    assert abs(report.radius_error) < 0.03, report.format()
    assert not [w for w in report.warnings if w.startswith(("CALIBRATION", "AXES"))]
    shutil.copy(path.with_suffix(".json"), tmp_path / path.with_suffix(".json").name)
    side = tmp_path / path.with_suffix(".json").name
    meta = json.loads(side.read_text())
    for key in ("detector_pixel_size_inv_A", "detector_pixel_size_mrad"):
        meta[key] = meta[key] * 1.10
    side.write_text(json.dumps(meta))
    (tmp_path / path.name).symlink_to(path)
    with pytest.warns(UserWarning, match="sidecar"):
        altered = inspect_data(tmp_path / path.name)
    assert any(w.startswith("CALIBRATION") for w in altered.warnings)
    assert DISC_TOLERANCE < 0.10 * 0.9


def test_swapped_axes_are_flagged(tmp_path):
    """A (ky, kx, sy, sx) array with square scan and detector passes the shape check; the
    contrast check of inspect flags it."""
    yy, xx = np.indices((16, 16))
    disc = ((yy - 8) ** 2 + (xx - 8) ** 2 <= 25).astype(float) * 200.0 + 1.0
    data = np.random.default_rng(0).poisson(np.broadcast_to(disc, (10, 10, 16, 16)))
    kwargs = dict(voltage_kV=200, convergence_angle_mrad=20, detector_pixel_size_mrad=4.0)
    np.save(tmp_path / "good.npy", data.astype(np.float32))
    assert not inspect_data(tmp_path / "good.npy", **kwargs).warnings
    np.save(tmp_path / "swapped.npy", np.moveaxis(data, (0, 1), (2, 3)).astype(np.float32))
    report = inspect_data(tmp_path / "swapped.npy", **kwargs)
    assert any(w.startswith("AXES") for w in report.warnings), report.format()


def test_template_validates_and_runs(scan_file, tmp_path, capsys, monkeypatch):
    config = tmp_path / "run.toml"
    assert main(["inspect", str(scan_file), "--template", str(config)]) == 0
    text = config.read_text()
    assert 'type = "ml"' in text and 'reader = {type = "hdf5"}' in text
    assert load_config(config)["data"]["path"] == str(scan_file)
    assert main(["validate", str(config)]) == 0
    assert "is valid: 25 measurements, 50 epochs" in capsys.readouterr().out
    assert main(["inspect", str(scan_file), "--template", str(config)]) == 2  # no overwrite
    assert main(["validate", str(config), "--estimate", "--set", "progress=false",
                 "--set", "output.dir=estimate-out", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "first epoch" in out and "peak memory" in out and "50 epochs ~" in out
    assert not (tmp_path / "estimate-out").exists()  # the trial epoch writes nothing
    assert main(["run", str(config), "--set", "epochs=1", "--set", "progress=false",
                 "--set", "output.dir=out", "--device", "cpu"]) == 0
    assert (tmp_path / "out" / "loss.csv").exists()
    # data.path on the command line is relative to the current folder, not the config's
    monkeypatch.chdir(scan_file.parent)
    assert main(["validate", str(config), "--set", f"data.path={scan_file.name}"]) == 0
    monkeypatch.chdir(tmp_path)
    assert main(["validate", str(config), "--set", f"data.path={scan_file.name}"]) == 2
    capsys.readouterr()
    assert main(["validate", str(config), "--set", "loss.type=nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_parse_and_apply_overrides():
    assert parse_override("experiment.defocus_A=-100") == (["experiment", "defocus_A"], -100)
    assert parse_override("loss.type=ml") == (["loss", "type"], "ml")
    assert parse_override('refine.probe={type = "from", start = 3}')[1] == \
        {"type": "from", "start": 3}
    assert parse_override("scan_shape=[4, 5]")[1] == [4, 5]
    config = {"epochs": 5, "loss": {"type": "lsq"}}
    out = apply_overrides(config, ["loss.type=ml", "device.kind=cpu", "epochs=2"])
    assert out == {"epochs": 2, "loss": {"type": "ml"}, "device": {"kind": "cpu"}}
    assert config["loss"]["type"] == "lsq"  # not modified
    with pytest.raises(ValueError, match="key=value"):
        parse_override("epochs")
    with pytest.raises(ValueError, match="epochs to be a table"):
        apply_overrides(config, ["epochs.n=3"])


def test_version_and_info(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("ptyframe ")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "extra    formats:" in out and "devices  cpu" in out
