"""Fixtures of the constraint tests: ``cpu`` (``device``, CPU and GPU, is in tests/conftest.py)."""

from __future__ import annotations

import pytest

from ptyframe.core.device import Device


@pytest.fixture
def cpu() -> Device:
    return Device("cpu", "double")
