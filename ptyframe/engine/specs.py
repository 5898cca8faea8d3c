"""Specifications: the few small objects a :class:`Reconstruction` is built from.

* :class:`ModelSpec` — what is modelled (slices, modes, tilt mode, markers, phase plates,
  propagator, detector, object grid);
* :class:`RefineSpec` — what is refined and when: one :class:`BlockPlan` per row of the block
  table (:data:`ptyframe.core.blocks.PARAMETER_BLOCKS`) with its schedule, its starting value
  and, for object/probe/positions, its initializer;
* :class:`SolverSpec` — how the loss is minimised (loss, optimizer, engine, regularizers,
  constraints, loss weight, history resets);
* :class:`ReadingSpec` — how the data is read (sequence, batching, streaming, dtype);
* :class:`OutputSpec` — where results go (folder, checkpoint cadence, verbosity).

Each has validated, documented fields and ``to_config``/``from_config`` that round-trip
through JSON/TOML. :func:`route_settings` maps the flat keywords of the short Python API
(``n_slices=4, refine_positions=FromEpoch(10), output_dir="out"``) and the top-level keys of a
configuration file onto these objects; every name it accepts comes from the specifications'
own fields and the block table, so no list of names is kept twice.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs
import numpy as np

from ptyframe.components.base import jsonable
from ptyframe.core.blocks import BLOCK_NAMES, PARAMETER_BLOCKS
from ptyframe.core.schedules import Constant, Schedule, as_schedule
from ptyframe.core.validators import (
    boolean,
    in_range,
    non_negative_int,
    one_of,
    positive_int,
    reject_unknown_keys,
    to_float,
)
from ptyframe.engine.scan_model import DEFAULT_JITTER_MIN_INFORMATION
from ptyframe.io.array_settings import ArraySetting

__all__ = ["ModelSpec", "BlockPlan", "RefineSpec", "SolverSpec", "ReadingSpec", "OutputSpec",
           "SPEC_CLASSES", "route_settings", "config_value", "TILT_MODES"]

#: tilt_mode -> (before, inside, after), as in the reference
TILT_MODES = {0: (False, True, False), 1: (False, False, True), 2: (True, False, False),
              3: (False, True, True), 4: (True, True, True)}

#: the initializer component kind of the blocks built by an initializer
INITIALIZER_KINDS = {"object": "object_initializer", "probe": "probe_initializer",
                     "positions": "position_initializer"}


# --------------------------------------------------------------------------- validators

def _component_of(kind: str, optional: bool = True) -> Any:
    def check(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is None and optional:
            return
        if getattr(value, "kind", None) != kind:
            raise TypeError(f"{attribute.name}: expected a {kind} component, found "
                            f"{type(value).__name__}")
    return check


def _components_of(kind: str) -> Any:
    def check(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
        for item in value:
            if getattr(item, "kind", None) != kind:
                raise TypeError(f"{attribute.name}: expected {kind} components, found "
                                f"{type(item).__name__}")
    return check


def _resize(inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is False or value is True:
        return
    positive_int()(inst, attribute, value)


# --------------------------------------------------------------------------- serialisation

def config_value(value: Any) -> Any:
    """JSON-ready form of a specification field: arrays as an :class:`ArraySetting` writes
    them (inline when small and real, else a placeholder), containers item by item, the rest
    as components write their settings (schedules and components by ``to_config``)."""
    if isinstance(value, np.ndarray):
        return ArraySetting("", value).to_config()
    if isinstance(value, Mapping):
        return {str(k): config_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [config_value(v) for v in value]
    return jsonable(value)


#: ``n: ...`` or ``EveryN.n: ...`` (a class-qualified field label) at a message's start
_LEADING_NAME = re.compile(r"^(?:[A-Z][A-Za-z0-9_]*\.)?([a-z_][A-Za-z0-9_]*): ")


def located(where: str, exc: BaseException) -> str:
    """``exc``'s message prefixed with its location in the configuration: ``n: expected ...``
    at ``refine.probe`` -> ``refine.probe.n: expected ...``."""
    message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    match = _LEADING_NAME.match(message)
    if match and match.group(1) != where.rsplit(".", 1)[-1]:
        return f"{where}.{match.group(1)}: {message[match.end():]}"
    if message.startswith(f"{where.rsplit('.', 1)[-1]}: "):
        head = where.rsplit(".", 1)[0] if "." in where else ""
        return f"{head}.{message}" if head else message
    return f"{where}: {message}"


def _build_field(field: attrs.Attribute, value: Any, registry: Any) -> Any:
    """A field's value from its configuration form (components through the registry), with
    errors located (``regularizers[1]: ...``)."""
    kind = field.metadata.get("component")
    try:
        if kind is not None and isinstance(value, Mapping):
            return registry.create(kind, value)
    except (ValueError, TypeError, KeyError) as exc:
        raise type(exc)(located(field.name, exc)) from None
    many = field.metadata.get("components")
    if many is not None:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{field.name}: expected a list of {{type = name, ...}} tables, "
                             f"found {type(value).__name__}")
        built = []
        for index, item in enumerate(value):
            try:
                built.append(registry.create(many, item) if isinstance(item, Mapping)
                             else item)
            except (ValueError, TypeError, KeyError) as exc:
                raise type(exc)(located(f"{field.name}[{index}]", exc)) from None
        return built
    if field.converter is not None:
        try:
            field.converter(value)  # schedules and the like: say where a bad one is
        except (ValueError, TypeError) as exc:
            raise ValueError(located(field.name, exc)) from None
    return value


class _Spec:
    """Shared ``to_config``/``from_config`` of the specifications."""

    #: section title in error messages
    section: ClassVar[str] = ""

    def to_config(self) -> dict[str, Any]:
        return {f.name: config_value(getattr(self, f.name)) for f in attrs.fields(type(self))}

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in attrs.fields(cls))

    @classmethod
    def from_config(cls, config: Mapping[str, Any], registry: Any | None = None) -> Any:
        """Rebuild from :meth:`to_config` output (component tables need a ``registry``)."""
        if not isinstance(config, Mapping):
            raise ValueError(f"{cls.section}: expected a table, found {type(config).__name__}")
        fields = {f.name: f for f in attrs.fields(cls)}
        reject_unknown_keys(cls.section, config, fields)
        kwargs = {}
        for name, value in config.items():
            needs_registry = ("component" in fields[name].metadata
                              or "components" in fields[name].metadata)
            if needs_registry and registry is None:
                from ptyframe.registry.loader import load_registry

                registry = load_registry()
            kwargs[name] = _build_field(fields[name], value, registry)
        return cls(**kwargs)


# --------------------------------------------------------------------------- specifications

@attrs.define
class ModelSpec(_Spec):
    """What is modelled.

    ``n_slices``, ``n_probe_modes``, ``n_object_modes``: model size; ``tilt_mode``: which
    tilts are applied (0 inside; 1 after; 2 before; 3 inside + after; 4 all);
    ``propagator``, ``detector``: components (None: the registry's ``multislice`` and
    ``far_field``); ``probe_marker``: (N,) which probe each measurement uses (one probe per
    sub-scan); ``aberration_marker``: (N,) which row of the aberrations each measurement
    uses; ``phase_plates``: (N, ny, nx) per-measurement phase plates on the probe spectrum
    (rad, or complex factors), an .npy path, or an HDF5 path / {path, dataset};
    ``object_margin_px``: empty border around the scanned area (pixels);
    ``allow_subpixel_shift``: False rounds the starting positions to whole pixels;
    ``dynamically_resize_object``: False, or a distance (pixels) from the object's edge at
    which the object grows by vacuum.
    """

    section: ClassVar[str] = "model"

    n_slices: int = attrs.field(default=1, validator=positive_int())
    n_probe_modes: int = attrs.field(default=1, validator=positive_int())
    n_object_modes: int = attrs.field(default=1, validator=positive_int())
    tilt_mode: int = attrs.field(default=0, validator=one_of(tuple(TILT_MODES)))
    propagator: Any = attrs.field(default=None, validator=_component_of("propagator"),
                                  metadata={"component": "propagator"})
    detector: Any = attrs.field(default=None, validator=_component_of("detector"),
                                metadata={"component": "detector"})
    probe_marker: Any = None
    aberration_marker: Any = None
    phase_plates: Any = None
    object_margin_px: int = attrs.field(default=8, validator=non_negative_int())
    allow_subpixel_shift: bool = attrs.field(default=True, validator=boolean())
    dynamically_resize_object: bool | int = attrs.field(default=False, validator=_resize)


def _plan_refine(value: Any) -> Schedule:
    return as_schedule(value)


@attrs.define
class BlockPlan:
    """How one parameter block is refined.

    ``refine``: a Schedule of bool (or a bool); ``initial``: its starting value (an array, a
    nested list or an .npy path; for the object (n_slices, n_object_modes, Y, X), the probe
    (n_probe_modes, ny, nx), positions (N, 2) in Å, other blocks as in the block table);
    ``initializer``: for object, probe and positions, the initializer component used when no
    starting value is given (None: the registry default).
    """

    refine: Schedule = attrs.field(factory=lambda: Constant(False), converter=_plan_refine)
    initial: Any = None
    initializer: Any = None

    @property
    def never(self) -> bool:
        """Whether the schedule is a constant False (the block is never refined)."""
        return isinstance(self.refine, Constant) and not self.refine.value


def _default_plans() -> dict[str, BlockPlan]:
    return {b.name: BlockPlan(refine=b.refined_by_default) for b in PARAMETER_BLOCKS}


def _plans(value: Any) -> dict[str, BlockPlan]:
    plans = _default_plans()
    if value is None:
        return plans
    if not isinstance(value, Mapping):
        raise ValueError(f"refine: expected a table of blocks, found {type(value).__name__}")
    for name, plan in value.items():
        if name not in plans:
            raise ValueError(f"refine: unknown block {name!r}; expected some of "
                             f"{', '.join(BLOCK_NAMES)}")
        plans[name] = plan if isinstance(plan, BlockPlan) else BlockPlan(refine=plan)
    return plans


@attrs.define
class RefineSpec(_Spec):
    """What is refined and when: one :class:`BlockPlan` per block of the block table.

    ``RefineSpec({"positions": FromEpoch(10)})`` refines positions from epoch 10 and keeps
    the table's defaults (object and probe refined, the rest fixed) for the other blocks.
    """

    section: ClassVar[str] = "refine"

    blocks: dict[str, BlockPlan] = attrs.field(factory=_default_plans, converter=_plans)

    def __getitem__(self, name: str) -> BlockPlan:
        return self.blocks[name]

    def schedules(self) -> dict[str, Schedule]:
        return {name: plan.refine for name, plan in self.blocks.items()}

    def to_config(self) -> dict[str, Any]:
        """``{"refine": {block: schedule}, <table setting>: value, <initializer>: table}``
        — the layout of a configuration file."""
        out: dict[str, Any] = {"refine": {n: p.refine.to_config() for n, p in self.blocks.items()}}
        for row in PARAMETER_BLOCKS:
            plan = self.blocks[row.name]
            if plan.initial is not None and row.setting is not None:
                out[row.setting_name] = config_value(plan.initial)
            if plan.initializer is not None:
                out[INITIALIZER_KINDS[row.name]] = plan.initializer.to_config()
        return out

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        rows = tuple(b.setting_name for b in PARAMETER_BLOCKS if b.setting is not None)
        return ("refine", *rows, *INITIALIZER_KINDS.values())

    @classmethod
    def from_config(cls, config: Mapping[str, Any], registry: Any | None = None) -> RefineSpec:
        """From ``{"refine": {...}, "tilts": ..., "probe_initializer": {...}}`` (flat keys of
        a configuration file; ``refine_<block>`` keywords are accepted too)."""
        plans = _default_plans()
        refine = dict(config.get("refine") or {})
        for key, value in config.items():
            if key.startswith("refine_"):
                refine[key[len("refine_"):]] = value
        unknown = set(refine) - set(plans)
        if unknown:
            raise ValueError(f"refine: unknown blocks {sorted(unknown)}; expected some of "
                             f"{', '.join(BLOCK_NAMES)}")
        by_setting = {b.setting_name: b.name for b in PARAMETER_BLOCKS if b.setting is not None}
        by_initializer = {kind: name for name, kind in INITIALIZER_KINDS.items()}
        allowed = {"refine", *by_setting, *by_initializer} | {f"refine_{b}" for b in plans}
        unknown = set(config) - allowed
        if unknown:
            raise ValueError(f"refine: unknown keys {sorted(unknown)}")
        for name in plans:
            try:
                plans[name] = BlockPlan(refine=refine.get(name, plans[name].refine))
            except (ValueError, TypeError) as exc:
                raise ValueError(located(f"refine.{name}", exc)) from None
        for setting, name in by_setting.items():
            if setting in config:
                plans[name].initial = config[setting]
        for kind, name in by_initializer.items():
            value = config.get(kind)
            if isinstance(value, Mapping):
                if registry is None:
                    from ptyframe.registry.loader import load_registry

                    registry = load_registry()
                value = registry.create(kind, value)
            if value is not None and getattr(value, "kind", None) != kind:
                raise TypeError(f"{kind}: expected a {kind} component, found "
                                f"{type(value).__name__}")
            plans[name].initializer = value
        return cls(plans)


@attrs.define
class SolverSpec(_Spec):
    """How the loss is minimised.

    ``loss``, ``optimizer``, ``engine``: components (None: the registry's ``ml`` for counting
    data, else ``lsq_sqrt``; ``quasi_newton``; ``full_batch``); ``regularizers``: extra loss
    terms;
    ``constraints``: by-hand projections; ``loss_weight``: factor (or Schedule) on the data
    term; ``reset_history``: Schedule of bool, True at an epoch forgets the optimizer's
    history; ``max_rejected_epochs``: epochs in a row whose step was rejected after which the
    run stops with an error (a run that cannot make progress never reports success);
    ``position_scaling``: precondition the scan-position update per position by its local
    Gauss-Newton curvature (:mod:`ptyframe.engine.position_scaling`);
    ``scan_model``: "affine" splits the correction of the refined positions into an affine
    map of the starting scan (plus a slow-axis drift of order ``scan_drift_order``) and a
    local jitter (:mod:`ptyframe.engine.scan_model`); "none": no split, no prior, no damping;
    ``jitter_damping``: with the affine model and > 0, after every position step the mean
    translation is removed and the jitter multiplied by ``1 - jitter_damping`` (a projection:
    the optimizer's history is forgotten); ``jitter_prior_A``: with the affine scan model,
    the expected rms jitter per axis (Å) of a Gaussian prior on the local jitter added to
    the loss (0: none; None: :data:`~ptyframe.engine.scan_model.DEFAULT_JITTER_PRIOR_A`
    with the ``ml`` loss, whose units make it the Bayesian prior, none with another loss);
    ``jitter_min_information``: with the prior and the ``ml`` loss, the local jitter is
    refined only in epochs where the median Fisher-information bound of the positions (from
    the current object, probe and the counts) is at least this many times the prior's
    precision (once refined, held again below half of it); otherwise the positions follow the
    global scan model only (0: always refined; default
    :data:`~ptyframe.engine.scan_model.DEFAULT_JITTER_MIN_INFORMATION`).
    """

    section: ClassVar[str] = "solver"

    loss: Any = attrs.field(default=None, validator=_component_of("loss"),
                            metadata={"component": "loss"})
    optimizer: Any = attrs.field(default=None, validator=_component_of("optimizer"),
                                 metadata={"component": "optimizer"})
    engine: Any = attrs.field(default=None, validator=_component_of("engine"),
                              metadata={"component": "engine"})
    regularizers: list[Any] = attrs.field(factory=list, converter=list,
                                          validator=_components_of("regularizer"),
                                          metadata={"components": "regularizer"})
    constraints: list[Any] = attrs.field(factory=list, converter=list,
                                         validator=_components_of("constraint"),
                                         metadata={"components": "constraint"})
    loss_weight: Schedule = attrs.field(default=1.0, converter=as_schedule)
    reset_history: Schedule = attrs.field(default=False, converter=as_schedule)
    max_rejected_epochs: int = attrs.field(default=5, validator=positive_int())
    position_scaling: bool = attrs.field(default=True, validator=boolean())
    scan_model: str = attrs.field(default="affine", validator=one_of(("affine", "none")))
    scan_drift_order: int = attrs.field(default=0, validator=non_negative_int())
    jitter_damping: float = attrs.field(default=0.0, converter=to_float,
                                        validator=in_range(0.0, 1.0, high_open=True))
    jitter_prior_A: float | None = attrs.field(
        default=None, converter=attrs.converters.optional(to_float),
        validator=in_range(0.0, 10.0, unit="Å", optional=True))
    jitter_min_information: float = attrs.field(
        default=DEFAULT_JITTER_MIN_INFORMATION, converter=to_float,
        validator=in_range(0.0, 1e6))


def _sequence(value: Any) -> Any:
    if value is None or isinstance(value, Schedule):
        return value
    if isinstance(value, Mapping):
        return as_schedule(value)
    return value  # indices: checked against the data by the Reconstruction


@attrs.define
class ReadingSpec(_Spec):
    """How the data is read.

    ``sequence``: measurements used (a list of indices, an .npy path, or a Schedule of
    lists; None: all); ``use_full_fov``: with a fixed sequence, whether the object still
    covers every measurement; ``batch_size``: measurements per vectorised batch (None: from
    free memory); ``load_one_by_one``: stream measurements from the dataset every evaluation
    instead of keeping them on the device (host memory then holds only the batches in
    flight); ``prefetch``: with ``load_one_by_one``, batches read ahead by a background
    thread while the current one is computed (0: read synchronously); ``data_dtype``:
    storage type of the measurements on the device ("float16", "float32", "float64"; None:
    the device's real type);
    ``validation_fraction``: fraction of the measurements held out of the fit, chosen with the
    reconstruction's seed, whose loss is tracked as a validation loss
    (:mod:`ptyframe.engine.validation`; 0, or fewer than 4 patterns: none);
    ``check_metadata``: before iterating, check voltage and angle ranges, the bright-field
    disc against angle, voltage and calibration, and the scan shape against the data
    (:mod:`ptyframe.engine.metadata_checks`).
    """

    section: ClassVar[str] = "reading"

    sequence: Any = attrs.field(default=None, converter=_sequence)
    use_full_fov: bool = attrs.field(default=True, validator=boolean())
    batch_size: int | None = attrs.field(default=None, validator=positive_int(optional=True))
    load_one_by_one: bool = attrs.field(default=False, validator=boolean())
    prefetch: int = attrs.field(default=1, validator=non_negative_int())
    data_dtype: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(
            one_of(("float16", "float32", "float64"))))
    validation_fraction: float = attrs.field(default=0.05, converter=to_float,
                                             validator=in_range(0.0, 0.5, high_open=True))
    check_metadata: bool = attrs.field(default=True, validator=boolean())


@attrs.define
class OutputSpec(_Spec):
    """Where results go.

    ``dir``: folder for checkpoints, loss.csv and parameters.json (None: nothing written);
    ``save_every``: epochs between overwritable checkpoints; ``checkpoint_every``: epochs
    between kept per-epoch checkpoints (None: none); ``verbosity``: 0 silent, 1 a progress
    bar, 2 one line per epoch, 3 also every loss term (None: 1 when ``progress`` else 0);
    ``progress``: see ``verbosity``; ``save_loss_log``: write loss.csv; ``figures``: write
    the PNG figures (object, probe, positions, loss) to ``<dir>/figures`` at the end of each
    run; ``figures_every``: also redraw them every that many epochs (None: only at the end);
    ``result_file``: write the NeXus result file ``<dir>/result.nxs`` at the end of each run.
    Figures and the result file need ``dir``; benchmarks turn them off. ``keep_best``: with
    held-out patterns, return (and write to ``dir``/best) the parameters of the best-validated
    epoch rather than the last: the latest epoch whose held-out loss is not worse than the
    lowest with confidence ``keep_best_confidence`` (one-sided paired t test over groups of
    held-out patterns, ``engine/validation.py``; 0: the epoch with the lowest loss).
    ``early_stop``: with ``keep_best``, end the run once this many consecutive epochs (after
    the settling pause of position refinement) were not kept, i.e. were significantly worse
    than the best (None: run every epoch asked for).
    """

    section: ClassVar[str] = "output"

    dir: Any = attrs.field(default=None)
    save_every: int = attrs.field(default=1, validator=positive_int())
    checkpoint_every: int | None = attrs.field(default=None,
                                               validator=positive_int(optional=True))
    verbosity: int | None = attrs.field(default=None, validator=attrs.validators.optional(
        one_of((0, 1, 2, 3))))
    progress: bool = attrs.field(default=True, validator=boolean())
    save_loss_log: bool = attrs.field(default=True, validator=boolean())
    figures: bool = attrs.field(default=True, validator=boolean())
    figures_every: int | None = attrs.field(default=None, validator=positive_int(optional=True))
    result_file: bool = attrs.field(default=True, validator=boolean())
    keep_best: bool = attrs.field(default=True, validator=boolean())
    keep_best_confidence: float = attrs.field(default=0.95, converter=to_float,
                                              validator=in_range(0.0, 1.0, high_open=True))
    early_stop: int | None = attrs.field(default=None, validator=positive_int(optional=True))

    @property
    def level(self) -> int:
        return self.verbosity if self.verbosity is not None else (1 if self.progress else 0)

    def to_config(self) -> dict[str, Any]:
        out = super().to_config()
        out["dir"] = None if self.dir is None else str(self.dir)
        return out


#: specification classes by the keyword a Reconstruction takes them as
SPEC_CLASSES: dict[str, type] = {"model": ModelSpec, "refine": RefineSpec, "solver": SolverSpec,
                                 "reading": ReadingSpec, "output": OutputSpec}

#: the one flat keyword that is not a field name (``dir`` reads badly outside [output])
_FLAT_ALIASES = {"output_dir": ("output", "dir")}


def route_settings(settings: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Flat keywords -> ``{spec keyword: {field: value}}``.

    Accepted: every field of :class:`ModelSpec`, :class:`SolverSpec`, :class:`ReadingSpec`,
    :class:`OutputSpec` (``output_dir`` for ``dir``), ``refine_<block>``, ``refine`` (a table
    of blocks), the block table's starting-value settings and the initializers. An unknown
    keyword is one error listing what is accepted.
    """
    owner: dict[str, tuple[str, str]] = dict(_FLAT_ALIASES)
    for key, cls in SPEC_CLASSES.items():
        if key == "refine":
            continue
        for name in cls.field_names():
            if name != "dir":
                owner[name] = (key, name)
    refine_keys = set(RefineSpec.field_names()) | {f"refine_{b}" for b in BLOCK_NAMES}
    routed: dict[str, dict[str, Any]] = {key: {} for key in SPEC_CLASSES}
    unknown = []
    for name, value in settings.items():
        if name in refine_keys:
            routed["refine"][name] = value
        elif name in owner:
            key, field_name = owner[name]
            routed[key][field_name] = value
        else:
            unknown.append(name)
    if unknown:
        raise TypeError(f"Reconstruction: unknown settings {sorted(unknown)}; expected some of "
                        f"{sorted(set(owner) | refine_keys)}")
    return routed
