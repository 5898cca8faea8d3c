"""Dataset: lazy loading (HDF5, .npy 3D/4D, Nion .npy + JSON), preprocessing, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from ptyframe.io.data import DataError, Dataset, Preprocessing

#: the project's shared validation data (optional), a sibling of the repository
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

SY, SX, K = 3, 4, 16
N = SY * SX


@pytest.fixture
def patterns() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.poisson(5.0, size=(N, K, K)).astype(np.float32)


def write_h5(path: Path, array: np.ndarray, name: str = "data", **kwargs) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset(name, data=array, **kwargs)
    return path


@pytest.fixture(params=["h5_3d", "h5_4d", "h5_chunked", "npy_3d", "npy_4d", "npy_4d_fortran",
                        "nion", "array_3d", "array_4d"])
def source(request, tmp_path, patterns) -> tuple[Dataset, np.ndarray, tuple[int, int] | None]:
    """(dataset, reference (N, K, K) array, expected scan shape) for every kind of input."""
    four = patterns.reshape(SY, SX, K, K)
    kind = request.param
    if kind == "h5_3d":
        ds = Dataset.from_file(write_h5(tmp_path / "d.h5", patterns))
        return ds, patterns, None
    if kind == "h5_4d":
        return Dataset.from_file(write_h5(tmp_path / "d.hdf5", four)), patterns, (SY, SX)
    if kind == "h5_chunked":
        path = write_h5(tmp_path / "d.h5", four, chunks=(1, 2, K, K), compression="gzip")
        return Dataset.from_file(path, chunk_bytes=3 * K * K * 16), patterns, (SY, SX)
    if kind == "npy_3d":
        np.save(tmp_path / "d.npy", patterns)
        return Dataset.from_file(tmp_path / "d.npy", scan_shape=(SY, SX)), patterns, (SY, SX)
    if kind == "npy_4d":
        np.save(tmp_path / "d.npy", four)
        return Dataset.from_file(tmp_path / "d.npy"), patterns, (SY, SX)
    if kind == "npy_4d_fortran":
        np.save(tmp_path / "d.npy", np.asfortranarray(four))
        return Dataset.from_file(tmp_path / "d.npy"), patterns, (SY, SX)
    if kind == "nion":
        np.save(tmp_path / "nion.npy", four.astype(np.uint16))
        meta = {"metadata": {"hardware_source": {"high_tension_v": 60000.0},
                             "scan": {"scan_size": [SY, SX], "fov_nm": 2.0}}}
        (tmp_path / "nion.json").write_text(json.dumps(meta))
        return Dataset.from_file(tmp_path / "nion.npy"), patterns, (SY, SX)
    if kind == "array_3d":
        return Dataset.from_array(patterns), patterns, None
    return Dataset.from_array(four), patterns, (SY, SX)


def test_shapes_and_reads(source):
    ds, ref, scan_shape = source
    assert len(ds) == N
    assert ds.shape == (N, K, K)
    assert ds.pattern_shape == (K, K)
    assert ds.raw_pattern_shape == (K, K)
    assert ds.scan_shape == scan_shape
    for idx in ([5, 0, 11, 3], [7], [2, 2, 9, 1, 2], list(range(N))[::-1], [0, 1, 2, 3],
                [0, 11]):
        got = ds.read(np.array(idx))
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, ref[idx])
    assert ds.read([]).shape == (0, K, K)
    full = ds.load_all()
    assert full.dtype == np.float32
    np.testing.assert_array_equal(full, ref)
    assert ds.load_all(dtype=np.float64).dtype == np.float64
    np.testing.assert_allclose(ds.mean_pattern(), ref.mean(axis=0, dtype=np.float64))
    assert ds.total_counts_mean() == pytest.approx(ref.sum(axis=(1, 2)).mean())


def test_hdf5_is_not_kept_open(tmp_path, patterns):
    path = write_h5(tmp_path / "d.h5", patterns)
    ds = Dataset.from_file(path)
    ds.read([3, 1])
    ds.mean_pattern()
    with h5py.File(path, "r+") as f:  # fails while another handle holds the file read-only
        f["data"][0] = 0.0
    np.testing.assert_array_equal(ds.read([0])[0], np.zeros((K, K)))


def test_read_does_not_alias_the_source(patterns):
    ds = Dataset.from_array(patterns)
    ds.load_all()[:] = -1
    ds.read([0])[:] = -1
    assert patterns.min() >= 0


def test_mean_pattern_chunked_matches(tmp_path, patterns):
    path = write_h5(tmp_path / "d.h5", patterns)
    one_pattern = Dataset.from_file(path, chunk_bytes=1)
    np.testing.assert_allclose(one_pattern.mean_pattern(), patterns.mean(axis=0))
    np.testing.assert_array_equal(one_pattern.load_all(), patterns)


# ---------------------------------------------------------------------------- preprocessing
def reference_preprocess(a: np.ndarray, p: Preprocessing) -> np.ndarray:
    """Straightforward numpy version of the documented order, one step per line."""
    out = a.astype(np.float64)
    if p.clip_negative:
        out = np.clip(out, 0, None)
    if p.flip_ky:
        out = np.flip(out, axis=1)
    if p.flip_kx:
        out = np.flip(out, axis=2)
    if p.transpose:
        out = out.transpose(0, 2, 1)
    dy, dx = p.shift_px
    out = np.roll(out, (dy, dx), axis=(1, 2))
    if dy > 0:
        out[:, :dy] = 0
    elif dy < 0:
        out[:, dy:] = 0
    if dx > 0:
        out[:, :, :dx] = 0
    elif dx < 0:
        out[:, :, dx:] = 0
    b = p.bin
    n = out.shape[1] // b
    binned = np.zeros((out.shape[0], n, n))
    for i in range(b):
        for j in range(b):
            binned += out[:, i::b, j::b]
    out = binned * p.multiplier
    return np.pad(out, ((0, 0), (p.pad, p.pad), (p.pad, p.pad)))


@pytest.mark.parametrize("prep", [
    Preprocessing(pad=3),
    Preprocessing(bin=2),
    Preprocessing(bin=4, pad=2),
    Preprocessing(flip_ky=True),
    Preprocessing(flip_kx=True),
    Preprocessing(transpose=True),
    Preprocessing(shift_px=(2, -3)),
    Preprocessing(shift_px=(-5, 1)),
    Preprocessing(multiplier=2.5),
    Preprocessing(flip_ky=True, transpose=True, shift_px=(1, 3), bin=2, multiplier=0.5, pad=2),
])
def test_preprocessing_matches_numpy(tmp_path, patterns, prep):
    rng = np.random.default_rng(1)
    data = patterns * rng.uniform(0.5, 1.5, size=patterns.shape).astype(np.float32)
    ds = Dataset.from_file(write_h5(tmp_path / "d.h5", data), preprocessing=prep)
    ref = reference_preprocess(data, prep)
    assert ds.shape == ref.shape
    assert ds.pattern_shape == ref.shape[1:]
    idx = [9, 2, 4, 2]
    np.testing.assert_allclose(ds.read(idx), ref[idx], rtol=1e-6)
    np.testing.assert_allclose(ds.load_all(), ref, rtol=1e-6)
    np.testing.assert_allclose(ds.mean_pattern(), ref.mean(axis=0), rtol=1e-6)


def test_shift_direction_and_zero_fill():
    a = np.zeros((1, K, K), dtype=np.float32)
    a[0, 5, 7] = 1.0
    a[0, 0, :] = 2.0  # top row: shifted down by 2 it lands on row 2; row 0-1 are zero
    a[0, :, K - 1] = 3.0  # right column: shifted right it leaves the pattern entirely
    out = Preprocessing(shift_px=(2, 1)).apply(a)[0]
    assert out[7, 8] == 1.0
    assert np.all(out[:2] == 0) and np.all(out[:, :1] == 0)
    assert np.all(out[2, 1:] == 2.0)
    assert not np.any(out == 3.0)  # the right column left the pattern, did not wrap
    assert out.sum() == pytest.approx(1.0 + 2.0 * (K - 1))  # nothing wrapped around
    back = Preprocessing(shift_px=(-2, -1)).apply(a)[0]
    assert back[3, 6] == 1.0
    assert np.all(back[-2:] == 0) and np.all(back[:, -1:] == 0)


def test_clip_negative_and_with_preprocessing(patterns):
    data = patterns.copy()
    data[4, 3, 3] = -2.0
    ds = Dataset.from_array(data, preprocessing=Preprocessing(clip_negative=True))
    assert ds.read([4])[0, 3, 3] == 0.0
    binned = ds.with_preprocessing(Preprocessing(clip_negative=True, bin=2))
    assert binned.shape == (N, K // 2, K // 2)
    assert binned.read([4]).sum() == pytest.approx(np.clip(data[4], 0, None).sum())


def test_centered_to_fft_order():
    a = np.zeros((2, 8, 8))
    a[:, 4, 4] = 1.0
    out = Dataset.centered_to_fft_order(a)
    assert out[0, 0, 0] == 1.0 and out[1, 0, 0] == 1.0
    np.testing.assert_array_equal(out, np.fft.ifftshift(a, axes=(-2, -1)))


def test_real_dataset_if_present():
    path = SHARED_DATA / "sto_thin.h5"
    if not path.is_file():
        pytest.skip("shared validation data not present")
    ds = Dataset.from_file(path, scan_shape=(24, 24))
    assert ds.shape == (576, 64, 64)
    assert ds.read([575, 0]).shape == (2, 64, 64)


# ---------------------------------------------------------------------------- bad input
def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        Dataset.from_file(tmp_path / "nope.h5")


def test_unsupported_suffix(tmp_path):
    (tmp_path / "d.txt").write_text("1 2 3")
    with pytest.raises(DataError, match=r"suffix '\.txt'.*hdf5 \(\.h5.*npy \(\.npy"):
        Dataset.from_file(tmp_path / "d.txt")


def test_missing_dataset_lists_what_exists(tmp_path, patterns):
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f["patterns"] = patterns
        f["meta/positions"] = np.zeros((N, 2))
    with pytest.raises(DataError, match="dataset_name") as info:
        Dataset.from_file(path, dataset_name="data")
    assert "'data'" in str(info.value)
    assert "'patterns'" in str(info.value) and "'meta/positions'" in str(info.value)
    assert Dataset.from_file(path, dataset_name="patterns").shape == (N, K, K)


def test_single_pattern_dataset_is_picked_and_two_are_refused(tmp_path, patterns):
    """Without dataset_name and without 'data', the one 3D/4D dataset is read; with two the
    error lists both."""
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as f:
        f["scan/patterns"] = patterns
        f["meta/positions"] = np.zeros((N, 2))
    np.testing.assert_array_equal(Dataset.from_file(path).read(np.arange(N)), patterns)
    with h5py.File(path, "a") as f:
        f["other"] = patterns
    with pytest.raises(DataError, match=r"single 3D.*'other'.*'scan/patterns'|"
                                        r"single 3D.*'scan/patterns'.*'other'"):
        Dataset.from_file(path)


def test_not_an_hdf5_file(tmp_path):
    (tmp_path / "d.h5").write_bytes(b"not hdf5 at all")
    with pytest.raises(DataError, match="expected an HDF5 file"):
        Dataset.from_file(tmp_path / "d.h5")


def test_pickled_npy_is_refused(tmp_path):
    np.save(tmp_path / "d.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="d.npy"):
        Dataset.from_file(tmp_path / "d.npy")


@pytest.mark.parametrize("shape", [(K, K), (2, 2, 2, K, K), (N,)])
def test_wrong_ndim(tmp_path, shape):
    path = write_h5(tmp_path / "d.h5", np.ones(shape, dtype=np.float32))
    with pytest.raises(DataError, match=r"expected a 3D \(N, ky, kx\) or 4D") as info:
        Dataset.from_file(path)
    assert f"{len(shape)}D" in str(info.value)
    np.save(tmp_path / "d.npy", np.ones(shape, dtype=np.float32))
    with pytest.raises(DataError, match="3D"):
        Dataset.from_file(tmp_path / "d.npy")


def test_complex_data_refused():
    with pytest.raises(DataError, match="dtype complex"):
        Dataset.from_array(np.ones((N, K, K), dtype=complex))


def test_non_square(tmp_path):
    path = write_h5(tmp_path / "d.h5", np.ones((N, K, K + 2), dtype=np.float32))
    with pytest.raises(DataError, match=r"pattern shape: expected square.*\(16, 18\)"):
        Dataset.from_file(path)


def test_tiny_patterns():
    with pytest.raises(DataError, match="pattern shape: expected at least 8"):
        Dataset.from_array(np.ones((N, 4, 4)))
    with pytest.raises(DataError, match=r"bin=4"):
        Dataset.from_array(np.ones((N, K, K)), preprocessing=Preprocessing(bin=4))
    assert Dataset.from_array(np.ones((N, 4, 4)),
                              preprocessing=Preprocessing(pad=2)).pattern_shape == (8, 8)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_values(tmp_path, patterns, value):
    data = patterns.copy()
    data[10, 2, 5] = value
    path = write_h5(tmp_path / "d.h5", data)
    # small chunks: the bad value sits in a later chunk than the first
    with pytest.raises(DataError, match=r"data .*expected finite counts.*pattern 10, "
                                        r"pixel \(2, 5\)"):
        Dataset.from_file(path, chunk_bytes=2 * K * K * 16)
    ds = Dataset.from_file(path, validate=False)  # explicit opt-out skips the scan
    with pytest.raises(DataError, match="finite"):
        ds.validate()


def test_negative_counts(tmp_path, patterns):
    data = patterns.copy()
    data[7, 1, 1] = -1e-6
    np.save(tmp_path / "d.npy", data)
    with pytest.raises(DataError, match=r"non-negative counts.*pattern 7.*clip_negative=True"):
        Dataset.from_file(tmp_path / "d.npy")
    ds = Dataset.from_file(tmp_path / "d.npy", preprocessing=Preprocessing(clip_negative=True))
    assert ds.read([7]).min() == 0.0


def test_negative_integer_counts():
    data = np.ones((N, K, K), dtype=np.int16)
    data[3, 0, 0] = -4
    with pytest.raises(DataError, match="found -4 at pattern 3"):
        Dataset.from_array(data)
    unsigned = Dataset.from_array(np.ones((N, K, K), dtype=np.uint16))
    assert unsigned.read([0]).dtype == np.float32


def test_scan_shape_mismatch(tmp_path, patterns):
    path = write_h5(tmp_path / "d.h5", patterns)
    with pytest.raises(DataError, match=r"scan_shape: expected sy \* sx = number of patterns "
                                        r"N = 12, found \(3, 5\)"):
        Dataset.from_file(path, scan_shape=(3, 5))
    four = write_h5(tmp_path / "four.h5", patterns.reshape(SY, SX, K, K))
    with pytest.raises(DataError, match=r"scan_shape: .*\(3, 4\).*\(4, 3\)"):
        Dataset.from_file(four, scan_shape=(4, 3))
    with pytest.raises(DataError, match="scan_shape: expected two positive integers"):
        Dataset.from_array(patterns, scan_shape=(12,))


def test_bin_not_dividing(tmp_path, patterns):
    path = write_h5(tmp_path / "d.h5", patterns)
    with pytest.raises(DataError, match=r"Preprocessing\.bin: expected a divisor of the pattern "
                                        r"side 16 px, found bin=3"):
        Dataset.from_file(path, preprocessing=Preprocessing(bin=3))


def test_shift_too_large(patterns):
    with pytest.raises(DataError, match=r"Preprocessing\.shift_px.*kx, found -16"):
        Dataset.from_array(patterns, preprocessing=Preprocessing(shift_px=(0, -16)))


@pytest.mark.parametrize("kwargs, name", [
    ({"multiplier": 0.0}, "multiplier"),
    ({"multiplier": float("nan")}, "multiplier"),
    ({"multiplier": "2"}, "multiplier"),
    ({"pad": -1}, "pad"),
    ({"pad": 1.5}, "pad"),
    ({"bin": 0}, "bin"),
    ({"bin": True}, "bin"),
    ({"flip_ky": "yes"}, "flip_ky"),
    ({"transpose": 1}, "transpose"),
    ({"clip_negative": None}, "clip_negative"),
    ({"shift_px": (1.5, 0)}, "shift_px"),
    ({"shift_px": 3}, "shift_px"),
])
def test_bad_preprocessing_parameters(kwargs, name):
    with pytest.raises(DataError, match=rf"Preprocessing\.{name}: expected"):
        Preprocessing(**kwargs)


def test_bad_indices(patterns):
    ds = Dataset.from_array(patterns)
    with pytest.raises(DataError, match=r"indices: expected values in \[0, 12\)"):
        ds.read([0, 12])
    with pytest.raises(DataError, match="indices"):
        ds.read([-1])
    with pytest.raises(DataError, match="indices: expected a 1D array of integer"):
        ds.read([0.5])


def test_preprocessing_round_trips_config():
    prep = Preprocessing(bin=2, shift_px=(1, -2), flip_kx=True)
    assert Preprocessing(**prep.to_config()) == prep


def test_sparse_reads_from_4d_hdf5(tmp_path):
    rng = np.random.default_rng(2)
    four = rng.uniform(0, 9, size=(2, 10, K, K)).astype(np.float32)
    ds = Dataset.from_file(write_h5(tmp_path / "d.h5", four))
    flat = four.reshape(20, K, K)
    idx = [19, 0, 9, 12, 5, 0]  # sparse within rows (HDF5 point lists) and repeated
    np.testing.assert_array_equal(ds.read(idx), flat[idx])
