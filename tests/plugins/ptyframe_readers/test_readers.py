"""Readers: files written by h5py (any suffix, Dectris layout, original EMD), emdfile
(py4DSTEM / EMD 1.0) and rosettasciio (.hspy), their calibrations, reader choice, and the
refusal of 4D arrays in a suspicious axis order."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import attrs
import h5py
import numpy as np
import pytest

from ptyframe import load_registry
from ptyframe.components import FileMetadata, Reader
from ptyframe.io.data import ArraySource, DataError, Dataset
from ptyframe.io.metadata import load_experiment, read_file_metadata
from ptyframe.io.readers import select_reader

HAS_RSCIIO = importlib.util.find_spec("rsciio") is not None
HAS_EMDFILE = importlib.util.find_spec("emdfile") is not None
needs_rsciio = pytest.mark.skipif(not HAS_RSCIIO, reason="rosettasciio is not installed "
                                  "(pip install 'ptyframe[formats]')")
needs_emdfile = pytest.mark.skipif(not HAS_EMDFILE, reason="emdfile is not installed")

SY, SX, K = 3, 4, 16


@pytest.fixture
def four() -> np.ndarray:
    return np.random.default_rng(1).poisson(4.0, (SY, SX, K, K)).astype(np.float32)


def chosen(path: Path) -> str:
    return select_reader(path).name


# ------------------------------------------------------------------------------ plain HDF5
@pytest.mark.parametrize("suffix", [".h5", ".hdf5", ".dat", ".hspy", ".nxs", ""])
def test_hdf5_whatever_the_suffix(tmp_path, four, suffix):
    path = tmp_path / f"scan{suffix}"
    with h5py.File(path, "w") as f:
        f["entry/instrument/patterns"] = four
        f["entry/positions"] = np.zeros((SY * SX, 2))
        f.attrs["acc_voltage_kV"] = 300.0
    ds = Dataset.from_file(path)
    assert ds.reader.name == "hdf5" and ds.scan_shape == (SY, SX)
    np.testing.assert_array_equal(ds.read([11, 0]), four.reshape(-1, K, K)[[11, 0]])
    meta = read_file_metadata(path)
    assert meta.values["acc_voltage_kV"] == 300.0
    assert meta.origins["acc_voltage_kV"] == "root attribute 'acc_voltage_kV'"


def test_sidecar_wins_and_says_so(tmp_path, four):
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f["data"] = four
        f.attrs["acc_voltage_kV"] = 300.0
    (tmp_path / "scan.json").write_text('{"acc_voltage_kV": 200.0, "scan_step_A": 0.5}')
    with pytest.warns(UserWarning, match="acc_voltage_kV"):
        meta = read_file_metadata(path)
    assert meta.values["acc_voltage_kV"] == 200.0
    assert meta.origins["acc_voltage_kV"] == "sidecar scan.json"


# ------------------------------------------------------------------------------ axis order
@pytest.mark.parametrize(("order", "hint"), [((2, 3, 0, 1), "moveaxis"),
                                             ((0, 2, 1, 3), r"transpose\(0, 2, 1, 3\)")])
def test_suspicious_axis_order_is_refused(tmp_path, order, hint):
    good = np.ones((24, 24, 16, 16), dtype=np.float32)[:5, :7]  # (5, 7, 16, 16)
    bad = np.ascontiguousarray(np.transpose(good, order))
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(DataError, match=rf"axis order \(sy, sx, ky, kx\).*{hint}"):
        Dataset.from_file(tmp_path / "bad.npy")
    with pytest.raises(DataError, match="not square"):
        Dataset.from_array(bad)
    assert Dataset.from_array(good).scan_shape == (5, 7)


# ------------------------------------------------------------------------------ Dectris
def write_dectris(folder: Path, frames: np.ndarray, per_chunk: int) -> Path:
    master = folder / "scan_master.h5"
    with h5py.File(master, "w") as f:
        det = f.create_group("entry/instrument/detector")
        det["x_pixel_size"] = 100e-6  # m
        det["detector_distance"] = 0.25  # m -> 0.4 mrad per pixel
        det["beam_center_x"] = 7.5
        det["beam_center_y"] = 8.0
        det["detectorSpecific/photon_energy"] = 300000.0  # eV: the arina writes the HT here
        det["detectorSpecific/nimages"] = len(frames)
        for i, start in enumerate(range(0, len(frames), per_chunk), start=1):
            name = f"scan_data_{i:06d}.h5"
            with h5py.File(folder / name, "w") as g:
                g.create_dataset("entry/data/data", data=frames[start:start + per_chunk],
                                 chunks=(1, K, K), compression="gzip")
            f[f"entry/data/data_{i:06d}"] = h5py.ExternalLink(name, "entry/data/data")
    return master


def test_dectris_master_joins_its_chunks(tmp_path, four):
    frames = four.reshape(-1, K, K).astype(np.uint16)
    master = write_dectris(tmp_path, frames, per_chunk=5)  # 12 frames in chunks 5, 5, 2
    assert chosen(master) == "dectris"
    ds = Dataset.from_file(master, scan_shape=(SY, SX), chunk_bytes=3 * K * K * 16)
    assert len(ds) == SY * SX and ds.scan_shape == (SY, SX)
    for idx in ([0, 4, 5, 11], [9, 3, 10], [6], list(range(12))):
        np.testing.assert_array_equal(ds.read(idx), frames[idx].astype(np.float32))
    np.testing.assert_array_equal(ds.load_all(), frames.astype(np.float32))
    meta = read_file_metadata(master)
    assert meta.values["detector_pixel_size_mrad"] == pytest.approx(0.4)
    assert meta.values["voltage_kV"] == pytest.approx(300.0)
    assert meta.values["beam_center_yx_px"] == [8.0, 7.5]
    assert "detector_distance" in meta.origins["detector_pixel_size_mrad"]
    exp = load_experiment(master, convergence_angle_mrad=20.0, scan_shape=(SY, SX))
    assert exp.detector_pixel_size_mrad == pytest.approx(0.4) and exp.voltage_kV == 300.0


def test_dectris_missing_chunk_names_it(tmp_path, four):
    master = write_dectris(tmp_path, four.reshape(-1, K, K), per_chunk=6)
    (tmp_path / "scan_data_000002.h5").unlink()
    with pytest.raises(DataError, match=r"data_000002.*scan_data_000002\.h5"):
        Dataset.from_file(master)


# ------------------------------------------------------------------------------ EMD 1.0
def test_original_emd_layout_with_dims(tmp_path, four):
    """The Berkeley EMD 1.0 layout (dim1..dim4 vectors with units) written with h5py."""
    path = tmp_path / "scan.emd"
    with h5py.File(path, "w") as f:
        f.attrs["version_major"] = 1
        f.attrs["version_minor"] = 0
        g = f.create_group("data/datacube")
        g.attrs["emd_group_type"] = 1
        g["data"] = four
        for i, (n, step, units) in enumerate([(SY, 0.05, "[n_m]"), (SX, 0.05, "[n_m]"),
                                              (K, 0.25, "[1/n_m]"), (K, 0.25, "[1/n_m]")],
                                             start=1):
            g[f"dim{i}"] = np.arange(n) * step
            g[f"dim{i}"].attrs["units"] = units
    assert chosen(path) == "emd"
    meta = read_file_metadata(path)
    assert meta.values["scan_step_A"] == pytest.approx(0.5)
    assert meta.values["detector_pixel_size_inv_A"] == pytest.approx(0.025)
    assert meta.values["scan_shape"] == [SY, SX]
    assert "dim1" in meta.origins["scan_step_A"]
    np.testing.assert_array_equal(Dataset.from_file(path).load_all(),
                                  four.reshape(-1, K, K))


@needs_emdfile
def test_py4dstem_file_written_by_emdfile(tmp_path, four):
    import emdfile

    arr = emdfile.Array(data=four, name="datacube", units="counts",
                        dims=[np.arange(SY) * 1.0, np.arange(SX) * 1.0,
                              np.arange(K) * 1.0, np.arange(K) * 1.0],
                        dim_units=["pixels"] * 4, dim_names=["Rx", "Ry", "Qx", "Qy"])
    cal = emdfile.Metadata(name="calibration")
    cal["Q_pixel_size"], cal["Q_pixel_units"] = 0.02, "A^-1"
    cal["R_pixel_size"], cal["R_pixel_units"] = 0.06, "nm"
    cal["QR_rotation_degrees"], cal["QR_flip"] = 4.0, False
    arr.metadata = cal
    path = tmp_path / "py4dstem.h5"
    emdfile.save(str(path), arr, mode="o")
    assert chosen(path) == "emd"
    meta = read_file_metadata(path)
    assert meta.values["detector_pixel_size_inv_A"] == pytest.approx(0.02)
    assert meta.values["scan_step_A"] == pytest.approx(0.6)
    assert meta.values["py4dstem_QR_rotation_degrees"] == 4.0
    assert "Q_pixel_size" in meta.origins["detector_pixel_size_inv_A"]
    exp = load_experiment(path, voltage_kV=300.0, convergence_angle_mrad=20.0)
    assert exp.detector_pixel_size_inv_A == pytest.approx(0.02)
    assert exp.scan_shape == (SY, SX) and exp.scan_step_A == pytest.approx(0.6)
    np.testing.assert_array_equal(Dataset.from_file(path).read([7]), four.reshape(-1, K, K)[[7]])


# ------------------------------------------------------------------------------ rosettasciio
def write_hspy(path: Path, data: np.ndarray, *, scan_step_A: float, dk_inv_A: float,
               kV: float, alpha_mrad: float, nav_first: bool = True) -> Path:
    from rsciio.hspy import file_writer

    nav = [dict(name=n, scale=scan_step_A / 10, offset=0.0, units="nm", size=s, navigate=True)
           for n, s in zip("yx", data.shape[:2], strict=True)]
    sig = [dict(name=n, scale=dk_inv_A * 10, offset=0.0, units="1/nm", size=s, navigate=False)
           for n, s in zip(("ky", "kx"), data.shape[2:], strict=True)]
    signal = dict(data=data, axes=nav + sig if nav_first else sig + nav,
                  metadata={"General": {"title": "scan"}, "Signal": {"signal_type": ""},
                            "Acquisition_instrument": {"TEM": {"beam_energy": kV,
                                                               "convergence_angle": alpha_mrad}}},
                  original_metadata={}, tmp_parameters={}, attributes={"_lazy": False},
                  learning_results={}, models={},
                  package_info={"name": "ptyframe-tests", "version": "0"})
    file_writer(str(path), signal, show_progressbar=False)
    return path


@needs_rsciio
def test_hspy_calibrations(tmp_path, four):
    path = write_hspy(tmp_path / "scan.hspy", four, scan_step_A=0.4, dk_inv_A=0.03, kV=200.0,
                      alpha_mrad=21.0)
    assert chosen(path) == "hspy"
    renamed = path.rename(tmp_path / "scan.h5")
    assert chosen(renamed) == "hspy"  # HDF5 with HyperSpy's marker, whatever the suffix
    exp = load_experiment(renamed)
    assert exp.voltage_kV == 200.0 and exp.convergence_angle_mrad == 21.0
    assert exp.detector_pixel_size_inv_A == pytest.approx(0.03)
    assert exp.scan_step_A == pytest.approx(0.4) and exp.scan_shape == (SY, SX)
    origins = read_file_metadata(renamed).origins
    assert "beam_energy" in origins["voltage_kV"] and "'1/nm'" in origins[
        "detector_pixel_size_inv_A"]
    ds = Dataset.from_file(renamed, chunk_bytes=K * K * 16 * 5)
    np.testing.assert_array_equal(ds.read([11, 2, 5]), four.reshape(-1, K, K)[[11, 2, 5]])
    np.testing.assert_array_equal(ds.load_all(), four.reshape(-1, K, K))


@needs_rsciio
def test_hspy_with_detector_axes_first_is_refused(tmp_path):
    data = np.ones((K, K, SY, SX), dtype=np.float32)
    path = write_hspy(tmp_path / "bad.hspy", data, scan_step_A=0.4, dk_inv_A=0.03, kV=200.0,
                      alpha_mrad=20.0, nav_first=False)
    with pytest.raises(DataError, match=r"scan \(navigation\) axes before the detector"):
        Dataset.from_file(path)


@needs_rsciio
def test_reconstruction_from_hspy_equals_h5(tmp_path):
    """End to end: the .hspy copy of a scan file gives the same experiment and the same
    reconstruction as the .h5 it was made from."""
    from ptyframe.apps.config import run_config
    from ptyframe.testing.simulate import simulate_dataset, write_scan_file

    prop = load_registry().create("propagator", {"type": "multislice"})
    sim = simulate_dataset(prop, window=16, scan_shape=(4, 4), step_A=0.8,
                           dose_per_pattern=1e5, seed=2)
    h5 = write_scan_file(sim, tmp_path / "scan.h5")
    exp = sim.experiment
    write_hspy(tmp_path / "scan.hspy", sim.patterns.reshape(4, 4, 16, 16),
               scan_step_A=float(exp.scan_step_A), dk_inv_A=exp.dk_inv_A, kV=exp.voltage_kV,
               alpha_mrad=exp.convergence_angle_mrad)
    results = {}
    for name in ("scan.h5", "scan.hspy"):
        config = {"epochs": 2, "progress": False, "data": {"path": name},
                  "experiment": {"from_metadata": True, "defocus_A": exp.defocus_A},
                  "device": {"kind": "cpu", "precision": "double"}}
        results[name] = run_config(config, base_dir=tmp_path)
    a, b = results["scan.h5"], results["scan.hspy"]
    assert a.loss == pytest.approx(b.loss, rel=1e-12)
    np.testing.assert_allclose(b.object, a.object, rtol=0, atol=1e-12)
    assert Dataset.from_file(h5).reader.name == "hdf5"


def test_rosetta_reader_without_rsciio_says_how_to_install(monkeypatch, tmp_path):
    from ptyframe_readers.rosetta import MerlinReader

    real = importlib.import_module

    def no_rsciio(name, *args, **kwargs):
        if name.startswith("rsciio"):
            raise ImportError("No module named 'rsciio'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_rsciio)
    (tmp_path / "scan.mib").write_bytes(b"\0" * 64)
    assert chosen(tmp_path / "scan.mib") == "merlin"
    with pytest.raises(DataError, match=r"merlin.*rosettasciio.*ptyframe\[formats\]"):
        MerlinReader().open(tmp_path / "scan.mib")


# ------------------------------------------------------------------------------ the family
def test_a_lab_adds_its_own_reader(tmp_path, four):
    """A Reader registered like any component is chosen by its sniff score."""

    @attrs.frozen
    class LabReader(Reader):
        """Raw little-endian float32 with a 3-integer header (sy, sx, k)."""

        name = "lab_raw"
        suffixes = (".labraw",)

        def open(self, path):
            head = np.fromfile(path, dtype="<i4", count=3)
            body = np.memmap(path, dtype="<f4", mode="r", offset=12)
            return ArraySource(body.reshape(*head[:2], head[2], head[2]), repr(str(path)))

        def metadata(self, path):
            return FileMetadata({"voltage_kV": 60.0}, {"voltage_kV": "lab convention"})

    registry = load_registry()
    registry.register(LabReader)
    path = tmp_path / "scan.labraw"
    with open(path, "wb") as fh:
        np.array([SY, SX, K], dtype="<i4").tofile(fh)
        four.astype("<f4").tofile(fh)
    assert select_reader(path, registry=registry).name == "lab_raw"
    ds = Dataset.from_file(path, registry=registry)
    np.testing.assert_array_equal(ds.load_all(), four.reshape(-1, K, K))
    assert read_file_metadata(path, registry=registry).origins["voltage_kV"] == "lab convention"


def test_reader_by_name_and_bad_dataset_setting(tmp_path, four):
    np.save(tmp_path / "scan.npy", four)
    assert Dataset.from_file(tmp_path / "scan.npy", reader="npy").reader.name == "npy"
    with pytest.raises(DataError, match="'npy' reader takes no dataset name"):
        Dataset.from_file(tmp_path / "scan.npy", dataset_name="data")
    with pytest.raises(ValueError, match="dataset"):
        load_registry().create("reader", {"type": "hdf5", "dataset": 3})


def write_mrc(path: Path, frames: np.ndarray) -> Path:
    """A minimal MRC2014 file: 1024-byte header (nx, ny, nz, mode 2 = float32, grid and cell
    sizes, axis order, 'MAP ' stamp, little-endian machine stamp) then the frames."""
    nz, ny, nx = frames.shape
    head = np.zeros(256, dtype="<i4")
    head[[0, 1, 2, 3, 7, 8, 9]] = [nx, ny, nz, 2, nx, ny, nz]
    head.view("<f4")[10:13] = [nx, ny, nz]
    head[16:19] = [1, 2, 3]
    head[52] = np.frombuffer(b"MAP ", dtype="<i4")[0]
    head[53] = 0x4144
    with open(path, "wb") as fh:
        fh.write(head.tobytes())
        fh.write(frames.astype("<f4").tobytes())
    return path


@needs_rsciio
def test_mrc_stack_with_navigation_shape(tmp_path, four):
    frames = four.reshape(-1, K, K)
    path = write_mrc(tmp_path / "scan.mrc", frames)
    assert chosen(path) == "mrc"
    ds = Dataset.from_file(path, reader={"type": "mrc", "navigation_shape": [SY, SX]})
    assert ds.scan_shape == (SY, SX)
    np.testing.assert_array_equal(ds.read([0, 5, 11]), frames[[0, 5, 11]])
    np.testing.assert_array_equal(ds.load_all(), frames)
    meta = read_file_metadata(path, reader={"type": "mrc", "navigation_shape": [SY, SX]})
    assert meta.values["scan_shape"] == [SY, SX]
    # real-space (nm) units on the detector axes are not taken for a detector calibration
    assert "detector_pixel_size_inv_A" not in meta.values
    with pytest.raises(ValueError, match=r"navigation_shape: expected two positive"):
        load_registry().create("reader", {"type": "mrc", "navigation_shape": [3]})
