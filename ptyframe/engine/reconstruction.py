"""Reconstruction: assembles components into an iterative ptychography run.

Typical use::

    rec = Reconstruction(dataset, experiment, n_slices=4, n_probe_modes=3,
                         refine_positions=FromEpoch(10), output_dir="out")
    result = rec.run(epochs=50)

Components default to the registry's standard ones (multislice, far-field detector, lsq_sqrt,
quasi_newton, aperture probe, vacuum object, scan-grid positions); pass objects to replace any
of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from ptyframe.components import (
    Constraint,
    Detector,
    InitContext,
    LossMetric,
    ModelContext,
    ObjectInitializer,
    Optimizer,
    PositionInitializer,
    ProbeInitializer,
    Propagator,
    Regularizer,
)
from ptyframe.core.device import Device
from ptyframe.core.experiment import Experiment, ReconstructionGrid, windows_outside_object
from ptyframe.core.schedules import Constant, Schedule, as_schedule
from ptyframe.engine.model import BLOCKS, TILT_MODES, PtychographyModel
from ptyframe.io.array_settings import ArraySetting, load_array_setting, load_phase_plates
from ptyframe.io.data import Dataset
from ptyframe.io.results import OutputFolder

__all__ = ["Reconstruction", "ReconstructionResult", "EpochReport", "Callback"]

#: default component of each kind, resolved through the registry
DEFAULT_COMPONENTS = {
    "propagator": {"type": "multislice"},
    "detector": {"type": "far_field"},
    "loss": {"type": "lsq_sqrt"},
    "optimizer": {"type": "quasi_newton"},
    "probe_initializer": {"type": "aperture"},
    "object_initializer": {"type": "vacuum"},
    "position_initializer": {"type": "scan_grid"},
}

_LOG_COLUMNS = ("epoch", "time_s", "loss", "data_loss", "regularization", "step_size",
                "evaluations", "accepted", "line_search", "blocks", "n_measurements",
                "memory_mb")

#: the blocks beyond object/probe/positions, in the order of the refine_* arguments
EXTRA_BLOCKS = ("tilts", "beam_current", "static_background", "aberrations")


@attrs.define
class EpochReport:
    """What a callback sees after each epoch. ``params`` are the live device arrays."""

    epoch: int
    loss: float
    data_loss: float
    step_size: float
    evaluations: int
    accepted: bool
    elapsed_s: float
    blocks: tuple[str, ...]
    params: Mapping[str, Any]
    info: dict[str, Any] = attrs.field(factory=dict)


#: a callback returns True to stop the run
Callback = Callable[[EpochReport], "bool | None"]


@attrs.define
class ReconstructionResult:
    """Host copies of the refined quantities.

    ``object``: (n_slices, n_object_modes, Y, X); ``probe``: (n_probe_modes, ny, nx) centred
    (or (n_probes, n_probe_modes, ny, nx) with a probe marker); ``positions_A``: (N, 2) probe
    positions (y, x) in Å; ``loss``: loss per epoch run; ``extra``: the other refinable
    blocks present (``tilts`` (radians), ``beam_current``, ``static_background`` as the
    background intensity s**2 on the measured grid, centred, ``aberrations`` (Å)).
    """

    object: np.ndarray
    probe: np.ndarray
    positions_A: np.ndarray
    grid: ReconstructionGrid
    loss: list[float]
    epochs: int
    output_dir: Path | None = None
    extra: dict[str, np.ndarray] = attrs.field(factory=dict)

    @property
    def phase(self) -> np.ndarray:
        """Total phase (rad) of the first object mode summed over slices, (Y, X)."""
        return np.angle(self.object[:, 0]).sum(axis=0)


def _never(schedule: Schedule) -> bool:
    return isinstance(schedule, Constant) and not schedule.value


def _check_int(name: str, value: Any, low: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, found {value!r}")
    return int(value)


class Reconstruction:
    """Iterative ptychography assembled from components.

    Parameters
    ----------
    data: a :class:`Dataset` or an array (N, ky, kx) of centred patterns; for compressed
        data (a loss with ``detector_shape``), an array (N, n_masks) of detector signals.
    experiment: the :class:`Experiment` (voltage, aperture, calibration, scan).
    propagator, detector, loss, optimizer, probe_initializer, object_initializer,
        position_initializer: component objects; None picks the registry default.
    positions_A: optional (N, 2) starting positions (y, x) in Å (overrides the initializer).
    initial_object: optional starting object (n_slices, n_object_modes, Y, X) on the grid
        this reconstruction builds (overrides the object initializer); initial_probe:
        (n_probe_modes, ny, nx) centred real-space probe (overrides the probe initializer).
    n_slices, n_probe_modes, n_object_modes: model size.
    refine_object, refine_probe, refine_positions, refine_tilts, refine_beam_current,
        refine_static_background, refine_aberrations: bool or :class:`Schedule` of bool.
    tilts: (1, 6) or (N, 6) radians [y, x before; y, x inside; y, x after]; tilt_mode: which
        are applied (0 inside; 1 after; 2 before; 3 inside + after; 4 all). Default zeros
        (1, 6) when refine_tilts is ever on.
    beam_current: (N,) relative intensity per measurement (default ones when refined).
    static_background: background intensity per detector pixel (a number, or an array on the
        measured grid, centred); refined through s with background = s**2.
    aberrations_array: (n_sets, n_coefficients) Å, Krivanek order, applied on top of the probe
        (local aberrations); aberration_marker: (N,) which set each measurement uses.
    probe_marker: (N,) which probe each measurement uses (one probe per sub-scan).
    phase_plates: (N, ny, nx) per-measurement phase plates on the probe spectrum (radians, or
        complex factors), or an HDF5 path / {path, dataset} (dataset "configs").
    sequence: measurements used (a list of indices, or a Schedule of lists); None: all.
    use_full_fov: with a fixed sequence, whether the object still covers every measurement.
    loss_weight: factor (or Schedule) on the data term.
    reset_history: Schedule of bool; True at an epoch forgets the optimizer's history.
    regularizers, constraints: extra loss terms and by-hand projections.
    device: :class:`Device` (default: GPU when available, single precision).
    batch_size: measurements per vectorised batch (None: chosen from free memory).
    load_one_by_one: stream measurements from the dataset every evaluation instead of keeping
        them on the device.
    data_dtype: storage type of the measurements on the device ("float16", "float32",
        "float64"; None: the device's real type).
    allow_subpixel_shift: False rounds the starting positions to whole pixels.
    dynamically_resize_object: False, or a distance in pixels: when a window comes closer than
        this to the object's edge, the object grows by vacuum on that side.
    object_margin_px: empty border around the scanned area, pixels.
    output_dir: folder for checkpoints, loss.csv and parameters.json (None: nothing written).
    save_every: epochs between overwritable checkpoints; checkpoint_every: epochs between
        kept per-epoch checkpoints (None: none).
    verbosity: 0 silent, 1 a progress bar, 2 one line per epoch, 3 also every loss term
        (None: 1 when ``progress`` else 0).
    registry: where default components come from (default: installed plugins).
    """

    def __init__(
        self,
        data: Dataset | np.ndarray,
        experiment: Experiment,
        *,
        propagator: Propagator | None = None,
        detector: Detector | None = None,
        loss: LossMetric | None = None,
        optimizer: Optimizer | None = None,
        probe_initializer: ProbeInitializer | None = None,
        object_initializer: ObjectInitializer | None = None,
        position_initializer: PositionInitializer | None = None,
        positions_A: np.ndarray | None = None,
        initial_object: Any | None = None,
        initial_probe: Any | None = None,
        n_slices: int = 1,
        n_probe_modes: int = 1,
        n_object_modes: int = 1,
        refine_object: bool | Schedule = True,
        refine_probe: bool | Schedule = True,
        refine_positions: bool | Schedule = False,
        refine_tilts: bool | Schedule = False,
        refine_beam_current: bool | Schedule = False,
        refine_static_background: bool | Schedule = False,
        refine_aberrations: bool | Schedule = False,
        tilts: Any | None = None,
        tilt_mode: int = 0,
        beam_current: Any | None = None,
        static_background: Any | None = None,
        aberrations_array: Any | None = None,
        aberration_marker: Any | None = None,
        probe_marker: Any | None = None,
        phase_plates: Any | None = None,
        sequence: Sequence[int] | Schedule | None = None,
        use_full_fov: bool = True,
        loss_weight: float | Schedule = 1.0,
        reset_history: bool | Schedule = False,
        regularizers: Sequence[Regularizer] = (),
        constraints: Sequence[Constraint] = (),
        device: Device | None = None,
        batch_size: int | None = None,
        load_one_by_one: bool = False,
        data_dtype: str | None = None,
        allow_subpixel_shift: bool = True,
        dynamically_resize_object: bool | int = False,
        object_margin_px: int = 8,
        output_dir: str | Path | None = None,
        save_every: int = 1,
        checkpoint_every: int | None = None,
        progress: bool = True,
        verbosity: int | None = None,
        seed: int = 0,
        registry: Any | None = None,
        base_dir: str | Path | None = None,
    ) -> None:
        if not isinstance(experiment, Experiment):
            raise TypeError(f"experiment: expected an Experiment, found {type(experiment)}")
        self.experiment = experiment
        self.n_slices = _check_int("n_slices", n_slices, 1)
        self.n_probe_modes = _check_int("n_probe_modes", n_probe_modes, 1)
        self.n_object_modes = _check_int("n_object_modes", n_object_modes, 1)
        self.object_margin_px = _check_int("object_margin_px", object_margin_px, 0)
        self.save_every = _check_int("save_every", save_every, 1)
        if batch_size is not None:
            _check_int("batch_size", batch_size, 1)
        if tilt_mode not in TILT_MODES:
            raise ValueError(f"tilt_mode: expected one of {sorted(TILT_MODES)}, found "
                             f"{tilt_mode!r}")
        if verbosity is not None and verbosity not in (0, 1, 2, 3):
            raise ValueError(f"verbosity: expected 0, 1, 2 or 3, found {verbosity!r}")
        if dynamically_resize_object is not False and dynamically_resize_object is not True:
            _check_int("dynamically_resize_object", dynamically_resize_object, 1)
        self._registry = registry
        given = {"propagator": propagator, "detector": detector, "loss": loss,
                 "optimizer": optimizer, "probe_initializer": probe_initializer,
                 "object_initializer": object_initializer,
                 "position_initializer": position_initializer}
        for kind, component in given.items():
            setattr(self, kind, component if component is not None else self._default(kind))
        base = Path(base_dir) if base_dir is not None else None
        self.compressed = getattr(self.loss, "detector_shape", None) is not None
        if isinstance(data, Dataset):
            if self.compressed:
                raise ValueError("data: a compressed-data loss expects an array (N, n_masks) "
                                 "of detector signals, found a Dataset of patterns")
            self.dataset = data
            self._signals = None
        elif self.compressed:
            signals = np.asarray(data, dtype=np.float32)
            n_masks = int(getattr(self.loss, "n_masks", signals.shape[-1]))
            if signals.ndim != 2 or signals.shape[1] != n_masks:
                raise ValueError(f"data: expected compressed signals (N, {n_masks}) for the "
                                 f"loss {self.loss.name!r}, found shape {signals.shape}")
            self.dataset = None
            self._signals = signals
        else:
            self.dataset = Dataset.from_array(np.asarray(data), scan_shape=experiment.scan_shape)
            self._signals = None
        n = self.n_measurements
        self.refine = {"object": as_schedule(refine_object), "probe": as_schedule(refine_probe),
                       "positions": as_schedule(refine_positions),
                       "tilts": as_schedule(refine_tilts),
                       "beam_current": as_schedule(refine_beam_current),
                       "static_background": as_schedule(refine_static_background),
                       "aberrations": as_schedule(refine_aberrations)}
        self.tilt_mode = int(tilt_mode)
        self._tilts = load_array_setting("tilts", tilts, ndim=(2,), base_dir=base)
        if self._tilts is not None and (self._tilts.array.shape[1:] != (6,)
                                        or self._tilts.array.shape[0] not in (1, n)):
            raise ValueError(f"tilts: expected shape (1, 6) or ({n}, 6), found "
                             f"{self._tilts.array.shape}")
        self._beam_current = load_array_setting("beam_current", beam_current, ndim=(1,),
                                                base_dir=base)
        if self._beam_current is not None and self._beam_current.array.shape != (n,):
            raise ValueError(f"beam_current: expected shape ({n},), found "
                             f"{self._beam_current.array.shape}")
        if static_background is not None and np.isscalar(static_background):
            if float(static_background) < 0:
                raise ValueError(f"static_background: expected an intensity >= 0, found "
                                 f"{static_background}")
            self._background: ArraySetting | float | None = float(static_background)
        else:
            self._background = load_array_setting("static_background", static_background,
                                                  ndim=(2,), base_dir=base)
            if self._background is not None and np.any(self._background.array < 0):
                raise ValueError("static_background: expected intensities >= 0, found "
                                 "negative values")
        self._aberrations = load_array_setting("aberrations_array", aberrations_array,
                                               ndim=(1, 2), base_dir=base)
        if self._aberrations is not None and self._aberrations.array.ndim == 1:
            self._aberrations.array = self._aberrations.array[None]
        self._aberration_marker = self._marker("aberration_marker", aberration_marker, base)
        self._probe_marker = self._marker("probe_marker", probe_marker, base)
        if self._aberration_marker is not None:
            n_sets = int(self._aberration_marker.array.max()) + 1
            if self._aberrations is not None and self._aberrations.array.shape[0] < n_sets:
                raise ValueError(f"aberrations_array: aberration_marker uses {n_sets} sets, "
                                 f"found {self._aberrations.array.shape[0]} rows")
        self._phase_plates = load_phase_plates(phase_plates, base)
        if self._phase_plates is not None and self._phase_plates.array.shape[0] != n:
            raise ValueError(f"phase_plates: expected {n} plates (one per measurement), found "
                             f"{self._phase_plates.array.shape[0]}")
        self._initial_object = load_array_setting("initial_object", initial_object, ndim=(4,),
                                                  base_dir=base)
        self._initial_probe = load_array_setting("initial_probe", initial_probe, ndim=(3,),
                                                 base_dir=base)
        if sequence is None or isinstance(sequence, (Schedule, dict)):
            self.sequence = None if sequence is None else as_schedule(sequence)
        else:
            seq = load_array_setting("sequence", sequence, ndim=(1,), integer=True,
                                     base_dir=base).array
            self._check_sequence(seq)
            self.sequence = Constant(seq.tolist())
        self.use_full_fov = bool(use_full_fov)
        self.loss_weight = as_schedule(loss_weight)
        self.reset_history = as_schedule(reset_history)
        self.regularizers = list(regularizers)
        self.constraints = list(constraints)
        self.device = device if device is not None else Device("auto")
        self.batch_size = batch_size
        self.load_one_by_one = bool(load_one_by_one)
        if self.load_one_by_one and self.dataset is None:
            raise ValueError("load_one_by_one: needs a Dataset (patterns on disk), found "
                             "in-memory compressed signals")
        if data_dtype is not None and str(data_dtype) not in ("float16", "float32", "float64"):
            raise ValueError(f"data_dtype: expected 'float16', 'float32' or 'float64', found "
                             f"{data_dtype!r}")
        self.data_dtype = None if data_dtype is None else str(data_dtype)
        self.allow_subpixel_shift = bool(allow_subpixel_shift)
        self.dynamically_resize_object = dynamically_resize_object
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.checkpoint_every = checkpoint_every
        self.progress = progress
        self.verbosity = verbosity if verbosity is not None else (1 if progress else 0)
        self.seed = int(seed)
        self.epoch = 0
        self.loss_history: list[float] = []
        self.params: dict[str, Any] | None = None
        self.grid: ReconstructionGrid | None = None
        self.model: PtychographyModel | None = None
        self.context: ModelContext | None = None
        self._initial_positions_A = None if positions_A is None else np.asarray(
            positions_A, dtype=float)
        if self._initial_positions_A is not None and self._initial_positions_A.shape != (n, 2):
            raise ValueError(f"positions_A: expected shape ({n}, 2), found "
                             f"{self._initial_positions_A.shape}")
        self._term_names = self._unique_term_names()

    # ------------------------------------------------------------------ settings helpers
    @property
    def n_measurements(self) -> int:
        return len(self.dataset) if self.dataset is not None else int(self._signals.shape[0])

    def _marker(self, name: str, value: Any, base: Path | None) -> ArraySetting | None:
        setting = load_array_setting(name, value, ndim=(1,), integer=True, base_dir=base)
        if setting is not None:
            if setting.array.shape != (self.n_measurements,):
                raise ValueError(f"{name}: expected {self.n_measurements} indices (one per "
                                 f"measurement), found shape {setting.array.shape}")
            if setting.array.min() < 0:
                raise ValueError(f"{name}: expected indices >= 0, found {setting.array.min()}")
        return setting

    def _check_sequence(self, seq: np.ndarray) -> None:
        n = self.n_measurements
        if seq.size == 0:
            raise ValueError("sequence: expected at least one measurement index, found none")
        if seq.min() < 0 or seq.max() >= n:
            raise ValueError(f"sequence: expected indices in [0, {n - 1}], found "
                             f"[{seq.min()}, {seq.max()}]")
        if np.unique(seq).size != seq.size:
            raise ValueError("sequence: expected distinct measurement indices, found repeats")

    def _indices(self, epoch: int) -> np.ndarray | None:
        if self.sequence is None:
            return None
        value = self.sequence(epoch)
        if value is None:
            return None
        seq = np.asarray(value, dtype=np.int64).ravel()
        self._check_sequence(seq)
        return seq

    def _unique_term_names(self) -> list[str]:
        names: list[str] = []
        for reg in self.regularizers:
            base = f"reg_{reg.name or type(reg).__name__}"
            name, k = base, 2
            while name in names:
                name, k = f"{base}_{k}", k + 1
            names.append(name)
        return names

    # ------------------------------------------------------------------ components
    @property
    def registry(self) -> Any:
        if self._registry is None:
            from ptyframe.registry.loader import load_registry

            self._registry = load_registry()
        return self._registry

    def _default(self, kind: str) -> Any:
        return self.registry.create(kind, DEFAULT_COMPONENTS[kind])

    # ------------------------------------------------------------------ set-up
    def _measured_shape(self) -> tuple[int, int]:
        if self.compressed:
            return tuple(int(s) for s in self.loss.detector_shape)
        return tuple(int(s) for s in self.dataset.pattern_shape)

    def _auto_batch_size(self, window: tuple[int, int]) -> int:
        ny, nx = window
        item = np.dtype(self.device.complex_dtype).itemsize
        waves = self.n_object_modes * self.n_probe_modes
        per_position = ny * nx * item * (waves * (self.n_slices + 4) + 2 * self.n_probe_modes
                                         + 2 * self.n_slices * self.n_object_modes + 2)
        budget = 0.25 * self.device.free_memory_bytes()
        cap = 4096 if self.device.kind == "gpu" else 512
        return int(max(1, min(self.n_measurements, cap, budget // per_position)))

    def _mean_pattern(self, window: tuple[int, int]) -> np.ndarray | None:
        """Mean measured pattern (centred) on the model's detector grid, for initializers."""
        if self.compressed:
            masks = getattr(self.loss, "masks", None)
            if masks is None:
                return None
            masks = np.asarray(masks, dtype=float)
            mean_signal = self._signals.mean(axis=0)
            cover = np.maximum((masks**2).sum(axis=0), 1e-12)
            mean = np.tensordot(mean_signal, masks, axes=1) / cover
        elif self.detector.measurement_space != "diffraction":
            return None
        else:
            mean = self.dataset.mean_pattern()
        pattern = self.detector.pattern_on_model_grid(mean)
        if tuple(pattern.shape) != tuple(window):
            raise ValueError(f"detector {self.detector.name!r}: mean pattern on the model grid "
                             f"has shape {pattern.shape}, expected the window {window}")
        return pattern

    def _load_measured(self) -> Any:
        dev = self.device
        dtype = self.data_dtype or dev.real_dtype
        if self.compressed:
            return dev.asarray(self._signals, dtype=dtype)
        if self.load_one_by_one:
            dataset, detector = self.dataset, self.detector

            def read_rows(indices: np.ndarray) -> np.ndarray:
                return detector.to_detector_order(dataset.read(indices, np.float32))

            return read_rows
        return dev.asarray(self.detector.to_detector_order(self.dataset.load_all(np.float32)),
                           dtype=dtype)

    def initialize(self) -> dict[str, Any]:
        """Load data, build the grid, the starting guesses and the model (idempotent)."""
        if self.params is not None:
            return self.params
        exp, dev = self.experiment, self.device
        measured_shape = self._measured_shape()
        window = tuple(int(w) for w in self.detector.model_window(measured_shape))
        if window[0] != window[1]:
            raise ValueError(f"data: expected square patterns, found {measured_shape}")
        pixel = float(self.detector.object_pixel_size_A(exp, measured_shape))
        mean_pattern = self._mean_pattern(window)
        rng = np.random.default_rng(self.seed)
        context = InitContext(exp, None, mean_pattern, self.n_measurements, rng)
        if self._initial_positions_A is not None:
            positions_A = self._initial_positions_A
        else:
            positions_A = np.asarray(self.position_initializer.build(context), dtype=float)
        covered = positions_A
        if (self.sequence is not None and not self.use_full_fov
                and isinstance(self.sequence, Constant)):
            covered = positions_A[np.asarray(self.sequence.value, dtype=np.int64)]
        self.grid = ReconstructionGrid.covering(covered, window, 1.0 / (window[0] * pixel),
                                                margin_px=self.object_margin_px)
        context.grid = self.grid
        if self._initial_probe is not None:
            probe = self._initial_probe.array
            if probe.shape != (self.n_probe_modes, *window):
                raise ValueError(f"initial_probe: expected shape ({self.n_probe_modes}, "
                                 f"{window[0]}, {window[1]}), found {probe.shape}")
        else:
            probe = np.asarray(self.probe_initializer.build(context, self.n_probe_modes))
        if self._probe_marker is not None:
            n_probes = int(self._probe_marker.array.max()) + 1
            probe = np.repeat(probe[None], n_probes, axis=0)
        if self._initial_object is not None:
            obj = self._initial_object.array
            expected = (self.n_slices, self.n_object_modes, *self.grid.object_shape)
            if obj.shape != expected:
                raise ValueError(f"initial_object: expected shape {expected} for this grid, "
                                 f"found {obj.shape}")
        else:
            obj = np.asarray(self.object_initializer.build(
                context, self.grid.object_shape, self.n_slices, self.n_object_modes))
        corners = self.grid.positions_to_pixels(positions_A)
        if not self.allow_subpixel_shift:
            corners = np.round(corners)
        if self.sequence is not None and not self.use_full_fov:
            # measurements outside the sequence may fall off the object: clip their windows
            hi = np.array(self.grid.object_shape) - np.array(window)
            corners = np.clip(corners, 0, hi)
        thickness = getattr(self.propagator, "slice_thickness_A", None)
        self.context = ModelContext(
            window=window, pixel_size_A=pixel, wavelength_A=exp.wavelength_A,
            n_measurements=self.n_measurements, device=dev, measured_shape=measured_shape,
            scan_shape=exp.scan_shape, n_slices=self.n_slices,
            slice_thickness_A=tuple(thickness) if thickness is not None else None,
            experiment=exp, grid=self.grid, to_detector_order=self.detector.to_detector_order)
        plates = None
        if self._phase_plates is not None:
            plate = self._phase_plates.array
            if plate.shape[1:] != window:
                raise ValueError(f"phase_plates: expected plates of shape {window} (the probe "
                                 f"window), found {plate.shape[1:]}")
            factor = plate if np.iscomplexobj(plate) else np.exp(1j * plate)
            plates = dev.complex(np.fft.ifftshift(factor, axes=(-2, -1)))
        self.model = PtychographyModel(
            self.propagator, self.loss, dev, window, pixel, exp.wavelength_A, self.n_slices,
            self._load_measured(),
            batch_size=self.batch_size or self._auto_batch_size(window),
            detector=self.detector, tilt_mode=self.tilt_mode,
            probe_marker=None if self._probe_marker is None else self._probe_marker.array,
            aberration_marker=(None if self._aberration_marker is None
                               else self._aberration_marker.array),
            phase_plates=plates, n_measurements=self.n_measurements, context=self.context)
        params = {"object": dev.complex(obj), "probe": dev.complex(probe),
                  "positions": dev.real(corners)}
        params.update(self._extra_blocks(measured_shape, mean_pattern))
        self.params = params
        self.model.check_blocks(self.params)
        for component in (*self.regularizers, *self.constraints, self.optimizer):
            component.prepare(self.context)
        return self.params

    def _extra_blocks(self, measured_shape: tuple[int, int], mean_pattern: Any
                      ) -> dict[str, Any]:
        dev, n = self.device, self.n_measurements
        out: dict[str, Any] = {}
        if self._tilts is not None or not _never(self.refine["tilts"]):
            tilts = self._tilts.array if self._tilts is not None else np.zeros((1, 6))
            out["tilts"] = dev.real(tilts)
        if self._beam_current is not None or not _never(self.refine["beam_current"]):
            current = (self._beam_current.array if self._beam_current is not None
                       else np.ones(n))
            out["beam_current"] = dev.real(current)
        if self._background is not None or not _never(self.refine["static_background"]):
            if isinstance(self._background, ArraySetting):
                if self._background.array.shape != tuple(measured_shape):
                    raise ValueError(f"static_background: expected shape {measured_shape} "
                                     f"(the measured grid), found "
                                     f"{self._background.array.shape}")
                level = self.detector.to_detector_order(self._background.array)
            else:
                # s = 0 is a stationary point of s**2: start a refined background from the
                # data when none is given
                value = self._background
                if (value is None or value == 0) and not _never(
                        self.refine["static_background"]):
                    value = self._background_estimate(mean_pattern)
                value = 0.0 if value is None else value
                level = np.full(measured_shape, float(value))
            out["static_background"] = dev.real(np.sqrt(level))
        if self._aberrations is not None or not _never(self.refine["aberrations"]):
            n_sets = (int(self._aberration_marker.array.max()) + 1
                      if self._aberration_marker is not None else 1)
            ab = (self._aberrations.array if self._aberrations is not None
                  else np.zeros((n_sets, 8)))
            out["aberrations"] = dev.real(ab)
        return out

    def _background_estimate(self, mean_pattern: Any) -> float:
        """A flat starting background: the mean over patterns of each pattern's smallest
        pixel (about the background level minus its noise), at least 1e-3 of the mean count
        per pixel."""
        floor = 1e-3 * (float(np.mean(mean_pattern)) if mean_pattern is not None else 1.0)
        if self.dataset is None:
            return floor
        n, lows = len(self.dataset), []
        for start in range(0, n, 512):
            chunk = self.dataset.read(np.arange(start, min(start + 512, n)), np.float32)
            lows.append(chunk.reshape(chunk.shape[0], -1).min(axis=1))
        return max(float(np.mean(np.concatenate(lows))), floor)

    # ------------------------------------------------------------------ objective
    def _in_bounds(self, positions: Any) -> bool:
        return windows_outside_object(self.device.to_host(positions), self.grid.window,
                                      tuple(self.params["object"].shape)) is None

    def evaluate(self, params: Mapping[str, Any], blocks: Iterable[str],
                 epoch: int | None = None) -> tuple[float, dict[str, Any], dict[str, float]]:
        """Loss, gradients for ``blocks`` and the contribution of each term at ``epoch``
        (default: the current epoch)."""
        blocks = tuple(blocks)
        epoch = self.epoch if epoch is None else int(epoch)
        xp = self.device.xp
        if "positions" in blocks and not self._in_bounds(params["positions"]):
            return float("inf"), {b: xp.zeros_like(params[b]) for b in blocks}, {}
        data_loss, grads = self.model.value_and_grad(params, refine=blocks,
                                                     indices=self._indices(epoch))
        weight = float(self.loss_weight(epoch))
        if weight != 1.0:
            data_loss *= weight
            grads = {b: g * weight for b, g in grads.items()}
        terms = {"data_loss": data_loss}
        total = data_loss
        for name, reg in zip(self._term_names, self.regularizers, strict=True):
            value, reg_grads = reg.value_and_grad(params, epoch=epoch)
            terms[name] = float(value)
            total += float(value)
            for block, g in reg_grads.items():
                if block in grads:
                    grads[block] = grads[block] + g
        for constraint in self.constraints:
            if constraint.is_active(epoch):
                grads = constraint.project_gradient(grads, params, epoch)
        return total, {b: grads[b] for b in blocks}, terms

    # ------------------------------------------------------------------ running
    def _host_state(self) -> dict[str, np.ndarray]:
        dev = self.device
        state = {name: dev.to_host(array) for name, array in self.params.items()}
        if "static_background" in state:
            state["static_background"] = self.detector.from_detector_order(
                state["static_background"])
        return state

    def result(self) -> ReconstructionResult:
        state = self._host_state()
        extra = {k: state[k] for k in EXTRA_BLOCKS if k in state}
        if "static_background" in extra:
            extra["static_background"] = extra["static_background"] ** 2
        return ReconstructionResult(
            object=state["object"], probe=state["probe"],
            positions_A=self.grid.pixels_to_positions(state["positions"]), grid=self.grid,
            loss=list(self.loss_history), epochs=self.epoch, output_dir=self.output_dir,
            extra=extra)

    def active_blocks(self, epoch: int) -> tuple[str, ...]:
        return tuple(b for b in BLOCKS if b in self.params and self.refine[b](epoch))

    def run(self, epochs: int, callbacks: Sequence[Callback] = ()) -> ReconstructionResult:
        """Run ``epochs`` more epochs (one optimizer step each) and return the result."""
        if not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"epochs: expected an integer >= 0, found {epochs!r}")
        self.initialize()
        output = self._open_output()
        columns = _LOG_COLUMNS + tuple(self._term_names)
        log = output.loss_log(columns, resume_from_epoch=self.epoch if self.epoch else None
                              ) if output is not None else None
        state = self.optimizer.init_state()
        active: tuple[str, ...] = ()
        active_indices: Any = None
        value, grads, terms = 0.0, {}, {}
        start = time.perf_counter()
        bar = self._progress_bar(epochs)
        try:
            for _ in range(epochs):
                epoch = self.epoch
                blocks = self.active_blocks(epoch)
                if not blocks:
                    raise ValueError(f"refine: no block is refined at epoch {epoch}")
                indices = self._indices(epoch)
                same_indices = (indices is None and active_indices is None) or (
                    indices is not None and active_indices is not None
                    and np.array_equal(indices, active_indices))
                if blocks != active or not same_indices or bool(self.reset_history(epoch)) \
                        or float(self.loss_weight(epoch)) != float(
                            self.loss_weight(max(epoch - 1, 0))):
                    self.optimizer.reset(state)
                    active, active_indices = blocks, indices
                    value, grads, terms = self.evaluate(self.params, active, epoch)
                seen: list[tuple[float, dict[str, float]]] = []

                def objective(sub: Mapping[str, Any], _blocks=active, _seen=seen,
                              _epoch=epoch) -> tuple[float, dict[str, Any]]:
                    full = dict(self.params)
                    full.update(sub)
                    v, g, t = self.evaluate(full, _blocks, _epoch)
                    _seen.append((v, t))
                    return v, g

                step = self.optimizer.step({b: self.params[b] for b in active}, value, grads,
                                           objective, state)
                self.params.update(step.params)
                value, grads = step.value, dict(step.grads)
                terms = next((t for v, t in reversed(seen) if v == value), terms)
                reset = False
                for constraint in self.constraints:
                    if constraint.is_active(epoch):
                        reset |= bool(constraint.apply(self.params, epoch))
                reset |= self._maybe_resize_object()
                if reset:
                    self.optimizer.reset(state)
                    value, grads, terms = self.evaluate(self.params, active, epoch)
                self.epoch += 1
                self.loss_history.append(value)
                report = EpochReport(
                    epoch=self.epoch, loss=value, data_loss=terms.get("data_loss", value),
                    step_size=step.step_size, evaluations=step.evaluations,
                    accepted=step.accepted, elapsed_s=time.perf_counter() - start,
                    blocks=active, params=self.params,
                    info=dict(step.info, terms=terms,
                              n_measurements=self.n_measurements if indices is None
                              else int(indices.size)))
                self._record(report, output, log)
                self._print(report, bar)
                if any(bool(cb(report)) for cb in callbacks):
                    break
        finally:
            if bar is not None:
                bar.close()
        if output is not None and self.epoch % self.save_every:
            output.save_state(self._host_state(), self.epoch)
        return self.result()

    def _maybe_resize_object(self) -> bool:
        """Grow the object with vacuum where a window came within the resize distance of an
        edge; positions and the grid origin follow. Returns True when it grew."""
        limit = self.dynamically_resize_object
        if limit is False:
            return False
        limit = 2 if limit is True else int(limit)
        dev, xp = self.device, self.device.xp
        corners = dev.to_host(self.params["positions"])
        obj = self.params["object"]
        Y, X = obj.shape[-2:]
        ny, nx = self.grid.window
        grow = 4 * limit
        top = grow if corners[:, 0].min() < limit else 0
        left = grow if corners[:, 1].min() < limit else 0
        bottom = grow if corners[:, 0].max() + ny > Y - limit else 0
        right = grow if corners[:, 1].max() + nx > X - limit else 0
        if not (top or left or bottom or right):
            return False
        pad = ((0, 0), (0, 0), (top, bottom), (left, right))
        self.params["object"] = xp.pad(obj, pad, mode="constant", constant_values=1.0)
        self.params["positions"] = self.params["positions"] + xp.asarray(
            [top, left], dtype=self.params["positions"].dtype)
        px = self.grid.pixel_size_A
        self.grid = attrs.evolve(
            self.grid, object_shape=(Y + top + bottom, X + left + right),
            origin_A=(self.grid.origin_A[0] - top * px, self.grid.origin_A[1] - left * px))
        self.context.grid = self.grid
        return True

    def _progress_bar(self, epochs: int) -> Any:
        if self.verbosity != 1:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=epochs, desc="ptyframe", unit="epoch", leave=True)

    def _print(self, report: EpochReport, bar: Any) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{report.loss:.5g}", step=f"{report.step_size:.2g}")
            return
        if self.verbosity >= 2:
            line = (f"epoch {report.epoch}: loss {report.loss:.6g} step {report.step_size:.3g} "
                    f"evaluations {report.evaluations} blocks {'+'.join(report.blocks)} "
                    f"{report.elapsed_s:.1f} s")
            if self.verbosity >= 3:
                line += " | " + ", ".join(f"{k} {v:.4g}" for k, v in
                                          report.info.get("terms", {}).items())
            print(line, flush=True)

    def _open_output(self) -> OutputFolder | None:
        if self.output_dir is None:
            return None
        output = OutputFolder(self.output_dir, checkpoint_every=self.checkpoint_every)
        output.save_parameters(self.to_config())
        return output

    def _record(self, report: EpochReport, output: OutputFolder | None, log: Any) -> None:
        if output is None:
            return
        regularization = report.loss - report.data_loss
        terms = report.info.get("terms", {})
        log.append(epoch=report.epoch, time_s=report.elapsed_s, loss=report.loss,
                   data_loss=report.data_loss, regularization=regularization,
                   step_size=report.step_size, evaluations=report.evaluations,
                   accepted=report.accepted,
                   line_search=str(report.info.get("line_search", "")),
                   blocks="+".join(report.blocks),
                   n_measurements=report.info.get("n_measurements", self.n_measurements),
                   memory_mb=self._memory_mb(),
                   **{name: terms.get(name, float("nan")) for name in self._term_names})
        if report.epoch % self.save_every == 0 or (
                self.checkpoint_every and report.epoch % self.checkpoint_every == 0):
            output.save_state(self._host_state(), report.epoch)

    def _memory_mb(self) -> float:
        total = sum(int(a.nbytes) for a in self.params.values())
        if self.model is not None:
            total += int(self.model._ws.nbytes)
            if self.model.measured is not None:
                total += int(self.model.measured.nbytes)
        return total / 2**20

    # ------------------------------------------------------------------ configuration
    def to_config(self) -> dict[str, Any]:
        """JSON-ready description of this reconstruction (data given by path when known)."""
        config: dict[str, Any] = {
            "experiment": self.experiment.to_config(),
            "n_slices": self.n_slices,
            "n_probe_modes": self.n_probe_modes,
            "n_object_modes": self.n_object_modes,
            "refine": {k: v.to_config() for k, v in self.refine.items()},
            "regularizers": [r.to_config() for r in self.regularizers],
            "constraints": [c.to_config() for c in self.constraints],
            "device": self.device.to_config(),
            "batch_size": self.batch_size,
            "object_margin_px": self.object_margin_px,
            "save_every": self.save_every,
            "checkpoint_every": self.checkpoint_every,
            "seed": self.seed,
            "tilt_mode": self.tilt_mode,
            "use_full_fov": self.use_full_fov,
            "loss_weight": self.loss_weight.to_config(),
            "reset_history": self.reset_history.to_config(),
            "load_one_by_one": self.load_one_by_one,
            "data_dtype": self.data_dtype,
            "allow_subpixel_shift": self.allow_subpixel_shift,
            "dynamically_resize_object": self.dynamically_resize_object,
            "verbosity": self.verbosity,
        }
        for key, setting in (("tilts", self._tilts), ("beam_current", self._beam_current),
                             ("aberrations_array", self._aberrations),
                             ("aberration_marker", self._aberration_marker),
                             ("probe_marker", self._probe_marker),
                             ("phase_plates", self._phase_plates),
                             ("initial_object", self._initial_object),
                             ("initial_probe", self._initial_probe)):
            if setting is not None:
                config[key] = setting.to_config()
        if isinstance(self._background, ArraySetting):
            config["static_background"] = self._background.to_config()
        elif self._background is not None:
            config["static_background"] = self._background
        if self.sequence is not None:
            config["sequence"] = (self.sequence.value if isinstance(self.sequence, Constant)
                                  else self.sequence.to_config())
        for kind in DEFAULT_COMPONENTS:
            config[kind] = getattr(self, kind).to_config()
        if self.dataset is not None and getattr(self.dataset, "path", None) is not None:
            config["data"] = {"path": str(self.dataset.path)}
        if self.grid is not None:
            config["grid"] = self.grid.to_config()
        return config

    def load_checkpoint(self, folder: str | Path | None = None) -> int:
        """Restore every refinable block from an output folder; returns the epoch."""
        folder = Path(folder) if folder is not None else self.output_dir
        if folder is None:
            raise ValueError("load_checkpoint: no folder given and no output_dir set")
        from ptyframe.io.results import load_state

        arrays, epoch = load_state(folder)
        self.initialize()
        for block in ("object", "probe", "positions"):
            if block not in arrays:
                raise ValueError(f"checkpoint in {folder}: missing block {block!r}")
        for block, array in arrays.items():
            if block not in self.params:
                continue
            if block == "static_background":
                array = self.detector.to_detector_order(array)
            if block == "object" and array.shape != tuple(self.params[block].shape) and (
                    array.shape[:2] == tuple(self.params[block].shape[:2])
                    and self.dynamically_resize_object is not False):
                self.params[block] = self.device.asarray(array, dtype=self.params[block].dtype)
                continue
            if array.shape != tuple(self.params[block].shape):
                raise ValueError(
                    f"checkpoint in {folder}: {block} has shape {array.shape}, this "
                    f"reconstruction expects {tuple(self.params[block].shape)}")
            self.params[block] = self.device.asarray(array, dtype=self.params[block].dtype)
        self.epoch = int(epoch)
        log_path = folder / "loss.csv"
        if log_path.exists():
            from ptyframe.io.results import read_loss_log

            history = read_loss_log(log_path)
            keep = history["epoch"] <= epoch
            self.loss_history = [float(v) for v in history["loss"][keep]]
        return self.epoch
