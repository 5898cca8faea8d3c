"""Near-field (focal-series) detector: real-space images of the exit wave at a defocus."""

from __future__ import annotations

from numbers import Real
from typing import Any, ClassVar

import attrs
import numpy as np

from ptyframe.components import Detector, ModelContext
from ptyframe.core.physics import aberration_function, spatial_frequencies

__all__ = ["NearFieldDetector"]

#: transfer functions of at most this many pixels (all defocus values together) are kept on the
#: device; beyond, each batch computes its own
_MAX_PRECOMPUTED_PIXELS = 1 << 24


def _positive(_inst: Any, attribute: attrs.Attribute, value: float) -> None:
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name}: expected a positive number (Å), found {value!r}")


def _finite(_inst: Any, attribute: attrs.Attribute, value: float) -> None:
    if not np.isfinite(value):
        raise ValueError(f"{attribute.name}: expected a finite number (Å), found {value!r}")


def _non_negative(_inst: Any, attribute: attrs.Attribute, value: float) -> None:
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"{attribute.name}: expected a non-negative angle (radians), "
                         f"found {value!r}")


def _defocus(value: Any) -> float | tuple[float, ...]:
    """One defocus (float) or one per measurement (tuple of floats), Å, all finite."""
    scalar = isinstance(value, (Real, np.number)) or (isinstance(value, np.ndarray)
                                                       and value.ndim == 0)
    if scalar and not isinstance(value, (bool, np.bool_)):
        values: Any = float(value)
        check = (values,)
    else:
        try:
            values = tuple(float(v) for v in np.asarray(value, dtype=float).ravel())
        except (TypeError, ValueError):
            values = ()
        check = values
        if np.ndim(value) != 1:
            check = ()
    if not check or not all(np.isfinite(v) for v in check):
        raise ValueError("defocus_A: expected a finite defocus in Å or a list with one per "
                         f"measurement, found {value!r}")
    return values


@attrs.define(kw_only=True)
class NearFieldDetector(Detector):
    """Focal series: each measurement is a real-space image of the exit wave at a defocus.

    Defocus convention (the project's one, shared with the probe and abTEM/Kirkland):
    df = -C10, positive = underfocus. Field of measurement n: psi_n = IFFT[FFT(exit) H_n],
    H_n(q) = exp(-i chi_n(q)), chi_n = 2 pi / lambda (C10 a^2 / 2 + Cs a^4 / 4), a = lambda q,
    C10 = -df_n (q in 1/Å, no band limit, |H| = 1), i.e.
    H_n(q) = exp(+i pi lambda df_n q^2) exp(-i pi Cs lambda^3 q^4 / 2).
    Without Cs this is a free-space propagation over dz = -df_n with the multislice kernel
    exp(-i pi lambda dz q^2): an underfocused image (df > 0) shows the wave a distance df
    *upstream* of the exit surface. (The reference tool's ``defocus_array`` is that distance
    dz = +C10; the migration flips its sign.)
    Image: I_n = D_n * [(1/K) sum_k sum_m |psi_n,k,m|^2], where the partial-coherence envelope
    D_n(q) = exp(-q^2 (pi alpha df_n)^2) multiplies the intensity spectrum (a real, even
    filter: the image stays real and its total, the flux, is kept since D_n(0) = 1).
    Images are compared in natural pixel order (no shift), on the model window.

    * ``pixel_size_A``: pixel size of the images (= the object pixel), Å; required
      [pixel_size_x_A]
    * ``defocus_A``: defocus df_n = -C10, Å, positive = underfocus: one value for every
      measurement or a list with one per measurement (the reference's defocus_array with its
      sign flipped); required [defocus_array]
    * ``cs_A``: spherical aberration Cs of the imaging, Å [Cs]
    * ``alpha``: illumination semi-angle of the partial-coherence envelope, radians (>= 0, 0 =
      coherent) [alpha_near_field]
    """

    name = "near_field"
    measurement_space: ClassVar[str] = "image"
    uses_workspace: ClassVar[bool] = True

    pixel_size_A: float = attrs.field(converter=float, validator=_positive)
    defocus_A: float | tuple[float, ...] = attrs.field(converter=_defocus)
    cs_A: float = attrs.field(default=0.0, converter=float, validator=_finite)
    alpha: float = attrs.field(default=0.0, converter=float, validator=_non_negative)
    _device: Any = attrs.field(default=None, init=False, repr=False)
    _window: tuple[int, int] | None = attrs.field(default=None, init=False, repr=False)
    _lookup: np.ndarray | None = attrs.field(default=None, init=False, repr=False)
    _unique_defocus: np.ndarray | None = attrs.field(default=None, init=False, repr=False)
    _q2: Any = attrs.field(default=None, init=False, repr=False)
    _aberration: Any = attrs.field(default=None, init=False, repr=False)
    _transfer: Any = attrs.field(default=None, init=False, repr=False)
    _damping: Any = attrs.field(default=None, init=False, repr=False)
    _wavelength_A: float = attrs.field(default=0.0, init=False, repr=False)

    # ------------------------------------------------------------------ calibration
    def object_pixel_size_A(self, experiment: Any, measured_shape: tuple[int, int]) -> float:
        """The image pixel, ``pixel_size_A`` (images and object share one grid)."""
        return self.pixel_size_A

    def defocus_per_measurement(self, n_measurements: int) -> np.ndarray:
        """Defocus df_n (Å) of every measurement, (n_measurements,)."""
        if isinstance(self.defocus_A, float):
            return np.full(n_measurements, self.defocus_A)
        values = np.asarray(self.defocus_A, dtype=float)
        if values.size == 1:
            return np.full(n_measurements, values[0])
        if values.size != n_measurements:
            raise ValueError(f"defocus_A: expected one value or one per measurement "
                             f"({n_measurements}), found {values.size} values")
        return values

    # ------------------------------------------------------------------ setup
    def prepare(self, context: ModelContext) -> None:
        super().prepare(context)
        dev = context.device
        xp = dev.xp
        ny, nx = (int(s) for s in context.window)
        defocus = self.defocus_per_measurement(int(context.n_measurements))
        if not np.isclose(context.pixel_size_A, self.pixel_size_A, rtol=1e-6, atol=0.0):
            raise ValueError(f"pixel_size_A: the model's object pixel ({context.pixel_size_A} Å)"
                             f" differs from the detector's ({self.pixel_size_A} Å)")
        self._device = dev
        self._window = (ny, nx)
        self._wavelength_A = float(context.wavelength_A)
        self._unique_defocus, self._lookup = np.unique(defocus, return_inverse=True)
        qy, qx = spatial_frequencies((ny, nx), context.pixel_size_A, sparse=True)
        q2 = qy**2 + qx**2
        lam = self._wavelength_A
        self._q2 = dev.real(q2)
        # exp(-i pi Cs lambda^3 q^4 / 2) = exp(-i chi) with C30 = Cs
        self._aberration = dev.complex(np.exp(-1j * aberration_function(qy, qx, lam,
                                                                         {"C30": self.cs_A})))
        self._transfer = self._damping = None
        if self._unique_defocus.size * ny * nx <= _MAX_PRECOMPUTED_PIXELS:
            self._transfer, self._damping = self._filters(xp.asarray(self._unique_defocus))

    def _filters(self, defocus: Any) -> tuple[Any, Any]:
        """Transfer functions H = exp(-i chi) (U, ny, nx) and dampings D (U, ny, nx) (None
        when alpha = 0) for the defocus values ``defocus`` (U,) Å, on the device."""
        dev = self._device
        xp = dev.xp
        df = defocus.astype(dev.real_dtype)[:, None, None]
        # -chi of the defocus term: -pi lambda C10 q^2 = +pi lambda df q^2 (C10 = -df)
        phase = (np.pi * self._wavelength_A) * df * self._q2
        transfer = xp.empty(phase.shape, dtype=dev.complex_dtype)
        xp.cos(phase, out=transfer.real)
        xp.sin(phase, out=transfer.imag)
        transfer *= self._aberration
        damping = None
        if self.alpha > 0:
            damping = xp.exp(-self._q2 * (np.pi * self.alpha * df) ** 2).astype(dev.real_dtype)
        return transfer, damping

    def _batch_filters(self, indices: np.ndarray) -> tuple[Any, Any]:
        """H and D of a batch: (B, ny, nx), or (ny, nx) when the batch shares one defocus."""
        if self._lookup is None:
            raise ValueError("near_field: prepare(context) must be called before forward")
        idx = np.asarray(indices, dtype=np.int64).ravel()
        n = self._lookup.size
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"indices: expected measurement numbers in [0, {n}), found "
                             f"{idx.min()}..{idx.max()}")
        unique = self._lookup[idx]
        xp = self._device.xp
        if unique.size and np.all(unique == unique[0]):
            if self._transfer is not None:
                d = None if self._damping is None else self._damping[int(unique[0])]
                return self._transfer[int(unique[0])], d
            h, d = self._filters(xp.asarray(self._unique_defocus[unique[:1]]))
            return h[0], (None if d is None else d[0])
        if self._transfer is not None:
            sel = xp.asarray(unique)
            d = None if self._damping is None else xp.take(self._damping, sel, axis=0)
            return xp.take(self._transfer, sel, axis=0), d
        return self._filters(xp.asarray(self._unique_defocus[unique]))

    # ------------------------------------------------------------------ forward / adjoint
    def propagate(self, waves: Any, indices: np.ndarray) -> Any:
        """Fields IFFT[FFT(waves) H_n] (..., B, ny, nx) of measurements ``indices`` (B,)."""
        return self._apply(waves, self._batch_filters(indices)[0], overwrite=False)

    def propagate_adjoint(self, grads: Any, indices: np.ndarray) -> Any:
        """Adjoint of :meth:`propagate`: IFFT[FFT(grads) conj(H_n)]."""
        transfer = self._batch_filters(indices)[0]
        return self._apply(grads, self._device.xp.conjugate(transfer), overwrite=False)

    def _apply(self, waves: Any, transfer: Any, overwrite: bool) -> Any:
        dev = self._device
        spec = dev.fft2(waves, overwrite=overwrite)
        spec *= transfer
        return dev.ifft2(spec, overwrite=True)

    def _damp(self, image: Any, damping: Any) -> Any:
        """Real(IFFT[FFT(image) D]) for real images (B, ny, nx); D real and even in q."""
        dev = self._device
        spec = dev.fft2(image)
        spec *= damping
        return dev.ifft2(spec, overwrite=True).real.astype(dev.real_dtype, copy=True)

    def forward(self, waves: Any, indices: np.ndarray, keep: bool = True,
                workspace: Any | None = None) -> tuple[Any, Any]:
        """Images (B, ny, nx) of exit waves (K, M, B, ny, nx) for measurements ``indices``.

        With a ``workspace`` (the model's) the fields are computed in the memory of ``waves``.
        """
        dev = self._device
        if dev is None:
            raise ValueError("near_field: prepare(context) must be called before forward")
        xp = dev.xp
        if tuple(waves.shape[-2:]) != self._window:
            raise ValueError(f"waves: expected images of {self._window}, found "
                             f"{tuple(waves.shape[-2:])}")
        transfer, damping = self._batch_filters(indices)
        field = self._apply(waves, transfer, overwrite=workspace is not None)
        K = field.shape[0]
        flat = field.reshape(-1, *field.shape[-3:])
        image = xp.zeros(flat.shape[1:], dtype=dev.real_dtype)
        for f in flat:
            image += f.real**2 + f.imag**2
        if K > 1:
            image *= 1.0 / K
        if damping is not None:
            image = self._damp(image, damping)
        if not keep:
            return image, None
        return image, {"field": field, "transfer": transfer, "damping": damping,
                       "in_place": workspace is not None}

    def vjp(self, grad_intensity: Any, cache: Any) -> Any:
        """dL/d conj(waves) = IFFT[FFT(D * dL/dI field / K) conj(H)] (D self-adjoint)."""
        dev = self._device
        xp = dev.xp
        field = cache["field"]
        grad = grad_intensity
        if cache["damping"] is not None:
            grad = self._damp(grad, cache["damping"])
        K = field.shape[0]
        if K > 1:
            grad = grad * (1.0 / K)
        if cache["in_place"]:
            field *= grad
            g = field
        else:
            g = field * grad
        return self._apply(g, xp.conjugate(cache["transfer"]), overwrite=True)
