"""The ``ptyframe`` command: ``plugins``, ``run CONFIG``, ``demo``, ``migrate`` and ``docs``."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from ptyframe.registry.loader import PluginLoadWarning, load_registry
from ptyframe.registry.registry import ComponentNotFound, PluginError

__all__ = ["build_parser", "main"]

_TABLE_HEADER = ("kind", "name", "aliases", "plugin", "distribution", "version", "summary")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ptyframe`` command."""
    parser = argparse.ArgumentParser(
        prog="ptyframe", description="Plugin-based phase retrieval for TEM/STEM.")
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
    p.add_argument("--gpus", metavar="IDS", default=None,
                   help="one MPI rank per GPU of this node, e.g. 0,1,2,3 (starts mpiexec)")

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
    return parser


def _format_table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(line.rstrip() for line in lines)


def _cmd_plugins(args: argparse.Namespace) -> int:
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
    ]
    print(_format_table(rows))
    if len(rows) == 1:
        print("(no components registered)")
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
        return launch(args.config, gpus, extra)
    from ptyframe.apps.config import run_config_file

    kwargs = {k: v for k, v in (("output", args.output), ("epochs", args.epochs))
              if v is not None}
    run_config_file(args.config, **kwargs)
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


_COMMANDS = {"plugins": _cmd_plugins, "run": _cmd_run, "demo": _cmd_demo,
             "migrate": _cmd_migrate, "docs": _cmd_docs}


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
    p.add_argument("--dataset-name", default="data", help="HDF5 dataset (default: data)")


def _cmd_direct(args: argparse.Namespace) -> int:
    from ptyframe.apps.direct import parse_method_spec, run_direct_on_file
    from ptyframe.core.device import Device

    methods = [parse_method_spec(m) for m in (args.method or ["dpc"])]
    results = run_direct_on_file(args.data, methods, output_dir=args.output,
                                 device=Device(args.device, args.precision),
                                 dataset_name=args.dataset_name)
    for name, result in results.items():
        shown = {k: v for k, v in result.values.items()
                 if k in ("rotation_deg", "transpose", "defocus_A", "aberrations_A", "mode")}
        total = result.timings_s.get("run_direct_total", float("nan"))
        where = f" -> {args.output}/{name}" if args.output is not None else ""
        print(f"ptyframe: {name}: {total:.3g} s {shown}{where}")
    return 0


_COMMANDS["direct"] = _cmd_direct


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ptyframe`` command; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return _COMMANDS[args.command](args)
    except (ValueError, OSError, PluginError, ComponentNotFound) as exc:
        print(f"ptyframe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ptyframe: interrupted", file=sys.stderr)
        return 130
