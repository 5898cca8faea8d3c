"""Registration, schedules and validation of the first-party constraints."""

from __future__ import annotations

import json

import pytest
from ptyframe_constraints import ptyframe_register_components

from ptyframe import EveryN, FromEpoch, Piecewise, load_registry
from ptyframe.components import Constraint
from ptyframe.registry.registry import ComponentConfigError

NAMES = ["gaussian_filter", "charge_flip", "fancy_sigma", "band_limit", "restart_from_vacuum",
         "phase_only_object", "orthogonal_probe_modes", "probe_fourier_projection",
         "probe_phase_only", "probe_amplitude_only"]
REGISTRY = load_registry()


def test_hook_returns_every_constraint():
    classes = ptyframe_register_components()
    assert sorted(c.name for c in classes) == sorted(NAMES)
    assert all(issubclass(c, Constraint) and c.kind == "constraint" for c in classes)
    for name in NAMES:
        assert REGISTRY.entry("constraint", name).distribution == "ptyframe"


@pytest.mark.parametrize("name", NAMES)
def test_is_active_follows_the_schedule(name):
    every_third = REGISTRY.create("constraint", {"type": name, "when": EveryN(3).to_config()})
    assert [every_third.is_active(e) for e in range(7)] == [True, False, False, True, False,
                                                            False, True]
    later = REGISTRY.create("constraint", {"type": name, "when": {"type": "from", "start": 4}})
    assert [later.is_active(e) for e in range(6)] == [False] * 4 + [True] * 2
    off = REGISTRY.create("constraint", {"type": name, "when": False})
    assert not any(off.is_active(e) for e in range(5))
    config = json.loads(json.dumps(later.to_config()))
    assert REGISTRY.create("constraint", config).is_active(4)


def test_default_activity():
    for name in NAMES:
        default = REGISTRY.create("constraint", {"type": name})
        expected = name != "restart_from_vacuum"  # never unless told when
        assert all(default.is_active(e) is expected for e in range(4)), name
    restart = REGISTRY.create("constraint", {"type": "restart_from_vacuum", "epochs": [2, 5]})
    assert [restart.is_active(e) for e in range(7)] == [False, False, True, False, False, True,
                                                        False]
    once = REGISTRY.create("constraint", {"type": "restart_from_vacuum", "when": Piecewise(
        [[3, True], [4, False]], before=False).to_config()})
    assert [once.is_active(e) for e in range(6)] == [False, False, False, True, False, False]
    assert REGISTRY.create("constraint", {"type": "charge_flip",
                                          "when": FromEpoch(2)}).is_active(2)


BAD = [
    ("gaussian_filter", {"sigma_phase_px": -1.0}, "sigma_phase_px"),
    ("gaussian_filter", {"sigma_phase_px": 0, "sigma_amplitude_px": 0}, "sigma_amplitude_px"),
    ("gaussian_filter", {"sigma_amplitude_px": "wide"}, "sigma_amplitude_px"),
    ("charge_flip", {"beta_phase": -2.0}, "beta_phase"),
    ("charge_flip", {"delta_abs": float("nan")}, "delta_abs"),
    ("fancy_sigma", {"sigma_px": 0.0}, "sigma_px"),
    ("fancy_sigma", {"wiener_epsilon": -1e-3}, "wiener_epsilon"),
    ("fancy_sigma", {"reconvolve_ratio": True}, "reconvolve_ratio"),
    ("band_limit", {"cutoff": 2.0}, "cutoff"),
    ("band_limit", {"extra_cut": 0.7}, "extra_cut"),
    ("band_limit", {"object": False, "probe": False}, "probe"),
    ("band_limit", {"probe": "yes"}, "probe"),
    ("restart_from_vacuum", {"epochs": [3, -1]}, "epochs"),
    ("restart_from_vacuum", {"epochs": 3}, "epochs"),
    ("phase_only_object", {"reset_tolerance": -1}, "reset_tolerance"),
    ("orthogonal_probe_modes", {"reset_tolerance": None}, "reset_tolerance"),
    ("probe_fourier_projection", {"radius_mrad": 0.0}, "radius_mrad"),
    ("probe_fourier_projection", {"radius_mrad": 20.0, "mask_path": "m.npy"}, "mask_path"),
    ("probe_fourier_projection", {"mask_path": "mask.txt"}, "mask_path"),
    ("probe_fourier_projection", {"support_threshold": 0.0}, "support_threshold"),
    ("probe_phase_only", {"reset_tolerance": "small"}, "reset_tolerance"),
    ("probe_amplitude_only", {"when": {"type": "sometimes"}}, "schedule"),
]


@pytest.mark.parametrize(("name", "settings", "field"), BAD,
                         ids=[f"{n}-{f}-{i}" for i, (n, _, f) in enumerate(BAD)])
def test_bad_settings_name_the_field(name, settings, field):
    with pytest.raises(ValueError, match=field) as info:
        REGISTRY.create("constraint", {"type": name, **settings})
    assert isinstance(info.value, ComponentConfigError)
    cls = REGISTRY.entry("constraint", name).cls
    with pytest.raises(ValueError, match=field):
        cls(**settings)
