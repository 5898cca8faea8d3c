"""Nothing read from a state file or a sub-folder name reaches outside the output folder, and
files are written with the user's umask."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from ptyframe.apps.direct import load_direct_result, save_direct_result
from ptyframe.components import DirectResult
from ptyframe.io.results import OutputFolder, load_state
from ptyframe.io.safe_paths import UnsafePathError, path_inside, plain_name, safe_subfolder


def _arrays():
    return {"object": np.ones((1, 1, 6, 6), np.complex64),
            "probe": np.ones((1, 4, 4), np.complex64),
            "positions": np.zeros((3, 2), np.float32)}


def _tree(root):
    return sorted((str(p.relative_to(root)), p.read_bytes() if p.is_file() else b"")
                  for p in root.rglob("*"))


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "a\\b", "x\0y", 5, None])
def test_plain_name_refuses_paths(name):
    with pytest.raises(UnsafePathError, match="plain file name"):
        plain_name(name, "test")


def test_crafted_pending_with_dotdot_moves_nothing(tmp_path):
    out = tmp_path / "out"
    OutputFolder(out).save_state(_arrays(), 1)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    state = json.loads((out / "state.json").read_text())
    state["pending"] = {"epoch": 2, "files": state["files"],
                        "staged": {"co.npy": "../victim.txt"}, "info": {}}
    (out / "state.json").write_text(json.dumps(state))
    before = _tree(tmp_path)
    with pytest.raises(UnsafePathError, match="rename '../victim.txt'"):
        load_state(out)
    with pytest.raises(UnsafePathError):
        OutputFolder(out)
    assert _tree(tmp_path) == before
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("field", ["final", "file"])
def test_crafted_file_entries_are_refused(tmp_path, field):
    out = tmp_path / "out"
    OutputFolder(out).save_state(_arrays(), 1)
    np.save(tmp_path / "outside.npy", np.zeros((1, 1, 6, 6, 1), np.complex64))
    state = json.loads((out / "state.json").read_text())
    if field == "file":
        state["files"]["object"]["file"] = "../outside.npy"
    else:
        state["pending"] = {"epoch": 2, "files": state["files"],
                            "staged": {"../outside.npy": ".co.npy.staged"}, "info": {}}
    (out / "state.json").write_text(json.dumps(state))
    before = _tree(tmp_path)
    with pytest.raises(UnsafePathError):
        load_state(out)
    assert _tree(tmp_path) == before


def test_symlinked_checkpoint_file_is_not_read(tmp_path):
    out = tmp_path / "out"
    OutputFolder(out).save_state(_arrays(), 1)
    (out / "co.npy").rename(tmp_path / "elsewhere.npy")
    (out / "co.npy").symlink_to(tmp_path / "elsewhere.npy")
    with pytest.raises(UnsafePathError, match="symbolic link"):
        load_state(out)


def test_staged_symlink_is_replaced_not_written_through(tmp_path):
    out = tmp_path / "out"
    folder = OutputFolder(out)
    victim = tmp_path / "victim.bin"
    victim.write_bytes(b"keep")
    (out / ".co.npy.staged").symlink_to(victim)
    folder.save_state(_arrays(), 1)
    assert victim.read_bytes() == b"keep"
    assert load_state(out)[1] == 1


def test_symlinked_loss_log_is_not_appended_to(tmp_path):
    out = tmp_path / "out"
    log = OutputFolder(out).loss_log(["epoch", "loss"])
    victim = tmp_path / "victim.csv"
    victim.write_text("keep\n")
    (out / "loss.csv").unlink()
    (out / "loss.csv").symlink_to(victim)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        log.append(epoch=1, loss=0.5)
    assert victim.read_text() == "keep\n"


def test_symlinked_subfolder_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "object.npy").write_bytes(b"precious")
    (out / "wdd").symlink_to(elsewhere, target_is_directory=True)
    result = DirectResult(method="wdd", arrays={"object": np.ones((4, 4))})
    before = _tree(tmp_path)
    with pytest.raises(UnsafePathError, match="symbolic link"):
        save_direct_result(result, out, figures=False)
    with pytest.raises(UnsafePathError):
        OutputFolder(out).subfolder("wdd")
    with pytest.raises(UnsafePathError):
        safe_subfolder(out, "../elsewhere", "test")
    assert _tree(tmp_path) == before


def test_direct_values_json_cannot_point_outside(tmp_path):
    result = DirectResult(method="dpc", arrays={"phase": np.ones((4, 4))})
    folder = save_direct_result(result, tmp_path, figures=False)
    record = json.loads((folder / "values.json").read_text())
    record["arrays"]["phase"]["file"] = "../../secret.npy"
    (folder / "values.json").write_text(json.dumps(record))
    with pytest.raises(UnsafePathError):
        load_direct_result(folder)
    assert path_inside(folder, "phase.npy", "x") == folder / "phase.npy"


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_every_file_follows_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        out = tmp_path / "out"
        folder = OutputFolder(out, checkpoint_every=1)
        folder.save_state(_arrays(), 1, info={"a": 1})
        folder.save_parameters({"x": 1})
        folder.loss_log(["epoch"]).append(epoch=1)
    finally:
        os.umask(old)
    modes = {p.name: _mode(p) for p in out.iterdir() if p.is_file()}
    assert set(modes.values()) == {0o666 & ~mask}, modes


def test_a_full_disk_is_said_in_words(tmp_path, monkeypatch):
    from ptyframe.io import results

    def full(f):
        raise OSError("8464 requested and 3064 written")

    (tmp_path / "co.npy").write_bytes(b"old")
    with pytest.raises(OSError, match="the disk is full") as info:
        results._atomic_write(tmp_path / "co.npy", full)
    assert "requested and" not in str(info.value)
    assert (tmp_path / "co.npy").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["co.npy"]  # no temp file left
