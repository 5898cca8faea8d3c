"""The Device's batch limit: cache-sized batches on CPU."""

import numpy as np
import pytest

from ptyframe.core.device import Device


def test_cpu_batch_fills_the_cache_budget_within_bounds():
    dev = Device("cpu", "single")
    plane = 64 * 64 * np.dtype(np.complex64).itemsize  # 32 KiB
    assert dev.batch_limit(plane) == dev.BATCH_BYTES // plane == 64
    assert dev.batch_limit(2 * plane) == 32  # complex128, or two probe modes
    assert dev.batch_limit(8) == dev.BATCH_MAX  # tiny windows: the old cap
    assert dev.batch_limit(10**9) == dev.BATCH_MIN  # huge windows: still a few per batch
    dev.BATCH_BYTES = 4 * plane
    assert dev.batch_limit(plane) == dev.BATCH_MIN


@pytest.mark.parametrize("bad", [0, -5])
def test_batch_limit_rejects_non_positive_sizes(bad):
    with pytest.raises(ValueError, match="bytes_per_position: expected a positive byte count"):
        Device("cpu", "single").batch_limit(bad)
