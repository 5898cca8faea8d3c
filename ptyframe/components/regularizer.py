"""Regularizer: a penalty added to the loss, with its gradient."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

from .base import ModelComponent
from .context import ModelContext

__all__ = ["Regularizer"]


class Regularizer(ModelComponent):
    """Penalty R(params) with gradients dR/d conj(p) for the blocks it touches.

    ``value_and_grad(params, epoch)`` returns (value, {block_name: gradient}). Real
    blocks follow the same convention (gradient = 1/2 dR/dx) so that dR = 2 Re <g, dp> for all
    blocks. A block absent from ``params`` is skipped (value 0, no gradient). Weights that vary
    with the epoch are :class:`ptyframe.core.schedules.Schedule` objects evaluated at ``epoch``.
    """

    kind = "regularizer"

    def prepare(self, context: ModelContext) -> None:
        """Bind the device and precompute what depends on the grid (masks, kernels); called
        once before use."""
        super().prepare(context)

    @abc.abstractmethod
    def value_and_grad(self, params: Mapping[str, Any], epoch: int = 0
                       ) -> tuple[float, dict[str, Any]]:
        ...
