"""Reference parameter dictionaries -> ptyframe configurations that build and run."""

import json
import math

import attrs
import h5py
import numpy as np
import pytest

from ptyframe import load_registry
from ptyframe.apps.cli import main
from ptyframe.apps.config import build_reconstruction, load_config
from ptyframe.apps.migrate import (
    MIGRATION_TABLE,
    REFERENCE_DEFAULTS,
    REFERENCE_KEYS,
    MigrationError,
    migrate_file,
    migrate_reference_parameters,
)
from ptyframe.components import InitContext, ModelContext
from ptyframe.core.device import Device
from ptyframe.core.experiment import ReconstructionGrid
from ptyframe.core.schedules import EveryN, FromEpoch, Piecewise, Schedule
from ptyframe.testing.simulate import simulate_dataset

WINDOW = 24


@pytest.fixture(scope="module")
def registry():
    return load_registry()


@pytest.fixture(scope="module")
def sim(registry):
    prop = registry.create("propagator", {"type": "multislice"})
    return simulate_dataset(prop, window=WINDOW, scan_shape=(5, 5), step_A=0.7,
                            dose_per_pattern=1e5, seed=3)


@pytest.fixture()
def data_file(sim, tmp_path):
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as fh:
        fh["data"] = sim.patterns
    return path


def reference_params(sim, data_file, **extra):
    """A reference-style dictionary describing the simulated scan."""
    px = sim.grid.pixel_size_A
    params = {
        "data_path": str(data_file),
        "acc_voltage": sim.experiment.voltage_kV,
        "pixel_size_x_A": px, "pixel_size_y_A": px,
        "positions": sim.grid.positions_to_pixels(sim.positions_A),
        "scan_size": (5, 5),
        "aberrations": [-sim.experiment.defocus_A],
        "epoch_max": 4,
        "print_flag": 0,
        "default_dtype": "double",
    }
    params.update(extra)
    return params


def converged_angle(sim):
    return {"convergence_angle_mrad": sim.experiment.convergence_angle_mrad}


# ------------------------------------------------------------------ the table
def test_every_guide_key_has_exactly_one_row():
    keys = [row.key for row in MIGRATION_TABLE]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(REFERENCE_KEYS) == set(REFERENCE_DEFAULTS)
    assert {row.status for row in MIGRATION_TABLE} <= {"mapped", "note", "unsupported"}
    notes = {row.key for row in MIGRATION_TABLE if row.status == "note"}
    assert notes == {"backend", "smart_memory", "remove_fft_cache", "preload_to_cpu",
                     "force_pad"}


def test_table_locations_name_registered_components_and_fields(registry):
    problems = []
    for row in MIGRATION_TABLE:
        for kind, name, field in row.components():
            if (kind, name) not in registry:
                problems.append(f"{row.key}: {kind} {name!r} is not registered")
                continue
            fields = {f.alias for f in attrs.fields(registry.get(kind, name)) if f.init}
            if field not in fields:
                problems.append(f"{row.key}: {kind} {name!r} has no setting {field!r}")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ full round trip
def test_reference_dict_builds_and_runs(sim, data_file, tmp_path, monkeypatch, registry):
    probe_ref = np.transpose(sim.probe, (1, 2, 0))  # reference layout (y, x, modes)
    params = reference_params(
        sim, data_file,
        aberrations=None,
        probe=probe_ref,
        update_probe="lambda x: x >= 1",
        atv_weight="lambda x: 1e-4 if x < 2 else 0",
        apply_gaussian_filter="lambda x: 0.5 if x % 3 == 2 else 0",
        hist_length=np.inf, wolfe_c1_constant=0.1, wolfe_c2_constant=0.9,
        smart_memory="lambda x: x % 10 == 0", force_pad=True,
        output_folder=str(tmp_path / "out"),
    )
    cfg_dir = tmp_path / "cfg"
    result = migrate_reference_parameters(params, cfg_dir, experiment=converged_angle(sim))
    config = json.loads(json.dumps(result.config))  # JSON-ready and unchanged by it
    assert config == result.config
    assert any(n.startswith("smart_memory") for n in result.notes)
    assert any(n.startswith("force_pad") for n in result.notes)
    assert config["optimizer"] == {"type": "quasi_newton", "c1": 0.1, "c2": 0.9,
                                   "max_count": 1000, "optimism": 2.0, "history_length": "inf"}
    assert Schedule.from_config(config["refine"]["probe"]) == FromEpoch(1)
    (atv,) = [r for r in config["regularizers"] if r["type"] == "atv"]
    assert Schedule.from_config(atv["weight"]) == Piecewise([[0, 1e-4], [2, 0]])
    (gauss,) = [c for c in config["constraints"] if c["type"] == "gaussian_filter"]
    assert gauss["sigma_phase_px"] == 0.5 and gauss["sigma_amplitude_px"] == 0.0
    assert Schedule.from_config(gauss["when"]) == EveryN(3, offset=2)
    assert config["probe_initializer"]["type"] == "probe_from_file"
    stored = np.load(cfg_dir / config["probe_initializer"]["path"])
    np.testing.assert_array_equal(stored, sim.probe)  # (modes, y, x), scale kept

    path = cfg_dir / "config.json"
    path.write_text(json.dumps(config))
    monkeypatch.chdir(cfg_dir)  # component file paths work relative to the config folder
    rec, epochs = build_reconstruction(load_config(path), cfg_dir, registry=registry)
    assert epochs == 4
    out = rec.to_config()
    assert out["optimizer"]["c1"] == 0.1 and out["optimizer"]["history_length"] == "inf"
    assert Schedule.from_config(out["refine"]["probe"]) == FromEpoch(1)
    assert out["object_margin_px"] == 0
    assert out["device"]["precision"] == "double"
    assert {r["type"] for r in out["regularizers"]} == {"atv"}
    assert {c["type"] for c in out["constraints"]} == {"gaussian_filter", "band_limit"}

    result_run = rec.run(epochs)
    assert np.all(np.isfinite(result_run.loss))
    assert result_run.loss[-1] < result_run.loss[0]
    # the migrated calibration reproduces the reference's pixel size and scan geometry
    assert math.isclose(rec.grid.pixel_size_A, sim.grid.pixel_size_A, rel_tol=1e-12)
    start = np.load(cfg_dir / config["position_initializer"]["path"])
    offset = start - sim.positions_A
    np.testing.assert_allclose(offset, offset[0] + np.zeros_like(offset), atol=1e-9)


def test_pad_and_pixel_size_give_the_reference_pixel(sim, data_file, tmp_path, monkeypatch,
                                                      registry):
    """data_pad enlarges the model grid; the object pixel stays pixel_size_x_A."""
    pad = 4
    px = 1.0 / ((WINDOW + 2 * pad) * sim.experiment.dk_inv_A)
    window = WINDOW + 2 * pad
    grid = ReconstructionGrid.covering(sim.positions_A, (window, window),
                                       sim.experiment.dk_inv_A * WINDOW / window, margin_px=2)
    params = reference_params(sim, data_file, data_pad=pad, pixel_size_x_A=px,
                              pixel_size_y_A=px, positions=grid.positions_to_pixels(
                                  sim.positions_A), epoch_max=1)
    result = migrate_reference_parameters(params, tmp_path / "cfg",
                                          experiment=converged_angle(sim))
    assert result.config["detector"] == {"type": "far_field", "pad_px": pad}
    assert math.isclose(result.config["experiment"]["detector_pixel_size_inv_A"],
                        sim.experiment.dk_inv_A, rel_tol=1e-12)
    monkeypatch.chdir(tmp_path / "cfg")
    rec, _ = build_reconstruction(result.config, tmp_path / "cfg", registry=registry)
    rec.initialize()
    assert math.isclose(rec.grid.pixel_size_A, px, rel_tol=1e-12)
    assert rec.grid.window == (window, window)
    # positions convert back to the reference's corners
    corners = rec.grid.positions_to_pixels(np.load(tmp_path / "cfg" / "positions_A.npy"))
    diff = corners - grid.positions_to_pixels(sim.positions_A)
    np.testing.assert_allclose(diff, diff[0] + np.zeros_like(diff), atol=1e-9)


def test_convergence_angle_is_estimated_from_the_aperture_mask(sim, data_file, tmp_path):
    px = sim.grid.pixel_size_A
    q = np.fft.fftshift(np.fft.fftfreq(WINDOW, px))
    qq = np.hypot(q[:, None], q[None, :])
    alpha = sim.experiment.convergence_angle_mrad * 1e-3
    mask = (qq * sim.experiment.wavelength_A <= alpha).astype(float)
    result = migrate_reference_parameters(
        reference_params(sim, data_file, aperture_mask=mask, probe="aperture"), tmp_path)
    estimate = result.config["experiment"]["convergence_angle_mrad"]
    assert abs(estimate - sim.experiment.convergence_angle_mrad) < 0.1 * alpha * 1e3
    assert result.config["probe_initializer"] == {"type": "aperture"}
    assert any("estimated" in note for note in result.notes)


# ------------------------------------------------------------------ conversions
def test_extra_probe_defocus_propagates_the_probe_like_the_reference(sim, registry, tmp_path):
    """The reference propagates the probe by +d; the migrated initializer must do the same."""
    d = 37.0
    result = migrate_reference_parameters(
        {"extra_probe_defocus": d, "acc_voltage": 200.0, "pixel_size_x_A": 0.25,
         "pixel_size_y_A": 0.25, "data_path": "missing.h5",
         "probe": "aperture", "aperture_mask": np.ones((WINDOW, WINDOW)),
         "positions": np.zeros((2, 2))},
        tmp_path, experiment={"convergence_angle_mrad": 25.0}, check=False)
    settings = result.config["probe_initializer"]
    assert settings == {"type": "aperture", "extra_defocus_A": -d}
    init = registry.create("probe_initializer", settings)
    plain = registry.create("probe_initializer", {"type": "aperture"})
    context = InitContext(sim.experiment, sim.grid, None, 1)
    ratio = init.phase_factor(context) / plain.phase_factor(context)
    qy = np.fft.fftfreq(WINDOW, sim.grid.pixel_size_A)[:, None]
    qx = np.fft.fftfreq(WINDOW, sim.grid.pixel_size_A)[None, :]
    fresnel = np.exp(-1j * np.pi * d * sim.experiment.wavelength_A * (qy**2 + qx**2))
    np.testing.assert_allclose(ratio, fresnel, atol=1e-10)


def test_mode_and_regularizer_conversions(sim, data_file, tmp_path):
    params = reference_params(
        sim, data_file, n_hermite_probe_modes=(1, 2), probe_reg_constraint_weight=2.0,
        probe_constraint_mask=np.ones((WINDOW, WINDOW)), fancy_sigma=1.4, do_charge_flip=True,
        cf_beta_phase=-0.5, slow_axis_reg_weight_positions="lambda x: 0.1 * (x >= 5)",
        update_probe_pos="lambda x: x >= 5", restart_from_vacuum=[3, 1])
    config = migrate_reference_parameters(params, tmp_path,
                                          experiment=converged_angle(sim)).config
    assert config["n_probe_modes"] == 6
    assert config["probe_initializer"] == {"type": "mean_pattern", "hermite_modes": [3, 2]}
    (mask_reg,) = [r for r in config["regularizers"] if r["type"] == "probe_fourier_mask"]
    assert mask_reg["weight"] == 2.0 * WINDOW**2
    assert np.load(tmp_path / mask_reg["mask_path"]).shape == (WINDOW, WINDOW)
    (flip,) = [c for c in config["constraints"] if c["type"] == "fancy_sigma"]
    assert math.isclose(flip["sigma_px"], 1.4 / math.sqrt(2))
    assert flip["beta_phase"] == -0.5 and flip["when"] is True
    (smooth,) = [r for r in config["regularizers"] if r["type"] == "position_smoothness"]
    assert Schedule.from_config(smooth["slow_weight"]) == Piecewise([[0, 0.0], [5, 0.1]])
    assert Schedule.from_config(config["refine"]["positions"]) == FromEpoch(5)
    assert {"type": "restart_from_vacuum", "epochs": [1, 3]} in config["constraints"]


def test_near_field_settings(sim, data_file, tmp_path):
    params = reference_params(sim, data_file, recon_type="near_field",
                              defocus_array=np.linspace(100, 400, 25), Cs=1e4,
                              alpha_near_field=1e-4)
    config = migrate_reference_parameters(params, tmp_path,
                                          experiment=converged_angle(sim)).config
    detector = config["detector"]
    assert detector["type"] == "near_field"
    # the reference's values are propagation distances (+C10): defocus_A = -value
    assert detector["defocus_A"] == list(-np.linspace(100, 400, 25))
    assert detector["cs_A"] == 1e4 and detector["alpha"] == 1e-4
    assert detector["pixel_size_A"] == sim.grid.pixel_size_A


def test_near_field_defocus_keeps_the_reference_physics(sim, data_file, tmp_path, registry):
    """The migrated detector applies the reference's near-field transfer function
    exp(-i pi [lambda q^2 dz + Cs lambda^3 q^4 / 2]) for its defocus_array value dz."""
    dz, cs = 250.0, 1e5
    params = reference_params(sim, data_file, recon_type="near_field",
                              defocus_array=np.array([dz]), Cs=cs)
    config = migrate_reference_parameters(params, tmp_path,
                                          experiment=converged_angle(sim)).config
    detector = registry.create("detector", config["detector"])
    n, px, lam = 16, config["detector"]["pixel_size_A"], sim.experiment.wavelength_A
    detector.prepare(ModelContext(window=(n, n), pixel_size_A=px, wavelength_A=lam,
                                  n_measurements=1, device=Device("cpu", "double")))
    wave = np.random.default_rng(0).normal(size=(1, 1, 1, n, n)) + 0j
    q = np.fft.fftfreq(n, px)
    q2 = q[:, None] ** 2 + q[None, :] ** 2
    reference = np.exp(-1j * np.pi * (lam * q2 * dz + cs * lam**3 * q2**2 / 2))
    np.testing.assert_allclose(detector.propagate(wave, np.array([0])),
                               np.fft.ifft2(np.fft.fft2(wave) * reference), atol=1e-12)


# ------------------------------------------------------------------ refusals
def test_every_problem_is_reported_in_one_error(sim, data_file, tmp_path):
    params = reference_params(
        sim, data_file, epoch_prev=10, mean_pattern=np.ones((WINDOW, WINDOW)),
        pixel_size_y_A=0.3, update_obj=lambda x: x > 3, hist_length="lambda x: x > 4",
        wolfe_c1_constant="lambda x: x * 2", default_dtype="half", not_a_key=1,
        data_pad=3, upsample_pattern=2)
    with pytest.raises(MigrationError) as info:
        migrate_reference_parameters(params, tmp_path, experiment=converged_angle(sim))
    keys = {key for keys, _ in info.value.problems for key in keys.split(", ")}
    assert {"epoch_prev", "mean_pattern", "pixel_size_x_A", "update_obj", "hist_length",
            "wolfe_c1_constant", "default_dtype", "not_a_key", "data_pad"} <= keys
    message = str(info.value)
    assert "update_obj: a Python function cannot be inspected safely" in message
    assert "'lambda x: x * 2'" in message
    assert message.count("square pixels") == 1


def test_python_lambda_is_refused(sim, data_file, tmp_path):
    with pytest.raises(MigrationError, match=r"atv_weight: a Python function .* string"):
        migrate_reference_parameters(reference_params(sim, data_file,
                                                      atv_weight=lambda x: 0.1),
                                     tmp_path, experiment=converged_angle(sim))


def test_performance_knobs_are_notes_only(sim, data_file, tmp_path):
    base = migrate_reference_parameters(reference_params(sim, data_file), tmp_path / "a",
                                        experiment=converged_angle(sim))
    knobs = {"backend": "cp", "smart_memory": False, "remove_fft_cache": True,
             "preload_to_cpu": True, "force_pad": True}
    with_knobs = migrate_reference_parameters(reference_params(sim, data_file, **knobs),
                                              tmp_path / "b", experiment=converged_angle(sim))
    assert with_knobs.config == base.config
    for key in knobs:
        assert any(note.startswith(f"{key}:") for note in with_knobs.notes)


# ------------------------------------------------------------------ files and CLI
def test_migrate_file_and_cli(sim, data_file, tmp_path):
    np.save(tmp_path / "corners.npy", sim.grid.positions_to_pixels(sim.positions_A))
    ref = {"data_path": data_file.name, "acc_voltage": 200.0,
           "pixel_size_x_A": sim.grid.pixel_size_A, "pixel_size_y_A": sim.grid.pixel_size_A,
           "positions": "corners.npy", "update_probe": "lambda x: x > 2",
           "slice_distances": [2.0], "data_shift_vector": [1, -1], "aberrations": [-50.0],
           "atv_weight": "lambda x: 0.1 if x < 3 else 0", "data_pad": 2}
    src = tmp_path / "params.json"
    src.write_text(json.dumps(ref))
    result = migrate_file(src, tmp_path / "out" / "config.toml",
                          experiment=converged_angle(sim))
    loaded = load_config(tmp_path / "out" / "config.toml")
    assert loaded == json.loads(json.dumps(result.config))
    assert loaded["data"]["path"] == "../scan.h5"
    assert loaded["data"]["preprocessing"]["shift_px"] == [1, -1]
    assert Schedule.from_config(loaded["refine"]["probe"]) == FromEpoch(3)
    assert loaded["experiment"]["aberrations"] == {"C10": -50.0}
    assert Schedule.from_config(loaded["regularizers"][0]["weight"]) == Piecewise(
        [[0, 0.1], [3, 0]])
    assert loaded["detector"] == {"type": "far_field", "pad_px": 2}
    assert main(["migrate", str(src), "--output", str(tmp_path / "cli" / "config.json"),
                 "--convergence-angle-mrad", "25"]) == 0
    assert load_config(tmp_path / "cli" / "config.json")["refine"] == loaded["refine"]
    assert main(["migrate", str(tmp_path / "missing.json"), "--output",
                 str(tmp_path / "x.json")]) == 2


def fourier_shift(obj, shift):
    """obj(p - shift) on the same periodic grid, for the deviation from vacuum."""
    qy = np.fft.fftfreq(obj.shape[-2])[:, None]
    qx = np.fft.fftfreq(obj.shape[-1])[None, :]
    ramp = np.exp(-2j * np.pi * (qy + qx) * shift)
    return 1 + np.fft.ifft2(np.fft.fft2(obj - 1) * ramp)


@pytest.mark.parametrize("corner_offset", [0.0, 0.3])
def test_initial_object_lands_on_the_reference_pixels(sim, data_file, tmp_path, monkeypatch,
                                                      registry, corner_offset):
    """A reference object (y, x, z, modes) is placed so that every probe window sees the same
    object as in the reference (a fractional smallest corner resamples it by a sub-pixel
    shift); with the true object and probe the starting loss is at the noise level, far below
    a vacuum start."""
    corners = sim.grid.positions_to_pixels(sim.positions_A) + corner_offset
    truth = sim.object if corner_offset == 0 else fourier_shift(sim.object, corner_offset)
    params = reference_params(sim, data_file, positions=corners, aberrations=None,
                              probe=np.transpose(sim.probe, (1, 2, 0)),
                              extra_space_on_side_px=3)
    losses = {}
    for name, obj in (("object", np.transpose(truth, (2, 3, 0, 1))), ("vacuum", None)):
        folder = tmp_path / name
        result = migrate_reference_parameters(dict(params, obj=obj), folder,
                                              experiment=converged_angle(sim))
        assert any(n.startswith("obj: resampled") for n in result.notes) == (
            obj is not None and corner_offset != 0)
        monkeypatch.chdir(folder)
        rec, _ = build_reconstruction(result.config, folder, registry=registry)
        rec.initialize()
        losses[name] = rec.evaluate(rec.params, ("object",))[0]
        shift = rec.grid.positions_to_pixels(np.load(folder / "positions_A.npy")) - corners
        np.testing.assert_allclose(shift, shift[0] + np.zeros_like(shift), atol=1e-9)
        if obj is None:
            continue
        # ptyframe pixel j holds the simulated object's pixel j + k (k whole pixels)
        k = -int(np.rint(shift[0, 0] + corner_offset))
        placed = np.asarray(rec.params["object"])
        n = min(placed.shape[-1], sim.object.shape[-1] - k)
        np.testing.assert_allclose(placed[:, :, :n, :n], sim.object[:, :, k:k + n, k:k + n],
                                   atol=1e-9)
    assert losses["object"] < 0.3 * losses["vacuum"]


def test_published_reference_example_migrates_and_runs(sim, data_file, tmp_path, monkeypatch,
                                                       registry):
    """The settings of the reference's graphene example (position refinement, defocus-spread
    probe modes, epoch-dependent first step) on the small simulated scan."""
    params = reference_params(
        sim, data_file,
        update_obj=1, update_probe=1, update_probe_pos="lambda x: x>=1",
        fast_axis_reg_weight_positions=1e-1, hist_length=30,
        update_step_bfgs="lambda x: 8.100e-09 if x==0 else 1",
        defocus_spread_modes=np.linspace(-50, 50, 5), compute_batch=30, min_step=1e-30,
        max_count=20, optimism=3, reduce_factor=1 / 10, wolfe_c1_constant=1e-5,
        wolfe_c2_constant=0.9999, epoch_max=3, dynamically_resize_yx_object=1,
        extra_space_on_side_px=4, damping_cutoff_multislice=0.66, lazy_clean=False,
        update_extra_cut=0.05, save_inter_checkpoints=True,
        save_checkpoints_every_epoch=False, algorithm="lsq_sqrt", use_full_FOV=True,
        load_one_by_one=False, preload_to_cpu=False, smart_memory=False, force_pad=False)
    result = migrate_reference_parameters(params, tmp_path, experiment=converged_angle(sim))
    config = result.config
    assert config["n_probe_modes"] == 5
    assert config["probe_initializer"]["defocus_spread_A"] == list(-np.linspace(-50, 50, 5))
    assert config["optimizer"]["initial_step"] == 8.1e-09
    assert config["optimizer"]["max_count"] == 22
    assert config["batch_size"] == 30
    assert any(n.startswith("update_step_bfgs") for n in result.notes)
    monkeypatch.chdir(tmp_path)
    rec, epochs = build_reconstruction(config, tmp_path, registry=registry)
    run = rec.run(epochs)
    assert len(run.loss) == 3 and np.all(np.isfinite(run.loss))
    assert run.loss[-1] < run.loss[0]
    assert run.probe.shape[0] == 5
