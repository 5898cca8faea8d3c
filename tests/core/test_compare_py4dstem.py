"""``benchmarks/compare_py4dstem.py`` on a small simulated file in the layout of
../shared/data: the scoring places a known phase where the truth is, the timing leaves the
scoring out, the run without py4DSTEM gives ptyframe alone with a message, and (only where
py4DSTEM is installed) py4DSTEM's conventions line up with ours."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from ptyframe.registry.loader import load_registry
from ptyframe.testing.simulate import random_atoms_phase, simulate_dataset, write_scan_file

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compare_py4dstem.py"
DOSE = 4e4  # electrons per pattern


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare_py4dstem", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory) -> Path:
    """A 12 x 12 scan of 32 x 32 patterns with the ground-truth entries of ../shared/data."""
    prop = load_registry().create("propagator", {"type": "multislice"})
    common = dict(window=32, scan_shape=(12, 12), step_A=0.5, seed=3, defocus_A=-40.0,
                  convergence_angle_mrad=25.0, absorption=0.0)
    sim = simulate_dataset(prop, dose_per_pattern=DOSE, **common)
    clean = simulate_dataset(prop, **common)
    path = write_scan_file(sim, tmp_path_factory.mktemp("compare") / "sim.h5")
    with h5py.File(path, "a") as fh:
        fh["data_noiseless"] = clean.patterns  # fractions of the beam, as in shared/data
        fh.attrs["electrons_per_pattern"] = DOSE
        fh["gt_transmission_phase"] = sim.phase
        fh.attrs["gt_origin_yx_A"] = np.asarray(sim.grid.origin_A)
        fh["positions_nominal_A"] = sim.nominal_positions_A
        fh["positions_A"] = sim.positions_A
    return path


def _truth(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as fh:
        return (fh["gt_transmission_phase"][()], np.asarray(fh.attrs["gt_origin_yx_A"]),
                fh["positions_nominal_A"][()])


def _scorer(compare, path: Path):
    exp = compare.load_experiment(path)
    nominal = compare.scan_grid(exp.scan_shape, exp.scan_step_yx_A, exp.scan_rotation_deg)
    return compare.Scorer(path, nominal), nominal


def test_scorer_finds_the_truth_where_its_origin_says(compare, scan_file):
    phase, origin, nominal_file = _truth(scan_file)
    scorer, nominal = _scorer(compare, scan_file)
    # the truth's origin in the frame of our nominal grid (rasters share their centre)
    ours = origin - (nominal_file.mean(axis=0) - nominal.mean(axis=0))
    dx = 1.0 / (32 * compare.load_experiment(scan_file).dk_inv_A)
    assert scorer(phase, dx, ours) == pytest.approx(1.0, abs=1e-9)
    # two pixels off: the sub-pixel alignment takes the shift out again (but for the
    # content that enters at the crop edges)
    assert scorer(phase, dx, ours + 2 * dx) > 0.9
    # another specimen at the right place does not score
    other = random_atoms_phase(phase.shape, dx, np.random.default_rng(99))
    assert scorer(other, dx, ours) < 0.5


def test_clock_leaves_out_the_paused_work(compare):
    clock = compare.Clock()
    clock.start()

    def burn(seconds: float) -> None:
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    clock.pause_for(burn, 0.2)
    wall, cpu = clock.now()
    assert 0.0 <= wall < 0.1 and -0.01 <= cpu < 0.1


def test_targets_and_ratios(compare):
    rows = [compare.Row(i, wall_s=float(i), cpu_s=0.5 * i, pearson=p, error=0.0)
            for i, p in enumerate((0.9, 0.96, 0.985, 0.991), start=1)]
    ours = compare.Trace("ptyframe", {}, rows=rows)
    theirs = compare.Trace("py4DSTEM", {}, rows=[
        compare.Row(i, wall_s=3.0 * i, cpu_s=2.0 * i, pearson=p, error=0.0)
        for i, p in enumerate((0.955, 0.981), start=1)])
    assert ours.first_reaching(0.99).iteration == 4
    assert theirs.first_reaching(0.99) is None and theirs.best().pearson == 0.981
    ratio = compare.ratios(ours, theirs)
    assert ratio["0.99"] is None
    assert ratio["0.98"] == {"wall": 6.0 / 3.0, "cpu": 4.0 / 1.5}
    assert ratio["0.95"] == {"wall": 3.0 / 2.0, "cpu": 2.0 / 1.0}
    assert ratio["per_iteration"] is None  # py4DSTEM ran two iterations only
    assert ours.per_iteration() == {"wall": 1.0, "cpu": 0.5}


def test_runs_ptyframe_alone_without_py4dstem(compare, scan_file, tmp_path, monkeypatch,
                                              capsys):
    monkeypatch.setattr(compare, "_py4dstem",
                        lambda: (None, None, "No module named 'py4DSTEM'"))
    out = tmp_path / "out.json"
    assert compare.main(["--data", str(scan_file), "--epochs", "8", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "py4DSTEM is not installed" in text and "running ptyframe only" in text
    report = json.loads(out.read_text())
    (trace,) = report["traces"]
    assert trace["code"] == "ptyframe" and trace["settings"]["loss"] == "ml"
    rows = trace["rows"]
    assert [r["iteration"] for r in rows] == list(range(1, 9))
    assert all(r["evaluations"] >= 1 for r in rows)
    walls = [r["wall_s"] for r in rows]
    assert all(b > a for a, b in zip(walls, walls[1:], strict=False))
    assert rows[-1]["pearson"] > 0.9  # a real reconstruction of the simulated phase
    assert set(trace["time_to"]) == {"0.99", "0.98", "0.95"}
    assert 0 < trace["per_iteration_s"]["wall"] < walls[-1]
    assert "ratio_py4dstem_over_ptyframe" not in report
    # py4DSTEM alone cannot run: a clear message and exit status 2
    assert compare.main(["--data", str(scan_file), "--codes", "py4dstem"]) == 2
    assert "nothing to run" in capsys.readouterr().out


def test_bad_arguments_are_named(compare, scan_file):
    with pytest.raises(SystemExit, match="--data"):
        compare.main(["--data", "no_such_dataset"])
    for argv in (["--codes", "ptypy"], ["--epochs", "0"], ["--probe-from", "-1"],
                 ["--py4dstem-step", "0"], ["--py4dstem-rolloff", "nan"]):
        with pytest.raises(SystemExit):
            compare.main(["--data", str(scan_file), *argv])


def test_py4dstem_conventions_match(compare, scan_file, tmp_path):
    """Where py4DSTEM is installed: on noise-free data with its probe guess from the same
    metadata and our positions, it reaches a phase close to the truth, so no axis, sign or
    placement convention is crossed."""
    pytest.importorskip("py4DSTEM")
    out = tmp_path / "out.json"
    assert compare.main(["--data", str(scan_file), "--noiseless", "--epochs", "8",
                         "--iterations", "8", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    best = {t["code"]: t["best"]["pearson"] for t in report["traces"]}
    assert best["py4DSTEM"] > 0.9 and best["ptyframe"] > 0.9
    assert set(report["ratio_py4dstem_over_ptyframe"]) == {"0.99", "0.98", "0.95",
                                                           "per_iteration"}
