"""What a run leaves behind: figures, provenance, the NeXus result file, open_result, the
normalised error and the progress lines (issue 11)."""

import io
import json
import logging
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

import ptyframe
from ptyframe import load_registry
from ptyframe.apps.cli import main
from ptyframe.engine.monitor import EpochReport, RunMonitor, relative_loss
from ptyframe.io.figures import (
    FIGURE_NAMES,
    loss_figure,
    object_figure,
    positions_figure,
    probe_figure,
    robust_limits,
)
from ptyframe.io.provenance import PROVENANCE_FIELDS, file_sha256
from ptyframe.io.result_file import DEFINITION, RESULT_FILE
from ptyframe.io.run_result import scanned_area
from ptyframe.testing.simulate import simulate_dataset, write_scan_file

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """
epochs = 4
progress = false
[data]
path = "{data}"
[experiment]
from_metadata = true
[loss]
type = "ml"
[refine]
object = true
probe = {{type = "from", start = 2}}
positions = {{type = "from", start = 2}}
[device]
kind = "cpu"
precision = "double"
[output]
dir = "out"
figures_every = 2
"""


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """``ptyframe run`` of a small scan with a Poisson loss (negative values) and position
    refinement: the output folder and the data file."""
    folder = tmp_path_factory.mktemp("run")
    prop = load_registry().create("propagator", {"type": "multislice"})
    sim = simulate_dataset(prop, window=24, scan_shape=(6, 6), step_A=0.7,
                           dose_per_pattern=1e5, position_jitter_A=0.1, seed=5)
    data = write_scan_file(sim, folder / "scan.h5")
    config = folder / "run.toml"
    config.write_text(CONFIG.format(data=data))
    assert main(["--quiet", "run", str(config)]) == 0
    return folder / "out", data


def _plot_area_std(path: Path) -> float:
    """Standard deviation of the pixel values in the middle of a PNG (not blank)."""
    import matplotlib.image

    image = matplotlib.image.imread(path)[..., :3]
    h, w = image.shape[:2]
    return float(image[h // 4: 3 * h // 4, w // 4: 3 * w // 4].std())


def test_run_writes_figures_that_are_not_blank(run_folder):
    out, _ = run_folder
    for name in FIGURE_NAMES:
        png = out / "figures" / f"{name}.png"
        assert png.is_file(), name
        assert png.read_bytes()[:4] == b"\x89PNG"
        assert _plot_area_std(png) > 0.02, f"{name}.png looks blank"


def test_figures_are_labelled_with_sane_colour_limits(run_folder):
    result = ptyframe.open_result(run_folder[0])
    crop = result.scanned_area()
    phase = result.phase[crop]
    fig = object_figure(result)
    phase_ax, amplitude_ax = fig.axes[0], fig.axes[1]
    assert phase_ax.get_xlabel() == "x (Å)" and phase_ax.get_ylabel() == "y (Å)"
    bar_labels = {ax.get_ylabel() for ax in fig.axes[2:]}
    assert "phase (rad)" in bar_labels and "amplitude" in bar_labels
    image = phase_ax.get_images()[0]
    assert image.get_array().shape == phase.shape  # cropped to the scanned area
    lo, hi = image.get_clim()
    assert phase.min() <= lo < hi <= phase.max()
    assert (lo, hi) == pytest.approx(robust_limits(phase))
    assert any(t.get_text().endswith(" Å") for t in phase_ax.texts)  # scale bar
    assert amplitude_ax.get_images()[0].get_clim()[0] < amplitude_ax.get_images()[0].get_clim()[1]

    fig = probe_figure(result)
    labels = [ax.get_xlabel() for ax in fig.axes]
    assert "x (Å)" in labels and "kx (mrad)" in labels
    assert any("% of intensity" in ax.get_title() for ax in fig.axes)
    assert sum(ax.get_ylabel().startswith("|P") for ax in fig.axes) == 2  # two colour bars

    fig = positions_figure(result)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "x (Å)" and "displacement ×" in ax.get_title()
    assert ax.collections, "no displacement arrows"

    fig = loss_figure(result)
    loss_ax, relative_ax = fig.axes[:2]
    assert np.all(result.loss["loss"] < 0)  # the Poisson loss: negative
    assert loss_ax.get_yscale() == "linear"  # negative: not log (blank), not symlog (no ticks)
    assert any(t.get_text() for t in loss_ax.get_yticklabels())
    ydata = loss_ax.get_lines()[0].get_ydata()
    assert len(ydata) == 4 and np.all(np.isfinite(ydata))
    lo, hi = loss_ax.get_ylim()
    assert lo <= ydata.min() and ydata.max() <= hi
    assert relative_ax.get_yscale() in ("log", "linear")
    assert relative_ax.get_lines()[0].get_ydata()[0] == pytest.approx(1.0)


def test_loss_log_has_the_normalised_error(run_folder):
    loss = ptyframe.open_result(run_folder[0]).loss
    expected = [relative_loss(v, loss["loss"][0]) for v in loss["loss"]]
    np.testing.assert_allclose(loss["loss_relative"], expected)
    assert loss["loss_relative"][0] == 1.0 and loss["loss_relative"][-1] < 1.0


def test_provenance_is_complete(run_folder):
    out, data = run_folder
    prov = json.loads((out / "provenance.json").read_text())
    assert set(PROVENANCE_FIELDS) <= set(prov)
    for key in ("version", "host", "device", "start_time", "end_time", "wall_time_s",
                "input_file", "input_sha256", "plugins", "python"):
        assert prov[key] not in (None, "", {}), key
    assert prov["input_sha256"] == file_sha256(data)
    assert Path(prov["input_file"]) == Path(data).resolve()
    assert prov["end_time"] >= prov["start_time"] and prov["wall_time_s"] > 0
    assert prov["version"] == ptyframe.__version__
    assert prov["device"]["kind"] == "cpu"


def test_result_file_round_trips_through_open_result(run_folder):
    out, _ = run_folder
    from_folder = ptyframe.open_result(out)
    from_file = ptyframe.open_result(out / RESULT_FILE)
    for name in ("object", "probe", "positions_A", "initial_positions_A"):
        np.testing.assert_array_equal(getattr(from_file, name), getattr(from_folder, name))
    assert from_file.pixel_size_A == from_folder.pixel_size_A
    assert from_file.origin_A == pytest.approx(from_folder.origin_A)
    assert from_file.epoch == from_folder.epoch == 4
    assert from_file.config == from_folder.config
    assert from_file.provenance == from_folder.provenance
    assert from_file.scanned_area() == from_folder.scanned_area()
    np.testing.assert_array_equal(from_file.loss["loss_relative"],
                                  from_folder.loss["loss_relative"])
    assert from_file.wavelength_A == pytest.approx(from_folder.wavelength_A)
    # the positions really were refined and are in Å
    moved = np.abs(from_file.positions_A - from_file.initial_positions_A).max()
    assert 0 < moved < 1.0


def _documented_fields() -> list[tuple[str, str]]:
    text = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    table = text.split("<!-- result-file-fields -->")[1].split("<!-- /result-file-fields -->")[0]
    rows = re.findall(r"^\| `([^`]+)` \| (\w+) \|", table, flags=re.MULTILINE)
    assert len(rows) > 15
    return rows


def test_result_file_matches_the_documented_structure(run_folder):
    out, _ = run_folder
    with h5py.File(out / RESULT_FILE, "r") as f:
        for path, kind in _documented_fields():
            assert path in f, f"{path} missing"
            if kind == "field":
                assert isinstance(f[path], h5py.Dataset), path
            else:
                assert f[path].attrs["NX_class"] == kind, path
        entry = f["entry"]
        assert entry["definition"][()].decode() == DEFINITION
        assert f.attrs["default"] == "entry" and entry.attrs["default"] == "object_phase"
        phase = entry["object_phase"]
        assert phase["data"].ndim == 2 and phase["data"].attrs["units"] == "rad"
        assert phase["x"].attrs["units"] == "Å" and phase["y"].attrs["units"] == "Å"
        assert entry["positions/positions"].attrs["units"] == "Å"
        assert np.iscomplexobj(entry["object/data"][()])
        assert json.loads(entry["reconstruction/configuration/data"][()])["loss"]["type"] == "ml"
        assert entry["instrument/beam/incident_wavelength"].attrs["units"] == "Å"
        assert entry["reconstruction/provenance/input_sha256"][()].decode() \
            == json.loads((out / "provenance.json").read_text())["input_sha256"]


def test_hyperspy_reader_opens_the_phase_as_one_image_in_angstrom(run_folder):
    from rsciio.nexus import file_reader

    out, _ = run_folder
    signals = file_reader(str(out / RESULT_FILE), use_default=True)
    assert len(signals) == 1
    signal = signals[0]
    result = ptyframe.open_result(out)
    np.testing.assert_allclose(signal["data"], result.phase[result.scanned_area()])
    assert [a["units"] for a in signal["axes"]] == ["Å", "Å"]
    assert not any(a["navigate"] for a in signal["axes"])  # one 2-D signal, not a stack
    assert signal["axes"][1]["scale"] == pytest.approx(result.pixel_size_A)


def test_cli_plot_and_export_remake_the_outputs(run_folder, tmp_path):
    out, _ = run_folder
    assert main(["plot", str(out), "--to", str(tmp_path / "figs")]) == 0
    assert sorted(p.stem for p in (tmp_path / "figs").glob("*.png")) == sorted(FIGURE_NAMES)
    assert main(["plot", str(out / RESULT_FILE), "--to", str(tmp_path / "from_file")]) == 0
    assert len(list((tmp_path / "from_file").glob("*.png"))) == 4
    assert main(["export", str(out), "--to", str(tmp_path / "again.nxs")]) == 0
    again = ptyframe.open_result(tmp_path / "again.nxs")
    np.testing.assert_array_equal(again.object, ptyframe.open_result(out).object)
    assert main(["export", str(tmp_path / "absent")]) == 2
    with pytest.raises(ValueError, match="not a ptyframe result file"):
        h5 = tmp_path / "other.h5"
        with h5py.File(h5, "w") as f:
            f.create_group("entry")
        ptyframe.open_result(h5)


def test_scanned_area_spans_the_probe_centres():
    positions = np.array([[1.0, 2.0], [3.0, 2.0], [1.0, 6.0]])
    ys, xs = scanned_area(positions, 0.5, (0.0, 0.0), (40, 40))
    assert (ys.start, ys.stop, xs.start, xs.stop) == (2, 7, 4, 13)
    ys, xs = scanned_area(positions, 0.5, (0.0, 0.0), (5, 40), margin_px=3)
    assert (ys.start, ys.stop) == (0, 5)  # clipped to the object
    ys, xs = scanned_area(np.array([[5.0, 5.0]]), 0.5, (0.0, 0.0), (40, 40),
                          min_size_px=(8, 8))  # one position: half a window around it
    assert 8 <= ys.stop - ys.start <= 9 and 8 <= xs.stop - xs.start <= 9
    assert ys.start <= 10 < ys.stop
    with pytest.raises(ValueError, match="positions_A"):
        scanned_area(np.zeros((3,)), 0.5, (0.0, 0.0), (5, 5))


def test_loss_axis_scale_is_never_blank():
    from ptyframe.io.figures import _scale_of

    assert _scale_of(np.array([1e5, 1e3])) == "log"
    assert _scale_of(np.array([1.0, 0.99])) == "linear"
    assert _scale_of(np.array([-1.9e7, -2.0e7])) == "linear"
    assert _scale_of(np.array([3.0, -2.0])) == "symlog"


def test_relative_loss():
    assert relative_loss(50.0, 100.0) == 0.5
    assert relative_loss(-120.0, -100.0) == pytest.approx(0.8)  # lower is better either way
    assert np.isnan(relative_loss(1.0, 0.0))


def _report(epoch: int, loss: float) -> EpochReport:
    return EpochReport(epoch=epoch, loss=loss, data_loss=loss, step_size=1.0, evaluations=1,
                       accepted=True, elapsed_s=0.1 * epoch, blocks=("object",), params={})


def test_progress_off_a_terminal_is_one_line_per_epoch(monkeypatch):
    monkeypatch.setattr(logging.getLogger("ptyframe"), "handlers", [])
    monkeypatch.setattr(logging.getLogger(), "handlers", [])
    stream = io.StringIO()  # not a terminal
    monitor = RunMonitor(1, 3, None, (), None, stream=stream)
    assert monitor.bar is None
    for epoch, loss in enumerate((10.0, 8.0, 5.0), start=1):
        monitor.report(_report(epoch, loss), 1.0)
    monitor.close()
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 3 and lines[2].startswith("epoch 3: loss 5 (relative 0.5)")


def test_progress_lines_go_to_the_logger_and_quiet_silences_them(caplog):
    with caplog.at_level(logging.INFO, logger="ptyframe"):
        monitor = RunMonitor(2, 2, None, (), None, reference_loss=4.0, stream=io.StringIO())
        monitor.report(_report(1, 2.0), 1.0)
    assert [r.getMessage() for r in caplog.records][-1].startswith(
        "epoch 1: loss 2 (relative 0.5)")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ptyframe"):
        RunMonitor(2, 2, None, (), None, stream=io.StringIO()).report(_report(1, 2.0), 1.0)
    assert not caplog.records


def test_output_spec_figure_settings_are_validated():
    from ptyframe.engine.specs import OutputSpec

    with pytest.raises((TypeError, ValueError), match="figures_every"):
        OutputSpec(figures_every=0)
    spec = OutputSpec(dir="x", figures=False, result_file=False, figures_every=5)
    assert OutputSpec.from_config(spec.to_config()) == spec


def test_live_figures_redraw_every_n_epochs(tmp_path):
    from ptyframe.apps.live import LiveFigures
    from ptyframe.core.device import Device

    prop = load_registry().create("propagator", {"type": "multislice"})
    sim = simulate_dataset(prop, window=16, scan_shape=(4, 4), step_A=0.7, seed=2)
    rec = ptyframe.Reconstruction(sim.patterns * 1e4, sim.experiment,
                                  positions_A=sim.positions_A, progress=False,
                                  device=Device("cpu", "double"))
    shown = []
    live = LiveFigures(rec, every=2, names=("object", "loss"), show=shown.append)
    to_disk = LiveFigures(rec, every=3, names=("probe",), folder=tmp_path / "live")
    rec.run(4, callbacks=[live, to_disk])
    assert live.drawn == [1, 2, 4] and len(shown) == 3
    assert [fig.axes[0].get_xlabel() for fig in shown[-1]] == ["x (Å)", "epoch"]
    assert to_disk.drawn == [1, 3] and (tmp_path / "live" / "probe.png").is_file()
    with pytest.raises(ValueError, match="every"):
        LiveFigures(rec, every=0, show=print)
    with pytest.raises(ValueError, match="names"):
        LiveFigures(rec, names=("phase",), show=print)


def test_live_monitoring_notebook_is_valid_python():
    import ast

    notebook = json.loads((ROOT / "examples" / "live_monitoring.ipynb").read_text())
    code = "\n".join("".join(c["source"]) for c in notebook["cells"]
                     if c["cell_type"] == "code")
    tree = ast.parse(code)
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert "LiveFigures" in names


def test_resume_keeps_the_initial_positions_and_the_normalised_error(run_folder, tmp_path):
    from ptyframe.apps.config import run_config_file

    _, data = run_folder
    config = tmp_path / "run.toml"
    config.write_text(CONFIG.format(data=data).replace("epochs = 4", "epochs = 3"))
    run_config_file(config)
    out = tmp_path / "out"
    initial = np.load(out / "initial_positions_A.npy")
    first = ptyframe.open_result(out).loss["loss"][0]
    run_config_file(config, epochs=5)  # resumes at epoch 3
    result = ptyframe.open_result(out / RESULT_FILE)
    assert result.epoch == 5
    np.testing.assert_array_equal(result.initial_positions_A, initial)
    assert result.loss["loss"][0] == first
    np.testing.assert_allclose(result.loss["loss_relative"],
                               [relative_loss(v, first) for v in result.loss["loss"]])
