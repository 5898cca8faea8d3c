"""The plain far-field detector (no padding, no upsampling): the base of `far_field`.

Far field: Psi = FFT_ortho(exit wave), I = (1/K) sum_k sum_m |Psi_k,m|^2 on the model window, in
FFT pixel order (zero frequency at [0, 0]). Registered detectors (padding, upsampling, near
field) live in plugins; the ``far_field`` plugin extends this class.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ptyframe.components import Detector, ModelContext
from ptyframe.core.fused import PixelLoss
from ptyframe.io.data import Dataset

__all__ = ["OrthoFarField"]


class OrthoFarField(Detector):
    """Far-field diffraction on the model window (no padding, no upsampling).

    The object pixel is 1 / (N * dk) for an N-pixel detector of reciprocal pixel dk (1/Å).
    Works in place in the caller's workspace when one is given: the exit-wave buffer becomes
    the far-field buffer.
    """

    measurement_space = "diffraction"
    uses_workspace = True

    def object_pixel_size_A(self, experiment: Any, measured_shape: tuple[int, int]) -> float:
        return 1.0 / (int(measured_shape[-1]) * float(experiment.dk_inv_A))

    def to_detector_order(self, centred: np.ndarray) -> np.ndarray:
        return Dataset.centered_to_fft_order(centred)

    def from_detector_order(self, arrays: np.ndarray) -> np.ndarray:
        return np.fft.fftshift(arrays, axes=(-2, -1))

    def prepare(self, context: ModelContext) -> None:
        super().prepare(context)

    # ------------------------------------------------------------------ helpers for subclasses
    def _far_field_intensity(self, waves: Any, workspace: Any | None) -> tuple[Any, Any]:
        """(F, I): F the unnormalised FFT of ``waves`` (in place of ``waves`` when a workspace
        is given), Psi = F / sqrt(N) for N pixels; I (B, ny, nx) = (1/(K N)) sum |F|^2.

        The 1/sqrt(N) of the orthonormal transform is folded into the intensity and the
        adjoint (no scaling pass over the complex field)."""
        dev = self._device
        xp = dev.xp
        far = dev.fft2(waves, overwrite=workspace is not None)
        K = far.shape[0]
        flat = far.reshape(-1, *far.shape[2:])
        shape, rdt = flat.shape[1:], dev.real_dtype
        inten = (workspace.get("intensity", shape, rdt) if workspace is not None
                 else xp.empty(shape, dtype=rdt))
        work = None
        if flat.shape[0] > 1:
            work = (workspace.get("intensity_tmp", shape, rdt) if workspace is not None
                    else xp.empty(shape, dtype=rdt))
        npx = shape[-2] * shape[-1]
        dev.kernels.abs2_sum(flat, 1.0 / (K * npx), inten, work)
        return far, inten

    def _far_field_vjp(self, grad_intensity: Any, far: Any, in_place: bool) -> Any:
        """dL/d conj(exit) = IFFT_ortho(dL/dI Psi / K) = IFFT(dL/dI F / (K N)) with the
        unnormalised inverse (norm="forward")."""
        K = far.shape[0]
        scale = 1.0 / (K * far.shape[-2] * far.shape[-1])
        if in_place:
            self._device.kernels.multiply_real(far, grad_intensity, scale)
            return self._device.ifft2(far, norm="forward", overwrite=True)
        return self._device.ifft2(far * (grad_intensity * scale), norm="forward")

    # ------------------------------------------------------------------ Detector API
    def forward(self, waves: Any, indices: np.ndarray, keep: bool = True,
                workspace: Any | None = None) -> tuple[Any, Any]:
        far, inten = self._far_field_intensity(waves, workspace)
        return inten, ({"far": far, "in_place": workspace is not None} if keep else None)

    def vjp(self, grad_intensity: Any, cache: Any) -> Any:
        return self._far_field_vjp(grad_intensity, cache["far"], cache["in_place"])

    @property
    def fuses_pixel_loss(self) -> bool:
        return True

    def loss_and_vjp(self, waves: Any, indices: np.ndarray, measured: Any, loss: PixelLoss,
                     workspace: Any) -> tuple[float, Any]:
        """FFT in place, then intensity, loss, dL/dI and its product with the far field in
        one kernel (:meth:`ptyframe.core.fused.NumpyKernels.far_field_loss`), then the
        inverse FFT: the 1/(K N) of the intensity and of the adjoint as in :meth:`forward`
        and :meth:`vjp`. With ``Device.chunk_planes`` (planned FFTW on CPU) the three run
        chunk by chunk of measurements while the chunk is in cache (several fields: through
        a small contiguous buffer); the loss is then summed chunk by chunk."""
        dev = self._device
        K, M, B = waves.shape[:3]
        L = K * M
        window = waves.shape[-2:]
        npx = window[0] * window[1]
        scale = 1.0 / (K * npx)
        chunk = dev.chunk_planes(L * npx * waves.dtype.itemsize, waves.nbytes)
        if chunk is None or waves.ndim != 5 or not waves.flags.c_contiguous or chunk >= B:
            far = dev.fft2(waves, overwrite=True)
            flat = far.reshape(L, B, *window)
            shape, rdt = flat.shape[1:], dev.real_dtype
            work = workspace.get("intensity", shape, rdt)
            work2 = workspace.get("intensity_tmp", shape, rdt) if L > 1 else None
            value = dev.kernels.far_field_loss(flat, measured, loss, scale, scale, work, work2)
            return value, dev.ifft2(far, norm="forward", overwrite=True)
        flat = waves.reshape(L, B, *window)
        rdt = dev.real_dtype
        value = 0.0
        for b0 in range(0, B, chunk):
            b1 = min(b0 + chunk, B)
            c = b1 - b0
            if L == 1:
                planes = flat[0, b0:b1]  # contiguous (c, ny, nx): in place
            else:
                buf = workspace.get("far_chunk", (L, c, *window), waves.dtype)
                buf[...] = flat[:, b0:b1]
                planes = buf.reshape(L * c, *window)
            spec = dev.fft2(planes, overwrite=True)
            work = workspace.get("intensity", (c, *window), rdt)
            work2 = workspace.get("intensity_tmp", (c, *window), rdt) if L > 1 else None
            value += dev.kernels.far_field_loss(spec.reshape(L, c, *window), measured[b0:b1],
                                                loss, scale, scale, work, work2)
            out = dev.ifft2(spec, norm="forward", overwrite=True)
            if L > 1 or out is not planes:  # from the buffer, or not computed in place
                flat[:, b0:b1] = out.reshape(L, c, *window)
        return value, waves
