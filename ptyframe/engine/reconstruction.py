"""Reconstruction: assembles specifications and components into an iterative run.

Typical use::

    rec = Reconstruction(dataset, experiment, n_slices=4, n_probe_modes=3,
                         refine_positions=FromEpoch(10), output_dir="out")
    result = rec.run(epochs=50)

or, with the specifications spelled out (:mod:`ptyframe.engine.specs`)::

    rec = Reconstruction(dataset, experiment, model=ModelSpec(n_slices=4),
                         refine=RefineSpec({"positions": FromEpoch(10)}),
                         output=OutputSpec(dir="out"))

Components default to the registry's standard ones (multislice, far-field detector, ml for
counting data and lsq_sqrt otherwise, quasi_newton, the full_batch engine, aperture probe,
vacuum object, scan-grid positions).

One epoch is a template of steps: the engine's epoch (evaluate, step), the projections
(constraints, object growth), the report, the checkpoint (parameters and engine state).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from ptyframe.components import InitContext, ModelContext, Problem
from ptyframe.core.blocks import PARAMETER_BLOCKS, BlockDefaults
from ptyframe.core.blocks import block as block_row
from ptyframe.core.device import Device
from ptyframe.core.experiment import Experiment, ReconstructionGrid, windows_outside_object
from ptyframe.core.schedules import Constant, Schedule
from ptyframe.engine.communicator import Communicator, SingleProcess
from ptyframe.engine.health import HealthWatch
from ptyframe.engine.metadata_checks import bright_field_disc, check_metadata, check_scan_shape
from ptyframe.engine.model import PtychographyModel
from ptyframe.engine.monitor import EpochReport, RunMonitor, relative_loss
from ptyframe.engine.position_scaling import position_information, position_preconditioner
from ptyframe.engine.run_record import (
    ForeignRunError,
    differences,
    has_checkpoint,
    read_fingerprint,
    run_fingerprint,
    write_fingerprint,
)
from ptyframe.engine.scan_model import (
    DEFAULT_JITTER_PRIOR_A,
    global_basis,
    jitter_prior,
    jitter_resolved,
    project_scan,
    restrict_to_global,
)
from ptyframe.engine.specs import (
    INITIALIZER_KINDS,
    SPEC_CLASSES,
    ModelSpec,
    OutputSpec,
    ReadingSpec,
    RefineSpec,
    SolverSpec,
    route_settings,
)
from ptyframe.engine.validation import (
    BestEpochRule,
    follow_neighbours,
    held_out_groups,
    held_out_indices,
    neighbour_table,
)
from ptyframe.io.array_settings import ArraySetting, load_array_setting, load_phase_plates
from ptyframe.io.data import Dataset
from ptyframe.io.folder_lock import FolderLock
from ptyframe.io.provenance import PROVENANCE_FILE, collect_provenance, finish_provenance
from ptyframe.io.results import (
    LOSS_FILE,
    OutputFolder,
    atomic_save_npy,
    atomic_write_json,
    read_loss_log,
)
from ptyframe.io.run_result import INITIAL_POSITIONS_FILE, RunResult
from ptyframe.io.stream import PatternStream

__all__ = ["Reconstruction", "ReconstructionResult", "EpochReport", "Callback",
           "DEFAULT_COMPONENTS", "FIGURES_FOLDER"]

_LOG = logging.getLogger("ptyframe")

#: sub-folder of the output folder holding the figures
FIGURES_FOLDER = "figures"

#: default component of each kind, resolved through the registry
DEFAULT_COMPONENTS = {
    "propagator": {"type": "multislice"},
    "detector": {"type": "far_field"},
    "loss": {"type": "lsq_sqrt"},
    "optimizer": {"type": "quasi_newton"},
    "engine": {"type": "full_batch"},
    "probe_initializer": {"type": "aperture"},
    "object_initializer": {"type": "vacuum"},
    "position_initializer": {"type": "scan_grid"},
}

#: epochs after position refinement starts during which no new best-validated epoch is
#: chosen: the held-out positions are fitted at once to an object made with the training
#: positions still wrong, which flatters the validation loss until those have moved
SETTLE_EPOCHS = 5

#: a callback returns True to stop the run
Callback = Callable[[EpochReport], "bool | None"]


@attrs.define
class ReconstructionResult:
    """Host copies of the refined quantities.

    ``object``: (n_slices, n_object_modes, Y, X); ``probe``: (n_probe_modes, ny, nx) centred
    (or (n_probes, n_probe_modes, ny, nx) with a probe marker); ``positions_A``: (N, 2) probe
    positions (y, x) in Å; ``loss``: loss per epoch run; ``extra``: the other refinable
    blocks present (``tilts`` (radians), ``beam_current``, ``static_background`` as the
    background intensity s**2 on the measured grid, centred, ``aberrations`` (Å));
    ``validation_loss``: data loss per held-out pattern per epoch (empty: none held out);
    ``best_epoch``: the epoch whose parameters these are when the best-validated epoch was
    kept (None: the last epoch's).
    """

    object: np.ndarray
    probe: np.ndarray
    positions_A: np.ndarray
    grid: ReconstructionGrid
    loss: list[float]
    epochs: int
    output_dir: Path | None = None
    extra: dict[str, np.ndarray] = attrs.field(factory=dict)
    validation_loss: list[float] = attrs.field(factory=list)
    best_epoch: int | None = None

    @property
    def phase(self) -> np.ndarray:
        """Total phase (rad) of the first object mode summed over slices, (Y, X)."""
        return np.angle(self.object[:, 0]).sum(axis=0)


#: patterns sampled to tell counting data from intensities
_COUNT_SAMPLE = 64


def looks_like_counts(data: Any) -> bool:
    """Whether ``data`` (a :class:`Dataset` or an array of patterns) holds detector counts:
    non-negative whole numbers, at least one count per pattern on average (sampled from up
    to 64 patterns). Counting data have Poisson noise, for which ``ml`` is the right loss;
    intensities (normalised, background-subtracted, or noise-free simulations) are better
    served by ``lsq_sqrt``."""
    if isinstance(data, Dataset):
        n = len(data)
        rows = np.unique(np.linspace(0, n - 1, min(n, _COUNT_SAMPLE)).astype(np.int64))
        sample = data.read(rows, np.float32)
    else:
        array = np.asarray(data)
        if array.ndim < 2 or array.size == 0:
            return False
        step = max(1, array.shape[0] // _COUNT_SAMPLE)
        sample = np.asarray(array[::step][:_COUNT_SAMPLE], dtype=np.float64)
    if sample.size == 0 or not np.all(np.isfinite(sample)) or sample.min() < 0:
        return False
    if not np.allclose(sample, np.round(sample), atol=1e-3):
        return False
    return float(sample.reshape(sample.shape[0], -1).sum(axis=1).mean()) >= 1.0


def _check_int(name: str, value: Any, low: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, found {value!r}")
    return int(value)


class Reconstruction(Problem):
    """Iterative ptychography assembled from specifications and components.

    Parameters
    ----------
    data: a :class:`Dataset` or an array (N, ky, kx) of centred patterns; for compressed
        data (a loss with ``detector_shape``), an array (N, n_masks) of detector signals.
    experiment: the :class:`Experiment` (voltage, aperture, calibration, scan).
    model, refine, solver, reading, output: the specifications
        (:class:`~ptyframe.engine.specs.ModelSpec`, :class:`~ptyframe.engine.specs.RefineSpec`
        or a table ``{block: schedule or BlockPlan}``, :class:`~ptyframe.engine.specs.SolverSpec`,
        :class:`~ptyframe.engine.specs.ReadingSpec`, :class:`~ptyframe.engine.specs.OutputSpec`);
        None: defaults, or built from ``settings``.
    device: :class:`Device` (default: GPU when available, single precision).
    communicator: how the ranks of a data-parallel run sum their partial results
        (:mod:`ptyframe.engine.communicator`; default: one process). Each rank reads and
        evaluates only its own contiguous range of measurements; rank 0 alone writes.
    seed: seed of the initializers' random numbers.
    registry: where default components come from (default: installed plugins).
    base_dir: folder that relative .npy paths in settings are relative to.
    settings: the short form: any field of the specifications by name (``n_slices=4``,
        ``loss=...``, ``batch_size=64``, ``output_dir="out"``), ``refine_<block>=schedule``, a
        block's starting value by its setting name (``initial_object``, ``initial_probe``,
        ``positions_A``, ``tilts``, ``beam_current``, ``static_background``,
        ``aberrations_array``) and the initializers (``probe_initializer`` ...). A
        specification given as an object cannot be given as keywords too.
    """

    def __init__(
        self,
        data: Dataset | np.ndarray,
        experiment: Experiment,
        *,
        model: ModelSpec | None = None,
        refine: RefineSpec | Mapping[str, Any] | None = None,
        solver: SolverSpec | None = None,
        reading: ReadingSpec | None = None,
        output: OutputSpec | None = None,
        device: Device | None = None,
        communicator: Communicator | None = None,
        seed: int = 0,
        registry: Any | None = None,
        base_dir: str | Path | None = None,
        **settings: Any,
    ) -> None:
        if not isinstance(experiment, Experiment):
            raise TypeError(f"experiment: expected an Experiment, found {type(experiment)}")
        self.experiment = experiment
        self._registry = registry
        self.base_dir = Path(base_dir) if base_dir is not None else None
        self.seed = _check_int("seed", seed, 0)
        given = {"model": model, "refine": refine, "solver": solver, "reading": reading,
                 "output": output}
        specs = self._specs(given, route_settings(settings))
        self.model_spec: ModelSpec = specs["model"]
        self.refine_spec: RefineSpec = specs["refine"]
        self.solver: SolverSpec = specs["solver"]
        self.reading: ReadingSpec = specs["reading"]
        self.output: OutputSpec = specs["output"]
        self._resolve_defaults(data)
        self.device = device if device is not None else Device("auto")
        if communicator is not None and not isinstance(communicator, Communicator):
            raise TypeError(f"communicator: expected a Communicator, found "
                            f"{type(communicator).__name__}")
        self.communicator: Communicator = communicator or SingleProcess()
        self._attach_data(data)
        self._load_settings()
        self.epoch = 0
        self.loss_history: list[float] = []
        self.validation_history: list[float] = []
        self._held_out = np.zeros(0, dtype=np.int64)
        self._neighbours = np.zeros((0, 0), dtype=np.int64)
        self._start_positions: Any = None
        self._scan_rows = np.zeros(0, dtype=np.int64)
        self._scan_basis: np.ndarray | None = None
        self._best: tuple[int, float, dict[str, np.ndarray]] | None = None
        self._best_rule = BestEpochRule(confidence=self.output.keep_best_confidence)
        self._held_state: Any = None
        self._refining_positions = False
        self._best_saved: int | None = None
        self._settled_at = 0
        self._held_residual: Any = None
        self._jitter_held: bool | None = None  # this epoch: local jitter held (None: n/a)
        self._jitter_changed_at: int | None = None  # epoch the hold last switched
        self._pattern_counts: np.ndarray | None = None
        self.params: dict[str, Any] | None = None
        self.grid: ReconstructionGrid | None = None
        self.model: PtychographyModel | None = None
        self.context: ModelContext | None = None
        self._engine_state: Any = None
        self._term_names = self._unique_term_names()
        self._health = HealthWatch(self.solver.max_rejected_epochs)
        self._resumed_from: Path | None = None  # the folder load_checkpoint read
        self._folder_lock: FolderLock | None = None  # a lock taken by the caller
        self._provenance: dict[str, Any] | None = None
        self._initial_positions_A: np.ndarray | None = None

    # ------------------------------------------------------------------ assembly
    def _specs(self, given: Mapping[str, Any], routed: Mapping[str, dict[str, Any]]
               ) -> dict[str, Any]:
        specs = {}
        for key, cls in SPEC_CLASSES.items():
            value, flat = given[key], routed[key]
            if value is not None and flat:
                raise TypeError(f"{key}: given as a {cls.__name__} and as keywords "
                                f"{sorted(flat)}; use one")
            if value is None:
                value = cls.from_config(flat, self._registry)
            elif key == "refine" and isinstance(value, Mapping):
                value = RefineSpec(dict(value))
            elif isinstance(value, Mapping):
                value = cls.from_config(value, self._registry)
            if not isinstance(value, cls):
                raise TypeError(f"{key}: expected a {cls.__name__}, found "
                                f"{type(value).__name__}")
            specs[key] = value
        return specs

    @property
    def registry(self) -> Any:
        if self._registry is None:
            from ptyframe.registry.loader import load_registry

            self._registry = load_registry()
        return self._registry

    def _default(self, kind: str) -> Any:
        return self.registry.create(kind, DEFAULT_COMPONENTS[kind])

    def _resolve_defaults(self, data: Any) -> None:
        """Fill every component left None with the registry's default, so that the
        specifications (and parameters.json) name what actually runs. The default loss is
        ``ml`` (Poisson) for counting data, ``lsq_sqrt`` otherwise (:func:`looks_like_counts`)."""
        m, s = self.model_spec, self.solver
        self.model_spec = attrs.evolve(
            m, propagator=m.propagator or self._default("propagator"),
            detector=m.detector or self._default("detector"))
        loss = s.loss
        if loss is None:
            loss = self.registry.create("loss", {"type": "ml" if looks_like_counts(data)
                                                 else DEFAULT_COMPONENTS["loss"]["type"]})
        self.solver = attrs.evolve(s, loss=loss,
                                   optimizer=s.optimizer or self._default("optimizer"),
                                   engine=s.engine or self._default("engine"))
        for name, kind in INITIALIZER_KINDS.items():
            plan = self.refine_spec.blocks[name]
            if plan.initializer is None:
                plan.initializer = self._default(kind)

    def _attach_data(self, data: Any) -> None:
        loss = self.solver.loss
        self.compressed = getattr(loss, "detector_shape", None) is not None
        self.dataset: Dataset | None = None
        self._signals: np.ndarray | None = None
        if isinstance(data, Dataset):
            if self.compressed:
                raise ValueError("data: a compressed-data loss expects an array (N, n_masks) "
                                 "of detector signals, found a Dataset of patterns")
            self.dataset = data
        elif self.compressed:
            signals = np.asarray(data, dtype=np.float32)
            n_masks = int(getattr(loss, "n_masks", signals.shape[-1]))
            if signals.ndim != 2 or signals.shape[1] != n_masks:
                raise ValueError(f"data: expected compressed signals (N, {n_masks}) for the "
                                 f"loss {loss.name!r}, found shape {signals.shape}")
            self._signals = signals
        else:
            self.dataset = Dataset.from_array(np.asarray(data),
                                              scan_shape=self.experiment.scan_shape)
        if self.reading.load_one_by_one and self.dataset is None:
            raise ValueError("load_one_by_one: needs a Dataset (patterns on disk), found "
                             "in-memory compressed signals")

    # ------------------------------------------------------------------ settings
    def _load_settings(self) -> None:
        """Load every array-valued setting (arrays, lists, .npy paths) and check it against
        the data before anything long runs."""
        n, base = self.n_measurements, self.base_dir
        for row in PARAMETER_BLOCKS:
            plan = self.refine_spec.blocks[row.name]
            value = plan.initial
            if value is None or isinstance(value, ArraySetting):
                continue
            if row.name == "static_background" and np.isscalar(value):
                if float(value) < 0:
                    raise ValueError(f"static_background: expected an intensity >= 0, found "
                                     f"{value}")
                plan.initial = float(value)
                continue
            plan.initial = load_array_setting(row.setting_name, value,
                                              ndim=row.setting[1], base_dir=base)
        self._check_starting_values(n)
        m = self.model_spec
        m.probe_marker = self._marker("probe_marker", m.probe_marker)
        m.aberration_marker = self._marker("aberration_marker", m.aberration_marker)
        ab = self.refine_spec.blocks["aberrations"].initial
        if m.aberration_marker is not None and ab is not None:
            n_sets = int(m.aberration_marker.array.max()) + 1
            if ab.array.shape[0] < n_sets:
                raise ValueError(f"aberrations_array: aberration_marker uses {n_sets} sets, "
                                 f"found {ab.array.shape[0]} rows")
        if not isinstance(m.phase_plates, ArraySetting):
            m.phase_plates = load_phase_plates(m.phase_plates, base)
        if m.phase_plates is not None and m.phase_plates.array.shape[0] != n:
            raise ValueError(f"phase_plates: expected {n} plates (one per measurement), found "
                             f"{m.phase_plates.array.shape[0]}")
        seq = self.reading.sequence
        if seq is not None and not isinstance(seq, Schedule):
            array = load_array_setting("sequence", seq, ndim=(1,), integer=True,
                                       base_dir=base).array
            self._check_sequence(array)
            self.reading.sequence = Constant(array.tolist())

    def _check_starting_values(self, n: int) -> None:
        plans = self.refine_spec.blocks

        def array(name: str) -> np.ndarray | None:
            value = plans[name].initial
            return value.array if isinstance(value, ArraySetting) else None

        tilts, current = array("tilts"), array("beam_current")
        if tilts is not None and (tilts.shape[1:] != (6,) or tilts.shape[0] not in (1, n)):
            raise ValueError(f"tilts: expected shape (1, 6) or ({n}, 6), found {tilts.shape}")
        if current is not None and current.shape != (n,):
            raise ValueError(f"beam_current: expected shape ({n},), found {current.shape}")
        background = array("static_background")
        if background is not None and np.any(background < 0):
            raise ValueError("static_background: expected intensities >= 0, found negative "
                             "values")
        ab = plans["aberrations"].initial
        if isinstance(ab, ArraySetting) and ab.array.ndim == 1:
            ab.array = ab.array[None]
        positions = array("positions")
        if positions is not None:
            plans["positions"].initial.array = positions.astype(float)
            if positions.shape != (n, 2):
                raise ValueError(f"positions_A: expected shape ({n}, 2), found "
                                 f"{positions.shape}")

    def _marker(self, name: str, value: Any) -> ArraySetting | None:
        if isinstance(value, ArraySetting):
            return value
        setting = load_array_setting(name, value, ndim=(1,), integer=True,
                                     base_dir=self.base_dir)
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

    def _unique_term_names(self) -> list[str]:
        names: list[str] = []
        for reg in self.regularizers:
            base = f"reg_{reg.name or type(reg).__name__}"
            name, k = base, 2
            while name in names:
                name, k = f"{base}_{k}", k + 1
            names.append(name)
        return names

    # ------------------------------------------------------------------ short names
    @property
    def n_measurements(self) -> int:
        return len(self.dataset) if self.dataset is not None else int(self._signals.shape[0])

    @property
    def n_slices(self) -> int:
        return self.model_spec.n_slices

    @property
    def n_probe_modes(self) -> int:
        return self.model_spec.n_probe_modes

    @property
    def n_object_modes(self) -> int:
        return self.model_spec.n_object_modes

    @property
    def object_margin_px(self) -> int:
        return self.model_spec.object_margin_px

    @property
    def propagator(self) -> Any:
        return self.model_spec.propagator

    @property
    def detector(self) -> Any:
        return self.model_spec.detector

    @property
    def loss(self) -> Any:
        return self.solver.loss

    @property
    def optimizer(self) -> Any:
        return self.solver.optimizer

    @property
    def engine(self) -> Any:
        return self.solver.engine

    @property
    def regularizers(self) -> list[Any]:
        return self.solver.regularizers

    @property
    def constraints(self) -> list[Any]:
        return self.solver.constraints

    @property
    def refine(self) -> dict[str, Schedule]:
        """Refine schedule of every block, by name."""
        return self.refine_spec.schedules()

    @property
    def sequence(self) -> Schedule | None:
        return self.reading.sequence

    @property
    def output_dir(self) -> Path | None:
        return None if self.output.dir is None else Path(self.output.dir)

    # ------------------------------------------------------------------ Problem
    def indices(self, epoch: int) -> np.ndarray | None:
        """The epoch's sequence (None: all measurements) less the held-out patterns."""
        seq = None
        if self.reading.sequence is not None:
            value = self.reading.sequence(epoch)
            if value is not None:
                seq = np.asarray(value, dtype=np.int64).ravel()
                self._check_sequence(seq)
        if self._held_out.size == 0:
            return seq
        base = np.arange(self.n_measurements) if seq is None else seq
        training = base[~np.isin(base, self._held_out)]
        if training.size == 0:
            raise ValueError(f"sequence: every measurement of epoch {epoch} is held out for "
                             "validation; use a longer sequence or validation_fraction 0")
        return training

    @property
    def held_out(self) -> np.ndarray:
        """Indices of the measurements held out of the fit (sorted; empty: none)."""
        return self._held_out.copy()

    def loss_weight(self, epoch: int) -> float:
        return float(self.solver.loss_weight(epoch))

    def reset_history(self, epoch: int) -> bool:
        """The solver's ``reset_history`` schedule, or the local jitter hold switched at
        ``epoch`` (the objective's gradient changed its meaning)."""
        return bool(self.solver.reset_history(epoch)) or self._jitter_changed_at == epoch

    def preconditioner(self, params: Mapping[str, Any], blocks: tuple[str, ...],
                       epoch: int) -> dict[str, Any]:
        """The positions block's per-position Gauss-Newton scaling when positions are
        refined and ``position_scaling`` is on (see :mod:`ptyframe.engine.position_scaling`)."""
        if "positions" not in blocks or not self.solver.position_scaling or self._jitter_held:
            return {}  # held: a diagonal scaling would step off the global scan model
        return {"positions": position_preconditioner(params["object"], params["probe"],
                                                     params["positions"], self.device)}

    def active_blocks(self, epoch: int) -> tuple[str, ...]:
        return tuple(row.name for row in PARAMETER_BLOCKS
                     if row.name in self.params and self.refine_spec.blocks[row.name].refine(epoch))

    # ------------------------------------------------------------------ set-up
    def _measured_shape(self) -> tuple[int, int]:
        if self.compressed:
            return tuple(int(s) for s in self.loss.detector_shape)
        return tuple(int(s) for s in self.dataset.pattern_shape)

    def _auto_batch_size(self, window: tuple[int, int]) -> int:
        """Measurements per vectorised batch: at most a quarter of the free memory, and at
        most :meth:`Device.batch_limit` (4096 on a GPU; on the CPU the batch whose waves take
        about 2 MiB, 16-512: 64 for one mode of 64x64 complex64). On the CPU small batches
        keep the work buffers in cache and cut the first evaluation's page faults (measured,
        64x64 windows, 1 thread, 64 against 512: first evaluation 0.05 s instead of 0.22 s and
        later ones 0.046 s instead of 0.065 s on sto_thin; 0.086/0.077 s instead of 0.33/0.097
        s on mos2_mono)."""
        ny, nx = window
        item = np.dtype(self.device.complex_dtype).itemsize
        waves = self.n_object_modes * self.n_probe_modes
        per_position = ny * nx * item * (waves * (self.n_slices + 4) + 2 * self.n_probe_modes
                                         + 2 * self.n_slices * self.n_object_modes + 2)
        budget = 0.25 * self.device.free_memory_bytes()
        cap = self.device.batch_limit(ny * nx * item * waves)  # cache-sized on CPU
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
        elif self._distributed:
            mean = self._distributed_mean_pattern()
        else:
            mean = self.dataset.mean_pattern()
        if not np.any(mean):
            source = getattr(self.dataset, "path", None) or "the data given"
            raise ValueError(f"data: every measured value in {source} is zero; expected "
                             "diffraction patterns with counts (wrong dataset or detector "
                             "setting?)")
        pattern = self.detector.pattern_on_model_grid(mean)
        if tuple(pattern.shape) != tuple(window):
            raise ValueError(f"detector {self.detector.name!r}: mean pattern on the model grid "
                             f"has shape {pattern.shape}, expected the window {window}")
        return pattern

    def _distributed_mean_pattern(self) -> np.ndarray:
        """Mean pattern from each rank's own measurements, summed per reduction chunk (the
        deterministic order) or per rank."""
        comm = self.communicator
        lo, hi = self.owned_range()
        parts = [self.dataset.read(np.arange(a, b), np.float64).sum(axis=0)
                 for a, b in comm.chunks(lo, hi)]
        if not parts:
            parts = [np.zeros(self.dataset.pattern_shape)]
        total = comm.sum_parts([(0.0, {"sum": p}) for p in parts], ("sum",), np)[1]["sum"]
        return total / self.n_measurements

    def _load_measured(self) -> Any:
        """The measurements this rank owns (all of them on one process), on the device,
        or a reader that streams them."""
        dev = self.device
        dtype = self.reading.data_dtype or dev.real_dtype
        lo, hi = self.owned_range()
        if self.compressed:
            return dev.asarray(self._signals[lo:hi], dtype=dtype)
        if self.communicator.size > 1 and not self.reading.load_one_by_one:
            rows = np.empty((hi - lo, *self.dataset.pattern_shape), dtype=np.float32)
            for start in range(lo, hi, 512):
                stop = min(start + 512, hi)
                rows[start - lo:stop - lo] = self.dataset.read(np.arange(start, stop),
                                                               np.float32)
            return dev.asarray(self.detector.to_detector_order(rows), dtype=dtype)
        if self.reading.load_one_by_one:
            return PatternStream(self.dataset, transform=self.detector.to_detector_order,
                                 prefetch=self.reading.prefetch)
        return dev.asarray(self.detector.to_detector_order(self.dataset.load_all(np.float32)),
                           dtype=dtype)

    def _initial(self, name: str) -> np.ndarray | None:
        value = self.refine_spec.blocks[name].initial
        return value.array if isinstance(value, ArraySetting) else None

    def initialize(self) -> dict[str, Any]:
        """Load data, build the grid, the starting values and the model (idempotent)."""
        if self.params is not None:
            return self.params
        exp, plans = self.experiment, self.refine_spec.blocks
        measured_shape = self._measured_shape()
        window = tuple(int(w) for w in self.detector.model_window(measured_shape))
        if window[0] != window[1]:
            raise ValueError(f"data: expected square patterns, found {measured_shape}")
        pixel = float(self.detector.object_pixel_size_A(exp, measured_shape))
        mean_pattern = self._mean_pattern(window)
        if self.reading.check_metadata:
            self._check_metadata()
        context = InitContext(exp, None, mean_pattern, self.n_measurements,
                              np.random.default_rng(self.seed))
        positions_A = self._initial("positions")
        if positions_A is None:
            positions_A = np.asarray(plans["positions"].initializer.build(context), dtype=float)
        self.grid = self._grid(positions_A, window, pixel)
        context.grid = self.grid
        params = {"object": self._starting_object(context),
                  "probe": self._starting_probe(context, window),
                  "positions": self._starting_corners(positions_A, window)}
        params = {k: self.device.complex(v) if block_row(k).dtype == "complex"
                  else self.device.real(v) for k, v in params.items()}
        params.update(self._optional_blocks(measured_shape, mean_pattern))
        self.context = self._model_context(window, pixel, measured_shape)
        self.model = self._build_model(window, pixel)
        self.params = params
        self.model.check_blocks(self.params)
        for component in (*self.regularizers, *self.constraints, self.optimizer):
            component.prepare(self.context)
        self._held_out = held_out_indices(self.n_measurements, self.reading.validation_fraction,
                                          self.seed)
        self._neighbours = neighbour_table(positions_A, self._held_out)
        self._start_positions = self.params["positions"].copy()
        self._scan_rows, self._scan_basis = self._scan_fit(self.device.to_host(
            self._start_positions))
        return self.params

    @property
    def _prior_on(self) -> bool:
        """Whether the Gaussian jitter prior is a term of the loss."""
        return self._scan_basis is not None and self.jitter_prior_A > 0

    @property
    def jitter_prior_A(self) -> float:
        """The jitter prior in use (Å; 0: none): ``jitter_prior_A`` when given, else the
        default with the ``ml`` loss and none with another loss."""
        given = self.solver.jitter_prior_A
        if given is not None:
            return float(given)
        return DEFAULT_JITTER_PRIOR_A if getattr(self.loss, "name", None) == "ml" else 0.0

    def _scan_fit(self, start: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows the global scan model is fitted to (the training measurements) and its
        basis on their starting positions (None: ``scan_model`` "none")."""
        rows = np.setdiff1d(np.arange(self.n_measurements), self._held_out)
        if self.solver.scan_model == "none":
            return rows, None
        order, slow_row = self.solver.scan_drift_order, None
        if order:
            shape = self.experiment.scan_shape
            if shape is None or int(shape[0]) * int(shape[1]) != self.n_measurements:
                raise ValueError(f"scan_drift_order: needs the experiment's scan_shape (rows, "
                                 f"cols) with rows * cols = {self.n_measurements}, found "
                                 f"{shape!r}")
            slow_row = rows // int(shape[1])  # row-major raster: y slow
        return rows, global_basis(start[rows], slow_row, order)

    def _check_metadata(self) -> None:
        """The experiment against the patterns (:mod:`ptyframe.engine.metadata_checks`):
        ranges, the bright-field disc of the mean pattern (far-field diffraction data without
        illumination tilts) and, for a non-square scan, its shape against the bright-field
        signal."""
        exp = self.experiment
        tilts = self.refine_spec.blocks["tilts"]
        tilted = tilts.initial is not None or not tilts.never  # discs moved by the tilts
        diffraction = (self.dataset is not None and not tilted
                       and self.detector.measurement_space == "diffraction"
                       and self.detector.name == "far_field")
        mean = self.dataset.mean_pattern() if diffraction else None
        check_metadata(exp, mean)
        shape = exp.scan_shape
        if mean is None or shape is None or shape[0] == shape[1]:
            return
        disc = bright_field_disc(mean)
        if disc is None:
            return
        radius, (cy, cx) = disc
        yy, xx = np.mgrid[0:mean.shape[0], 0:mean.shape[1]]
        mask = np.hypot(yy - cy, xx - cx) <= 0.8 * radius
        n, signal = len(self.dataset), []
        for start in range(0, n, 512):
            chunk = self.dataset.read(np.arange(start, min(start + 512, n)), np.float32)
            signal.append(chunk[:, mask].sum(axis=1))
        check_scan_shape(shape, np.concatenate(signal))

    def _grid(self, positions_A: np.ndarray, window: tuple[int, int], pixel: float
              ) -> ReconstructionGrid:
        covered = positions_A
        seq = self.reading.sequence
        if seq is not None and not self.reading.use_full_fov and isinstance(seq, Constant):
            covered = positions_A[np.asarray(seq.value, dtype=np.int64)]
        return ReconstructionGrid.covering(covered, window, 1.0 / (window[0] * pixel),
                                           margin_px=self.object_margin_px)

    def _starting_probe(self, context: InitContext, window: tuple[int, int]) -> np.ndarray:
        probe = self._initial("probe")
        if probe is not None:
            if probe.shape != (self.n_probe_modes, *window):
                raise ValueError(f"initial_probe: expected shape ({self.n_probe_modes}, "
                                 f"{window[0]}, {window[1]}), found {probe.shape}")
        else:
            probe = np.asarray(self.refine_spec.blocks["probe"].initializer.build(
                context, self.n_probe_modes))
        marker = self.model_spec.probe_marker
        if marker is not None:
            probe = np.repeat(probe[None], int(marker.array.max()) + 1, axis=0)
        return probe

    def _starting_object(self, context: InitContext) -> np.ndarray:
        obj = self._initial("object")
        if obj is not None:
            expected = (self.n_slices, self.n_object_modes, *self.grid.object_shape)
            if obj.shape != expected:
                raise ValueError(f"initial_object: expected shape {expected} for this grid, "
                                 f"found {obj.shape}")
            return obj
        return np.asarray(self.refine_spec.blocks["object"].initializer.build(
            context, self.grid.object_shape, self.n_slices, self.n_object_modes))

    def _starting_corners(self, positions_A: np.ndarray, window: tuple[int, int]
                          ) -> np.ndarray:
        corners = self.grid.positions_to_pixels(positions_A)
        if not self.model_spec.allow_subpixel_shift:
            corners = np.round(corners)
        if self.reading.sequence is not None and not self.reading.use_full_fov:
            # measurements outside the sequence may fall off the object: clip their windows
            hi = np.array(self.grid.object_shape) - np.array(window)
            corners = np.clip(corners, 0, hi)
        return corners

    def _optional_blocks(self, measured_shape: tuple[int, int], mean_pattern: Any
                         ) -> dict[str, Any]:
        """Starting values of the optional rows of the block table that are given or
        refined at some epoch (the table's default when not given)."""
        out: dict[str, Any] = {}
        marker = self.model_spec.aberration_marker
        n_sets = int(marker.array.max()) + 1 if marker is not None else 1
        for row in PARAMETER_BLOCKS:
            plan = self.refine_spec.blocks[row.name]
            if not row.optional or (plan.initial is None and plan.never):
                continue
            value = plan.initial
            if isinstance(value, ArraySetting):
                array = value.array
                if row.measured_grid and array.shape != tuple(measured_shape):
                    raise ValueError(f"{row.setting_name}: expected shape {measured_shape} (the "
                                     f"measured grid), found {array.shape}")
            else:
                level = value
                if row.name == "static_background" and not level and not plan.never:
                    # s = 0 is a stationary point of s**2: start from the data
                    level = self._background_estimate(mean_pattern)
                array = row.default(BlockDefaults(self.n_measurements, measured_shape, n_sets,
                                                  level))
            if row.measured_grid:
                array = self.detector.to_detector_order(array)
            array = row.from_setting(array)
            out[row.name] = (self.device.complex(array) if row.dtype == "complex"
                             else self.device.real(array))
        return out

    def _background_estimate(self, mean_pattern: Any) -> float:
        """A flat starting background: the mean over patterns of each pattern's smallest
        pixel (about the background level minus its noise), at least 1e-3 of the mean count
        per pixel."""
        floor = 1e-3 * (float(np.mean(mean_pattern)) if mean_pattern is not None else 1.0)
        if self.dataset is None:
            return floor
        if self._distributed:  # each rank reads its own patterns
            comm = self.communicator
            lo, hi = self.owned_range()
            parts = [(float(self.dataset.read(np.arange(a, b), np.float32).reshape(
                b - a, -1).min(axis=1).sum(dtype=np.float64)), {}) for a, b in
                comm.chunks(lo, hi)] or [(0.0, {})]
            total = comm.sum_parts(parts, (), np)[0]
            return max(total / self.n_measurements, floor)
        n, lows = len(self.dataset), []
        for start in range(0, n, 512):
            chunk = self.dataset.read(np.arange(start, min(start + 512, n)), np.float32)
            lows.append(chunk.reshape(chunk.shape[0], -1).min(axis=1))
        return max(float(np.mean(np.concatenate(lows))), floor)

    def _model_context(self, window: tuple[int, int], pixel: float,
                       measured_shape: tuple[int, int]) -> ModelContext:
        thickness = getattr(self.propagator, "slice_thickness_A", None)
        return ModelContext(
            window=window, pixel_size_A=pixel, wavelength_A=self.experiment.wavelength_A,
            n_measurements=self.n_measurements, device=self.device,
            measured_shape=measured_shape, scan_shape=self.experiment.scan_shape,
            n_slices=self.n_slices,
            slice_thickness_A=tuple(thickness) if thickness is not None else None,
            experiment=self.experiment, grid=self.grid,
            to_detector_order=self.detector.to_detector_order)

    def _build_model(self, window: tuple[int, int], pixel: float) -> PtychographyModel:
        m = self.model_spec
        plates = None
        if m.phase_plates is not None:
            plate = m.phase_plates.array
            if plate.shape[1:] != window:
                raise ValueError(f"phase_plates: expected plates of shape {window} (the probe "
                                 f"window), found {plate.shape[1:]}")
            factor = plate if np.iscomplexobj(plate) else np.exp(1j * plate)
            plates = self.device.complex(np.fft.ifftshift(factor, axes=(-2, -1)))
        return PtychographyModel(
            self.propagator, self.loss, self.context, self._load_measured(),
            batch_size=self.reading.batch_size or self._auto_batch_size(window),
            detector=self.detector, tilt_mode=m.tilt_mode,
            probe_marker=None if m.probe_marker is None else m.probe_marker.array,
            aberration_marker=(None if m.aberration_marker is None
                               else m.aberration_marker.array),
            phase_plates=plates,
            first_row=0 if self.reading.load_one_by_one else self.owned_range()[0])

    # ------------------------------------------------------------------ objective
    def _in_bounds(self, positions: Any) -> bool:
        return windows_outside_object(self.device.to_host(positions), self.grid.window,
                                      tuple(self.params["object"].shape)) is None

    def evaluate(self, params: Mapping[str, Any], blocks: Iterable[str],
                 epoch: int | None = None, indices: np.ndarray | None = None
                 ) -> tuple[float, dict[str, Any], dict[str, float]]:
        """Loss, gradients for ``blocks`` and the contribution of each term at ``epoch``
        (default: the current epoch) over ``indices`` (default: the epoch's sequence)."""
        blocks = tuple(blocks)
        epoch = self.epoch if epoch is None else int(epoch)
        xp = self.device.xp
        if "positions" in blocks and not self._in_bounds(params["positions"]):
            return float("inf"), {b: xp.zeros_like(params[b]) for b in blocks}, {}
        if indices is None:
            indices = self.indices(epoch)
        health = self._health
        health.count_evaluation()
        data_loss, grads = self._data_term(params, blocks, indices)
        at_current = params is self.params or all(  # not a line-search trial
            params[b] is self.params[b] for b in blocks)
        health.check(xp, partial(self._describe, "loss", self.loss), epoch, data_loss, grads,
                     at_current)
        weight = self.loss_weight(epoch)
        if weight != 1.0:
            data_loss *= weight
            grads = {b: g * weight for b, g in grads.items()}
        terms = {"data_loss": data_loss}
        total = data_loss
        for name, reg in zip(self._term_names, self.regularizers, strict=True):
            value, reg_grads = reg.value_and_grad(params, epoch=epoch)
            health.check(xp, partial(self._describe, "regularizer", reg, name), epoch, value,
                         reg_grads, at_current)
            terms[name] = float(value)
            total += float(value)
            for block, g in reg_grads.items():
                if block in grads:
                    grads[block] = grads[block] + g
        if self._prior_on and "positions" in blocks:
            value, g = jitter_prior(params["positions"], self._start_positions,
                                    self._scan_rows, self._scan_basis,
                                    self.jitter_prior_A / self.grid.pixel_size_A, xp)
            terms["jitter_prior"] = value
            total += value
            grads["positions"] = grads["positions"] + g
        if self._jitter_held and "positions" in blocks:
            grads["positions"] = restrict_to_global(grads["positions"], self._scan_rows,
                                                    self._scan_basis, xp)
        for constraint in self.constraints:
            if constraint.is_active(epoch):
                grads = constraint.project_gradient(grads, params, epoch)
                health.check(xp, partial(self._describe, "constraint", constraint), epoch, 0.0,
                             grads, at_current)
        return total, {b: grads[b] for b in blocks}, terms

    @property
    def _distributed(self) -> bool:
        """Whether evaluations go through the communicator (several ranks, or the
        deterministic chunked order on one)."""
        return self.communicator.size > 1 or self.communicator.deterministic

    def owned_range(self) -> tuple[int, int]:
        """[start, stop) of the measurements this rank reads and evaluates."""
        return self.communicator.owned_range(self.n_measurements)

    def _data_term(self, params: Mapping[str, Any], blocks: tuple[str, ...],
                   indices: np.ndarray | None) -> tuple[float, dict[str, Any]]:
        """Data loss and gradients summed over every rank's measurements (one process,
        not deterministic: the model's own in-place sum, unchanged)."""
        if not self._distributed:
            return self.model.value_and_grad(params, refine=blocks, indices=indices)
        comm = self.communicator
        lo, hi = self.owned_range()
        order = (np.arange(lo, hi) if indices is None
                 else indices[(indices >= lo) & (indices < hi)])
        if comm.deterministic:
            pieces = [order[(order >= a) & (order < b)] for a, b in comm.chunks(lo, hi)]
            pieces = [p for p in pieces if p.size] or [order]
        else:
            pieces = [order]
        parts = [self.model.value_and_grad(params, refine=blocks, indices=p) for p in pieces]
        return comm.sum_parts(parts, blocks, self.device.xp)

    def _describe(self, kind: str, component: Any, label: str | None = None) -> str:
        """``loss 'lsq_sqrt' (plugin 'losses' (distribution ptyframe 0.1.0))`` for messages."""
        name = getattr(component, "name", type(component).__name__)
        try:
            provider = f" ({self.registry.entry(kind, name).provider})"
        except (KeyError, TypeError):
            provider = ""
        shown = f"{label} = {name!r}" if label and label != name else repr(name)
        return f"{kind} {shown}{provider}"

    # ------------------------------------------------------------------ running
    def run(self, epochs: int, callbacks: Sequence[Callback] = ()) -> ReconstructionResult:
        """Run ``epochs`` more epochs and return the result. Each epoch: the engine's step,
        the projections, the report, the checkpoint; a callback returning True stops."""
        if not isinstance(epochs, (int, np.integer)) or isinstance(epochs, bool) or epochs < 0:
            raise ValueError(f"epochs: expected an integer >= 0, found {epochs!r}")
        with self.communicator.guard():
            self.initialize()
            lock = None
            if (self.communicator.is_root and self.output_dir is not None
                    and not self.folder_lock_held(self.output_dir)):
                lock = FolderLock(self.output_dir).acquire()
            try:
                return self._run(int(epochs), callbacks)
            finally:
                if lock is not None:
                    lock.release()

    def hold_folder_lock(self, lock: FolderLock) -> None:
        """Run under ``lock``, taken by the caller on the output folder (so that the check of
        the folder and the run happen under one lock)."""
        self._folder_lock = lock

    def folder_lock_held(self, folder: str | Path) -> bool:
        """Whether the caller already holds the lock of ``folder`` for this reconstruction
        (:func:`ptyframe.apps.config.run_config` takes it before checking the folder)."""
        held = self._folder_lock
        return held is not None and held.held and held.folder.resolve() == Path(
            folder).resolve()

    def _run(self, epochs: int, callbacks: Sequence[Callback]) -> ReconstructionResult:
        if self._initial_positions_A is None:
            self._initial_positions_A = self.grid.pixels_to_positions(
                self.device.to_host(self.params["positions"]))
        lo, hi = self.owned_range()
        self.communicator.announce(f"measurements [{lo}, {hi})")
        root = self.communicator.is_root
        output = self._open_output() if root else None
        monitor = RunMonitor(self.output.level if root else 0, epochs, output,
                             self._term_names + (["jitter_prior"] if self._prior_on else []),
                             resume_from_epoch=self.epoch or None,
                             write_log=self.output.save_loss_log,
                             reference_loss=self.loss_history[0] if self.loss_history else None)
        if self._engine_state is None:
            self._engine_state = self.engine.init_state(self)
        start = time.perf_counter()
        figures_every = self.output.figures_every if self.output.figures else None
        try:
            for _ in range(epochs):
                epoch = self.epoch
                if not self.active_blocks(epoch):
                    raise ValueError(f"refine: no block is refined at epoch {epoch}")
                self._update_jitter_hold(epoch, monitor)
                try:
                    outcome = self.engine.epoch(self, epoch, self._engine_state)
                except (ValueError, ArithmeticError) as exc:
                    stalled = self._health.failed(epoch, exc)
                    if stalled is None:
                        raise
                    raise stalled from exc
                if self._project(epoch):
                    outcome = self.engine.after_projection(self, epoch, self._engine_state,
                                                           outcome)
                self._health.after_epoch(
                    self.device.xp, epoch, outcome.loss, outcome.accepted,
                    outcome.info.get("line_search") == "converged", self.params)
                self.epoch += 1
                self.loss_history.append(outcome.loss)
                validation = self._validate(outcome.blocks)
                report = EpochReport(
                    epoch=self.epoch, loss=outcome.loss,
                    data_loss=outcome.terms.get("data_loss", outcome.loss),
                    step_size=outcome.step_size, evaluations=outcome.evaluations,
                    accepted=outcome.accepted, elapsed_s=time.perf_counter() - start,
                    blocks=outcome.blocks, params=self.params,
                    info=dict(outcome.info, terms=outcome.terms,
                              n_measurements=outcome.n_measurements),
                    validation_loss=validation)
                monitor.report(report, self._memory_mb())
                if output is not None and (self.epoch % self.output.save_every == 0 or (
                        self.output.checkpoint_every
                        and self.epoch % self.output.checkpoint_every == 0)):
                    self._checkpoint(output)
                    if self._keeps_best() and self._best[0] != self._best_saved:
                        self._save_best()
                if output is not None and figures_every and self.epoch % figures_every == 0:
                    self._write_figures(output)
                if any(bool(cb(report)) for cb in callbacks):
                    break
                if self._early_stop_reached():
                    monitor.emit(f"epoch {self.epoch}: stopped early: the last "
                                 f"{self.output.early_stop} epochs were all worse on the "
                                 f"held-out patterns than epoch {self._best[0]}, the result")
                    break
        finally:
            monitor.close()
        if output is not None:
            if self.epoch % self.output.save_every:
                self._checkpoint(output)
            if self._keeps_best() and self._best[0] != self._best_saved:
                self._save_best()
            self._finish_output(output, time.perf_counter() - start, monitor)
        return self.result()

    def _early_stop_reached(self) -> bool:
        """Whether ``early_stop`` consecutive settled epochs were not kept (a function of the
        kept epoch and the settling point, both checkpointed: a resumed run stops alike)."""
        patience = self.output.early_stop
        if patience is None or not self._keeps_best():
            return False
        since = self.epoch - max(self._best[0], self._settled_at - 1)
        return since >= patience

    def snapshot(self) -> RunResult:
        """The run as it stands, as a :class:`~ptyframe.io.run_result.RunResult` (host
        copies; the loss history with its normalised error) — what the figures and the result
        file are made from."""
        if self.params is None:
            raise ValueError("snapshot: the reconstruction is not initialized; call run() or "
                             "initialize() first")
        state = self._host_state()
        history = np.asarray(self.loss_history, dtype=float)
        loss = {}
        if history.size:
            loss = {"epoch": np.arange(1, history.size + 1), "loss": history,
                    "loss_relative": np.array([relative_loss(v, history[0]) for v in history])}
        if self.output_dir is not None and (self.output_dir / LOSS_FILE).is_file():
            loss = read_loss_log(self.output_dir / LOSS_FILE)
        positions = state.pop("positions")
        return RunResult(
            object=state.pop("object"), probe=state.pop("probe"),
            positions_A=self.grid.pixels_to_positions(positions),
            pixel_size_A=self.grid.pixel_size_A, origin_A=tuple(self.grid.origin_A),
            initial_positions_A=self._initial_positions_A,
            wavelength_A=self.experiment.wavelength_A, epoch=self.epoch, loss=loss,
            config=self.to_config(), provenance=dict(self._provenance or {}), extra=state,
            source=self.output_dir)

    def _write_figures(self, output: OutputFolder) -> list[Path]:
        from ptyframe.io.figures import save_figures

        paths = save_figures(self.snapshot(), output.path / FIGURES_FOLDER)
        _LOG.debug("figures of epoch %d in %s", self.epoch, output.path / FIGURES_FOLDER)
        return paths

    def _finish_output(self, output: OutputFolder, wall_s: float, monitor: RunMonitor) -> None:
        """End of a run with an output folder: provenance with the end time, the result
        file, the figures."""
        self._provenance = finish_provenance(self._provenance or {}, wall_s)
        atomic_write_json(output.path / PROVENANCE_FILE, self._provenance)
        if self.output.result_file:
            from ptyframe.io.result_file import RESULT_FILE, write_result_file

            path = write_result_file(self.snapshot(), output.path / RESULT_FILE)
            monitor.emit(f"result file {path}")
        if self.output.figures:
            self._write_figures(output)
            monitor.emit(f"figures in {output.path / FIGURES_FOLDER}")

    def _validate(self, blocks: tuple[str, ...]) -> float | None:
        """Data loss per held-out pattern at the current parameters (None: none held out);
        remembers the parameters of the best-validated epoch so far (``BestEpochRule``)."""
        if self._held_out.size == 0:
            return None
        if "positions" in blocks:
            self._fit_held_out_positions()
        groups = held_out_groups(self._held_out)
        totals = np.array([float(self._data_term(self.params, (), g)[0]) for g in groups])
        value = float(totals.sum()) / self._held_out.size
        self.validation_history.append(value)
        refining_positions = "positions" in blocks
        if refining_positions != self._refining_positions:
            self._refining_positions = refining_positions
            if refining_positions:
                self._settled_at = self.epoch + SETTLE_EPOCHS
        settled = self.epoch >= self._settled_at
        per_pattern = totals / np.array([g.size for g in groups], dtype=float)
        if self.output.keep_best and self._best_rule.consider(self.epoch, per_pattern, value,
                                                              settled):
            self._best = (self.epoch, value, self._host_state())
        return value

    def _update_jitter_hold(self, epoch: int, monitor: RunMonitor) -> None:
        """Whether the local jitter is held at ``epoch`` (:func:`jitter_resolved` on the
        positions' information bound from the current parameters and the counts): decided
        before the engine's step, announced when it switches."""
        kappa = self.solver.jitter_min_information
        if (not self._prior_on or kappa == 0 or getattr(self.loss, "name", None) != "ml"
                or self.dataset is None or "positions" not in self.active_blocks(epoch)):
            return
        rows = self._scan_rows
        xp = self.device.xp
        counts = self._counts()[rows]
        corners = self.params["positions"][xp.asarray(rows)]
        information = position_information(self.params["object"], self.params["probe"],
                                           corners, counts, self.device)
        sigma_px = self.jitter_prior_A / self.grid.pixel_size_A
        # hysteresis: once refined, held again only below half the threshold (an estimate
        # near the threshold must not switch every epoch, each switch forgetting the history)
        threshold = kappa / 2 if self._jitter_held is False else kappa
        resolved, ratio = jitter_resolved(self.device.to_host(information), sigma_px,
                                          threshold)
        held = not resolved
        if held == self._jitter_held:
            return
        if self._jitter_held is not None:
            self._jitter_changed_at = epoch
        self._jitter_held = held
        if held:
            monitor.emit(f"epoch {epoch}: position jitter held, positions follow the global "
                         f"scan model (position information {ratio:.3g} x the prior's "
                         f"precision, below jitter_min_information = {kappa:g})")
        else:
            monitor.emit(f"epoch {epoch}: position jitter refined (position information "
                         f"{ratio:.3g} x the prior's precision)")

    def _counts(self) -> np.ndarray:
        """Electrons per measurement (N,), summed once from the data: each rank reads only
        its own range and the ranks exchange the sums (exact: disjoint ranges)."""
        if self._pattern_counts is None:
            lo, hi = self.owned_range()
            counts = np.zeros(len(self.dataset))
            for start in range(lo, hi, 512):
                chunk = self.dataset.read(np.arange(start, min(start + 512, hi)), np.float64)
                counts[start:start + chunk.shape[0]] = chunk.reshape(chunk.shape[0], -1).sum(
                    axis=1)
            self._pattern_counts = self.communicator.sum_host(counts)
        return self._pattern_counts

    def _fit_held_out_positions(self, steps: int = 3) -> None:
        """Positions of the held-out patterns while the training positions are refined: the
        mean correction of their training neighbours (drift, rotation) plus their own
        residual, fitted by a few optimizer steps on the held-out patterns alone with every
        other block fixed, with the training positions' jitter prior on the residual. While
        the local jitter is held (:meth:`_update_jitter_hold`) they follow their neighbours
        only: unfitted, at low dose the residual wanders (measured at 10^3 e/Å²: 0.19 ->
        0.46 Å rms over 30 epochs without the prior)."""
        xp = self.device.xp
        rows = xp.asarray(self._held_out)
        current = self.params["positions"]
        followed = follow_neighbours(current, self._start_positions, self._held_out,
                                     self._neighbours, xp)
        if self._jitter_held:
            self.params["positions"] = followed
            self._held_residual = None
            return
        base = followed[rows].copy()
        if self._held_residual is not None:
            followed[rows] += self._held_residual
        held = self._held_out
        sigma_px = self.jitter_prior_A / self.grid.pixel_size_A if self._prior_on else None

        def objective(sub: Mapping[str, Any]) -> tuple[float, dict[str, Any]]:
            trial = dict(self.params, positions=sub["positions"])
            if not self._in_bounds(sub["positions"]):
                return float("inf"), {"positions": xp.zeros_like(sub["positions"])}
            value, grads = self._data_term(trial, ("positions",), held)
            if sigma_px is not None:  # the jitter prior on the residual (g = 1/2 dR/dp)
                residual = sub["positions"][rows] - base
                value += float((residual * residual).sum()) / (2.0 * sigma_px**2)
                g = grads["positions"].copy()
                g[rows] += residual / (2.0 * sigma_px**2)
                grads = {"positions": g}
            return value, grads

        if self._held_state is None:
            self._held_state = self.optimizer.init_state()
        point = {"positions": followed}
        value, grads = objective(point)
        for _ in range(steps):
            step = self.optimizer.step(point, value, grads, objective, self._held_state)
            point, value, grads = step.params, step.value, step.grads
            if not step.accepted:
                break
        self.params["positions"] = point["positions"]
        self._held_residual = point["positions"][rows] - base

    def _keeps_best(self) -> bool:
        return self.output.keep_best and self._best is not None

    def _save_best(self) -> None:
        """The best-validated parameters to ``output_dir``/best (a checkpoint folder)."""
        epoch, value, state = self._best
        best = OutputFolder(self.output_dir / "best")
        best.save_state(state, epoch, info={"validation_loss": value,
                                            "grid": self.grid.to_config(),
                                            "best_rule": self._best_rule.to_info()})
        self._best_saved = epoch

    def _project(self, epoch: int) -> bool:
        """By-hand changes after the step: constraints and object growth. True when the
        parameters changed."""
        changed = False
        if (self._scan_basis is not None and self.solver.jitter_damping > 0
                and "positions" in self.active_blocks(epoch)):
            self.params["positions"] = project_scan(
                self.params["positions"], self._start_positions, self._scan_rows,
                self._scan_basis, self.solver.jitter_damping, self.device.xp)
            changed = True
        for constraint in self.constraints:
            if constraint.is_active(epoch):
                changed |= bool(constraint.apply(self.params, epoch))
        return self._maybe_resize_object() or changed

    def _maybe_resize_object(self) -> bool:
        """Grow the object with vacuum where a window came within the resize distance of an
        edge; positions and the grid origin follow. Returns True when it grew."""
        limit = self.model_spec.dynamically_resize_object
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

    def _memory_mb(self) -> float:
        total = sum(int(a.nbytes) for a in self.params.values())
        if self.model is not None:
            total += int(self.model._ws.nbytes)
            if self.model.measured is not None:
                total += int(self.model.measured.nbytes)
        return total / 2**20

    # ------------------------------------------------------------------ results
    def _host_state(self) -> dict[str, np.ndarray]:
        state = {}
        for name, array in self.params.items():
            host = self.device.to_host(array)
            if block_row(name).measured_grid:
                host = self.detector.from_detector_order(host)
            state[name] = host
        return state

    def result(self) -> ReconstructionResult:
        """Host copies of the parameters: those of the best-validated epoch when patterns
        are held out and ``keep_best`` (the default), else the current ones."""
        best_epoch = None
        if self._keeps_best():
            best_epoch, _, state = self._best
        else:
            state = self._host_state()
        extra = {}
        for row in PARAMETER_BLOCKS:
            if row.optional and row.name in state:
                value = state[row.name]
                extra[row.name] = row.to_result(value)
        return ReconstructionResult(
            object=state["object"], probe=state["probe"],
            positions_A=self.grid.pixels_to_positions(state["positions"]), grid=self.grid,
            loss=list(self.loss_history), epochs=self.epoch, output_dir=self.output_dir,
            extra=extra, validation_loss=list(self.validation_history), best_epoch=best_epoch)

    def _open_output(self) -> OutputFolder | None:
        """The output folder, its fingerprint and configuration written. A folder holding a
        checkpoint of another run (another fingerprint) that this reconstruction did not
        load is refused with :class:`~ptyframe.engine.run_record.ForeignRunError`."""
        if self.output_dir is None:
            return None
        folder = Path(self.output_dir)
        fingerprint = run_fingerprint(self)
        if self._resumed_from != folder.resolve() and has_checkpoint(folder):
            old = read_fingerprint(folder)
            changed = differences(old, fingerprint) if old is not None else []
            if changed:
                raise ForeignRunError(
                    f"output folder {folder} holds a checkpoint of another run (differs in: "
                    f"{', '.join(changed[:8])}); load it with load_checkpoint() to continue, "
                    "clear it (OutputFolder.clear_run) or choose another folder")
        output = OutputFolder(folder, checkpoint_every=self.output.checkpoint_every)
        write_fingerprint(folder, fingerprint)
        output.save_parameters(self.to_config())
        initial = output.path / INITIAL_POSITIONS_FILE
        if self.epoch == 0 or not initial.is_file():
            positions = self.device.to_host(self.params["positions"])
            self._initial_positions_A = self.grid.pixels_to_positions(positions)
            atomic_save_npy(initial, self._initial_positions_A)
        else:
            self._initial_positions_A = np.load(initial, allow_pickle=False)
        data_path = getattr(self.dataset, "path", None) if self.dataset is not None else None
        self._provenance = collect_provenance(self.device, data_path)
        atomic_write_json(output.path / PROVENANCE_FILE, self._provenance)
        return output

    def _checkpoint(self, output: OutputFolder) -> None:
        """Parameters and the engine's state, committed together."""
        arrays, info = self.engine.export_state(self, self._engine_state)
        resume = {f"engine.{k}": v for k, v in arrays.items()}
        held, held_info = self._held_out_state()
        resume.update(held)
        output.save_state(self._host_state(), self.epoch, resume_arrays=resume,
                          info={"engine": self.engine.name, "engine_state": info,
                                "batch_size": self.model.batch_size,
                                "grid": self.grid.to_config(), "held_out": held_info})

    def _held_out_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """What the fit of the held-out positions carries between epochs (its residual and
        its optimizer's state), for an exact resume."""
        arrays: dict[str, np.ndarray] = {}
        info: dict[str, Any] = {"refining_positions": self._refining_positions,
                                "settled_at": int(self._settled_at),
                                "jitter_held": self._jitter_held}
        if self._held_residual is not None:
            arrays["held_out.residual"] = self.device.to_host(self._held_residual)
        if self._held_state is not None:
            opt_arrays, info["optimizer"] = self.optimizer.export_state(self._held_state)
            arrays.update({f"held_out.optimizer.{k}": v for k, v in opt_arrays.items()})
        return arrays, info

    def _restore_held_out_state(self, arrays: Mapping[str, np.ndarray],
                                info: Mapping[str, Any]) -> None:
        self._refining_positions = bool(info.get("refining_positions", False))
        self._settled_at = int(info.get("settled_at", 0))
        held = info.get("jitter_held")
        self._jitter_held = None if held is None else bool(held)
        self._jitter_changed_at = None
        residual = arrays.get("held_out.residual")
        self._held_residual = (None if residual is None else
                               self.device.asarray(residual, dtype=self.params["positions"].dtype))
        self._held_state = None
        if "optimizer" in info:
            prefix = "held_out.optimizer."
            self._held_state = self.optimizer.import_state(
                {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)},
                info["optimizer"], self.device)

    def load_checkpoint(self, folder: str | Path | None = None) -> int:
        """Restore every refinable block, the grid and the engine's state from an output
        folder; returns the epoch. A run continued from here proceeds exactly as the run that
        wrote the checkpoint would have."""
        folder = Path(folder) if folder is not None else self.output_dir
        if folder is None:
            raise ValueError("load_checkpoint: no folder given and no output_dir set")
        from ptyframe.io.results import load_state, load_state_info, read_loss_log

        arrays, epoch = load_state(folder)
        info = load_state_info(folder)
        self._resumed_from = folder.resolve()
        self.initialize()
        for name in ("object", "probe", "positions"):
            if name not in arrays:
                raise ValueError(f"checkpoint in {folder}: missing block {name!r}")
        for name, array in arrays.items():
            if name not in self.params:
                continue
            if block_row(name).measured_grid:
                array = self.detector.to_detector_order(array)
            current = tuple(self.params[name].shape)
            resized = (name == "object" and array.shape[:2] == current[:2]
                       and self.model_spec.dynamically_resize_object is not False)
            if array.shape != current and not resized:
                raise ValueError(f"checkpoint in {folder}: {name} has shape {array.shape}, "
                                 f"this reconstruction expects {current}")
            self.params[name] = self.device.asarray(array, dtype=self.params[name].dtype)
        if "grid" in info and self.model_spec.dynamically_resize_object is not False:
            self.grid = attrs.evolve(self.grid, object_shape=tuple(info["grid"]["object_shape"]),
                                     origin_A=tuple(info["grid"]["origin_A"]))
            self.context.grid = self.grid
        if self.reading.batch_size is None and info.get("batch_size"):
            self.model.batch_size = int(info["batch_size"])  # the same summation order
        self.epoch = int(epoch)
        self._engine_state = None
        self._restore_held_out_state(arrays, info.get("held_out", {}))
        if info.get("engine") == self.engine.name:
            prefix = "engine."
            self._engine_state = self.engine.import_state(
                self, {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)},
                info.get("engine_state", {}))
        log_path = folder / "loss.csv"
        if log_path.exists():
            history = read_loss_log(log_path)
            keep = history["epoch"] <= epoch
            self.loss_history = [float(v) for v in history["loss"][keep]]
            if "validation_loss" in history and self._held_out.size:
                self.validation_history = [float(v) for v in history["validation_loss"][keep]]
        self._best = self._best_saved = None
        self._best_rule = BestEpochRule(confidence=self.output.keep_best_confidence)
        best_dir = folder / "best"
        if self._held_out.size and self.output.keep_best and (best_dir / "state.json").exists():
            best_arrays, best_epoch = load_state(best_dir)
            if best_epoch <= epoch:
                best_info = load_state_info(best_dir)
                value = float(best_info.get("validation_loss", np.inf))
                self._best = (int(best_epoch), value, best_arrays)
                self._best_saved = int(best_epoch)
                self._best_rule.restore(best_info.get("best_rule", {
                    "reference_epoch": int(best_epoch), "reference_value": value}))
        return self.epoch

    # ------------------------------------------------------------------ configuration
    def to_config(self) -> dict[str, Any]:
        """JSON-ready description of this reconstruction in the configuration-file layout
        (data given by path when known); ``build_reconstruction`` reads it back."""
        config: dict[str, Any] = {"experiment": self.experiment.to_config()}
        for spec in (self.model_spec, self.solver, self.reading):
            config.update(spec.to_config())
        config.update(self.refine_spec.to_config())
        out = self.output.to_config()
        config["verbosity"], config["progress"] = out.pop("verbosity"), out.pop("progress")
        config["output"] = {k: v for k, v in out.items() if v is not None}
        config["device"] = self.device.to_config()
        parallel = self.communicator.to_config()
        parallel.pop("backend")  # chosen at launch: a run may resume on another number of ranks
        config["parallel"] = parallel
        config["seed"] = self.seed
        if self.dataset is not None and getattr(self.dataset, "path", None) is not None:
            config["data"] = {"path": str(self.dataset.path)}
        if self.grid is not None:
            config["grid"] = self.grid.to_config()
        return config
