"""Higher-order split-step propagators: Richardson-extrapolated multislice and Yoshida.

Both integrate, slab by slab, the paraxial equation d psi/dz = (A + B_s) psi inside the slab of
slice s (thickness dz_s = the gap after slice s), with exp(dz_s A) the Fresnel step P(dz_s)
(band-limited, tilted when tilts are given) and exp(dz_s B_s) = O_s the slice's transmission.
Plain multislice uses the first-order (Lie) step P(dz) T for each slab; here

* ``better_multislice``: the Richardson extrapolation of symmetrised Lie steps,
  (2/3)(psi14 + psi24) - (1/6)(psi32 + psi42), see :class:`BetterMultislice`;
* ``yoshida``: Yoshida's fourth-order triple jump of Strang steps, see :class:`Yoshida`.

T^a = O^a = exp(a log O) with the principal logarithm (branch cut on the negative real axis).
Products of powers of one slice always give back O exactly (sum of exponents = 1, one branch),
but the intermediate powers O^(1/2), O^(s/2), O^((1-s)/2) describe the slab's potential only
while the phase of O stays within (-pi, pi]: a slice whose phase wraps is treated as the
potential of the wrapped phase (the transmission is still exact, the interior scattering is
not), and the powers, hence the gradients, jump across the cut. Keep slices thin enough that
|phase| < pi per slice (true for the usual 1-2 Å slices). Negative exponents (Yoshida's
(1-s)/2 = -0.176) amplify strong absorption, and the gradient contains O^(a-1): transmissions
must stay away from 0.

The last slice has no gap after it: as in plain multislice it is a thin transmission at the
exit surface (exit = T_{S-1} applied to the wave leaving slab S-2), so all three propagators
coincide for one slice.
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import numpy as np

from ptyframe.components import PropagationGeometry

from .multislice import Multislice, check_tilts, reduce_to_shape, tilt_gradient, tilted_kernel

__all__ = ["SplitStepScheme", "BetterMultislice", "Yoshida", "YOSHIDA_S"]

#: one operation of a chain: ("T", a) multiplies by O**a, ("P", c) propagates over c * dz
Op = tuple[str, float]
#: a chain: (coefficient, operations in the order they act on the wave)
Chain = tuple[float, tuple[Op, ...]]

#: the thin exit slice: multiplication by its transmission only
_THIN: tuple[Chain, ...] = ((1.0, (("T", 1.0),)),)

#: Yoshida's weight s = 1 / (2 - 2^(1/3)) = (2 + 2^(-1/3) + 2^(1/3)) / 3 = 1.3512...
YOSHIDA_S = (2.0 + 2.0 ** (-1.0 / 3.0) + 2.0 ** (1.0 / 3.0)) / 3.0


@attrs.define(kw_only=True)
class SplitStepScheme(Multislice):
    """Base of slab-by-slab schemes: each slab step is a linear combination of chains.

    ``chains`` (class attribute): ((coefficient, ((op, value), ...)), ...) with operations
    ("T", a): psi <- O_s**a psi and ("P", c): psi <- IFFT[FFT(psi) K(c dz_s)], applied from
    left to right; the slab's output is sum_j coefficient_j chain_j(psi). Forward and adjoint
    (including the tilt gradient) follow from the chains: the adjoint of ("T", a) is
    g <- conj(O**a) g with dL/d conj(O) += conj(a O**(a-1) x) g (x its input), the adjoint of
    ("P", c) is g <- IFFT[FFT(g) conj(K)]. Not registered itself; subclasses set ``name``.
    """

    name = ""
    #: the schemes keep their intermediate waves in arrays of their own
    uses_workspace: ClassVar[bool] = False
    #: one slab still runs its chains (powers of the transmission): not a plain product
    single_slice_product: ClassVar[bool] = False
    chains: ClassVar[tuple[Chain, ...]] = ()
    _distance_kernels: dict[float, Any] = attrs.field(factory=dict, init=False, repr=False)

    def prepare(self, geometry: PropagationGeometry) -> None:
        super().prepare(geometry)
        dev = geometry.device
        self._distance_kernels = {}
        for gap in range(geometry.n_slices - 1):
            for dz in self._distances(gap):
                if dz not in self._distance_kernels:
                    self._distance_kernels[dz] = dev.complex(self.distance_kernel(dz))

    def _distances(self, gap: int) -> list[float]:
        dz = self.gap_thickness(gap)
        return [c * dz for _, ops in self.chains for kind, c in ops if kind == "P"]

    def _slab_chains(self, s: int, n_slices: int) -> tuple[Chain, ...]:
        return self.chains if s < n_slices - 1 else _THIN

    @staticmethod
    def _powers(transmission: Any, chains: tuple[Chain, ...], xp: Any) -> dict[float, Any]:
        """O**a for every exponent of ``chains`` (principal branch, one logarithm)."""
        exponents = sorted({a for _, ops in chains for kind, a in ops if kind == "T"})
        powers: dict[float, Any] = {}
        polar = None
        for a in exponents:
            if a == 1.0:
                powers[a] = transmission
            elif a == 0.5:
                powers[a] = xp.sqrt(transmission)  # principal branch, = exp(log(O) / 2)
            else:
                # exp(a log O) = |O|^a (cos a theta + i sin a theta), theta = arg O in
                # (-pi, pi]: the principal branch, from real (vectorised) functions
                if polar is None:
                    polar = (xp.log(xp.abs(transmission)), xp.angle(transmission))
                log_r, theta = polar
                power = xp.empty(transmission.shape, dtype=transmission.dtype)
                xp.cos(a * theta, out=power.real)
                xp.sin(a * theta, out=power.imag)
                power *= xp.exp(a * log_r)
                powers[a] = power
        return powers

    # ------------------------------------------------------------------ forward
    def forward(self, wave: Any, transmission: Any, keep: bool = True, *, tilts: Any = None
                ) -> tuple[Any, Any]:
        """Exit wave of the slab-by-slab scheme and a cache for :meth:`vjp`.

        ``tilts``: optional (B, 2) radians (see :class:`~.multislice.Multislice`). Nothing
        passed in is modified.
        """
        n_slices = self._check_slices(transmission)
        dev = self._geometry.device
        xp = dev.xp
        if tilts is not None:
            tilts = check_tilts(tilts, wave.shape, xp, dev.real_dtype)
        kernels: dict[float, Any] = {}
        store_spectra = keep and tilts is not None
        slabs = []
        psi = wave
        for s in range(n_slices):
            chains = self._slab_chains(s, n_slices)
            dz = self.gap_thickness(s) if s < n_slices - 1 else 0.0
            powers = self._powers(transmission[s], chains, xp)
            out, records = self._slab_forward(psi, chains, powers, dz, tilts, kernels,
                                              store_spectra)
            if keep:
                slabs.append((psi.shape, powers, records))
            psi = out
        if not keep:
            return psi, None
        return psi, (slabs, transmission, wave.shape, kernels, tilts)

    def _kernel(self, distance: float, tilts: Any, kernels: dict[float, Any]) -> Any:
        """Propagation kernel over ``distance`` (tilted per measurement when tilts are given),
        built once per call and shared by every slab with the same distance."""
        kern = kernels.get(distance)
        if kern is None:
            kern = self._distance_kernels[distance]
            if tilts is not None:
                kern = tilted_kernel(kern, self._q, tilts, distance, self._geometry.device.xp)
            kernels[distance] = kern
        return kern

    def _slab_forward(self, psi: Any, chains: tuple[Chain, ...], powers: dict[float, Any],
                      dz: float, tilts: Any, kernels: dict[float, Any],
                      store_spectra: bool) -> tuple[Any, list[list[Any]]]:
        """sum_j c_j chain_j(psi) and, per chain, what each operation's adjoint needs: the
        input of a T, the output spectrum FFT(y) of a P (for the tilt gradient) or None."""
        dev = self._geometry.device
        out = None
        records = []
        psi_spec = None  # FFT(psi), shared by the chains that start with a propagation
        for coef, ops in chains:
            x = psi
            record: list[Any] = []
            for kind, value in ops:
                if kind == "T":
                    record.append(x)
                    x = x * powers[value]
                    continue
                kern = self._kernel(value * dz, tilts, kernels)
                if x is psi:
                    psi_spec = dev.fft2(psi) if psi_spec is None else psi_spec
                    spec = psi_spec * kern
                else:  # x is an intermediate nobody keeps: transform in place
                    spec = dev.fft2(x, overwrite=True)
                    spec *= kern
                record.append(spec if store_spectra else None)
                x = dev.ifft2(spec, overwrite=not store_spectra)
            if coef != 1.0:
                x *= coef  # the chain's own output (every chain has at least one operation)
            if out is None:
                out = x
            elif out.shape == x.shape:
                out += x
            else:
                out = out + x
            records.append(record)
        return out, records

    # ------------------------------------------------------------------ adjoint
    def vjp(self, grad_exit: Any, cache: Any) -> tuple[Any, ...]:
        """(dL/d conj(wave), dL/d conj(transmission)[, 1/2 dL/dt]) by running every chain's
        adjoint backwards through the slabs (see :class:`SplitStepScheme`)."""
        slabs, transmission, wave_shape, kernels, tilts = cache
        dev = self._geometry.device
        xp = dev.xp
        n_slices = transmission.shape[0]
        grad_trans = xp.zeros(transmission.shape, dtype=np.result_type(transmission.dtype,
                                                                        grad_exit.dtype))
        grad_tilts = None if tilts is None else xp.zeros(tilts.shape, dtype=dev.real_dtype)
        kernels_conj = {d: xp.conjugate(k) for d, k in kernels.items()}
        g_out = grad_exit
        for s in range(n_slices - 1, -1, -1):
            in_shape, powers, records = slabs[s]
            chains = self._slab_chains(s, n_slices)
            dz = self.gap_thickness(s) if s < n_slices - 1 else 0.0
            O = transmission[s]
            # per exponent a != 1 (small, transmission-sized): conj(O^a) and a O^(a-1)
            inverse = 1.0 / O if any(a != 1.0 for a in powers) else None
            conj_powers = {a: xp.conjugate(p) for a, p in powers.items()}
            derivatives = {a: (a * p) * inverse for a, p in powers.items() if a != 1.0}
            g_in = None
            for (coef, ops), record in zip(chains, records, strict=True):
                g = g_out * coef if coef != 1.0 else g_out
                fresh = coef != 1.0  # g may be modified in place (not shared with other chains)
                for (kind, value), kept in zip(reversed(ops), reversed(record), strict=True):
                    if kind == "T":
                        # y = O^a x: dL/d conj(O) = conj(a O^(a-1) x) g, dL/d conj(x) = conj(O^a) g
                        if value == 1.0:
                            d = xp.conjugate(kept)
                        else:
                            d = kept * derivatives[value]
                            xp.conjugate(d, out=d)
                        d = xp.multiply(d, g, out=d if d.shape == g.shape else None)
                        grad_trans[s] += reduce_to_shape(d, O.shape)
                        if fresh and g.shape == np.broadcast_shapes(g.shape, O.shape):
                            g *= conj_powers[value]
                        else:
                            g = g * conj_powers[value]
                    else:
                        distance = value * dz
                        spec = dev.fft2(g, overwrite=fresh)
                        if tilts is not None:
                            grad_tilts += tilt_gradient(spec, kept, self._q, distance, xp)
                        spec *= kernels_conj[distance]
                        g = dev.ifft2(spec, overwrite=True)
                    fresh = True
                g = reduce_to_shape(g, in_shape)
                if g_in is None:
                    g_in = g
                elif g_in.shape == g.shape and g_in is not g_out:
                    g_in += g
                else:
                    g_in = g_in + g
            g_out = g_in
        grad_wave = reduce_to_shape(g_out, wave_shape)
        if grad_wave is grad_exit:
            grad_wave = grad_wave.copy()
        if grad_tilts is None:
            return grad_wave, grad_trans
        return grad_wave, grad_trans, grad_tilts


@attrs.define(kw_only=True)
class BetterMultislice(SplitStepScheme):
    """Richardson-extrapolated multislice (third order in the slice thickness).

    Per slab (slice s, gap dz), with T = O_s and P(h) the (tilted, band-limited) Fresnel step,
    operators written in the order they act:

    * psi14 = [T^1/2, P(dz/2), T^1/2, P(dz/2)] psi   (two half Lie steps "TP")
    * psi24 = [P(dz/2), T^1/2, P(dz/2), T^1/2] psi   (two half Lie steps "PT")
    * psi32 = [P(dz), T] psi                         (one full step "PT")
    * psi42 = [T, P(dz)] psi                         (one full step "TP"; plain multislice)

    output = (2/3)(psi14 + psi24) - (1/6)(psi32 + psi42) = (4/3) S(dz/2)^2 - (1/3) S(dz),
    with S the order-averaged Lie step. Averaging TP and PT cancels the O(dz^2) commutator
    term of each Lie step (BCH), leaving a local error c dz^3 that is 4 times smaller for two
    half steps, so the 4/3, -1/3 combination cancels it: local error O(dz^4), global O(dz^3).
    12 FFTs per slab forward (11: psi24 and psi32 share FFT(psi)), principal square root for
    T^1/2 (see the module docstring for the branch). Settings as for ``multislice``.
    """

    name = "better_multislice"
    chains: ClassVar[tuple[Chain, ...]] = (
        (2.0 / 3.0, (("T", 0.5), ("P", 0.5), ("T", 0.5), ("P", 0.5))),
        (2.0 / 3.0, (("P", 0.5), ("T", 0.5), ("P", 0.5), ("T", 0.5))),
        (-1.0 / 6.0, (("P", 1.0), ("T", 1.0))),
        (-1.0 / 6.0, (("T", 1.0), ("P", 1.0))),
    )


@attrs.define(kw_only=True)
class Yoshida(SplitStepScheme):
    """Fourth-order Yoshida composition of Strang steps (global error O(dz^4)).

    Per slab (slice s, gap dz), in the order the operators act:
    T^(s/2) P(s dz) T^((1-s)/2) P((1-2s) dz) T^((1-s)/2) P(s dz) T^(s/2),
    s = (2 + 2^(-1/3) + 2^(1/3))/3 = 1.3512, i.e. the triple jump S(s dz) S((1-2s) dz) S(s dz)
    of Strang steps S(h) = T^(h/(2 dz)) P(h) T^(h/(2 dz)). The middle step propagates backwards
    ((1-2s) dz < 0) and uses T^((1-s)/2) = O^(-0.176): the principal-log powers of the module
    docstring. 6 FFTs per slab forward. Settings as for ``multislice``.
    """

    name = "yoshida"
    chains: ClassVar[tuple[Chain, ...]] = (
        (1.0, (("T", YOSHIDA_S / 2), ("P", YOSHIDA_S), ("T", (1 - YOSHIDA_S) / 2),
               ("P", 1 - 2 * YOSHIDA_S), ("T", (1 - YOSHIDA_S) / 2), ("P", YOSHIDA_S),
               ("T", YOSHIDA_S / 2))),
    )
