"""Virtual-detector compression of diffraction patterns.

A *virtual detector* is a stack of real masks ``masks`` (K, my, mx) on the detector grid; the
compressed signal of a pattern M is ``m_k = sum_px M * mask_k`` (counts, when M is in counts).
Storing K signals per scan point instead of my * mx pixels shrinks a 4D-STEM dataset by
``my * mx / K``; the compressed losses of ``ptyframe_losses`` fit the model to such signals.

Conventions
-----------
* Patterns and masks are **centred** (zero frequency at pixel (my // 2, mx // 2)), the file
  convention of ptyframe; the losses convert masks to the model's pixel order themselves.
* Mask builders take radii in **detector pixels** by default; pass ``pixel_size`` (the size of
  one detector pixel in the unit of the radii, e.g. the reciprocal pixel size in 1/Å, or the
  angular pixel size in mrad) to give radii in 1/Å or mrad instead.
* Angles are radians, measured from the +x axis (detector column index increasing) towards +y
  (row index increasing): ``phi = atan2(y, x)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["compress", "annular_masks", "pixel_masks"]

#: default amount of pattern data read per chunk by :func:`compress`, bytes
DEFAULT_CHUNK_BYTES = 64 * 2**20


def _check_masks(masks: np.ndarray, name: str = "masks") -> np.ndarray:
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.shape[0] < 1:
        raise ValueError(f"{name}: expected a real array (n_masks, my, mx), found shape "
                         f"{masks.shape}")
    if np.iscomplexobj(masks) or not np.issubdtype(masks.dtype, np.number):
        raise ValueError(f"{name}: expected real numbers, found dtype {masks.dtype}")
    if not np.all(np.isfinite(masks)):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return masks


def compress(patterns: np.ndarray, masks: np.ndarray, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
             dtype: type = np.float64) -> np.ndarray:
    """Virtual-detector signals ``out[..., k] = sum_px patterns[..., :, :] * masks[k]``.

    ``patterns``: (..., my, mx), e.g. (N, my, mx) or (sy, sx, my, mx), centred; may be a
    ``np.memmap`` (or any array supporting slicing along the first axis): it is read in chunks
    of about ``chunk_bytes`` and never loaded whole. ``masks``: (K, my, mx) real, same pixel
    order as the patterns. Returns ``(..., K)`` in ``dtype`` (default float64: sums of many
    float32 counts keep their precision). Each chunk is one matrix product
    ``(n, my*mx) @ (my*mx, K)``.
    """
    masks = _check_masks(masks)
    shape = tuple(int(s) for s in np.shape(patterns))
    if len(shape) < 2 or shape[-2:] != masks.shape[1:]:
        raise ValueError(f"patterns: expected shape (..., {masks.shape[1]}, {masks.shape[2]}) "
                         f"matching the masks, found {shape}")
    if not (isinstance(chunk_bytes, (int, np.integer)) and chunk_bytes > 0):
        raise ValueError(f"chunk_bytes: expected a positive integer, found {chunk_bytes!r}")
    n_px = masks.shape[1] * masks.shape[2]
    weights = masks.reshape(masks.shape[0], n_px).astype(dtype, copy=False).T  # (px, K)
    lead = shape[:-2]
    if len(lead) == 0:
        return np.asarray(patterns, dtype=dtype).reshape(1, n_px).dot(weights)[0]
    out = np.empty((*lead, masks.shape[0]), dtype=dtype)
    # iterate over the first axis in chunks; the remaining leading axes ride along
    per_row = int(np.prod(shape[1:-2], dtype=np.int64)) * n_px
    itemsize = max(np.dtype(getattr(patterns, "dtype", np.float64)).itemsize,
                   np.dtype(dtype).itemsize)
    rows = max(1, int(chunk_bytes) // max(1, per_row * itemsize))
    for start in range(0, lead[0], rows):
        stop = min(start + rows, lead[0])
        block = np.asarray(patterns[start:stop], dtype=dtype)
        flat = block.reshape(-1, n_px)
        out[start:stop] = flat.dot(weights).reshape(stop - start, *lead[1:], masks.shape[0])
    return out


def _shape2(shape: Sequence[int]) -> tuple[int, int]:
    try:
        my, mx = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape: expected (my, mx) detector pixels, found {shape!r}") from None
    if my < 1 or mx < 1:
        raise ValueError(f"shape: expected positive sizes, found {shape!r}")
    return my, mx


def annular_masks(shape: Sequence[int], radii: Sequence[float],
                  n_sectors: int | Sequence[int] = 1, *, pixel_size: float = 1.0,
                  centre: Sequence[float] | None = None, rotation_rad: float = 0.0
                  ) -> np.ndarray:
    """Rings split into angular sectors: binary masks (K, my, mx), float64, centred.

    ``radii``: increasing ring edges r_0 < r_1 < ... < r_R; ring i holds the pixels whose
    centre lies at ``r_i <= r < r_{i+1}`` from ``centre`` (r_0 = 0 makes the first ring a
    disk). Radii are in detector pixels, or in the unit of ``pixel_size`` (the size of one
    detector pixel in 1/Å or mrad). ``n_sectors``: sectors per ring (one int for all, or one per
    ring); sector j of a ring covers angles ``rotation_rad + [j, j + 1) * 2 pi / n`` (radians,
    from +x towards +y). ``centre``: (y, x) pixel of zero frequency, default (my // 2, mx // 2).
    Masks are ordered ring by ring, sectors in increasing angle; each pixel belongs to at most
    one mask.
    """
    my, mx = _shape2(shape)
    edges = np.asarray(radii, dtype=float).ravel()
    if edges.size < 2 or not np.all(np.isfinite(edges)) or edges[0] < 0 or np.any(
            np.diff(edges) <= 0):
        raise ValueError(f"radii: expected at least 2 increasing ring edges >= 0, found "
                         f"{list(edges)}")
    if not (np.isfinite(pixel_size) and pixel_size > 0):
        raise ValueError(f"pixel_size: expected a number > 0, found {pixel_size!r}")
    n_rings = edges.size - 1
    sectors = np.broadcast_to(np.asarray(n_sectors), (n_rings,)) if np.ndim(n_sectors) == 0 \
        else np.asarray(n_sectors)
    if sectors.shape != (n_rings,) or not np.all(sectors == np.round(sectors)) or np.any(
            sectors < 1):
        raise ValueError(f"n_sectors: expected a positive integer or one per ring ({n_rings}), "
                         f"found {n_sectors!r}")
    cy, cx = (my // 2, mx // 2) if centre is None else (float(centre[0]), float(centre[1]))
    y = (np.arange(my) - cy)[:, None]
    x = (np.arange(mx) - cx)[None, :]
    r = np.hypot(y, x) * float(pixel_size)
    phi = np.mod(np.arctan2(y, x) - float(rotation_rad), 2 * np.pi)
    masks = []
    for i in range(n_rings):
        ring = (r >= edges[i]) & (r < edges[i + 1])
        n = int(sectors[i])
        index = np.minimum((phi * (n / (2 * np.pi))).astype(int), n - 1)
        for j in range(n):
            masks.append((ring & (index == j)).astype(float))
    return np.stack(masks)


def pixel_masks(shape: Sequence[int], bin_factor: int = 1,
                support: np.ndarray | None = None) -> np.ndarray:
    """One mask per (binned) detector pixel: (K, my, mx) float64 of 0/1, centred.

    ``bin_factor`` b: each mask covers a b x b block of pixels (blocks at the far edges are
    smaller when b does not divide the shape); b = 1 gives the identity (K = my * mx), for
    which compressed losses equal their pixel-wise counterparts. ``support``: optional boolean
    (my, mx); only its pixels take part and blocks without any are dropped (e.g. keep the
    bright-field disk only). Masks are ordered row-major over the blocks.
    """
    my, mx = _shape2(shape)
    if not (isinstance(bin_factor, (int, np.integer)) and bin_factor >= 1):
        raise ValueError(f"bin_factor: expected an integer >= 1, found {bin_factor!r}")
    keep = np.ones((my, mx), dtype=bool) if support is None else np.asarray(support, bool)
    if keep.shape != (my, mx):
        raise ValueError(f"support: expected shape {(my, mx)}, found {keep.shape}")
    by = np.arange(my) // bin_factor
    bx = np.arange(mx) // bin_factor
    block = by[:, None] * (-(-mx // bin_factor)) + bx[None, :]
    ids = np.unique(block[keep])
    if ids.size == 0:
        raise ValueError("support: selects no pixel")
    masks = (block[None] == ids[:, None, None]) & keep[None]
    return masks.astype(float)
