"""Larger than memory: peak host memory when the patterns are streamed from disk per batch.

Usage::

    python benchmarks/bench_stream.py [--scans 64 128 256] [--window 32] [--batch 512]
                                      [--direct] [--keep DIR]

Writes ``s x s`` scans (default 64², 128² and 256² positions of 32 x 32 uint16 patterns) to
temporary HDF5 files (deleted at the end, nothing stored in the repository). The patterns are
Poisson draws of a 32 x 32-position scan simulated with the project's forward model, tiled
over the large scan: the content matters to neither memory nor time, only the sizes do.

Each measurement runs in a fresh process (peak RSS, ``ru_maxrss``, is per process) that
builds a single-precision CPU reconstruction on the file and evaluates the loss and the
gradients of object, probe and positions once:

* ``batch``: on the largest scan, only the first batch (``--batch`` patterns): the
  single-batch working set (interpreter, libraries, parameters, one batch);
* ``stream`` / ``stream0``: every pattern streamed per batch with one batch read ahead
  (``prefetch = 1``, double buffering) / read synchronously (``prefetch = 0``);
* ``memory``: every pattern loaded into memory first (the default when it fits).

It prints the peak RSS of each, the ratio of the streamed peak to the single-batch working
set (target: within 1.3x), and wall and CPU time per evaluation with and without read-ahead
(measured in the same run: does the overlap pay here?). With ``--direct`` it also runs the
direct methods (WDD, SSB, tcBF) on the largest scan and prints their peak RSS against the
size of the scan as uint16 and as complex64.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: bound on the memory of one chunk in the set-up passes (validation, mean pattern), bytes
SETUP_CHUNK_BYTES = 16 * 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def child(mode: str, path: str, experiment: str, batch: int, repeat: int = 1,
          spill_mb: float = 2048.0) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    import numpy as np

    from ptyframe import Device, Reconstruction, load_registry
    from ptyframe.core.experiment import Experiment
    from ptyframe.io.data import Dataset

    exp = Experiment.from_config(json.loads(experiment))
    dataset = Dataset.from_file(path, chunk_bytes=SETUP_CHUNK_BYTES)
    exp = exp.__class__.from_config(dict(exp.to_config(), scan_shape=list(dataset.scan_shape)))
    out: dict[str, float | str] = {"mode": mode, "n": len(dataset)}
    if mode in ("wdd", "ssb", "tcbf"):
        registry = load_registry()
        config = ({"type": "tcbf"} if mode == "tcbf"
                  else {"type": "wdd", "mode": mode, "spill_mb": spill_mb})
        method = registry.create("direct_method", config)
        t0, c0 = time.perf_counter(), time.process_time()
        method.run(dataset, exp, Device("cpu", "single"))
        out.update(wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0,
                   peak_mb=_peak_mb())
        print(json.dumps(out))
        return
    streamed = mode != "memory"
    rec = Reconstruction(dataset, exp, device=Device("cpu", "single"), batch_size=batch,
                         load_one_by_one=streamed, prefetch=0 if mode == "stream0" else 1,
                         progress=False)
    rec.initialize()
    out["setup_peak_mb"] = _peak_mb()
    indices = np.arange(batch) if mode == "batch" else None
    blocks = ("object", "probe", "positions")
    rec.evaluate(rec.params, blocks, indices=indices)  # warm-up (FFT plans, allocations)
    walls, cpus = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        rec.evaluate(rec.params, blocks, indices=indices)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    out.update(wall_s=min(walls), cpu_s=min(cpus), peak_mb=_peak_mb(),
               object_mb=rec.params["object"].nbytes / 2**20)
    print(json.dumps(out))


def _measure(mode: str, path: Path, experiment: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--data", str(path),
           "--experiment", experiment, "--batch", str(args.batch),
           "--repeat", str(args.repeat), "--spill-mb", str(args.spill_mb)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"measurement {mode!r} on {path.name} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _write_scans(folder: Path, scans: list[int], window: int) -> tuple[dict[int, Path], str]:
    import h5py
    import numpy as np

    from ptyframe import load_registry
    from ptyframe.testing.simulate import simulate_dataset

    tile = 32
    prop = load_registry().create("propagator", {"type": "multislice"})
    sim = simulate_dataset(prop, window=window, scan_shape=(tile, tile), step_A=0.8,
                           dose_per_pattern=1e4, seed=1)
    mean = sim.patterns.reshape(tile, tile, window, window).astype(np.float64)
    rng = np.random.default_rng(0)
    paths = {}
    for s in scans:
        path = folder / f"scan{s}.h5"
        with h5py.File(path, "w") as f:
            ds = f.create_dataset("data", shape=(s, s, window, window), dtype=np.uint16,
                                  chunks=(1, s, window, window))
            for y in range(s):
                row = mean[y % tile][np.arange(s) % tile]
                ds[y] = np.minimum(rng.poisson(row), 65535).astype(np.uint16)
        paths[s] = path
    return paths, json.dumps(sim.experiment.to_config())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2,
                        help="timed evaluations per measurement (the fastest is shown)")
    parser.add_argument("--direct", action="store_true")
    parser.add_argument("--spill-mb", type=float, default=64.0,
                        help="WDD/SSB: largest half spectrum kept in memory, MiB")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--experiment", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.data, args.experiment, args.batch, args.repeat, args.spill_mb)
        return
    scans = sorted(args.scans)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paths, experiment = _write_scans(Path(tmp), scans, args.window)
        big = scans[-1]
        size = {s: s * s * args.window**2 for s in scans}
        print(f"scans {', '.join(f'{s}x{s}' for s in scans)} of {args.window}^2 uint16 "
              f"patterns written in {time.perf_counter() - t0:.1f} s "
              f"({size[big] * 2 / 2**20:.0f} MiB on disk for {big}x{big}, "
              f"{size[big] * 8 / 2**20:.0f} MiB as complex64)\n")
        base = _measure("batch", paths[big], experiment, args)
        print(f"single-batch working set ({args.batch} patterns, {big}x{big} scan's "
              f"parameters, object {base['object_mb']:.1f} MiB): peak RSS "
              f"{base['peak_mb']:.0f} MiB\n")
        print(f"{'scan':>9} {'mode':>8} {'peak MiB':>9} {'/ batch':>8} {'set-up MiB':>10} "
              f"{'wall s':>7} {'CPU s':>7}")
        rows = []
        for s in scans:
            modes = ["stream", "stream0", "memory"] if s == big else ["stream", "memory"]
            for mode in modes:
                r = _measure(mode, paths[s], experiment, args)
                rows.append((s, r))
                print(f"{f'{s}x{s}':>9} {mode:>8} {r['peak_mb']:9.0f} "
                      f"{r['peak_mb'] / base['peak_mb']:8.2f} {r['setup_peak_mb']:10.0f} "
                      f"{r['wall_s']:7.2f} {r['cpu_s']:7.2f}")
        timed = {r["mode"]: r for s, r in rows if s == big}
        ratio = timed["stream"]["peak_mb"] / base["peak_mb"]
        print(f"\nstreamed {big}x{big}: peak RSS {ratio:.2f}x the single-batch working set "
              f"(target <= 1.3x): {'met' if ratio <= 1.3 else 'NOT met'}")
        print(f"read-ahead (prefetch=1) vs synchronous reads: wall "
              f"{timed['stream']['wall_s'] / timed['stream0']['wall_s']:.2f}x, streamed vs "
              f"in memory: wall {timed['stream']['wall_s'] / timed['memory']['wall_s']:.2f}x")
        if args.direct:
            print(f"\ndirect methods on {big}x{big} (WDD/SSB half spectrum kept in memory up "
                  f"to {args.spill_mb:g} MiB, on disk above):")
            for mode in ("ssb", "wdd", "tcbf"):
                r = _measure(mode, paths[big], experiment, args)
                print(f"{mode:>6}: peak RSS {r['peak_mb']:7.0f} MiB ({r['peak_mb'] / 2**10:.2f} "
                      f"GiB; scan as complex64 {size[big] * 8 / 2**30:.2f} GiB), "
                      f"wall {r['wall_s']:.1f} s")


if __name__ == "__main__":
    main()
