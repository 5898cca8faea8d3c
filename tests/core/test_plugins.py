"""Plugin loader, registry and ``ptyframe plugins``, with fake distributions on sys.path."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
import uuid
import warnings
from pathlib import Path

import attrs
import numpy as np
import pytest

from ptyframe.apps.cli import main
from ptyframe.components import Alias, LossMetric
from ptyframe.registry.hookspecs import hookimpl
from ptyframe.registry.loader import PluginLoadWarning, default_registry, load_registry
from ptyframe.registry.registry import (
    AmbiguousComponent,
    ComponentConfigError,
    ComponentNotFound,
    ComponentRecord,
    PluginError,
    Registry,
)
from ptyframe.testing import prepared

#: a private entry-point group, so that most tests never see the first-party plugins
GROUP = "ptyframe_tests_private"

LOSS_SOURCE = '''
import attrs
from ptyframe.components import LossMetric
from ptyframe.registry.loader import hookimpl


@attrs.define
class TinyLsq(LossMetric):
    """Tiny least squares.

    More text.
    """

    name = {name!r}
    weight: float = 1.0

    def value_and_grad(self, intensity, measured):
        r = intensity - measured
        return float(self.weight * (r * r).sum()), 2.0 * self.weight * r


@hookimpl
def ptyframe_register_components():
    return [TinyLsq]
'''


# -- helpers -------------------------------------------------------------------------------------
@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fresh folder on sys.path for fake distributions; their modules are unloaded after."""
    before = set(sys.modules)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("PTYFRAME_BLOCK_PLUGINS", raising=False)
    monkeypatch.delenv("PTYFRAME_STRICT_PLUGINS", raising=False)
    importlib.invalidate_caches()
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("fake_"):
            del sys.modules[name]


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def make_dist(root: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str],
              version: str = "1.0", group: str = GROUP) -> None:
    """Write ``<dist>-<version>.dist-info`` (METADATA, entry_points.txt) and module files."""
    info = root / f"{dist}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8")
    lines = [f"[{group}]"] + [f"{name} = {target}" for name, target in entry_points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    importlib.invalidate_caches()


def loss_plugin(root: Path, dist: str, ep_name: str, component: str, *,
                group: str = GROUP, version: str = "1.0") -> str:
    """A fake distribution whose plugin provides one loss named ``component``."""
    module = unique("fake_mod")
    make_dist(root, dist, {ep_name: module}, {module: LOSS_SOURCE.format(name=component)},
              version=version, group=group)
    return module


def load_quietly(**kwargs) -> tuple[Registry, list[str]]:
    """load_registry(**kwargs) and the messages of the PluginLoadWarnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        registry = load_registry(**kwargs)
    return registry, [str(w.message) for w in caught if w.category is PluginLoadWarning]


@attrs.define
class LocalLoss(LossMetric):
    name = "local_loss"
    scale: float = attrs.field(default=1.0, converter=float)

    @scale.validator
    def _check(self, attribute, value):
        if value <= 0:
            raise ValueError(f"scale: expected > 0, found {value}")

    def value_and_grad(self, intensity, measured):
        r = intensity - measured
        return float(self.scale * (r * r).sum()), 2.0 * self.scale * r


class AbstractLoss(LossMetric):
    name = "abstract_loss"


class NotAComponent:
    kind = "loss"
    name = "not_a_component"


class UnknownKind(LossMetric):
    kind = "no_such_kind"
    name = "unknown_kind"

    def value_and_grad(self, intensity, measured):
        return 0.0, intensity


# -- registry ------------------------------------------------------------------------------------
def test_registry_register_get_create():
    reg = Registry()
    entry = reg.register(LocalLoss)
    assert entry == ComponentRecord(kind="loss", name="local_loss", cls=LocalLoss)
    assert entry.aliases == () and entry.plugin == entry.distribution == "<local>"
    assert reg.get("loss", "local_loss") is LocalLoss
    assert ("loss", "local_loss") in reg and ("loss", "other") not in reg
    assert reg.names("loss") == ["local_loss"] and reg.names("propagator") == []
    assert reg.kinds() == ["loss"] and reg.entries() == [entry] and len(reg) == 1
    loss = reg.create("loss", {"type": "local_loss", "scale": 2})
    assert isinstance(loss, LocalLoss) and loss.scale == 2.0
    value, grad = prepared(loss).value_and_grad(np.ones(3), np.zeros(3))
    assert value == 6.0 and np.allclose(grad, 4.0)
    assert reg.register(LocalLoss) == entry  # same class from the same provider: no-op


def test_registry_not_found_lists_available():
    reg = Registry()
    reg.register(LocalLoss)
    with pytest.raises(ComponentNotFound, match="available: 'local_loss'") as info:
        reg.get("loss", "nope")
    assert isinstance(info.value, KeyError) and "nope" in str(info.value)
    with pytest.raises(KeyError, match="known kinds: .*loss"):
        reg.get("no_such_kind", "x")
    with pytest.raises(ComponentNotFound, match="none registered"):
        reg.create("propagator", {"type": "multislice"})


def test_registry_create_bad_settings_name_component():
    reg = Registry()
    reg.register(LocalLoss)
    with pytest.raises(ComponentConfigError, match="'local_loss'.*unknown setting.*'bogus'"):
        reg.create("loss", {"type": "local_loss", "bogus": 1})
    with pytest.raises(ValueError, match="'local_loss'.*scale: expected > 0"):
        reg.create("loss", {"type": "local_loss", "scale": -1})
    with pytest.raises(ValueError, match="'type'"):
        reg.create("loss", {"scale": 1})


@pytest.mark.parametrize("cls, pattern", [
    (AbstractLoss, "abstract.*value_and_grad"),
    (NotAComponent, "not a component of a known kind"),
    (UnknownKind, "kind 'no_such_kind'"),
    (42, "not a class"),
])
def test_registry_rejects_bad_classes(cls, pattern):
    with pytest.raises(PluginError, match=pattern) as info:
        Registry().register(cls, plugin="myplug", distribution="mydist", version="2.0")
    assert "'myplug'" in str(info.value) and "mydist 2.0" in str(info.value)


def test_registry_rejects_missing_name():
    nameless = attrs.define(type("Nameless", (LocalLoss,), {"name": ""}))
    with pytest.raises(PluginError, match="without a name"):
        Registry().register(nameless, plugin="p", distribution="d")


def test_registry_duplicate_names_both_providers():
    other = attrs.define(type("OtherLoss", (LocalLoss,), {}))
    reg = Registry()
    reg.register(LocalLoss, plugin="first", distribution="dist-a", version="1")
    with pytest.raises(PluginError) as info:
        reg.register(other, plugin="second", distribution="dist-b", version="2")
    message = str(info.value)
    assert "'first'" in message and "dist-a" in message
    assert "'second'" in message and "dist-b" in message and "local_loss" in message


# -- loader --------------------------------------------------------------------------------------
def test_third_party_plugin_is_found(site):
    name = unique("tiny_lsq")
    loss_plugin(site, "fakepkg", "fakeplug", name, version="1.3")
    reg, messages = load_quietly(group=GROUP)
    assert messages == []
    cls = reg.get("loss", name)
    assert issubclass(cls, LossMetric)
    entry = reg.entry("loss", name)
    assert (entry.plugin, entry.distribution, entry.version) == ("fakeplug", "fakepkg", "1.3")
    loss = reg.create("loss", {"type": name, "weight": 0.5})
    value, grad = prepared(loss).value_and_grad(np.full(4, 2.0), np.ones(4))
    assert value == 2.0 and np.allclose(grad, 1.0)
    with pytest.raises(ComponentConfigError, match=f"{name}.*fakeplug.*fakepkg"):
        reg.create("loss", {"type": name, "weihgt": 0.5})


def test_third_party_plugin_in_default_group(site):
    name = unique("tiny_lsq")
    loss_plugin(site, "fakepkg-default", "fakeplug", name, group="ptyframe")
    reg, _ = load_quietly()  # first-party plugins load too; their contents are not checked
    assert reg.entry("loss", name).distribution == "fakepkg-default"
    assert name in default_registry().names("loss")
    assert name not in load_registry(include_entry_points=False).names("loss")


def test_broken_import_warns_and_others_still_load(site):
    good = unique("tiny_lsq")
    loss_plugin(site, "goodpkg", "goodplug", good)
    broken = unique("fake_broken")
    make_dist(site, "brokenpkg", {"brokenplug": broken},
              {broken: "raise ImportError('needs the missing library libfoo')\n"}, version="0.2")
    with pytest.warns(PluginLoadWarning) as record:
        reg = load_registry(group=GROUP)
    message = " ".join(str(w.message) for w in record)
    assert "'brokenplug'" in message and "brokenpkg 0.2" in message and "libfoo" in message
    assert good in reg.names("loss")

    with pytest.raises(PluginError, match="brokenplug.*brokenpkg") as info:
        load_registry(group=GROUP, strict=True)
    assert isinstance(info.value.__cause__, ImportError)


def test_strict_from_environment(site, monkeypatch):
    broken = unique("fake_broken")
    make_dist(site, "brokenpkg", {"brokenplug": broken}, {broken: "import no_such_module_xyz\n"})
    monkeypatch.setenv("PTYFRAME_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="no_such_module_xyz"):
        load_registry(group=GROUP)


def test_failing_hook_and_bad_return_warn(site):
    failing, bad = unique("fake_failing"), unique("fake_bad")
    make_dist(site, "failpkg", {"failplug": failing}, {failing: """
        from ptyframe.registry.loader import hookimpl

        @hookimpl
        def ptyframe_register_components():
            raise RuntimeError("boom in hook")
        """})
    make_dist(site, "badpkg", {"badplug": bad}, {bad: """
        from ptyframe.registry.loader import hookimpl

        @hookimpl
        def ptyframe_register_components():
            return 42
        """})
    reg, messages = load_quietly(group=GROUP)
    assert len(reg) == 0
    assert any("'failplug'" in m and "failpkg" in m and "boom in hook" in m for m in messages)
    assert any("'badplug'" in m and "badpkg" in m and "list" in m for m in messages)


def test_duplicate_between_distributions_names_both(site, tmp_path_factory, monkeypatch):
    name = unique("tiny_lsq")
    loss_plugin(site, "alpha-dist", "alpha", name)
    later = tmp_path_factory.mktemp("earlier_on_path")
    beta = loss_plugin(later, "beta-dist", "beta", name)
    monkeypatch.syspath_prepend(str(later))  # beta-dist now comes first on sys.path
    reg, messages = load_quietly(group=GROUP)
    assert len(messages) == 1
    assert all(s in messages[0] for s in ("'alpha'", "alpha-dist", "'beta'", "beta-dist", name))
    with pytest.raises(AmbiguousComponent) as ambiguous:  # neither is picked silently
        reg.entry("loss", name)
    assert all(s in str(ambiguous.value) for s in (f"'alpha-dist:{name}'", f"'beta-dist:{name}'"))
    kept = reg.entry("loss", f"beta-dist:{name}")  # the user says which
    assert (kept.plugin, kept.distribution, kept.cls.__module__) == ("beta", "beta-dist", beta)
    assert reg.entry("loss", f"Alpha_Dist:{name}").distribution == "alpha-dist"
    assert reg.create("loss", {"type": f"beta-dist:{name}"}).name == name

    with pytest.raises(PluginError) as info:
        load_registry(group=GROUP, strict=True)
    assert all(s in str(info.value) for s in ("alpha-dist", "beta-dist"))


def test_abstract_and_unknown_kind_name_the_plugin(site):
    module = unique("fake_badclasses")
    make_dist(site, "badclasspkg", {"badclasses": module}, {module: f"""
        import attrs
        from ptyframe.components import LossMetric
        from ptyframe.registry.loader import hookimpl

        class Abstract(LossMetric):
            name = "abstract_{module}"

        class NoKind:
            kind = "loss"
            name = "nokind_{module}"

        @attrs.define
        class Good(LossMetric):
            name = "good_{module}"

            def value_and_grad(self, intensity, measured):
                return 0.0, 0 * intensity

        @hookimpl
        def ptyframe_register_components():
            return [Abstract, NoKind, Good]
        """})
    reg, messages = load_quietly(group=GROUP)
    assert reg.names("loss") == [f"good_{module}"]  # bad classes skipped, good one kept
    assert len(messages) == 2
    assert all("'badclasses'" in m and "badclasspkg" in m for m in messages)
    assert any("abstract" in m and "Abstract" in m for m in messages)
    assert any("known kind" in m and "NoKind" in m for m in messages)
    with pytest.raises(PluginError, match="'badclasses'.*abstract"):
        load_registry(group=GROUP, strict=True)


@pytest.mark.parametrize("block", ["brokenplug", "brokenpkg:brokenplug", "brokenpkg",
                                   "BrokenPkg"])
def test_blocking_skips_without_import(site, block):
    broken = unique("fake_broken")
    make_dist(site, "brokenpkg", {"brokenplug": broken}, {broken: "raise ImportError('x')\n"})
    good = unique("tiny_lsq")
    loss_plugin(site, "goodpkg", "goodplug", good)
    reg, messages = load_quietly(group=GROUP, blocked=[block], strict=True)
    assert messages == [] and broken not in sys.modules
    assert reg.names("loss") == [good]


def test_blocking_from_environment(site, monkeypatch):
    name = unique("tiny_lsq")
    loss_plugin(site, "goodpkg", "goodplug", name)
    monkeypatch.setenv("PTYFRAME_BLOCK_PLUGINS", "other, goodplug")
    assert name not in load_registry(group=GROUP).names("loss")


def test_same_distribution_twice_loads_once(site, tmp_path_factory, monkeypatch):
    name = unique("tiny_lsq")
    module = loss_plugin(site, "twicepkg", "twice", name)
    second = tmp_path_factory.mktemp("second_site")
    info = "twicepkg-1.0.dist-info"
    (second / info).mkdir()
    for file in ("METADATA", "entry_points.txt"):
        (second / info / file).write_bytes((site / info / file).read_bytes())
    monkeypatch.syspath_prepend(str(second))
    reg, messages = load_quietly(group=GROUP, strict=True)
    assert messages == [] and reg.get("loss", name).__module__ == module


def test_extra_plugins_are_local():
    class ScriptPlugin:
        @hookimpl
        def ptyframe_register_components(self):
            return [LocalLoss]

    reg = load_registry(include_entry_points=False, extra_plugins=[ScriptPlugin()])
    entry = reg.entry("loss", "local_loss")
    assert (entry.cls, entry.plugin, entry.distribution) == (LocalLoss, "<local>", "<local>")


# -- command line --------------------------------------------------------------------------------
def test_cli_plugins_lists_fake_plugin(site, capsys):
    name = unique("tiny_lsq")
    loss_plugin(site, "fakepkg-cli", "cliplug", name, group="ptyframe", version="4.5.6")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["kind", "name", "aliases", "plugin", "distribution",
                                           "version", "summary"]
    row = next(line for line in out.splitlines() if name in line)
    assert row.split() == ["loss", name, "-", "cliplug", "fakepkg-cli", "4.5.6", "Tiny", "least",
                           "squares."]
    lbfgs = next(line for line in out.splitlines() if line.startswith("optimizer ")
                 and " quasi_newton " in line)
    assert "lbfgs (history_length=10)" in lbfgs and "l-bfgs" in lbfgs and "L-BFGS" in lbfgs

    assert main(["plugins", "--block", "fakepkg-cli"]) == 0
    assert name not in capsys.readouterr().out


def test_cli_plugins_reports_broken_plugin(site, capsys):
    broken = unique("fake_broken")
    make_dist(site, "brokencli", {"brokencliplug": broken},
              {broken: "raise ImportError('kaput')\n"}, group="ptyframe")
    assert main(["plugins"]) == 0
    err = capsys.readouterr().err
    assert "ptyframe: warning:" in err and "brokencliplug" in err and "kaput" in err
    assert main(["plugins", "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ptyframe: error:") and "brokencli" in err
    assert "Traceback" not in err


def test_cli_run_and_demo_delegate(monkeypatch, capsys, tmp_path):
    calls = []
    config = type(sys)("ptyframe.apps.config")
    demo = type(sys)("ptyframe.apps.demo")

    def run_config_file(path, **kwargs):
        calls.append(("run", path, kwargs))
        if path == "missing.toml":
            raise FileNotFoundError("config file missing.toml does not exist")

    def run_demo(output_dir, **kwargs):
        calls.append(("demo", output_dir, kwargs))
        raise ValueError("epochs: expected >= 1, found 0")

    config.run_config_file = run_config_file
    demo.run_demo = run_demo
    monkeypatch.setitem(sys.modules, "ptyframe.apps.config", config)
    monkeypatch.setitem(sys.modules, "ptyframe.apps.demo", demo)

    assert main(["run", "cfg.toml", "--output", str(tmp_path), "--epochs", "3"]) == 0
    assert calls[-1] == ("run", "cfg.toml", {"output": str(tmp_path), "epochs": 3,
                                             "resume": "auto"})
    assert main(["run", "missing.toml"]) == 2
    assert calls[-1] == ("run", "missing.toml", {"resume": "auto"})
    assert capsys.readouterr().err.strip() == (
        "ptyframe: error: config file missing.toml does not exist")
    assert main(["demo", "--quick", "--epochs", "0", "--output", "out"]) == 2
    assert calls[-1] == ("demo", "out", {"quick": True, "epochs": 0})
    assert capsys.readouterr().err.strip() == "ptyframe: error: epochs: expected >= 1, found 0"


def test_cli_usage_errors(capsys):
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["run", "x.toml", "--epochs", "many"]) == 2
    assert main(["--help"]) == 0
    assert "plugins" in capsys.readouterr().out


def test_python_dash_m_ptyframe():
    result = subprocess.run([sys.executable, "-m", "ptyframe", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "plugins" in result.stdout and "demo" in result.stdout


# -- records, aliases, summaries -----------------------------------------------------------------
@attrs.define
class AliasedLoss(LocalLoss):
    """Aliased loss: first line.

    Details that the summary leaves out.
    """

    name = "aliased_loss"
    aliases = ("al", Alias("al_strong", {"scale": 4.0}))


def test_record_carries_aliases_summary_and_provider():
    reg = Registry()
    record = reg.register(AliasedLoss, plugin="p", distribution="d", version="2")
    assert record.aliases == ("al", "al_strong")
    assert record.summary == "Aliased loss: first line."
    assert dict(record.alias_defaults) == {"al_strong": {"scale": 4.0}}
    assert (record.plugin, record.distribution, record.version) == ("p", "d", "2")
    assert reg.names("loss") == ["aliased_loss"]
    assert reg.names("loss", aliases=True) == ["al", "al_strong", "aliased_loss"]
    assert reg.entry("loss", "al") is record and ("loss", "al_strong") in reg


def test_alias_defaults_apply_and_explicit_settings_win():
    reg = Registry()
    reg.register(AliasedLoss)
    assert reg.create("loss", {"type": "al"}).scale == 1.0
    strong = reg.create("loss", {"type": "al_strong"})
    assert isinstance(strong, AliasedLoss) and strong.scale == 4.0
    assert strong.to_config() == {"type": "aliased_loss", "scale": 4.0}  # canonical name
    assert reg.create("loss", {"type": "al_strong", "scale": 2}).scale == 2.0


def test_aliases_and_summary_are_not_inherited():
    child = attrs.define(type("ChildLoss", (AliasedLoss,), {"name": "child_loss"}))
    reg = Registry()
    reg.register(AliasedLoss)
    record = reg.register(child)  # would collide if the parent's aliases were inherited
    assert record.aliases == () and record.summary == ""
    summarised = attrs.define(type("Summarised", (LocalLoss,), {
        "name": "summarised", "summary": "Set   explicitly\n over lines."}))
    assert reg.register(summarised).summary == "Set explicitly over lines."


@pytest.mark.parametrize("clash", ["name_is_alias", "alias_is_name", "alias_is_alias"])
def test_alias_collisions_name_both_providers(clash):
    attributes = {
        "name_is_alias": {"name": "al"},
        "alias_is_name": {"name": "newcomer", "aliases": ("aliased_loss",)},
        "alias_is_alias": {"name": "newcomer", "aliases": ("x", Alias("al_strong"))},
    }[clash]
    newcomer = attrs.define(type("Newcomer", (LocalLoss,), attributes))
    reg = Registry()
    reg.register(AliasedLoss, plugin="first", distribution="dist-a")
    with pytest.raises(PluginError) as info:
        reg.register(newcomer, plugin="second", distribution="dist-b")
    message = str(info.value)
    assert "'first'" in message and "dist-a" in message and "AliasedLoss" in message
    assert "'second'" in message and "dist-b" in message and "Newcomer" in message
    assert len(reg) == 1 and ("loss", "x") not in reg  # nothing of the newcomer registered


@pytest.mark.parametrize("aliases", [("",), ("self_named",), ("a", "a"), (3,),
                                     (Alias("typo", {"sclae": 2.0}),)])
def test_bad_aliases_are_refused(aliases):
    bad = attrs.define(type("BadAliases", (LocalLoss,), {"name": "self_named",
                                                         "aliases": aliases}))
    with pytest.raises(PluginError, match="alias"):
        Registry().register(bad, plugin="p", distribution="d")


IMPOSTOR_OPTIMIZER = '''
import attrs
from ptyframe_optimizers.quasi_newton import QuasiNewton
from ptyframe.registry.loader import hookimpl


@attrs.define(kw_only=True)
class Impostor(QuasiNewton):
    name = {name!r}


@hookimpl
def ptyframe_register_components():
    return [Impostor]
'''


@pytest.mark.parametrize(("kind", "taken"), [("loss", "lsq"), ("optimizer", "lbfgs")])
def test_third_party_cannot_take_a_builtin_name_or_alias(site, kind, taken):
    """The fake distribution comes first on sys.path; the built-ins still register first."""
    module = unique("fake_mod")
    source = (LOSS_SOURCE if kind == "loss" else IMPOSTOR_OPTIMIZER).format(name=taken)
    make_dist(site, "fakepkg-impostor", {"impostor": module}, {module: source},
              group="ptyframe")
    reg, messages = load_quietly()
    assert reg.entry(kind, taken).distribution == "ptyframe"
    assert any("fakepkg-impostor" in m and "'impostor'" in m and "distribution ptyframe" in m
               for m in messages), messages


def test_lbfgs_aliases_resolve_to_finite_history_quasi_newton():
    reg = load_registry()
    for alias in ("lbfgs", "l-bfgs"):
        opt = reg.create("optimizer", {"type": alias})
        assert type(opt) is reg.get("optimizer", "quasi_newton")
        assert opt.history_length == 10 and opt.to_config()["type"] == "quasi_newton"
    assert reg.create("optimizer", {"type": "lbfgs", "history_length": 3}).history_length == 3


@pytest.mark.filterwarnings("ignore::ptyframe.registry.loader.PluginLoadWarning")
def test_fake_distribution_shadowing_lsq_sqrt_is_never_used_unless_named(site, capsys):
    """The issue's scenario: a third party registers a loss ``lsq_sqrt`` that reports 0.0.
    The built-in is used (loss > 0); the impostor runs only when named ``dist:lsq_sqrt``;
    strict mode refuses to start."""
    import numpy as np

    from ptyframe import Device, Reconstruction
    from ptyframe.testing.simulate import simulate_dataset

    module = unique("zero_loss")
    make_dist(site, "fakepkg-zero", {"zero": module},
              {module: LOSS_SOURCE.format(name="lsq_sqrt").replace("weight: float = 1.0",
                                                                   "weight: float = 0.0")},
              group="ptyframe")
    reg, messages = load_quietly()
    assert reg.entry("loss", "lsq_sqrt").distribution == "ptyframe"
    assert any("fakepkg-zero" in m and "'fakepkg-zero:lsq_sqrt'" in m for m in messages)
    sim = simulate_dataset(reg.create("propagator", {"type": "multislice"}), window=16,
                           scan_shape=(4, 4), step_A=0.8, seed=1)

    def final_loss(loss_type: str) -> float:
        rec = Reconstruction(sim.patterns * 1e4, sim.experiment, positions_A=sim.positions_A,
                             loss=reg.create("loss", {"type": loss_type}), registry=reg,
                             device=Device("cpu", "double"), progress=False)
        return rec.run(2).loss[-1]

    assert final_loss("lsq_sqrt") > 0
    assert final_loss("fakepkg-zero:lsq_sqrt") == 0.0
    assert np.isfinite(final_loss("ptyframe:lsq_sqrt"))
    with pytest.raises(PluginError, match="fakepkg-zero"):
        load_registry(strict=True)
    assert main(["plugins"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if "lsq_sqrt" in line]
    assert any(line.split()[1] == "lsq_sqrt" and "ptyframe" in line for line in listed)
    assert any(line.split()[1] == "fakepkg-zero:lsq_sqrt" and "only by this name" in line
               for line in listed)
