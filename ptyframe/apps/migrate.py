"""Migration from the reference tool's parameter dictionary to a ptyframe configuration.

The reference tool (PyPty) is driven by one flat dictionary (``pypty_params``) whose keys are
listed in :data:`REFERENCE_KEYS`. :func:`migrate_reference_parameters` turns such a dictionary
(values may be numbers, strings, string lambdas, numpy arrays) into a configuration dict in the
format of :mod:`ptyframe.apps.config`; arrays are written as ``.npy`` files into ``output_dir`` and
referenced by relative path. :data:`MIGRATION_TABLE` is the single place that says where each
reference key goes (``docs/parameters.md`` is generated from it).

Conventions converted on the way:

* positions: reference window corners in reconstruction pixels ``[[y, x], ...]`` -> probe
  centres in Å, ``(corner + window // 2) * pixel_size``;
* reconstruction pixel size -> detector calibration: ``detector_pixel_size_inv_A =
  1 / ((N + 2 pad_px) * pixel_size_A)`` with N the (binned) pattern side and pad_px =
  data_pad / upsample_pattern (the reference's data_pad counts upsampled pixels);
* object (y, x, z, modes) -> (slices, modes, Y, X) placed on ptyframe's object grid;
  probe (y, x, modes) -> (modes, y, x);
* ``extra_probe_defocus`` (a propagation distance, i.e. +C10) -> the aperture initializer's
  ``extra_defocus_A`` (positive = underfocus = -C10); likewise the near-field
  ``defocus_array`` (propagation distances, +C10) -> ``near_field.defocus_A`` = -value;
* string lambdas -> :class:`~ptyframe.core.schedules.Schedule` via :mod:`ptyframe.core.safe_lambda`
  (never evaluated); Python function objects are refused.

Every key that cannot be honoured is collected and reported in one :class:`MigrationError`;
pure memory/performance knobs that do not change results are accepted and listed in
:attr:`MigrationResult.notes`.
"""

from __future__ import annotations

import inspect
import json
import math
import numbers
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs
import h5py
import numpy as np

from ptyframe.apps.config import load_config
from ptyframe.core.experiment import Experiment, ReconstructionGrid
from ptyframe.core.physics import (
    ABERRATION_NAMES,
    frequency_to_angle,
    shift_ramp,
    wavelength_A,
)
from ptyframe.core.safe_lambda import map_schedule_values, to_schedule
from ptyframe.core.schedules import Constant, Schedule
from ptyframe.io.data import Dataset

__all__ = [
    "REFERENCE_KEYS", "REFERENCE_DEFAULTS", "MIGRATION_TABLE", "KeyMapping", "MigrationError",
    "MigrationResult", "migrate_reference_parameters", "migrate_file", "write_config",
]

#: every key of the reference tool's parameter guide, in the guide's order
REFERENCE_KEYS: tuple[str, ...] = (
    "backend", "default_dtype",
    "data_path", "masks", "data_multiplier", "data_pad", "data_bin",
    "data_is_numpy_and_flip_ky", "data_shift_vector", "upsample_pattern", "sequence",
    "use_full_FOV",
    "output_folder", "save_loss_log", "epoch_prev", "save_checkpoints_every_epoch",
    "save_inter_checkpoints", "print_flag",
    "acc_voltage", "aperture_mask", "recon_type", "alpha_near_field", "defocus_array", "Cs",
    "slice_distances", "pixel_size_x_A", "pixel_size_y_A", "scan_size", "num_slices",
    "obj", "probe", "positions", "tilts", "tilt_mode", "static_background", "beam_current",
    "propmethod", "allow_subPixel_shift", "dynamically_resize_yx_object",
    "extra_space_on_side_px",
    "damping_cutoff_multislice", "smooth_rolloff", "update_extra_cut", "lazy_clean",
    "algorithm", "epoch_max", "wolfe_c1_constant", "wolfe_c2_constant", "loss_weight",
    "max_count", "reduce_factor", "optimism", "min_step", "hist_length", "update_step_bfgs",
    "phase_only_obj", "tune_only_probe_phase", "tune_only_probe_abs", "reset_history_flag",
    "update_probe", "update_obj", "update_probe_pos", "update_tilts", "update_beam_current",
    "update_aberrations_array", "update_static_background",
    "aberrations_array", "phase_plate_in_h5", "aberration_marker", "probe_marker",
    "load_one_by_one", "smart_memory", "remove_fft_cache", "compute_batch",
    "force_dataset_dtype", "preload_to_cpu", "force_pad",
    "mixed_variance_weight", "mixed_variance_sigma", "probe_constraint_mask",
    "probe_reg_constraint_weight", "window_weight", "window", "abs_norm_weight",
    "phase_norm_weight", "atv_weight", "atv_q", "atv_p", "fast_axis_reg_weight_positions",
    "fast_axis_reg_weight_tilts", "slow_axis_reg_weight_positions",
    "slow_axis_reg_coeff_positions", "slow_axis_reg_weight_tilts", "slow_axis_reg_coeff_tilts",
    "apply_gaussian_filter", "apply_gaussian_filter_amplitude", "beta_wedge",
    "keep_probe_states_orthogonal", "do_charge_flip", "cf_delta_phase", "cf_delta_abs",
    "cf_beta_phase", "cf_beta_abs", "fancy_sigma", "restart_from_vacuum",
    "n_hermite_probe_modes", "defocus_spread_modes", "aberrations", "extra_probe_defocus",
    "estimate_aperture_based_on_binary", "beam_ctf", "mean_pattern",
)

#: the reference tool's default of each key (what it does when the key is absent)
REFERENCE_DEFAULTS: Mapping[str, Any] = MappingProxyType({
    "backend": None, "default_dtype": "double", "data_path": "", "masks": None,
    "data_multiplier": 1, "data_pad": 0, "data_bin": 1, "data_is_numpy_and_flip_ky": False,
    "data_shift_vector": (0, 0), "upsample_pattern": 1, "sequence": None, "use_full_FOV": True,
    "output_folder": "", "save_loss_log": True, "epoch_prev": 0,
    "save_checkpoints_every_epoch": False, "save_inter_checkpoints": True, "print_flag": 3,
    "acc_voltage": 60, "aperture_mask": None, "recon_type": "far_field",
    "alpha_near_field": 0.0, "defocus_array": (0.0,), "Cs": 0.0, "slice_distances": (10.0,),
    "pixel_size_x_A": 1.0, "pixel_size_y_A": 1.0, "scan_size": None, "num_slices": 1,
    "obj": None, "probe": None, "positions": None, "tilts": None, "tilt_mode": 0,
    "static_background": 0, "beam_current": None, "propmethod": "multislice",
    "allow_subPixel_shift": True, "dynamically_resize_yx_object": False,
    "extra_space_on_side_px": 0, "damping_cutoff_multislice": 2 / 3, "smooth_rolloff": 0.0,
    "update_extra_cut": 0.005, "lazy_clean": False, "algorithm": "lsq_sqrt",
    "epoch_max": 200, "wolfe_c1_constant": 0.5, "wolfe_c2_constant": 0.999999,
    "loss_weight": 1, "max_count": None, "reduce_factor": 0.5, "optimism": 2,
    "min_step": 1e-20, "hist_length": 10, "update_step_bfgs": 1, "phase_only_obj": False,
    "tune_only_probe_phase": False, "tune_only_probe_abs": False, "reset_history_flag": None,
    "update_probe": 1, "update_obj": 1, "update_probe_pos": 0, "update_tilts": 0,
    "update_beam_current": 0, "update_aberrations_array": 0, "update_static_background": 0,
    "aberrations_array": None, "phase_plate_in_h5": None, "aberration_marker": None,
    "probe_marker": None, "load_one_by_one": True, "smart_memory": True,
    "remove_fft_cache": False, "compute_batch": 1, "force_dataset_dtype": None,
    "preload_to_cpu": False, "force_pad": False, "mixed_variance_weight": 0,
    "mixed_variance_sigma": 0.5, "probe_constraint_mask": None,
    "probe_reg_constraint_weight": 0, "window_weight": 0, "window": None,
    "abs_norm_weight": 0, "phase_norm_weight": 0, "atv_weight": 0, "atv_q": 1, "atv_p": 2,
    "fast_axis_reg_weight_positions": 0, "fast_axis_reg_weight_tilts": 0,
    "slow_axis_reg_weight_positions": 0, "slow_axis_reg_coeff_positions": 0,
    "slow_axis_reg_weight_tilts": 0, "slow_axis_reg_coeff_tilts": 0,
    "apply_gaussian_filter": False, "apply_gaussian_filter_amplitude": False,
    "beta_wedge": 0, "keep_probe_states_orthogonal": False, "do_charge_flip": False,
    "cf_delta_phase": 0.1, "cf_delta_abs": 0.01, "cf_beta_phase": -0.95, "cf_beta_abs": -0.95,
    "fancy_sigma": None, "restart_from_vacuum": None, "n_hermite_probe_modes": None,
    "defocus_spread_modes": None, "aberrations": None, "extra_probe_defocus": 0.0,
    "estimate_aperture_based_on_binary": 0, "beam_ctf": None, "mean_pattern": None,
})

#: ptyframe's component kinds that are a single table in a configuration
_COMPONENT_KINDS = ("propagator", "loss", "optimizer", "probe_initializer",
                    "object_initializer", "position_initializer", "detector")
#: component kinds given as lists of tables
_LIST_KINDS = {"regularizers": "regularizer", "constraints": "constraint"}

#: the component the reference uses when its key is absent
_DEFAULT_TYPES = MappingProxyType({
    "propagator": "multislice", "loss": "lsq_sqrt", "optimizer": "quasi_newton",
    "detector": "far_field",
})

_SKIP = object()


class MigrationError(ValueError):
    """One or more reference keys cannot be honoured; ``problems`` lists them (key, reason)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {key}: {why}" for key, why in self.problems)
        super().__init__(f"cannot migrate {len(self.problems)} reference setting(s):\n{lines}")


@attrs.frozen
class MigrationResult:
    """``config``: the ptyframe configuration (JSON-ready dict); ``notes``: settings accepted
    without effect (memory/performance knobs) and conversions worth knowing about."""

    config: dict[str, Any]
    notes: tuple[str, ...]


@attrs.frozen
class KeyMapping:
    """Where one reference key goes.

    ``location``: the ptyframe setting(s), e.g. ``optimizer.quasi_newton.c1`` (component kind,
    component name, field; ``*`` = whichever component of that kind is chosen),
    ``regularizers.atv.weight`` (an entry of the list), ``data.preprocessing.flip_ky`` (a plain
    setting). ``status``: "mapped", "note" (accepted, no effect on results) or "unsupported"
    (an error unless the value is the reference default). ``how``: one line for the docs.
    ``always``: also applied when the key is absent (ptyframe's default differs from the
    reference's, so the reference default is written out).
    """

    key: str
    location: str
    status: str
    how: str
    apply: Callable[..., None] | None = attrs.field(default=None, repr=False, eq=False)
    always: bool = False

    def components(self) -> list[tuple[str, str, str]]:
        """(kind, component name, field) of each component location (``*`` names skipped)."""
        out = []
        for loc in self.location.split(";"):
            parts = loc.strip().split(".")
            if len(parts) == 3 and parts[1] != "*":
                if parts[0] in _COMPONENT_KINDS:
                    out.append((parts[0], parts[1], parts[2]))
                elif parts[0] in _LIST_KINDS:
                    out.append((_LIST_KINDS[parts[0]], parts[1], parts[2]))
        return out


# =========================================================================== value helpers
def _is_default(key: str, value: Any) -> bool:
    default = REFERENCE_DEFAULTS[key]
    try:
        if value is None or default is None:
            return value is None and default is None
        if isinstance(value, str) or isinstance(default, str):
            return value == default
        a = np.asarray(value, dtype=float)
        b = np.asarray(default, dtype=float)
        return a.shape == b.shape and bool(np.all(a == b))
    except (TypeError, ValueError):
        return False


def _number(key: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.number)):
        raise ValueError(f"expected a number, found {value!r}")
    return float(value)


def _integer(key: str, value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.number)) \
            or float(value) != int(value):
        raise ValueError(f"expected an integer, found {value!r}")
    return int(value)


def _constant_value(key: str, value: Any) -> Any:
    """The value of a setting ptyframe takes as a fixed number (a constant schedule is fine)."""
    schedule = to_schedule(value, key)
    if not isinstance(schedule, Constant):
        raise ValueError(f"ptyframe takes a fixed value here; the epoch-dependent "
                         f"{_describe(value)} is not supported")
    return schedule.value


def _describe(value: Any) -> str:
    return repr(value) if isinstance(value, str) else type(value).__name__


def _schedule_config(schedule: Schedule) -> Any:
    """A plain value for a constant, else the schedule's table (without None defaults, which
    TOML cannot hold)."""
    if isinstance(schedule, Constant):
        return _jsonable(schedule.value)
    return {k: v for k, v in _jsonable(schedule.to_config()).items() if v is not None}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def _flag(value: Any) -> bool:
    """The reference's "x > 0" test of an update flag / step."""
    if value is None:
        return False
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (numbers.Real, np.number)):
        return float(value) > 0
    raise ValueError(f"expected a boolean or a number, found {value!r}")


def _bool_schedule(key: str, value: Any) -> Schedule:
    try:
        return map_schedule_values(to_schedule(value, key), _flag)
    except ValueError as exc:
        raise ValueError(str(exc).removeprefix(f"{key}: ")) from None


def _split_value_schedule(key: str, value: Any) -> tuple[Any, Schedule] | None:
    """(the one non-zero value, schedule of when it is on) of a "value or off" setting."""
    schedule = to_schedule(value, key)
    values = _schedule_values(schedule)
    on = [v for v in values if v is not None and v is not False and v != 0]
    distinct = []
    for v in on:
        if not any(_equal(v, w) for w in distinct):
            distinct.append(v)
    if not distinct:
        return None
    if len(distinct) > 1:
        raise ValueError(f"takes different non-zero values over the epochs "
                         f"({', '.join(map(repr, distinct))}); ptyframe takes one value with "
                         "an on/off schedule")
    return distinct[0], map_schedule_values(
        schedule, lambda v: v is not None and v is not False and v != 0)


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _schedule_values(schedule: Schedule) -> list[Any]:
    if isinstance(schedule, Constant):
        return [schedule.value]
    if hasattr(schedule, "breakpoints"):
        return [v for _, v in schedule.breakpoints] + (
            [] if schedule.before is None else [schedule.before])
    if hasattr(schedule, "on"):
        return [schedule.on, schedule.off]
    raise ValueError(f"cannot use a {type(schedule).__name__} schedule here")


def _always_off(schedule: Schedule) -> bool:
    return all(not v for v in _schedule_values(schedule))


# =========================================================================== the migration
class _Migration:
    """State of one migration: the configuration being built, problems and notes."""

    def __init__(self, params: Mapping[str, Any], output_dir: Path | None,
                 experiment: Mapping[str, Any] | None, registry: Any | None) -> None:
        self.params = params
        self.output_dir = output_dir
        self.experiment_overrides = dict(experiment or {})
        self.registry = registry
        self.config: dict[str, Any] = {}
        self.types: dict[str, str] = {}
        self.chosen_by: dict[str, str] = {}
        self.fields: dict[str, dict[str, tuple[str, Any]]] = {k: {} for k in _COMPONENT_KINDS}
        self.entries: dict[tuple[str, str], dict[str, Any]] = {}
        self.problems: list[tuple[str, str]] = []
        self.notes: list[str] = []
        self._files: set[str] = set()
        self._cache: dict[str, Any] = {}

    # -- access --------------------------------------------------------------------------
    def value(self, key: str) -> Any:
        return self.params[key] if key in self.params else REFERENCE_DEFAULTS[key]

    def given(self, key: str) -> bool:
        return key in self.params and not _is_default(key, self.params[key])

    def fail(self, key: str, why: str) -> None:
        """Record a problem; one cause met through several keys is reported once."""
        for i, (other, reason) in enumerate(self.problems):
            if reason == why:
                if key not in other.split(", "):
                    self.problems[i] = (f"{other}, {key}", why)
                return
        self.problems.append((key, why))

    def note(self, text: str) -> None:
        self.notes.append(text)

    # -- writing ---------------------------------------------------------------------------
    def set(self, location: str, value: Any) -> None:
        """Plain setting: ``a.b.c`` -> config["a"]["b"]["c"]."""
        parts = location.split(".")
        node = self.config
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _jsonable(value)

    def choose(self, kind: str, name: str, key: str) -> None:
        self.types[kind] = name
        self.chosen_by[kind] = key

    def component(self, key: str, kind: str, name: str, field: str, value: Any) -> None:
        """A component setting; ``name`` "*" means whichever component of ``kind`` is chosen."""
        self.fields[kind][field] = (key, name, _jsonable(value))

    def entry(self, list_kind: str, name: str, tag: str = "") -> dict[str, Any]:
        return self.entries.setdefault((list_kind, name + tag), {"type": name})

    def array_path(self, key: str, name: str, array: Any, inline_limit: int = 0) -> Any:
        """Write ``array`` as ``name``.npy into the output folder; returns its relative path.

        Real arrays of at most ``inline_limit`` elements are returned as nested lists instead.
        """
        arr = np.asarray(array)
        if arr.dtype == object:
            raise ValueError(f"expected a numeric array, found {_describe(array)}")
        if arr.size <= inline_limit and not np.iscomplexobj(arr):
            return arr.tolist()
        if self.output_dir is None:
            raise ValueError("needs output_dir to write the array as a .npy file")
        filename = f"{name}.npy"
        if filename in self._files:
            raise ValueError(f"two arrays named {filename}")
        self._files.add(filename)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        np.save(self.output_dir / filename, arr, allow_pickle=False)
        return filename

    def path_for_config(self, path: str | os.PathLike) -> str:
        """A user path (relative to the working directory) as seen from the config file."""
        absolute = Path(path).expanduser().resolve()
        if self.output_dir is None:
            return str(absolute)
        return os.path.relpath(absolute, self.output_dir.resolve())

    # -- derived geometry ------------------------------------------------------------------
    def _data_shape(self) -> tuple[int, int] | None:
        """(number of measurements, raw pattern side) read from the data file, or None."""
        if "data_shape" in self._cache:
            return self._cache["data_shape"]
        shape = None
        path = Path(str(self.value("data_path") or ""))
        try:
            if path.is_file() and path.suffix.lower() in (".h5", ".hdf5"):
                with h5py.File(path, "r") as fh:
                    if "data" in fh:
                        shape = tuple(fh["data"].shape)
            elif path.is_file() and path.suffix.lower() == ".npy":
                shape = tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
        except (OSError, ValueError):
            shape = None
        result = None
        if shape is not None and len(shape) in (2, 3, 4):
            n = int(np.prod(shape[:-2])) if len(shape) >= 3 else int(shape[0])
            result = (n, int(shape[-1]) if len(shape) >= 3 else 0)
        self._cache["data_shape"] = result
        return result

    @property
    def upsample(self) -> int:
        return _integer("upsample_pattern", self.value("upsample_pattern"))

    @property
    def pad_px(self) -> int:
        pad = _integer("data_pad", self.value("data_pad"))
        if pad % self.upsample:
            raise ValueError(f"data_pad={pad} is not a multiple of upsample_pattern="
                             f"{self.upsample}; ptyframe pads the measured grid by whole pixels")
        return pad // self.upsample

    def pattern_side(self) -> int:
        """Side of the measured pattern after binning, pixels."""
        masks = self.params.get("masks")
        if masks is not None:
            return int(np.asarray(masks).shape[-1])
        shape = self._data_shape()
        if shape is not None and shape[1] > 0:
            return shape[1] // _integer("data_bin", self.value("data_bin"))
        for key in ("probe", "aperture_mask", "beam_ctf"):
            arr = self.params.get(key)
            if isinstance(arr, np.ndarray) and arr.ndim >= 2:
                return arr.shape[0] // self.upsample - 2 * self.pad_px
        raise ValueError("needs the pattern size: data_path is not a readable .h5/.npy file "
                         "and no probe or aperture_mask array is given")

    def model_window(self) -> int:
        return self.upsample * (self.pattern_side() + 2 * self.pad_px)

    def pixel_size_A(self) -> float:
        px = _number("pixel_size_x_A", self.value("pixel_size_x_A"))
        py = _number("pixel_size_y_A", self.value("pixel_size_y_A"))
        if px <= 0 or py <= 0:
            raise ValueError(f"expected positive pixel sizes, found x={px}, y={py}")
        if abs(px - py) > 1e-9 * px:
            raise ValueError(f"pixel_size_x_A={px} and pixel_size_y_A={py} differ; ptyframe "
                             "reconstructs on square pixels")
        return px

    def n_measurements(self) -> int:
        shape = self._data_shape()
        if shape is not None:
            return shape[0]
        positions = self.params.get("positions")
        if positions is not None and np.asarray(positions).shape[0] > 1:
            return int(np.asarray(positions).shape[0])
        raise ValueError("needs the number of measurements: data_path is not a readable "
                         ".h5/.npy file")

    def wavelength(self) -> float:
        return wavelength_A(_number("acc_voltage", self.value("acc_voltage")))


# =========================================================================== key handlers
def _plain(location: str, convert: Callable[[str, Any], Any] = lambda k, v: v
           ) -> Callable[[Any, _Migration], None]:
    """Handler setting a plain config location (or a component field) to convert(value)."""
    def apply(value: Any, m: _Migration, key: str) -> None:
        out = convert(key, value)
        if out is _SKIP:
            return
        parts = location.split(".")
        if parts[0] in _COMPONENT_KINDS and len(parts) == 3:
            m.component(key, parts[0], parts[1], parts[2], out)
        else:
            m.set(location, out)
    return apply


def _skip_none(convert: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda k, v: _SKIP if v is None else convert(k, v)


def _as_int(key: str, value: Any) -> int:
    return _integer(key, _constant_value(key, value))


def _as_count(key: str, value: Any) -> int:
    """A number of epochs or the like: an integer >= 0."""
    count = _as_int(key, value)
    if count < 0:
        raise ValueError(f"expected an integer >= 0, found {count!r}")
    return count


def _as_float(key: str, value: Any) -> float:
    return _number(key, _constant_value(key, value))


def _as_bool(key: str, value: Any) -> bool:
    return _flag(_constant_value(key, value))


def _as_bool_schedule(key: str, value: Any) -> Any:
    return _schedule_config(_bool_schedule(key, value))


def _as_schedule(key: str, value: Any) -> Any:
    return _schedule_config(to_schedule(value, key))


def _apply_dtype(value: Any, m: _Migration) -> None:
    if value not in ("double", "single"):
        raise ValueError(f"expected 'double' or 'single', found {value!r} (ptyframe has no "
                         "half-precision mode)")
    m.set("device.kind", "auto")
    m.set("device.precision", value)


def _apply_data_path(value: Any, m: _Migration) -> None:
    if not value:
        raise ValueError("expected the path of an .h5 or .npy dataset, found none")
    m.set("data.path", m.path_for_config(value))
    m.set("data.dataset", "data")


def _apply_masks(value: Any, m: _Migration) -> None:
    if value is None:
        return
    masks = np.asarray(value)
    if masks.ndim != 3:
        raise ValueError(f"expected masks of shape (n_masks, ky, kx), found {masks.shape}")
    if m.value("algorithm") != "lsq_compressed":
        raise ValueError(f"compressed data needs algorithm 'lsq_compressed', found "
                         f"{m.value('algorithm')!r}")
    m.component("masks", "loss", "lsq_compressed", "masks_path",
                m.array_path("masks", "masks", masks))


def _apply_flip(value: Any, m: _Migration) -> None:
    flip = _as_bool("data_is_numpy_and_flip_ky", value)
    m.set("data.preprocessing.flip_ky", flip)
    if flip and str(m.value("data_path")).lower().endswith((".h5", ".hdf5")):
        m.note("data_is_numpy_and_flip_ky: the reference ignores this flag for .h5 data "
               "(a bug); ptyframe flips ky as asked")


def _apply_shift(value: Any, m: _Migration) -> None:
    shift = [_integer("data_shift_vector", v) for v in np.asarray(value).ravel()]
    if len(shift) != 2:
        raise ValueError(f"expected two integers (ky, kx), found {value!r}")
    if shift != [0, 0]:
        m.set("data.preprocessing.shift_px", shift)


def _apply_pad(value: Any, m: _Migration) -> None:
    pad = m.pad_px
    if pad:
        m.component("data_pad", "detector", "*", "pad_px", pad)


def _apply_upsample(value: Any, m: _Migration) -> None:
    if m.upsample < 1:
        raise ValueError(f"expected an integer >= 1, found {value!r}")
    if m.upsample > 1:
        m.component("upsample_pattern", "detector", "*", "upsample", m.upsample)


def _apply_sequence(value: Any, m: _Migration) -> None:
    if value is None:
        return
    if isinstance(value, str) or callable(value) or isinstance(value, Schedule):
        m.set("sequence", _as_schedule("sequence", value))
        return
    indices = [_integer("sequence", v) for v in np.asarray(value).ravel()]
    m.set("sequence", indices)


def _apply_output_folder(value: Any, m: _Migration) -> None:
    if value:
        m.set("output.dir", m.path_for_config(value))


def _apply_epoch_prev(value: Any, m: _Migration) -> None:
    if _integer("epoch_prev", value) != 0:
        raise ValueError("ptyframe resumes from the checkpoint in the output folder "
                         "(`ptyframe run` does it automatically) and counts epochs from 0; "
                         "a restart offset cannot be set by hand")


def _apply_checkpoints(value: Any, m: _Migration) -> None:
    if value is True:
        m.set("output.checkpoint_every", 1)
    elif value is not False and value is not None and _integer("", value) > 0:
        m.set("output.checkpoint_every", _integer("", value))


def _apply_inter_checkpoints(value: Any, m: _Migration) -> None:
    if value is True:
        m.set("output.save_every", 1)
    elif value is False or value is None or _integer("", value) <= 0:
        epochs = max(1, _integer("epoch_max", m.value("epoch_max")))
        m.set("output.save_every", epochs)
        m.note("save_inter_checkpoints: off in the reference; ptyframe writes co/cp/cg.npy once "
               f"at the end (save_every = {epochs})")
    else:
        m.set("output.save_every", _integer("", value))


def _apply_print_flag(value: Any, m: _Migration) -> None:
    level = _integer("print_flag", value)
    if not 0 <= level <= 3:
        raise ValueError(f"expected 0, 1, 2 or 3, found {value!r}")
    m.set("verbosity", level)
    m.set("progress", level > 0)


def _apply_recon_type(value: Any, m: _Migration) -> None:
    if value not in ("far_field", "near_field"):
        raise ValueError(f"expected 'far_field' or 'near_field', found {value!r}")
    m.choose("detector", value, "recon_type")


def _near_field(field: str, convert: Callable[[str, Any], Any]
                ) -> Callable[[Any, _Migration], None]:
    def apply(value: Any, m: _Migration, key: str) -> None:
        if m.value("recon_type") != "near_field":
            if m.given(key):
                m.note(f"{key}: used only in near-field reconstructions; ignored (as by the "
                       "reference) for far_field")
            return
        m.component(key, "detector", "near_field", field, convert(key, value))
    return apply


def _defocus_array(key: str, value: Any) -> Any:
    """The reference's near-field distances dz (Å, = +C10) -> defocus_A = -dz (underfocus > 0)."""
    values = [-float(v) + 0.0 for v in np.asarray(value, dtype=float).ravel()]
    return values[0] if len(values) == 1 else values


def _apply_pixel_size(value: Any, m: _Migration) -> None:
    px = m.pixel_size_A()
    n = m.pattern_side() + 2 * m.pad_px
    m.set("experiment.detector_pixel_size_inv_A", 1.0 / (n * px))
    if m.value("recon_type") == "near_field":
        m.component("pixel_size_x_A", "detector", "near_field", "pixel_size_A", px)


def _apply_scan_size(value: Any, m: _Migration) -> None:
    if value is None:
        return
    shape = [_integer("scan_size", v) for v in np.asarray(value).ravel()]
    if len(shape) != 2:
        raise ValueError(f"expected (ny, nx), found {value!r}")
    m.set("experiment.scan_shape", shape)


def _apply_obj(value: Any, m: _Migration) -> None:
    n_slices = _integer("num_slices", m.value("num_slices"))
    if value is None:
        return
    obj = np.asarray(value)
    if obj.ndim != 4:
        raise ValueError(f"expected shape (y, x, slices, modes), found {obj.shape}")
    if obj.shape[2] != n_slices:
        raise ValueError(f"has {obj.shape[2]} slices but num_slices = {n_slices}")
    m.set("n_object_modes", int(obj.shape[3]))
    if obj.shape[0] <= 1 and obj.shape[1] <= 1 and np.all(obj == 1):
        return  # the reference's default: vacuum of the right size
    # placed on ptyframe's object grid at the end (needs the calibration and the positions)
    m._cache["object"] = np.ascontiguousarray(np.transpose(obj, (2, 3, 0, 1)))


def _hermite_orders(value: Any) -> tuple[int, int]:
    """The reference's highest Hermite orders (ny, nx) (its code unpacks y first)."""
    pair = [_integer("n_hermite_probe_modes", v) for v in np.asarray(value).ravel()]
    if len(pair) != 2 or min(pair) < 0:
        raise ValueError(f"n_hermite_probe_modes: expected two orders (ny, nx) >= 0, found "
                         f"{value!r}")
    return pair[0], pair[1]


def _hermite_count(value: Any) -> int:
    ny, nx = _hermite_orders(value)
    return (ny + 1) * (nx + 1)


def _apply_probe(value: Any, m: _Migration) -> None:
    if isinstance(value, str):
        if value != "aperture":
            raise ValueError(f"expected an array, None or 'aperture', found {value!r}")
        m.choose("probe_initializer", "aperture", "probe")
        return
    if value is None:
        threshold = _number("estimate_aperture_based_on_binary",
                            m.value("estimate_aperture_based_on_binary") or 0)
        if threshold > 0:
            m.choose("probe_initializer", "binary_aperture",
                     "estimate_aperture_based_on_binary")
            m.component("estimate_aperture_based_on_binary", "probe_initializer",
                        "binary_aperture", "threshold", threshold)
        else:
            m.choose("probe_initializer", "mean_pattern", "probe")
        n_modes = 1
        if m.value("n_hermite_probe_modes") is not None:
            n_modes = _hermite_count(m.value("n_hermite_probe_modes"))
        if m.value("defocus_spread_modes") is not None:
            n_modes = max(n_modes, int(np.asarray(m.value("defocus_spread_modes")).size))
        m.set("n_probe_modes", n_modes)
        return
    probe = np.asarray(value)
    if probe.ndim == 2:
        probe = probe[:, :, None]
    if probe.ndim == 4:
        raise ValueError("one probe per sub-scan (y, x, modes, subscans) cannot be loaded yet: "
                         "ptyframe's probe_from_file reads (modes, y, x)")
    if probe.ndim != 3:
        raise ValueError(f"expected shape (y, x, modes), found {probe.shape}")
    layout = np.ascontiguousarray(np.transpose(probe, (2, 0, 1))).astype(np.complex128)
    m.set("n_probe_modes", int(probe.shape[2]))
    m.choose("probe_initializer", "probe_from_file", "probe")
    m.component("probe", "probe_initializer", "probe_from_file", "path",
                m.array_path("probe", "probe", layout))
    m.component("probe", "probe_initializer", "probe_from_file", "layout", "modes_first")
    m.component("probe", "probe_initializer", "probe_from_file", "rescale", False)
    if m.value("aberrations") is not None:
        raise ValueError("the reference applies `aberrations` on top of a given probe; "
                         "ptyframe loads the probe as it is: apply them to the array first or "
                         "drop `aberrations`")


def _apply_positions(value: Any, m: _Migration) -> None:
    if value is None:  # the reference's default: every measurement at corner (0, 0)
        value = np.zeros((1, 2))
    corners = np.asarray(value, dtype=float)
    if corners.ndim != 2 or corners.shape[1] != 2:
        raise ValueError(f"expected shape (N, 2) [[y, x], ...], found {corners.shape}")
    if corners.shape[0] == 1:
        corners = np.repeat(corners, m.n_measurements(), axis=0)
    px = m.pixel_size_A()
    centres = (corners + m.model_window() // 2) * px
    m._cache["positions_A"] = centres
    m.choose("position_initializer", "from_file", "positions")
    m.component("positions", "position_initializer", "from_file", "path",
                m.array_path("positions", "positions_A", centres))


def _optional_array(location: str, name: str, inline_limit: int = 64,
                    skip_if: Callable[[Any, _Migration], bool] | None = None
                    ) -> Callable[[Any, _Migration], None]:
    def apply(value: Any, m: _Migration, key: str) -> None:
        if value is None or (skip_if is not None and skip_if(value, m)):
            return
        m.set(location, m.array_path(key, name, value, inline_limit))
    return apply


def _zero_tilts(value: Any, m: _Migration) -> bool:
    return not np.any(np.asarray(value, dtype=float)) and not _flag_ever(
        m.value("update_tilts"))


def _flag_ever(value: Any) -> bool:
    try:
        return not _always_off(_bool_schedule("", value))
    except ValueError:
        return True


def _apply_static_background(value: Any, m: _Migration) -> None:
    if isinstance(value, np.ndarray) or isinstance(value, (list, tuple)):
        m.set("static_background", m.array_path("static_background", "static_background",
                                                value, inline_limit=0))
        return
    level = _number("static_background", value)
    if level < 0:
        raise ValueError(f"expected a number >= 0 or an array, found {value!r}")
    if level > 0 or _flag_ever(m.value("update_static_background")):
        m.set("static_background", level)


def _apply_propmethod(value: Any, m: _Migration) -> None:
    if value not in ("multislice", "better_multislice", "yoshida"):
        raise ValueError(f"expected 'multislice', 'better_multislice' or 'yoshida', found "
                         f"{value!r}")
    m.choose("propagator", value, "propmethod")


def _slice_distances(key: str, value: Any) -> Any:
    return [float(v) for v in np.asarray(value, dtype=float).ravel()]


def _apply_resize(value: Any, m: _Migration) -> None:
    fixed = _constant_value("dynamically_resize_yx_object", value)
    if isinstance(fixed, (bool, np.bool_)):
        m.set("dynamically_resize_object", bool(fixed))
    else:
        m.set("dynamically_resize_object", _integer("dynamically_resize_yx_object", fixed))


def _band_limit(value: Any, m: _Migration, key: str) -> None:
    """band_limit constraint: object cleaning unless lazy_clean; the probe always."""
    entry = m.entry("constraints", "band_limit")
    entry["cutoff"] = _as_float("damping_cutoff_multislice",
                                m.value("damping_cutoff_multislice"))
    entry["extra_cut"] = _as_float("update_extra_cut", m.value("update_extra_cut"))
    entry["rolloff"] = _as_float("smooth_rolloff", m.value("smooth_rolloff"))
    entry["object"] = not _as_bool("lazy_clean", m.value("lazy_clean"))
    entry["probe"] = True


def _apply_algorithm(value: Any, m: _Migration) -> None:
    names = ("lsq_sqrt", "ml", "lsq", "lsq_sqrt_2", "lsq_compressed")
    if value not in names:
        raise ValueError(f"expected one of {', '.join(names)}, found {value!r}")
    if value == "lsq_compressed" and m.params.get("masks") is None:
        raise ValueError("'lsq_compressed' needs the virtual-detector `masks`")
    m.choose("loss", value, "algorithm")


def _apply_max_count(value: Any, m: _Migration) -> None:
    value = _constant_value("max_count", value)
    if value is None or (isinstance(value, float) and math.isinf(value)):
        m.component("max_count", "optimizer", "quasi_newton", "max_count", 1000)
        return
    # the reference's counter stops after max_count + 2 evaluations
    m.component("max_count", "optimizer", "quasi_newton", "max_count",
                max(1, _integer("max_count", value) + 2))


def _apply_min_step(value: Any, m: _Migration) -> None:
    step = _as_float("min_step", value)
    if step < 0:
        raise ValueError(f"expected a number >= 0, found {value!r}")
    m.component("min_step", "optimizer", "quasi_newton", "min_step",
                step if step > 0 else sys.float_info.min)


def _apply_history(value: Any, m: _Migration) -> None:
    value = _constant_value("hist_length", value)
    if isinstance(value, (float, np.floating)) and math.isinf(value) and value > 0:
        out: Any = "inf"
    else:
        out = _integer("hist_length", value)
    m.component("hist_length", "optimizer", "quasi_newton", "history_length", out)


def _apply_update_step(value: Any, m: _Migration) -> None:
    schedule = to_schedule(value, "update_step_bfgs")
    if isinstance(schedule, Constant):
        step = schedule.value
    elif all(schedule(e) == 1 for e in range(1, 64)) and (
            not hasattr(schedule, "breakpoints") or schedule.breakpoints[-1][1] == 1):
        step = schedule(0)
        m.note(f"update_step_bfgs: only its epoch-0 value {step!r} is used, as the first trial "
               "step; later (quasi-Newton) steps start at 1 as in the reference")
    else:
        raise ValueError(f"ptyframe takes a fixed first step; the epoch-dependent "
                         f"{_describe(value)} is not supported")
    m.component("update_step_bfgs", "optimizer", "quasi_newton", "initial_step",
                _number("update_step_bfgs", step))


def _constraint_when(name: str, field: str = "when") -> Callable[[Any, _Migration], None]:
    def apply(value: Any, m: _Migration, key: str) -> None:
        schedule = _bool_schedule(key, value)
        if _always_off(schedule):
            return
        m.entry("constraints", name)[field] = _schedule_config(schedule)
    return apply


def _apply_restart(value: Any, m: _Migration) -> None:
    if value is None:
        return
    if isinstance(value, (list, tuple, np.ndarray)):
        epochs = sorted({_integer("restart_from_vacuum", v) for v in np.asarray(value).ravel()})
        if epochs:
            m.entry("constraints", "restart_from_vacuum")["epochs"] = epochs
        return
    schedule = _bool_schedule("restart_from_vacuum", value)
    if not _always_off(schedule):
        m.entry("constraints", "restart_from_vacuum")["when"] = _schedule_config(schedule)


def _refine(block: str) -> Callable[[Any, _Migration], None]:
    def apply(value: Any, m: _Migration, key: str) -> None:
        m.set(f"refine.{block}", _as_bool_schedule(key, value))
    return apply


def _apply_phase_plates(value: Any, m: _Migration) -> None:
    if value:
        m.set("phase_plates", {"path": m.path_for_config(value), "dataset": "configs"})


def _apply_dtype_force(value: Any, m: _Migration) -> None:
    if value is None:
        return
    try:
        name = np.dtype(value).name
    except TypeError:
        raise ValueError(f"expected a numpy float dtype, found {value!r}") from None
    if name not in ("float16", "float32", "float64"):
        raise ValueError(f"expected float16, float32 or float64, found {name}")
    m.set("data.dtype", name)


def _apply_compute_batch(value: Any, m: _Migration) -> None:
    batch = _integer("compute_batch", value)
    if batch < 1:
        raise ValueError(f"expected an integer >= 1, found {value!r}")
    if m.given("compute_batch"):
        m.set("batch_size", batch)


def _weight(list_kind: str, name: str, field: str, scale: Callable[[_Migration], float] | None
            = None) -> Callable[[Any, _Migration], None]:
    """A regularizer weight (schedule); zero weights add nothing."""
    def apply(value: Any, m: _Migration, key: str) -> None:
        schedule = to_schedule(value, key)
        values = _schedule_values(schedule)
        if all(_number(key, v) == 0 for v in values):
            return
        if scale is not None:
            factor = scale(m)
            schedule = map_schedule_values(schedule, lambda v: float(v) * factor)
        m.entry(list_kind, name)[field] = _schedule_config(schedule)
    return apply


def _coefficient(name: str, field: str, weight_keys: tuple[str, ...],
                 as_schedule: bool = False) -> Callable[[Any, _Migration], None]:
    """A coefficient of a regularizer that is only added when one of its weights is non-zero."""
    def apply(value: Any, m: _Migration, key: str) -> None:
        if not any(_flag_ever(m.value(w)) for w in weight_keys):
            return
        out = _as_schedule(key, value) if as_schedule else _as_float(key, value)
        m.entry("regularizers", name)[field] = out
    return apply


def _probe_mask_scale(m: _Migration) -> float:
    n = m.model_window()
    return float(n * n)


def _apply_probe_reg_weight(value: Any, m: _Migration) -> None:
    fixed = to_schedule(value, "probe_reg_constraint_weight")
    if isinstance(fixed, Constant) and isinstance(fixed.value, (float, np.floating)) \
            and math.isinf(fixed.value):
        mask = _probe_mask_path(m)
        entry = m.entry("constraints", "probe_fourier_projection")
        if mask is not None:
            entry["mask_path"] = mask
        return
    _weight("regularizers", "probe_fourier_mask", "weight", _probe_mask_scale)(
        value, m, "probe_reg_constraint_weight")
    if ("regularizers", "probe_fourier_mask") in m.entries:
        mask = _probe_mask_path(m)
        if mask is not None:
            m.entries[("regularizers", "probe_fourier_mask")]["mask_path"] = mask


def _probe_mask_path(m: _Migration) -> str | None:
    """probe_constraint_mask, else aperture_mask, written once as .npy (None: neither)."""
    if "probe_mask" not in m._cache:
        for key in ("probe_constraint_mask", "aperture_mask"):
            if m.params.get(key) is not None:
                m._cache["probe_mask"] = m.array_path(key, "probe_fourier_mask",
                                                      np.asarray(m.params[key], dtype=float))
                break
        else:
            m._cache["probe_mask"] = None
    return m._cache["probe_mask"]


def _apply_window(value: Any, m: _Migration) -> None:
    if value is None or ("regularizers", "probe_window") not in m.entries:
        return
    arr = np.asarray(value, dtype=float)
    entry = m.entries[("regularizers", "probe_window")]
    if arr.size == 2 and arr.ndim == 1:
        entry["window"] = [float(arr[0]), float(arr[1])]
    elif arr.ndim == 2:
        entry["window_path"] = m.array_path("window", "probe_window", arr)
    else:
        raise ValueError(f"expected [inner, outer] or a 2D array, found shape {arr.shape}")


def _gaussian_filter(value: Any, m: _Migration, key: str) -> None:
    field = "sigma_phase_px" if key == "apply_gaussian_filter" else "sigma_amplitude_px"
    other = "sigma_amplitude_px" if key == "apply_gaussian_filter" else "sigma_phase_px"
    split = _split_value_schedule(key, value)
    if split is None:
        return
    sigma, when = split
    sigma = 1.0 if sigma is True else _number(key, sigma)
    when_config = _schedule_config(when)
    existing = m.entries.get(("constraints", "gaussian_filter"))
    if existing is None or existing.get("when") == when_config:
        entry = m.entry("constraints", "gaussian_filter")
        entry.setdefault(other, 0.0)
    else:
        entry = m.entry("constraints", "gaussian_filter", tag="#" + field)
        entry[other] = 0.0
    entry[field] = sigma
    entry["when"] = when_config
    if field == "sigma_amplitude_px":
        m.note("apply_gaussian_filter_amplitude: ptyframe filters |O|, the reference -log|O| "
               "(the same to first order for weak absorption)")


def _apply_beta_wedge(value: Any, m: _Migration) -> None:
    split = _split_value_schedule("beta_wedge", value)
    if split is None:
        return
    beta, when = split
    entry = m.entry("regularizers", "missing_wedge")
    entry["beta"] = _number("beta_wedge", beta)
    entry["weight"] = _schedule_config(map_schedule_values(when, lambda v: 1.0 if v else 0.0))


def _apply_charge_flip(value: Any, m: _Migration) -> None:
    schedule = _bool_schedule("do_charge_flip", value)
    if _always_off(schedule):
        if m.value("fancy_sigma") is not None:
            m.note("fancy_sigma: used by the reference only together with do_charge_flip; "
                   "ignored")
        return
    fancy = m.value("fancy_sigma")
    name = "charge_flip"
    entry_fields: dict[str, Any] = {}
    if fancy is not None:
        sigmas = [_number("fancy_sigma", v) for v in np.asarray(fancy, dtype=float).ravel()]
        if len(sigmas) not in (1, 2) or min(sigmas) <= 0:
            raise ValueError(f"fancy_sigma: expected one or two positive sigmas, found {fancy!r}")
        name = "fancy_sigma"
        # the reference's Gaussian exp(-r^2/s^2) has standard deviation s/sqrt(2)
        entry_fields["sigma_px"] = sigmas[0] / math.sqrt(2)
        if len(sigmas) == 2:
            entry_fields["sigma_abs_px"] = sigmas[1] / math.sqrt(2)
    entry = m.entry("constraints", name)
    for key, field in (("cf_delta_phase", "delta_phase"), ("cf_delta_abs", "delta_abs"),
                       ("cf_beta_phase", "beta_phase"), ("cf_beta_abs", "beta_abs")):
        try:
            entry[field] = _as_float(key, m.value(key))
        except ValueError as exc:
            m.fail(key, str(exc).removeprefix(f"{key}: "))
    entry.update(entry_fields)
    entry["when"] = _schedule_config(schedule)


def _cf_parameter(value: Any, m: _Migration) -> None:
    """Read together with do_charge_flip (see there)."""


def _probe_init_field(field: str, convert: Callable[[str, Any], Any]
                      ) -> Callable[[Any, _Migration], None]:
    def apply(value: Any, m: _Migration, key: str) -> None:
        if value is None or not m.given(key):
            return
        m.component(key, "probe_initializer", "*", field, convert(key, value))
    return apply


def _hermite(key: str, value: Any) -> list[int]:
    """Reference highest orders (ny, nx) -> ptyframe's numbers of orders (nx, ny)."""
    ny, nx = _hermite_orders(value)
    return [nx + 1, ny + 1]


def _defocus_spread(key: str, value: Any) -> list[float]:
    """Reference propagation distances (C10 += d) -> ptyframe underfocus values (-d)."""
    return [-float(v) for v in np.asarray(value, dtype=float).ravel()]


def _apply_aberrations(value: Any, m: _Migration) -> None:
    if value is None:
        return
    values = np.asarray(value, dtype=float).ravel()
    if values.size > len(ABERRATION_NAMES):
        raise ValueError(f"expected at most {len(ABERRATION_NAMES)} coefficients (Krivanek "
                         f"order {', '.join(ABERRATION_NAMES[:4])}, ...), found {values.size}")
    m.set("experiment.aberrations", {name: float(v) for name, v
                                     in zip(ABERRATION_NAMES, values, strict=False) if v != 0})


def _apply_extra_defocus(value: Any, m: _Migration) -> None:
    distance = _as_float("extra_probe_defocus", value)
    if distance != 0:
        # reference: propagate the probe by +distance (C10 += distance); ptyframe's
        # extra_defocus_A is an underfocus (C10 -= extra_defocus_A)
        m.component("extra_probe_defocus", "probe_initializer", "*", "extra_defocus_A",
                    -distance)


def _apply_beam_ctf(value: Any, m: _Migration) -> None:
    if value is None:
        return
    m.component("beam_ctf", "probe_initializer", "*", "beam_ctf",
                m.array_path("beam_ctf", "beam_ctf", np.asarray(value).astype(np.complex128)))


def _apply_mean_pattern(value: Any, m: _Migration) -> None:
    if value is not None:
        raise ValueError("ptyframe's mean_pattern probe initializer computes the mean pattern "
                         "from the data; a given pattern cannot be used: drop the key")


def _noop(value: Any, m: _Migration) -> None:
    """Handled together with another key (see its row)."""


def _note_only(text: str) -> Callable[[Any, _Migration], None]:
    def apply(value: Any, m: _Migration, key: str) -> None:
        if key in m.params:
            m.note(f"{key}: {text}")
    return apply


def _wrap(fn: Callable[..., None]) -> Callable[[Any, _Migration, str], None]:
    """Handlers take (value, migration, key); the simple ones only (value, migration)."""
    if len(inspect.signature(fn).parameters) == 3:
        return fn
    return lambda value, m, key: fn(value, m)


def _row(key: str, location: str, how: str, apply: Callable[..., None],
         status: str = "mapped", always: bool = False) -> KeyMapping:
    return KeyMapping(key, location, status, how, _wrap(apply), always)


_AT = "position_smoothness"
_TT = "tilt_smoothness"

#: where every reference key goes (one row per key of :data:`REFERENCE_KEYS`)
MIGRATION_TABLE: tuple[KeyMapping, ...] = (
    _row("backend", "-", "memory/performance only: ptyframe uses CuPy when a GPU is present "
         "(device.kind = auto)", _note_only("no effect on results; device.kind = 'auto'"),
         "note"),
    _row("default_dtype", "device.precision", "'double' / 'single'", _apply_dtype, always=True),
    _row("data_path", "data.path", "relative to the configuration file; dataset 'data'",
         _apply_data_path, always=True),
    _row("masks", "loss.lsq_compressed.masks_path", "written as masks.npy", _apply_masks),
    _row("data_multiplier", "data.preprocessing.multiplier", "",
         _plain("data.preprocessing.multiplier", _as_float)),
    _row("data_pad", "detector.far_field.pad_px", "data_pad / upsample_pattern (the reference "
         "counts upsampled pixels); the padding is excluded from the loss", _apply_pad),
    _row("data_bin", "data.preprocessing.bin", "", _plain("data.preprocessing.bin", _as_int)),
    _row("data_is_numpy_and_flip_ky", "data.preprocessing.flip_ky",
         "also for .h5 data (the reference ignores it there)", _apply_flip),
    _row("data_shift_vector", "data.preprocessing.shift_px", "(ky, kx) pixels", _apply_shift),
    _row("upsample_pattern", "detector.far_field.upsample", "", _apply_upsample),
    _row("sequence", "sequence", "list of measurement indices (or a schedule)",
         _apply_sequence),
    _row("use_full_FOV", "use_full_fov", "", _plain("use_full_fov", _as_bool)),
    _row("output_folder", "output.dir", "relative to the configuration file",
         _apply_output_folder),
    _row("save_loss_log", "output.save_loss_log", "",
         _plain("output.save_loss_log", _as_bool)),
    _row("epoch_prev", "-", "unsupported unless 0: ptyframe resumes from the output folder's "
         "checkpoint", _apply_epoch_prev, "unsupported"),
    _row("save_checkpoints_every_epoch", "output.checkpoint_every", "True -> 1, n -> n",
         _apply_checkpoints),
    _row("save_inter_checkpoints", "output.save_every",
         "True -> 1, n -> n, False -> once at the end", _apply_inter_checkpoints),
    _row("print_flag", "verbosity; progress", "0-3; progress bar when > 0", _apply_print_flag),
    _row("acc_voltage", "experiment.voltage_kV", "",
         _plain("experiment.voltage_kV", _as_float), always=True),
    _row("aperture_mask", "regularizers.probe_fourier_mask.mask_path; "
         "experiment.convergence_angle_mrad", "mask of the probe penalty/projection when "
         "probe_constraint_mask is absent; also gives the convergence angle", _noop),
    _row("recon_type", "detector", "'far_field' / 'near_field' detector component",
         _apply_recon_type),
    _row("alpha_near_field", "detector.near_field.alpha", "near field only",
         _near_field("alpha", _as_float)),
    _row("defocus_array", "detector.near_field.defocus_A", "near field only; one value or "
         "one per measurement; sign flipped: the reference propagates by +d (C10 = d), "
         "defocus_A is an underfocus (C10 = -defocus_A)",
         _near_field("defocus_A", _defocus_array), always=True),
    _row("Cs", "detector.near_field.cs_A", "near field only", _near_field("cs_A", _as_float)),
    _row("slice_distances", "propagator.*.slice_thickness_A", "one value or one per gap",
         _plain("propagator.*.slice_thickness_A", _slice_distances), always=True),
    _row("pixel_size_x_A", "experiment.detector_pixel_size_inv_A",
         "1 / ((N + 2 pad_px) pixel_size), N the binned pattern side; near field also "
         "detector.near_field.pixel_size_A", _apply_pixel_size, always=True),
    _row("pixel_size_y_A", "experiment.detector_pixel_size_inv_A",
         "must equal pixel_size_x_A (square pixels)", _noop),
    _row("scan_size", "experiment.scan_shape", "(ny, nx)", _apply_scan_size),
    _row("num_slices", "n_slices", "", _plain("n_slices", _as_int)),
    _row("obj", "initial_object; n_object_modes", "(y, x, z, modes) -> initial_object.npy "
         "(slices, modes, Y, X) on ptyframe's object grid (vacuum outside; sub-pixel shift "
         "when the smallest corner is fractional)", _apply_obj),
    _row("probe", "probe_initializer.probe_from_file.path; n_probe_modes",
         "(y, x, modes) -> probe.npy (modes, y, x), scale kept (4D per-sub-scan probes are "
         "refused); None -> mean_pattern (or binary_aperture); 'aperture' -> aperture",
         _apply_probe,
         always=True),
    _row("positions", "position_initializer.from_file.path",
         "corner pixels -> centres in Å: (corner + window // 2) * pixel_size, positions_A.npy",
         _apply_positions, always=True),
    _row("tilts", "tilts", "(N or 1, 6) radians; .npy or list",
         _optional_array("tilts", "tilts", skip_if=_zero_tilts)),
    _row("tilt_mode", "tilt_mode", "0-4", _plain("tilt_mode", _as_int)),
    _row("static_background", "static_background", "number (initial level) or array (.npy)",
         _apply_static_background),
    _row("beam_current", "beam_current", "(N,) .npy or list",
         _optional_array("beam_current", "beam_current")),
    _row("propmethod", "propagator", "multislice / better_multislice / yoshida",
         _apply_propmethod),
    _row("allow_subPixel_shift", "allow_subpixel_shift", "",
         _plain("allow_subpixel_shift", _as_bool)),
    _row("dynamically_resize_yx_object", "dynamically_resize_object", "bool or pixels",
         _apply_resize),
    _row("extra_space_on_side_px", "object_margin_px", "",
         _plain("object_margin_px", _as_int), always=True),
    _row("damping_cutoff_multislice", "propagator.*.damping_cutoff; constraints.band_limit."
         "cutoff", "fraction of Nyquist",
         _plain("propagator.*.damping_cutoff", _as_float)),
    _row("smooth_rolloff", "propagator.*.rolloff; constraints.band_limit.rolloff", "",
         _plain("propagator.*.rolloff", _as_float)),
    _row("update_extra_cut", "constraints.band_limit.extra_cut", "", _noop),
    _row("lazy_clean", "constraints.band_limit.object", "band_limit cleans the object unless "
         "lazy_clean, and the probe always (as the reference)", _band_limit, always=True),
    _row("algorithm", "loss", "lsq_sqrt / ml / lsq / lsq_sqrt_2 / lsq_compressed",
         _apply_algorithm),
    _row("epoch_max", "epochs", "", _plain("epochs", _as_count), always=True),
    _row("wolfe_c1_constant", "optimizer.quasi_newton.c1", "fixed value",
         _plain("optimizer.quasi_newton.c1", _as_float), always=True),
    _row("wolfe_c2_constant", "optimizer.quasi_newton.c2", "fixed value",
         _plain("optimizer.quasi_newton.c2", _as_float), always=True),
    _row("loss_weight", "loss_weight", "number or schedule", _plain("loss_weight",
                                                                    _as_schedule)),
    _row("max_count", "optimizer.quasi_newton.max_count", "n -> n + 2 evaluations (the "
         "reference's counter); None/inf -> 1000", _apply_max_count, always=True),
    _row("reduce_factor", "optimizer.quasi_newton.reduce_factor", "",
         _plain("optimizer.quasi_newton.reduce_factor", _as_float)),
    _row("optimism", "optimizer.quasi_newton.optimism", "",
         _plain("optimizer.quasi_newton.optimism", _as_float), always=True),
    _row("min_step", "optimizer.quasi_newton.min_step", "0 -> smallest positive float",
         _apply_min_step),
    _row("hist_length", "optimizer.quasi_newton.history_length", "np.inf -> \"inf\"",
         _apply_history),
    _row("update_step_bfgs", "optimizer.quasi_newton.initial_step",
         "first trial step of an unscaled gradient step; a lambda that is a at epoch 0 and 1 "
         "afterwards gives a (ptyframe's quasi-Newton steps start at 1 anyway)",
         _apply_update_step),
    _row("phase_only_obj", "constraints.phase_only_object.when", "",
         _constraint_when("phase_only_object")),
    _row("tune_only_probe_phase", "constraints.probe_phase_only.when", "",
         _constraint_when("probe_phase_only")),
    _row("tune_only_probe_abs", "constraints.probe_amplitude_only.when", "",
         _constraint_when("probe_amplitude_only")),
    _row("reset_history_flag", "reset_history", "schedule",
         _plain("reset_history", _skip_none(_as_bool_schedule))),
    _row("update_probe", "refine.probe", "bool schedule (value > 0)", _refine("probe")),
    _row("update_obj", "refine.object", "bool schedule (value > 0)", _refine("object")),
    _row("update_probe_pos", "refine.positions", "bool schedule (value > 0)",
         _refine("positions")),
    _row("update_tilts", "refine.tilts", "bool schedule (value > 0)", _refine("tilts")),
    _row("update_beam_current", "refine.beam_current", "bool schedule (value > 0)",
         _refine("beam_current")),
    _row("update_aberrations_array", "refine.aberrations", "bool schedule (value > 0)",
         _refine("aberrations")),
    _row("update_static_background", "refine.static_background", "bool schedule (value > 0)",
         _refine("static_background")),
    _row("aberrations_array", "aberrations_array", "(n_sets, n_coefficients) Å",
         _optional_array("aberrations_array", "aberrations_array")),
    _row("phase_plate_in_h5", "phase_plates", "{path, dataset = 'configs'}",
         _apply_phase_plates),
    _row("aberration_marker", "aberration_marker", "(N,) integers",
         _optional_array("aberration_marker", "aberration_marker", inline_limit=0)),
    _row("probe_marker", "probe_marker", "(N,) integers",
         _optional_array("probe_marker", "probe_marker", inline_limit=0)),
    _row("load_one_by_one", "load_one_by_one", "", _plain("load_one_by_one", _as_bool)),
    _row("smart_memory", "-", "memory/performance only",
         _note_only("memory management only; no effect on results, ignored"), "note"),
    _row("remove_fft_cache", "-", "memory/performance only",
         _note_only("FFT-plan cache only; no effect on results, ignored"), "note"),
    _row("compute_batch", "batch_size", "only when given (ptyframe otherwise sizes batches "
         "from free memory)", _apply_compute_batch),
    _row("force_dataset_dtype", "data.dtype", "float16 / float32 / float64",
         _apply_dtype_force),
    _row("preload_to_cpu", "-", "memory/performance only",
         _note_only("transfer speed only; no effect on results, ignored"), "note"),
    _row("force_pad", "-", "memory/performance only",
         _note_only("padding strategy only; no effect on results, ignored"), "note"),
    _row("mixed_variance_weight", "regularizers.mixed_variance.weight", "schedule",
         _weight("regularizers", "mixed_variance", "weight")),
    _row("mixed_variance_sigma", "regularizers.mixed_variance.sigma_px", "",
         _coefficient("mixed_variance", "sigma_px", ("mixed_variance_weight",)), always=True),
    _row("probe_constraint_mask", "regularizers.probe_fourier_mask.mask_path", "centred "
         "reciprocal-space mask, .npy", _noop),
    _row("probe_reg_constraint_weight", "regularizers.probe_fourier_mask.weight",
         "times ny * nx (the reference's FFT is unnormalised); inf -> "
         "constraints.probe_fourier_projection", _apply_probe_reg_weight),
    _row("window_weight", "regularizers.probe_window.weight", "schedule",
         _weight("regularizers", "probe_window", "weight")),
    _row("window", "regularizers.probe_window.window", "[inner, outer] or a 2D array "
         "(window_path)", _apply_window, always=True),
    _row("abs_norm_weight", "regularizers.l1_absorption.weight", "schedule",
         _weight("regularizers", "l1_absorption", "weight")),
    _row("phase_norm_weight", "regularizers.l1_phase.weight", "schedule",
         _weight("regularizers", "l1_phase", "weight")),
    _row("atv_weight", "regularizers.atv.weight", "schedule",
         _weight("regularizers", "atv", "weight")),
    _row("atv_q", "regularizers.atv.q", "", _coefficient("atv", "q", ("atv_weight",)), always=True),
    _row("atv_p", "regularizers.atv.p", "", _coefficient("atv", "p", ("atv_weight",)), always=True),
    _row("fast_axis_reg_weight_positions", f"regularizers.{_AT}.fast_weight", "schedule",
         _weight("regularizers", _AT, "fast_weight")),
    _row("fast_axis_reg_weight_tilts", f"regularizers.{_TT}.fast_weight", "schedule",
         _weight("regularizers", _TT, "fast_weight")),
    _row("slow_axis_reg_weight_positions", f"regularizers.{_AT}.slow_weight", "schedule",
         _weight("regularizers", _AT, "slow_weight")),
    _row("slow_axis_reg_coeff_positions", f"regularizers.{_AT}.slow_tolerance", "schedule",
         _coefficient(_AT, "slow_tolerance", ("slow_axis_reg_weight_positions",
                                              "fast_axis_reg_weight_positions"), True),
         always=True),
    _row("slow_axis_reg_weight_tilts", f"regularizers.{_TT}.slow_weight", "schedule",
         _weight("regularizers", _TT, "slow_weight")),
    _row("slow_axis_reg_coeff_tilts", f"regularizers.{_TT}.slow_tolerance", "schedule (the "
         "reference reads a misspelt key and ignores this one)",
         _coefficient(_TT, "slow_tolerance", ("slow_axis_reg_weight_tilts",
                                              "fast_axis_reg_weight_tilts"), True), always=True),
    _row("apply_gaussian_filter", "constraints.gaussian_filter.sigma_phase_px",
         "value = sigma (True = 1 px); when = epochs it is non-zero", _gaussian_filter),
    _row("apply_gaussian_filter_amplitude", "constraints.gaussian_filter.sigma_amplitude_px",
         "value = sigma (True = 1 px); filters |O| (reference: -log|O|)", _gaussian_filter),
    _row("beta_wedge", "regularizers.missing_wedge.beta", "weight 1 while non-zero",
         _apply_beta_wedge),
    _row("keep_probe_states_orthogonal", "constraints.orthogonal_probe_modes.when", "",
         _constraint_when("orthogonal_probe_modes")),
    _row("do_charge_flip", "constraints.charge_flip.when", "fancy_sigma given -> "
         "constraints.fancy_sigma", _apply_charge_flip, always=True),
    _row("cf_delta_phase", "constraints.charge_flip.delta_phase", "", _cf_parameter),
    _row("cf_delta_abs", "constraints.charge_flip.delta_abs", "", _cf_parameter),
    _row("cf_beta_phase", "constraints.charge_flip.beta_phase", "", _cf_parameter),
    _row("cf_beta_abs", "constraints.charge_flip.beta_abs", "", _cf_parameter),
    _row("fancy_sigma", "constraints.fancy_sigma.sigma_px", "sigma / sqrt(2) (the reference's "
         "Gaussian is exp(-r^2/s^2)); with do_charge_flip only", _noop),
    _row("restart_from_vacuum", "constraints.restart_from_vacuum.when", "bool schedule, or "
         "a list of epochs (.epochs)", _apply_restart),
    _row("n_hermite_probe_modes", "probe_initializer.*.hermite_modes", "highest orders "
         "(ny, nx) -> numbers of orders (nx + 1, ny + 1); n_probe_modes = (ny + 1)(nx + 1)",
         _probe_init_field("hermite_modes", _hermite)),
    _row("defocus_spread_modes", "probe_initializer.*.defocus_spread_A", "Å per mode, sign "
         "flipped like extra_probe_defocus",
         _probe_init_field("defocus_spread_A", _defocus_spread)),
    _row("aberrations", "experiment.aberrations", "Krivanek list -> {C10: ..}, Å",
         _apply_aberrations),
    _row("extra_probe_defocus", "probe_initializer.*.extra_defocus_A", "sign flipped: the "
         "reference propagates by +d (C10 += d), extra_defocus_A is an underfocus",
         _apply_extra_defocus),
    _row("estimate_aperture_based_on_binary", "probe_initializer.binary_aperture.threshold",
         "when probe is None and the value > 0", _noop),
    _row("beam_ctf", "probe_initializer.*.beam_ctf", "2D complex array (centred) -> "
         "beam_ctf.npy",
         _apply_beam_ctf),
    _row("mean_pattern", "probe_initializer.mean_pattern", "unsupported: ptyframe computes "
         "the mean pattern from the data", _apply_mean_pattern, "unsupported"),
)


# =========================================================================== assembly
def _disk_angle_mrad(area_px: float, dk_inv_A: float, wavelength_A: float) -> float:
    """Semi-angle (mrad) of a disk of ``area_px`` pixels of ``dk_inv_A`` (1/Å) each."""
    return frequency_to_angle(math.sqrt(area_px / math.pi) * dk_inv_A, wavelength_A)


def _estimate_convergence_mrad(m: _Migration) -> tuple[float, str] | None:
    """Convergence semi-angle from the aperture mask, the probe or the data (radius of the
    bright disk at half maximum)."""
    lam = m.wavelength()
    px = m.pixel_size_A()
    window = m.model_window()
    dk_model = 1.0 / (window * px)
    mask = m.params.get("aperture_mask")
    if mask is not None and np.asarray(mask).ndim == 2:
        area = float(np.sum(np.asarray(mask, dtype=float) > 0.5))
        return _disk_angle_mrad(area, dk_model, lam), "aperture_mask"
    probe = m.params.get("probe")
    if isinstance(probe, np.ndarray) and probe.ndim >= 2:
        first = probe.reshape(probe.shape[0], probe.shape[1], -1)[:, :, 0]
        amp = np.abs(np.fft.fft2(first))
        area = float(np.sum(amp > 0.5 * amp.max())) if amp.max() > 0 else 0.0
        if area > 0:
            return _disk_angle_mrad(area, dk_model, lam), "the probe's spectrum"
    path = Path(str(m.value("data_path") or ""))
    if path.is_file() and m.params.get("masks") is None:
        try:
            data = Dataset.from_file(path)
            mean = np.mean(data.read(np.arange(min(len(data), 64))), axis=0)
        except (OSError, ValueError, TypeError):
            mean = None
        if mean is not None and mean.max() > 0:
            area = float(np.sum(mean > 0.5 * mean.max()))
            dk_raw = 1.0 / ((m.pattern_side() + 2 * m.pad_px) * px) / _integer(
                "data_bin", m.value("data_bin"))
            return _disk_angle_mrad(area, dk_raw, lam), "the mean pattern"
    return None


def _place_initial_object(m: _Migration) -> None:
    """The reference object (slices, modes, y, x) on the object grid ptyframe will build, as
    ``initial_object`` (pixels outside the reference object are vacuum, as the reference pads).

    ptyframe pixel j shows the reference's (fractional) pixel j + k, k = origin / pixel (the
    positions are centres (corner + window // 2) * pixel); a fractional part of k is applied
    as a Fourier (sub-pixel) shift of the reference object's deviation from vacuum."""
    obj = m._cache.get("object")
    positions = m._cache.get("positions_A")
    if obj is None or positions is None:
        return
    exp = Experiment.from_config(dict(m.config["experiment"]))
    side = m.pattern_side()
    measured = (side, side)
    if m.registry is not None:
        detector = m.registry.create("detector", m.config.get("detector", {"type": "far_field"}))
        window = tuple(int(w) for w in detector.model_window(measured))
        pixel = float(detector.object_pixel_size_A(exp, measured))
    else:
        window = (m.model_window(),) * 2
        pixel = 1.0 / ((side + 2 * m.pad_px) * exp.dk_inv_A)
    covered = positions
    sequence = m.config.get("sequence")
    if isinstance(sequence, list) and not m.config.get("use_full_fov", True):
        covered = positions[np.asarray(sequence, dtype=np.int64)]
    grid = ReconstructionGrid.covering(covered, window, 1.0 / (window[0] * pixel),
                                       margin_px=int(m.config.get("object_margin_px", 8)))
    k = np.asarray(grid.origin_A) / grid.pixel_size_A
    k_int = np.floor(k + 1e-9)
    frac = k - k_int
    if np.any(np.abs(frac) > 1e-9):
        ramp = shift_ramp(obj.shape[2:], (-frac[0], -frac[1]))
        obj = 1 + np.fft.ifft2(np.fft.fft2(obj - 1) * ramp)
        m.note(f"obj: resampled by a sub-pixel shift of ({frac[0]:.3g}, {frac[1]:.3g}) px to "
               "ptyframe's object grid (the smallest window corner sits on a whole pixel)")
    ky, kx = (int(v) for v in k_int)
    placed = np.ones((*obj.shape[:2], *grid.object_shape), dtype=np.complex128)
    ys, xs = obj.shape[2], obj.shape[3]
    y0, y1 = max(0, -ky), min(grid.object_shape[0], ys - ky)
    x0, x1 = max(0, -kx), min(grid.object_shape[1], xs - kx)
    if y1 > y0 and x1 > x0:
        placed[:, :, y0:y1, x0:x1] = obj[:, :, y0 + ky:y1 + ky, x0 + kx:x1 + kx]
    m.config["initial_object"] = m.array_path("obj", "initial_object", placed)


def _finish_experiment(m: _Migration) -> None:
    exp = m.config.setdefault("experiment", {})
    overrides = m.experiment_overrides
    if "convergence_angle_mrad" not in overrides:
        try:
            estimate = _estimate_convergence_mrad(m)
        except ValueError:
            estimate = None
        if estimate is None:
            m.fail("experiment", "the reference dictionary has no convergence angle and none "
                   "could be estimated (no aperture_mask, probe or readable data); pass "
                   "experiment={'convergence_angle_mrad': ...}")
        else:
            angle, source = estimate
            exp["convergence_angle_mrad"] = round(angle, 4)
            m.note(f"experiment.convergence_angle_mrad = {angle:.3g} mrad estimated from "
                   f"{source}; pass experiment={{'convergence_angle_mrad': ...}} to set it")
    exp.update(_jsonable(dict(overrides)))


def _not_installed(m: _Migration, kind: str, name: str) -> str | None:
    if m.registry is None or (kind, name) in m.registry:
        return None
    return f"needs the {kind} {name!r}, which is not installed"


def _component_field_ok(m: _Migration, kind: str, name: str, field: str) -> str | None:
    """Why ``field`` is not a setting of component ``(kind, name)`` (None: it is, or the
    registry cannot tell)."""
    if m.registry is None:
        return None
    try:
        cls = m.registry.get(kind, name)
    except KeyError:
        return f"needs the {kind} {name!r}, which is not installed"
    if not attrs.has(cls):
        return None
    names = {f.alias for f in attrs.fields(cls) if f.init}
    if field not in names:
        return (f"maps to {kind} {name!r} setting {field!r}, which it does not have "
                f"(settings: {', '.join(sorted(names))})")
    return None


def _assemble(m: _Migration) -> None:
    for kind in _COMPONENT_KINDS:
        fields = m.fields[kind]
        name = m.types.get(kind)
        if name is None and not fields:
            continue
        if name is None:
            explicit = {n for (_, n, _) in fields.values() if n != "*"}
            name = explicit.pop() if len(explicit) == 1 else _DEFAULT_TYPES.get(kind)
            if name is None:
                keys = ", ".join(sorted(k for (k, _, _) in fields.values()))
                m.fail(keys, f"sets {kind} settings but no {kind} component is chosen")
                continue
        missing = _not_installed(m, kind, name)
        if missing is not None:
            m.fail(m.chosen_by.get(kind) or ", ".join(sorted({k for (k, _, _) in fields.values()})),
                   missing)
            continue
        table: dict[str, Any] = {"type": name}
        for field, (key, wanted, value) in fields.items():
            if wanted not in ("*", name):
                if m.given(key):
                    m.fail(key, f"applies to the {kind} {wanted!r}, but the configuration "
                                f"uses {name!r}")
                continue
            why = _component_field_ok(m, kind, name, field)
            if why is not None:
                m.fail(key, why + ("" if m.given(key) else " (value: the reference's default)"))
                continue
            table[field] = value
        if kind == "detector" and name == "far_field" and len(table) == 1:
            continue  # the plain far field is the default
        m.config[kind] = table
    for list_kind, kind in _LIST_KINDS.items():
        items = []
        for (lk, _), entry in m.entries.items():
            if lk != list_kind:
                continue
            missing = _not_installed(m, kind, entry["type"])
            problems = [missing] if missing is not None else [
                why for field in entry if field != "type"
                for why in [_component_field_ok(m, kind, entry["type"], field)]
                if why is not None]
            if problems:
                m.fail(f"{list_kind}.{entry['type']}", "; ".join(dict.fromkeys(problems)))
                continue
            items.append(entry)
        if items:
            m.config[list_kind] = items


def _validate_components(m: _Migration) -> None:
    """Instantiate every migrated component so that bad values fail now, naming the key."""
    if m.registry is None:
        return
    tables = [(kind, m.config[kind]) for kind in _COMPONENT_KINDS if kind in m.config]
    tables += [(kind, entry) for list_kind, kind in _LIST_KINDS.items()
               for entry in m.config.get(list_kind, [])]
    for kind, table in tables:
        try:
            m.registry.create(kind, _with_absolute_paths(table, m.output_dir))
        except (ValueError, TypeError, OSError, KeyError) as exc:
            m.fail(f"{kind} {table.get('type')!r}", str(exc))


def _with_absolute_paths(table: Mapping[str, Any], base: Path | None) -> dict[str, Any]:
    """The table with the files written by the migration given by absolute path."""
    out = dict(table)
    if base is None:
        return out
    for key, value in table.items():
        if isinstance(value, str) and value.endswith(".npy") and not Path(value).is_absolute() \
                and (base / value).is_file():
            out[key] = str((base / value).resolve())
    return out


def migrate_reference_parameters(params: Mapping[str, Any], output_dir: str | Path | None = None,
                                 *, experiment: Mapping[str, Any] | None = None,
                                 registry: Any | None = None, check: bool = True
                                 ) -> MigrationResult:
    """Convert a reference-style parameter dict into a ptyframe configuration.

    ``output_dir``: folder for the configuration's ``.npy`` files (arrays) and the folder the
    configuration's relative paths are relative to (write the configuration there). Without
    it, arrays are refused and paths are absolute. ``experiment``: :class:`Experiment` fields
    the reference dictionary does not hold, e.g. ``{"convergence_angle_mrad": 21.4}`` (when
    absent it is estimated from the aperture mask, the probe or the data). ``registry``:
    where components are checked (default: the installed plugins); ``check``: instantiate the
    migrated components to validate their values.

    Raises :class:`MigrationError` listing every key that cannot be honoured.
    """
    if not isinstance(params, Mapping):
        raise TypeError(f"params: expected a mapping, found {type(params).__name__}")
    if registry is None and check:
        from ptyframe.registry.loader import load_registry

        registry = load_registry()
    out = Path(output_dir) if output_dir is not None else None
    m = _Migration(params, out, experiment, registry if check else None)
    known = set(REFERENCE_KEYS)
    for key in params:
        if key not in known:
            m.fail(str(key), "not a key of the reference tool's parameter guide")
    for row in MIGRATION_TABLE:
        if row.key not in params and not row.always:
            continue
        value = m.value(row.key)
        if callable(value) and not isinstance(value, (type, np.ndarray, Schedule)):
            m.fail(row.key, "a Python function cannot be inspected safely; give the lambda "
                   "as a string (e.g. \"lambda x: x > 10\") or a ptyframe Schedule")
            continue
        try:
            row.apply(value, m, row.key)
        except ValueError as exc:
            m.fail(row.key, str(exc).removeprefix(f"{row.key}: "))
    _finish_experiment(m)
    _assemble(m)
    if not m.problems:
        try:
            _place_initial_object(m)
        except ValueError as exc:
            m.fail("obj", str(exc))
    if not m.problems and check:
        _validate_components(m)
    if m.problems:
        raise MigrationError(m.problems)
    return MigrationResult(m.config, tuple(m.notes))


# =========================================================================== files
def _read_reference_file(path: Path) -> dict[str, Any]:
    return dict(load_config(path))


def migrate_file(path: str | Path, out_path: str | Path, *,
                 experiment: Mapping[str, Any] | None = None) -> MigrationResult:
    """Migrate a reference parameter file (.json or .toml; arrays as nested lists or .npy
    paths) into a ptyframe configuration file ``out_path`` (.json or .toml); arrays go next
    to it. Relative paths in the input are relative to the input file."""
    path, out_path = Path(path), Path(out_path)
    params = _read_reference_file(path)
    for key, value in list(params.items()):
        if isinstance(value, str) and value.lower().endswith(".npy") and key not in (
                "data_path", "output_folder", "phase_plate_in_h5"):
            params[key] = np.load(path.parent / value, allow_pickle=False)
        elif isinstance(value, list) and key not in ("data_shift_vector", "scan_size",
                                                     "n_hermite_probe_modes", "window",
                                                     "sequence", "restart_from_vacuum"):
            params[key] = np.asarray(value)
    for key in ("data_path", "output_folder", "phase_plate_in_h5"):
        if isinstance(params.get(key), str) and params[key] and \
                not Path(params[key]).is_absolute():
            params[key] = str((path.parent / params[key]).resolve())
    result = migrate_reference_parameters(params, out_path.parent, experiment=experiment)
    write_config(result.config, out_path)
    return result


def write_config(config: Mapping[str, Any], path: str | Path) -> Path:
    """Write a configuration dict as .json or .toml (by suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(config, indent=2) + "\n")
    elif path.suffix.lower() == ".toml":
        path.write_text(_to_toml(config))
    else:
        raise ValueError(f"output: expected a .json or .toml file, found {path.name!r}")
    return path


def _toml_key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "")
    return key if bare.isascii() and bare.isalnum() else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()
                          if v is not None)
        return "{" + items + "}"
    raise ValueError(f"cannot write {value!r} to TOML")


def _to_toml(config: Mapping[str, Any]) -> str:
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    for key, value in config.items():
        if value is None:
            continue
        if isinstance(value, dict):
            tables.append((_toml_key(key), value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    while tables:
        name, table = tables.pop(0)
        lines.append("")
        lines.append(f"[{name}]")
        nested = []
        for key, value in table.items():
            if value is None:
                continue
            if isinstance(value, dict) and key != "type" and "type" not in value:
                nested.append((f"{name}.{_toml_key(key)}", value))
            else:
                lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        tables[0:0] = nested
    return "\n".join(lines) + "\n"
