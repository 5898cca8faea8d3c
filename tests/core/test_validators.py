"""ptyframe.core.validators: accepted values and the messages (setting, expected, found)."""

from __future__ import annotations

import re

import attrs
import numpy as np
import pytest

from ptyframe.core.experiment import Experiment
from ptyframe.core.validators import (
    at_least,
    boolean,
    finite,
    fraction,
    in_range,
    int_pair,
    non_negative,
    non_negative_int,
    npy_path,
    one_of,
    positive,
    positive_int,
    probability,
    to_float,
    to_int,
)
from ptyframe.io.array_settings import load_npy
from ptyframe.io.data import DataError, Preprocessing


class Custom(ValueError):
    pass


@attrs.define
class Settings:
    x: float = attrs.field(default=1.0, converter=to_float, validator=positive(unit="Å"))
    opt: float | None = attrs.field(default=None, converter=to_float,
                                    validator=positive(optional=True))
    nn: float = attrs.field(default=0.0, validator=non_negative())
    fin: float = attrs.field(default=0.0, validator=finite(unit="degrees"))
    p: float = attrs.field(default=2.0, validator=at_least(1))
    r: float = attrs.field(default=0.5, validator=in_range(0.0, 1.5, low_open=True))
    prob: float = attrs.field(default=0.5, validator=probability())
    frac: float = attrs.field(default=0.5, validator=fraction())
    n: int = attrs.field(default=1, converter=to_int, validator=positive_int())
    k: int = attrs.field(default=0, validator=non_negative_int(error=Custom))
    flag: bool = attrs.field(default=False, validator=boolean())
    maybe: bool | None = attrs.field(default=None, validator=boolean(optional=True))
    mode: str = attrs.field(default="a", validator=one_of(("a", "b")))
    shape: tuple[int, int] | None = attrs.field(
        default=None, converter=int_pair(low=1, what="(ny, nx)", integral_floats=True,
                                         optional=True))
    shift: tuple[int, int] = attrs.field(default=(0, 0), converter=int_pair(what="(ky, kx)"))


def test_good_values_are_accepted_and_converted() -> None:
    s = Settings(x=2, opt=np.float32(0.5), nn=0, fin=-3.5, p=1, r=1.5, prob=1.0, frac=0.0,
                 n=np.int64(3), k=np.int32(0), flag=np.bool_(True), maybe=False, mode="b",
                 shape=(3.0, np.int64(4)), shift=[-2, 5])
    assert s.x == 2.0 and isinstance(s.x, float)
    assert s.opt == 0.5 and isinstance(s.opt, float)
    assert s.n == 3 and type(s.n) is int
    assert s.shape == (3, 4) and s.shift == (-2, 5)
    assert Settings(opt=None, maybe=None, shape=None).shape is None


@pytest.mark.parametrize(("field", "value", "message"), [
    ("x", -1, "Settings.x: expected a positive finite number (Å), found -1.0"),
    ("x", "1", "Settings.x: expected a positive finite number (Å), found '1'"),
    ("x", float("inf"), "Settings.x: expected a positive finite number (Å), found inf"),
    ("x", True, "Settings.x: expected a positive finite number (Å), found True"),
    ("opt", 0, "Settings.opt: expected None or a positive finite number, found 0.0"),
    ("nn", -0.5, "Settings.nn: expected a finite number >= 0, found -0.5"),
    ("fin", float("nan"), "Settings.fin: expected a finite number (degrees), found nan"),
    ("p", 0.5, "Settings.p: expected a finite number >= 1, found 0.5"),
    ("r", 0.0, "Settings.r: expected a number in (0, 1.5], found 0.0"),
    ("prob", 1.5, "Settings.prob: expected a number in [0, 1], found 1.5"),
    ("frac", 1.0, "Settings.frac: expected a number in [0, 1), found 1.0"),
    ("n", 0, "Settings.n: expected an integer >= 1, found 0"),
    ("n", 2.0, "Settings.n: expected an integer >= 1, found 2.0"),
    ("n", True, "Settings.n: expected an integer >= 1, found True"),
    ("flag", 1, "Settings.flag: expected True or False, found 1"),
    ("maybe", "yes", "Settings.maybe: expected None, True or False, found 'yes'"),
    ("mode", "c", "Settings.mode: expected one of 'a', 'b', found 'c'"),
    ("shape", (0, 3), "Settings.shape: expected None or two positive integers (ny, nx), "
                      "found (0, 3)"),
    ("shape", [4], "Settings.shape: expected None or two positive integers (ny, nx), found [4]"),
    ("shift", (1.5, 0), "Settings.shift: expected two integers (ky, kx), found (1.5, 0)"),
])
def test_messages_name_setting_expectation_and_value(field: str, value, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Settings(**{field: value})


def test_the_error_class_can_be_chosen() -> None:
    with pytest.raises(Custom, match=r"^Settings\.k: expected an integer >= 0, found -1$"):
        Settings(k=-1)


def test_validators_run_on_assignment() -> None:
    s = Settings()
    with pytest.raises(ValueError, match=r"Settings\.n: expected an integer >= 1, found 0"):
        s.n = 0


def test_core_settings_use_the_shared_messages() -> None:
    with pytest.raises(DataError, match=r"^Preprocessing\.bin: expected an integer >= 1, "
                                        r"found 0$"):
        Preprocessing(bin=0)
    with pytest.raises(DataError, match=r"Preprocessing\.shift_px: expected two integers"):
        Preprocessing(shift_px=(1, 2, 3))
    with pytest.raises(ValueError, match=r"Experiment\.voltage_kV: expected a positive finite "
                                         r"number \(kV\), found -200\.0"):
        Experiment(voltage_kV=-200, convergence_angle_mrad=20, detector_pixel_size_mrad=1.0)
    with pytest.raises(ValueError, match=r"Experiment\.scan_shape: expected None or two "
                                         r"positive integers \(ny, nx\), found \(0, 4\)"):
        Experiment(voltage_kV=200, convergence_angle_mrad=20, detector_pixel_size_mrad=1.0,
                   scan_shape=(0, 4))


@attrs.define
class Files:
    path: str | None = attrs.field(default=None, converter=npy_path())
    existing: str | None = attrs.field(default=None, converter=npy_path(must_exist=True))


def test_npy_paths(tmp_path) -> None:
    assert Files(path=tmp_path / "a.npy").path == str(tmp_path / "a.npy")
    with pytest.raises(ValueError, match=r"^Files\.path: expected a \.npy file path or None, "
                                         r"found 'a\.txt'$"):
        Files(path="a.txt")
    with pytest.raises(ValueError, match=r"Files\.existing: expected an existing \.npy file"):
        Files(existing=str(tmp_path / "missing.npy"))


def test_load_npy_names_the_setting(tmp_path) -> None:
    path = tmp_path / "m.npy"
    np.save(path, np.array([[0.0, 0.5], [1.0, 2.0]]))
    np.testing.assert_array_equal(load_npy("mask", path, shape=(2, 2)),
                                  [[0.0, 0.5], [1.0, 2.0]])
    with pytest.raises(ValueError, match=r"mask: expected an array of shape \(3, 3\) in .*, "
                                         r"found \(2, 2\)"):
        load_npy("mask", path, shape=(3, 3))
    with pytest.raises(ValueError, match=r"mask: expected finite values in \[0.0, 1.0\]"):
        load_npy("mask", path, low=0.0, high=1.0)
    with pytest.raises(ValueError, match="mask: file not found"):
        load_npy("mask", tmp_path / "missing.npy")
    np.save(path, np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="mask: .* contains NaN or infinite values"):
        load_npy("mask", path)
    assert np.isnan(load_npy("mask", path, finite=False)[1])
