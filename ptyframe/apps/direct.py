"""Running direct (non-iterative) methods and writing their results.

``run_direct(method, dataset, experiment)`` runs a :class:`~ptyframe.components.DirectMethod`
(an instance, a registry name such as ``"dpc"``, or a configuration ``{"type": "wdd", ...}``)
and, with ``output_dir``, saves the result with :func:`save_direct_result`.

Output layout, ``output_dir/<method>/`` (or another sub-folder ``name``):

=================  ==========================================================================
``NAME.npy``       every array of the result (host NumPy, no pickle)
``NAME.png``       a figure of every 2D array (complex arrays: phase and amplitude side by
                   side), axes in Å when the pixel size is known
``values.json``    ``{"method", "pixel_size_A", "values", "timings_s", "units", "arrays",
                   "config"}``: fitted numbers, wall times per stage (s), array units, and
                   for each array its file, shape and dtype; ``config`` is the method's
                   ``to_config()`` when known
=================  ==========================================================================
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ptyframe.components import DirectMethod, DirectResult
from ptyframe.io.folder_lock import FolderLock
from ptyframe.io.results import atomic_save_npy, atomic_write_bytes, atomic_write_json
from ptyframe.io.safe_paths import UnsafePathError, path_inside, safe_subfolder

__all__ = ["run_direct", "run_direct_on_file", "save_direct_result", "load_direct_result",
           "method_label", "parse_method_spec", "to_jsonable"]


def to_jsonable(value: Any) -> Any:
    """``value`` as plain JSON types: numpy scalars and arrays -> numbers and lists, tuples ->
    lists, non-finite floats -> None, complex -> {"real", "imag"}, paths -> strings."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value) if isinstance(value, (set, frozenset)) else value
        return [to_jsonable(v) for v in items]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, (complex, np.complexfloating)):
        return {"real": to_jsonable(value.real), "imag": to_jsonable(value.imag)}
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, str):
        return value
    to_config = getattr(value, "to_config", None)
    if callable(to_config):
        return to_jsonable(to_config())
    return str(value)


def _safe_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name \
            or "\\" in name or name.startswith("."):
        raise ValueError(f"{what}: expected a plain file name (no path separators), "
                         f"found {name!r}")
    return name


def _save_figure(path: Path, name: str, array: np.ndarray, pixel: tuple[float, float] | None,
                 unit: str | None, title: str,
                 origin: tuple[float, float] = (0.0, 0.0)) -> Path:
    """One PNG of a 2D array (:func:`image_figure`)."""
    return _write_png(path, image_figure(name, array, pixel, unit, title, origin))


def _write_png(path: Path, fig: Any) -> Path:
    """Save a figure atomically; replaces a link at ``path``, never follows it."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return atomic_write_bytes(path, buffer.getvalue())


def image_figure(name: str, array: np.ndarray, pixel: tuple[float, float] | None,
                 unit: str | None, title: str, origin: tuple[float, float] = (0.0, 0.0)
                 ) -> Any:
    """The figure of a 2D array (complex: phase and amplitude), without pyplot global state;
    pixel (0, 0) is drawn at ``origin`` (Å) when ``pixel`` (Å) is given."""
    from matplotlib.figure import Figure  # imported lazily: matplotlib is slow to import

    panels: list[tuple[str, np.ndarray, str | None]]
    if np.iscomplexobj(array):
        panels = [("phase", np.angle(array), "rad"), ("amplitude", np.abs(array), None)]
    else:
        panels = [(name, np.asarray(array, dtype=float), unit)]
    fig = Figure(figsize=(4.2 * len(panels), 3.8), layout="constrained")
    for i, (label, data, u) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        extent = None
        if pixel is not None:
            ny, nx = data.shape
            extent = (origin[1] - 0.5 * pixel[1], origin[1] + (nx - 0.5) * pixel[1],
                      origin[0] + (ny - 0.5) * pixel[0], origin[0] - 0.5 * pixel[0])
            ax.set_xlabel("x (Å)")
            ax.set_ylabel("y (Å)")
        finite = data[np.isfinite(data)]
        vmin, vmax = (float(np.percentile(finite, 0.5)), float(np.percentile(finite, 99.5))) \
            if finite.size else (0.0, 1.0)
        if not vmax > vmin:
            vmin, vmax = vmin - 0.5, vmax + 0.5
        im = ax.imshow(data, cmap="gray", extent=extent, vmin=vmin, vmax=vmax,
                       interpolation="nearest")
        fig.colorbar(im, ax=ax, label=f"{label} ({u})" if u else label, shrink=0.85)
        ax.set_title(f"{title}: {label}" if len(panels) > 1 else title)
    return fig


#: vector arrays (n, 2) drawn as quiver plots: figure -> (position array, [(vectors, label)])
_VECTOR_FIGURES = {
    "shifts": ("group_k_inv_A", [("shifts_A", "measured"), ("shifts_fit_A", "fitted")]),
    "bf_shifts": ("bf_k_inv_A", [("bf_shifts_A", "per bright-field pixel")]),
}


def _save_vector_figures(folder: Path, method: str, arrays: Mapping[str, np.ndarray]
                         ) -> dict[str, str]:
    """Quiver plots of image shifts (Å) against the detector frequency (1/Å) of the pixel or
    group they belong to: measured and fitted on one plot. Returns ``array -> figure``."""
    from matplotlib.figure import Figure

    written: dict[str, str] = {}
    for figure, (where, series) in _VECTOR_FIGURES.items():
        present = [(name, label) for name, label in series if name in arrays
                   and arrays[name].shape == arrays.get(where, np.empty(0)).shape]
        if not present or arrays[where].ndim != 2 or arrays[where].shape[1] != 2:
            continue
        k = arrays[where]
        longest = max(float(np.hypot(*arrays[n].T).max(initial=0.0)) for n, _ in present)
        spacing = float(np.ptp(k[:, 1]) or 1.0) / max(np.sqrt(len(k)), 1.0)
        # the longest arrow about 0.8 of the spacing between neighbouring points
        scale = longest / (0.8 * spacing) if longest > 0 else 1.0
        fig = Figure(figsize=(5.6, 5.4), layout="constrained")
        ax = fig.add_subplot()
        styles = (("tab:blue", 0.008, 0.5), ("tab:red", 0.003, 1.0))
        for (name, label), (colour, width, alpha) in zip(present, styles, strict=False):
            v = arrays[name]
            q = ax.quiver(k[:, 1], k[:, 0], v[:, 1], v[:, 0], color=colour, angles="xy",
                          scale_units="xy", scale=scale, width=width, alpha=alpha,
                          label=label)
        ref = float(np.format_float_positional(longest / 2, precision=1, fractional=False)) \
            if longest > 0 else 1.0
        ax.quiverkey(q, 0.08, 0.04, ref, f"{ref:g} Å shift", labelpos="E",
                     coordinates="axes")
        pad = spacing
        ax.set_xlim(k[:, 1].min() - pad, k[:, 1].max() + pad)
        ax.set_ylim(k[:, 0].min() - pad, k[:, 0].max() + pad)
        ax.set_xlabel("kx (1/Å)")
        ax.set_ylabel("ky (1/Å)")
        ax.set_aspect("equal")
        ax.invert_yaxis()
        ax.set_title(f"{method}: image shift of each bright-field "
                     f"{'group' if figure == 'shifts' else 'pixel'}", fontsize=10)
        if len(present) > 1:
            ax.legend(loc="lower right", fontsize=8)
        _write_png(folder / f"{figure}.png", fig)
        for name, _ in present:
            written[name] = f"{figure}.png"
    return written


def _remove_stale_files(folder: Path, keep: set[str]) -> None:
    """Delete the array files and figures a previous save listed in values.json that the new
    result does not have (so that a folder never mixes two runs)."""
    import json

    path = folder / "values.json"
    if not path.is_file():
        return
    try:
        with open(path, encoding="utf-8") as fh:
            old = json.load(fh).get("arrays", {})
    except (OSError, ValueError, AttributeError):
        return
    for name, entry in old.items() if isinstance(old, dict) else ():
        if name in keep or not isinstance(entry, dict):
            continue
        for key in ("file", "figure"):
            fname = entry.get(key)
            if isinstance(fname, str) and fname == Path(fname).name and fname:
                try:
                    path_inside(folder, fname, "values.json").unlink(missing_ok=True)
                except UnsafePathError:
                    continue  # a crafted entry: leave it alone


def save_direct_result(result: DirectResult, output_dir: str | Path,
                       config: Mapping[str, Any] | None = None, figures: bool = True,
                       name: str | None = None) -> Path:
    """Write ``result`` into ``output_dir/<name or result.method>/`` (see the module
    docstring) and return that folder. ``config``: the method's configuration, stored in
    values.json. Files of an earlier result saved in the same folder are replaced (arrays it
    had and this one has not are removed)."""
    if not isinstance(result, DirectResult):
        raise ValueError(f"result: expected a DirectResult, found {type(result).__name__}")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    folder = safe_subfolder(output_dir, _safe_name(
        name if name is not None else result.method,
        "result.method" if name is None else "name"), "direct result folder")
    _remove_stale_files(folder, set(result.arrays))
    pixel = result.pixel_size_yx_A
    origin = result.values.get("origin_A") or (0.0, 0.0)
    hosts = {name: np.asarray(a.get() if hasattr(a, "get") else a)
             for name, a in result.arrays.items()}
    main_shape = next(iter(hosts.values())).shape if hosts else None
    vector_figures = _save_vector_figures(folder, result.method, hosts) if figures else {}
    index: dict[str, Any] = {}
    for name, host in hosts.items():
        _safe_name(name, "result array name")
        atomic_save_npy(folder / f"{name}.npy", host)
        entry: dict[str, Any] = {"file": f"{name}.npy", "shape": list(host.shape),
                                 "dtype": str(host.dtype)}
        if name in result.units:
            entry["units"] = result.units[name]
        # images only: an (n, 2) list of vectors is not an image (quiver plots above)
        if figures and host.ndim == 2 and min(host.shape) > 2 and host.dtype.kind in "biufc":
            on_grid = host.shape == main_shape  # the method's image grid: pixel and origin
            _save_figure(folder / f"{name}.png", name, host, pixel if on_grid else None,
                         result.units.get(name), f"{result.method} {name}",
                         origin=tuple(origin) if on_grid else (0.0, 0.0))
            entry["figure"] = f"{name}.png"
        elif name in vector_figures:
            entry["figure"] = vector_figures[name]
        index[name] = entry
    record = {
        "method": result.method,
        "pixel_size_A": result.pixel_size_A,
        "values": result.values,
        "timings_s": result.timings_s,
        "units": result.units,
        "arrays": index,
    }
    if config is not None:
        record["config"] = dict(config)
    atomic_write_json(folder / "values.json", to_jsonable(record))
    return folder


def load_direct_result(folder: str | Path) -> DirectResult:
    """Read back a folder written by :func:`save_direct_result` (arrays memory-light: loaded
    with ``allow_pickle=False``)."""
    import json

    folder = Path(folder)
    path = folder / "values.json"
    if not path.is_file():
        raise FileNotFoundError(f"direct result: expected {str(path)!r}")
    with open(path, encoding="utf-8") as fh:
        record = json.load(fh)
    arrays = {name: np.load(path_inside(folder, entry["file"], f"{path} array {name!r}"),
                            allow_pickle=False)
              for name, entry in record.get("arrays", {}).items()}
    return DirectResult(method=record["method"], arrays=arrays,
                        values=record.get("values", {}), pixel_size_A=record.get("pixel_size_A"),
                        timings_s=record.get("timings_s", {}), units=record.get("units", {}))


def _resolve_method(method: Any, registry: Any | None) -> DirectMethod:
    if isinstance(method, DirectMethod):
        return method
    if isinstance(method, str):
        method = {"type": method}
    if isinstance(method, Mapping):
        if registry is None:
            from ptyframe.registry.loader import load_registry

            registry = load_registry()
        return registry.create("direct_method", method)
    raise ValueError(f"method: expected a DirectMethod, a registry name or a configuration "
                     f"{{'type': name, ...}}, found {type(method).__name__}")


def method_label(method: Any) -> str:
    """A folder name for a method given as a name, a configuration or a component: the
    registry name, followed by the settings that differ from the defaults
    (``{"type": "wdd", "mode": "ssb"}`` -> ``"wdd_ssb"``)."""
    import re

    if isinstance(method, str):
        return method
    if isinstance(method, DirectMethod):
        config = method.to_config()
        defaults = type(method)().to_config() if _constructs_from_defaults(type(method)) \
            else {}
    elif isinstance(method, Mapping):
        config, defaults = dict(method), {}
    else:
        raise ValueError(f"method: expected a name, a configuration or a DirectMethod, found "
                         f"{type(method).__name__}")
    parts = [str(config.get("type", "direct"))]
    for key, value in config.items():
        if key == "type" or defaults.get(key, object()) == value:
            continue
        parts.append(value if isinstance(value, str) else f"{key}{value}")
    label = re.sub(r"[^A-Za-z0-9_.+-]+", "", "_".join(str(p) for p in parts))
    return label.strip(".") or "direct"


def _constructs_from_defaults(cls: type) -> bool:
    try:
        cls()
    except (TypeError, ValueError):
        return False
    return True


def run_direct(method: Any, dataset: Any, experiment: Any, device: Any = None,
               output_dir: str | Path | None = None, registry: Any = None,
               name: str | None = None) -> DirectResult:
    """Run a direct method and optionally save its result.

    ``method``: a :class:`DirectMethod`, a registry name (``"dpc"``, ``"wdd"``, ``"tcbf"``,
    ...) or a configuration dict; ``dataset``: a :class:`ptyframe.io.data.Dataset` or an array of
    patterns (N, ky, kx) / (sy, sx, ky, kx); ``experiment``: the
    :class:`~ptyframe.core.experiment.Experiment`; ``device``: a :class:`Device`
    (default: GPU when available, single precision); ``output_dir``: where to write
    ``<method>/`` (None: nothing is written). The total wall time is added to
    ``result.timings_s["run_direct_total"]``. ``name``: the output sub-folder (default: the
    method's registry name).
    """
    from ptyframe.core.device import Device
    from ptyframe.core.experiment import Experiment
    from ptyframe.io.data import Dataset

    if not isinstance(experiment, Experiment):
        raise ValueError(f"experiment: expected a ptyframe Experiment, found "
                         f"{type(experiment).__name__}")
    component = _resolve_method(method, registry)
    if not isinstance(dataset, Dataset):
        arr = np.asarray(dataset)
        dataset = Dataset.from_array(arr, scan_shape=experiment.scan_shape if arr.ndim == 3
                                     else None)
    device = device if device is not None else Device("auto")
    start = time.perf_counter()
    result = component.run(dataset, experiment, device)
    result.timings_s["run_direct_total"] = time.perf_counter() - start
    if output_dir is not None:
        save_direct_result(result, output_dir, config=component.to_config(), name=name)
    return result


def parse_method_spec(spec: str) -> Any:
    """A ``--method`` argument: a registry name (``"dpc"``) or a JSON object
    (``'{"type": "wdd", "mode": "ssb"}'``); parsed with :mod:`json`, never evaluated."""
    import json

    text = spec.strip()
    if text.startswith("{"):
        try:
            config = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"method: expected a name or a JSON object, could not parse "
                             f"{spec!r} ({exc})") from None
        if not isinstance(config, dict):
            raise ValueError(f"method: expected a JSON object, found {spec!r}")
        return config
    if not text:
        raise ValueError("method: expected a registry name such as 'dpc', found ''")
    return text


def run_direct_on_file(path: str | Path, methods: Any, output_dir: str | Path | None = None,
                       device: Any = None, dataset_name: str | None = None,
                       registry: Any = None, experiment_overrides: Mapping[str, Any] | None = None
                       ) -> dict[str, DirectResult]:
    """Run direct methods on a data file using its metadata alone
    (:func:`ptyframe.io.metadata.load_experiment`); returns ``{label: result}`` where the label
    (also the output sub-folder) is the registry name, plus the non-default settings for a
    configuration (:func:`method_label`, e.g. ``wdd_ssb``). ``experiment_overrides``:
    Experiment fields (and ``defocus_A``) replacing what the metadata say."""
    from ptyframe.io.data import Dataset
    from ptyframe.io.metadata import load_experiment

    experiment = load_experiment(path, dataset_name=dataset_name,
                                 **dict(experiment_overrides or {}))
    dataset = Dataset.from_file(path, dataset_name=dataset_name,
                                scan_shape=experiment.scan_shape)
    if isinstance(methods, (str, Mapping, DirectMethod)):
        methods = [methods]
    if registry is None:
        from ptyframe.registry.loader import load_registry

        registry = load_registry()
    out: dict[str, DirectResult] = {}
    components = [_resolve_method(m, registry) for m in methods]
    labels = [m if isinstance(m, str) else method_label(c)
              for m, c in zip(methods, components, strict=True)]
    if len(set(labels)) != len(labels):
        twice = sorted({label for label in labels if labels.count(label) > 1})
        raise ValueError(f"methods: {', '.join(map(repr, twice))} given twice")
    lock = FolderLock(output_dir) if output_dir is not None else contextlib.nullcontext()
    with lock:  # one writer per output folder
        for method, label in zip(components, labels, strict=True):
            out[label] = run_direct(method, dataset, experiment, device=device,
                                    output_dir=output_dir, registry=registry, name=label)
    return out
