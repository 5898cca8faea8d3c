"""Metadata -> Experiment: HDF5 attributes, JSON sidecars, Nion exports, overrides, errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from ptyframe.core.experiment import Experiment
from ptyframe.core.physics import wavelength_A
from ptyframe.io.data import DataError
from ptyframe.io.metadata import (
    MetadataError,
    experiment_from_metadata,
    load_experiment,
    positions_from_metadata,
    read_metadata,
    sidecar_path,
)

#: the project's shared validation data (optional), a sibling of the repository
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

DK = 0.05487470276202671  # 1/Å at 200 kV, consistent with MRAD below
MRAD = 1.3762213453811123

#: The keys (and units) of ../shared/data/*.json, with the values of sto_thin.
STO_LIKE = {
    "name": "sto_thin",
    "acc_voltage_kV": 200.0,
    "convergence_semiangle_mrad": 20.0,
    "probe_semiangle_mrad": 20.0,
    "defocus_A": -100.0,
    "C10_A": 100.0,
    "Cs_A": 0.0,
    "scan_step_A": 0.4,
    "scan_shape": [24, 24],
    "scan_rotation_deg": 0.0,
    "rotation_scan_to_detector_deg": 0.0,
    "detector_shape": [64, 64],
    "detector_pixel_size_inv_A": DK,
    "detector_pixel_size_mrad": MRAD,
    "defocus_convention": "defocus_A = -C10_A (abTEM). Positive defocus = underfocus.",
    "timings_s": {"total_s": 70.4},
}

#: A Nion Swift export's sidecar: voltage in V, field of view in nm, defocus in m.
NION = {
    "type": "data_item",
    "data_shape": [6, 8, 16, 16],
    "metadata": {
        "hardware_source": {"high_tension_v": 60000.0, "defocus": 2e-8},
        "scan": {"scan_size": [6, 8], "fov_nm": 4.0},
    },
}


def check_sto(exp: Experiment) -> None:
    assert exp.voltage_kV == 200.0
    assert exp.convergence_angle_mrad == 20.0
    assert exp.detector_pixel_size_inv_A == pytest.approx(DK)
    assert exp.detector_pixel_size_mrad == pytest.approx(MRAD)
    assert exp.aberrations == {"C10": 100.0}
    assert exp.defocus_A == -100.0
    assert exp.scan_shape == (24, 24)
    assert exp.scan_step_A == 0.4
    assert exp.scan_rotation_deg == 0.0


def write_h5_with_attrs(path: Path, meta: dict, positions: np.ndarray | None = None) -> Path:
    """Store metadata the way make_datasets.py does: arrays as arrays, dicts as JSON strings,
    plus the whole record in a ``metadata_json`` attribute."""
    with h5py.File(path, "w") as f:
        f["data"] = np.ones((4, 8, 8), dtype=np.float32)
        if positions is not None:
            f["positions_A"] = positions
        for key, value in meta.items():
            if isinstance(value, dict):
                f.attrs[key] = json.dumps(value)
            elif isinstance(value, list):
                f.attrs[key] = np.asarray(value)
            else:
                f.attrs[key] = value
        f.attrs["metadata_json"] = json.dumps(meta)
    return path


# ---------------------------------------------------------------------------- reading
def test_experiment_from_sto_like_dict():
    check_sto(experiment_from_metadata(STO_LIKE))


def test_read_metadata_decodes_hdf5_attributes(tmp_path):
    path = write_h5_with_attrs(tmp_path / "d.h5", STO_LIKE)
    with h5py.File(path, "a") as f:
        f.attrs["note"] = np.bytes_(b"bytes value")
        f.attrs["labels"] = np.array([b"a", b"b"])
        f.attrs["broken_json"] = "[not json"
    meta = read_metadata(path)
    assert meta["scan_shape"] == [24, 24]
    assert isinstance(meta["acc_voltage_kV"], float)
    assert meta["timings_s"] == {"total_s": 70.4}
    assert meta["note"] == "bytes value"
    assert meta["labels"] == ["a", "b"]
    assert meta["broken_json"] == "[not json"
    assert "metadata_json" not in meta
    json.dumps(meta)  # plain Python types only
    check_sto(load_experiment(path))


def test_read_metadata_unpacks_metadata_json_only(tmp_path):
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f.attrs["metadata_json"] = json.dumps(STO_LIKE)
    check_sto(load_experiment(path))


def test_sidecar_wins_and_warns(tmp_path):
    path = write_h5_with_attrs(tmp_path / "d.h5", STO_LIKE)
    assert sidecar_path(path) == tmp_path / "d.json"
    sidecar_path(path).write_text(json.dumps({"scan_step_A": 0.5, "acc_voltage_kV": 200.0}))
    with pytest.warns(UserWarning, match=r"overrides the file's values of \['scan_step_A'\]"):
        meta = read_metadata(path)
    assert meta["scan_step_A"] == 0.5
    sidecar_path(path).write_text(json.dumps(STO_LIKE))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # identical values: no warning
        read_metadata(path)


def test_sidecar_of_npy(tmp_path):
    np.save(tmp_path / "d.npy", np.ones((4, 8, 8)))
    assert read_metadata(tmp_path / "d.npy") == {}
    (tmp_path / "d.json").write_text(json.dumps(STO_LIKE))
    check_sto(load_experiment(tmp_path / "d.npy"))
    check_sto(load_experiment(tmp_path / "d.json"))


def test_real_sidecar_if_present():
    path = SHARED_DATA / "sto_thin.json"
    if not path.is_file():
        pytest.skip("shared validation data not present")
    check_sto(experiment_from_metadata(read_metadata(path)))


# ---------------------------------------------------------------------------- Nion
def test_nion_needs_detector_calibration(tmp_path):
    np.save(tmp_path / "scan.npy", np.ones((6, 8, 16, 16), dtype=np.float32))
    (tmp_path / "scan.json").write_text(json.dumps(NION))
    with pytest.raises(MetadataError, match="detector_pixel_size_inv_A=") as info:
        load_experiment(tmp_path / "scan.npy", convergence_angle_mrad=30.0)
    assert "scan.npy" in str(info.value)
    with pytest.raises(MetadataError, match=r"convergence_angle_mrad: not found.*"
                                            r"convergence_angle_mrad=\.\.\."):
        load_experiment(tmp_path / "scan.npy", detector_pixel_size_mrad=1.0)
    exp = load_experiment(tmp_path / "scan.npy", detector_pixel_size_mrad=1.0,
                          convergence_angle_mrad=30.0)
    assert exp.voltage_kV == 60.0
    assert exp.scan_shape == (6, 8)
    assert exp.scan_step_A == pytest.approx(10 * 4.0 / 8)  # fov spans the longer axis, nm -> Å
    assert exp.aberrations == {"C10": pytest.approx(-200.0)}  # defocus 20 nm = -C10
    assert exp.defocus_A == pytest.approx(200.0)
    assert exp.dk_inv_A == pytest.approx(1e-3 / wavelength_A(60.0))


def test_nion_high_tension_in_kv_is_refused():
    meta = {"metadata": {"hardware_source": {"high_tension_v": 60}}}
    with pytest.raises(MetadataError, match=r"high_tension_v: expected the high tension in "
                                            r"volts.*voltage_kV="):
        experiment_from_metadata(meta, convergence_angle_mrad=20, detector_pixel_size_mrad=1)


def test_nion_defocus_not_in_metres_is_refused():
    meta = {"metadata": {"hardware_source": {"high_tension_v": 60000, "defocus": -150.0}}}
    with pytest.raises(MetadataError, match=r"defocus: expected a Nion defocus in metres.*"
                                            r"defocus_A="):
        experiment_from_metadata(meta, convergence_angle_mrad=20, detector_pixel_size_mrad=1)
    exp = experiment_from_metadata(meta, convergence_angle_mrad=20, detector_pixel_size_mrad=1,
                                   defocus_A=-150.0)
    assert exp.aberrations == {"C10": 150.0}


# ---------------------------------------------------------------------------- overrides
def test_overrides_win():
    exp = experiment_from_metadata(STO_LIKE, scan_step_A=0.3, scan_shape=(2, 3),
                                   aberrations={"C30": 1e4}, defocus_A=50.0)
    assert exp.scan_step_A == 0.3
    assert exp.scan_shape == (2, 3)
    assert exp.aberrations == {"C10": -50.0, "C30": 1e4}
    # overriding one detector pixel size drops both metadata values (no false conflict)
    other = experiment_from_metadata(STO_LIKE, detector_pixel_size_inv_A=0.03)
    assert other.detector_pixel_size_inv_A == 0.03
    assert other.detector_pixel_size_mrad is None


def test_override_resolves_contradiction():
    meta = dict(STO_LIKE, defocus_A=-90.0)
    with pytest.raises(MetadataError, match="defocus_A: contradictory metadata"):
        experiment_from_metadata(meta)
    assert experiment_from_metadata(meta, defocus_A=-90.0).aberrations == {"C10": 90.0}


def test_unknown_override():
    with pytest.raises(MetadataError, match=r"overrides: unknown keys \['voltage'\]"):
        experiment_from_metadata(STO_LIKE, voltage=200)


def test_aberrations_from_named_keys():
    meta = dict(STO_LIKE, Cs_A=1.2e7, C12a_A=15.0)
    assert experiment_from_metadata(meta).aberrations == {"C10": 100.0, "C12a": 15.0,
                                                          "C30": 1.2e7}
    with pytest.raises(MetadataError, match=r"aberrations\['C30'\]: contradictory"):
        experiment_from_metadata(dict(meta, C30_A=1.0))


# ---------------------------------------------------------------------------- bad metadata
def test_missing_voltage_names_the_override():
    meta = {k: v for k, v in STO_LIKE.items() if k != "acc_voltage_kV"}
    with pytest.raises(MetadataError, match=r"voltage_kV: not found.*acc_voltage_kV.*"
                                            r"voltage_kV=\.\.\."):
        experiment_from_metadata(meta)
    assert experiment_from_metadata(meta, voltage_kV=200).voltage_kV == 200.0


def test_defocus_and_c10_disagree():
    with pytest.raises(MetadataError, match=r"defocus_A: contradictory metadata, "
                                            r"defocus_A=100.0 \(C10 in Å: -100.0\) but "
                                            r"C10_A=100.0 \(C10 in Å: 100.0\)"):
        experiment_from_metadata(dict(STO_LIKE, defocus_A=100.0))


def test_rotation_keys_disagree():
    with pytest.raises(MetadataError, match=r"scan_rotation_deg: contradictory metadata.*"
                                            r"rotation_scan_to_detector_deg=5.0"):
        experiment_from_metadata(dict(STO_LIKE, rotation_scan_to_detector_deg=5.0))


def test_inconsistent_calibration_is_surfaced(tmp_path):
    meta = dict(STO_LIKE, detector_pixel_size_mrad=2 * MRAD)
    with pytest.raises(MetadataError, match=r"inconsistent calibration: "
                                            r"detector_pixel_size_mrad=2\.75") as info:
        experiment_from_metadata(meta)
    assert "detector_pixel_size_inv_A" in str(info.value)
    assert isinstance(info.value, DataError) and isinstance(info.value, ValueError)
    path = write_h5_with_attrs(tmp_path / "bad.h5", meta)
    with pytest.raises(MetadataError, match=r"bad\.h5.*inconsistent calibration"):
        load_experiment(path)


@pytest.mark.parametrize("key, value, message", [
    ("acc_voltage_kV", "fast", "acc_voltage_kV: expected a number, found 'fast'"),
    ("acc_voltage_kV", float("nan"), "acc_voltage_kV: expected a finite number"),
    ("scan_shape", [24], r"scan_shape: expected two positive integers \(sy, sx\), found \[24\]"),
    ("scan_step_A", -0.4, "scan_step_A: expected a positive step"),
    ("convergence_semiangle_mrad", 0.0, "convergence_angle_mrad: expected a positive"),
])
def test_malformed_values(key, value, message):
    meta = {k: v for k, v in STO_LIKE.items() if k != "probe_semiangle_mrad"}
    with pytest.raises(MetadataError, match=message):
        experiment_from_metadata(dict(meta, **{key: value}))


def test_bad_sidecar(tmp_path):
    np.save(tmp_path / "d.npy", np.ones((4, 8, 8)))
    (tmp_path / "d.json").write_text("{not json")
    with pytest.raises(MetadataError, match=r"d\.json.*expected a JSON object"):
        read_metadata(tmp_path / "d.npy")
    (tmp_path / "d.json").write_text("[1, 2]")
    with pytest.raises(MetadataError, match="top level, found list"):
        read_metadata(tmp_path / "d.npy")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.h5"):
        read_metadata(tmp_path / "absent.h5")
    with pytest.raises(FileNotFoundError, match="absent.h5"):
        positions_from_metadata(tmp_path / "absent.h5")


# ---------------------------------------------------------------------------- positions
def test_positions(tmp_path):
    pos = np.random.default_rng(0).uniform(0, 10, size=(4, 2))
    path = write_h5_with_attrs(tmp_path / "d.h5", STO_LIKE, positions=pos)
    got = positions_from_metadata(path, expected_count=4)
    np.testing.assert_allclose(got, pos)
    with pytest.raises(MetadataError, match="positions_A.*expected 5 positions.*found 4"):
        positions_from_metadata(path, expected_count=5)
    assert positions_from_metadata(write_h5_with_attrs(tmp_path / "e.h5", STO_LIKE)) is None
    np.save(tmp_path / "n.npy", np.ones((4, 8, 8)))
    assert positions_from_metadata(tmp_path / "n.npy") is None
    (tmp_path / "n.json").write_text(json.dumps({"positions_A": pos.tolist()}))
    np.testing.assert_allclose(positions_from_metadata(tmp_path / "n.npy"), pos)


def test_bad_positions(tmp_path):
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f["positions_A"] = np.zeros((4, 3))
    with pytest.raises(MetadataError, match=r"positions_A .*expected finite \(N, 2\).*"
                                            r"\(4, 3\)"):
        positions_from_metadata(path)


def test_contradictory_voltage_shows_both_units():
    meta = dict(STO_LIKE, metadata={"hardware_source": {"high_tension_v": 300000.0}})
    with pytest.raises(MetadataError, match=r"voltage_kV: contradictory metadata, "
                                            r"acc_voltage_kV=200.0 \(kV: 200.0\) but "
                                            r"metadata.hardware_source.high_tension_v=300000.0 "
                                            r"\(kV: 300.0\)"):
        experiment_from_metadata(meta)
    assert experiment_from_metadata(meta, voltage_kV=200).voltage_kV == 200.0
