"""A small random far-field problem for gradient checks and for comparing code paths
(devices, FFT providers, kernels) on the same numbers."""

from __future__ import annotations

from typing import Any

import numpy as np

from ptyframe.components import LossMetric, Propagator
from ptyframe.core.device import Device
from ptyframe.engine.model import PtychographyModel

__all__ = ["random_far_field_problem"]


def random_far_field_problem(device: Device, propagator: Propagator, loss: LossMetric, *,
                             n_slices: int = 1, n_object_modes: int = 1,
                             n_probe_modes: int = 1, batch_size: int = 3, seed: int = 1,
                             n: int = 16, n_measurements: int = 7, fuse_loss: bool = True
                             ) -> tuple[PtychographyModel, dict[str, Any], np.random.Generator]:
    """(model, params, rng): a 40 x 40 random object (n_slices, n_object_modes), random
    complex probe modes and positions in a 16-pixel window (0.3 Å pixels, 0.025 Å
    wavelength) and Poisson(5) measurements, on ``device``; ``rng`` continues the stream
    that drew them. ``fuse_loss``: the model's option of that name."""
    rng = np.random.default_rng(seed)
    shape = (n_slices, n_object_modes, 40, 40)
    obj = np.exp(1j * 0.3 * rng.standard_normal(shape)) * (1 - 0.05 * rng.random(shape))
    probe = rng.standard_normal((n_probe_modes, n, n)) + 1j * rng.standard_normal(
        (n_probe_modes, n, n))
    pos = rng.random((n_measurements, 2)) * 20 + 2
    meas = rng.poisson(5, (n_measurements, n, n)).astype(float)
    model = PtychographyModel.from_geometry(propagator, loss, device, (n, n), 0.3, 0.025,
                                            n_slices, device.real(meas),
                                            batch_size=batch_size, fuse_loss=fuse_loss)
    params = {"object": device.complex(obj), "probe": device.complex(probe),
              "positions": device.real(pos)}
    return model, params, rng
