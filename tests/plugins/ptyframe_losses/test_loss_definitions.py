"""Tests of lsq_sqrt_2 and the compressed-data (virtual-detector) losses: definitions computed
by hand, finite-difference gradients (double precision), minima, masks handling, configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ptyframe_losses.compressed_losses import (
    CompressedGaussian,
    CompressedLeastSquares,
    CompressedPoisson,
)
from ptyframe_losses.intensity_losses import (
    LeastSquares,
    LeastSquaresSqrt,
    ModifiedGaussian,
    PoissonML,
)

from ptyframe import Device
from ptyframe.components import ModelContext
from ptyframe.io.compression import annular_masks, pixel_masks
from ptyframe.registry.loader import load_registry
from ptyframe.testing import GradientCheckError, check_gradient
from ptyframe.testing import prepared as on_cpu

REGISTRY = load_registry()
DEVICE = Device("cpu", "double")
SHAPE = (12, 12)
COMPRESSED = (CompressedLeastSquares, CompressedGaussian, CompressedPoisson)


def data(seed: int = 0, shape=(3, *SHAPE)) -> tuple[np.ndarray, np.ndarray]:
    """Model intensity in [0.5, 40] and Poisson counts (some zero)."""
    rng = np.random.default_rng(seed)
    measured = rng.poisson(15.0, size=shape).astype(float)
    measured[:, :2] = 0.0
    measured[:, 2, :3] = 0.4  # non-integer dark values below the threshold
    return rng.uniform(0.5, 40.0, size=shape), measured


def masks(n_sectors: int = 4) -> np.ndarray:
    return annular_masks(SHAPE, [0, 2, 4, 6.5], n_sectors)


def value(loss, intensity, prepared) -> float:
    return loss.value_and_grad(intensity.copy(), prepared)[0]


def gradient_check(loss, intensity, measured, seeds=range(3)) -> float:
    prepared = loss.prepare_measured(measured)
    _, dldi = loss.value_and_grad(intensity.copy(), prepared)
    worst = 0.0
    for seed in seeds:
        worst = max(worst, check_gradient(lambda p: value(loss, p["I"], prepared), {"I": intensity},
                                          {"I": dldi / 2}, "I", rng=np.random.default_rng(seed),
                                          rtol=1e-6))
    return worst


# ============================================================================ lsq_sqrt_2
def test_lsq_sqrt_2_definition_by_hand():
    intensity, measured = data()
    bright = measured > 0.5
    expected = 0.5 * np.sum(((measured - intensity) ** 2 / np.where(bright, measured, 1))[bright])
    expected += np.sum(intensity[~bright])
    loss = on_cpu(ModifiedGaussian())
    val, grad = loss.value_and_grad(intensity.copy(), loss.prepare_measured(measured))
    np.testing.assert_allclose(val, expected, rtol=1e-12)
    np.testing.assert_allclose(grad, np.where(bright, intensity / np.where(bright, measured, 1)
                                              - 1, 1.0), rtol=1e-12)
    # overwrite=True gives the same result in the intensity's memory
    work = intensity.copy()
    val2, grad2 = loss.value_and_grad(work, measured, overwrite=True)
    assert val2 == pytest.approx(val, rel=1e-14) and np.shares_memory(grad2, work)
    np.testing.assert_allclose(grad2, grad, rtol=1e-14)


def test_lsq_sqrt_2_gradient_and_minimum():
    intensity, measured = data(1)
    assert gradient_check(on_cpu(ModifiedGaussian()), intensity, measured) < 1e-6
    loss = on_cpu(ModifiedGaussian())
    # minimum at I = M on bright pixels (dark pixels: at I = 0), value 0 there
    best = np.where(measured > 0.5, measured, 0.0)
    at_best, grad = loss.value_and_grad(best.copy(), measured)
    assert at_best == 0.0
    np.testing.assert_allclose(grad[measured > 0.5], 0.0, atol=1e-14)
    rng = np.random.default_rng(0)
    for _ in range(5):
        trial = np.clip(best + rng.normal(0, 0.3, best.shape), 0, None)
        assert value(loss, trial, measured) > at_best


def test_lsq_sqrt_2_threshold_setting():
    with pytest.raises(ValueError, match="dark_threshold"):
        ModifiedGaussian(dark_threshold=0)
    config = ModifiedGaussian(dark_threshold=2.0).to_config()
    assert REGISTRY.create("loss", json.loads(json.dumps(config))).dark_threshold == 2.0


# ============================================================================ compressed losses
def compressed_by_hand(name: str, intensity: np.ndarray, measured: np.ndarray,
                       mask_stack: np.ndarray, eps: float) -> float:
    c = np.einsum("byx,kyx->bk", intensity, mask_stack)
    m = np.einsum("byx,kyx->bk", measured, mask_stack)
    if name == "lsq_compressed":
        return float(np.sum((c - m) ** 2))
    if name == "gaussian_compressed":
        return float(np.sum((np.sqrt(c + eps) - np.sqrt(m)) ** 2))
    mlogm = np.where(m > 0, m * np.log(np.where(m > 0, m, 1)), 0.0)
    return float(np.sum(c + eps - m * np.log(c + eps) - m + mlogm))


@pytest.mark.parametrize("cls", COMPRESSED)
def test_compressed_loss_definition_by_hand(cls):
    intensity, measured = data(2)
    stack = masks()
    loss = on_cpu(cls(masks=stack))
    eps = getattr(loss, "epsilon", 0.0)
    expected = compressed_by_hand(cls.name, intensity, measured, stack, eps)
    # from full patterns (compressed by prepare_measured) and from compressed data alike
    for given in (measured, np.einsum("byx,kyx->bk", measured, stack)):
        prepared = loss.prepare_measured(given)
        np.testing.assert_allclose(value(loss, intensity, prepared), expected, rtol=1e-12)
    assert loss.detector_shape == SHAPE and loss.n_masks == stack.shape[0]


@pytest.mark.parametrize("cls", COMPRESSED)
def test_compressed_loss_gradient(cls):
    intensity, measured = data(3)
    for stack in (masks(), masks(3) * np.random.default_rng(0).uniform(0.2, 1.0, SHAPE)):
        assert gradient_check(on_cpu(cls(masks=stack)), intensity, measured) < 1e-6


def test_signed_masks_for_lsq_compressed_only():
    """Difference masks (e.g. a DPC-like x-gradient) are fine for lsq, refused where the loss
    takes sqrt/log of the signal."""
    x = np.arange(SHAPE[1]) - SHAPE[1] // 2
    signed = np.stack([np.broadcast_to(np.sign(x), SHAPE), np.ones(SHAPE)]).astype(float)
    intensity, measured = data(4)
    assert gradient_check(on_cpu(CompressedLeastSquares(masks=signed)), intensity, measured) < 1e-6
    for cls in (CompressedGaussian, CompressedPoisson):
        with pytest.raises(ValueError, match="masks: .*non-negative"):
            cls(masks=signed)


@pytest.mark.parametrize(("cls", "pixelwise"), [(CompressedLeastSquares, LeastSquares),
                                                (CompressedGaussian, LeastSquaresSqrt),
                                                (CompressedPoisson, PoissonML)])
def test_identity_masks_give_the_pixelwise_losses(cls, pixelwise):
    """With one mask per pixel (or no masks at all) the compressed losses are lsq, lsq_sqrt and
    ml (the Poisson one up to a constant of the data), with the same gradients."""
    intensity, measured = data(5)
    reference = on_cpu(pixelwise())
    ref_value, ref_grad = reference.value_and_grad(
        intensity.copy(), reference.prepare_measured(measured))
    values = []
    for loss in (on_cpu(cls(masks=pixel_masks(SHAPE))), on_cpu(cls())):
        assert getattr(loss, "epsilon", None) == getattr(reference, "epsilon", None)
        val, grad = loss.value_and_grad(intensity.copy(), loss.prepare_measured(measured))
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-10, atol=1e-12)
        values.append(val)
    np.testing.assert_allclose(values[0], values[1], rtol=1e-12)
    if cls is CompressedPoisson:
        constant = np.sum(np.where(measured > 0, measured * np.log(np.where(measured > 0,
                                                                            measured, 1)), 0)
                          - measured)
        np.testing.assert_allclose(values[0], ref_value + constant, rtol=1e-12)
    else:
        np.testing.assert_allclose(values[0], ref_value, rtol=1e-12)


@pytest.mark.parametrize("cls", COMPRESSED)
def test_compressed_minimum_at_the_measurement(cls):
    _, measured = data(6)
    loss = on_cpu(cls(masks=masks()))
    prepared = loss.prepare_measured(measured)
    at_measured = value(loss, measured, prepared)
    assert 0.0 <= at_measured < 1e-3
    rng = np.random.default_rng(1)
    for _ in range(4):
        trial = measured * rng.uniform(0.7, 1.3, measured.shape) + rng.uniform(0, 1, measured.shape)
        assert value(loss, trial, prepared) > at_measured + 1e-3


@pytest.mark.parametrize("cls", COMPRESSED)
def test_prepare_maps_masks_to_detector_order_on_the_device(cls):
    stack = masks()
    loss = cls(masks=stack)
    single = Device("cpu", "single")
    context = ModelContext(window=SHAPE, pixel_size_A=0.25, wavelength_A=0.025,
                           n_measurements=3, device=single, measured_shape=(stack.shape[0],),
                           to_detector_order=lambda a: np.fft.ifftshift(a, axes=(-2, -1)))
    loss.prepare(context)
    weights = loss._weights
    assert weights.dtype == np.float32 and weights.shape == (stack.shape[0], np.prod(SHAPE))
    np.testing.assert_array_equal(weights, np.fft.ifftshift(stack, axes=(-2, -1)).reshape(
        stack.shape[0], -1))
    # FFT-order intensities against centred data compressed with centred masks: same value as
    # the centred intensities with centred masks
    intensity, measured = data(7)
    compressed = np.einsum("byx,kyx->bk", measured, stack).astype(np.float32)
    fft_order = np.fft.ifftshift(intensity, axes=(-2, -1)).astype(np.float32)
    val, grad = loss.value_and_grad(fft_order, loss.prepare_measured(compressed))
    assert grad.dtype == np.float32
    np.testing.assert_allclose(val, compressed_by_hand(cls.name, intensity, measured, stack,
                                                       getattr(loss, "epsilon", 0.0)), rtol=1e-4)
    # full FFT-order patterns are compressed with the prepared (FFT-order) masks
    full = np.fft.ifftshift(measured, axes=(-2, -1)).astype(np.float32)
    np.testing.assert_allclose(loss.compress_measured(full), compressed, rtol=1e-6)
    with pytest.raises(ValueError, match="masks: expected measurements of shape"):
        loss.prepare(ModelContext(window=SHAPE, pixel_size_A=0.25, wavelength_A=0.025,
                                  n_measurements=3, device=single, measured_shape=(5,)))


def test_compressed_loss_rejects_bad_input(tmp_path):
    stack = masks()
    with pytest.raises(ValueError, match="masks: expected either"):
        CompressedLeastSquares(masks=stack, masks_path=str(tmp_path / "m.npy"))
    with pytest.raises(ValueError, match="masks_path: file not found"):
        CompressedLeastSquares(masks_path=str(tmp_path / "missing.npy"))
    with pytest.raises(ValueError, match="masks_path: expected a .npy"):
        CompressedLeastSquares(masks_path=str(tmp_path / "m.txt"))
    with pytest.raises(ValueError, match=r"masks: expected shape \(n_masks, my, mx\)"):
        CompressedLeastSquares(masks=np.ones(SHAPE))
    with pytest.raises(ValueError, match="masks: contains NaN"):
        CompressedLeastSquares(masks=np.full((2, *SHAPE), np.nan))
    loss = on_cpu(CompressedLeastSquares(masks=stack))
    with pytest.raises(ValueError, match="measured: expected shape"):
        loss.prepare_measured(np.ones((3, 5)))
    with pytest.raises(ValueError, match="measured: expected compressed data"):
        loss.value_and_grad(np.ones((3, *SHAPE)), np.ones((2, stack.shape[0])))
    with pytest.raises(ValueError, match="intensity: expected patterns"):
        loss.value_and_grad(np.ones((3, 10, 10)), np.ones((3, stack.shape[0])))
    with pytest.raises(ValueError, match="measured: gaussian_compressed needs"):
        on_cpu(CompressedGaussian(masks=stack)).prepare_measured(-np.ones((3, stack.shape[0])))


@pytest.mark.parametrize("cls", COMPRESSED)
def test_compressed_config_round_trips_with_masks_path(cls, tmp_path):
    stack = masks()
    path = tmp_path / "masks.npy"
    np.save(path, stack)
    loss = cls(masks_path=str(path))
    config = json.loads(json.dumps(loss.to_config()))
    assert config["masks_path"] == str(path) and "masks" not in config
    rebuilt = REGISTRY.create("loss", config)
    assert type(rebuilt) is cls and rebuilt.to_config() == config
    np.testing.assert_array_equal(rebuilt.masks, stack)
    # in-memory masks are not serialised: the config says so and refuses to rebuild
    config = json.loads(json.dumps(cls(masks=stack).to_config()))
    assert "not serialised" in config["masks"]
    with pytest.raises(ValueError, match="masks: expected a numpy array"):
        REGISTRY.create("loss", config)


def test_gradient_check_would_catch_a_wrong_chain_rule():
    """Negative control: the gradient test fails for a loss whose backward pass uses the
    masks in a different pixel order than its forward pass."""
    intensity, measured = data(8)
    stack = masks()
    loss = on_cpu(CompressedLeastSquares(masks=stack))
    prepared = loss.prepare_measured(measured)
    _, grad = loss.value_and_grad(intensity.copy(), prepared)
    wrong = np.fft.ifftshift(grad, axes=(-2, -1))
    with pytest.raises(GradientCheckError):
        check_gradient(lambda p: value(loss, p["I"], prepared), {"I": intensity},
                       {"I": wrong / 2}, "I", rtol=1e-6)
