"""The ``ptyframe`` command: ``plugins``, ``run CONFIG`` and ``demo``."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from .plugins import PluginLoadWarning, load_registry
from .registry import ComponentNotFound, PluginError

__all__ = ["build_parser", "main"]

_TABLE_HEADER = ("kind", "name", "plugin", "distribution", "version")


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

    p = sub.add_parser("demo", help="simulate a small dataset and reconstruct it")
    p.add_argument("--output", metavar="DIR", default="ptyframe-demo",
                   help="output folder (default: %(default)s)")
    p.add_argument("--epochs", type=int, metavar="N", default=None, help="number of epochs")
    p.add_argument("--quick", action="store_true", help="a smaller, faster demo")
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
        (e.kind, e.name, e.plugin, e.distribution, e.version) for e in registry.entries()
    ]
    print(_format_table(rows))
    if len(rows) == 1:
        print("(no components registered)")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from .config import run_config_file

    kwargs = {k: v for k, v in (("output", args.output), ("epochs", args.epochs))
              if v is not None}
    run_config_file(args.config, **kwargs)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    kwargs: dict[str, object] = {"quick": args.quick}
    if args.epochs is not None:
        kwargs["epochs"] = args.epochs
    run_demo(args.output, **kwargs)
    return 0


_COMMANDS = {"plugins": _cmd_plugins, "run": _cmd_run, "demo": _cmd_demo}


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
