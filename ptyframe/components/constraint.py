"""Constraint: a projection applied "by hand" between optimizer steps."""

from __future__ import annotations

import abc
from collections.abc import Mapping, MutableMapping
from typing import Any

from .base import ModelComponent
from .context import ModelContext

__all__ = ["Constraint"]


class Constraint(ModelComponent):
    """Modifies parameters in place after an optimizer step.

    Applying a constraint invalidates the optimizer's curvature history; the Reconstruction
    resets it whenever :meth:`apply` returns True. A constraint that restricts the search
    space (phase-only object, probe phase only...) may also override
    :meth:`project_gradient`, which the Reconstruction applies to every gradient it hands to
    the optimizer (line-search trials included) while the constraint is active.
    """

    kind = "constraint"

    def prepare(self, context: ModelContext) -> None:
        """Bind the device and precompute what depends on the grid (masks, kernels); called
        once before use."""
        super().prepare(context)

    @abc.abstractmethod
    def is_active(self, epoch: int) -> bool:
        """Whether to apply at this epoch (normally a Schedule evaluated at ``epoch``)."""

    @abc.abstractmethod
    def apply(self, params: MutableMapping[str, Any], epoch: int) -> bool:
        """Project ``params`` in place; return True when the optimizer history must reset."""

    def project_gradient(self, grads: dict[str, Any], params: Mapping[str, Any],
                         epoch: int) -> dict[str, Any]:
        """Restrict the gradients to the allowed directions (default: unchanged)."""
        return grads
