"""Ground-truth metrics: alignment, phase correlation, scanned-region mask, position error."""

import numpy as np
import pytest

from ptyframe.core.experiment import ReconstructionGrid
from ptyframe.testing.simulate import random_atoms_phase
from ptyframe.testing.validation import (
    align_images,
    cross_correlation_shift,
    fourier_shift,
    phase_correlation,
    position_error_A,
    resample_to_grid,
    scanned_region_mask,
)


@pytest.fixture(scope="module")
def atoms():
    return random_atoms_phase((64, 64), 0.25, np.random.default_rng(1))


@pytest.mark.parametrize("shift", [(0.0, 0.0), (0.3, -1.7), (2.45, 0.1), (-3.2, 4.9),
                                   (0.5, 0.5)])
def test_recovers_sub_pixel_shifts(atoms, shift):
    moved = fourier_shift(atoms, shift)
    estimate = cross_correlation_shift(moved, atoms)
    np.testing.assert_allclose(estimate, -np.asarray(shift), atol=0.01)
    aligned, applied = align_images(moved, atoms)
    np.testing.assert_allclose(applied, estimate)
    inner = (slice(8, -8), slice(8, -8))
    np.testing.assert_allclose(aligned[inner], atoms[inner], atol=0.01)


def test_parabolic_estimate_without_upsampling(atoms):
    estimate = cross_correlation_shift(fourier_shift(atoms, (1.3, -0.4)), atoms, upsample=1)
    np.testing.assert_allclose(estimate, (-1.3, 0.4), atol=0.1)


def test_fourier_shift_convention():
    image = np.zeros((16, 16))
    image[4, 6] = 1.0
    out = fourier_shift(image, (2, -3))  # out(r) = image(r - shift)
    assert np.unravel_index(np.argmax(out), out.shape) == (6, 3)
    np.testing.assert_allclose(out.sum(), 1.0)


def test_shifted_copy_correlates_after_alignment(atoms):
    moved = fourier_shift(atoms, (1.6, -2.3)) + 0.7  # shift + global phase offset
    mask = np.zeros(atoms.shape, bool)
    mask[12:-12, 12:-12] = True
    assert phase_correlation(moved, atoms, mask=mask, align=False) < 0.6
    assert phase_correlation(moved, atoms, mask=mask) > 0.9999
    assert phase_correlation(moved, atoms) > 0.999  # whole image: periodic shift, still ~1


def test_identity_sign_and_scale(atoms):
    assert phase_correlation(atoms, atoms, align=False) == pytest.approx(1.0)
    assert phase_correlation(3.0 * atoms - 2.0, atoms) == pytest.approx(1.0)
    assert phase_correlation(-atoms, atoms, align=False) == pytest.approx(-1.0)
    assert phase_correlation(np.zeros_like(atoms), atoms) == 0.0


def test_noise_lowers_correlation_and_lowpass_restores_some(atoms):
    rng = np.random.default_rng(2)
    mask = np.zeros(atoms.shape, bool)
    mask[10:-10, 10:-10] = True
    values = []
    for level in (0.0, 0.02, 0.1, 0.3):
        noisy = atoms + level * rng.standard_normal(atoms.shape)
        values.append(phase_correlation(noisy, atoms, mask=mask))
    assert values[0] > 0.9999
    assert values == sorted(values, reverse=True)
    assert values[-1] < 0.8
    noisy = atoms + 0.3 * rng.standard_normal(atoms.shape)
    raw = phase_correlation(noisy, atoms, mask=mask)
    smooth = phase_correlation(noisy, atoms, mask=mask, lowpass_sigma_px=1.5)
    assert smooth > raw + 0.1


def test_unrelated_images_do_not_correlate(atoms):
    other = random_atoms_phase(atoms.shape, 0.25, np.random.default_rng(7))
    assert abs(phase_correlation(other, atoms)) < 0.5


def test_mask_excludes_garbage_outside(atoms):
    recon = atoms.copy()
    recon[:8] = 5.0 * np.random.default_rng(3).standard_normal((8, 64))
    mask = np.zeros(atoms.shape, bool)
    mask[16:48, 16:48] = True
    assert phase_correlation(recon, atoms, align=False) < 0.6
    assert phase_correlation(recon, atoms, mask=mask) > 0.9999


def test_bad_input_is_rejected(atoms):
    with pytest.raises(ValueError, match="shape"):
        phase_correlation(atoms, atoms[:-1])
    with pytest.raises(ValueError, match="complex"):
        phase_correlation(np.exp(1j * atoms), atoms)
    with pytest.raises(ValueError, match="mask"):
        phase_correlation(atoms, atoms, mask=np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="lowpass_sigma_px"):
        phase_correlation(atoms, atoms, lowpass_sigma_px=-1.0)
    with pytest.raises(ValueError, match="2-D"):
        align_images(atoms[None], atoms[None])


def test_scanned_region_mask_matches_positions():
    grid = ReconstructionGrid(window=(8, 8), pixel_size_A=0.5, object_shape=(20, 30),
                              origin_A=(-2.0, -1.0))
    positions = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 5.0], [3.0, 5.0], [1.2, 2.2]])
    mask = scanned_region_mask(grid, positions)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    # pixel iy at -2 + 0.5 iy: y in [0, 3] -> iy 4..10; x at -1 + 0.5 ix in [0, 5] -> ix 2..12
    assert (rows[0], rows[-1]) == (4, 10)
    assert (cols[0], cols[-1]) == (2, 12)
    assert mask.sum() == 7 * 11  # a full box
    shrunk = scanned_region_mask(grid, positions, shrink_px=2)
    assert shrunk.sum() == 3 * 7
    assert np.all(mask[shrunk])
    grown = scanned_region_mask(grid, positions, shrink_px=-1)
    assert grown.sum() == 9 * 13
    with pytest.raises(ValueError, match="positions_A"):
        scanned_region_mask(grid, np.zeros((3, 3)))


def test_resample_to_grid_is_a_translation(atoms):
    source = ReconstructionGrid(window=(16, 16), pixel_size_A=0.25, object_shape=(64, 64),
                                origin_A=(0.0, 0.0))
    target = ReconstructionGrid(window=(16, 16), pixel_size_A=0.25, object_shape=(40, 40),
                                origin_A=(2.0, 3.0))  # 8 and 12 pixels in
    np.testing.assert_allclose(resample_to_grid(atoms, source, target), atoms[8:48, 12:52],
                               atol=1e-12)
    half = ReconstructionGrid(window=(16, 16), pixel_size_A=0.25, object_shape=(40, 40),
                              origin_A=(2.125, 3.0))  # half a pixel further down
    moved = resample_to_grid(atoms, source, half)
    expected = fourier_shift(atoms, (-0.5, 0.0))[8:48, 12:52]
    np.testing.assert_allclose(moved, expected, atol=0.02)


def test_position_error():
    rng = np.random.default_rng(0)
    true = rng.random((50, 2)) * 10
    assert position_error_A(true + [0.3, -0.2], true) == pytest.approx(0.0, abs=1e-12)
    assert position_error_A(true + [0.3, -0.4], true, remove_mean=False) == pytest.approx(0.5)
    errors = np.zeros((50, 2))
    errors[:25, 0], errors[25:, 0] = 0.1, -0.1
    assert position_error_A(true + errors, true) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="true_A"):
        position_error_A(true, true[:-1])
