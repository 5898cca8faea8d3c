"""The one table of refinable parameter blocks.

Every part of ptyframe that needs to know which blocks exist reads :data:`PARAMETER_BLOCKS`:
the forward model (which gradients it writes), the Reconstruction (settings, refine
schedules, starting values, results), the configuration (``[refine]`` keys, top-level
settings), the checkpoints (file names and on-disk layout) and the NeXus export (units).
Adding a block is one row here plus its physics in the model.

Layouts (device arrays, slowest axis first):

* ``object`` (n_slices, n_object_modes, Y, X) complex transmission;
* ``probe`` (n_probe_modes, ny, nx) complex, or (n_probes, n_probe_modes, ny, nx) with a
  probe marker; real space, centred at pixel (ny//2, nx//2);
* ``positions`` (N, 2) real: window top-left corners in pixels (y, x);
* ``tilts`` (N or 1, 6) real radians [y, x before; y, x inside; y, x after];
* ``beam_current`` (N,) real intensity factor per measurement;
* ``static_background`` (my, mx) real s with background = s**2, on the measured grid (in the
  detector's pixel order on the device, centred on disk);
* ``aberrations`` (n_sets, n_coefficients) real Å, Krivanek order (C10, C12a, C12b, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs
import numpy as np

__all__ = ["ParameterBlock", "BlockDefaults", "PARAMETER_BLOCKS", "BLOCK_NAMES",
           "OPTIONAL_BLOCKS", "block", "to_disk_layout", "from_disk_layout"]


@attrs.frozen
class BlockDefaults:
    """What the default starting value of an optional block may depend on.

    ``n_measurements``; ``measured_shape`` (my, mx) of one pattern; ``n_aberration_sets``:
    rows an aberration marker needs; ``background_level``: a data-driven starting
    background intensity (counts per pixel), or None.
    """

    n_measurements: int
    measured_shape: tuple[int, int]
    n_aberration_sets: int = 1
    background_level: float | None = None


def _zeros_tilts(d: BlockDefaults) -> np.ndarray:
    return np.zeros((1, 6))


def _ones_current(d: BlockDefaults) -> np.ndarray:
    return np.ones(d.n_measurements)


def _background(d: BlockDefaults) -> np.ndarray:
    return np.full(d.measured_shape, float(d.background_level or 0.0))


def _zero_aberrations(d: BlockDefaults) -> np.ndarray:
    return np.zeros((d.n_aberration_sets, 8))


def _sqrt(intensity: np.ndarray) -> np.ndarray:
    return np.sqrt(intensity)


def _square(s: np.ndarray) -> np.ndarray:
    return s**2


@attrs.frozen
class ParameterBlock:
    """One row of the block table.

    ``name``: key in the parameter dictionary; ``dtype``: "complex" or "real" (the device's
    precision); ``shape``: the layout, in words; ``units``: of the stored values (NeXus);
    ``files``: (overwritable checkpoint file, block name in
    ``checkpoint_<name>_epoch_<N>.npy``), the reference tool's names; ``disk_axes``: for
    each number of dimensions, the transpose from the internal layout to the on-disk (reference)
    layout; ``setting``: (name, accepted numbers of dimensions) of the Reconstruction setting
    that gives its starting value; ``default``: its starting value when refined without one;
    ``measured_grid``: lives on the detector grid (converted to the detector's pixel order on
    the device); ``conversion``: (user value -> refined variable, refined variable -> result),
    e.g. the background is given as s**2 and refined as s; ``refined_by_default``;
    ``summary``: one line for documentation.
    """

    name: str
    dtype: Literal["complex", "real"]
    shape: str
    units: str
    files: tuple[str, str]
    summary: str
    disk_axes: Mapping[int, tuple[int, ...]] = attrs.field(factory=dict)
    setting: tuple[str, tuple[int, ...]] | None = None
    default: Callable[[BlockDefaults], np.ndarray] | None = None
    measured_grid: bool = False
    conversion: tuple[Callable[[np.ndarray], np.ndarray],
                      Callable[[np.ndarray], np.ndarray]] | None = None
    refined_by_default: bool = False

    @property
    def setting_name(self) -> str | None:
        return None if self.setting is None else self.setting[0]

    @property
    def checkpoint_file(self) -> str:
        return self.files[0]

    @property
    def epoch_name(self) -> str:
        return self.files[1]

    def from_setting(self, value: np.ndarray) -> np.ndarray:
        """A user's starting value -> the refined variable."""
        return value if self.conversion is None else self.conversion[0](value)

    def to_result(self, value: np.ndarray) -> np.ndarray:
        """The refined variable -> the quantity reported in results."""
        return value if self.conversion is None else self.conversion[1](value)

    @property
    def optional(self) -> bool:
        """Present only when given or refined (every model has object, probe, positions)."""
        return self.default is not None


#: the table; the order is the order of gradients, checkpoints and log entries
PARAMETER_BLOCKS: tuple[ParameterBlock, ...] = (
    ParameterBlock("object", "complex", "(n_slices, n_object_modes, Y, X)", "",
                   ("co.npy", "obj"), "complex transmission of each slice and mode",
                   disk_axes={4: (2, 3, 0, 1)}, setting=("initial_object", (4,)),
                   refined_by_default=True),
    ParameterBlock("probe", "complex", "(n_probe_modes, ny, nx) or (n_probes, modes, ny, nx)",
                   "", ("cp.npy", "probe"), "real-space probe modes, centred",
                   disk_axes={3: (1, 2, 0), 4: (2, 3, 1, 0)}, setting=("initial_probe", (3,)),
                   refined_by_default=True),
    ParameterBlock("positions", "real", "(N, 2) window corners (y, x)", "pixel",
                   ("cg.npy", "positions"), "probe positions", setting=("positions_A", (2,))),
    ParameterBlock("tilts", "real", "(N or 1, 6) [y, x before; inside; after]", "rad",
                   ("ct.npy", "tilts"), "beam tilts before, inside and after the specimen",
                   setting=("tilts", (2,)), default=_zeros_tilts),
    ParameterBlock("beam_current", "real", "(N,)", "", ("cb.npy", "beam_current"),
                   "relative beam intensity per measurement", setting=("beam_current", (1,)),
                   default=_ones_current),
    ParameterBlock("static_background", "real", "(my, mx) s, background = s**2",
                   "", ("cs.npy", "static_background"),
                   "static background intensity per detector pixel",
                   setting=("static_background", (2,)), default=_background, measured_grid=True,
                   conversion=(_sqrt, _square)),
    ParameterBlock("aberrations", "real", "(n_sets, n_coefficients) Krivanek order",
                   "angstrom", ("ca.npy", "aberrations"),
                   "local aberrations on top of the probe", setting=("aberrations_array", (1, 2)),
                   default=_zero_aberrations),
)

#: block names in table order
BLOCK_NAMES: tuple[str, ...] = tuple(b.name for b in PARAMETER_BLOCKS)
#: blocks present only when given or refined
OPTIONAL_BLOCKS: tuple[str, ...] = tuple(b.name for b in PARAMETER_BLOCKS if b.optional)

_BY_NAME = {b.name: b for b in PARAMETER_BLOCKS}


def block(name: str) -> ParameterBlock:
    """The table row of ``name``; a ValueError names the known blocks otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"block: expected one of {', '.join(BLOCK_NAMES)}, found "
                         f"{name!r}") from None


def _disk_axes(name: str, array: np.ndarray, where: str) -> tuple[int, ...] | None:
    """The transpose internal -> disk of ``name`` for this array (None: stored unchanged)."""
    row = _BY_NAME.get(name)
    if row is None or not row.disk_axes:
        return None
    axes = row.disk_axes.get(array.ndim)
    if axes is None:
        raise ValueError(f"{name}: expected {row.shape} ({' or '.join(map(str, row.disk_axes))}"
                         f" dimensions{where}), found shape {array.shape}")
    return axes


def to_disk_layout(name: str, array: Any) -> np.ndarray:
    """Internal layout -> on-disk (reference) layout; unknown names are stored unchanged."""
    array = np.asarray(array)
    axes = _disk_axes(name, array, "")
    return array if axes is None else np.transpose(array, axes)


def from_disk_layout(name: str, array: Any) -> np.ndarray:
    """Inverse of :func:`to_disk_layout` (C-contiguous)."""
    array = np.asarray(array)
    axes = _disk_axes(name, array, " on disk")
    return array if axes is None else np.ascontiguousarray(
        np.transpose(array, np.argsort(axes)))
