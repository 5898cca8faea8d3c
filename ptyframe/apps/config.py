"""Configuration files (TOML or JSON) -> a ready-to-run :class:`Reconstruction`.

Layout (TOML shown; JSON has the same structure)::

    epochs = 50
    n_slices = 1
    [data]
    path = "scan.h5"            # relative paths are relative to the config file
    # dataset = "data"          # HDF5 dataset (default: data, else the single 3D/4D one)
    # reader = {type = "hspy"}  # default: the reader that recognises the file
    # preprocessing = {pad = 0, bin = 1, flip_ky = false, ...}
    [experiment]
    from_metadata = true        # voltage, aperture, calibration, scan from the file's metadata
    # any Experiment field overrides, e.g. convergence_angle_mrad = 20.0
    [propagator]
    type = "multislice"
    slice_thickness_A = 2.0
    [loss]                      # default: "ml" (Poisson) for counts, else "lsq_sqrt"
    type = "ml"
    [refine]
    object = true
    probe = {type = "from", start = 5}
    positions = false
    [output]
    dir = "out"
    checkpoint_every = 10
    [geometry]                  # optional: scan rotation, transpose, defocus found by tcBF
    mode = "auto"               # off (default), check (report only), auto (refuse or apply)
    [parallel]                  # optional: data parallelism (mpiexec -n 4 ptyframe run ...)
    backend = "auto"            # auto (MPI when launched by mpiexec/srun), single, mpi, nccl
    deterministic = false       # true: results independent of the number of ranks
    chunk = 64                  # measurements per fixed reduction chunk (deterministic)

Components are ``{"type": name, ...settings}`` tables resolved by name through the registry;
schedules are ``{"type": "every" | "from" | "until" | "piecewise" | "linear", ...}`` or plain
values. Nothing in a configuration is ever evaluated as code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from ptyframe.apps.geometry import (
    GeometryFindings,
    GeometrySettings,
    apply_geometry,
    find_geometry,
    read_geometry,
    remove_geometry,
    report,
    require_confidence,
    tcbf_config,
    write_geometry,
)
from ptyframe.apps.launch import gpu_for_rank, gpus_from_environment
from ptyframe.core.device import Device
from ptyframe.core.experiment import Experiment
from ptyframe.core.validators import reject_unknown_keys
from ptyframe.engine.communicator import Communicator, launcher_rank, make_communicator
from ptyframe.engine.reconstruction import Reconstruction, ReconstructionResult
from ptyframe.engine.run_record import (
    RESUME_MODES,
    check_compatible,
    has_checkpoint,
    run_fingerprint,
)
from ptyframe.engine.specs import SPEC_CLASSES, OutputSpec, located, route_settings
from ptyframe.io.data import Dataset, Preprocessing
from ptyframe.io.folder_lock import FolderLock
from ptyframe.io.results import OutputFolder

__all__ = ["load_config", "build_reconstruction", "run_config", "run_config_file",
           "apply_overrides", "parse_override", "validate_config_file", "DATA_KEYS"]

#: top-level tables that are not settings of the specifications
_SECTIONS = ("epochs", "data", "experiment", "device", "output", "grid", "seed", "parallel",
             "geometry")

#: keys of the [parallel] table
_PARALLEL_KEYS = ("backend", "deterministic", "chunk")
#: keys of the [data] table
DATA_KEYS = ("path", "dataset", "reader", "preprocessing", "dtype")


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a .toml or .json configuration file into a dict."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config: {path} does not exist")
    text = path.read_text()
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"config: {path} is not valid TOML: {exc}") from None
    if path.suffix.lower() == ".json":
        try:
            config = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"config: {path} is not valid JSON: {exc}") from None
        if not isinstance(config, dict):
            raise ValueError(f"config: {path}: expected a JSON object of settings at the top "
                             f"level, found {type(config).__name__}")
        return config
    raise ValueError(f"config: expected a .toml or .json file, found {path.name!r}")


def _toml_loads(text: str) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads(text)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"experiment.defocus_A=-100"`` -> (["experiment", "defocus_A"], -100.0).

    The value is read as a TOML value (numbers, true/false, "strings", [lists],
    {inline = "tables"}); anything that is not valid TOML is taken as a plain string, so
    ``loss.type=ml`` works without quotes."""
    key, sep, raw = str(text).partition("=")
    parts = [k.strip() for k in key.split(".")]
    if not sep or not all(parts):
        raise ValueError(f"--set: expected key=value with a dotted key such as "
                         f"experiment.defocus_A=-100, found {text!r}")
    try:
        value = _toml_loads(f"v = {raw.strip()}")["v"]
    except ValueError:
        value = raw.strip()
    return parts, value


def apply_overrides(config: Mapping[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of ``config`` with each ``key=value`` of ``overrides`` set (tables created as
    needed; a key that names a non-table value on the way is an error)."""
    out = json.loads(json.dumps(config))  # deep copy of plain data
    for text in overrides:
        parts, value = parse_override(text)
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"--set {text!r}: expected {'.'.join(parts[:i + 1])} to be a "
                                 f"table, found {child!r}")
            node = child
        node[parts[-1]] = value
    return out


def _section(config: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = config.get(key, {})
    if not isinstance(value, Mapping):
        raise ValueError(f"config [{key}]: expected a table, found {type(value).__name__}")
    return dict(value)


def _build_data(section: dict[str, Any], base_dir: Path, scan_shape: Any) -> Dataset:
    if "path" not in section:
        raise ValueError("config [data]: expected a 'path' to a data file, found none")
    reject_unknown_keys("config [data]", section, DATA_KEYS)
    path = (base_dir / _data_path(section)).resolve()
    options = section.get("preprocessing", {})
    if not isinstance(options, Mapping):
        raise ValueError(f"config [data] preprocessing: expected a table such as {{pad = 0, "
                         f"bin = 1}}, found {type(options).__name__} {options!r}")
    known = [f.name for f in attrs.fields(Preprocessing)]
    unknown = sorted(str(k) for k in options if k not in known)
    if unknown:
        raise ValueError(f"config [data] preprocessing: unknown entries {unknown}; expected "
                         f"some of {', '.join(known)}")
    try:
        preprocessing = Preprocessing(**options)
    except (TypeError, ValueError) as exc:
        raise ValueError(located("config [data] preprocessing", exc)) from None
    return Dataset.from_file(path, dataset_name=section.get("dataset"),
                             scan_shape=scan_shape, preprocessing=preprocessing,
                             reader=section.get("reader"))


def _data_path(section: Mapping[str, Any]) -> str:
    path = section["path"]
    if not isinstance(path, str) or not path:
        raise ValueError(f"config [data] path: expected a file name (a string), found "
                         f"{type(path).__name__} {path!r}")
    return path


def _build_experiment(section: dict[str, Any], data_path: Path | None,
                      data_section: Mapping[str, Any]) -> Experiment:
    from_metadata = bool(section.pop("from_metadata", False))
    if from_metadata:
        if data_path is None:
            raise ValueError("config [experiment]: from_metadata needs [data] path")
        from ptyframe.io.metadata import load_experiment

        return load_experiment(data_path, reader=data_section.get("reader"),
                               dataset_name=data_section.get("dataset"), **section)
    return Experiment.from_config(section)


#: component settings that name files; relative paths are relative to the config file
_PATH_KEYS = ("path", "beam_ctf")


def _resolve_paths(section: Mapping[str, Any], base_dir: Path) -> dict[str, Any]:
    """Component settings with relative file paths made relative to the config's folder."""
    out = dict(section)
    for key, value in out.items():
        if (key in _PATH_KEYS or key.endswith("_path")) and isinstance(value, str) \
                and value and not Path(value).is_absolute():
            out[key] = str((base_dir / value).resolve())
    return out


def _component_tables(config: Mapping[str, Any], base_dir: Path) -> dict[str, Any]:
    """Top-level settings with file paths inside component tables made relative to the
    config's folder."""
    out = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and "type" in value and key not in _SECTIONS:
            value = _resolve_paths(value, base_dir)
        elif key in ("regularizers", "constraints") and isinstance(value, list):
            value = [_resolve_paths(v, base_dir) if isinstance(v, Mapping) else v
                     for v in value]
        out[key] = value
    return out


def build_reconstruction(config: Mapping[str, Any], base_dir: str | Path = ".",
                         registry: Any | None = None) -> tuple[Reconstruction, int]:
    """Assemble a Reconstruction (and the number of epochs to run) from a config dict.

    Every key other than the sections ``epochs``, ``data``, ``experiment``, ``device``,
    ``output``, ``grid`` and ``seed`` is a setting of one of the specifications
    (:func:`ptyframe.engine.specs.route_settings` says which); components are
    ``{type = name, ...}`` tables resolved through the registry.
    """
    if not isinstance(config, Mapping):
        raise ValueError(f"config: expected a table of settings, found "
                         f"{type(config).__name__}")
    base_dir = Path(base_dir)
    if registry is None:
        from ptyframe.registry.loader import load_registry

        registry = load_registry()
    geometry = GeometrySettings.from_config(config.get("geometry"))  # run by run_config
    if geometry.mode != "off":  # its tcBF settings are checked before anything runs
        try:
            registry.create("direct_method", tcbf_config(geometry))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config [geometry] tcbf: {exc}") from None
    settings = {k: v for k, v in config.items() if k not in _SECTIONS}
    try:
        routed = route_settings(_component_tables(settings, base_dir))
    except TypeError as exc:
        raise ValueError(f"config: {exc}") from None
    data_section = _section(config, "data")
    data_path = ((base_dir / _data_path(data_section)).resolve() if "path" in data_section
                 else None)
    experiment = _build_experiment(_section(config, "experiment"), data_path, data_section)
    dataset = _build_data(data_section, base_dir, experiment.scan_shape)
    if "dtype" in data_section:
        routed["reading"].setdefault("data_dtype", data_section["dtype"])
    output = _section(config, "output")
    reject_unknown_keys("config [output]", output, OutputSpec.field_names())
    if output.get("dir") is not None:
        output["dir"] = str(base_dir / output["dir"])
    routed["output"].update(output)
    specs = {key: cls.from_config(routed[key], registry) for key, cls in SPEC_CLASSES.items()}
    seed = config.get("seed", 0)
    communicator = build_communicator(_section(config, "parallel"))
    device = _section(config, "device")
    gpus = gpus_from_environment()
    if gpus is not None:  # started by `ptyframe run --gpus`
        if device.get("kind", "auto") == "cpu":
            raise ValueError("--gpus: the configuration's [device] kind is 'cpu'; expected "
                             "'gpu' or 'auto'")
        device["kind"] = "gpu"
        local = int(getattr(communicator, "local_rank", communicator.rank))
        device["gpu_id"] = gpu_for_rank(gpus, local)
    elif communicator.size > 1 and device.get("kind", "auto") != "cpu":
        device.setdefault("gpu_id", _local_gpu(communicator))
    rec = Reconstruction(dataset, experiment, **specs, device=Device(**device),
                         communicator=communicator, seed=seed, registry=registry,
                         base_dir=base_dir)
    return rec, _check_epochs("config epochs", config.get("epochs", 50))


def _check_epochs(where: str, epochs: Any) -> int:
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise ValueError(f"{where}: expected an integer >= 0, found {epochs!r}")
    return epochs


def build_communicator(section: Mapping[str, Any]) -> Communicator:
    """The communicator of a ``[parallel]`` table (empty: MPI when launched by an MPI
    launcher with more than one rank, else one process)."""
    reject_unknown_keys("config [parallel]", section, _PARALLEL_KEYS)
    return make_communicator(**section)


def _local_gpu(communicator: Communicator) -> int:
    """GPU of this rank: its rank on the node modulo the GPUs visible (0 without CuPy)."""
    from ptyframe.core.device import cupy_available

    if not cupy_available():
        return 0
    import cupy

    local = int(getattr(communicator, "local_rank", communicator.rank))
    return local % int(cupy.cuda.runtime.getDeviceCount())


def run_config(config: Mapping[str, Any], base_dir: str | Path = ".",
               output: str | Path | None = None, epochs: int | None = None,
               resume: bool | str = True) -> ReconstructionResult:
    """Build and run; ``output``/``epochs`` override the config.

    ``resume``: what to do with a checkpoint already in the output folder: ``True`` /
    ``"auto"`` continue it only when it holds this run (same fingerprint, see
    :mod:`ptyframe.engine.run_record`; another run is a :class:`ForeignRunError`),
    ``"resume"`` continue it with this configuration (recorded), ``"overwrite"`` / ``False``
    discard it. The folder is locked for the whole run.
    """
    mode = ("auto" if resume else "overwrite") if isinstance(resume, bool) else resume
    if mode not in RESUME_MODES:
        raise ValueError(f"resume: expected True, False or one of {RESUME_MODES}, "
                         f"found {resume!r}")
    config = dict(config)
    if output is not None:
        config["output"] = dict(_section(config, "output"), dir=str(Path(output).resolve()))
    geometry = GeometrySettings.from_config(config.get("geometry"))
    rec, n_epochs = build_reconstruction(config, base_dir)
    if epochs is not None:
        n_epochs = _check_epochs("--epochs", epochs)
    if rec.output_dir is None:
        rec, _ = _geometry_step(config, base_dir, rec, geometry, None)
        return rec.run(n_epochs)
    comm = rec.communicator
    if not comm.is_root:  # rank 0 alone looks at (and writes) the folder; the rest follow
        rec, _ = _geometry_step(config, base_dir, rec, geometry, _recorded(rec, mode),
                                quiet=True)
        rec.initialize()
        if comm.broadcast_flag(False):
            n_epochs = max(0, n_epochs - rec.load_checkpoint())
        return rec.run(n_epochs)
    with FolderLock(rec.output_dir) as lock:
        rec, findings = _geometry_step(config, base_dir, rec, geometry, _recorded(rec, mode))
        rec.hold_folder_lock(lock)
        rec.initialize()
        resuming = check_compatible(rec.output_dir, run_fingerprint(rec), mode)
        if not resuming and mode == "overwrite":
            removed = OutputFolder(rec.output_dir).clear_run()
            if removed:
                print(f"ptyframe: overwriting the run in {rec.output_dir}", flush=True)
        if not resuming:  # a fresh run: its geometry (or none) is the one recorded
            if findings is not None:
                write_geometry(rec.output_dir, findings)
            else:
                remove_geometry(rec.output_dir)
        if comm.broadcast_flag(resuming):
            done = rec.load_checkpoint()
            print(f"ptyframe: resuming from epoch {done} in {rec.output_dir}", flush=True)
            n_epochs = max(0, n_epochs - done)
        return rec.run(n_epochs)


def _recorded(rec: Reconstruction, mode: str) -> GeometryFindings | None:
    """The geometry recorded with the checkpoint a run may resume (None: a fresh run)."""
    if mode == "overwrite" or not has_checkpoint(rec.output_dir):
        return None
    return read_geometry(rec.output_dir)


def _geometry_step(config: Mapping[str, Any], base_dir: str | Path, rec: Reconstruction,
                   settings: GeometrySettings, recorded: GeometryFindings | None,
                   quiet: bool = False) -> tuple[Reconstruction, GeometryFindings | None]:
    """Run the geometry step of ``settings`` on the reconstruction's data (or reuse the
    ``recorded`` findings of the run being resumed) and, in mode "auto", rebuild the
    reconstruction with the findings applied. Returns (reconstruction, findings to record)."""
    if settings.mode == "off":
        return rec, None
    if recorded is not None:  # a resume uses the recorded geometry, never a recomputed one
        if not quiet:
            report(recorded, reused=True)
        findings = recorded
    else:
        findings = find_geometry(rec.dataset, rec.experiment, settings, device=rec.device,
                                 registry=rec.registry)
        if not quiet:
            report(findings)
        if settings.mode == "check":
            return rec, None
        require_confidence(findings, settings)
    if settings.mode == "check":
        return rec, None
    applied = apply_geometry(config, findings, rec.experiment, settings.apply)
    rebuilt, _ = build_reconstruction(applied, base_dir, registry=rec.registry)
    return rebuilt, findings


def validate_config_file(path: str | Path, overrides: list[str] = (), write_output: bool = True
                         ) -> tuple[Reconstruction, int]:
    """Build everything a run would (data opened and scanned, metadata read, components
    resolved and validated) without running; returns (reconstruction, epochs).
    ``write_output=False`` drops the output folder (for a trial epoch that writes nothing)."""
    path = Path(path)
    config = apply_overrides(load_config(path), list(overrides))
    if not write_output:
        config["output"] = dict(_section(config, "output"), dir=None)
        config.pop("output_dir", None)
    return build_reconstruction(config, path.parent)


def run_config_file(path: str | Path, output: str | Path | None = None,
                    epochs: int | None = None, overrides: list[str] = (),
                    resume: bool | str = True) -> ReconstructionResult:
    """Run the reconstruction described by a .toml/.json file (the ``ptyframe run`` command);
    ``overrides`` are ``key=value`` settings applied on top (see :func:`apply_overrides`);
    ``resume``: True/"auto" continues the folder's own run, "resume" also a changed one,
    "overwrite"/False starts afresh."""
    path = Path(path)
    config = apply_overrides(load_config(path), list(overrides))
    result = run_config(config, base_dir=path.parent, output=output, epochs=epochs,
                        resume=resume)
    if launcher_rank() != 0:
        return result  # rank 0 alone reports
    where = f" in {result.output_dir}" if result.output_dir is not None else ""
    final = result.loss[-1] if result.loss else float("nan")
    logging.getLogger("ptyframe").info("finished %d epochs, loss %.6g%s", result.epochs, final,
                                       where)
    return result
