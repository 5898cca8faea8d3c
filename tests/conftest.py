"""Fixtures shared by the whole suite: ``device`` runs a test on the CPU (double precision)
and, where CuPy and a CUDA device exist, on the GPU."""

from __future__ import annotations

import functools

import pytest

from ptyframe.core.device import Device, cupy_available


@functools.cache
def _gpu() -> bool:
    return cupy_available()


@pytest.fixture(params=[pytest.param("cpu"), pytest.param("gpu", marks=pytest.mark.gpu)])
def device(request) -> Device:
    if request.param == "gpu" and not _gpu():
        pytest.skip("needs CuPy and a CUDA device")
    return Device(request.param, "double")
