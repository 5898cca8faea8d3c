"""Output folder: checkpoints (layout, atomicity, resume), loss log, parameters, NeXus."""

from __future__ import annotations

import json
import os
import shutil

import h5py
import numpy as np
import pytest

from ptyframe.io import results
from ptyframe.io.nexus import export_nexus
from ptyframe.io.results import (
    LossLog,
    OutputFolder,
    atomic_save_npy,
    atomic_write_json,
    atomic_write_text,
    from_reference_layout,
    load_parameters,
    load_state,
    read_loss_log,
    to_reference_layout,
)

S, K, Y, X = 3, 2, 12, 10
KP, NY, NX = 2, 8, 6


def make_arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    obj = (rng.normal(size=(S, K, Y, X)) + 1j * rng.normal(size=(S, K, Y, X))).astype(
        np.complex64)
    probe = rng.normal(size=(KP, NY, NX)) + 1j * rng.normal(size=(KP, NY, NX))
    positions = rng.normal(size=(20, 2)) * 5
    tilts = rng.normal(size=(20, 6)) * 1e-3
    return {"object": obj, "probe": probe, "positions": positions, "tilts": tilts,
            "beam_current": rng.random(20), "custom_block": rng.random(4)}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert set(a) == set(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# --------------------------------------------------------------------------- checkpoints

def test_round_trip_exact(tmp_path):
    out = OutputFolder(tmp_path / "run")
    arrays = make_arrays(0)
    out.save_state(arrays, epoch=7)
    loaded, epoch = load_state(tmp_path / "run")
    assert epoch == 7
    assert_same(arrays, loaded)
    assert loaded["object"].flags.c_contiguous and loaded["probe"].flags.c_contiguous
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["epoch"] == 7 and state["files"]["object"]["file"] == "co.npy"
    assert state["pending"] is None
    assert out.has_checkpoint()


def test_reference_file_names_and_layout(tmp_path):
    out = OutputFolder(tmp_path)
    arrays = make_arrays(1)
    out.save_state(arrays, epoch=1)
    co = np.load(tmp_path / "co.npy")
    cp = np.load(tmp_path / "cp.npy")
    assert co.shape == (Y, X, S, K)
    assert cp.shape == (NY, NX, KP)
    np.testing.assert_array_equal(co[:, :, 2, 1], arrays["object"][2, 1])
    np.testing.assert_array_equal(cp[:, :, 1], arrays["probe"][1])
    np.testing.assert_array_equal(np.load(tmp_path / "cg.npy"), arrays["positions"])
    for name in ("ct.npy", "cb.npy", "custom_block.npy", "state.json"):
        assert (tmp_path / name).is_file(), name
    assert not list(tmp_path.glob(".*")), "no temporary files left behind"


def test_layout_helpers_invert():
    rng = np.random.default_rng(2)
    obj = rng.random((S, K, Y, X))
    probe4 = rng.random((3, KP, NY, NX))
    assert to_reference_layout("object", obj).shape == (Y, X, S, K)
    assert to_reference_layout("probe", probe4).shape == (NY, NX, KP, 3)
    for name, a in (("object", obj), ("probe", probe4), ("probe", probe4[0]),
                    ("positions", rng.random((5, 2)))):
        np.testing.assert_array_equal(from_reference_layout(name, to_reference_layout(name, a)),
                                      a)
    with pytest.raises(ValueError, match="object"):
        to_reference_layout("object", obj[0])


def test_epoch_checkpoints_only_at_multiples(tmp_path):
    out = OutputFolder(tmp_path, checkpoint_every=3)
    for epoch in range(0, 8):
        out.save_state(make_arrays(epoch), epoch)
    names = sorted(p.name for p in tmp_path.glob("checkpoint_*"))
    expected = sorted(
        f"checkpoint_{block}_epoch_{n}.npy" for n in (3, 6)
        for block in ("obj", "probe", "positions", "tilts", "beam_current", "custom_block"))
    assert names == expected
    np.testing.assert_array_equal(np.load(tmp_path / "checkpoint_obj_epoch_6.npy"),
                                  to_reference_layout("object", make_arrays(6)["object"]))
    _, epoch = load_state(tmp_path)
    assert epoch == 7


def test_no_overwritable_checkpoints(tmp_path):
    out = OutputFolder(tmp_path, overwrite_checkpoints=False, checkpoint_every=1)
    out.save_state(make_arrays(0), 1)
    assert not (tmp_path / "co.npy").exists()
    assert (tmp_path / "checkpoint_obj_epoch_1.npy").is_file()
    with pytest.raises(FileNotFoundError, match="state.json"):
        load_state(tmp_path)


def test_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="checkpoint_every"):
        OutputFolder(tmp_path, checkpoint_every=0)
    out = OutputFolder(tmp_path)
    with pytest.raises(ValueError, match="epoch"):
        out.save_state(make_arrays(0), -1)
    with pytest.raises(ValueError, match="block name"):
        out.save_state({"../evil": np.zeros(2)}, 1)


def test_missing_checkpoint_errors_name_folder_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="state.json"):
        load_state(tmp_path)
    OutputFolder(tmp_path).save_state(make_arrays(0), 2)
    os.remove(tmp_path / "cp.npy")
    with pytest.raises(FileNotFoundError, match=r"cp\.npy") as info:
        load_state(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_overwritten_file_is_detected(tmp_path):
    OutputFolder(tmp_path).save_state(make_arrays(0), 2)
    np.save(tmp_path / "cg.npy", np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"cg\.npy"):
        load_state(tmp_path)


class Crash(Exception):
    pass


@pytest.mark.parametrize("target", ["replace", "fsync"])
def test_kill_at_any_point_keeps_a_consistent_checkpoint(tmp_path, monkeypatch, target):
    """Crash at the k-th os.replace / os.fsync of save_state, for every k.

    After each crash the folder holds exactly epoch 1 or exactly epoch 2 (never a mix), and
    the next save works.
    """
    base = tmp_path / "base"
    first, second, third = make_arrays(1), make_arrays(2), make_arrays(3)
    second["extra"] = np.arange(3.0)  # a block that only the new epoch has
    OutputFolder(base).save_state(first, 1)
    real = getattr(os, target)
    outcomes = []
    k = 0
    while True:
        k += 1
        folder = tmp_path / f"crash_{target}_{k}"
        shutil.copytree(base, folder)
        out = OutputFolder(folder)
        calls = {"n": 0}

        def failing(*args, _k=k, _calls=calls, **kwargs):
            _calls["n"] += 1
            if _calls["n"] == _k:
                raise Crash(f"killed at call {_k}")
            return real(*args, **kwargs)

        monkeypatch.setattr(os, target, failing)
        try:
            out.save_state(second, 2)
            crashed = False
        except Crash:
            crashed = True
        finally:
            monkeypatch.setattr(os, target, real)
        # read-only look first, then the recovering load
        peek, peek_epoch = load_state(folder, recover=False)
        loaded, epoch = load_state(folder)
        assert epoch == peek_epoch
        assert_same(loaded, peek)
        assert_same(loaded, first if epoch == 1 else second)
        assert not crashed or epoch in (1, 2)
        outcomes.append(epoch)
        # the folder is usable again
        out = OutputFolder(folder)
        out.save_state(third, 3)
        loaded, epoch = load_state(folder)
        assert epoch == 3
        assert_same(loaded, third)
        assert not list(folder.glob(".*")), "temporary files cleaned up"
        if not crashed:
            break
    assert outcomes[-1] == 2
    assert 1 in outcomes and 2 in outcomes[:-1], outcomes  # both sides of the commit point


def test_kill_mid_stage_write_leaves_previous_epoch(tmp_path, monkeypatch):
    out = OutputFolder(tmp_path)
    first = make_arrays(1)
    out.save_state(first, 1)

    def dying_save(*args, **kwargs):
        raise Crash("killed while writing")

    monkeypatch.setattr(results, "_write_fsynced_npy", dying_save)
    with pytest.raises(Crash):
        out.save_state(make_arrays(2), 2)
    monkeypatch.undo()
    (tmp_path / ".cp.npy.staged").write_bytes(b"\x93NUMPY garbage")  # a half-written stage
    loaded, epoch = load_state(tmp_path)
    assert epoch == 1
    assert_same(loaded, first)


def test_atomic_helpers(tmp_path, monkeypatch):
    target = tmp_path / "a.npy"
    atomic_save_npy(target, np.arange(5))
    atomic_write_text(tmp_path / "t.txt", "hello")
    atomic_write_json(tmp_path / "j.json", {"x": np.float32(1.5), "n": np.int64(3),
                                             "a": np.arange(2)})
    assert (tmp_path / "t.txt").read_text() == "hello"
    assert json.loads((tmp_path / "j.json").read_text()) == {"x": 1.5, "n": 3, "a": [0, 1]}

    def broken_replace(src, dst):
        raise Crash("killed before rename")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(Crash):
        atomic_save_npy(target, np.arange(7))
    monkeypatch.undo()
    np.testing.assert_array_equal(np.load(target), np.arange(5))  # old file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "j.json", "t.txt"]
    with pytest.raises(TypeError, match="object arrays"):
        atomic_save_npy(target, np.array([{}, 1], dtype=object))


# --------------------------------------------------------------------------- loss log

COLUMNS = ["epoch", "time_s", "loss", "step_size", "evaluations", "accepted", "atv"]


def test_loss_log_round_trip(tmp_path):
    log = OutputFolder(tmp_path).loss_log(COLUMNS)
    for epoch in range(1, 4):
        log.append(epoch=epoch, time_s=0.1 * epoch, loss=1.0 / 3 ** epoch,
                   step_size=np.float32(0.5), evaluations=np.int64(2), accepted=epoch != 2,
                   atv=None if epoch == 1 else 1e-3)
    data = read_loss_log(tmp_path)
    assert list(data) == COLUMNS
    np.testing.assert_array_equal(data["epoch"], [1, 2, 3])
    assert data["epoch"].dtype == np.int64
    np.testing.assert_array_equal(data["loss"], [1 / 3, 1 / 9, 1 / 27])  # exact round trip
    np.testing.assert_array_equal(data["accepted"], [1, 0, 1])
    assert np.isnan(data["atv"][0]) and data["atv"][1] == 1e-3
    with pytest.raises(ValueError, match="unknown columns"):
        log.append(epoch=4, lost=1.0)


def test_loss_log_resume_truncates_and_ignores_partial_row(tmp_path):
    path = tmp_path / "loss.csv"
    log = LossLog(path, COLUMNS)
    for epoch in range(1, 6):
        log.append(epoch=epoch, loss=float(epoch))
    with open(path, "a") as f:
        f.write("6,0.6,6.0,0.")  # killed mid-row
    data = read_loss_log(path)
    np.testing.assert_array_equal(data["epoch"], [1, 2, 3, 4, 5])
    log = LossLog(path, COLUMNS, resume_from_epoch=3)
    np.testing.assert_array_equal(read_loss_log(path)["epoch"], [1, 2, 3])
    log.append(epoch=4, loss=40.0)
    data = read_loss_log(path)
    np.testing.assert_array_equal(data["epoch"], [1, 2, 3, 4])
    np.testing.assert_array_equal(data["loss"], [1.0, 2.0, 3.0, 40.0])
    # a fresh (non-resumed) log replaces the old one
    LossLog(path, COLUMNS)
    assert read_loss_log(path)["epoch"].size == 0


def test_loss_log_resume_keeps_old_extra_columns(tmp_path):
    path = tmp_path / "loss.csv"
    LossLog(path, ["epoch", "loss", "old_term"]).append(epoch=1, loss=1.0, old_term=0.5)
    log = LossLog(path, ["epoch", "loss", "new_term"], resume_from_epoch=1)
    assert log.columns == ("epoch", "loss", "new_term", "old_term")
    log.append(epoch=2, loss=2.0, new_term=0.1)
    data = read_loss_log(path)
    np.testing.assert_array_equal(data["old_term"], [0.5, np.nan])
    np.testing.assert_array_equal(data["new_term"], [np.nan, 0.1])


def test_loss_log_bad_columns(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        LossLog(tmp_path / "l.csv", ["epoch", "epoch"])
    with pytest.raises(ValueError, match="commas"):
        LossLog(tmp_path / "l.csv", ["a,b"])
    (tmp_path / "l.csv").write_text("loss\n1.0\n")
    with pytest.raises(ValueError, match="epoch"):
        LossLog(tmp_path / "l.csv", ["epoch", "loss"], resume_from_epoch=1)


# --------------------------------------------------------------------------- parameters

def test_parameters_round_trip(tmp_path):
    config = {
        "propagator": {"type": "multislice", "slice_distance_A": 2.5},
        "optimizer": {"type": "lbfgs", "hist_length": 10, "c1": 1e-4},
        "schedule": {"type": "every_n", "n": 10},
        "grid": {"pixel_size_A": 0.25, "shape": [64, 64]},
        "flags": [True, False, None],
        "name": "run ü",
    }
    out = OutputFolder(tmp_path)
    out.save_parameters(config)
    assert load_parameters(tmp_path) == config
    assert out.load_parameters() == config
    with pytest.raises(TypeError, match="parameters"):
        out.save_parameters({"f": lambda x: x})
    assert load_parameters(tmp_path) == config  # the failed save left the old file
    with pytest.raises(FileNotFoundError, match="parameters.json"):
        load_parameters(tmp_path / "nowhere")


# --------------------------------------------------------------------------- NeXus

def test_nexus_export(tmp_path):
    out = OutputFolder(tmp_path / "run")
    arrays = make_arrays(5)
    out.save_state(arrays, epoch=4)
    out.save_parameters({"grid": {"pixel_size_A": 0.5}, "loss": {"type": "lsq_sqrt"}})
    log = out.loss_log(["epoch", "time_s", "loss"])
    log.append(epoch=1, time_s=0.5, loss=2.0)
    log.append(epoch=2, time_s=1.0, loss=1.0)
    path = export_nexus(out.path)
    assert path == out.path / "reconstruction.nxs"
    with h5py.File(path, "r") as f:
        assert f.attrs["NX_class"] == "NXroot" and f.attrs["default"] == "entry"
        entry = f["entry"]
        assert entry.attrs["NX_class"] == "NXentry"
        assert entry.attrs["default"] == "object_phase"
        assert entry["epoch"][()] == 4
        phase = entry["object_phase"]
        assert phase.attrs["NX_class"] == "NXdata" and phase.attrs["signal"] == "phase"
        assert list(phase.attrs["axes"]) == ["slice", "object_mode", "y", "x"]
        np.testing.assert_allclose(phase["phase"][()], np.angle(arrays["object"]))
        assert phase["x"].attrs["units"] == "angstrom"
        np.testing.assert_allclose(phase["x"][()], np.arange(X) * 0.5)
        amp = entry["object_amplitude"]
        np.testing.assert_allclose(amp["amplitude"][()], np.abs(arrays["object"]))
        probe = entry["probe"]
        assert probe.attrs["NX_class"] == "NXdata"
        np.testing.assert_allclose(probe["amplitude"][()] * np.exp(1j * probe["phase"][()]),
                                   arrays["probe"])
        positions = entry["positions"]
        assert positions.attrs["NX_class"] == "NXdata"
        np.testing.assert_array_equal(positions["positions"][()], arrays["positions"])
        assert positions["positions"].attrs["units"] == "pixel"
        assert entry["tilts"]["tilts"].attrs["units"] == "rad"
        process = entry["reconstruction"]
        assert process.attrs["NX_class"] == "NXprocess"
        note = process["parameters"]
        assert note.attrs["NX_class"] == "NXnote"
        text = note["data"][()].decode()
        assert json.loads(text)["grid"]["pixel_size_A"] == 0.5
        loss = process["loss_log"]
        assert loss.attrs["NX_class"] == "NXcollection"
        np.testing.assert_array_equal(loss["loss"][()], [2.0, 1.0])
        np.testing.assert_array_equal(loss["epoch"][()], [1, 2])
    assert not list(out.path.glob(".*"))


def test_nexus_export_without_state_uses_epoch_checkpoints(tmp_path):
    out = OutputFolder(tmp_path, overwrite_checkpoints=False, checkpoint_every=2)
    for epoch in (2, 4):
        out.save_state(make_arrays(epoch), epoch)
    path = export_nexus(tmp_path, tmp_path / "sub" / "x.nxs")
    with h5py.File(path, "r") as f:
        assert f["entry"].attrs["NX_class"] == "NXentry"
        assert f["entry/epoch"][()] == 4
        np.testing.assert_allclose(f["entry/object_amplitude/amplitude"][()],
                                   np.abs(make_arrays(4)["object"]))
        assert f["entry/object_phase/x"].attrs["units"] == "pixel"
    with pytest.raises(FileNotFoundError):
        export_nexus(tmp_path / "empty_does_not_exist")
