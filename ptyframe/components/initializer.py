"""Initializers: starting guesses for probe, object and scan positions."""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from .base import Component

__all__ = ["ProbeInitializer", "ObjectInitializer", "PositionInitializer", "InitContext"]


class InitContext:
    """Everything an initializer may look at (host NumPy arrays only).

    ``experiment``: the :class:`ptyframe.core.experiment.Experiment`; ``grid``: the
    :class:`ptyframe.core.experiment.ReconstructionGrid`; ``mean_pattern``: mean measured pattern
    (ky, kx) centred (zero frequency at N/2) on the padded detector grid, or None;
    ``n_measurements``; ``rng``: a numpy Generator.
    """

    def __init__(self, experiment: Any, grid: Any, mean_pattern: np.ndarray | None,
                 n_measurements: int, rng: np.random.Generator | None = None) -> None:
        self.experiment = experiment
        self.grid = grid
        self.mean_pattern = mean_pattern
        self.n_measurements = n_measurements
        self.rng = rng if rng is not None else np.random.default_rng(0)


class ProbeInitializer(Component):
    """Returns the probe, complex (n_modes, ny, nx), real space, centred at pixel (N/2, N/2)."""

    kind = "probe_initializer"

    @abc.abstractmethod
    def build(self, context: InitContext, n_modes: int) -> np.ndarray:
        ...


class PositionInitializer(Component):
    """Returns probe positions (N, 2) = [y, x] in Å in the specimen frame."""

    kind = "position_initializer"

    @abc.abstractmethod
    def build(self, context: InitContext) -> np.ndarray:
        ...


class ObjectInitializer(Component):
    """Returns the object transmission, complex (n_slices, n_modes, Y, X)."""

    kind = "object_initializer"

    @abc.abstractmethod
    def build(self, context: InitContext, shape_yx: tuple[int, int], n_slices: int,
              n_modes: int) -> np.ndarray:
        ...
