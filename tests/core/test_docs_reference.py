"""The generated parameter reference covers every component setting and every reference key."""

from pathlib import Path

import attrs
import pytest

from ptyframe import load_registry
from ptyframe.apps.cli import main
from ptyframe.apps.docs_reference import field_descriptions, generate_parameter_reference
from ptyframe.apps.migrate import REFERENCE_KEYS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "parameters.md"


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.fixture(scope="module")
def text(registry):
    return generate_parameter_reference(registry)


def test_every_reference_key_is_listed(text):
    section = text[text.index("## Reference keys"):]
    missing = [key for key in REFERENCE_KEYS if f"| `{key}` |" not in section]
    assert not missing


def test_every_first_party_component_and_setting_is_documented(text, registry):
    for entry in registry.entries():
        if entry.distribution != "ptyframe":
            continue
        heading = f"### `{entry.kind}` `{entry.name}`"
        assert heading in text
        section = text[text.index(heading):].split("\n### ", 1)[0]
        for field in attrs.fields(entry.cls) if attrs.has(entry.cls) else ():
            if field.init and not field.name.startswith("_"):
                assert f"| `{field.alias}` |" in section, (entry.name, field.alias)


def test_docs_file_is_up_to_date(text):
    """docs/parameters.md must be regenerated (`ptyframe docs --output docs/parameters.md`)
    whenever a component or the migration table changes."""
    assert DOCS.exists(), "run: ptyframe docs --output docs/parameters.md"
    assert DOCS.read_text() == text, "run: ptyframe docs --output docs/parameters.md"


@attrs.define(kw_only=True)
class _Base:
    """Base.

    ``inherited`` (Å): a setting described by the base class.
    """

    inherited: float = 1.0


@attrs.define(kw_only=True)
class _Documented(_Base):
    """Summary line.

    ``alpha``: the first setting, in mrad; it has two sentences. Not this one.
    * ``beta`` (Å): a bulleted setting
    * ``gamma``: another one

    Fields: ``delta`` (schedule, >= 0), ``epsilon`` (> 0, counts).
    """

    alpha: float = 0.0
    beta: float = 0.0
    gamma: float = 0.0
    delta: float = 0.0
    epsilon: float = 0.0
    undocumented: float = 0.0


def test_field_descriptions_are_parsed_from_the_docstring():
    found = field_descriptions(_Documented)
    assert found["alpha"] == "the first setting, in mrad; it has two sentences."
    assert found["beta"] == "(Å) a bulleted setting"
    assert found["gamma"] == "another one"
    assert found["delta"] == "schedule, >= 0"
    assert found["epsilon"] == "> 0, counts"
    assert found["inherited"] == "(Å) a setting described by the base class."
    assert "undocumented" not in found


def test_docs_command_writes_the_reference(tmp_path, text):
    out = tmp_path / "parameters.md"
    assert main(["docs", "--output", str(out)]) == 0
    assert out.read_text() == text
