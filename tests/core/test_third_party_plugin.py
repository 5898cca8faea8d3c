"""The example third-party plugin (examples/third_party_plugin), installed as a user would.

The distribution is installed with pip into a temporary ``--target`` folder (offline: no index,
no build isolation), which the tests put on sys.path; nothing is installed into the
environment. Where this environment cannot build a wheel offline (setuptools < 70.1 without
the ``wheel`` package), setuptools itself writes the same installation: the package and an
``.egg-info`` with the entry points declared in pyproject.toml.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ptyframe import Device, Reconstruction
from ptyframe.apps.cli import main
from ptyframe.components import LossMetric
from ptyframe.registry.loader import load_registry
from ptyframe.testing import check_gradient, prepared
from ptyframe.testing.simulate import simulate_dataset

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "third_party_plugin"
DIST = "ptyframe-example-plugin"
PACKAGE = "ptyframe_example_plugin"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PIP_USER="0",
               PYTHONDONTWRITEBYTECODE="1")
    return env


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=300, check=False)


def _can_build_wheels_offline() -> bool:
    """setuptools >= 70.1 builds wheels by itself; older ones need the ``wheel`` package."""
    import setuptools

    try:
        major, minor = (int(part) for part in setuptools.__version__.split(".")[:2])
    except ValueError:
        return True  # unknown version: let pip try
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


def _install(source: Path, target: Path) -> str:
    """Install ``source`` into ``target``; returns how ("pip" or "setuptools")."""
    if not _can_build_wheels_offline():
        return _install_with_setuptools(source, target, "")
    pip = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                "--no-index", "--no-cache-dir", "--target", str(target), str(source)],
               cwd=source)
    if pip.returncode == 0:
        return "pip"
    output = pip.stdout + pip.stderr
    if "bdist_wheel" not in output:
        pytest.fail(f"pip install of {source} failed:\n{output[-4000:]}")
    return _install_with_setuptools(source, target, output)


def _install_with_setuptools(source: Path, target: Path, pip_output: str) -> str:
    """No offline wheel builder here: let setuptools write the installation directly."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    direct = _run([sys.executable, "-c", "from setuptools import setup; setup()", "-q",
                   "egg_info", "--egg-base", str(target), "build_py", "--build-lib",
                   str(target)], cwd=source)
    if direct.returncode != 0:
        pip_said = f"\n\npip said:\n{pip_output[-2000:]}" if pip_output else ""
        pytest.fail(f"setuptools could not install {source}:\n"
                    f"{(direct.stdout + direct.stderr)[-4000:]}{pip_said}")
    return "setuptools"


def _installed_in_environment() -> bool:
    try:
        importlib.metadata.distribution(DIST)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(site folder, copy of the example source, install method), built once per module.

    The source is copied first: an in-tree build writes build/ and *.egg-info folders."""
    root = tmp_path_factory.mktemp("third_party_plugin")
    source = root / "src"
    shutil.copytree(EXAMPLE, source,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = root / "site"
    method = _install(source, site)
    return site, source, method


@pytest.fixture
def plugin_on_path(installed, monkeypatch):
    """The example plugin importable for one test; sys.path and sys.modules restored after."""
    was_installed = _installed_in_environment()
    site, _source, _method = installed
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("PTYFRAME_BLOCK_PLUGINS", raising=False)
    monkeypatch.delenv("PTYFRAME_STRICT_PLUGINS", raising=False)
    importlib.invalidate_caches()
    yield site
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[name]
    monkeypatch.undo()
    importlib.invalidate_caches()
    if not was_installed:
        assert not _installed_in_environment(), f"{DIST} leaked into the environment"


def _phase_correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    return float(np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)))


# -- installation and discovery ----------------------------------------------------------------
def test_installed_into_the_target_only(installed):
    site, source, method = installed
    assert (site / PACKAGE / "__init__.py").is_file()
    metadata = [p.name for p in site.iterdir() if p.suffix in (".dist-info", ".egg-info")]
    assert len(metadata) == 1, metadata
    entry_points = (site / metadata[0] / "entry_points.txt").read_text(encoding="utf-8")
    assert "[ptyframe]" in entry_points and f"example = {PACKAGE}" in entry_points
    # the repository's example folder is untouched by the build (it happened in the copy)
    assert not (EXAMPLE / "build").exists()
    assert not list(EXAMPLE.rglob("*.egg-info"))
    assert method in ("pip", "setuptools")


def test_registry_lists_the_component_with_its_distribution(plugin_on_path):
    registry = load_registry(strict=True)
    entry = registry.entry("loss", "huber_sqrt")
    assert entry.distribution == DIST
    assert entry.plugin == "example"
    assert entry.version == "0.1.0"
    assert issubclass(entry.cls, LossMetric)
    assert entry.cls.__module__ == f"{PACKAGE}.huber"
    assert Path(sys.modules[PACKAGE].__file__).is_relative_to(plugin_on_path)
    # the first-party components are still there, next to the third-party one
    assert {"lsq_sqrt", "ml", "huber_sqrt"} <= set(registry.names("loss"))
    loss = registry.create("loss", {"type": "huber_sqrt", "delta": 0.75})
    assert loss.to_config() == {"type": "huber_sqrt", "delta": 0.75, "epsilon": 1e-6}
    assert registry.create("loss", loss.to_config()).to_config() == loss.to_config()


def test_blocking_the_plugin_skips_it(plugin_on_path, monkeypatch):
    monkeypatch.setenv("PTYFRAME_BLOCK_PLUGINS", DIST)
    assert "huber_sqrt" not in load_registry(strict=True).names("loss")
    monkeypatch.setenv("PTYFRAME_BLOCK_PLUGINS", "example")
    assert "huber_sqrt" not in load_registry(strict=True).names("loss")


def test_cli_plugins_lists_it(plugin_on_path, capsys):
    assert main(["plugins", "--strict"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()]
    row = next((r for r in rows if r[:2] == ["loss", "huber_sqrt"]), None)
    assert row is not None, out
    # kind, name, aliases ("-": none), plugin, distribution, version, summary
    assert row[2:6] == ["-", "example", DIST, "0.1.0"], out
    assert " ".join(row[6:]).startswith("Huber penalty on the amplitude residual"), out


def test_gradient_of_the_installed_loss(plugin_on_path):
    loss = prepared(load_registry().create("loss", {"type": "huber_sqrt", "delta": 1.0}))
    rng = np.random.default_rng(3)
    measured = rng.poisson(20.0, size=(3, 16, 16)).astype(float)
    intensity = rng.uniform(1.0, 60.0, size=measured.shape)
    sqrt_m = loss.prepare_measured(measured)
    value, dldi = loss.value_and_grad(intensity.copy(), sqrt_m)
    assert np.isfinite(value) and value > 0
    residual = np.sqrt(intensity + loss.epsilon) - sqrt_m
    assert np.any(np.abs(residual) > loss.delta) and np.any(np.abs(residual) < loss.delta)
    check_gradient(lambda p: loss.value_and_grad(p["I"].copy(), sqrt_m)[0],
                   {"I": intensity}, {"I": dldi / 2}, "I", rtol=1e-6)


@pytest.mark.slow
def test_the_plugins_own_tests_pass(installed):
    site, source, _method = installed
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join(
        [str(site)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(source / "tests")], cwd=source, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


# -- reconstructions with the third-party loss --------------------------------------------------
@pytest.fixture(scope="module")
def simulated():
    registry = load_registry()
    propagator = registry.create("propagator", {"type": "multislice"})
    clean = simulate_dataset(propagator, window=32, scan_shape=(10, 10), step_A=0.6,
                             defocus_A=50.0, seed=0)
    noisy = simulate_dataset(propagator, window=32, scan_shape=(10, 10), step_A=0.6,
                             defocus_A=50.0, seed=0, dose_per_pattern=1e4)
    return clean, noisy


def _reconstruct(patterns, sim, loss, epochs=30, refine_probe=True):
    rec = Reconstruction(patterns, sim.experiment, positions_A=sim.positions_A, loss=loss,
                         device=Device("cpu", "double"), progress=False,
                         refine_probe=refine_probe)
    result = rec.run(epochs)
    margin = rec.object_margin_px + sim.grid.window[0] // 2  # the scanned area only
    inner = (slice(margin, -margin), slice(margin, -margin))
    assert result.phase.shape == sim.phase.shape
    return result, _phase_correlation(result.phase[inner], sim.phase[inner])


@pytest.mark.slow
def test_reconstruction_with_the_third_party_loss(plugin_on_path, simulated):
    clean, _noisy = simulated
    registry = load_registry()
    loss = registry.create("loss", {"type": "huber_sqrt", "delta": 1.5})
    assert type(loss).__module__ == f"{PACKAGE}.huber"
    result, correlation = _reconstruct(clean.patterns * 1e4, clean, loss)
    assert len(result.loss) == 30 and np.all(np.isfinite(result.loss))
    # measured: loss ratio ~290, phase correlation 0.9994 (30 epochs, probe refined)
    assert result.loss[0] / result.loss[-1] > 50
    assert correlation > 0.99


@pytest.mark.slow
def test_huber_sqrt_resists_hot_pixels(plugin_on_path, simulated):
    """0.5% of the detector pixels get 200-2000 extra counts (patterns hold ~10 per pixel):
    the amplitude least squares follow them, the Huber loss does not."""
    _clean, noisy = simulated
    rng = np.random.default_rng(1)
    patterns = noisy.patterns.copy()
    hot = rng.random(patterns.shape) < 0.005
    patterns[hot] += rng.uniform(200.0, 2000.0, int(hot.sum())).astype(np.float32)
    registry = load_registry()
    _, robust = _reconstruct(patterns, noisy, registry.create("loss", {"type": "huber_sqrt"}),
                             refine_probe=False)
    _, plain = _reconstruct(patterns, noisy, registry.create("loss", {"type": "lsq_sqrt"}),
                            refine_probe=False)
    # measured: huber_sqrt 0.978, lsq_sqrt 0.635
    assert robust > 0.95
    assert robust > plain + 0.15
