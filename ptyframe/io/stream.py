"""Patterns streamed from a :class:`~ptyframe.io.data.Dataset` batch by batch.

A :class:`PatternStream` is what a reconstruction reads its measurements through when they
are not kept in memory (``ReadingSpec.load_one_by_one``). Host memory is bounded by the
batches in flight: the batch being computed plus at most ``prefetch`` batches read ahead by
one background thread (double buffering with ``prefetch=1``), whatever the scan size. The
reads (HDF5 decompression, preprocessing) overlap the computation of the current batch where
the compute releases the GIL (NumPy/SciPy FFTs, CuPy kernels).
"""

from __future__ import annotations

import concurrent.futures
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ptyframe.io.data import DataError, Dataset

__all__ = ["PatternStream"]


class PatternStream:
    """Reads measurement rows of ``dataset`` on demand, optionally ahead of use.

    ``transform``: applied to each batch after reading (e.g. the detector's pixel order);
    ``prefetch``: batches read ahead by a background thread during :meth:`stream`
    (0: read synchronously); ``dtype``: host type of the patterns.
    Calling the stream with indices reads those rows synchronously.
    """

    def __init__(self, dataset: Dataset, transform: Callable[[np.ndarray], Any] | None = None,
                 prefetch: int = 1, dtype: Any = np.float32) -> None:
        if not isinstance(dataset, Dataset):
            raise DataError(f"dataset: expected a Dataset, found {type(dataset).__name__}")
        if isinstance(prefetch, bool) or not isinstance(prefetch, (int, np.integer)) \
                or prefetch < 0:
            raise DataError(f"prefetch: expected an integer >= 0 (batches read ahead), found "
                            f"{prefetch!r}")
        self.dataset = dataset
        self.transform = transform
        self.prefetch = int(prefetch)
        self.dtype = dtype

    def __call__(self, indices: np.ndarray) -> Any:
        """Rows ``indices`` (preprocessed, transformed), read now."""
        rows = self.dataset.read(indices, self.dtype)
        return rows if self.transform is None else self.transform(rows)

    def stream(self, batches: Sequence[np.ndarray]) -> Iterator[Any]:
        """The rows of each batch in turn; with ``prefetch > 0`` the next batches are read
        in a background thread while the caller computes the current one. Stopping early
        (break, exception) cancels the reads not yet started."""
        if self.prefetch == 0 or len(batches) < 2:
            for idx in batches:
                yield self(idx)
            return
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                     thread_name_prefix="ptyframe-read")
        pending: deque[concurrent.futures.Future[Any]] = deque()
        try:
            upcoming = iter(batches)
            pending.append(pool.submit(self, next(upcoming)))
            while pending:
                rows = pending.popleft().result()
                while len(pending) < self.prefetch:
                    nxt = next(upcoming, None)
                    if nxt is None:
                        break
                    pending.append(pool.submit(self, nxt))
                yield rows
                del rows
        finally:
            for future in pending:
                future.cancel()
            pool.shutdown(wait=True)
