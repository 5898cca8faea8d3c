"""Regularizer: a penalty added to the loss, with its gradient."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

from .base import Component

__all__ = ["Regularizer"]


class Regularizer(Component):
    """Penalty R(params) with gradients dR/d conj(p) for the blocks it touches.

    ``value_and_grad(params, device)`` returns (value, {block_name: gradient}). Real blocks
    follow the same convention (gradient = 1/2 dR/dx) so that dR = 2 Re <g, dp> for all blocks.
    """

    kind = "regularizer"

    @abc.abstractmethod
    def value_and_grad(self, params: Mapping[str, Any], device: Any
                       ) -> tuple[float, dict[str, Any]]:
        ...
