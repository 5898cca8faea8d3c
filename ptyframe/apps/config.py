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

from ptyframe.core.device import Device
from ptyframe.core.experiment import Experiment
from ptyframe.engine.reconstruction import DEFAULT_COMPONENTS, Reconstruction, ReconstructionResult
from ptyframe.io.data import Dataset, Preprocessing

__all__ = ["load_config", "build_reconstruction", "run_config", "run_config_file"]

#: top-level settings passed to :class:`Reconstruction` as they are (arrays: .npy paths
#: relative to the config file, or nested lists; schedules: tables)
_PASSTHROUGH = (
    "n_slices", "n_probe_modes", "n_object_modes", "batch_size", "object_margin_px", "seed",
    "progress", "tilt_mode", "tilts", "beam_current", "static_background", "aberrations_array",
    "aberration_marker", "probe_marker", "phase_plates", "initial_object", "initial_probe",
    "sequence", "use_full_fov", "loss_weight", "reset_history", "load_one_by_one",
    "allow_subpixel_shift", "dynamically_resize_object", "verbosity", "data_dtype",
)
_REFINE_BLOCKS = ("object", "probe", "positions", "tilts", "beam_current",
                  "static_background", "aberrations")

_TOP_LEVEL = {
    "epochs", "data", "experiment", "refine", "regularizers", "constraints", "device",
    "output", "grid", *_PASSTHROUGH, *DEFAULT_COMPONENTS,
}


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
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"config: {path} is not valid JSON: {exc}") from None
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
    path = (base_dir / section["path"]).resolve()
    preprocessing = Preprocessing(**section.get("preprocessing", {}))
    return Dataset.from_file(path, dataset_name=section.get("dataset", "data"),
                             scan_shape=scan_shape, preprocessing=preprocessing)


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


def build_reconstruction(config: Mapping[str, Any], base_dir: str | Path = ".",
                         registry: Any | None = None) -> tuple[Reconstruction, int]:
    """Assemble a Reconstruction (and the number of epochs to run) from a config dict."""
    unknown = set(config) - _TOP_LEVEL
    if unknown:
        raise ValueError(f"config: unknown keys {sorted(unknown)}; expected some of "
                         f"{sorted(_TOP_LEVEL)}")
    base_dir = Path(base_dir)
    if registry is None:
        from ptyframe.registry.loader import load_registry

        registry = load_registry()
    data_section = _section(config, "data")
    data_path = (base_dir / data_section["path"]).resolve() if "path" in data_section else None
    experiment = _build_experiment(_section(config, "experiment"), data_path)
    dataset = _build_data(data_section, base_dir, experiment.scan_shape)

    components: dict[str, Any] = {}
    for kind in DEFAULT_COMPONENTS:
        if kind in config:
            components[kind] = registry.create(kind, _resolve_paths(_section(config, kind),
                                                                    base_dir))
    regularizers = [registry.create("regularizer", _resolve_paths(c, base_dir))
                    for c in config.get("regularizers", [])]
    constraints = [registry.create("constraint", _resolve_paths(c, base_dir))
                   for c in config.get("constraints", [])]
    refine = _section(config, "refine")
    unknown_refine = set(refine) - set(_REFINE_BLOCKS)
    if unknown_refine:
        raise ValueError(f"config [refine]: unknown blocks {sorted(unknown_refine)}; expected "
                         f"some of {', '.join(_REFINE_BLOCKS)}")
    device_cfg = _section(config, "device")
    output = _section(config, "output")
    unknown_output = set(output) - {"dir", "save_every", "checkpoint_every", "save_loss_log"}
    if unknown_output:
        raise ValueError(f"config [output]: unknown keys {sorted(unknown_output)}")
    out_dir = output.get("dir")
    settings = {key: config[key] for key in _PASSTHROUGH if key in config}
    settings.setdefault("object_margin_px", 8)
    if "dtype" in data_section:
        settings["data_dtype"] = data_section["dtype"]
    rec = Reconstruction(
        dataset, experiment, **components, **settings,
        **{f"refine_{block}": refine[block] for block in _REFINE_BLOCKS if block in refine},
        regularizers=regularizers, constraints=constraints,
        device=Device(**device_cfg),
        output_dir=(base_dir / out_dir) if out_dir is not None else None,
        save_every=output.get("save_every", 1),
        checkpoint_every=output.get("checkpoint_every"),
        registry=registry, base_dir=base_dir,
    )
    epochs = config.get("epochs", 50)
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"config epochs: expected an integer >= 0, found {epochs!r}")
    return rec, epochs


def run_config(config: Mapping[str, Any], base_dir: str | Path = ".",
               output: str | Path | None = None, epochs: int | None = None,
               resume: bool = True) -> ReconstructionResult:
    """Build and run; ``output``/``epochs`` override the config. Resumes from a checkpoint
    already in the output folder when ``resume`` is true."""
    config = dict(config)
    if output is not None:
        config["output"] = dict(_section(config, "output"), dir=str(Path(output).resolve()))
    rec, n_epochs = build_reconstruction(config, base_dir)
    if epochs is not None:
        n_epochs = epochs
    if resume and rec.output_dir is not None and (rec.output_dir / "state.json").exists():
        done = rec.load_checkpoint()
        n_epochs = max(0, n_epochs - done)
    return rec.run(n_epochs)


def run_config_file(path: str | Path, output: str | Path | None = None,
                    epochs: int | None = None) -> ReconstructionResult:
    """Run the reconstruction described by a .toml/.json file (the ``ptyframe run`` command)."""
    path = Path(path)
    config = load_config(path)
    result = run_config(config, base_dir=path.parent, output=output, epochs=epochs)
    where = f" in {result.output_dir}" if result.output_dir is not None else ""
    final = result.loss[-1] if result.loss else float("nan")
    print(f"ptyframe: finished {result.epochs} epochs, loss {final:.6g}{where}")
    return result
