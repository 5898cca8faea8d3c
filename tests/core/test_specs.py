"""Specifications: validated fields, to_config/from_config round trips, routing of the short
keyword API, one table of blocks read everywhere."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ptyframe import Device, FromEpoch, Reconstruction, load_registry
from ptyframe.apps.config import build_reconstruction
from ptyframe.components import PARAMETER_BLOCKS
from ptyframe.core.blocks import BLOCK_NAMES, from_disk_layout, to_disk_layout
from ptyframe.core.schedules import EveryN
from ptyframe.engine.model import BLOCKS
from ptyframe.engine.specs import (
    BlockPlan,
    ModelSpec,
    OutputSpec,
    ReadingSpec,
    RefineSpec,
    SolverSpec,
    route_settings,
)
from ptyframe.io.nexus import _UNITS
from ptyframe.io.results import CHECKPOINT_FILES
from ptyframe.testing.simulate import simulate_dataset

REGISTRY = load_registry()


def test_every_reader_of_the_block_list_reads_the_table():
    assert PARAMETER_BLOCKS == BLOCK_NAMES == BLOCKS
    assert tuple(CHECKPOINT_FILES) == BLOCK_NAMES
    assert set(_UNITS) <= set(BLOCK_NAMES)
    assert tuple(RefineSpec().blocks) == BLOCK_NAMES
    routed = route_settings({f"refine_{b}": True for b in BLOCK_NAMES})
    assert set(routed["refine"]) == {f"refine_{b}" for b in BLOCK_NAMES}


def test_disk_layout_round_trip():
    rng = np.random.default_rng(0)
    for name, shape, disk in (("object", (2, 3, 5, 7), (5, 7, 2, 3)),
                              ("probe", (3, 4, 4), (4, 4, 3)),
                              ("probe", (2, 3, 4, 4), (4, 4, 3, 2)),
                              ("tilts", (6, 6), (6, 6))):
        a = rng.normal(size=shape)
        assert to_disk_layout(name, a).shape == disk
        np.testing.assert_array_equal(from_disk_layout(name, to_disk_layout(name, a)), a)
    with pytest.raises(ValueError, match="object"):
        to_disk_layout("object", np.zeros((3, 3)))


@pytest.mark.parametrize("spec", [
    ModelSpec(n_slices=3, n_probe_modes=2, tilt_mode=4, object_margin_px=4,
              dynamically_resize_object=3,
              propagator=REGISTRY.create("propagator", {"type": "multislice",
                                                        "slice_thickness_A": 5.0})),
    SolverSpec(loss=REGISTRY.create("loss", {"type": "ml"}), loss_weight=EveryN(3, on=1.0, off=0.5),
               regularizers=[REGISTRY.create("regularizer", {"type": "l1_phase",
                                                             "weight": 1e-3})]),
    ReadingSpec(batch_size=16, load_one_by_one=True, data_dtype="float16"),
    OutputSpec(dir="out", save_every=2, checkpoint_every=5, verbosity=2),
], ids=["model", "solver", "reading", "output"])
def test_specs_round_trip_through_json(spec):
    config = json.loads(json.dumps(spec.to_config()))
    again = type(spec).from_config(config, REGISTRY)
    assert again.to_config() == spec.to_config()


def test_refine_spec_round_trip_and_defaults():
    spec = RefineSpec({"positions": FromEpoch(10), "tilts": BlockPlan(refine=True,
                                                                      initial=[[0.0] * 6])})
    assert spec["object"].refine(0) and spec["probe"].refine(0)
    assert not spec["positions"].refine(9) and spec["positions"].refine(10)
    assert spec["beam_current"].never
    config = json.loads(json.dumps(spec.to_config()))
    assert config["tilts"] == [[0.0] * 6]
    again = RefineSpec.from_config(config, REGISTRY)
    assert again.to_config() == spec.to_config()
    with pytest.raises(ValueError, match="unknown block 'probes'"):
        RefineSpec({"probes": True})


@pytest.mark.parametrize(("spec", "kwargs", "match"), [
    (ModelSpec, {"n_slices": 0}, "n_slices: expected an integer >= 1, found 0"),
    (ModelSpec, {"tilt_mode": 7}, "tilt_mode: expected one of"),
    (ModelSpec, {"propagator": object()}, "propagator: expected a propagator component"),
    (ReadingSpec, {"data_dtype": "int8"}, "data_dtype: expected one of"),
    (OutputSpec, {"save_every": 0}, "save_every: expected an integer >= 1"),
    (OutputSpec, {"verbosity": 5}, "verbosity: expected one of"),
])
def test_specs_reject_bad_values_naming_the_field(spec, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        spec(**kwargs)


def test_unknown_keyword_lists_what_is_accepted():
    with pytest.raises(TypeError, match="unknown settings \\['n_slice'\\]"):
        route_settings({"n_slice": 2})


def test_short_keywords_and_specifications_build_the_same_reconstruction():
    prop = REGISTRY.create("propagator", {"type": "multislice"})
    sim = simulate_dataset(prop, window=16, scan_shape=(4, 4), step_A=0.8, seed=1)
    common = dict(device=Device("cpu", "double"), registry=REGISTRY)
    short = Reconstruction(sim.patterns, sim.experiment, n_slices=2, batch_size=8,
                           refine_positions=FromEpoch(3), progress=False, **common)
    long = Reconstruction(sim.patterns, sim.experiment, model=ModelSpec(n_slices=2),
                          reading=ReadingSpec(batch_size=8),
                          refine={"positions": FromEpoch(3)},
                          output=OutputSpec(progress=False), **common)
    assert short.to_config() == long.to_config()
    with pytest.raises(TypeError, match="model: given as a ModelSpec and as keywords"):
        Reconstruction(sim.patterns, sim.experiment, model=ModelSpec(), n_slices=2, **common)


def test_parameters_json_rebuilds_the_reconstruction(tmp_path):
    prop = REGISTRY.create("propagator", {"type": "multislice"})
    sim = simulate_dataset(prop, window=16, scan_shape=(4, 4), step_A=0.8, seed=1)
    data = tmp_path / "data.npy"
    np.save(data, sim.patterns)
    rec = Reconstruction(np.load(data), sim.experiment, n_slices=2,
                         refine_positions=FromEpoch(3), beam_current=np.ones(16),
                         loss=REGISTRY.create("loss", {"type": "ml"}), progress=False,
                         device=Device("cpu", "double"), registry=REGISTRY)
    config = json.loads(json.dumps(rec.to_config()))
    config["data"] = {"path": str(data)}
    config["experiment"].pop("scan_shape", None)
    config["experiment"]["scan_shape"] = list(sim.experiment.scan_shape)
    again, _ = build_reconstruction(config, registry=REGISTRY)
    first, second = rec.to_config(), again.to_config()
    second.pop("data")
    assert first == second
