"""The ``ptyframe`` command: ``plugins``, ``run CONFIG``, ``validate CONFIG``, ``inspect DATA``,
``info``, ``plot DIR``, ``export DIR``, ``demo``, ``migrate``, ``docs``, ``direct`` and
``geometry DATA``;
``--version``.

``--verbose``/``--quiet`` (before the command) set the level of the ``ptyframe`` logger,
whose messages go to standard error: the per-epoch lines of a run, files written, warnings.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from ptyframe.apps.errors import report_failure
from ptyframe.registry.loader import (
    PluginLoadWarning,
    installed_plugins,
    load_registry,
    unmatched_blocks,
)

__all__ = ["build_parser", "main"]

_TABLE_HEADER = ("kind", "name", "aliases", "plugin", "distribution", "version", "summary")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ptyframe`` command."""
    parser = argparse.ArgumentParser(
        prog="ptyframe", description="Plugin-based phase retrieval for TEM/STEM.")
    parser.add_argument("--version", action="version", version=f"ptyframe {_version()}")
    level = parser.add_mutually_exclusive_group()
    level.add_argument("-v", "--verbose", action="store_true",
                       help="also debug messages (and every loss term in a run's lines)")
    level.add_argument("-q", "--quiet", action="store_true",
                       help="warnings and errors only (no progress display)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("plugins", help="list the installed components and their plugins")
    p.add_argument("--strict", action="store_true",
                   help="fail on a plugin that cannot be loaded instead of warning")
    p.add_argument("--block", action="append", default=[], metavar="NAME",
                   help="skip a plugin (entry-point name, dist:name or distribution); repeatable")

    p = sub.add_parser("run", help="run a reconstruction described by a TOML/JSON file")
    p.add_argument("config", metavar="CONFIG", help="configuration file")
    p.add_argument("--output", metavar="DIR", default=None, help="output folder")
    p.add_argument("--epochs", type=int, metavar="N", default=None,
                   help="number of epochs (overrides the configuration)")
    _add_override_arguments(p)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", dest="mode", action="store_const", const="resume",
                      default="auto", help="continue the checkpoint in the output folder even "
                      "when the configuration or data changed (the change is recorded)")
    mode.add_argument("--overwrite", dest="mode", action="store_const", const="overwrite",
                      help="discard the run in the output folder and start afresh")
    p.add_argument("--gpus", metavar="IDS", default=None,
                   help="one MPI rank per GPU of this node, e.g. 0,1,2,3 (starts mpiexec)")
    p.add_argument("--geometry", choices=("off", "check", "auto"), default=None,
                   help="geometry step before iterating (overrides [geometry] mode): find the "
                        "scan rotation, transpose and defocus by tcBF; check: report only; "
                        "auto: refuse when not confident, else apply")
    p.add_argument("--force-geometry", action="store_true",
                   help="apply the geometry found even when it is not confident")

    p = sub.add_parser("validate", help="check a configuration without running it: data, "
                       "metadata and components are read and validated")
    p.add_argument("config", metavar="CONFIG", help="configuration file")
    p.add_argument("--estimate", action="store_true",
                   help="also run one epoch (writing nothing) and report its time and peak "
                        "memory, and the time of the whole run")
    _add_override_arguments(p)

    p = sub.add_parser("inspect", help="show what ptyframe reads from a data file: shapes, "
                       "metadata and their origin, the bright-field disc")
    p.add_argument("data", metavar="DATA", help="data file")
    p.add_argument("--reader", default=None, metavar="NAME",
                   help="reader name (default: the reader that recognises the file)")
    p.add_argument("--dataset-name", default=None, metavar="PATH",
                   help="HDF5 dataset (default: data, else the single 3D/4D dataset)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   dest="overrides", help="Experiment field replacing the metadata, e.g. "
                   "convergence_angle_mrad=20; repeatable")
    p.add_argument("--template", metavar="CONFIG", default=None,
                   help="also write a ready-to-edit TOML configuration for this file")

    sub.add_parser("info", help="version, Python, devices and optional extras")

    p = sub.add_parser("plot", help="remake the figures of an output folder or result file")
    p.add_argument("source", metavar="OUTPUT_DIR", help="output folder or result file (.nxs)")
    p.add_argument("--to", metavar="DIR", default=None,
                   help="folder for the PNGs (default: OUTPUT_DIR/figures)")

    p = sub.add_parser("export", help="write the NeXus result file of an output folder")
    p.add_argument("folder", metavar="OUTPUT_DIR", help="output folder of a run")
    p.add_argument("--to", metavar="FILE", default=None,
                   help="file to write (default: OUTPUT_DIR/result.nxs)")

    p = sub.add_parser("demo", help="simulate a small dataset and reconstruct it")
    p.add_argument("--output", metavar="DIR", default="ptyframe-demo",
                   help="output folder (default: %(default)s)")
    p.add_argument("--epochs", type=int, metavar="N", default=None, help="number of epochs")
    p.add_argument("--quick", action="store_true", help="a smaller, faster demo")

    p = sub.add_parser("migrate", help="convert a reference-tool parameter file (JSON/TOML) "
                       "into a ptyframe configuration")
    p.add_argument("params", metavar="PARAMS", help="reference parameters (.json or .toml)")
    p.add_argument("--output", metavar="CONFIG", required=True,
                   help="configuration file to write (.json or .toml); arrays go next to it")
    p.add_argument("--convergence-angle-mrad", type=float, metavar="MRAD", default=None,
                   help="probe semi-angle (the reference parameters do not hold it)")

    p = sub.add_parser("docs", help="write the Markdown parameter reference")
    p.add_argument("--output", metavar="FILE", default=None,
                   help="file to write (default: print to stdout)")
    _add_direct_parser(sub)
    _add_geometry_parser(sub)
    return parser


def _format_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


def _cmd_plugins(args: argparse.Namespace) -> int:
    unknown = unmatched_blocks(args.block)
    if unknown:
        raise ValueError(f"--block: {', '.join(map(repr, unknown))} matches no installed plugin; "
                         f"installed: {', '.join(installed_plugins()) or 'none'}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PluginLoadWarning)
        registry = load_registry(strict=args.strict, blocked=args.block)
    for w in caught:
        if issubclass(w.category, PluginLoadWarning):
            print(f"ptyframe: warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    rows = [_TABLE_HEADER] + [
        (e.kind, e.name, ", ".join(e.describe_alias(a) for a in e.aliases) or "-", e.plugin,
         e.distribution, e.version, e.summary)
        for e in registry.entries()
    ] + [
        (e.kind, f"{e.distribution}:{e.name}", "-", e.plugin, e.distribution, e.version,
         f"(only by this name: {e.name!r} is taken) {e.summary}".strip())
        for e in registry.qualified_only()
    ]
    print(_format_table(rows))
    if len(rows) == 1:
        print("(no components registered)")
    for description in registry.blocked:
        print(f"(blocked: {description})")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from ptyframe.apps.launch import gpus_from_environment, launch, parse_gpus

    if args.gpus is not None and gpus_from_environment() is None:
        from ptyframe.apps.config import load_config

        gpus = parse_gpus(args.gpus)
        device = load_config(args.config).get("device", {})
        if isinstance(device, dict) and device.get("kind", "auto") == "cpu":
            raise ValueError("--gpus: the configuration's [device] kind is 'cpu'; expected "
                             "'gpu' or 'auto'")
        extra = [a for k, v in (("--output", args.output), ("--epochs", args.epochs))
                 if v is not None for a in (k, str(v))]
        extra += [a for text in _overrides(args) for a in ("--set", text)]
        if args.mode != "auto":
            extra.append(f"--{args.mode}")
        return launch(args.config, gpus, extra)
    from ptyframe.apps.config import run_config_file

    kwargs: dict[str, object] = {k: v for k, v in (("output", args.output),
                                                   ("epochs", args.epochs)) if v is not None}
    if _overrides(args):
        kwargs["overrides"] = _overrides(args)
    run_config_file(args.config, resume=args.mode, **kwargs)
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ptyframe.io.figures import save_figures
    from ptyframe.io.run_result import open_result

    source = Path(args.source)
    result = open_result(source)
    folder = Path(args.to) if args.to is not None else (
        (source if source.is_dir() else source.parent) / "figures")
    for path in save_figures(result, folder):
        print(f"ptyframe: wrote {path}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ptyframe.io.result_file import export_result

    print(f"ptyframe: wrote {export_result(args.folder, args.to)}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ptyframe.apps.demo import run_demo

    kwargs: dict[str, object] = {"quick": args.quick}
    if args.epochs is not None:
        kwargs["epochs"] = args.epochs
    run_demo(args.output, **kwargs)
    return 0


def _cmd_migrate(args: argparse.Namespace) -> int:
    from ptyframe.apps.migrate import migrate_file

    experiment = ({"convergence_angle_mrad": args.convergence_angle_mrad}
                  if args.convergence_angle_mrad is not None else None)
    result = migrate_file(args.params, args.output, experiment=experiment)
    for note in result.notes:
        print(f"ptyframe: note: {note}", file=sys.stderr)
    print(f"ptyframe: wrote {args.output}")
    return 0


def _cmd_docs(args: argparse.Namespace) -> int:
    from ptyframe.apps.docs_reference import generate_parameter_reference, write_parameter_reference

    if args.output is None:
        sys.stdout.write(generate_parameter_reference())
    else:
        print(f"ptyframe: wrote {write_parameter_reference(args.output)}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from ptyframe.apps.config import validate_config_file

    rec, epochs = validate_config_file(args.config, _overrides(args),
                                       write_output=not args.estimate)
    print(f"ptyframe: {args.config} is valid: {rec.n_measurements} measurements, "
          f"{epochs} epochs")
    if args.estimate:
        from ptyframe.apps.inspect import estimate_epoch

        print(f"ptyframe: estimate: {estimate_epoch(rec, epochs).format()}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ptyframe.apps.config import parse_override
    from ptyframe.apps.inspect import inspect_data, template_config

    overrides = {}
    for text in args.overrides:
        parts, value = parse_override(text)
        overrides[".".join(parts)] = value
    report = inspect_data(args.data, reader=args.reader, dataset_name=args.dataset_name,
                          **overrides)
    sys.stdout.write(report.format())
    if args.template is not None:
        from pathlib import Path

        target = Path(args.template)
        if target.exists():
            raise FileExistsError(f"--template: {str(target)!r} exists; expected a new file")
        target.write_text(template_config(report, target))
        print(f"ptyframe: wrote {target}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import importlib.util
    import platform

    from ptyframe.core.device import cupy_available

    print(f"ptyframe {_version()}")
    print(f"python   {platform.python_version()} ({sys.executable})")
    print(f"devices  cpu{', gpu (CuPy)' if cupy_available() else ' (no CuPy GPU)'}")
    for extra, module in (("formats", "rsciio"), ("gpu", "cupy"), ("docs", "mkdocs")):
        state = "installed" if importlib.util.find_spec(module) is not None else "not installed"
        print(f"extra    {extra}: {state} ({module})")
    return 0


_COMMANDS = {"plugins": _cmd_plugins, "run": _cmd_run, "plot": _cmd_plot, "export": _cmd_export,
             "demo": _cmd_demo,
             "migrate": _cmd_migrate, "docs": _cmd_docs, "validate": _cmd_validate,
             "inspect": _cmd_inspect, "info": _cmd_info}


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("ptyframe")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _add_override_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="set a configuration value, dotted keys for tables (e.g. "
                        "experiment.defocus_A=-100, loss.type=ml, epochs=20, "
                        "data.path=scan.h5 relative to the current folder); repeatable")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default=None,
                   help="device (overrides [device] kind)")


def _overrides(args: argparse.Namespace) -> list[str]:
    """The --set values, with a relative ``data.path`` made relative to the current folder
    (as a command-line path is), --device as ``device.kind``, --geometry as
    ``geometry.mode`` and --force-geometry as ``geometry.force``."""
    out: list[str] = []
    if args.overrides:
        import json
        from pathlib import Path

        from ptyframe.apps.config import parse_override
    for text in args.overrides:
        parts, value = parse_override(text)
        if parts == ["data", "path"] and isinstance(value, str) and not Path(value).is_absolute():
            text = f"data.path={json.dumps(str(Path(value).resolve()))}"
        out.append(text)
    if args.device is not None:
        out.append(f'device.kind="{args.device}"')
    if getattr(args, "geometry", None) is not None:
        out.append(f'geometry.mode="{args.geometry}"')
    if getattr(args, "force_geometry", False):
        out.append("geometry.force=true")
    return out


# -- ``ptyframe direct``: direct methods (DPC, WDD, tcBF) on a data file ----------------------
def _add_direct_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("direct", help="run direct methods (dpc, wdd, tcbf, ...) on a data file "
                       "using its metadata")
    p.add_argument("data", metavar="DATA", help="data file (.h5 or .npy with metadata)")
    p.add_argument("--method", action="append", default=None, metavar="METHOD",
                   help="registry name (dpc, dpc_iterative, wdd, tcbf) or a JSON object such "
                        "as '{\"type\": \"wdd\", \"mode\": \"ssb\"}'; repeatable "
                        "(default: dpc)")
    p.add_argument("--output", metavar="DIR", default=None,
                   help="folder for the <method>/ result folders (default: none written)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--precision", choices=("single", "double"), default="single")
    p.add_argument("--dataset-name", default=None,
                   help="HDF5 dataset (default: data, else the single 3D/4D dataset)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   dest="overrides", help="Experiment field replacing the metadata, e.g. "
                   "defocus_A=-100; repeatable")


def _cmd_direct(args: argparse.Namespace) -> int:
    from ptyframe.apps.config import parse_override
    from ptyframe.apps.direct import parse_method_spec, run_direct_on_file
    from ptyframe.core.device import Device

    methods = [parse_method_spec(m) for m in (args.method or ["dpc"])]
    overrides = {".".join(k): v for k, v in map(parse_override, args.overrides)}
    results = run_direct_on_file(args.data, methods, output_dir=args.output,
                                 device=Device(args.device, args.precision),
                                 dataset_name=args.dataset_name,
                                 experiment_overrides=overrides)
    for name, result in results.items():
        shown = {k: v for k, v in result.values.items()
                 if k in ("rotation_deg", "transpose", "defocus_A", "aberrations_A", "mode")}
        total = result.timings_s.get("run_direct_total", float("nan"))
        where = f" -> {args.output}/{name}" if args.output is not None else ""
        print(f"ptyframe: {name}: {total:.3g} s {shown}{where}")
    return 0


_COMMANDS["direct"] = _cmd_direct


# -- ``ptyframe geometry``: the geometry step alone on a data file ---------------------------
def _add_geometry_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("geometry", help="find the scan rotation, detector transpose, defocus "
                       "and astigmatism of a data file (tcBF, DPC near focus) with a "
                       "confidence figure; exit status 1 when not confident")
    p.add_argument("data", metavar="DATA", help="data file (.h5 or .npy with metadata)")
    p.add_argument("--dataset-name", default=None,
                   help="HDF5 dataset (default: data, else the single 3D/4D dataset)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   dest="overrides", help="Experiment field replacing the metadata, e.g. "
                   "scan_rotation_deg=30; repeatable")
    p.add_argument("--transpose", action="store_true",
                   help="read the detector transposed (as [data] preprocessing transpose)")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    p.add_argument("--precision", choices=("single", "double"), default="single")


def _cmd_geometry(args: argparse.Namespace) -> int:
    from ptyframe.apps.config import parse_override
    from ptyframe.apps.geometry import GeometrySettings, find_geometry, report
    from ptyframe.core.device import Device
    from ptyframe.io.data import Dataset, Preprocessing
    from ptyframe.io.metadata import load_experiment

    overrides = {".".join(k): v for k, v in map(parse_override, args.overrides)}
    experiment = load_experiment(args.data, dataset_name=args.dataset_name, **overrides)
    dataset = Dataset.from_file(args.data, dataset_name=args.dataset_name,
                                scan_shape=experiment.scan_shape,
                                preprocessing=Preprocessing(transpose=args.transpose))
    findings = find_geometry(dataset, experiment, GeometrySettings(mode="check"),
                             device=Device(args.device, args.precision))
    report(findings)
    transpose = args.transpose != findings.transpose
    ab = findings.aberrations_A
    print(f"ptyframe: geometry: as configuration: [experiment] scan_rotation_deg = "
          f"{findings.rotation_deg:.3f}, aberrations = {{C10 = {ab.get('C10', 0.0):.1f}, "
          f"C12a = {ab.get('C12a', 0.0):.1f}, C12b = {ab.get('C12b', 0.0):.1f}}}; [data] "
          f"preprocessing = {{transpose = {str(transpose).lower()}}}")
    return 0 if findings.confident else 1


_COMMANDS["geometry"] = _cmd_geometry


class _StderrHandler(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stderr`` is at the time of each message."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Messages of the ``ptyframe`` logger to standard error: INFO by default, DEBUG with
    ``verbose``, WARNING with ``quiet``. A handler is added once; the root logger is left
    alone so that an application embedding ptyframe keeps its own configuration."""
    logger = logging.getLogger("ptyframe")
    logger.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    if not any(getattr(h, "ptyframe_cli", False) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s ptyframe: %(message)s",
                                               datefmt="%H:%M:%S"))
        handler.ptyframe_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ptyframe`` command; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else 2
    configure_logging(args.verbose, args.quiet)
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("ptyframe: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every failure gets one message; bugs keep their traceback
        return report_failure(exc)
