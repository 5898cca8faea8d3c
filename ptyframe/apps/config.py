"""Configuration files (TOML or JSON) -> a ready-to-run :class:`Reconstruction`.

Layout (TOML shown; JSON has the same structure)::

    epochs = 50
    n_slices = 1
    [data]
    path = "scan.h5"            # relative paths are relative to the config file
    # preprocessing = {pad = 0, bin = 1, flip_ky = false, ...}
    [experiment]
    from_metadata = true        # voltage, aperture, calibration, scan from the file's metadata
    # any Experiment field overrides, e.g. convergence_angle_mrad = 20.0
    [propagator]
    type = "multislice"
    slice_thickness_A = 2.0
    [loss]
    type = "lsq_sqrt"
    [refine]
    object = true
    probe = {type = "from", start = 5}
    positions = false
    [output]
    dir = "out"
    checkpoint_every = 10

Components are ``{"type": name, ...settings}`` tables resolved by name through the registry;
schedules are ``{"type": "every" | "from" | "until" | "piecewise" | "linear", ...}`` or plain
values. Nothing in a configuration is ever evaluated as code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from ptyframe.core.device import Device
from ptyframe.core.experiment import Experiment
from ptyframe.engine.reconstruction import Reconstruction, ReconstructionResult
from ptyframe.engine.run_record import RESUME_MODES, check_compatible, run_fingerprint
from ptyframe.engine.specs import SPEC_CLASSES, OutputSpec, located, route_settings
from ptyframe.io.data import Dataset, Preprocessing
from ptyframe.io.folder_lock import FolderLock
from ptyframe.io.results import OutputFolder

__all__ = ["load_config", "build_reconstruction", "run_config", "run_config_file"]

#: top-level tables that are not settings of the specifications
_SECTIONS = ("epochs", "data", "experiment", "device", "output", "grid", "seed")


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


def _section(config: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = config.get(key, {})
    if not isinstance(value, Mapping):
        raise ValueError(f"config [{key}]: expected a table, found {type(value).__name__}")
    return dict(value)


def _build_data(section: dict[str, Any], base_dir: Path, scan_shape: Any) -> Dataset:
    if "path" not in section:
        raise ValueError("config [data]: expected a 'path' to an .h5 or .npy file, found none")
    unknown = set(section) - {"path", "dataset", "preprocessing", "dtype"}
    if unknown:
        raise ValueError(f"config [data]: unknown keys {sorted(unknown)}; expected path, "
                         "dataset, preprocessing, dtype")
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
    return Dataset.from_file(path, dataset_name=section.get("dataset", "data"),
                             scan_shape=scan_shape, preprocessing=preprocessing)


def _data_path(section: Mapping[str, Any]) -> str:
    path = section["path"]
    if not isinstance(path, str) or not path:
        raise ValueError(f"config [data] path: expected a file name (a string), found "
                         f"{type(path).__name__} {path!r}")
    return path


def _build_experiment(section: dict[str, Any], data_path: Path | None) -> Experiment:
    from_metadata = bool(section.pop("from_metadata", False))
    if from_metadata:
        if data_path is None:
            raise ValueError("config [experiment]: from_metadata needs [data] path")
        from ptyframe.io.metadata import load_experiment

        return load_experiment(data_path, **section)
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
    settings = {k: v for k, v in config.items() if k not in _SECTIONS}
    try:
        routed = route_settings(_component_tables(settings, base_dir))
    except TypeError as exc:
        raise ValueError(f"config: {exc}") from None
    data_section = _section(config, "data")
    data_path = ((base_dir / _data_path(data_section)).resolve() if "path" in data_section
                 else None)
    experiment = _build_experiment(_section(config, "experiment"), data_path)
    dataset = _build_data(data_section, base_dir, experiment.scan_shape)
    if "dtype" in data_section:
        routed["reading"].setdefault("data_dtype", data_section["dtype"])
    output = _section(config, "output")
    unknown = set(output) - set(OutputSpec.field_names())
    if unknown:
        raise ValueError(f"config [output]: unknown keys {sorted(unknown)}; expected some of "
                         f"{sorted(OutputSpec.field_names())}")
    if output.get("dir") is not None:
        output["dir"] = str(base_dir / output["dir"])
    routed["output"].update(output)
    specs = {key: cls.from_config(routed[key], registry) for key, cls in SPEC_CLASSES.items()}
    seed = config.get("seed", 0)
    rec = Reconstruction(dataset, experiment, **specs, device=Device(**_section(config, "device")),
                         seed=seed, registry=registry, base_dir=base_dir)
    return rec, _check_epochs("config epochs", config.get("epochs", 50))


def _check_epochs(where: str, epochs: Any) -> int:
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise ValueError(f"{where}: expected an integer >= 0, found {epochs!r}")
    return epochs


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
    rec, n_epochs = build_reconstruction(config, base_dir)
    if epochs is not None:
        n_epochs = _check_epochs("--epochs", epochs)
    if rec.output_dir is None:
        return rec.run(n_epochs)
    with FolderLock(rec.output_dir) as lock:
        rec.hold_folder_lock(lock)
        rec.initialize()
        if check_compatible(rec.output_dir, run_fingerprint(rec), mode):
            done = rec.load_checkpoint()
            print(f"ptyframe: resuming from epoch {done} in {rec.output_dir}", flush=True)
            n_epochs = max(0, n_epochs - done)
        elif mode == "overwrite":
            removed = OutputFolder(rec.output_dir).clear_run()
            if removed:
                print(f"ptyframe: overwriting the run in {rec.output_dir}", flush=True)
        return rec.run(n_epochs)


def run_config_file(path: str | Path, output: str | Path | None = None,
                    epochs: int | None = None, resume: bool | str = True
                    ) -> ReconstructionResult:
    """Run the reconstruction described by a .toml/.json file (the ``ptyframe run`` command)."""
    path = Path(path)
    config = load_config(path)
    result = run_config(config, base_dir=path.parent, output=output, epochs=epochs,
                        resume=resume)
    where = f" in {result.output_dir}" if result.output_dir is not None else ""
    final = result.loss[-1] if result.loss else float("nan")
    print(f"ptyframe: finished {result.epochs} epochs, loss {final:.6g}{where}")
    return result
