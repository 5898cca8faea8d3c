"""Tilt-corrected bright field (tcBF, "parallax" imaging) as a direct method.

Physics (weak phase object O = 1 + i phi, ptyframe's conventions: probe spectrum
A(k) exp(-i chi(k)) with the probe at scan position R, I(k; R) = |FFT[P(r - R) O(r)](k)|^2,
numpy's FFT sign, k in 1/Å). To first order in phi the image of one bright-field detector
pixel k, as a function of R, has the Fourier transform

    I~_k(q) = i A(k) phi~(q) [A(k - q) e^{i(chi(k) - chi(k - q))}
                              - A(k + q) e^{i(chi(k + q) - chi(k))}].

Expanding chi to first order in q, every term carries exp(i q.grad chi(k)), i.e. the image of
pixel k is (the same image) translated by

    s(k) = -grad_k chi(k) / (2 pi)      [Å; chi in rad, k in 1/Å]

in the specimen frame. For pure defocus (chi = pi lambda C10 |k|^2, C10 = -defocus) this is
s(k) = -lambda C10 k = lambda * defocus * k. The scan frame (the rows and columns of a virtual
image) is rotated against the specimen/detector frame by ``scan_rotation_deg`` = theta
(positions_A = R(theta) nominal, x' = cos x - sin y, y' = sin x + cos y, as in the
``scan_grid`` initializer), so the measured shift of a virtual image in scan coordinates is
sigma(k) = R(theta)^T s(k) (+ a common offset). With ``transpose`` the detector's (ky, kx)
axes are swapped before k is formed.

Once the shifts are undone the residual transfer of pixel k is
T_k(q) = i [A(k - q) e^{i D-} - A(k + q) e^{i D+}] / A(k) with
D- = chi(k) - chi(k - q) - q.grad chi(k), D+ = chi(k + q) - chi(k) - q.grad chi(k): for pure
defocus T(q) = 2 sin(pi lambda C10 |q|^2), i.e. positive (bright-atom) contrast at low q for
C10 > 0 (overfocus) and negative contrast for underfocus. The phase estimate divides the tcBF
contrast by the mean transfer (Wiener filter).

Crystals: when a lattice reflection g lies near the aperture radius, most pixels see its
fringes through one side band only (k - g or k + g inside the aperture), with constant phase
offsets -+ pi lambda C10 |g|^2 that differ between the two families of pixels; the measured
shifts are then biased (about +5 % in C10 on ../shared/data/defocused_bf.h5). The optional
(default) defocus refinement maximises instead the alignment of the images after the matched
filter conj(T_k), which removes those offsets.

Ambiguity: (O, chi, theta) and (conj O(-r), -chi, theta + 180 deg) give exactly the same
far-field patterns (the exit wave of the second is the complex conjugate of the first,
mirrored), so every coefficient changes sign with the 180-degree branch. The shifts fix the
rotation modulo 180 deg for any rotation (the seed search spans 180 deg with both signs of
C10); ``resolve_180`` picks the branch: within +-90 deg of the prior (``rotation_guess_deg``,
default the experiment's ``scan_rotation_deg``) or the one whose phase has positive skewness.

Significance: higher-order terms are kept only when the final shifts support them (|C| /
standard error >= ``significance`` and a shift of >= ``min_shift_px`` somewhere in the bright
field); values["uncertainties"] holds the one-sigma errors, values["significant_terms"] the
kept names and values["warnings"] what the data leave open (docs/direct_methods.md).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import attrs
import numpy as np
from scipy.optimize import least_squares

from ptyframe.components import DirectMethod, DirectResult
from ptyframe.core.experiment import Experiment
from ptyframe.core.physics import (
    ABERRATION_NAMES,
    aberration_coefficients_array,
    aberration_function,
    aberration_gradient,
    aberration_gradient_basis,
    angle_to_frequency,
    soft_aperture,
    spatial_frequencies,
)
from ptyframe.core.validators import (
    boolean,
    finite,
    in_range,
    one_of,
    positive,
    positive_int,
    to_float,
    to_int,
)
from ptyframe.io.data import Dataset

from ._common import skewness
from ._shift_stats import prune_by_significance, standard_errors

_LOG = logging.getLogger("ptyframe")

__all__ = [
    "TiltCorrectedBF",
    "ShiftModel",
    "experiment_from_tcbf",
    "tcbf_transfer",
]

_BF_MASKS = ("threshold", "aperture")
_LOSSES = ("linear", "soft_l1", "huber", "cauchy", "arctan")
_RESOLVE_180 = ("skewness", "prior")


# ---------------------------------------------------------------------------- geometry
def _angle_diff(a: float, b: float) -> float:
    """|a - b| modulo 360, degrees in [0, 180]."""
    return abs((a - b + 180.0) % 360.0 - 180.0)


def _rotation_yx(theta: float) -> np.ndarray:
    """R(theta) acting on (y, x) column vectors (x' = c x - s y, y' = s x + c y)."""
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, s], [-s, c]])


def _rotation_yx_derivative(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[-s, c], [-c, -s]])


@attrs.define
class ShiftModel:
    """Image shifts (Å, scan frame) of bright-field pixels at physical frequencies ``k_yx``.

    sigma_g = R(theta)^T (-grad chi(k_g) / 2 pi) + offset, with chi from ``fixed`` (all
    coefficients, Å, :data:`ABERRATION_NAMES` order) plus the ``fit_names`` coefficients.
    Parameter vector x = [C_fit..., theta (rad, when ``fit_rotation``), offset_y, offset_x].
    """

    k_yx: np.ndarray  # (G, 2) 1/Å, physical (detector) frame
    wavelength: float
    fit_names: tuple[str, ...]
    fixed: np.ndarray
    fit_rotation: bool
    theta: float = 0.0  # used when not fit_rotation
    _basis: np.ndarray = attrs.field(init=False)
    _fixed_v: np.ndarray = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        used = [n for n, c in zip(ABERRATION_NAMES, self.fixed, strict=True) if c != 0.0
                and n not in self.fit_names]
        grads = aberration_gradient_basis(self.k_yx[:, 0], self.k_yx[:, 1], self.wavelength,
                                          tuple(self.fit_names) + tuple(used))
        scale = -1.0 / (2 * np.pi)
        nfit = len(self.fit_names)
        self._basis = scale * grads[:nfit]  # (nC, G, 2): specimen-frame shift per Å
        fixed_v = np.zeros((len(self.k_yx), 2))
        for j, name in enumerate(used):
            fixed_v += scale * self.fixed[ABERRATION_NAMES.index(name)] * grads[nfit + j]
        self._fixed_v = fixed_v

    @property
    def basis(self) -> np.ndarray:
        """Specimen-frame shift (Å) per Å of each fitted coefficient, (nC, G, 2)."""
        return self._basis

    @property
    def n_params(self) -> int:
        return len(self.fit_names) + int(self.fit_rotation) + 2

    def unpack(self, x: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
        nc = len(self.fit_names)
        theta = float(x[nc]) if self.fit_rotation else self.theta
        return np.asarray(x[:nc]), theta, np.asarray(x[-2:])

    def pack(self, coeffs: np.ndarray, theta: float, offset: np.ndarray) -> np.ndarray:
        parts = [np.asarray(coeffs, dtype=float)]
        if self.fit_rotation:
            parts.append(np.array([theta]))
        parts.append(np.asarray(offset, dtype=float))
        return np.concatenate(parts)

    def specimen_shifts(self, coeffs: np.ndarray) -> np.ndarray:
        """-grad chi / 2 pi (G, 2), Å, specimen frame."""
        return self._fixed_v + np.tensordot(coeffs, self._basis, axes=1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Shifts (G, 2) in Å, scan frame."""
        coeffs, theta, offset = self.unpack(x)
        return self.specimen_shifts(coeffs) @ _rotation_yx(theta) + offset

    def jacobian(self, x: np.ndarray) -> np.ndarray:
        """d predict(x).ravel() / dx, shape (2G, n_params)."""
        coeffs, theta, _ = self.unpack(x)
        rot = _rotation_yx(theta)
        cols = [(b @ rot).reshape(-1) for b in self._basis]
        if self.fit_rotation:
            cols.append((self.specimen_shifts(coeffs) @ _rotation_yx_derivative(theta))
                        .reshape(-1))
        g = len(self.k_yx)
        cols.append(np.tile([1.0, 0.0], g))
        cols.append(np.tile([0.0, 1.0], g))
        return np.stack(cols, axis=1)

    def linear_fit(self, measured: np.ndarray, theta: float) -> tuple[np.ndarray, float]:
        """Least-squares coefficients and offset at fixed ``theta``; returns (x, cost)."""
        rot = _rotation_yx(theta)
        target = (measured - self._fixed_v @ rot).reshape(-1)
        g = len(self.k_yx)
        cols = [(b @ rot).reshape(-1) for b in self._basis]
        cols += [np.tile([1.0, 0.0], g), np.tile([0.0, 1.0], g)]
        design = np.stack(cols, axis=1)
        norms = np.linalg.norm(design, axis=0)
        norms[norms == 0] = 1.0
        sol, *_ = np.linalg.lstsq(design / norms, target, rcond=None)
        sol = sol / norms
        resid = design @ sol - target
        x = self.pack(sol[:-2], theta, sol[-2:])
        return x, float(resid @ resid)


def _transfer_terms(xp: Any, qy: Any, qx: Any, k_yx: np.ndarray, grad: np.ndarray,
                    wavelength: float, coeffs: np.ndarray, aperture_inv_A: float,
                    edge_inv_A: float) -> Any:
    """T_k(q) for a batch of pixels k (B, 2) with removed gradients ``grad`` (B, 2) rad·Å;
    returns (B, *q.shape) complex (see :func:`tcbf_transfer`)."""
    minus, plus = _transfer_sides(xp, qy, qx, k_yx, grad, wavelength, coeffs,
                                  aperture_inv_A, edge_inv_A)
    return minus - plus


def _transfer_sides(xp: Any, qy: Any, qx: Any, k_yx: np.ndarray, grad: np.ndarray,
                    wavelength: float, coeffs: np.ndarray, aperture_inv_A: float,
                    edge_inv_A: float) -> tuple[Any, Any]:
    """The two side bands of :func:`_transfer_terms`: (i A(k - q) e^{i D-} / A(k),
    i A(k + q) e^{i D+} / A(k)), each (B, *q.shape) complex, so that T_k = first - second."""

    def amp(ky: Any, kx: Any) -> Any:
        return soft_aperture(xp.hypot(ky, kx), aperture_inv_A, edge_inv_A, xp)

    expand = (slice(None),) + (None,) * qy.ndim
    kk = xp.asarray(np.asarray(k_yx, dtype=float))
    gg = xp.asarray(np.asarray(grad, dtype=float))
    ky = kk[:, 0][expand]
    kx = kk[:, 1][expand]
    a0 = xp.maximum(amp(ky, kx), 1e-3)
    minus = 1j * amp(ky - qy, kx - qx) / a0
    plus = 1j * amp(ky + qy, kx + qx) / a0
    if np.any(np.asarray(coeffs) != 0.0):
        lin = qy * gg[:, 0][expand] + qx * gg[:, 1][expand]
        chi0 = aberration_function(ky, kx, wavelength, coeffs, xp)
        minus = minus * xp.exp(1j * (chi0 - aberration_function(ky - qy, kx - qx, wavelength,
                                                                 coeffs, xp) - lin))
        plus = plus * xp.exp(1j * (aberration_function(ky + qy, kx + qx, wavelength, coeffs,
                                                       xp) - chi0 - lin))
    return minus, plus


def tcbf_transfer(xp: Any, q_yx: tuple[Any, Any], k_yx: np.ndarray, wavelength: float,
                  coeffs: np.ndarray, aperture_inv_A: float, edge_inv_A: float,
                  weights: np.ndarray | None = None, batch: int = 16) -> Any:
    """Weighted mean residual transfer of shift-corrected bright-field images at frequencies
    q (physical frame, 1/Å; complex, shape of q).

    T(q) = sum_k w_k T_k(q) / sum_k w_k with
    T_k(q) = i [A(k - q) e^{i D-} - A(k + q) e^{i D+}] / A(k),
    D- = chi(k) - chi(k - q) - q.grad chi(k), D+ = chi(k + q) - chi(k) - q.grad chi(k).
    A: aperture of radius ``aperture_inv_A`` with a linear edge of width ``edge_inv_A``; chi
    from ``coeffs`` (Å, :data:`ABERRATION_NAMES` order). A weak phase phi gives the
    shift-corrected BF contrast I/<I> - 1 = IFFT[T phi~].
    """
    qy, qx = q_yx
    k_yx = np.asarray(k_yx, dtype=float).reshape(-1, 2)
    w = np.ones(len(k_yx)) if weights is None else np.asarray(weights, dtype=float)
    grad = aberration_gradient(k_yx[:, 0], k_yx[:, 1], wavelength,
                               np.asarray(coeffs, dtype=float))
    total = xp.zeros(qy.shape, dtype=complex)
    ww = xp.asarray(w)
    for start in range(0, len(k_yx), batch):
        sel = slice(start, start + batch)
        terms = _transfer_terms(xp, qy, qx, k_yx[sel], grad[sel], wavelength, coeffs,
                                aperture_inv_A, edge_inv_A)
        total += xp.tensordot(ww[sel], terms, axes=1)
    return total / float(w.sum())


# ---------------------------------------------------------------------------- validators
def _int_tuple(value: Any) -> tuple[int, ...]:
    try:
        items = [value] if isinstance(value, (int, np.integer)) else list(value)
        out = tuple(int(v) for v in items)
        ok = len(out) > 0 and all(int(v) == v and v >= 1 for v in items) and not any(
            isinstance(v, bool) for v in items)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"binning: expected a non-empty sequence of integers >= 1 (detector "
                         f"binning levels, coarse to fine), found {value!r}")
    return out


def _names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    try:
        out = tuple(str(v) for v in value)
    except TypeError:
        out = ()
    bad = [v for v in out if v not in ABERRATION_NAMES]
    if not out or bad or len(set(out)) != len(out):
        raise ValueError(f"fit_aberrations: expected distinct names from "
                         f"{', '.join(ABERRATION_NAMES)}, found {value!r}")
    return out


# ---------------------------------------------------------------------------- the method
@attrs.define(kw_only=True)
class TiltCorrectedBF(DirectMethod):
    """Tilt-corrected bright field: per-pixel BF images aligned by fitted aberrations.

    * ``binning``: detector binning levels, coarse to fine (b x b pixel blocks per image)
    * ``iterations_per_level``: shift-measurement and fit passes per level (>= 1)
    * ``fit_aberrations``: Krivanek names of the fitted coefficients, Å (C10, C12a, C30, ...)
    * ``fit_rotation``: fit the scan rotation (else the prior is used)
    * ``transpose``: detector (ky, kx) swapped against the scan (None: try both)
    * ``rotation_guess_deg``: rotation prior, degrees (None: the experiment's)
    * ``use_experiment_aberrations``: start from the experiment's aberrations and hold the
      ones not fitted
    * ``bf_mask``: "threshold" (of the mean pattern) or "aperture" (convergence angle)
    * ``bf_threshold``: bright-field threshold, fraction of the mean pattern's maximum
    * ``bf_radius_fraction``: largest pixel radius used, fraction of the aperture radius
    * ``upsample``: output pixels per scan step
    * ``subpixel_upsample``: matrix-DFT points per pixel for sub-pixel peaks (1: parabola)
    * ``correlation_sigma_px``: Gaussian smoothing of the correlations, scan pixels
    * ``edge_taper``: Tukey taper of the images, fraction of the field per side
    * ``min_overlap``: smallest window overlap searched, fraction of the maximum
    * ``search_radius_px``: correlation search radius around the model, scan pixels
      (None: unlimited)
    * ``refine_defocus``: refine C10 by the transfer-matched alignment (crystals)
    * ``defocus_search``: seed C10 and the rotation by a grid search
    * ``seed_candidates``: distinct seeds of that search judged by one shift measurement
      at the finest level (the one whose shifts fit best continues)
    * ``significance``: |coefficient| / standard error needed to keep a coefficient other
      than C10 at the last level (0: keep all)
    * ``min_shift_px``: a kept coefficient other than C10 must also shift some image by at
      least this much, scan pixels
    * ``resolve_180``: how the 180-degree ambiguity (theta + 180 deg with every coefficient
      negated predicts the same data) is resolved: "skewness" (the phase estimate has
      positive skewness: atoms are positive phase peaks) or "prior" (the branch within 90
      deg of ``rotation_guess_deg``)
    * ``loss``: scipy least_squares loss of the shift fit ("linear", "soft_l1", ...)
    * ``outlier_scale_px``: f_scale of that loss, scan pixels
    * ``wiener_epsilon``: Wiener constant of the phase estimate, fraction of max abs(T)^2
    * ``chunk_patterns``: patterns read per chunk (None: from the dataset's chunk_bytes)

    Steps
    -----
    1. Bright-field pixels: ``bf_mask`` ``"threshold"`` (mean pattern >= ``bf_threshold`` x
       its maximum) or ``"aperture"`` (inside the experiment's convergence angle), both
       limited to ``bf_radius_fraction`` of the aperture radius around the disk centre found
       in the mean pattern. One virtual image per pixel, read in chunks of ``chunk_patterns``
       patterns (default: from the dataset's ``chunk_bytes``), float32.
    2. Seed (``defocus_search``): grid search of C10 (and of the rotation over 180 deg when
       ``fit_rotation``) maximising the overlap-normalised energy of the aligned sum of the
       first level's images (pairwise correlation maps); the ``seed_candidates`` best
       distinct hypotheses are refined locally and each judged by one shift measurement and
       fit on at most 128 finest-level groups; the best continues.
    3. For each ``binning`` level (b x b detector blocks, coarse to fine;
       ``iterations_per_level`` passes): each image's residual shift by cross-correlation with
       the aligned sum of the others (zero-padded, ``edge_taper``, Gaussian smoothing
       ``correlation_sigma_px``, divided by the correlation of the scan windows so that the
       shrinking overlap does not pull shifts towards zero, search within
       ``search_radius_px`` of the current model and where the overlap is >= ``min_overlap``
       of its maximum; sub-pixel by a parabola and a matrix-DFT refinement at
       1/``subpixel_upsample`` px on converging passes); then a least-squares fit of the
       first-order terms (C10, C12), the scan rotation (``fit_rotation``) and a common
       offset to the shifts, with the analytic Jacobian (scipy ``least_squares``, ``loss``
       with f_scale ``outlier_scale_px`` scan pixels; a 1-deg global search of the rotation
       only when there was no seed search). The fitted model aligns the next pass and seeds
       the next level. At the last level all ``fit_aberrations`` are fitted to the final
       shifts and pruned by significance (``significance``, ``min_shift_px``).
    4. ``refine_defocus``: C10 maximising the transfer-matched, overlap-normalised alignment
       of the images (see :meth:`_refine_defocus`); it removes the bias of the shift fit on
       crystals (fringes seen through one side band). When it moves C10 by more than 1 %,
       the other coefficients and the rotation are fitted again at the finest level with C10
       held (and C10 refined once more if that moved the rotation by more than 0.25 deg).
    4b. 180-degree branch (``resolve_180``), uncertainties and warnings.
    5. Upsampled tcBF image on a grid of scan_step / ``upsample`` (bilinear shifted sparse sum
       divided by the shifted sampling mask, aberration shifts only) and a weak-phase
       estimate: Wiener division (``wiener_epsilon`` x max |T|^2) of the tcBF contrast by the
       mean residual transfer T (:func:`tcbf_transfer`).

    ``transpose``: detector axes swapped relative to the scan (None: try both, keep the lower
    residual). ``rotation_guess_deg``: prior for the rotation (None: the experiment's
    ``scan_rotation_deg``; 180-deg ambiguity, see the module docstring).
    ``use_experiment_aberrations``: start from the experiment's aberrations and hold the ones
    not fitted at their values (False: start from zero; the seed search replaces C10 either
    way unless ``defocus_search`` is False).

    Result arrays (host): ``tcbf`` (Y, X) contrast I/<I> - 1 on the upsampled scan-frame
    grid (``pixel_size_A`` = scan_step / upsample; pixel (0, 0) at ``values["origin_A"]``,
    scan-frame Å relative to scan point (0, 0)); ``tcbf_weight`` sampling density; ``phase``
    (Y, X) rad, weak-phase estimate (0 where the sampling is below a quarter of its
    maximum); ``bf_image`` (sy, sx) plain bright-field contrast (sum, no shifts);
    ``bf_pixels`` (n, 2) detector pixel indices (ky, kx); ``bf_k_inv_A`` (n, 2) their
    physical frequencies (y, x), 1/Å; ``bf_shifts_A`` (n, 2) the scan-frame shifts used for
    the image; ``shifts_A`` / ``shifts_fit_A`` / ``group_k_inv_A`` (G, 2) measured and fitted
    shifts and frequencies of the last fit's pixel groups. Values: ``aberrations_A``
    {name: Å}, ``defocus_A`` (= -C10), ``rotation_deg``, ``transpose``, ``residual_rms_A``
    (RMS distance between measured and fitted shifts of the last fit, Å), ``levels`` (one
    entry per stage: binning, groups, iterations, fitted names, residual, rotation,
    aberrations, time), ``center_px``, ``bf_radius_px``, ``n_bf_pixels``, ``origin_A``,
    ``pixel_size_yx_A``.
    """

    name = "tcbf"
    binning: tuple[int, ...] = attrs.field(default=(4, 2, 1), converter=_int_tuple)
    iterations_per_level: int = attrs.field(default=3, validator=positive_int())
    fit_aberrations: tuple[str, ...] = attrs.field(
        default=("C10", "C12a", "C12b", "C21a", "C21b", "C23a", "C23b"), converter=_names)
    fit_rotation: bool = attrs.field(default=True, validator=boolean())
    transpose: bool | None = attrs.field(default=None, validator=boolean(optional=True))
    rotation_guess_deg: float | None = attrs.field(
        default=None, converter=to_float, validator=finite(unit="degrees", optional=True))
    use_experiment_aberrations: bool = attrs.field(
        default=True, validator=boolean())
    bf_mask: str = attrs.field(default="threshold", validator=one_of(_BF_MASKS))
    bf_threshold: float = attrs.field(default=0.5, converter=to_float,
                                      validator=in_range(0.0, 1.0, low_open=True))
    bf_radius_fraction: float = attrs.field(default=1.0, converter=to_float,
                                            validator=in_range(0.0, 2.0, low_open=True))
    upsample: int = attrs.field(default=2, validator=positive_int())
    subpixel_upsample: int = attrs.field(default=8, validator=positive_int())
    correlation_sigma_px: float = attrs.field(default=0.5, converter=to_float,
                                              validator=in_range(0.0, 1e3))
    edge_taper: float = attrs.field(default=0.0, converter=to_float,
                                    validator=in_range(0.0, 0.5))
    min_overlap: float = attrs.field(default=0.5, converter=to_float,
                                     validator=in_range(0.0, 1.0, low_open=True))
    search_radius_px: float | None = attrs.field(default=2.0, converter=to_float,
                                                 validator=positive(optional=True))
    refine_defocus: bool = attrs.field(default=True,
                                       validator=boolean())
    defocus_search: bool = attrs.field(default=True,
                                       validator=boolean())
    seed_candidates: int = attrs.field(default=10, validator=positive_int())
    significance: float = attrs.field(default=3.0, converter=to_float,
                                      validator=in_range(0.0, 1e3))
    min_shift_px: float = attrs.field(default=0.25, converter=to_float,
                                      validator=in_range(0.0, 1e3))
    resolve_180: str = attrs.field(default="prior", validator=one_of(_RESOLVE_180))
    loss: str = attrs.field(default="soft_l1", validator=one_of(_LOSSES))
    outlier_scale_px: float = attrs.field(default=1.0, converter=to_float,
                                          validator=in_range(0.0, 1e6, low_open=True))
    wiener_epsilon: float = attrs.field(default=0.05, converter=to_float,
                                        validator=in_range(0.0, 1e6, low_open=True))
    chunk_patterns: int | None = attrs.field(default=None, converter=to_int,
                                             validator=positive_int(optional=True))

    # ------------------------------------------------------------------ entry point
    def run(self, dataset: Any, experiment: Experiment, device: Any) -> DirectResult:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        dataset, scan_shape = self._as_dataset(dataset, experiment)
        step = np.array(experiment.scan_step_yx_A)
        lam = experiment.wavelength_A
        dk = experiment.dk_inv_A

        mean = dataset.mean_pattern()
        center, pixels, radius_px = self._bright_field_pixels(mean, experiment)
        aperture = (radius_px * dk, dk)  # measured BF disk radius and edge width, 1/Å
        k_det = (pixels - center) * dk  # (n, 2) detector-frame (ky, kx)
        images = self._virtual_images(dataset, pixels)  # host float32 (n, N)
        timings["read"] = time.perf_counter() - t0
        if len(pixels) < 8:
            raise ValueError(f"bright field: expected at least 8 bright-field pixels, found "
                             f"{len(pixels)} (check bf_threshold, bf_radius_fraction and the "
                             f"experiment's convergence_angle_mrad / detector calibration)")
        weights_px = images.mean(axis=1)
        if np.any(weights_px <= 0):
            raise ValueError("bright field: a selected pixel has no counts; raise bf_threshold")
        contrast_px = images / weights_px[:, None] - 1.0
        bf_image = (images.sum(axis=0) / weights_px.sum() - 1.0).reshape(scan_shape)

        start = (aberration_coefficients_array(experiment.aberrations)
                 if self.use_experiment_aberrations else np.zeros(len(ABERRATION_NAMES)))
        prior_deg = (experiment.scan_rotation_deg if self.rotation_guess_deg is None
                     else self.rotation_guess_deg)
        transposes = (False, True) if self.transpose is None else (self.transpose,)
        fits = []
        for tr in transposes:
            k_phys = k_det[:, ::-1] if tr else k_det
            fits.append(self._fit_levels(device, weights_px, images, pixels, k_phys,
                                         scan_shape, step, lam, start, prior_deg, aperture))
            fits[-1]["transpose"] = tr
        best = min(fits, key=lambda f: f["residual_rms_A"])
        for f in fits:
            for key, value in f["timings"].items():
                timings[f"{key}{'_transposed' if f['transpose'] else ''}"] = value

        k_phys = k_det[:, ::-1] if best["transpose"] else k_det
        all_coeffs = best["all_coeffs"]
        if self.refine_defocus and "C10" in self.fit_aberrations:
            others = tuple(n for n in self.fit_aberrations if n != "C10")
            for round_ in range(2):
                # the transfer-matched refinement uses the fitted rotation; when the refit
                # (C10 held) then moves the rotation, C10 is refined once more
                t1 = time.perf_counter()
                # the seed brackets the search only when it describes the same hypothesis (the
                # fit may have moved to the equivalent branch theta + 180 deg, -C10)
                seed = best.get("seed_C10") if round_ == 0 else None
                fit_c10 = float(all_coeffs[0])
                candidates = [fit_c10] + ([seed] if seed is not None and abs(seed - fit_c10)
                                          < 0.3 * abs(fit_c10) + 20.0 else [])
                all_coeffs, refined = self._refine_defocus(
                    device, contrast_px, k_phys, all_coeffs, candidates, best["theta"],
                    scan_shape, step, lam, aperture)
                best["levels"].append(refined)
                timings[f"refine_defocus{'_again' if round_ else ''}"] = (
                    time.perf_counter() - t1)
                moved = abs(refined["C10_A"] - refined["C10_shift_fit_A"])
                if not (others and moved > 0.01 * abs(refined["C10_A"]) + 1.0):
                    break
                # the other coefficients were fitted together with a C10 the refinement
                # rejected: fit them again at the finest level with C10 held
                t1 = time.perf_counter()
                theta_before = best["theta"]
                refit = self._fit_levels(device, weights_px, images, pixels, k_phys,
                                         scan_shape, step, lam, all_coeffs,
                                         float(np.rad2deg(best["theta"])), aperture,
                                         binning=(self.binning[-1],), names=others,
                                         search=False)
                refit["levels"][-1]["stage"] = "refit_with_refined_C10"
                best.update({k: refit[k] for k in ("measured", "fitted", "group_k",
                                                   "residual_rms_A", "theta", "offset")})
                best["stats"] = {**best["stats"], **refit["stats"]}
                best["levels"] += refit["levels"]
                all_coeffs = refit["all_coeffs"]
                timings[f"refit{'_again' if round_ else ''}"] = time.perf_counter() - t1
                if abs(best["theta"] - theta_before) < np.deg2rad(0.25):
                    break

        # ---------------------------------------------------------------- upsampled image
        t1 = time.perf_counter()
        model_px = ShiftModel(k_phys, lam, (), all_coeffs, fit_rotation=False,
                              theta=best["theta"])
        # the fitted common offset is the arbitrary frame of the correlation reference: the
        # image is placed with the aberration shifts alone (zero for the untilted beam)
        bf_shifts = model_px.predict(np.zeros(2))
        tcbf, weight, origin = self._upsampled_image(device, contrast_px, bf_shifts,
                                                     scan_shape, step)
        timings["image"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        phase = self._phase(device, tcbf, weight, step, k_phys, lam, all_coeffs,
                            best["theta"], aperture)
        timings["phase"] = time.perf_counter() - t2

        # ------------------------------------------------ 180-degree branch, uncertainties
        theta = float(best["theta"])
        valid = weight >= 0.25 * weight.max()
        skew = skewness(phase[valid])
        if self.resolve_180 == "skewness":
            flip = skew < 0  # atoms are positive phase peaks
        else:
            flip = _angle_diff(np.rad2deg(theta) + 180.0, prior_deg) < _angle_diff(
                np.rad2deg(theta), prior_deg)
        if flip:
            # (O, chi, theta) and (conj O(-r), -chi, theta + 180 deg) give the same data
            theta += np.pi
            all_coeffs = -all_coeffs
            phase = -phase
            skew = -skew
        theta = float((theta + np.pi) % (2 * np.pi) - np.pi)
        stats = best["stats"]
        significant = [n for n in self.fit_aberrations
                       if n in stats and (n == "C10" or all_coeffs[ABERRATION_NAMES.index(n)]
                                          != 0.0)]
        uncertainties = {}
        if "rotation" in stats:
            uncertainties["rotation_deg"] = float(np.rad2deg(stats["rotation"]["error"]))
        uncertainties.update({f"{n}_A": stats[n]["error"] for n in self.fit_aberrations
                              if n in stats})
        warnings = self._warnings(fits, best, all_coeffs, uncertainties, skew)
        for text in warnings:
            _LOG.warning("tcbf: %s", text)
        timings["total"] = time.perf_counter() - t0

        aberrations = {name: float(v) for name, v in zip(ABERRATION_NAMES, all_coeffs,
                                                          strict=True)
                       if v != 0.0 or name in self.fit_aberrations}
        values = {
            "aberrations_A": aberrations,
            "defocus_A": -aberrations.get("C10", 0.0),
            "rotation_deg": float(np.rad2deg(theta)),
            "transpose": bool(best["transpose"]),
            "uncertainties": uncertainties,
            "significant_terms": significant,
            "warnings": warnings,
            "rotation_180_from": self.resolve_180,
            "phase_skewness": float(skew),
            "residual_rms_A": float(best["residual_rms_A"]),
            "levels": best["levels"],
            "center_px": [float(c) for c in center],
            "bf_radius_px": float(radius_px),
            "n_bf_pixels": int(len(pixels)),
            "origin_A": [float(o) for o in origin],
            "pixel_size_yx_A": [float(s) / self.upsample for s in step],
            "contrast": "tcbf: I / <I> - 1 (dimensionless); phase: rad (weak-phase estimate)",
        }
        if len(fits) > 1:
            values["residual_rms_A_by_transpose"] = {
                str(f["transpose"]): float(f["residual_rms_A"]) for f in fits}
        arrays = {
            "tcbf": tcbf,
            "tcbf_weight": weight,
            "phase": phase,
            "bf_image": bf_image,
            "bf_pixels": pixels.astype(np.int64),
            "bf_k_inv_A": k_phys,
            "bf_shifts_A": bf_shifts,
            "shifts_A": best["measured"],
            "shifts_fit_A": best["fitted"],
            "group_k_inv_A": best["group_k"],
        }
        units = {"tcbf": "I/<I> - 1", "tcbf_weight": "samples per pixel", "phase": "rad",
                 "bf_image": "I/<I> - 1", "bf_pixels": "px", "bf_k_inv_A": "1/Å",
                 "bf_shifts_A": "Å", "shifts_A": "Å", "shifts_fit_A": "Å",
                 "group_k_inv_A": "1/Å"}
        return DirectResult(method=self.name, arrays=arrays, values=values,
                            pixel_size_A=float(step[0]) / self.upsample, timings_s=timings,
                            units=units)

    def _warnings(self, fits: list[dict[str, Any]], best: dict[str, Any],
                  coeffs: np.ndarray, uncertainties: dict[str, float], skew: float
                  ) -> list[str]:
        """Plain sentences for the geometry the data do not pin down."""
        out = []
        if len(fits) > 1:
            other = max(f["residual_rms_A"] for f in fits if f is not best)
            if best["residual_rms_A"] > 0.7 * other:
                out.append(
                    f"transpose: the fits with and without a transposed detector leave similar "
                    f"shift residuals ({best['residual_rms_A']:.3g} Å for transpose="
                    f"{best['transpose']} vs {other:.3g} Å); the transpose and rotation are "
                    f"uncertain")
        seeds = next((lv["seed_candidates"] for lv in best["levels"]
                      if "seed_candidates" in lv), [])
        if len(seeds) > 1:
            ranked = sorted(seeds, key=lambda c: c["residual_rms_A"])
            for cand in ranked[1:]:
                # a different hypothesis (shifts > 1 px rms apart) that fits almost as well
                if (cand["shift_difference_px"] > 1.0
                        and cand["residual_rms_A"] < 1.15 * ranked[0]["residual_rms_A"]):
                    out.append(
                        f"rotation: two seed hypotheses fit the shifts almost equally well "
                        f"(C10 {ranked[0]['fitted_C10_A']:.4g} Å at "
                        f"{ranked[0]['fitted_rotation_deg']:.1f} deg: "
                        f"{ranked[0]['residual_rms_A']:.3g} Å rms; C10 "
                        f"{cand['fitted_C10_A']:.4g} Å at {cand['fitted_rotation_deg']:.1f} "
                        f"deg: {cand['residual_rms_A']:.3g} Å rms)")
                    break
        c10 = float(coeffs[ABERRATION_NAMES.index("C10")])
        s10 = uncertainties.get("C10_A")
        if s10 is not None and not s10 <= 0.03 * abs(c10):
            out.append(f"defocus: C10 = {c10:.4g} Å is poorly determined (one-sigma "
                       f"{s10:.3g} Å, more than 3 %); the shifts are small or noisy")
        if self.resolve_180 == "skewness" and self.fit_rotation and abs(skew) < 0.1:
            out.append(f"rotation: the 180-degree branch was chosen by the sign of the phase "
                       f"skewness, which is small ({skew:.3g}); rotation + 180 deg with all "
                       f"aberrations negated fits the data as well")
        return out

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def _as_dataset(dataset: Any, experiment: Experiment) -> tuple[Dataset, tuple[int, int]]:
        """The data as a :class:`Dataset` (arrays (N, ky, kx) or (sy, sx, ky, kx) are wrapped,
        not copied) and the scan shape; ValueError naming what is missing or inconsistent."""
        if experiment.scan_step_A is None:
            raise ValueError("experiment.scan_step_A: tcBF needs the scan step in Å, found None")
        if isinstance(dataset, np.ndarray):
            scan = experiment.scan_shape if dataset.ndim == 3 else None
            dataset = Dataset.from_array(dataset, scan_shape=scan)
        if not isinstance(dataset, Dataset):
            raise ValueError(f"dataset: expected a ptyframe Dataset or an array of patterns, "
                             f"found {type(dataset).__name__}")
        scan = dataset.scan_shape or experiment.scan_shape
        if scan is None:
            raise ValueError("scan_shape: tcBF needs a raster scan (ny, nx) in the experiment "
                             "or the dataset, found None")
        scan = (int(scan[0]), int(scan[1]))
        if experiment.scan_shape is not None and tuple(experiment.scan_shape) != scan:
            raise ValueError(f"scan_shape: the experiment says {experiment.scan_shape}, the "
                             f"dataset has {scan}")
        if scan[0] * scan[1] != len(dataset):
            raise ValueError(f"scan_shape: expected ny * nx = number of patterns "
                             f"{len(dataset)}, found {scan}")
        if min(scan) < 4:
            raise ValueError(f"scan_shape: expected at least 4 x 4 scan points for tcBF, "
                             f"found {scan}")
        return dataset, scan

    def _bright_field_pixels(self, mean: np.ndarray, experiment: Experiment
                             ) -> tuple[np.ndarray, np.ndarray, float]:
        """Disk centre (ky, kx) px, the selected pixel indices (n, 2) and the disk radius (px,
        from the area of the pixels above half the maximum of the mean pattern)."""
        ny, nx = mean.shape
        iy, ix = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        peak = float(mean.max())
        if not peak > 0:
            raise ValueError("data: the mean pattern has no counts; cannot find a bright field")
        disk = mean >= 0.5 * peak
        w = disk.astype(float)
        center = np.array([(iy * w).sum() / w.sum(), (ix * w).sum() / w.sum()])
        r_px = angle_to_frequency(experiment.convergence_angle_mrad, experiment.wavelength_A) \
            / experiment.dk_inv_A
        radius = np.hypot(iy - center[0], ix - center[1])
        inside = radius <= self.bf_radius_fraction * r_px
        if self.bf_mask == "threshold":
            inside &= mean >= self.bf_threshold * peak
        sel = np.flatnonzero(inside.ravel())
        radius_px = float(np.sqrt(w.sum() / np.pi))
        return center, np.stack([iy.ravel()[sel], ix.ravel()[sel]], axis=1), radius_px

    def _virtual_images(self, dataset: Dataset, pixels: np.ndarray) -> np.ndarray:
        """(n_pixels, N) float32 counts, streamed over pattern chunks."""
        n = len(dataset)
        ky, kx = dataset.pattern_shape
        chunk = self.chunk_patterns or max(1, dataset.chunk_bytes // (8 * ky * kx))
        flat = pixels[:, 0] * kx + pixels[:, 1]
        out = np.empty((len(pixels), n), dtype=np.float32)
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            block = dataset.read(np.arange(start, stop), dtype=np.float32)
            out[:, start:stop] = block.reshape(stop - start, -1)[:, flat].T
        return out

    # ------------------------------------------------------------------ shift fitting
    def _groups(self, pixels: np.ndarray, center: np.ndarray, b: int) -> list[np.ndarray]:
        if b == 1:
            return [np.array([i]) for i in range(len(pixels))]
        rel = np.floor((pixels - np.round(center)) / b).astype(int)
        keys, inverse = np.unique(rel, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        groups = [np.flatnonzero(inverse == g) for g in range(len(keys))]
        return [g for g in groups if len(g) >= (b * b + 1) // 2]

    def _active_names(self, names: tuple[str, ...], level: int, n_levels: int,
                      n_groups: int) -> tuple[str, ...]:
        """Coefficients fitted at one level: first-order ones (C10, C12) before the last level,
        all of ``names`` at the last; never more than the shifts can determine
        (parameters <= 2 x groups / 3)."""
        if level < n_levels - 1:
            first = tuple(n for n in names if n[1] == "1")
            names = first or names
        capacity = max(1, (2 * n_groups) // 3 - 2 - int(self.fit_rotation))
        return names[:capacity]

    def _fit_levels(self, device: Any, weights_px: np.ndarray, images: np.ndarray,
                    pixels: np.ndarray, k_phys: np.ndarray, scan_shape: tuple[int, int],
                    step: np.ndarray, lam: float, start_coeffs: np.ndarray,
                    prior_deg: float, aperture: tuple[float, float],
                    binning: tuple[int, ...] | None = None,
                    names: tuple[str, ...] | None = None, search: bool = True
                    ) -> dict[str, Any]:
        """Shift measurement and aberration fit over the binning levels (default: the
        ``binning`` field; ``names``: the coefficients fitted, default ``fit_aberrations``;
        ``search``: seed C10 and the rotation by :meth:`_search_seed` first: each of its
        candidates is iterated at the first level and the one with the smallest shift
        residual continues). At the last level the coefficients other than C10 are pruned by
        significance (:func:`prune_by_significance`) and standard errors are returned."""
        binning = self.binning if binning is None else binning
        all_names = tuple(self.fit_aberrations) if names is None else tuple(names)
        seed_c10 = None
        center = pixels.mean(axis=0)  # only used to align the binning blocks
        coeffs_all = np.asarray(start_coeffs, dtype=float).copy()
        theta = float(np.deg2rad(prior_deg))
        offset = np.zeros(2)
        levels: list[dict[str, Any]] = []
        timings: dict[str, float] = {}
        images_dev = device.asarray(images, dtype=device.real_dtype)
        last: dict[str, Any] = {}
        stats: dict[str, dict[str, float]] = {}
        for level, b in enumerate(binning):
            tl = time.perf_counter()
            groups = self._groups(pixels, center, b)
            if len(groups) < 6:
                raise ValueError(f"binning: level {b} leaves {len(groups)} pixel groups in the "
                                 f"bright field (at least 6 needed); use smaller binning values")
            g_contrast, k_g = self._group_images(device, groups, weights_px, images_dev,
                                                 k_phys, scan_shape)
            names = self._active_names(all_names, level, len(binning), len(groups))
            # the passes fit the first-order terms (a stiff model that cannot wander off
            # with noise); the higher orders are fitted to the last level's final shifts
            # and kept only if significant (:meth:`_prune`)
            iter_names = tuple(n for n in names if n[1] == "1") or names
            entry: dict[str, Any] = {}
            if level == 0 and search and self.defocus_search and "C10" in all_names:
                # each seed is judged by one shift measurement and fit at the finest level
                # (at most 128 evenly spread groups): coarse groups are blurred by the spread
                # of shifts within a block and do not tell the seeds apart; the seed whose
                # shifts fit best is then iterated through the levels
                i10 = ABERRATION_NAMES.index("C10")
                fine_groups = self._groups(pixels, center, binning[-1])
                pick = np.unique(np.linspace(0, len(fine_groups) - 1,
                                             min(len(fine_groups), 128)).round().astype(int))
                fine, k_fine = self._group_images(device, [fine_groups[i] for i in pick],
                                                  weights_px, images_dev, k_phys, scan_shape)
                trials = []
                for c10, t_seed, score in self._search_seed(device, g_contrast, k_g, lam,
                                                             coeffs_all, theta, step):
                    start = coeffs_all.copy()
                    start[i10] = c10
                    judge = self._iterate_level(device, fine, k_fine, lam, iter_names, start,
                                                t_seed, offset, prior_deg, step, iterations=1,
                                                subpixel=False)
                    trials.append((start, t_seed, score, judge))
                start, t_seed, _, best_judge = min(trials, key=lambda tr: tr[3]["rms"])
                seed_c10 = float(start[i10])
                it = self._iterate_level(device, g_contrast, k_g, lam, iter_names, start,
                                         t_seed, offset, prior_deg, step)
                entry["seed_candidates"] = [
                    {"C10_A": float(st[i10]), "rotation_deg": float(np.rad2deg(t)),
                     "score": float(sc), "residual_rms_A": float(judge["rms"]),
                     "fitted_C10_A": float(judge["coeffs_all"][i10]),
                     "fitted_rotation_deg": float(np.rad2deg(judge["theta"])),
                     # rms difference of the predicted shifts from the chosen seed's, px
                     "shift_difference_px": float(np.sqrt(np.mean(np.sum(
                         ((judge["fitted"] - best_judge["fitted"]) / step) ** 2, axis=1))))}
                    for st, t, sc, judge in trials]
                del fine
            else:
                it = self._iterate_level(device, g_contrast, k_g, lam, iter_names,
                                         coeffs_all, theta, offset, prior_deg, step,
                                         global_search=level == 0 and search)
            if level == len(binning) - 1:
                it, stats = self._prune(it, k_g, lam, step, names)
                names = it["names"]
            coeffs_all, theta, offset = it["coeffs_all"], it["theta"], it["offset"]
            measured, fitted, rms = it["measured"], it["fitted"], it["rms"]
            dt = time.perf_counter() - tl
            timings[f"level{level}_bin{b}"] = dt
            levels.append({
                "binning": int(b), "groups": int(len(groups)), "iterations": it["iterations"],
                "fitted": list(names), "residual_rms_A": rms, "time_s": dt,
                "rotation_deg": float(np.rad2deg(theta)),
                "aberrations_A": {n: float(coeffs_all[ABERRATION_NAMES.index(n)])
                                  for n in self.fit_aberrations},
                **entry,
            })
            last = {"measured": measured, "fitted": fitted, "group_k": k_g,
                    "residual_rms_A": rms}
            del g_contrast
        return {**last, "theta": float(theta), "offset": np.asarray(offset),
                "all_coeffs": coeffs_all, "levels": levels, "timings": timings,
                "seed_C10": seed_c10, "stats": stats}

    def _group_images(self, device: Any, groups: list[np.ndarray], weights_px: np.ndarray,
                      images_dev: Any, k_phys: np.ndarray, scan_shape: tuple[int, int]
                      ) -> tuple[Any, np.ndarray]:
        """Contrast images (G, sy, sx) of pixel groups (count-weighted sums) and their mean
        frequencies (G, 2) 1/Å."""
        member = np.zeros((len(groups), len(weights_px)), dtype=np.float64)
        for g, idx in enumerate(groups):
            member[g, idx] = 1.0
        w_g = member @ weights_px
        k_g = (member * weights_px) @ k_phys / w_g[:, None]
        sums = device.asarray(member, dtype=device.real_dtype) @ images_dev
        g_contrast = sums / device.asarray(w_g, dtype=device.real_dtype)[:, None] - 1.0
        return g_contrast.reshape(len(groups), *scan_shape), k_g

    def _iterate_level(self, device: Any, g_contrast: Any, k_g: np.ndarray, lam: float,
                       names: tuple[str, ...], coeffs_all: np.ndarray, theta: float,
                       offset: np.ndarray, prior_deg: float, step: np.ndarray,
                       iterations: int | None = None, global_search: bool = False,
                       subpixel: bool = True) -> dict[str, Any]:
        """``iterations`` (default ``iterations_per_level``) passes of shift measurement and
        fit of ``names`` (Å), the rotation and the offset at one binning level, starting from
        the given model. ``global_search``: the first fit searches the rotation over 180 deg
        around ``prior_deg`` (else every fit starts from the current model). ``subpixel``:
        refine the correlation peaks by the matrix DFT on the last pass and once the model
        moves by less than 0.05 px (earlier passes use the parabola alone)."""
        coeffs_all = np.asarray(coeffs_all, dtype=float).copy()
        index = [ABERRATION_NAMES.index(n) for n in names]
        fixed = coeffs_all.copy()
        fixed[index] = 0.0
        model = ShiftModel(k_g, lam, names, fixed, fit_rotation=self.fit_rotation,
                           theta=theta)
        x = model.pack(coeffs_all[index], theta, offset)
        current = model.predict(x) / step  # pixels
        n_iter = 0
        measured = current * step
        n_max = self.iterations_per_level if iterations is None else iterations
        change = np.inf
        for i in range(n_max):
            n_iter += 1
            fine = subpixel and (i == n_max - 1 or change < 0.05)
            measured = (current + self._measure(device, g_contrast, current, fine)) * step
            if global_search and i == 0:
                x = self._fit(model, measured, prior_deg, step)
            else:
                x = self._fit(model, measured, None, step, start=x)
            new = model.predict(x) / step
            change = float(np.max(np.abs(new - current)))
            current = new
            if change < 0.01 and (fine or not subpixel):
                break
        coeffs, theta_fit, offset_fit = model.unpack(x)
        coeffs_all[index] = coeffs
        fitted = model.predict(x)
        rms = float(np.sqrt(np.mean(np.sum((fitted - measured) ** 2, axis=1))))
        return {"coeffs_all": coeffs_all, "theta": float(theta_fit),
                "offset": np.asarray(offset_fit), "measured": measured, "fitted": fitted,
                "rms": rms, "iterations": n_iter, "names": tuple(names), "x": x}

    def _prune(self, it: dict[str, Any], k_g: np.ndarray, lam: float, step: np.ndarray,
               names: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
        """Fit ``names`` to the last level's shifts, then keep only significant coefficients
        (C10 is always kept; the others need |C| / standard error >= ``significance`` and a
        largest shift >= ``min_shift_px``). Returns the updated level result and
        {name: {"value", "error", "t", "effect"}}, plus "rotation" (rad)."""
        measured = it["measured"]
        theta0, offset0 = it["theta"], it["offset"]
        coeffs0 = it["coeffs_all"]
        all_fitted = tuple(names)

        def fit(names: tuple[str, ...]) -> tuple[ShiftModel, np.ndarray]:
            fixed = coeffs0.copy()
            fixed[[ABERRATION_NAMES.index(n) for n in all_fitted]] = 0.0
            model = ShiftModel(k_g, lam, names, fixed, fit_rotation=self.fit_rotation,
                               theta=theta0)
            start = model.pack(coeffs0[[ABERRATION_NAMES.index(n) for n in names]], theta0,
                               offset0)
            return model, self._fit(model, measured, None, step, start=start)

        min_shift_A = self.min_shift_px * float(np.mean(step))

        def assess(result: tuple[ShiftModel, np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            model, x = result
            errors = standard_errors(model.jacobian(x),
                                     model.predict(x).reshape(-1) - measured.reshape(-1))
            n = len(model.fit_names)
            values = np.asarray(x[:n])
            # largest shift (Å) each term gives any group, over the smallest worth keeping
            largest = np.linalg.norm(model.basis, axis=2).max(axis=1) * np.abs(values)
            return values, errors[:n], largest / max(min_shift_A, 1e-300)

        (model, x), kept, record = prune_by_significance(
            all_fitted, fit, assess, lambda n: n != "C10", self.significance)
        errors = standard_errors(model.jacobian(x),
                                 model.predict(x).reshape(-1) - measured.reshape(-1))
        coeffs, theta, offset = model.unpack(x)
        coeffs_all = coeffs0.copy()
        coeffs_all[[ABERRATION_NAMES.index(n) for n in all_fitted]] = 0.0
        coeffs_all[[ABERRATION_NAMES.index(n) for n in kept]] = coeffs
        for j, name in enumerate(kept):
            record[name] = {**record[name], "value": float(coeffs[j]),
                            "error": float(errors[j]),
                            "t": float(abs(coeffs[j]) / errors[j]) if errors[j] > 0
                            else float("inf")}
        if self.fit_rotation:
            record["rotation"] = {"value": float(theta), "error": float(errors[len(kept)]),
                                  "t": float("inf")}
        fitted = model.predict(x)
        rms = float(np.sqrt(np.mean(np.sum((fitted - measured) ** 2, axis=1))))
        out = {**it, "coeffs_all": coeffs_all, "theta": float(theta),
               "offset": np.asarray(offset), "fitted": fitted, "rms": rms, "names": kept,
               "x": x}
        return out, record

    def _search_seed(self, device: Any, images: Any, k_g: np.ndarray, lam: float,
                     coeffs_all: np.ndarray, theta: float, step: np.ndarray
                     ) -> list[tuple[float, float, float]]:
        """Seed C10 (and the rotation) by a grid search: maximise the overlap-normalised
        energy of the aligned sum, sum_{g<h} corr_gh(sigma_h - sigma_g) / sum overlap, over a
        subset of at most 32 images (central crop of at most 64 x 64 scan points).

        corr_gh are pairwise cross-correlation maps (zero-padded, 2x Fourier-interpolated,
        read bilinearly), so each trial costs one lookup per pair. C10 spans shifts of up to
        half the (cropped) field at the largest |k| in steps of 0.5 px there; the rotation
        spans +-90 deg around ``theta`` in steps of at most 3 deg (0.5 px at the largest
        shift) when fitted (with both signs of C10 this covers every rotation).

        Returns up to ``seed_candidates`` (C10 Å, theta rad, score), best first, whose
        predicted shifts differ by more than 1 scan pixel rms: on noisy or crystalline data
        the best score is not always the truth (a lattice aligns at several wrong shifts),
        so the caller iterates each and keeps the one the measured shifts fit best.
        """
        xp = device.xp
        g_all, sy0, sx0 = images.shape
        pick = np.unique(np.linspace(0, g_all - 1, min(g_all, 32)).round().astype(int))
        cy, cx = min(sy0, 64), min(sx0, 64)
        y0, x0 = (sy0 - cy) // 2, (sx0 - cx) // 2
        sub = images[device.asarray(pick)][:, y0:y0 + cy, x0:x0 + cx]
        g = len(pick)
        py, px = 2 * cy, 2 * cx
        buf = xp.zeros((g, py, px), dtype=device.complex_dtype)
        buf[:, :cy, :cx] = sub - sub.mean(axis=(1, 2), keepdims=True)
        spec = device.fft2(buf, overwrite=True)
        ii, jj = np.triu_indices(g, 1)
        up = 2
        maps = np.empty((len(ii), up * py, up * px), dtype=np.float32)
        for start in range(0, len(ii), 64):
            a = device.asarray(ii[start:start + 64])
            b = device.asarray(jj[start:start + 64])
            prod = xp.conj(spec[a]) * spec[b]  # corr_ab(d) = sum_r img_a(r) img_b(r + d)
            big = xp.zeros((len(a), up * py, up * px), dtype=device.complex_dtype)
            hy, hx = py // 2, px // 2
            big[:, :hy, :hx] = prod[:, :hy, :hx]
            big[:, :hy, -hx:] = prod[:, :hy, -hx:]
            big[:, -hy:, :hx] = prod[:, -hy:, :hx]
            big[:, -hy:, -hx:] = prod[:, -hy:, -hx:]
            maps[start:start + 64] = device.to_host(device.ifft2(big).real)
        pair_index = np.arange(len(ii))[None, :]

        def lookup(d: np.ndarray) -> np.ndarray:
            """Bilinear corr at displacements d (T, pairs, 2) in scan pixels."""
            fy = d[..., 0] * up
            fx = d[..., 1] * up
            iy0 = np.floor(fy).astype(int)
            ix0 = np.floor(fx).astype(int)
            wy = fy - iy0
            wx = fx - ix0
            ny, nx = up * py, up * px
            total = 0.0
            for dy, wyy in ((0, 1 - wy), (1, wy)):
                for dx, wxx in ((0, 1 - wx), (1, wx)):
                    total = total + wyy * wxx * maps[pair_index, (iy0 + dy) % ny,
                                                     (ix0 + dx) % nx]
            return total

        i10 = ABERRATION_NAMES.index("C10")
        others = coeffs_all.copy()
        others[i10] = 0.0
        base = ShiftModel(k_g[pick], lam, ("C10",), others, fit_rotation=False)
        v0 = base.specimen_shifts(np.zeros(1))  # (g, 2) Å
        b10 = base.specimen_shifts(np.ones(1)) - v0  # shift per Å of C10
        k_max = float(np.max(np.hypot(k_g[pick, 0], k_g[pick, 1])))
        half_px = 0.5 * min(cy, cx)
        c_max = half_px * float(np.min(step)) / (lam * max(k_max, 1e-12))
        c10s = np.linspace(-c_max, c_max, 4 * int(np.ceil(half_px)) + 1)
        if self.fit_rotation:
            d_theta = min(3.0, float(np.rad2deg(0.5 / max(half_px, 1.0))))
            thetas = theta + np.deg2rad(np.arange(-90.0, 90.0, d_theta))
        else:
            thetas = np.array([theta])
        def scores_at(c10_values: np.ndarray, t: float) -> np.ndarray:
            rot = _rotation_yx(float(t))
            shifts = (v0[None] + c10_values[:, None, None] * b10[None]) @ rot / step
            d = shifts[:, jj] - shifts[:, ii]  # (T, pairs, 2) scan pixels
            overlap = (np.clip(cy - np.abs(d[..., 0]), 0, None)
                       * np.clip(cx - np.abs(d[..., 1]), 0, None)).sum(axis=1)
            score = lookup(d).sum(axis=1) / np.maximum(overlap, 1e-12)
            score[overlap < 0.3 * len(ii) * cy * cx] = -np.inf
            return score

        scores = np.stack([scores_at(c10s, float(t)) for t in thetas])
        # the best grid points that predict clearly different shifts (> 1 px rms apart),
        # each refined on a finer local grid (the alignment peak is about a pixel wide,
        # narrower than the coarse grid's half step at the largest shifts)
        dc = float(c10s[1] - c10s[0]) if len(c10s) > 1 else 1.0
        dt = float(thetas[1] - thetas[0]) if len(thetas) > 1 else 0.0
        chosen: list[tuple[float, float, float]] = []
        fields: list[np.ndarray] = []

        def field_of(c: float, t: float) -> np.ndarray:
            return (v0 + c * b10) @ _rotation_yx(float(t)) / step

        for flat in np.argsort(scores, axis=None)[::-1]:
            i, j = np.unravel_index(int(flat), scores.shape)
            if not np.isfinite(scores[i, j]) or len(chosen) >= 3 * self.seed_candidates:
                break
            field = field_of(c10s[j], thetas[i])
            if all(np.sqrt(np.mean(np.sum((field - f) ** 2, axis=1))) > 1.0 for f in fields):
                fields.append(field)
                c, t, sc = float(c10s[j]), float(thetas[i]), float(scores[i, j])
                for shrink in (0.5, 0.25):
                    cs = c + shrink * dc * np.arange(-2, 3)
                    for tt in t + shrink * dt * np.arange(-2, 3) if dt else [t]:
                        local = scores_at(cs, float(tt))
                        k = int(np.argmax(local))
                        if local[k] > sc:
                            sc, best_c, best_t = float(local[k]), float(cs[k]), float(tt)
                            c_new, t_new = best_c, best_t
                    if sc > float(scores[i, j]):
                        c, t = c_new, t_new
                chosen.append((c, t, sc))
        chosen.sort(key=lambda item: -item[2])
        chosen = chosen[:self.seed_candidates]
        return chosen or [(float(coeffs_all[i10]), float(theta), float("nan"))]

    def _refine_defocus(self, device: Any, contrast_px: np.ndarray, k_phys: np.ndarray,
                        coeffs_all: np.ndarray, candidates: list[float], theta: float,
                        scan_shape: tuple[int, int], step: np.ndarray, lam: float,
                        aperture: tuple[float, float]) -> tuple[np.ndarray, dict[str, Any]]:
        """Refine C10 by maximising the transfer-matched, overlap-normalised alignment of the
        bright-field images (at most 96 pixels, central crop of at most 96 x 96 scan points):

        E(C10) = (|sum_k A_k|^2 - sum_k |A_k|^2) / (|sum_k W_k|^2 - sum_k |W_k|^2), summed over
        frequencies, with A_k = FFT(image_k) e^{2 pi i q.sigma_k} conj(T_k(q)) and
        W_k = FFT(window) e^{2 pi i q.sigma_k}; shifts sigma_k and residual transfers T_k from
        the model with this C10. The matched filter conj(T_k) removes the fringe offsets
        (+-pi lambda C10 |g|^2) of images that see a reflection through one side band only
        (lattice reflections near the aperture radius), which bias the shift fit; the window
        term removes the pull of the shrinking overlap towards small shifts. Search: a grid
        (steps of 2 % of |C10|) over the span of the ``candidates`` (the shift-fit value and
        the seed of :meth:`_search_seed`) widened by 15 % + 20 Å on each side, then a
        bounded scalar search around the best grid point.
        """
        from scipy.optimize import minimize_scalar

        xp = device.xp
        t0 = time.perf_counter()
        n = len(k_phys)
        pick = np.unique(np.linspace(0, n - 1, min(n, 96)).round().astype(int))
        sy0, sx0 = scan_shape
        sy, sx = min(sy0, 96), min(sx0, 96)
        y0, x0 = (sy0 - sy) // 2, (sx0 - sx) // 2
        crop = contrast_px[pick].reshape(-1, sy0, sx0)[:, y0:y0 + sy, x0:x0 + sx]
        py, px = 2 * sy, 2 * sx
        buf = xp.zeros((len(pick), py, px), dtype=device.complex_dtype)
        buf[:, :sy, :sx] = device.asarray(crop - crop.mean(axis=(1, 2), keepdims=True))
        spec = device.fft2(buf, overwrite=True)
        window = np.zeros((py, px))
        window[:sy, :sx] = 1.0
        window_spec = device.asarray(np.fft.fft2(window), dtype=device.complex_dtype)
        rot = _rotation_yx(theta)
        qs_y, qs_x = spatial_frequencies((py, px), step)
        i10 = ABERRATION_NAMES.index("C10")
        k_sel = k_phys[pick]
        # Every term that depends on C10 is cheap to update (chi is linear in the
        # coefficients and the C10 part of the residual phases D-+ is -+ pi lambda C10 q^2,
        # independent of k), so the transfers of the other coefficients are formed once:
        # conj(T_k) = Cm_k E - Cp_k conj(E), E = exp(i pi lambda C10 q^2).
        rest = coeffs_all.copy()
        rest[i10] = 0.0
        grad_rest = aberration_gradient(k_sel[:, 0], k_sel[:, 1], lam, rest)
        grad_10 = aberration_gradient_basis(k_sel[:, 0], k_sel[:, 1], lam, ("C10",))[0]
        q_y = device.asarray(rot[0, 0] * qs_y + rot[0, 1] * qs_x)
        q_x = device.asarray(rot[1, 0] * qs_y + rot[1, 1] * qs_x)
        s_m = xp.empty_like(spec)
        s_p = xp.empty_like(spec)
        for start in range(0, len(pick), 16):
            sel = slice(start, start + 16)
            c_m, c_p = _transfer_sides(xp, q_y, q_x, k_sel[sel], grad_rest[sel], lam, rest,
                                       aperture[0], aperture[1])
            s_m[sel] = spec[sel] * xp.conj(c_m)
            s_p[sel] = spec[sel] * xp.conj(c_p)
        phase_q2 = device.asarray(np.pi * lam * (qs_y**2 + qs_x**2))
        fy1 = qs_y[:, 0]
        fx1 = qs_x[0, :]

        def negative_alignment(c10: float) -> float:
            grad = grad_rest + c10 * grad_10
            shifts = (-grad / (2 * np.pi)) @ rot  # scan frame, Å
            ey = device.asarray(np.exp(2j * np.pi * shifts[:, 0, None] * fy1),
                                dtype=device.complex_dtype)
            ex = device.asarray(np.exp(2j * np.pi * shifts[:, 1, None] * fx1),
                                dtype=device.complex_dtype)
            ramp = ey[:, :, None] * ex[:, None, :]
            e = xp.exp(1j * c10 * phase_q2).astype(device.complex_dtype)
            a = ramp * (s_m * e - s_p * xp.conj(e))
            w = window_spec * ramp
            num = float(xp.sum(xp.abs(a.sum(axis=0)) ** 2)) - float(xp.sum(xp.abs(a) ** 2))
            den = float(xp.sum(xp.abs(w.sum(axis=0)) ** 2)) - float(xp.sum(xp.abs(w) ** 2))
            return -num / max(den, 1e-300)

        c0 = float(coeffs_all[i10])
        scale = max(abs(c) for c in [c0, *candidates])
        lo = min([c0, *candidates]) - 0.15 * scale - 20.0
        hi = max([c0, *candidates]) + 0.15 * scale + 20.0
        grid_step = max(0.02 * scale, 2.0)
        grid = np.linspace(lo, hi, int(np.clip(np.ceil((hi - lo) / grid_step), 4, 80)) + 1)
        values = np.array([negative_alignment(float(c)) for c in grid])
        j = int(np.argmin(values))
        bounds = (float(grid[max(j - 1, 0)]), float(grid[min(j + 1, len(grid) - 1)]))
        res = minimize_scalar(negative_alignment, bounds=bounds, method="bounded",
                              options={"xatol": 0.25})
        best = float(res.x) if res.fun <= values[j] else float(grid[j])
        out = coeffs_all.copy()
        out[i10] = best
        info = {"stage": "refine_defocus", "pixels": int(len(pick)),
                "C10_shift_fit_A": c0, "C10_candidates_A": [float(c) for c in candidates],
                "C10_A": best, "evaluations": int(res.nfev) + len(grid),
                "time_s": time.perf_counter() - t0}
        return out, info

    def _fit(self, model: ShiftModel, measured: np.ndarray, prior_deg: float | None,
             step: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
        """Global rotation search (linear least squares at each 1-deg step over 180 deg
        around ``prior_deg``, which covers every shift hypothesis: theta + 180 deg with all
        coefficients negated predicts the same shifts), then refinement of all parameters
        with the analytic Jacobian. ``prior_deg`` None: start from ``start`` (or the model's
        theta) without a global search."""
        if start is None and model.fit_rotation and prior_deg is not None:
            prior = np.deg2rad(prior_deg)
            best_x, best_cost = model.linear_fit(measured, float(prior))
            for t in prior + np.deg2rad(np.arange(-89.5, 90.0, 1.0)):
                xt, cost = model.linear_fit(measured, float(t))
                if cost < best_cost:
                    best_x, best_cost = xt, cost
            start = best_x
        elif start is None:
            start, _ = model.linear_fit(measured, model.theta)
        target = measured.reshape(-1)
        scale_A = self.outlier_scale_px * float(np.mean(step))
        res = least_squares(
            lambda x: model.predict(x).reshape(-1) - target, start,
            jac=model.jacobian, method="trf", x_scale="jac", loss=self.loss,
            f_scale=scale_A, xtol=1e-10, ftol=1e-10, gtol=1e-10, max_nfev=200)
        return res.x

    def _measure(self, device: Any, images: Any, current_px: np.ndarray,
                 subpixel: bool = True) -> np.ndarray:
        """Residual shift (pixels) of each image, aligned by ``current_px``, relative to the
        aligned sum of the other images.

        The images are zero-padded (x2) and tapered; the cross-correlation is divided by the
        correlation of the sampling windows (the overlap), which removes the envelope that
        would otherwise pull every shift towards aligning the scan windows (i.e. towards zero
        and an underestimated defocus). Only displacements with at least half of the largest
        overlap are searched.
        """
        xp = device.xp
        g, sy, sx = images.shape
        py, px = 2 * sy, 2 * sx
        taper = np.outer(_tukey(sy, self.edge_taper), _tukey(sx, self.edge_taper))
        window = xp.zeros((py, px), dtype=device.complex_dtype)
        window[:sy, :sx] = device.asarray(taper, dtype=device.real_dtype)
        window_spec = device.fft2(window)
        taper_dev = device.asarray(taper, dtype=device.real_dtype)
        fy = device.fftfreq(py)[:, None]
        fx = device.fftfreq(px)[None, :]
        lowpass = xp.exp(-2 * np.pi**2 * self.correlation_sigma_px**2 * (fy**2 + fx**2))
        lowpass = lowpass.astype(device.real_dtype)
        shifts = device.asarray(current_px, dtype=float)
        batch = max(1, int(2**26 // (py * px * 16 * 4)))
        fy1 = fy[:, 0]
        fx1 = fx[0, :]

        def ramps(sel: slice) -> Any:
            # exp(2 pi i (fy sy + fx sx)) is separable: outer product of two 1-D ramps
            s = shifts[sel]
            ey = xp.exp(2j * np.pi * s[:, 0, None] * fy1).astype(device.complex_dtype)
            ex = xp.exp(2j * np.pi * s[:, 1, None] * fx1).astype(device.complex_dtype)
            return ey[:, :, None] * ex[:, None, :]

        def aligned(sel: slice) -> Any:
            buf = xp.zeros((sel.stop - sel.start, py, px), dtype=device.complex_dtype)
            buf[:, :sy, :sx] = images[sel] * taper_dev
            return device.fft2(buf, overwrite=True) * ramps(sel)

        batches = [slice(i, min(g, i + batch)) for i in range(0, g, batch)]
        ref = xp.zeros((py, px), dtype=device.complex_dtype)
        count = xp.zeros((py, px), dtype=device.complex_dtype)
        for sel in batches:
            ref += aligned(sel).sum(axis=0)
            count += (window_spec * ramps(sel)).sum(axis=0)
        out = np.empty((g, 2))
        for sel in batches:
            a = aligned(sel)
            w = window_spec * ramps(sel)
            prod = (ref[None] - a) * xp.conj(a) * lowpass
            env = (count[None] - w) * xp.conj(w) * lowpass
            out[sel] = -self._peak(device, device.ifft2(prod).real, prod,
                                   device.ifft2(env).real, env, subpixel)
        return out

    def _peak(self, device: Any, corr: Any, prod: Any, env: Any, env_prod: Any,
              subpixel: bool = True) -> np.ndarray:
        """Sub-pixel argmax (G, 2), signed pixels, of corr / env (overlap-normalised):
        parabola, then (``subpixel``) the matrix-DFT refinement."""
        xp = device.xp
        g, py, px = corr.shape
        env_max = env.reshape(g, -1).max(axis=1)[:, None, None]
        ok = env > self.min_overlap * env_max
        if self.search_radius_px is not None:
            dy = xp.fft.fftfreq(py) * py
            dx = xp.fft.fftfreq(px) * px
            ok = ok & ((dy[:, None] ** 2 + dx[None, :] ** 2) <= self.search_radius_px**2)[None]
        norm = xp.where(ok, corr / xp.where(ok, env, 1.0), -xp.inf)
        flat = xp.argmax(norm.reshape(g, -1), axis=1)
        iy = flat // px
        ix = flat % px
        rows = xp.arange(g)
        finite_floor = xp.where(ok, norm, xp.inf).reshape(g, -1).min(axis=1)

        def at(dy: int, dx: int) -> Any:
            v = norm[rows, (iy + dy) % py, (ix + dx) % px]
            return xp.where(xp.isfinite(v), v, finite_floor)

        c0 = at(0, 0)
        est = []
        for (lo, hi), base in ((((-1, 0), (1, 0)), iy), (((0, -1), (0, 1)), ix)):
            cm, cp = at(*lo), at(*hi)
            est.append(base + _parabola(xp, cm, c0, cp, 0.5))
        peak = xp.stack(est, axis=1).astype(float)
        size = xp.asarray([py, px], dtype=float)
        peak = xp.where(peak > size / 2, peak - size, peak)
        if subpixel and self.subpixel_upsample > 1:
            u = self.subpixel_upsample
            offsets = xp.arange(-u, u + 1, dtype=float) / u  # +-1 pixel around the estimate
            fy = xp.fft.fftfreq(py)
            fx = xp.fft.fftfreq(px)
            ey = xp.exp(2j * np.pi * (peak[:, 0, None] + offsets)[:, :, None] * fy)
            ex = xp.exp(2j * np.pi * fx[:, None] * (peak[:, 1, None] + offsets)[:, None, :])
            ey = ey.astype(prod.dtype)
            ex = ex.astype(prod.dtype)
            # two plain einsum contractions: numpy's stacked complex matmul goes through
            # many small (multi-threaded) BLAS calls and was 10-100x slower here
            num = xp.einsum("gax,gxb->gab", xp.einsum("gay,gyx->gax", ey, prod), ex).real
            den = xp.einsum("gax,gxb->gab", xp.einsum("gay,gyx->gax", ey, env_prod), ex).real
            local = num / xp.maximum(den, 1e-12 * xp.abs(den).max())
            kk = 2 * u + 1
            best = xp.argmax(local.reshape(g, -1), axis=1)
            by = xp.clip(best // kk, 1, kk - 2)
            bx = xp.clip(best % kk, 1, kk - 2)
            dy = _parabola(xp, local[rows, by - 1, bx], local[rows, by, bx],
                           local[rows, by + 1, bx], 1.0)
            dx = _parabola(xp, local[rows, by, bx - 1], local[rows, by, bx],
                           local[rows, by, bx + 1], 1.0)
            peak = peak + (xp.stack([by + dy, bx + dx], axis=1) - u) / u
        return device.to_host(peak).astype(float)

    # ------------------------------------------------------------------ image and phase
    def _upsampled_image(self, device: Any, contrast_px: np.ndarray, shifts_A: np.ndarray,
                         scan_shape: tuple[int, int], step: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Shifted sparse sum / shifted sampling mask on a scan_step / upsample grid."""
        xp = device.xp
        up = self.upsample
        pix = step / up
        sy, sx = scan_shape
        # corrected sample positions (Å) = scan position - shift
        lo = -shifts_A.max(axis=0)
        hi = (np.array([sy - 1, sx - 1]) * step) - shifts_A.min(axis=0)
        origin = np.floor(lo / pix) * pix - pix
        shape = tuple(int(v) for v in np.ceil((hi - origin) / pix) + 3)
        acc = xp.zeros(shape[0] * shape[1], dtype=device.real_dtype)
        wsum = xp.zeros_like(acc)
        gy, gx = np.meshgrid(np.arange(sy) * step[0], np.arange(sx) * step[1], indexing="ij")
        gy = device.asarray(gy.ravel())
        gx = device.asarray(gx.ravel())
        values = device.asarray(contrast_px, dtype=device.real_dtype)
        sh = device.asarray(shifts_A)
        batch = max(1, int(2**24 // (4 * sy * sx)))
        for start in range(0, len(contrast_px), batch):
            sel = slice(start, start + batch)
            fy = (gy[None, :] - sh[sel, 0, None] - origin[0]) / pix[0]
            fx = (gx[None, :] - sh[sel, 1, None] - origin[1]) / pix[1]
            y0 = xp.floor(fy)
            x0 = xp.floor(fx)
            wy = fy - y0
            wx = fx - x0
            y0 = y0.astype(int)
            x0 = x0.astype(int)
            v = values[sel]
            for dy, wyy in ((0, 1 - wy), (1, wy)):
                for dx, wxx in ((0, 1 - wx), (1, wx)):
                    w = (wyy * wxx).astype(device.real_dtype)
                    idx = (y0 + dy) * shape[1] + (x0 + dx)
                    device.scatter_add(acc, idx, v * w)
                    device.scatter_add(wsum, idx, w)
        acc = acc.reshape(shape)
        wsum = wsum.reshape(shape)
        floor = 1e-3 * float(wsum.max())
        image = xp.where(wsum > floor, acc / xp.maximum(wsum, floor), 0.0)
        return device.to_host(image), device.to_host(wsum), origin

    def _phase(self, device: Any, tcbf: np.ndarray, weight: np.ndarray, step: np.ndarray,
               k_phys: np.ndarray, lam: float, coeffs: np.ndarray, theta: float,
               aperture: tuple[float, float]) -> np.ndarray:
        """Weak-phase estimate: Wiener division of the tcBF contrast by the mean transfer."""
        xp = device.xp
        ny, nx = tcbf.shape
        pix = step / self.upsample
        valid = weight >= 0.25 * weight.max()
        img = np.where(valid, tcbf, 0.0)
        qs_y, qs_x = spatial_frequencies((ny, nx), pix)
        # scan-frame frequency -> physical frame: q = R(theta) q_scan
        rot = _rotation_yx(theta)
        q_y = rot[0, 0] * qs_y + rot[0, 1] * qs_x
        q_x = rot[1, 0] * qs_y + rot[1, 1] * qs_x
        n_k = len(k_phys)
        pick = np.unique(np.linspace(0, n_k - 1, min(n_k, 128)).round().astype(int))
        transfer = tcbf_transfer(xp, (device.asarray(q_y), device.asarray(q_x)),
                                 k_phys[pick], lam, coeffs, aperture[0], aperture[1])
        spec = device.fft2(device.asarray(img, dtype=device.complex_dtype))
        t2 = xp.abs(transfer) ** 2
        eps = self.wiener_epsilon * float(t2.max())
        phase = device.ifft2(spec * xp.conj(transfer) / (t2 + eps)).real
        phase = device.to_host(phase)
        return np.where(valid, phase - phase[valid].mean(), 0.0)


def _parabola(xp: Any, cm: Any, c0: Any, cp: Any, limit: float) -> Any:
    """Vertex offset of the parabola through (-1, cm), (0, c0), (1, cp), clipped to +-limit
    (0 where the three points are not a maximum)."""
    denom = cm - 2 * c0 + cp
    safe = xp.where(denom < 0, denom, -1.0)
    return xp.where(denom < 0, xp.clip(0.5 * (cm - cp) / safe, -limit, limit), 0.0)


def _tukey(n: int, fraction: float) -> np.ndarray:
    """1-D Tukey window: cosine roll-off over ``fraction`` of the length at each end."""
    if fraction <= 0:
        return np.ones(n)
    width = max(1.0, fraction * n)
    x = np.arange(n, dtype=float)
    edge = np.minimum(x + 0.5, n - 0.5 - x)
    return np.where(edge < width, 0.5 - 0.5 * np.cos(np.pi * edge / width), 1.0)


def experiment_from_tcbf(experiment: Experiment, result: DirectResult) -> Experiment:
    """``experiment`` with the tcBF-fitted aberrations (Å) and scan rotation (deg), to start an
    iterative reconstruction from them (the aperture probe and the scan-grid positions use
    them). Coefficients not fitted keep the experiment's values. A transposed fit cannot be
    expressed by an Experiment: transpose the data instead (``Preprocessing(transpose=True)``).
    """
    if result.method != TiltCorrectedBF.name:
        raise ValueError(f"result: expected a tcBF result (method 'tcbf'), found "
                         f"{result.method!r}")
    if result.values.get("transpose"):
        raise ValueError("result.values['transpose']: the fit found the detector transposed "
                         "relative to the scan; reload the data with "
                         "Preprocessing(transpose=True) and run tcBF again")
    aberrations = dict(experiment.aberrations)
    aberrations.update({k: float(v) for k, v in result.values["aberrations_A"].items()})
    return attrs.evolve(experiment, aberrations=aberrations,
                        scan_rotation_deg=float(result.values["rotation_deg"]))
