"""Losses on virtual-detector (compressed) data.

The data are K signals per measurement, ``m_k = sum_px M * mask_k`` (see
:func:`ptyframe.io.compression.compress`); the model is compressed the same way,
``c_k = sum_px I * mask_k``, by one matrix product per batch,
``c = I.reshape(B, -1) @ masks.reshape(K, -1).T``, and the gradient goes back by the transposed
product ``dL/dI = (dL/dc) @ masks``.

Masks
-----
``masks_path``: a ``.npy`` file (n_masks, my, mx), real, **centred** detector order (zero
frequency at (my // 2, mx // 2), like the patterns on disk; build them with
:func:`ptyframe.io.compression.annular_masks` or :func:`~ptyframe.io.compression.pixel_masks`). Or
``masks``: the same array in memory. In-memory masks are **not** serialised: ``to_config()``
then writes a placeholder string in ``masks`` that refuses to rebuild (save the array with
``numpy.save`` and give ``masks_path`` for a configuration that round-trips). Without masks
(the default) every pixel is its own mask and the losses equal their pixel-wise definitions.

``prepare(context)`` maps the masks to the pixel order of the modelled intensities
(``context.to_detector_order``) and moves them to ``context.device``; they are kept on the
instance, so **one instance serves one reconstruction**. With a context whose
``to_detector_order`` is None the masks are used in the order given (that of the intensities
passed in).

Measured data given to :meth:`prepare_measured` may be compressed, (N, K), or full patterns
(N, my, mx) in the order of the intensities, which are then compressed with the (prepared)
masks. ``detector_shape`` and ``n_masks`` tell a reconstruction the model window for (N, K)
data.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import attrs
import numpy as np

from ptyframe.components import LossMetric
from ptyframe.core.validators import npy_path, positive, to_float
from ptyframe.io.array_settings import load_npy

__all__ = ["CompressedLeastSquares", "CompressedGaussian", "CompressedPoisson"]

_IN_MEMORY = ("<in-memory masks {shape}: not serialised; save them with numpy.save and give "
              "masks_path>")


def _masks_array(value: Any, source: str) -> np.ndarray:
    if isinstance(value, str):
        raise ValueError(
            f"{source}: expected a numpy array (n_masks, my, mx) or None, found the string "
            f"{value!r}; in-memory masks are not serialised by to_config(): save them with "
            "numpy.save and give masks_path")
    try:
        masks = np.asarray(value)
    except Exception as exc:  # noqa: BLE001 - anything not array-like
        raise ValueError(f"{source}: expected an array (n_masks, my, mx), found "
                         f"{type(value).__name__}") from exc
    if masks.ndim != 3 or min(masks.shape) < 1:
        raise ValueError(f"{source}: expected shape (n_masks, my, mx), found {masks.shape}")
    if np.iscomplexobj(masks) or not (np.issubdtype(masks.dtype, np.number)
                                      or masks.dtype == bool):
        raise ValueError(f"{source}: expected real numbers, found dtype {masks.dtype}")
    masks = masks.astype(np.float64)
    if not np.all(np.isfinite(masks)):
        raise ValueError(f"{source}: contains NaN or infinite values")
    if not np.any(masks):
        raise ValueError(f"{source}: every mask is zero")
    return masks


@attrs.define(kw_only=True)
class _CompressedLoss(LossMetric):
    """Shared machinery: masks, compression of model and data, chain rule through the masks.

    * ``masks_path``: ``.npy`` file of the virtual-detector masks (n_masks, my, mx), real,
      centred (None: every pixel is its own mask, unless ``masks`` gives them in memory)

    Subclasses implement :meth:`compressed_value_and_grad` (L and dL/dc from c and the
    prepared compressed data) and may transform the data in :meth:`prepare_compressed`.
    """

    #: the loss needs c >= 0 (square root, logarithm): masks must be non-negative
    needs_non_negative: ClassVar[bool] = False
    can_overwrite = True

    masks_path: str | None = attrs.field(default=None, converter=npy_path())
    _masks: Any = attrs.field(default=None, alias="masks", repr=False, eq=False)
    #: host masks (K, my, mx) float64, centred
    _host_masks: Any = attrs.field(default=None, init=False, repr=False, eq=False)
    #: masks (K, my*mx) in the intensities' pixel order, on the device, once prepared/used
    _weights: Any = attrs.field(default=None, init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if self._masks is not None and self.masks_path is not None:
            raise ValueError("masks: expected either masks (an array) or masks_path, found both")
        if self.masks_path is not None:
            loaded = load_npy("masks_path", self.masks_path, finite=False)
            self._host_masks = _masks_array(loaded, "masks_path")
        elif self._masks is not None:
            self._host_masks = _masks_array(self._masks, "masks")
        if (self.needs_non_negative and self._host_masks is not None
                and float(self._host_masks.min()) < 0):
            raise ValueError(f"masks: {self.name} needs non-negative masks (it takes sqrt/log "
                             f"of the compressed signal), found a minimum of "
                             f"{float(self._host_masks.min()):.3g}")

    # ------------------------------------------------------------------ description
    def to_config(self) -> dict[str, Any]:
        config = super().to_config()
        if self._masks is not None:
            config["masks"] = _IN_MEMORY.format(shape=tuple(self._host_masks.shape))
        return config

    @property
    def detector_shape(self) -> tuple[int, int] | None:
        """(my, mx) of the masks, i.e. of the modelled patterns; None without masks."""
        if self._host_masks is None:
            return None
        return (int(self._host_masks.shape[1]), int(self._host_masks.shape[2]))

    @property
    def n_masks(self) -> int | None:
        """Number K of virtual-detector signals per measurement; None without masks."""
        return None if self._host_masks is None else int(self._host_masks.shape[0])

    @property
    def masks(self) -> np.ndarray | None:
        """The masks (K, my, mx) as given (centred, host float64), or None."""
        return self._host_masks

    # ------------------------------------------------------------------ preparation
    def prepare(self, context: Any) -> None:
        """Masks in the intensities' pixel order (``context.to_detector_order``), on
        ``context.device``, in its real precision; checks them against
        ``context.measured_shape`` ((K,) for compressed data, (my, mx) for patterns)."""
        super().prepare(context)
        if self._host_masks is None:
            self._weights = None
            return
        K, my, mx = self._host_masks.shape
        shape = tuple(int(s) for s in (context.measured_shape or ()))
        if shape and shape not in ((K,), (my, mx)):
            raise ValueError(f"masks: expected measurements of shape ({K},) (compressed) or "
                             f"({my}, {mx}) (patterns) for masks {self._host_masks.shape}, "
                             f"found {shape}")
        ordered = self._host_masks
        if context.to_detector_order is not None:
            ordered = np.asarray(context.to_detector_order(ordered))
        self._weights = self.device.real(np.ascontiguousarray(ordered.reshape(K, my * mx)))

    def _weights_for(self, dtype: Any) -> Any:
        """(K, px) masks in ``dtype`` on the device (None: pixel-wise)."""
        if self._host_masks is None:
            return None
        w = self._weights
        if w.dtype != dtype:
            w = w.astype(dtype)
        return w

    def compress_measured(self, measured: Any) -> Any:
        """(N, K) compressed data from compressed data (returned as is) or patterns."""
        n_px = None if self._host_masks is None else (self._host_masks.shape[1]
                                                      * self._host_masks.shape[2])
        K = self.n_masks
        if measured.ndim == 3 and (self.detector_shape is None
                                   or tuple(measured.shape[1:]) == self.detector_shape):
            flat = measured.reshape(measured.shape[0], -1)
            w = self._weights_for(measured.dtype)
            return flat if w is None else self.device.xp.matmul(flat, w.T)
        if measured.ndim == 2 and (K is None or measured.shape[1] == K):
            return measured
        expected = ("(N, n_pixels) or (N, my, mx)" if K is None
                    else f"(N, {K}) or (N, {self.detector_shape[0]}, {self.detector_shape[1]})")
        raise ValueError(f"measured: expected shape {expected}, found {measured.shape}"
                         + ("" if n_px is None else f" (masks {self._host_masks.shape})"))

    def prepare_measured(self, measured: Any) -> Any:
        return self.prepare_compressed(self.compress_measured(measured))

    def prepare_compressed(self, compressed: Any) -> Any:
        """Hook on the compressed data (N, K) once; default: unchanged."""
        return compressed

    def _check_non_negative(self, compressed: Any) -> None:
        if compressed.size and float(compressed.min()) < 0:
            raise ValueError(f"measured: {self.name} needs compressed signals >= 0, found a "
                             f"minimum of {float(compressed.min()):.3g}")

    # ------------------------------------------------------------------ evaluation
    @abc.abstractmethod
    def compressed_value_and_grad(self, c: Any, prepared: Any) -> tuple[float, Any]:
        """L and dL/dc (B, K), a new array; ``c`` must not be modified."""
        ...

    def value_and_grad(self, intensity: Any, measured: Any,
                       overwrite: bool = False) -> tuple[float, Any]:
        xp = self.device.xp
        B = intensity.shape[0]
        flat = intensity.reshape(B, -1)
        w = self._weights_for(intensity.dtype)
        if w is not None and flat.shape[1] != w.shape[1]:
            raise ValueError(f"intensity: expected patterns of {self.detector_shape} pixels "
                             f"(the masks), found shape {intensity.shape[1:]}")
        c = flat if w is None else xp.matmul(flat, w.T)  # (B, K)
        if measured.shape != c.shape:
            raise ValueError(f"measured: expected compressed data of shape {c.shape}, found "
                             f"{measured.shape}")
        value, dldc = self.compressed_value_and_grad(c, measured)
        if w is None:
            return value, dldc.reshape(intensity.shape)
        # a C-contiguous intensity reshapes to a view: the gradient may take its memory
        out = flat if (overwrite and intensity.flags.c_contiguous) else None
        grad = xp.matmul(dldc, w, out=out)  # dL/dI = (dL/dc) @ masks
        return value, grad.reshape(intensity.shape)


@attrs.define(kw_only=True)
class CompressedLeastSquares(_CompressedLoss):
    """Least squares on virtual-detector signals: L = sum_k (c_k - m_k)^2.

    c_k = sum_px I mask_k (model), m_k the measured signals; dL/dI = sum_k 2 (c_k - m_k) mask_k.
    Any real masks (signed ones, e.g. difference or centre-of-mass masks, included). See the
    module docstring for ``masks_path`` / ``masks`` (centred (n_masks, my, mx)).

    * ``masks_path``: ``.npy`` file of the virtual-detector masks (n_masks, my, mx), real,
      centred (None: every pixel is its own mask, unless ``masks`` gives them in memory)
      [masks]
    """

    name = "lsq_compressed"

    def compressed_value_and_grad(self, c: Any, prepared: Any) -> tuple[float, Any]:
        xp = self.device.xp
        diff = c - prepared
        value = float(xp.sum(diff * diff, dtype=xp.float64))
        diff *= 2.0
        return value, diff


@attrs.define(kw_only=True)
class CompressedGaussian(_CompressedLoss):
    """Amplitude least squares on virtual-detector signals:
    L = sum_k (sqrt(c_k + eps) - sqrt(m_k))^2, dL/dc = 1 - sqrt(m) / sqrt(c + eps).

    * ``epsilon``: signal floor eps added to the model, counts (> 0); keeps the gradient
      finite where the model signal is ~0
    * ``masks_path``: ``.npy`` file of the virtual-detector masks (n_masks, my, mx), real,
      non-negative, centred (None: every pixel is its own mask)
    """

    name = "gaussian_compressed"
    needs_non_negative: ClassVar[bool] = True
    epsilon: float = attrs.field(default=1e-6, converter=to_float, validator=positive())

    def prepare_compressed(self, compressed: Any) -> Any:
        self._check_non_negative(compressed)
        return self.device.xp.sqrt(compressed)

    def compressed_value_and_grad(self, c: Any, prepared: Any) -> tuple[float, Any]:
        xp = self.device.xp
        # ``prepared`` holds sqrt(m)
        amp = xp.sqrt(c + self.epsilon)
        diff = amp - prepared
        value = float(xp.sum(diff * diff, dtype=xp.float64))
        return value, xp.divide(diff, amp, out=diff)


@attrs.define(kw_only=True)
class CompressedPoisson(_CompressedLoss):
    """Poisson negative log-likelihood of virtual-detector signals:
    L = sum_k (c_k + eps) - m_k log(c_k + eps) - (m_k - m_k log m_k), dL/dc = 1 - m / (c + eps).

    The last term (0 log 0 = 0) only depends on the data: it makes L >= 0 and ~0 at c = m
    without changing the gradient (up to it, L = sum c - m log(c + eps)).

    * ``epsilon``: signal floor eps added to the model, counts (> 0), as for ``ml``
    * ``masks_path``: ``.npy`` file of the virtual-detector masks (n_masks, my, mx), real,
      non-negative, centred (None: every pixel is its own mask)
    """

    name = "poisson_compressed"
    needs_non_negative: ClassVar[bool] = True
    epsilon: float = attrs.field(default=1e-2, converter=to_float, validator=positive())

    def prepare_compressed(self, compressed: Any) -> Any:
        self._check_non_negative(compressed)
        return compressed

    def compressed_value_and_grad(self, c: Any, prepared: Any) -> tuple[float, Any]:
        xp = self.device.xp
        m = prepared
        floored = c + self.epsilon
        log_m = xp.log(xp.where(m > 0, m, 1))  # m log m -> 0 at m = 0
        value = float(xp.sum(floored - m * xp.log(floored) - m + m * log_m, dtype=xp.float64))
        grad = xp.divide(m, floored, out=floored)
        xp.subtract(1.0, grad, out=grad)
        return value, grad
