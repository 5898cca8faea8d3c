"""Object initializers."""

from __future__ import annotations

import attrs
import numpy as np

from ptyframe.components import InitContext, ObjectInitializer

__all__ = ["VacuumObject"]


@attrs.define(kw_only=True)
class VacuumObject(ObjectInitializer):
    """Transmission 1 everywhere (vacuum).

    * ``mode_noise_rad``: standard deviation of the random phase given to object modes after
      the first, radians (0 = identical modes)

    The noise lets the modes separate during refinement (identical modes receive identical
    gradients forever).
    """

    name = "vacuum"
    mode_noise_rad: float = attrs.field(default=1e-2, converter=float)

    def build(self, context: InitContext, shape_yx: tuple[int, int], n_slices: int,
              n_modes: int) -> np.ndarray:
        obj = np.ones((n_slices, n_modes, *shape_yx), dtype=complex)
        if n_modes > 1 and self.mode_noise_rad > 0:
            noise = context.rng.standard_normal((n_slices, n_modes - 1, *shape_yx))
            obj[:, 1:] = np.exp(1j * self.mode_noise_rad * noise)
        return obj
