"""Tests of ptyframe.io.compression: compress() against einsum (in memory, chunked, memory-mapped)
and the virtual-detector mask builders."""

from __future__ import annotations

import numpy as np
import pytest

from ptyframe.io.compression import annular_masks, compress, pixel_masks

SHAPE = (16, 16)


class RowRecorder:
    """Array-like that records how many rows each read takes (to prove chunked reading)."""

    def __init__(self, array: np.ndarray) -> None:
        self._array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.reads: list[int] = []

    def __getitem__(self, index):
        rows = self._array[index]
        self.reads.append(len(rows))
        return rows


def test_compress_agrees_with_einsum():
    rng = np.random.default_rng(0)
    patterns = rng.poisson(5.0, (7, *SHAPE)).astype(np.float32)
    masks = rng.uniform(-1, 1, (5, *SHAPE))
    expected = np.einsum("nyx,kyx->nk", patterns.astype(float), masks)
    out = compress(patterns, masks)
    assert out.shape == (7, 5) and out.dtype == np.float64
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    # 4-D scans keep their scan axes; one pattern gives (K,)
    np.testing.assert_allclose(compress(patterns[:6].reshape(2, 3, *SHAPE), masks),
                               expected[:6].reshape(2, 3, 5), rtol=1e-12)
    np.testing.assert_allclose(compress(patterns[0], masks), expected[0], rtol=1e-12)


def test_compress_reads_a_memory_map_in_chunks(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "scan.npy"
    data = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(4, 5, *SHAPE))
    data[:] = rng.poisson(3.0, data.shape)
    data.flush()
    mapped = np.load(path, mmap_mode="r")
    assert isinstance(mapped, np.memmap)
    masks = annular_masks(SHAPE, [0, 3, 6, 8], 4)
    expected = np.einsum("abyx,kyx->abk", np.asarray(mapped, dtype=float), masks)
    row_bytes = 5 * SHAPE[0] * SHAPE[1] * 8
    np.testing.assert_allclose(compress(mapped, masks, chunk_bytes=row_bytes), expected,
                               rtol=1e-12)
    recorder = RowRecorder(mapped)
    out = compress(recorder, masks, chunk_bytes=row_bytes)
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    assert recorder.reads == [1, 1, 1, 1], "the scan must be read one chunk at a time"


def test_compress_rejects_bad_input():
    masks = np.ones((2, *SHAPE))
    with pytest.raises(ValueError, match="patterns: expected shape"):
        compress(np.ones((3, 8, 8)), masks)
    with pytest.raises(ValueError, match="masks: expected a real array"):
        compress(np.ones((3, *SHAPE)), np.ones(SHAPE))
    with pytest.raises(ValueError, match="chunk_bytes"):
        compress(np.ones((3, *SHAPE)), masks, chunk_bytes=0)


def test_annular_masks_geometry():
    radii = [0, 2, 5, 7.5]
    masks = annular_masks(SHAPE, radii, [1, 4, 8])
    assert masks.shape == (13, *SHAPE)
    assert set(np.unique(masks)) <= {0.0, 1.0}
    # disjoint, and together exactly the pixels with r < 7.5 around (8, 8)
    y, x = np.indices(SHAPE) - 8
    r = np.hypot(y, x)
    np.testing.assert_array_equal(masks.sum(0), (r < 7.5).astype(float))
    np.testing.assert_array_equal(masks[0], (r < 2).astype(float))
    # ring 2, sector 0 of 4 covers angles [0, pi/2): x > 0, y >= 0
    sector = masks[1].astype(bool)
    assert np.all(x[sector] > 0) and np.all(y[sector] >= 0)
    assert sector.sum() == ((r >= 2) & (r < 5) & (x > 0) & (y >= 0)).sum()
    # a rotation by 90 degrees moves sector 0 onto sector 1 of the same ring
    rotated = annular_masks(SHAPE, radii, [1, 4, 8], rotation_rad=np.pi / 2 - 1e-9)
    np.testing.assert_array_equal(rotated[1], masks[2])
    # radii in 1/Å with the reciprocal pixel size give the same masks as radii in pixels
    dk = 0.0625
    np.testing.assert_array_equal(
        annular_masks(SHAPE, np.array(radii) * dk, [1, 4, 8], pixel_size=dk), masks)


def test_annular_masks_reject_bad_settings():
    with pytest.raises(ValueError, match="radii"):
        annular_masks(SHAPE, [3, 2])
    with pytest.raises(ValueError, match="n_sectors"):
        annular_masks(SHAPE, [0, 2, 4], [1, 2, 3])
    with pytest.raises(ValueError, match="pixel_size"):
        annular_masks(SHAPE, [0, 2], pixel_size=0)
    with pytest.raises(ValueError, match="shape"):
        annular_masks((16,), [0, 2])


def test_pixel_masks_identity_and_binning():
    identity = pixel_masks(SHAPE)
    assert identity.shape == (256, *SHAPE)
    np.testing.assert_array_equal(identity.reshape(256, 256), np.eye(256))
    binned = pixel_masks((15, 16), bin_factor=4)
    assert binned.shape == (16, 15, 16)
    np.testing.assert_array_equal(binned.sum(0), np.ones((15, 16)))
    assert sorted(set(binned.sum((1, 2)))) == [12.0, 16.0]  # last row of blocks is 3 high
    support = np.zeros(SHAPE, bool)
    support[6:10, 5:11] = True
    kept = pixel_masks(SHAPE, bin_factor=2, support=support)
    np.testing.assert_array_equal(kept.sum(0), support.astype(float))
    assert kept.shape[0] == 2 * 4  # rows 6-9 -> 2 blocks, columns 5-10 -> 4 blocks
    with pytest.raises(ValueError, match="bin_factor"):
        pixel_masks(SHAPE, bin_factor=0)
    with pytest.raises(ValueError, match="support: selects no pixel"):
        pixel_masks(SHAPE, support=np.zeros(SHAPE, bool))
