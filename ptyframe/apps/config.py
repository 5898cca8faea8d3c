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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ptyframe.apps.launch import gpu_for_rank, gpus_from_environment
from ptyframe.core.device import Device
from ptyframe.core.experiment import Experiment
from ptyframe.engine.communicator import Communicator, launcher_rank, make_communicator
from ptyframe.engine.reconstruction import Reconstruction, ReconstructionResult
from ptyframe.engine.specs import SPEC_CLASSES, OutputSpec, route_settings
from ptyframe.io.data import Dataset, Preprocessing

__all__ = ["load_config", "build_reconstruction", "run_config", "run_config_file"]

#: top-level tables that are not settings of the specifications
_SECTIONS = ("epochs", "data", "experiment", "device", "output", "grid", "seed", "parallel")

#: keys of the [parallel] table
_PARALLEL_KEYS = ("backend", "deterministic", "chunk")


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
    data_path = (base_dir / data_section["path"]).resolve() if "path" in data_section else None
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
    epochs = config.get("epochs", 50)
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise ValueError(f"config epochs: expected an integer >= 0, found {epochs!r}")
    return rec, epochs


def build_communicator(section: Mapping[str, Any]) -> Communicator:
    """The communicator of a ``[parallel]`` table (empty: MPI when launched by an MPI
    launcher with more than one rank, else one process)."""
    unknown = set(section) - set(_PARALLEL_KEYS)
    if unknown:
        raise ValueError(f"config [parallel]: unknown keys {sorted(unknown)}; expected some of "
                         f"{list(_PARALLEL_KEYS)}")
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
    if launcher_rank() != 0:
        return result  # rank 0 alone reports
    where = f" in {result.output_dir}" if result.output_dir is not None else ""
    final = result.loss[-1] if result.loss else float("nan")
    print(f"ptyframe: finished {result.epochs} epochs, loss {final:.6g}{where}")
    return result
