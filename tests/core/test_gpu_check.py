"""The CPU-side logic of ``benchmarks/gpu_check.py``: the no-GPU exit, the dry run on NumPy,
failure reporting, the pytest summary parser and the FFT recorder."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from ptyframe.core.device import Device

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_gpu_gives_a_clear_message_and_exit_code_2(gpu_check, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "gpu_status",
                        lambda: (False, "CuPy is not importable (ModuleNotFoundError)"))
    assert gpu_check.main([]) == 2
    err = capsys.readouterr().err
    assert "no usable GPU: CuPy is not importable" in err and "--dry-run" in err


def test_dry_run_runs_every_numerical_step_on_numpy(gpu_check, capsys):
    code = gpu_check.main(["--dry-run", "--steps", "compare", "reconstruct", "throughput",
                           "--repeats", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "[ok] compare" in out and "[ok] reconstruct" in out and "[ok] throughput" in out
    assert "double: loss 0.00e+00" in out  # the CPU against itself in double precision
    assert "3 of 3 steps passed" in out


def test_a_failing_step_is_named_and_gives_exit_code_1(gpu_check, monkeypatch, capsys):
    def broken(args, target):
        raise RuntimeError("cuFFT plan failed")

    monkeypatch.setitem(gpu_check.STEP_FUNCTIONS, "compare", broken)
    assert gpu_check.main(["--dry-run", "--steps", "compare"]) == 1
    out = capsys.readouterr().out
    assert "[FAILED] compare" in out and "cuFFT plan failed" in out
    assert "failed: compare" in out


def test_pytest_summary_parser(gpu_check):
    text = "....\n51 skipped, 285 deselected in 30.2s\n"
    assert gpu_check.parse_pytest_summary(text) == {"skipped": 51, "deselected": 285}
    text = "F.\n1 failed, 40 passed, 2 errors in 3.0s"
    assert gpu_check.parse_pytest_summary(text) == {"failed": 1, "passed": 40, "error": 2}
    assert gpu_check.parse_pytest_summary("crashed") == {}


def test_fft_recorder_records_replays_and_restores(gpu_check):
    dev = Device("cpu", "single")
    recorder = gpu_check.FFTRecorder(dev)
    a = np.ones((3, 8, 8), dtype=np.complex64)
    dev.ifft2(dev.fft2(a), norm="ortho")
    assert [c[0] for c in recorder.calls] == ["fft2", "ifft2"]
    assert recorder.calls[1][1:] == ((3, 8, 8), np.dtype(np.complex64), "ortho")
    assert recorder.replay_seconds(1) > 0
    assert len(recorder.calls) == 2  # the replay is not recorded
    recorder.restore()
    assert "fft2" not in vars(dev) and "ifft2" not in vars(dev)
    np.testing.assert_allclose(dev.fft2(a)[0, 0, 0], 64)


def test_relative_difference(gpu_check):
    assert gpu_check.relative_difference(np.array([1.0, 1.0]), np.array([1.0, 0.0])) == 1.0
    assert gpu_check.relative_difference(np.zeros(2), np.zeros(2)) == 0.0
