"""Direct-method infrastructure: registry conformance of every ``direct_method``, the output
folder layout, the shared helpers (probe model, COM, curl fit), the ``direct_phase`` object
initializer (placement, and a reconstruction started from DPC / WDD), and ``ptyframe direct``.
"""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
from ptyframe_direct._common import (
    center_of_mass,
    fit_rotation_by_curl,
    probe_spectrum,
    to_scan_frame,
)
from ptyframe_direct.dpc import DPC
from ptyframe_direct.initializers import DirectPhaseObject, phase_on_grid
from ptyframe_direct.wdd import WDD
from ptyframe_propagators.multislice import Multislice

from ptyframe import Reconstruction
from ptyframe.apps.cli import main as cli_main
from ptyframe.apps.direct import (
    load_direct_result,
    method_label,
    parse_method_spec,
    run_direct,
    save_direct_result,
    to_jsonable,
)
from ptyframe.components import DirectResult, InitContext
from ptyframe.core.device import Device
from ptyframe.core.experiment import Experiment, ReconstructionGrid
from ptyframe.core.physics import (
    aberration_function,
    aperture,
    spatial_frequencies,
)
from ptyframe.registry.loader import load_registry
from ptyframe.testing.simulate import SimulatedData, simulate_dataset
from ptyframe.testing.validation import phase_correlation, resample_to_grid, scanned_region_mask

REGISTRY = load_registry()
DIRECT = REGISTRY.names("direct_method")
DEVICE = Device("cpu", "double")
NOISELESS_COUNTS = 1e4


@pytest.fixture(scope="module")
def sim() -> SimulatedData:
    return simulate_dataset(Multislice(slice_thickness_A=2.0), window=32, scan_shape=(16, 16),
                            step_A=0.5, defocus_A=0.0, phase_scale=0.5, absorption=0.0)


# ---------------------------------------------------------------------------- conformance
def test_the_first_party_direct_methods_are_registered():
    assert {"dpc", "dpc_iterative", "wdd"} <= set(DIRECT)
    assert "direct_phase" in REGISTRY.names("object_initializer")


@pytest.mark.parametrize("name", DIRECT)
def test_every_direct_method_builds_from_defaults_and_round_trips(name):
    component = REGISTRY.create("direct_method", {"type": name})
    assert component.kind == "direct_method" and component.name == name
    assert type(component).__doc__ and type(component).__doc__.strip()
    config = component.to_config()
    as_json = json.loads(json.dumps(config, allow_nan=False))
    assert as_json == config
    rebuilt = REGISTRY.create("direct_method", as_json)
    assert type(rebuilt) is type(component) and rebuilt.to_config() == config


def test_non_default_settings_round_trip():
    for config in ({"type": "wdd", "mode": "ssb", "epsilon": 0.01,
                    "aberrations": {"C10": 50.0, "C30": 1e4}, "rotation_deg": 12.5,
                    "transpose": True},
                   {"type": "dpc", "rotation_deg": -3.0, "transpose": False, "high_pass": 0.01,
                    "max_angle_mrad": 30.0},
                   {"type": "dpc_iterative", "n_iterations": 7}):
        component = REGISTRY.create("direct_method", config)
        out = json.loads(json.dumps(component.to_config(), allow_nan=False))
        assert REGISTRY.create("direct_method", out).to_config() == out
        assert {k: out[k] for k in config} == config


# ---------------------------------------------------------------------------- output layout
def test_results_are_written_in_one_folder_per_method(sim, tmp_path):
    counts = sim.patterns * NOISELESS_COUNTS
    dpc = run_direct("dpc", counts, sim.experiment, DEVICE, output_dir=tmp_path)
    wdd = run_direct({"type": "wdd", "mode": "wdd"}, counts, sim.experiment, DEVICE,
                     output_dir=tmp_path)
    for result, arrays in ((dpc, ("phase", "com_y", "com_x", "intensity")),
                           (wdd, ("phase", "amplitude", "spectrum_weight"))):
        folder = tmp_path / result.method
        for name in arrays:
            saved = np.load(folder / f"{name}.npy", allow_pickle=False)
            np.testing.assert_array_equal(saved, result.arrays[name])
            png = (folder / f"{name}.png").read_bytes()
            assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
        record = json.loads((folder / "values.json").read_text(),
                            parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
        assert record["method"] == result.method
        assert record["pixel_size_A"] == pytest.approx(0.5)
        assert set(record["arrays"]) == set(arrays)
        assert record["arrays"]["phase"]["units"] == "rad"
        assert record["timings_s"]["run_direct_total"] > 0
        assert record["config"]["type"] == result.method
        back = load_direct_result(folder)
        np.testing.assert_array_equal(back.phase, result.phase)
        assert back.values == json.loads(json.dumps(to_jsonable(result.values)))
    assert "rotation_deg" in json.loads((tmp_path / "dpc" / "values.json").read_text())["values"]


def test_save_handles_complex_nan_and_odd_values(tmp_path):
    result = DirectResult(method="custom", arrays={
        "object": np.exp(1j * np.linspace(0, 1, 12).reshape(3, 4)),
        "curve": np.arange(5.0), "flat": np.zeros((4, 4))},
        values={"a": np.float32(1.5), "b": (1, np.int64(2)), "c": float("nan"),
                "d": {"e": np.array([1.0, 2.0])}, "f": np.bool_(True)}, pixel_size_A=None)
    folder = save_direct_result(result, tmp_path)
    assert (folder / "object.png").is_file() and (folder / "flat.png").is_file()
    assert not (folder / "curve.png").exists()  # 1-D: no figure
    record = json.loads((folder / "values.json").read_text())
    assert record["values"] == {"a": 1.5, "b": [1, 2], "c": None, "d": {"e": [1.0, 2.0]},
                                "f": True}
    with pytest.raises(ValueError, match="method"):
        save_direct_result(DirectResult(method="../x", arrays={}), tmp_path)
    with pytest.raises(ValueError, match="method"):
        run_direct(42, np.zeros((4, 8, 8)), Experiment(
            voltage_kV=200, convergence_angle_mrad=20, detector_pixel_size_inv_A=0.1), DEVICE)


def test_a_second_save_replaces_the_first(tmp_path):
    first = DirectResult(method="m", arrays={"phase": np.zeros((4, 4)), "extra": np.ones((4, 4))})
    second = DirectResult(method="m", arrays={"phase": np.ones((4, 4))})
    folder = save_direct_result(first, tmp_path)
    assert (folder / "extra.npy").is_file() and (folder / "extra.png").is_file()
    save_direct_result(second, tmp_path)
    assert not (folder / "extra.npy").exists() and not (folder / "extra.png").exists()
    assert load_direct_result(folder).arrays.keys() == {"phase"}
    other = save_direct_result(second, tmp_path, name="m_copy")
    assert other.name == "m_copy" and (other / "phase.npy").is_file()


def test_method_labels_name_the_non_default_settings():
    assert method_label("dpc") == "dpc"
    assert method_label(WDD(mode="ssb")) == "wdd_ssb"
    assert method_label(WDD()) == "wdd"
    assert method_label(DPC(rotation_deg=12.0)) == "dpc_rotation_deg12.0"
    assert method_label({"type": "wdd", "mode": "ssb"}) == "wdd_ssb"


def test_method_specs_are_parsed_without_eval():
    assert parse_method_spec("dpc") == "dpc"
    assert parse_method_spec('{"type": "wdd", "mode": "ssb"}') == {"type": "wdd", "mode": "ssb"}
    with pytest.raises(ValueError, match="method"):
        parse_method_spec("{__import__('os')}")


# ---------------------------------------------------------------------------- shared helpers
def test_probe_spectrum_is_the_physics_modules_aperture_and_chi():
    exp = Experiment(voltage_kV=200.0, convergence_angle_mrad=20.0,
                     detector_pixel_size_inv_A=0.05, aberrations={"C10": -50.0, "C12a": 20.0})
    qy, qx = np.meshgrid(np.linspace(-1, 1, 9), np.linspace(-0.8, 1.2, 7), indexing="ij")
    lam = exp.wavelength_A
    expected = aperture(np.hypot(qy, qx), lam, 20.0, 1.0, 0.05) * np.exp(
        -1j * aberration_function(qy, qx, lam, exp.aberrations))
    np.testing.assert_allclose(probe_spectrum(qy, qx, exp, None, np), expected, atol=1e-12)


def test_center_of_mass_of_single_pixels():
    ky, kx = spatial_frequencies((8, 8), spacing_inv_A=0.1, centered=True)
    patterns = np.zeros((3, 8, 8))
    patterns[0, 4, 4] = 5.0      # centre: k = 0
    patterns[1, 6, 1] = 2.0      # k = (0.2, -0.3)
    patterns[2, 2, 4] = patterns[2, 4, 6] = 1.0  # mean of (-0.2, 0) and (0, 0.2)
    cy, cx, total = center_of_mass(patterns, ky, kx, np)
    np.testing.assert_allclose(cy, [0.0, 0.2, -0.1], atol=1e-12)
    np.testing.assert_allclose(cx, [0.0, -0.3, 0.1], atol=1e-12)
    np.testing.assert_allclose(total, [5.0, 2.0, 2.0])
    cy, cx, _ = center_of_mass(np.zeros((1, 8, 8)), ky, kx, np)
    assert cy[0] == 0 and cx[0] == 0


@pytest.mark.parametrize(("angle", "transpose"), [(33.0, False), (-71.0, True), (120.0, False)])
def test_curl_fit_of_an_exact_gradient_field(angle, transpose):
    y, x = np.meshgrid(np.arange(20.0), np.arange(24.0), indexing="ij")
    phi = np.sin(0.5 * x) * np.cos(0.3 * y) + 0.2 * np.exp(-((x - 9) ** 2 + (y - 11) ** 2) / 8)
    gy, gx = np.gradient(phi)
    # scan-frame gradient -> detector frame: v_det = R(angle) v_scan, then transpose
    t = math.radians(angle)
    dx = math.cos(t) * gx - math.sin(t) * gy
    dy = math.sin(t) * gx + math.cos(t) * gy
    if transpose:
        dy, dx = dx, dy
    fit = fit_rotation_by_curl(dy, dx, (1.0, 1.0))
    assert fit["transpose"] is transpose
    diff = (fit["rotation_deg"] - angle + 90.0) % 180.0 - 90.0  # modulo 180 by design
    assert abs(diff) < 0.5
    back_y, back_x = to_scan_frame(dy, dx, angle, transpose)
    np.testing.assert_allclose(back_y, gy, atol=1e-12)
    np.testing.assert_allclose(back_x, gx, atol=1e-12)


# ---------------------------------------------------------------------------- initializer
def test_phase_on_grid_places_the_image_in_the_specimen_frame():
    """An image sampled from an analytic f(s) in the scan frame, resampled onto a grid, equals
    f(R(theta)^T p) at the grid positions p (inside the image)."""
    def f(sy, sx):
        return np.exp(-((sy - 3.2) ** 2 + (sx - 4.1) ** 2) / 4.0)

    pixel = (0.5, 0.5)
    origin = (-0.25, 0.5)
    iy, ix = np.meshgrid(np.arange(18), np.arange(18), indexing="ij")
    image = f(origin[0] + iy * pixel[0], origin[1] + ix * pixel[1])
    grid = ReconstructionGrid(window=(8, 8), pixel_size_A=0.25, object_shape=(40, 40),
                              origin_A=(-2.0, -1.0))
    py, px = np.meshgrid(grid.origin_A[0] + np.arange(40) * 0.25,
                         grid.origin_A[1] + np.arange(40) * 0.25, indexing="ij")
    for theta in (0.0, 30.0):
        t = math.radians(theta)
        sx = math.cos(t) * px + math.sin(t) * py
        sy = -math.sin(t) * px + math.cos(t) * py
        expected = f(sy, sx) - image.mean()
        got = phase_on_grid(image, pixel, origin, theta, grid)
        inside = ((sy > origin[0] + 1) & (sy < origin[0] + 7.5) & (sx > origin[1] + 1)
                  & (sx < origin[1] + 7.5))
        assert inside.sum() > 200
        np.testing.assert_allclose(got[inside], expected[inside], atol=2e-3)
        far = (sy < origin[0] - 1) | (sx > origin[1] + 10)
        assert np.all(got[far] == 0)


def test_direct_phase_initializer_reads_a_result_folder(sim, tmp_path):
    result = run_direct(DPC(), sim.patterns, sim.experiment, DEVICE, output_dir=tmp_path)
    init = REGISTRY.create("object_initializer", {"type": "direct_phase",
                                                  "path": str(tmp_path / "dpc")})
    assert init.to_config()["path"] == str(tmp_path / "dpc")
    context = InitContext(sim.experiment, sim.grid, None, len(sim.patterns))
    obj = init.build(context, sim.grid.object_shape, 2, 3)
    assert obj.shape == (2, 3, *sim.grid.object_shape) and np.iscomplexobj(obj)
    np.testing.assert_allclose(np.abs(obj), 1.0)
    total = np.angle(obj[:, 0]).sum(axis=0)  # the phase is split over the slices
    scan_grid = ReconstructionGrid(window=(1, 1), pixel_size_A=0.5, object_shape=(16, 16),
                                   origin_A=(0.0, 0.0))
    back = resample_to_grid(total, sim.grid, scan_grid)
    assert phase_correlation(back, result.phase, align=False) > 0.99
    assert not np.allclose(obj[:, 1], obj[:, 0])  # mode noise
    # a bare .npy needs its pixel size
    np.save(tmp_path / "bare.npy", result.phase)
    with pytest.raises(ValueError, match="pixel_size_A"):
        DirectPhaseObject(path=str(tmp_path / "bare.npy")).build(
            context, sim.grid.object_shape, 1, 1)
    obj2 = DirectPhaseObject(path=str(tmp_path / "bare.npy"), pixel_size_A=0.5).build(
        context, sim.grid.object_shape, 1, 1)
    np.testing.assert_allclose(np.angle(obj2[0, 0]), total, atol=1e-9)
    with pytest.raises(FileNotFoundError):
        DirectPhaseObject(path=str(tmp_path / "missing")).build(context, (4, 4), 1, 1)
    with pytest.raises(ValueError, match="origin_A"):
        DirectPhaseObject(path="x.npy", origin_A=[1.0])


def _epochs_to_reach(sim: SimulatedData, initializer, target: float, max_epochs: int) -> int:
    counts = sim.patterns * NOISELESS_COUNTS
    rec = Reconstruction(counts, sim.experiment, positions_A=sim.positions_A,
                         propagator=Multislice(slice_thickness_A=2.0), device=DEVICE,
                         refine_probe=False, progress=False, object_initializer=initializer)
    rec.initialize()
    truth = resample_to_grid(sim.phase, sim.grid, rec.grid)
    mask = scanned_region_mask(rec.grid, sim.positions_A)

    def reached(obj) -> bool:
        phase = np.angle(DEVICE.to_host(obj)[:, 0]).sum(axis=0)
        return phase_correlation(phase, truth, mask=mask) >= target

    if reached(rec.params["object"]):
        return 0
    rec.run(max_epochs, callbacks=[lambda report: reached(report.params["object"])])
    return rec.epoch if reached(rec.params["object"]) else max_epochs + 1


def test_a_direct_start_converges_in_fewer_epochs_than_vacuum(sim, tmp_path):
    counts = sim.patterns * NOISELESS_COUNTS
    for method in (DPC(), WDD(epsilon=1e-3)):  # noise-free data: a weak Wiener term
        run_direct(method, counts, sim.experiment, DEVICE, output_dir=tmp_path)
    target = 0.97
    # measured epochs to a phase correlation of 0.97: vacuum 6, from DPC 1, from WDD 3
    # (4 with the default epsilon 1e-2)
    vacuum = _epochs_to_reach(sim, None, target, 8)
    from_dpc = _epochs_to_reach(sim, DirectPhaseObject(path=str(tmp_path / "dpc")), target, 8)
    from_wdd = _epochs_to_reach(sim, DirectPhaseObject(path=str(tmp_path / "wdd")), target, 8)
    assert vacuum >= 5
    assert from_dpc <= vacuum - 3
    assert from_wdd <= vacuum - 2


# ---------------------------------------------------------------------------- command line
def test_command_line_runs_methods_from_file_metadata(sim, tmp_path, capsys):
    path = tmp_path / "scan.h5"
    exp = sim.experiment
    with h5py.File(path, "w") as fh:
        fh["data"] = sim.patterns * NOISELESS_COUNTS
        fh.attrs["acc_voltage_kV"] = exp.voltage_kV
        fh.attrs["convergence_semiangle_mrad"] = exp.convergence_angle_mrad
        fh.attrs["detector_pixel_size_inv_A"] = exp.dk_inv_A
        fh.attrs["scan_shape"] = list(exp.scan_shape)
        fh.attrs["scan_step_A"] = 0.5
        fh.attrs["C10_A"] = 0.0
    out = tmp_path / "out"
    code = cli_main(["direct", str(path), "--method", "dpc", "--method", "wdd", "--method",
                     '{"type": "wdd", "mode": "ssb"}', "--output", str(out), "--device", "cpu",
                     "--precision", "double"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "dpc" in printed and "wdd_ssb" in printed
    assert (out / "dpc" / "phase.npy").is_file() and (out / "wdd" / "amplitude.npy").is_file()
    record = json.loads((out / "wdd_ssb" / "values.json").read_text())
    assert record["values"]["mode"] == "ssb"
    assert json.loads((out / "wdd" / "values.json").read_text())["values"]["mode"] == "wdd"
    assert cli_main(["direct", str(path), "--method", "nope", "--device", "cpu"]) == 2
    assert cli_main(["direct", str(path), "--method", "dpc", "--method", "dpc"]) == 2


def test_vector_arrays_are_quiver_plots_and_images_start_at_their_origin(tmp_path):
    """(n, 2) shift lists are drawn as arrows at their frequencies, not as images; an image
    with an origin (tcBF) has axes that start there (issue 11)."""
    from matplotlib.image import imread

    rng = np.random.default_rng(0)
    k = np.stack(np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 5)), -1).reshape(-1, 2)
    shifts = 0.3 * k + 0.01 * rng.standard_normal(k.shape)
    result = DirectResult(method="tcbf", arrays={
        "tcbf": rng.standard_normal((20, 24)), "phase": rng.standard_normal((20, 24)),
        "bf_image": rng.standard_normal((8, 8)),
        "group_k_inv_A": k, "shifts_A": shifts, "shifts_fit_A": 0.3 * k,
        "bf_k_inv_A": k, "bf_shifts_A": shifts},
        values={"origin_A": [-2.5, -3.0], "pixel_size_yx_A": [0.25, 0.25]},
        pixel_size_A=0.25, units={"shifts_A": "Å"})
    folder = save_direct_result(result, tmp_path)
    for name in ("group_k_inv_A", "shifts_A", "shifts_fit_A", "bf_k_inv_A", "bf_shifts_A"):
        assert not (folder / f"{name}.png").exists(), name
    record = json.loads((folder / "values.json").read_text())["arrays"]
    assert record["shifts_A"]["figure"] == record["shifts_fit_A"]["figure"] == "shifts.png"
    assert record["bf_shifts_A"]["figure"] == "bf_shifts.png"
    for name in ("shifts", "bf_shifts", "tcbf", "bf_image"):
        image = imread(folder / f"{name}.png")[..., :3]
        assert image.std() > 0.02, f"{name}.png looks blank"
    # the tcbf image's extent starts at the origin (checked on the figure's axes)
    from ptyframe.apps.direct import image_figure

    fig = image_figure("tcbf", result.arrays["tcbf"], (0.25, 0.25), None, "t",
                       origin=(-2.5, -3.0))
    left, right, bottom, top = fig.axes[0].get_images()[0].get_extent()
    assert (left, top) == pytest.approx((-3.0 - 0.125, -2.5 - 0.125))
    assert right == pytest.approx(-3.0 + 23.5 * 0.25) and fig.axes[0].get_xlabel() == "x (Å)"
