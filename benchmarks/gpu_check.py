"""The GPU path verified, in one prepared run: ``python benchmarks/gpu_check.py``.

On a machine with CuPy and a CUDA device (``pip install -e .[gpu]``), in this order:

1. ``conformance``: the conformance suite's GPU cases (``pytest -m gpu tests/conformance``);
2. ``compare``: loss and gradients of object, probe and positions of the same problem (2
   slices, 2 probe modes, simulated data) on the CPU and on the GPU, at the same parameters
   (after 3 epochs on the CPU): relative difference ``||g_gpu - g_cpu|| / ||g_cpu||`` per
   block, in double precision (must be < 1e-8) and in single precision (must be < 1e-3);
3. ``reconstruct``: a short reconstruction (object, probe, positions; single precision) on
   the GPU and the same on the CPU: the loss must fall, and the final losses are compared;
4. ``throughput``: patterns/s of one evaluation (loss and gradients of object, probe and
   positions, single precision) for 64^2 patterns with 1 slice / 1 probe mode and 128^2 with
   6 slices / 6 probe modes, against the bare FFTs of the same evaluation measured in the same
   run: every ``device.fft2`` / ``ifft2`` call of one evaluation is recorded (shape, dtype,
   norm) and replayed on its own, so ``evaluation / FFTs`` is the distance to the cuFFT floor.
   Goals (reported as ratios, not pass/fail): >= 1e5 patterns/s for 64^2, 1 slice, 1 mode on
   an H200 and within 2x of the FFT floor; PtyRAD reports about 4.4e3 patterns/s on an A100
   for 128^2, 6 slices, 6 probe modes.

Exit code: 0 when every step passed, 1 when a step failed (each step still runs and the
summary names the failures), 2 when there is no usable GPU (CuPy missing or no CUDA device;
the message says which). ``--dry-run`` runs the same steps on NumPy with small sizes, the CPU
standing in for the GPU (for testing this script where there is no GPU); ``--steps`` picks
steps.
"""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("conformance", "compare", "reconstruct", "throughput")
BLOCKS = ("object", "probe", "positions")
#: goals the figures are compared with (patterns/s)
GOAL_64 = 1e5
PTYRAD_A100_128_6_6 = 4.4e3


# ---------------------------------------------------------------------------- environment
def gpu_status() -> tuple[bool, str]:
    """(usable, description): whether CuPy imports and sees a CUDA device, and what."""
    try:
        import cupy
    except Exception as exc:  # noqa: BLE001 - any import failure means no GPU path
        return False, (f"CuPy is not importable ({type(exc).__name__}: {exc}); install the "
                       f"gpu extra: pip install -e '.[gpu]'")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001
        return False, f"CuPy {cupy.__version__} sees no CUDA device ({type(exc).__name__}: {exc})"
    if count < 1:
        return False, f"CuPy {cupy.__version__} sees no CUDA device"
    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return True, (f"{name}, {props['totalGlobalMem'] / 2**30:.0f} GiB, CuPy {cupy.__version__}, "
                  f"CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}")


def _device(kind: str, precision: str) -> Any:
    from ptyframe.core.device import Device

    return Device(kind, precision)


# ---------------------------------------------------------------------------- problems
def simulated(window: int, scan: int, n_slices: int, n_probe_modes: int, seed: int = 2
              ) -> Any:
    """Far-field data simulated with the project's forward model (CPU, double)."""
    from ptyframe import load_registry
    from ptyframe.testing.simulate import simulate_dataset

    prop = load_registry().create("propagator", {"type": "multislice",
                                                 "slice_thickness_A": 2.0})
    return simulate_dataset(prop, window=window, scan_shape=(scan, scan), step_A=0.6,
                            n_slices=n_slices, n_probe_modes=n_probe_modes,
                            dose_per_pattern=1e5, seed=seed, position_jitter_A=0.1)


def build(patterns: np.ndarray, experiment: Any, device: Any, n_slices: int,
          n_probe_modes: int, **settings: Any) -> Any:
    """The reconstruction of the checks (multislice with 2 Å slices, default components)."""
    from ptyframe import Reconstruction, load_registry

    prop = load_registry().create("propagator", {"type": "multislice",
                                                 "slice_thickness_A": 2.0})
    return Reconstruction(patterns, experiment, device=device, n_slices=n_slices,
                          n_probe_modes=n_probe_modes, progress=False, propagator=prop,
                          **settings)


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| (0 when both are 0)."""
    norm = float(np.linalg.norm(b))
    diff = float(np.linalg.norm(np.asarray(a) - np.asarray(b)))
    return diff / norm if norm else diff


# ---------------------------------------------------------------------------- steps
def parse_pytest_summary(text: str) -> dict[str, int]:
    """Counts from pytest's last summary line ("3 passed, 2 skipped in 1.2s")."""
    counts: dict[str, int] = {}
    for line in reversed(text.strip().splitlines()):
        found = re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)",
                           line)
        if found:
            for number, word in found:
                counts["error" if word.startswith("error") else word] = int(number)
            break
    return counts


def step_conformance(args: argparse.Namespace, target: str) -> tuple[bool, str]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
           str(ROOT / "tests" / "conformance")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    counts = parse_pytest_summary(done.stdout)
    summary = ", ".join(f"{v} {k}" for k, v in counts.items()) or "no summary"
    if target == "cpu":  # dry run: the GPU cases are skipped here; the command must work
        ok = done.returncode == 0 and counts.get("failed", 0) == 0
        return ok, f"(dry run, GPU cases skip on the CPU) {summary}"
    ok = (done.returncode == 0 and counts.get("passed", 0) > 0
          and counts.get("skipped", 0) == 0 and counts.get("failed", 0) == 0)
    if not ok:
        tail = "\n".join(done.stdout.strip().splitlines()[-30:])
        return False, f"{summary}\n{tail}\n{done.stderr[-2000:]}"
    return True, summary


def _evaluate(rec: Any, host_params: dict[str, np.ndarray]) -> tuple[float, dict[str, Any]]:
    dev = rec.device
    params = {k: dev.asarray(v, dtype=rec.params[k].dtype) for k, v in host_params.items()}
    loss, grads, _ = rec.evaluate(params, BLOCKS)
    return float(loss), {b: dev.to_host(g) for b, g in grads.items()}


def step_compare(args: argparse.Namespace, target: str) -> tuple[bool, str]:
    window, scan = (32, 8) if not args.dry_run else (16, 6)
    sim = simulated(window, scan, n_slices=2, n_probe_modes=2)
    reference = build(sim.patterns, sim.experiment, _device("cpu", "double"), 2, 2,
                      batch_size=17)
    reference.run(3)  # a point with structure (at the vacuum start dL/dpositions = 0)
    start = {k: reference.device.to_host(v) for k, v in reference.params.items()}
    loss_ref, grads_ref = _evaluate(reference, start)
    lines, ok = [], True
    for precision, limit in (("double", 1e-8), ("single", 1e-3)):
        rec = build(sim.patterns, sim.experiment, _device(target, precision), 2, 2,
                    batch_size=23)
        rec.initialize()
        loss, grads = _evaluate(rec, start)
        diffs = {b: relative_difference(grads[b], grads_ref[b]) for b in BLOCKS}
        d_loss = abs(loss - loss_ref) / abs(loss_ref)
        worst = max([d_loss, *diffs.values()])
        passed = worst < limit and math.isfinite(worst)
        ok &= passed
        lines.append(f"{precision:>6}: loss {d_loss:.2e}, " + ", ".join(
            f"{b} {d:.2e}" for b, d in diffs.items()) + f"  (limit {limit:g}: "
            f"{'ok' if passed else 'FAILED'})")
    return ok, "relative difference to the CPU in double precision\n    " + "\n    ".join(lines)


def step_reconstruct(args: argparse.Namespace, target: str) -> tuple[bool, str]:
    window, scan, epochs = (32, 10, 15) if not args.dry_run else (16, 6, 4)
    sim = simulated(window, scan, n_slices=1, n_probe_modes=1, seed=4)
    results = {}
    for kind in ("cpu", target):
        rec = build(sim.patterns, sim.experiment, _device(kind, "single"), 1, 1,
                    refine_positions=True, batch_size=32)
        t0 = time.perf_counter()
        rec.run(epochs)
        results[kind] = (rec.loss_history, time.perf_counter() - t0)
    loss, seconds = results[target]
    cpu_loss = results["cpu"][0]
    ok = bool(np.all(np.isfinite(loss))) and loss[-1] < loss[0]
    rel = abs(loss[-1] - cpu_loss[-1]) / abs(cpu_loss[-1])
    return ok, (f"{epochs} epochs on {target}: loss {loss[0]:.4g} -> {loss[-1]:.4g} "
                f"({seconds:.1f} s); CPU final loss {cpu_loss[-1]:.4g} (relative difference "
                f"{rel:.1e})")


class FFTRecorder:
    """Wraps a Device's fft2/ifft2 to record each call (name, shape, dtype, norm)."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.calls: list[tuple[str, tuple[int, ...], Any, str | None]] = []
        self._original = {name: getattr(device, name) for name in ("fft2", "ifft2")}
        for name, fn in self._original.items():
            setattr(device, name, self._wrap(name, fn))

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def recorded(a: Any, norm: str | None = None, overwrite: bool = False) -> Any:
            self.calls.append((name, tuple(a.shape), np.dtype(a.dtype), norm))
            return fn(a, norm=norm, overwrite=overwrite)
        return recorded

    def restore(self) -> None:
        for name in self._original:
            delattr(self.device, name)

    def replay_seconds(self, repeats: int) -> float:
        """Fastest time of all recorded transforms run back to back on their own."""
        dev, xp = self.device, self.device.xp
        inputs = {(shape, dtype): xp.ones(shape, dtype=dtype)
                  for _name, shape, dtype, _norm in self.calls}
        fns = self._original  # not the recording wrappers
        best = math.inf
        for _ in range(repeats + 1):  # the first round builds the FFT plans
            dev.synchronize()
            t0 = time.perf_counter()
            for name, shape, dtype, norm in self.calls:
                fns[name](inputs[(shape, dtype)], norm=norm)
            dev.synchronize()
            best = min(best, time.perf_counter() - t0)
        return best


def throughput(target: str, window: int, n_slices: int, n_modes: int, n_patterns: int,
               repeats: int) -> dict[str, float]:
    """Patterns/s of one evaluation on ``target`` and the time of its bare FFTs."""
    sim = simulated(window, 6, n_slices=n_slices, n_probe_modes=n_modes)
    side = int(math.isqrt(n_patterns))
    tile = sim.patterns.shape[0]
    patterns = sim.patterns[np.arange(side * side) % tile].astype(np.float32)
    exp = sim.experiment.__class__.from_config(
        dict(sim.experiment.to_config(), scan_shape=[side, side]))
    dev = _device(target, "single")
    rec = build(patterns, exp, dev, n_slices, n_modes)
    rec.initialize()
    params = rec.params
    rec.evaluate(params, BLOCKS)  # warm-up: plans, workspaces, memory pool
    best = math.inf
    for _ in range(repeats):
        dev.synchronize()
        t0 = time.perf_counter()
        rec.evaluate(params, BLOCKS)
        dev.synchronize()
        best = min(best, time.perf_counter() - t0)
    recorder = FFTRecorder(dev)
    try:
        rec.evaluate(params, BLOCKS)
        fft_s = recorder.replay_seconds(repeats)
        n_calls = len(recorder.calls)
        n_transforms = sum(int(np.prod(shape[:-2])) for _n, shape, _d, _m in recorder.calls)
    finally:
        recorder.restore()
    n = side * side
    return {"n": n, "batch": rec.model.batch_size, "eval_s": best, "fft_s": fft_s,
            "patterns_per_s": n / best, "fft_patterns_per_s": n / fft_s,
            "fft_calls": n_calls, "transforms_per_pattern": n_transforms / n}


def step_throughput(args: argparse.Namespace, target: str) -> tuple[bool, str]:
    if args.dry_run:
        cases = [(16, 1, 1, 64), (32, 6, 6, 16)]
    else:
        cases = [(64, 1, 1, args.n64), (128, 6, 6, args.n128)]
    lines = [f"{'pattern':>8} {'slices':>6} {'modes':>5} {'N':>7} {'batch':>6} "
             f"{'patterns/s':>11} {'FFT-only/s':>11} {'eval/FFT':>8} {'FFTs/pattern':>12}"]
    rows = []
    for window, slices, modes, n in cases:
        r = throughput(target, window, slices, modes, n, args.repeats)
        rows.append((window, slices, modes, r))
        lines.append(f"{f'{window}^2':>8} {slices:>6} {modes:>5} {r['n']:>7} {r['batch']:>6} "
                     f"{r['patterns_per_s']:11.4g} {r['fft_patterns_per_s']:11.4g} "
                     f"{r['eval_s'] / r['fft_s']:8.2f} {r['transforms_per_pattern']:12.1f}")
    r1, r6 = rows[0][3], rows[1][3]
    lines.append(f"goal 64^2/1/1: {GOAL_64:.0e} patterns/s -> measured / goal "
                 f"{r1['patterns_per_s'] / GOAL_64:.2f}; within 2x of the FFT floor -> "
                 f"eval/FFT {r1['eval_s'] / r1['fft_s']:.2f} (goal <= 2)")
    lines.append(f"128^2/6/6 against PtyRAD on an A100 ({PTYRAD_A100_128_6_6:.1e} patterns/s): "
                 f"{r6['patterns_per_s'] / PTYRAD_A100_128_6_6:.2f}x")
    if args.dry_run:
        lines.append("(dry run: NumPy/SciPy on the CPU, small sizes; the figures mean nothing "
                     "for a GPU)")
    ok = all(math.isfinite(r["patterns_per_s"]) and r["fft_s"] > 0 for *_x, r in rows)
    return ok, "\n    ".join(lines)


STEP_FUNCTIONS: dict[str, Callable[[argparse.Namespace, str], tuple[bool, str]]] = {
    "conformance": step_conformance,
    "compare": step_compare,
    "reconstruct": step_reconstruct,
    "throughput": step_throughput,
}


# ---------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="run every step on NumPy (CPU) with small sizes")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--n64", type=int, default=16384,
                        help="patterns in the 64^2 throughput case")
    parser.add_argument("--n128", type=int, default=1024,
                        help="patterns in the 128^2, 6 slices, 6 modes case")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.dry_run:
        target = "cpu"
        print("gpu_check: dry run on NumPy (the CPU stands in for the GPU)")
    else:
        usable, description = gpu_status()
        if not usable:
            print(f"gpu_check: no usable GPU: {description}. Nothing was run; on a machine "
                  f"without a GPU, --dry-run runs the same steps on NumPy.", file=sys.stderr)
            return 2
        target = "gpu"
        print(f"gpu_check: {description}")
    failed = []
    for name in args.steps:
        t0 = time.perf_counter()
        try:
            ok, text = STEP_FUNCTIONS[name](args, target)
        except Exception:  # noqa: BLE001 - report and carry on with the next step
            ok, text = False, "raised:\n" + traceback.format_exc()
        print(f"[{'ok' if ok else 'FAILED'}] {name} ({time.perf_counter() - t0:.1f} s): {text}",
              flush=True)
        if not ok:
            failed.append(name)
    print(f"gpu_check: {len(args.steps) - len(failed)} of {len(args.steps)} steps passed"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
