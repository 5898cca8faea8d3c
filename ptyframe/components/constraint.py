"""Constraint: a projection applied "by hand" between optimizer steps."""

from __future__ import annotations

import abc
from collections.abc import MutableMapping
from typing import Any

from .base import Component

__all__ = ["Constraint"]


class Constraint(Component):
    """Modifies parameters in place after an optimizer step.

    Applying a constraint invalidates the optimizer's curvature history; the Reconstruction
    resets it whenever :meth:`apply` returns True.
    """

    kind = "constraint"

    @abc.abstractmethod
    def is_active(self, epoch: int) -> bool:
        """Whether to apply at this epoch (normally a Schedule evaluated at ``epoch``)."""

    @abc.abstractmethod
    def apply(self, params: MutableMapping[str, Any], device: Any, epoch: int) -> bool:
        """Project ``params`` in place; return True when anything changed."""
