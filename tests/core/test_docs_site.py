"""The documentation site: every page of the mkdocs nav exists, every relative link between
pages resolves, and the configuration page names every key a configuration file accepts.
(CI does not build the site; `mkdocs build --strict` with the `docs` extra does.)"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import attrs
import pytest

from ptyframe.apps.config import _PARALLEL_KEYS, _SECTIONS, DATA_KEYS
from ptyframe.apps.geometry import GeometrySettings
from ptyframe.core.blocks import PARAMETER_BLOCKS
from ptyframe.core.device import Device
from ptyframe.core.experiment import Experiment
from ptyframe.engine.specs import SPEC_CLASSES, OutputSpec, route_settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def nav_pages() -> list[str]:
    """The .md files the nav of mkdocs.yml names (read without a YAML library: one
    ``- Title: page.md`` entry a line)."""
    text = (ROOT / "mkdocs.yml").read_text()
    assert re.search(r"^docs_dir:\s*docs\s*$", text, re.M)
    nav = text[text.index("\nnav:"):]
    return re.findall(r"^\s*-\s*[^:\n]+:\s*(\S+\.md)\s*$", nav, re.M)


def test_every_nav_page_exists_and_every_page_is_in_the_nav():
    pages = nav_pages()
    assert len(pages) >= 8 and len(set(pages)) == len(pages)
    missing = [p for p in pages if not (DOCS / p).is_file()]
    assert not missing, f"mkdocs.yml nav names missing pages: {missing}"
    orphans = sorted(p.name for p in DOCS.glob("*.md") if p.name not in pages)
    assert not orphans, f"pages not in the mkdocs.yml nav: {orphans}"


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_relative_links_resolve(page):
    text = (DOCS / page).read_text()
    for target in re.findall(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (DOCS / target).is_file(), f"{page} links to missing {target}"


def accepted_top_level_keys() -> set[str]:
    """Every top-level key a configuration file accepts: the sections and the flat settings
    the specifications route (read from route_settings' own error message, so a new
    setting cannot be missed)."""
    with pytest.raises(TypeError) as info:
        route_settings({"__not_a_setting__": 1})
    listed = re.search(r"expected some of \[(.*)\]", str(info.value)).group(1)
    return set(re.findall(r"'(\w+)'", listed)) | set(_SECTIONS)


def test_configuration_page_names_every_key():
    text = (DOCS / "configuration.md").read_text()
    named = set(re.findall(r"`(\w+)`", text))
    keys = accepted_top_level_keys()
    assert {"epochs", "object_margin_px", "output_dir", "refine_positions"} <= keys
    sections = {
        "data": set(DATA_KEYS),
        "experiment": {f.name for f in attrs.fields(Experiment)} | {"from_metadata",
                                                                   "defocus_A"},
        "device": set(inspect.signature(Device).parameters),
        "output": set(OutputSpec.field_names()),
        "parallel": set(_PARALLEL_KEYS),
        "geometry": {f.name for f in attrs.fields(GeometrySettings)},
    }
    missing = sorted(keys - named)
    for name, fields in sections.items():
        missing += [f"[{name}] {k}" for k in sorted(fields - named)]
    assert not missing, f"docs/configuration.md does not describe: {missing}"
    assert all(spec.field_names() for spec in SPEC_CLASSES.values())
    assert all(f"refine_{row.name}" in named for row in PARAMETER_BLOCKS)
