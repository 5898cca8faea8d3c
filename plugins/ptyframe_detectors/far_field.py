"""Far-field detector with on-the-fly padding (data_pad) and pattern upsampling."""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from ptyframe.core.validators import non_negative_int, positive_int

from .ortho_far_field import OrthoFarField

__all__ = ["FarFieldDetector"]


@attrs.define
class FarFieldDetector(OrthoFarField):
    """Far-field diffraction, I = (1/K) sum_k sum_m |FFT_ortho(psi_k,m)|^2, compared with the
    measured N x N patterns.

    * ``pad_px``: measured detector pixels added on each side of the modelled pattern, >= 0;
      never compared with data (the reference's data_pad / upsample_pattern) [data_pad]
    * ``upsample``: integer factor (>= 1) by which the model detector is finer than the
      measured one [upsample_pattern]

    Padding: the model works on a detector grid of N + 2 pad_px pixels per side, so the object
    pixel shrinks to 1 / ((N + 2 pad_px) dk); the padding was never measured, so the modelled
    intensity there is *not* compared with zeros (the loss sees the central N x N pixels
    only), unlike a zero-padded dataset. Upsampling: the model window is upsample (N + 2
    pad_px) with the same object pixel, and each measured pixel is the sum of its upsample x
    upsample block, centred on the zero frequency (exactly for odd factors, half a fine pixel
    off for even ones). With pad_px = 0 and upsample = 1 this is the plain far field.
    """

    name = "far_field"

    pad_px: int = attrs.field(default=0, validator=non_negative_int())
    upsample: int = attrs.field(default=1, validator=positive_int())

    @property
    def _plain(self) -> bool:
        return self.pad_px == 0 and self.upsample == 1

    def model_window(self, measured_shape: tuple[int, int]) -> tuple[int, int]:
        return tuple(self.upsample * (int(n) + 2 * self.pad_px) for n in measured_shape[-2:])

    def object_pixel_size_A(self, experiment: Any, measured_shape: tuple[int, int]) -> float:
        return 1.0 / ((int(measured_shape[-1]) + 2 * self.pad_px) * float(experiment.dk_inv_A))

    def prepare(self, context: Any) -> None:
        super().prepare(context)
        window = tuple(int(n) for n in context.window)
        measured = tuple(int(n) for n in (context.measured_shape or window)[-2:])
        if self._plain:
            if window != measured:
                raise ValueError(f"far_field: model window {window} differs from the measured "
                                 f"shape {measured}; expected equal without pad_px/upsample")
            return
        expected = self.model_window(measured)
        if window != expected:
            raise ValueError(f"far_field: model window {window} does not match measured shape "
                             f"{measured} with pad_px={self.pad_px}, upsample={self.upsample}: "
                             f"expected {expected}")
        self._measured = measured

    # ------------------------------------------------------------ fine grid <-> measured grid
    def _reduce(self, fine: Any) -> Any:
        """Fine-grid intensities (B, W, W) in FFT order -> measured grid (B, N, N) FFT order."""
        xp = self._device.xp
        u, p = self.upsample, self.pad_px
        (n_y, n_x) = self._measured
        c = xp.fft.fftshift(fine, axes=(-2, -1))
        if u > 1:
            c = xp.roll(c, (u // 2, u // 2), axis=(-2, -1))
            B, W, V = c.shape
            c = c.reshape(B, W // u, u, V // u, u).sum(axis=(2, 4))
        c = c[:, p:p + n_y, p:p + n_x]
        return xp.fft.ifftshift(c, axes=(-2, -1))

    def _expand_centred(self, centred: Any, xp: Any) -> Any:
        """Centred measured grid (B, N, N) -> centred fine grid: zero padding around, each
        pixel repeated over its upsample x upsample block (the adjoint of the block sum)."""
        u, p = self.upsample, self.pad_px
        B, n_y, n_x = centred.shape
        c = xp.zeros((B, n_y + 2 * p, n_x + 2 * p), dtype=centred.dtype)
        c[:, p:p + n_y, p:p + n_x] = centred
        if u > 1:
            B, W, V = c.shape
            c = xp.broadcast_to(c[:, :, None, :, None], (B, W, u, V, u)).reshape(B, W * u,
                                                                                  V * u)
            c = xp.roll(c, (-(u // 2), -(u // 2)), axis=(-2, -1))
        return c

    def _expand(self, grad: Any) -> Any:
        """Adjoint of :meth:`_reduce`."""
        xp = self._device.xp
        c = self._expand_centred(xp.fft.fftshift(grad, axes=(-2, -1)), xp)
        return xp.ascontiguousarray(xp.fft.ifftshift(c, axes=(-2, -1)))

    def pattern_on_model_grid(self, centred: np.ndarray) -> np.ndarray:
        """Counts spread evenly over each pixel's sub-pixels, zeros in the padding."""
        if self._plain:
            return centred
        return self._expand_centred(np.asarray(centred)[None], np)[0] / self.upsample**2

    def forward(self, waves: Any, indices: np.ndarray, keep: bool = True,
                workspace: Any | None = None) -> tuple[Any, Any]:
        far, inten = self._far_field_intensity(waves, workspace)
        cache = {"far": far, "in_place": workspace is not None} if keep else None
        if self._plain:
            return inten, cache
        return self._reduce(inten), cache

    @property
    def fuses_pixel_loss(self) -> bool:
        return self._plain  # padding / upsampling: intensities are reduced before the loss

    def vjp(self, grad_intensity: Any, cache: Any) -> Any:
        if not self._plain:
            grad_intensity = self._expand(grad_intensity)
        return self._far_field_vjp(grad_intensity, cache["far"], cache["in_place"])
