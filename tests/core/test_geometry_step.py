"""The geometry step before iterating (``[geometry]``, ``ptyframe run --geometry``,
``ptyframe geometry``) on ptyframe's own simulated data.

Geometry: 200 kV, 15 mrad, 32-pixel detector at 0.4 Å reconstruction pixels, 24 x 24 scan at
0.7 Å, defocus 300 Å (parallax shifts up to about 6 scan steps at the bright-field edge),
1e4 electrons per pattern. A scan rotated by theta against the detector is simulated by
rotating the patterns (``rotate_patterns``), a transposed detector by swapping their axes.
The metadata written with the files say rotation 0 and the true defocus.

Measured (CPU, single precision): rotated 30 deg -> 29.87 deg, C10 -297 Å, shifts measured to
0.14 scan steps, 99.9 % of their variance explained, rotation standard error 0.1 deg; pure noise
-> shifts 1.9 scan steps RMS (refused); in focus -> no parallax to measure (refused).
"""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest

from ptyframe import load_registry
from ptyframe.apps import geometry as geometry_module
from ptyframe.apps.cli import main
from ptyframe.apps.config import build_reconstruction, run_config_file
from ptyframe.apps.geometry import (
    GeometryError,
    GeometryFindings,
    GeometrySettings,
    read_geometry,
)
from ptyframe.core.parallax import fit_parallax
from ptyframe.testing.simulate import rotate_patterns, simulate_dataset, write_scan_file

SCAN = (24, 24)
STEP_A = 0.7


def _simulate(defocus_A: float):
    prop = load_registry().create("propagator", {"type": "multislice"})
    return simulate_dataset(prop, window=32, pixel_size_A=0.4, defocus_A=defocus_A,
                            convergence_angle_mrad=15.0, scan_shape=SCAN, step_A=STEP_A,
                            seed=1, dose_per_pattern=1e4)


def _write(sim, patterns, path):
    write_scan_file(sim, path)
    with h5py.File(path, "r+") as fh:
        del fh["data"]
        fh["data"] = np.asarray(patterns, dtype=np.float32)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("geometry")
    sim = _simulate(300.0)
    focus = _simulate(0.0)
    rng = np.random.default_rng(0)
    noise = rng.poisson(sim.patterns.mean(axis=0), sim.patterns.shape)
    return {
        "rotated": _write(sim, rotate_patterns(sim.patterns, 30.0), folder / "rotated.h5"),
        "transposed": _write(sim, np.swapaxes(rotate_patterns(sim.patterns, -10.0), 1, 2),
                             folder / "transposed.h5"),
        "noise": _write(sim, noise, folder / "noise.h5"),
        "focus": _write(focus, focus.patterns, folder / "focus.h5"),
    }


CONFIG = """
epochs = 1
progress = false
[data]
path = "{data}"
[experiment]
from_metadata = true
[geometry]
mode = "{mode}"
{geometry}
[refine]
object = true
[device]
kind = "cpu"
precision = "single"
[output]
dir = "out"
checkpoint_every = 1
"""


def _config(tmp_path, data, mode="auto", geometry=""):
    path = tmp_path / "run.toml"
    path.write_text(CONFIG.format(data=data, mode=mode, geometry=geometry))
    return path


def _parameters(tmp_path):
    return json.loads((tmp_path / "out" / "parameters.json").read_text())


# ---------------------------------------------------------------------------- the linear fit
@pytest.mark.parametrize("theta, c10, c12, transposed", [
    (30.0, -300.0, (0.0, 0.0), False), (-100.0, -300.0, (40.0, -20.0), False),
    (135.0, 500.0, (30.0, 0.0), True), (90.0, 250.0, (0.0, 15.0), True)])
def test_parallax_fit_recovers_rotation_defocus_and_transpose(theta, c10, c12, transposed):
    # shifts of the tcBF model: sigma = R(theta)^T (-lambda (C10 I + C) k) + offset
    rng = np.random.default_rng(1)
    k = rng.uniform(-0.3, 0.3, (60, 2))
    lam = 0.0251
    astig = np.array([[c12[0], c12[1]], [c12[1], -c12[0]]])
    s = -lam * k @ (c10 * np.eye(2) + astig).T
    c, sn = math.cos(math.radians(theta)), math.sin(math.radians(theta))
    sigma = s @ np.array([[c, sn], [-sn, c]]) + np.array([0.3, -0.2])
    sigma += rng.normal(0.0, 0.02, sigma.shape)
    k_det = k[:, ::-1] if transposed else k
    fit = fit_parallax(sigma, k_det, lam, prior_rotation_deg=theta + 60.0)
    assert abs(fit.rotation_deg - theta) < 0.5
    assert abs(fit.c10_A - c10) < 0.02 * abs(c10)
    assert abs(fit.c12_A - math.hypot(*c12)) < 3.0
    assert fit.transpose is transposed
    assert fit.explained > 0.99
    # the standard error is honest: the error is within a few of it
    assert abs(fit.rotation_deg - theta) < 5 * fit.rotation_sigma_deg + 0.05
    # the other branch of the 180-degree pair is chosen for a prior across it
    flipped = fit_parallax(sigma, k_det, lam, prior_rotation_deg=theta + 180.0)
    assert abs((flipped.rotation_deg - theta - 180.0 + 180.0) % 360.0 - 180.0) < 0.5
    assert flipped.c10_A == pytest.approx(-fit.c10_A)


def test_parallax_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="shifts_A, k_inv_A: expected two"):
        fit_parallax(np.zeros((5, 2)), np.zeros((5, 3)), 0.025)
    with pytest.raises(ValueError, match="at least 4"):
        fit_parallax(np.zeros((3, 2)), np.zeros((3, 2)), 0.025)
    with pytest.raises(ValueError, match="wavelength_A"):
        fit_parallax(np.zeros((5, 2)), np.ones((5, 2)), 0.0)


# ---------------------------------------------------------------------------- settings
@pytest.mark.parametrize("section, message", [
    ({"mode": "on"}, "mode"), ({"colour": 1}, "unknown keys"),
    ({"tcbf": {"type": "dpc"}}, "geometry tcbf"), ("auto", "expected a table"),
    ({"max_rotation_sigma_deg": -1}, "max_rotation_sigma_deg"),
    ({"apply": ["rotation", "scale"]}, "geometry apply: expected some of"),
    ({"apply": "rotation"}, "expected a list of names")])
def test_bad_geometry_settings_name_the_key(section, message):
    with pytest.raises(ValueError, match=message):
        GeometrySettings.from_config(section)


def test_bad_tcbf_settings_are_refused_when_the_configuration_is_built(tmp_path, files):
    path = _config(tmp_path, files["rotated"], geometry="tcbf = {binning = [0]}")
    with pytest.raises(ValueError, match=r"config \[geometry\] tcbf.*binning"):
        run_config_file(path)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def found(files):
    """The findings on each file (computed once; the run tests below that are about what is
    done with findings reuse them instead of running tcBF again)."""
    return {case: geometry_module.find_geometry(*_data_and_experiment(files[case]),
                                                GeometrySettings(mode="check"))
            for case in ("rotated", "noise", "focus")}


def _data_and_experiment(path):
    rec, _ = build_reconstruction({"data": {"path": str(path)},
                                   "experiment": {"from_metadata": True}})
    return rec.dataset, rec.experiment


@pytest.fixture
def cached(found, monkeypatch):
    """``find_geometry`` answering from :func:`found`, counting its calls."""
    calls = []

    def find(dataset, experiment, settings, device=None, registry=None):
        calls.append(dataset.path)
        return found[dataset.path.stem]

    monkeypatch.setattr("ptyframe.apps.config.find_geometry", find)
    return calls


def test_findings_and_their_confidence(found):
    rotated = found["rotated"]
    assert rotated.confident, rotated.format()
    assert abs(rotated.rotation_deg - 30.0) < 0.5  # measured 29.87
    assert abs(rotated.aberrations_A["C10"] + 300.0) < 0.05 * 300.0  # measured -296.9
    assert rotated.transpose is False
    fit = rotated.details["parallax_fit"]
    assert fit["explained"] > 0.99 and fit["rotation_sigma_deg"] < 0.3
    assert "dpc" not in rotated.details  # 6 scan steps of defocus blur: not near focus
    assert any("scan_rotation_deg 0" in n for n in rotated.notes)
    # pure noise: shift "measurements" scattered over scan steps, transpose undecided
    assert {"shift_precision", "transpose"} <= {c.name for c in found["noise"].failed}
    # in focus: no parallax to measure the rotation from; DPC ran as the cross-check
    focus = found["focus"]
    assert "rotation" in {c.name for c in focus.failed}
    assert focus.details["dpc"]["rotation_deg"] == pytest.approx(0.0, abs=2.0)
    assert not any("defocus_A" in n for n in focus.notes)  # within step / alpha of 0


def test_cli_run_applies_the_rotation_found(tmp_path, files, capsys):
    assert main(["run", str(_config(tmp_path, files["rotated"], mode="off")),
                 "--geometry", "auto"]) == 0
    out = capsys.readouterr().out
    assert "confidence high" in out
    experiment = _parameters(tmp_path)["experiment"]
    assert abs(experiment["scan_rotation_deg"] - 30.0) < 0.5
    assert abs(experiment["aberrations"]["C10"] + 300.0) < 0.05 * 300.0
    recorded = read_geometry(tmp_path / "out")
    assert recorded is not None and recorded.confident and recorded.transpose is False
    assert recorded.rotation_deg == pytest.approx(experiment["scan_rotation_deg"])


def test_transposed_detector_is_read_transposed(tmp_path, files, capsys):
    run_config_file(_config(tmp_path, files["transposed"]))
    assert "transposed" in capsys.readouterr().out
    assert abs(_parameters(tmp_path)["experiment"]["scan_rotation_deg"] + 10.0) < 0.5
    recorded = read_geometry(tmp_path / "out")
    assert recorded.transpose is True and recorded.confident
    # the run read the data transposed: its patterns are the file's with ky, kx swapped
    rec, _ = build_reconstruction({"data": {"path": str(files["transposed"]),
                                            "preprocessing": {"transpose": True}},
                                   "experiment": {"from_metadata": True}})
    with h5py.File(files["transposed"], "r") as fh:
        first = fh["data"][0]
    assert np.allclose(rec.dataset.read(np.array([0]))[0], first.T)


@pytest.mark.parametrize("case, uncertain", [("noise", "parallax shifts measured to"),
                                             ("focus", "rotation standard error")])
def test_low_confidence_refuses_before_iterating(tmp_path, files, cached, case, uncertain):
    with pytest.raises(GeometryError) as info:
        run_config_file(_config(tmp_path, files[case]))
    message = str(info.value)
    assert "not confident" in message and uncertain in message
    assert "--geometry off" in message and "--force-geometry" in message
    assert not (tmp_path / "out" / "loss.csv").exists()  # nothing iterated


def test_check_mode_reports_without_applying_or_refusing(tmp_path, files, cached, capsys):
    run_config_file(_config(tmp_path, files["noise"], mode="check"))
    assert "confidence LOW" in capsys.readouterr().out
    assert _parameters(tmp_path)["experiment"]["scan_rotation_deg"] == 0.0
    assert read_geometry(tmp_path / "out") is None


def test_force_applies_a_low_confidence_geometry(tmp_path, files, cached, found):
    run_config_file(_config(tmp_path, files["focus"]), overrides=["geometry.force=true"])
    assert read_geometry(tmp_path / "out").confident is False
    assert _parameters(tmp_path)["experiment"]["scan_rotation_deg"] == pytest.approx(
        found["focus"].rotation_deg)


def test_resume_uses_the_recorded_geometry(tmp_path, files, cached, found, capsys):
    path = _config(tmp_path, files["rotated"])
    run_config_file(path)
    first = _parameters(tmp_path)["experiment"]
    assert len(cached) == 1
    # the record says something else than the data would: a resume keeps the record
    record = json.loads((tmp_path / "out" / "geometry.json").read_text())
    record["findings"]["rotation_deg"] = 31.0
    (tmp_path / "out" / "geometry.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="scan_rotation_deg"):  # not the run in the folder
        run_config_file(path, epochs=2)
    record["findings"]["rotation_deg"] = found["rotated"].rotation_deg
    (tmp_path / "out" / "geometry.json").write_text(json.dumps(record))
    result = run_config_file(path, epochs=2)
    assert result.epochs == 2 and len(cached) == 1  # resumed without running the step
    assert "using the geometry recorded" in capsys.readouterr().out
    assert _parameters(tmp_path)["experiment"] == first
    # --overwrite starts afresh and runs the step again
    run_config_file(path, epochs=1, resume="overwrite")
    assert len(cached) == 2


def test_apply_only_what_is_asked(tmp_path, files, cached, found):
    path = _config(tmp_path, files["rotated"], geometry='apply = ["rotation"]')
    run_config_file(path)
    experiment = _parameters(tmp_path)["experiment"]
    assert experiment["scan_rotation_deg"] == pytest.approx(found["rotated"].rotation_deg)
    assert experiment["aberrations"] == {"C10": -300.0}  # the metadata's defocus, kept


def test_geometry_off_removes_a_stale_record(tmp_path, files, cached):
    path = _config(tmp_path, files["rotated"])
    run_config_file(path)
    assert read_geometry(tmp_path / "out") is not None
    run_config_file(path, overrides=['geometry.mode="off"'], resume="overwrite")
    assert read_geometry(tmp_path / "out") is None
    assert _parameters(tmp_path)["experiment"]["scan_rotation_deg"] == 0.0


def test_record_round_trip_and_bad_record(tmp_path, found):
    findings = found["rotated"]
    geometry_module.write_geometry(tmp_path, findings)
    again = read_geometry(tmp_path)
    assert again.rotation_deg == findings.rotation_deg and again.transpose is False
    assert again.checks == findings.checks and again.confident
    assert again.aberrations_A == findings.aberrations_A
    # a check whose value is not finite (C10 of 0: relative error infinite) reads back as NaN
    record = findings.to_record()
    record["checks"][0]["value"] = None
    assert math.isnan(GeometryFindings.from_record(record).checks[0].value)
    (tmp_path / "geometry.json").write_text('{"format": "other"}')
    with pytest.raises(GeometryError, match="ptyframe.geometry"):
        read_geometry(tmp_path)
    with pytest.raises(GeometryError, match="expected a geometry record"):
        GeometryFindings.from_record({"rotation_deg": 1.0})


# ---------------------------------------------------------------------------- command line
@pytest.mark.slow
def test_cli_geometry_command_and_refusal(tmp_path, files, capsys):
    assert main(["geometry", str(files["noise"])]) == 1  # not confident: exit status 1
    out = capsys.readouterr().out
    assert "confidence LOW" in out and "as configuration: [experiment] scan_rotation_deg" in out
    # a refusal in a run is one clear error (no traceback) before iterating
    assert main(["run", str(_config(tmp_path, files["focus"], mode="off")),
                 "--geometry", "auto"]) != 0
    err = capsys.readouterr().err
    assert "not confident" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "loss.csv").exists()
