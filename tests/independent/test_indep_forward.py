"""ptyframe's forward models against patterns and images simulated by abTEM (tests/data/
indep_*.npz, see tests/data/make_independent_data.py): given abTEM's own transmission, probe,
positions, defocus and tilts, ptyframe must reproduce abTEM's data, and a wrong convention
(defocus sign, probe centre, tilts, single slice) must make the agreement much worse.

Residuals are R = sqrt(sum (I_model - I_abTEM)^2 / sum I_abTEM^2). Far-field patterns are
compared inside |k| <= 0.6 x Nyquist, within abTEM's 2/3-Nyquist anti-aliasing aperture
(abTEM also band-limits after the last slice, ptyframe does not). The data are float32, so
about 3e-7 is the floor.
"""

from __future__ import annotations

import numpy as np
import pytest
from indep_data import band_mask, far_field_patterns, load, relative_residual

from ptyframe import Device, load_registry
from ptyframe.engine.model import PtychographyModel

REGISTRY = load_registry()
BAND = band_mask(32)


def multislice(metadata: dict, **settings: float) -> object:
    return REGISTRY.create("propagator", {"type": "multislice",
                                          "slice_thickness_A": metadata["slice_thickness_A"],
                                          **settings})


def residual(name: str, **kwargs: object) -> float:
    arrays, md = load(name)
    model = far_field_patterns(arrays, md, kwargs.pop("propagator", None) or multislice(md),
                               **kwargs)
    return relative_residual(model, arrays["patterns"], BAND)


def test_far_field_single_slice_matches_abtem():
    """Probe shift, window placement (probe centre at window pixel n // 2), transmission and
    the ortho FFT: measured R = 2.9e-7."""
    assert residual("far_field") < 1e-5


def test_far_field_probe_centre_convention_matters():
    """Negative control: the probe centre one pixel off (a wrong window convention) ->
    measured R = 0.054 (bound 1e-2, 1000x the agreement bound)."""
    arrays, md = load("far_field")
    shifted = dict(arrays, positions_A=arrays["positions_A"] + md["pixel_size_A"] * np.array(
        [1.0, 0.0]))
    model = far_field_patterns(shifted, md, multislice(md))
    assert relative_residual(model, arrays["patterns"], BAND) > 1e-2


def test_multislice_matches_abtem_and_a_single_slice_does_not():
    """15.6 Å of SrTiO3 in 8 slices: multislice with the default hard 2/3-Nyquist band limit
    R = 1.9e-3; with abTEM's taper (rolloff 0.02) R = 4e-6; the projected object in one
    slice (no propagation) R = 4.4e-2."""
    arrays, md = load("multislice")
    assert md["n_slices"] == 8
    r_default = residual("multislice")
    r_taper = residual("multislice", propagator=multislice(md, damping_cutoff=2 / 3,
                                                           rolloff=0.02))
    projected = np.prod(arrays["transmission"], axis=0, keepdims=True)
    r_single = residual("multislice", transmission=projected)
    assert r_default < 5e-3, r_default
    assert r_taper < 1e-4, r_taper
    assert r_single > 10 * r_default, (r_single, r_default)


def test_mixed_state_probe_modes_are_summed():
    """Defocus spread: abTEM's patterns are the weighted incoherent sum over 5 coherent
    probes; ptyframe's far field sums |FFT|^2 over the probe modes sqrt(w_m) P_m: R = 2.5e-7.
    The flux (pattern sums, ~1) agrees to 0.1 %; a mean over modes would give 1/5."""
    arrays, md = load("mixed_state")
    assert arrays["probe"].shape[0] == 5
    model = far_field_patterns(arrays, md, multislice(md))
    assert relative_residual(model, arrays["patterns"], BAND) < 1e-5
    np.testing.assert_allclose(model.sum(axis=(1, 2)), arrays["patterns"].sum(axis=(1, 2)),
                               rtol=2e-3)
    # the strongest mode alone, renormalised to the full flux, misses the spread: R = 0.026
    strongest = arrays["probe"][[2]] / np.sqrt(np.sum(np.abs(arrays["probe"][2]) ** 2))
    coherent = far_field_patterns(dict(arrays, probe=strongest), md, multislice(md))
    assert relative_residual(coherent, arrays["patterns"], BAND) > 1e-2


def near_field_images(arrays: dict, md: dict, defocus_A: np.ndarray) -> np.ndarray:
    n, px = md["window_px"], md["pixel_size_A"]
    detector = REGISTRY.create("detector", {"type": "near_field", "pixel_size_A": px,
                                            "defocus_A": [float(v) for v in defocus_A]})
    model = PtychographyModel.from_geometry(
        REGISTRY.create("propagator", {"type": "multislice"}), None,
                              Device("cpu", "double"), (n, n), px, md["wavelength_A"], 1,
                              None, detector=detector, n_measurements=len(defocus_A))
    params = {"object": arrays["exit_wave"][None, None].astype(complex),
              "probe": np.ones((1, n, n), complex), "positions": np.zeros((len(defocus_A), 2))}
    return model.intensities(params)


def test_focal_series_defocus_convention_matches_abtem():
    """abTEM's images at defocus -250, -80, 100, 300 Å (= -C10, underfocus > 0) of its own
    exit wave: near_field with the same defocus_A, R = 2e-7; with the sign flipped (the
    reference's +C10 distance read as a defocus) R = 0.22."""
    arrays, md = load("focal_series")
    defocus = arrays["defocus_A"]
    assert defocus.min() < 0 < defocus.max()
    r = relative_residual(near_field_images(arrays, md, defocus), arrays["images"])
    r_flipped = relative_residual(near_field_images(arrays, md, -defocus), arrays["images"])
    assert r < 1e-5, r
    assert r_flipped > 0.1, r_flipped


@pytest.mark.parametrize("scale, bound", [(1.0, 3e-3), (0.0, None), (-1.0, None)])
def test_larbed_tilts_match_abtem(scale, bound):
    """3 x 3 beam tilts of +-20 mrad through 15.6 Å in 2 slices; abTEM's tilt drifts the wave
    by dz tan(t) per step, ptyframe's tilt_mode 0 by dz t: R = 6.6e-4. Zero tilts: R = 0.078;
    tilts of the wrong sign: R = 0.14 (both bound > 10x the agreement bound)."""
    arrays, md = load("larbed")
    tilts = np.zeros((len(arrays["tilts_rad"]), 6))
    tilts[:, 2:4] = scale * arrays["tilts_rad"]
    r = residual("larbed", tilts=tilts)
    if bound is not None:
        assert r < bound, r
    else:
        assert r > 3e-2, r
