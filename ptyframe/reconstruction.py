"""Reconstruction: assembles components into an iterative ptychography run.

Typical use::

    rec = Reconstruction(dataset, experiment, n_slices=4, n_probe_modes=3,
                         refine_positions=FromEpoch(10), output_dir="out")
    result = rec.run(epochs=50)

Components default to the registry's standard ones (multislice, lsq_sqrt, quasi_newton,
aperture probe, vacuum object, scan-grid positions); pass objects to replace any of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from .components import (
    Constraint,
    InitContext,
    LossMetric,
    ObjectInitializer,
    Optimizer,
    PositionInitializer,
    ProbeInitializer,
    Propagator,
    Regularizer,
)
from .data import Dataset
from .device import Device
from .experiment import Experiment, ReconstructionGrid, windows_outside_object
from .model import BLOCKS, FarFieldModel
from .results import OutputFolder
from .schedules import Schedule, as_schedule

__all__ = ["Reconstruction", "ReconstructionResult", "EpochReport", "Callback"]

#: default component of each kind, resolved through the registry
DEFAULT_COMPONENTS = {
    "propagator": {"type": "multislice"},
    "loss": {"type": "lsq_sqrt"},
    "optimizer": {"type": "quasi_newton"},
    "probe_initializer": {"type": "aperture"},
    "object_initializer": {"type": "vacuum"},
    "position_initializer": {"type": "scan_grid"},
}

_LOG_COLUMNS = ("epoch", "time_s", "loss", "data_loss", "regularization", "step_size",
                "evaluations", "accepted", "line_search", "blocks")


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

    ``object``: (n_slices, n_object_modes, Y, X); ``probe``: (n_probe_modes, ny, nx) centred;
    ``positions_A``: (N, 2) probe positions (y, x) in Å; ``loss``: loss per epoch run.
    """

    object: np.ndarray
    probe: np.ndarray
    positions_A: np.ndarray
    grid: ReconstructionGrid
    loss: list[float]
    epochs: int
    output_dir: Path | None = None

    @property
    def phase(self) -> np.ndarray:
        """Total phase (rad) of the first object mode summed over slices, (Y, X)."""
        return np.angle(self.object[:, 0]).sum(axis=0)


def _schedule(value: Any) -> Schedule:
    return as_schedule(value)


class Reconstruction:
    """Iterative far-field ptychography assembled from components.

    Parameters
    ----------
    data: a :class:`Dataset` or an array (N, ky, kx) of centred patterns.
    experiment: the :class:`Experiment` (voltage, aperture, calibration, scan).
    propagator, loss, optimizer, probe_initializer, object_initializer, position_initializer:
        component objects; None picks the registry default.
    positions_A: optional (N, 2) starting positions (y, x) in Å (overrides the initializer).
    n_slices, n_probe_modes, n_object_modes: model size.
    refine_object, refine_probe, refine_positions: bool or :class:`Schedule` of bool.
    regularizers, constraints: extra loss terms and by-hand projections.
    device: :class:`Device` (default: GPU when available, single precision).
    batch_size: measurements per vectorised batch (None: chosen from free memory).
    object_margin_px: empty border around the scanned area, pixels.
    output_dir: folder for checkpoints, loss.csv and parameters.json (None: nothing written).
    save_every: epochs between overwritable checkpoints; checkpoint_every: epochs between
        kept per-epoch checkpoints (None: none).
    progress: show a tqdm progress bar with the loss.
    registry: where default components come from (default: installed plugins).
    """

    def __init__(
        self,
        data: Dataset | np.ndarray,
        experiment: Experiment,
        *,
        propagator: Propagator | None = None,
        loss: LossMetric | None = None,
        optimizer: Optimizer | None = None,
        probe_initializer: ProbeInitializer | None = None,
        object_initializer: ObjectInitializer | None = None,
        position_initializer: PositionInitializer | None = None,
        positions_A: np.ndarray | None = None,
        n_slices: int = 1,
        n_probe_modes: int = 1,
        n_object_modes: int = 1,
        refine_object: bool | Schedule = True,
        refine_probe: bool | Schedule = True,
        refine_positions: bool | Schedule = False,
        regularizers: Sequence[Regularizer] = (),
        constraints: Sequence[Constraint] = (),
        device: Device | None = None,
        batch_size: int | None = None,
        object_margin_px: int = 8,
        output_dir: str | Path | None = None,
        save_every: int = 1,
        checkpoint_every: int | None = None,
        progress: bool = True,
        seed: int = 0,
        registry: Any | None = None,
    ) -> None:
        self.dataset = data if isinstance(data, Dataset) else Dataset.from_array(
            np.asarray(data), scan_shape=experiment.scan_shape)
        if not isinstance(experiment, Experiment):
            raise TypeError(f"experiment: expected an Experiment, found {type(experiment)}")
        self.experiment = experiment
        for name, value, low in (("n_slices", n_slices, 1), ("n_probe_modes", n_probe_modes, 1),
                                 ("n_object_modes", n_object_modes, 1),
                                 ("object_margin_px", object_margin_px, 0),
                                 ("save_every", save_every, 1)):
            if not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name}: expected an integer >= {low}, found {value!r}")
        if batch_size is not None and (not isinstance(batch_size, (int, np.integer))
                                       or batch_size < 1):
            raise ValueError(f"batch_size: expected a positive integer or None, found "
                             f"{batch_size!r}")
        self._registry = registry
        given = {"propagator": propagator, "loss": loss, "optimizer": optimizer,
                 "probe_initializer": probe_initializer,
                 "object_initializer": object_initializer,
                 "position_initializer": position_initializer}
        for kind, component in given.items():
            setattr(self, kind, component if component is not None else self._default(kind))
        self.n_slices = int(n_slices)
        self.n_probe_modes = int(n_probe_modes)
        self.n_object_modes = int(n_object_modes)
        self.refine = {"object": _schedule(refine_object), "probe": _schedule(refine_probe),
                       "positions": _schedule(refine_positions)}
        self.regularizers = list(regularizers)
        self.constraints = list(constraints)
        self.device = device if device is not None else Device("auto")
        self.batch_size = batch_size
        self.object_margin_px = int(object_margin_px)
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.save_every = int(save_every)
        self.checkpoint_every = checkpoint_every
        self.progress = progress
        self.seed = int(seed)
        self.epoch = 0
        self.loss_history: list[float] = []
        self.params: dict[str, Any] | None = None
        self.grid: ReconstructionGrid | None = None
        self.model: FarFieldModel | None = None
        self._initial_positions_A = None if positions_A is None else np.asarray(
            positions_A, dtype=float)
        if self._initial_positions_A is not None and self._initial_positions_A.shape != (
                len(self.dataset), 2):
            raise ValueError(f"positions_A: expected shape ({len(self.dataset)}, 2), found "
                             f"{self._initial_positions_A.shape}")

    # ------------------------------------------------------------------ components
    @property
    def registry(self) -> Any:
        if self._registry is None:
            from .plugins import load_registry

            self._registry = load_registry()
        return self._registry

    def _default(self, kind: str) -> Any:
        return self.registry.create(kind, DEFAULT_COMPONENTS[kind])

    # ------------------------------------------------------------------ set-up
    def _auto_batch_size(self) -> int:
        ny, nx = self.dataset.pattern_shape
        item = np.dtype(self.device.complex_dtype).itemsize
        waves = self.n_object_modes * self.n_probe_modes
        per_position = ny * nx * item * (waves * (self.n_slices + 4) + 2 * self.n_probe_modes
                                         + 2 * self.n_slices * self.n_object_modes + 2)
        budget = 0.25 * self.device.free_memory_bytes()
        cap = 4096 if self.device.kind == "gpu" else 512
        return int(max(1, min(len(self.dataset), cap, budget // per_position)))

    def initialize(self) -> dict[str, Any]:
        """Load data, build the grid, the starting guesses and the model (idempotent)."""
        if self.params is not None:
            return self.params
        exp = self.experiment
        window = self.dataset.pattern_shape
        if window[0] != window[1]:
            raise ValueError(f"data: expected square patterns, found {window}")
        mean_pattern = self.dataset.mean_pattern()
        rng = np.random.default_rng(self.seed)
        context = InitContext(exp, None, mean_pattern, len(self.dataset), rng)
        if self._initial_positions_A is not None:
            positions_A = self._initial_positions_A
        else:
            positions_A = np.asarray(self.position_initializer.build(context), dtype=float)
        self.grid = ReconstructionGrid.covering(positions_A, window, exp.dk_inv_A,
                                                margin_px=self.object_margin_px)
        context.grid = self.grid
        probe = np.asarray(self.probe_initializer.build(context, self.n_probe_modes))
        obj = np.asarray(self.object_initializer.build(
            context, self.grid.object_shape, self.n_slices, self.n_object_modes))
        dev = self.device
        measured = dev.real(Dataset.centered_to_fft_order(self.dataset.load_all(np.float32)))
        self.model = FarFieldModel(
            self.propagator, self.loss, dev, window, self.grid.pixel_size_A, exp.wavelength_A,
            self.n_slices, measured, batch_size=self.batch_size or self._auto_batch_size())
        self.params = {"object": dev.complex(obj), "probe": dev.complex(probe),
                       "positions": dev.real(self.grid.positions_to_pixels(positions_A))}
        self.model.check_blocks(self.params)
        return self.params

    # ------------------------------------------------------------------ objective
    def _in_bounds(self, positions: Any) -> bool:
        return windows_outside_object(self.device.to_host(positions), self.grid.window,
                                      self.grid.object_shape) is None

    def evaluate(self, params: Mapping[str, Any], blocks: Iterable[str]
                 ) -> tuple[float, dict[str, Any], dict[str, float]]:
        """Loss, gradients for ``blocks`` and the contribution of each term."""
        blocks = tuple(blocks)
        if "positions" in blocks and not self._in_bounds(params["positions"]):
            xp = self.device.xp
            return float("inf"), {b: xp.zeros_like(params[b]) for b in blocks}, {}
        data_loss, grads = self.model.value_and_grad(params, refine=blocks)
        terms = {"data_loss": data_loss}
        total = data_loss
        for reg in self.regularizers:
            value, reg_grads = reg.value_and_grad(params, self.device)
            terms[f"reg_{reg.name}"] = float(value)
            total += float(value)
            for block, g in reg_grads.items():
                if block in grads:
                    grads[block] = grads[block] + g
        return total, {b: grads[b] for b in blocks}, terms

    # ------------------------------------------------------------------ running
    def _host_state(self) -> dict[str, np.ndarray]:
        dev = self.device
        return {"object": dev.to_host(self.params["object"]),
                "probe": dev.to_host(self.params["probe"]),
                "positions": dev.to_host(self.params["positions"])}

    def result(self) -> ReconstructionResult:
        state = self._host_state()
        return ReconstructionResult(
            object=state["object"], probe=state["probe"],
            positions_A=self.grid.pixels_to_positions(state["positions"]), grid=self.grid,
            loss=list(self.loss_history), epochs=self.epoch, output_dir=self.output_dir)

    def run(self, epochs: int, callbacks: Sequence[Callback] = ()) -> ReconstructionResult:
        """Run ``epochs`` more epochs (one optimizer step each) and return the result."""
        if not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"epochs: expected an integer >= 0, found {epochs!r}")
        self.initialize()
        output = self._open_output()
        log = output.loss_log(_LOG_COLUMNS, resume_from_epoch=self.epoch if self.epoch else None
                              ) if output is not None else None
        xp = self.device.xp
        state = self.optimizer.init_state()
        active: tuple[str, ...] = ()
        value, grads, terms = 0.0, {}, {}
        start = time.perf_counter()
        bar = self._progress_bar(epochs)
        try:
            for _ in range(epochs):
                epoch = self.epoch
                blocks = tuple(b for b in BLOCKS if self.refine[b](epoch))
                if not blocks:
                    raise ValueError(f"refine: no block is refined at epoch {epoch}")
                if blocks != active:
                    self.optimizer.reset(state)
                    active = blocks
                    value, grads, terms = self.evaluate(self.params, active)
                seen: list[tuple[float, dict[str, float]]] = []

                def objective(sub: Mapping[str, Any], _blocks=active, _seen=seen
                              ) -> tuple[float, dict[str, Any]]:
                    full = dict(self.params)
                    full.update(sub)
                    v, g, t = self.evaluate(full, _blocks)
                    _seen.append((v, t))
                    return v, g

                step = self.optimizer.step({b: self.params[b] for b in active}, value, grads,
                                           objective, state, xp)
                self.params.update(step.params)
                value, grads = step.value, dict(step.grads)
                terms = next((t for v, t in reversed(seen) if v == value), terms)
                changed = False
                for constraint in self.constraints:
                    if constraint.is_active(epoch):
                        changed |= bool(constraint.apply(self.params, self.device, epoch))
                if changed:
                    self.optimizer.reset(state)
                    value, grads, terms = self.evaluate(self.params, active)
                self.epoch += 1
                self.loss_history.append(value)
                report = EpochReport(
                    epoch=self.epoch, loss=value, data_loss=terms.get("data_loss", value),
                    step_size=step.step_size, evaluations=step.evaluations,
                    accepted=step.accepted, elapsed_s=time.perf_counter() - start,
                    blocks=active, params=self.params, info=dict(step.info, terms=terms))
                self._record(report, output, log)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.5g}", step=f"{step.step_size:.2g}")
                if any(bool(cb(report)) for cb in callbacks):
                    break
        finally:
            if bar is not None:
                bar.close()
        if output is not None and self.epoch % self.save_every:
            output.save_state(self._host_state(), self.epoch)
        return self.result()

    def _progress_bar(self, epochs: int) -> Any:
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=epochs, desc="ptyframe", unit="epoch", leave=True)

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
        log.append(epoch=report.epoch, time_s=report.elapsed_s, loss=report.loss,
                   data_loss=report.data_loss, regularization=regularization,
                   step_size=report.step_size, evaluations=report.evaluations,
                   accepted=report.accepted,
                   line_search=str(report.info.get("line_search", "")),
                   blocks="+".join(report.blocks))
        if report.epoch % self.save_every == 0 or (
                self.checkpoint_every and report.epoch % self.checkpoint_every == 0):
            output.save_state(self._host_state(), report.epoch)

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
        }
        for kind in DEFAULT_COMPONENTS:
            config[kind] = getattr(self, kind).to_config()
        if getattr(self.dataset, "path", None) is not None:
            config["data"] = {"path": str(self.dataset.path)}
        if self.grid is not None:
            config["grid"] = self.grid.to_config()
        return config

    def load_checkpoint(self, folder: str | Path | None = None) -> int:
        """Restore object, probe and positions from an output folder; returns the epoch."""
        folder = Path(folder) if folder is not None else self.output_dir
        if folder is None:
            raise ValueError("load_checkpoint: no folder given and no output_dir set")
        from .results import load_state

        arrays, epoch = load_state(folder)
        self.initialize()
        for block in ("object", "probe", "positions"):
            if block not in arrays:
                raise ValueError(f"checkpoint in {folder}: missing block {block!r}")
            if arrays[block].shape != tuple(self.params[block].shape):
                raise ValueError(
                    f"checkpoint in {folder}: {block} has shape {arrays[block].shape}, this "
                    f"reconstruction expects {tuple(self.params[block].shape)}")
            dtype = self.params[block].dtype
            self.params[block] = self.device.asarray(arrays[block], dtype=dtype)
        self.epoch = int(epoch)
        log_path = folder / "loss.csv"
        if log_path.exists():
            from .results import read_loss_log

            history = read_loss_log(log_path)
            keep = history["epoch"] <= epoch
            self.loss_history = [float(v) for v in history["loss"][keep]]
        return self.epoch
