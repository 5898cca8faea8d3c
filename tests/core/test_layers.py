"""Import rules: ptyframe/ never imports the first-party plugin packages, and no layer of
ptyframe/ imports a higher one."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "ptyframe"
PLUGINS = ROOT / "plugins"
#: modules with side effects when imported as a script, or that load plugins on purpose
NOT_IMPORTED = {"ptyframe.apps.cli", "ptyframe.__main__"}


def plugin_packages() -> set[str]:
    """Top-level names of the first-party plugin packages (folders in plugins/ and the
    targets of the ``ptyframe`` distribution's entry points)."""
    names = {p.name for p in PLUGINS.iterdir()
             if p.is_dir() and p.name.isidentifier() and not p.name.startswith("_")}
    for ep in importlib.metadata.entry_points(group="ptyframe"):
        if ep.dist is not None and ep.dist.name == "ptyframe":
            names.add(ep.value.split(":")[0].split(".")[0].strip())
    return names


def imported_names(source: str) -> set[str]:
    """Absolute module names imported by ``import``, ``from ... import`` and
    ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            fname = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0]
            if fname in {"import_module", "__import__"} and isinstance(arg, ast.Constant) \
                    and isinstance(arg.value, str):
                found.add(arg.value)
    return found


def core_modules() -> list[str]:
    modules = []
    for path in sorted(CORE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules.append(".".join(parts))
    return modules


def test_plugin_packages_are_known():
    assert plugin_packages(), "no first-party plugin packages found under plugins/"
    assert "ptyframe" not in plugin_packages()


def test_checker_sees_imports():
    source = ("import ptyframe_losses.lsq\nfrom ptyframe_propagators import x\n"
              "import importlib\nimportlib.import_module('ptyframe_optimizers')\n"
              "from .registry import Registry\n")
    assert imported_names(source) == {"ptyframe_losses.lsq", "ptyframe_propagators",
                                      "importlib", "ptyframe_optimizers"}


def test_no_core_module_imports_a_plugin_package():
    forbidden = plugin_packages()
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        for name in imported_names(path.read_text(encoding="utf-8")):
            if name.split(".")[0] in forbidden:
                offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not offenders, "ptyframe/ must reach plugins only via the registry:\n" + "\n".join(
        offenders)


def test_importing_core_loads_no_plugin_package():
    modules = [m for m in core_modules() if m not in NOT_IMPORTED]
    script = (
        "import importlib, json, sys\n"
        f"modules, prefixes = {modules!r}, {sorted(plugin_packages())!r}\n"
        "for m in modules:\n"
        "    importlib.import_module(m)\n"
        "loaded = sorted(n for n in sys.modules\n"
        "                if any(n == p or n.startswith(p + '.') for p in prefixes))\n"
        "print(json.dumps(loaded))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing the core loaded plugin packages: {loaded}"


#: the layers of ptyframe/, lowest first; a module may import its own layer and lower ones
LAYERS = ("core", "components", "registry", "io", "engine", "testing", "apps")


def test_no_layer_imports_a_higher_one():
    rank = {name: i for i, name in enumerate(LAYERS)}
    assert {p.name for p in CORE.iterdir() if p.is_dir() and not p.name.startswith("_")} \
        == set(LAYERS), "a folder of ptyframe/ is missing from LAYERS"
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        parts = path.relative_to(CORE).parts
        if len(parts) < 2:
            continue  # ptyframe/__init__.py and __main__.py sit above every layer
        for name in imported_names(path.read_text(encoding="utf-8")):
            pieces = name.split(".")
            if pieces[0] == "ptyframe" and len(pieces) > 1 and pieces[1] in rank \
                    and rank[pieces[1]] > rank[parts[0]]:
                offenders.append(f"{path.relative_to(ROOT)} ({parts[0]}) imports {name}")
    assert not offenders, "a lower layer imports a higher one:\n" + "\n".join(offenders)
