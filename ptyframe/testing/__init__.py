"""Checks for component authors: adjoint (dot-product) and finite-difference gradient tests."""

from .checks import GradientCheckError, check_adjoint, check_gradient, inner, random_like

__all__ = ["GradientCheckError", "check_adjoint", "check_gradient", "inner", "random_like"]
