"""Focal-series (near-field) data: simulation with the project's own model, for tests and
examples. A plane wave (or any illumination) passes the object once; each measurement is an
image at its own defocus, formed by the ``near_field`` detector.

Defocus convention: df = -C10, positive = underfocus (the image of the wave df upstream of the
exit surface), as everywhere in ptyframe and in abTEM."""

from __future__ import annotations

import attrs
import numpy as np

from ptyframe.components import Detector, Propagator
from ptyframe.core.device import Device
from ptyframe.engine.model import PtychographyModel

from .simulate import random_atoms_phase

__all__ = ["FocalSeries", "simulate_focal_series"]


@attrs.define
class FocalSeries:
    """Simulated focal series: ``images`` (N, n, n) counts (natural pixel order);
    ``object`` (1, 1, Y, X) true transmission with the images' window at corner
    ``corner_px``; ``illumination`` (1, n, n); ``defocus_A`` (N,)."""

    images: np.ndarray
    object: np.ndarray
    illumination: np.ndarray
    corner_px: tuple[int, int]
    defocus_A: np.ndarray

    @property
    def phase(self) -> np.ndarray:
        return np.angle(self.object[0, 0])


def simulate_focal_series(propagator: Propagator, detector: Detector, *, window: int,
                          pixel_size_A: float, wavelength_A: float, defocus_A: np.ndarray,
                          margin_px: int = 8, counts_per_pixel: float | None = 1e3,
                          absorption: float = 0.05, seed: int = 0) -> FocalSeries:
    """Images of random Gaussian atoms under plane-wave illumination, one per defocus.

    ``detector`` is a near-field detector configured with the same ``defocus_A`` (Å, = -C10,
    positive = underfocus) and ``pixel_size_A``; ``counts_per_pixel``: mean dose (Poisson
    noise), None for noise-free expected intensities (in units of the incident intensity).
    """
    rng = np.random.default_rng(seed)
    device = Device("cpu", "double")
    shape = (window + 2 * margin_px, window + 2 * margin_px)
    phase = random_atoms_phase(shape, pixel_size_A, rng)
    obj = np.exp((1j - absorption) * phase)[None, None]
    n = len(defocus_A)
    scale = 1.0 if counts_per_pixel is None else float(counts_per_pixel)
    illumination = np.full((1, window, window), np.sqrt(scale), dtype=complex)
    model = PtychographyModel.from_geometry(
        propagator, None, device, (window, window), pixel_size_A,
                              wavelength_A, 1, None, detector=detector, n_measurements=n)
    corner = (margin_px, margin_px)
    params = {"object": obj, "probe": illumination,
              "positions": np.tile(np.array(corner, dtype=float), (n, 1))}
    model.check_blocks(params)
    expected = device.to_host(model.intensities(params))
    images = (rng.poisson(np.clip(expected, 0, None)).astype(np.float32)
              if counts_per_pixel is not None else expected.astype(np.float32))
    return FocalSeries(images=images, object=obj, illumination=illumination,
                       corner_px=corner, defocus_A=np.asarray(defocus_A, dtype=float))
