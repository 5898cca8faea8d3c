"""Checks for component authors: adjoint (dot-product) and finite-difference gradient tests,
and a minimal context to prepare a component outside a reconstruction."""

from .checks import (
    GradientCheckError,
    check_adjoint,
    check_gradient,
    inner,
    model_context,
    prepared,
    random_like,
)

__all__ = ["GradientCheckError", "check_adjoint", "check_gradient", "inner", "model_context",
           "prepared", "random_like"]
