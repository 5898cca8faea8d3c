"""Data parallelism over measurements: time per epoch on 1 and 2 MPI ranks, bytes all-reduced,
and a model of the all-reduce time at scale.

Usage::

    python benchmarks/bench_parallel.py [--scan 64] [--window 32] [--epochs 3] [--ranks 2]

Simulates a ``scan x scan`` raster (default 64 x 64 = 4096 patterns of 32 x 32 pixels) into a
temporary HDF5 file (nothing is kept), then runs the same configuration (object, probe and
positions refined, L-BFGS, single precision, CPU) with ``ptyframe``'s MPI communicator on 1
rank and on ``--ranks`` ranks launched by ``mpiexec``. It prints, measured in the same run:

* the wall time per epoch (mean over the epochs after the first) and the CPU time per epoch
  summed over ranks, for each rank count, and their ratios to 1 rank;
* the bytes each rank sends into the all-reduce per evaluation (gradients of object, probe and
  positions as float pairs, plus the loss) and per epoch, and the measured time spent in the
  reductions;
* a model of the all-reduce time per iteration for 8 GPUs over NVLink (~150 GB/s) and over
  100 Gb/s Ethernet (12.5 GB/s) for a 4096 x 4096 object with 6 slices (ring all-reduce:
  2 (p - 1) / p x bytes / bandwidth + 2 (p - 1) x latency), against the compute time per
  iteration, and the number of patterns per rank below which the all-reduce costs more than
  the computation.

Honest about this machine: two ranks on a machine with two (shared) cores cannot run faster
than one rank using both cores for its FFTs; the 1-rank run is given all cores, each of the 2
ranks one (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = """
epochs = {epochs}
progress = false
batch_size = 256
[data]
path = "{data}"
[experiment]
from_metadata = true
[refine]
object = true
probe = true
positions = true
[device]
kind = "cpu"
precision = "single"
workers = {threads}
[parallel]
backend = "mpi"
"""

#: model of one iteration at scale (section "communication model")
SCALE = {"object_px": 4096, "slices": 6, "probe_px": 128, "probe_modes": 6,
         "patterns": 65536, "gpus": 8, "evaluations_per_iteration": 2.0,
         "latency_s": {"NVLink (150 GB/s)": 5e-6, "100 Gb/s Ethernet": 20e-6},
         "bandwidth_Bps": {"NVLink (150 GB/s)": 150e9, "100 Gb/s Ethernet": 12.5e9},
         # patterns/s per GPU for 128^2, 6 slices, 6 probe modes (PtyRAD's A100 figure)
         "patterns_per_s_per_gpu": 4.4e3}


def _mpiexec() -> str:
    local = Path(sys.executable).parent / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if found is None:
        sys.exit("bench_parallel: needs mpiexec (pip install 'ptyframe[mpi]')")
    return found


def worker(config_path: str, epochs: int) -> None:
    """One rank: run the configuration, gather timings on rank 0, print them as JSON."""
    from mpi4py import MPI

    from ptyframe.apps.config import build_reconstruction, load_config

    rec, _ = build_reconstruction(load_config(config_path), Path(config_path).parent)
    comm = rec.communicator
    reduce_s = [0.0]
    inner = comm._allreduce

    def timed(*args):
        start = time.perf_counter()
        out = inner(*args)
        reduce_s[0] += time.perf_counter() - start
        return out

    comm._allreduce = timed
    stamps: list[tuple[float, float]] = []
    evaluations: list[int] = []

    def record(report):
        stamps.append((time.perf_counter(), time.process_time()))
        evaluations.append(report.evaluations)

    rec.initialize()
    MPI.COMM_WORLD.Barrier()
    stamps.append((time.perf_counter(), time.process_time()))
    rec.run(epochs, callbacks=[record])
    wall = [b[0] - a[0] for a, b in zip(stamps, stamps[1:], strict=False)]
    cpu = [b[1] - a[1] for a, b in zip(stamps, stamps[1:], strict=False)]
    mine = {"wall": wall, "cpu": cpu, "bytes": comm.bytes_reduced, "reduce_s": reduce_s[0],
            "evaluations": evaluations}
    every = MPI.COMM_WORLD.gather(mine, root=0)
    if comm.is_root:
        print("RESULT " + json.dumps(every), flush=True)


def _run(config: Path, ranks: int, epochs: int) -> list[dict]:
    command = [sys.executable, __file__, "--worker", str(config), "--epochs", str(epochs)]
    command = [_mpiexec(), "-n", str(ranks), *command]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def _model() -> None:
    s = SCALE
    p = s["gpus"]
    grad_bytes = (s["slices"] * s["object_px"] ** 2 * 8 + s["probe_modes"] * s["probe_px"] ** 2
                  * 8 + s["patterns"] * 2 * 4)
    compute = s["patterns"] / p / s["patterns_per_s_per_gpu"] * s["evaluations_per_iteration"]
    print(f"\ncommunication model: {p} GPUs, object {s['object_px']}^2 x {s['slices']} slices, "
          f"{s['patterns']} patterns of {s['probe_px']}^2, {s['probe_modes']} probe modes, "
          f"{s['evaluations_per_iteration']:g} evaluations per iteration")
    print(f"  gradient all-reduced per evaluation: {grad_bytes / 1e6:.0f} MB (complex64 as "
          f"float pairs); compute per iteration per GPU at "
          f"{s['patterns_per_s_per_gpu']:.3g} patterns/s: {compute:.3g} s")
    for link, bandwidth in s["bandwidth_Bps"].items():
        latency = s["latency_s"][link]
        per_eval = 2 * (p - 1) / p * grad_bytes / bandwidth + 2 * (p - 1) * latency
        per_iter = per_eval * s["evaluations_per_iteration"]
        break_even = per_eval * s["patterns_per_s_per_gpu"]
        print(f"  {link:20s}: all-reduce {per_iter * 1e3:8.1f} ms per iteration "
              f"({100 * per_iter / compute:5.1f} % of compute); it stops paying below "
              f"~{break_even:.0f} patterns per GPU ({break_even * p:.0f} patterns on {p})")
    print("  Beyond that (large objects over Ethernet, or few patterns per GPU) the design "
          "needs object tiling: each rank owns a tile of the object with a halo of one probe "
          "window and exchanges only the halos, instead of all-reducing the whole object "
          "gradient (a later step).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scan", type=int, default=64)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.epochs)
        return
    from ptyframe import load_registry
    from ptyframe.testing.simulate import simulate_dataset, write_scan_file

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        prop = load_registry().create("propagator", {"type": "multislice"})
        sim = simulate_dataset(prop, window=args.window, scan_shape=(args.scan, args.scan),
                               step_A=0.8, dose_per_pattern=1e5, seed=1,
                               position_jitter_A=0.1)
        data = write_scan_file(sim, folder / "scan.h5")
        n = args.scan**2
        print(f"{n} patterns of {args.window}^2 simulated in "
              f"{time.perf_counter() - start:.1f} s; {cores} cores here")
        rows = {}
        for ranks in (1, args.ranks):
            threads = max(1, (cores or 1) // ranks)
            config = folder / f"r{ranks}.toml"
            config.write_text(CONFIG.format(epochs=args.epochs, data=data.as_posix(),
                                            threads=threads))
            rows[ranks] = (_run(config, ranks, args.epochs), threads)
    base = None
    print(f"\n{'ranks':>5} {'threads/rank':>12} {'wall s/epoch':>12} {'CPU s/epoch':>12} "
          f"{'wall ratio':>10} {'CPU ratio':>9} {'reduce+wait s':>13} {'MB/eval/rank':>12}")
    for ranks, (results, threads) in rows.items():
        skip = 1 if len(results[0]["wall"]) > 1 else 0  # the first epoch warms up
        wall = max(sum(r["wall"][skip:]) / len(r["wall"][skip:]) for r in results)
        cpu = sum(sum(r["cpu"][skip:]) / len(r["cpu"][skip:]) for r in results)
        evals = 1 + sum(results[0]["evaluations"])  # the first evaluation before the steps
        per_eval = results[0]["bytes"] / max(evals, 1)
        reduce_s = max(r["reduce_s"] for r in results)
        base = base or (wall, cpu)
        print(f"{ranks:>5} {threads:>12} {wall:>12.3f} {cpu:>12.3f} {wall / base[0]:>10.2f} "
              f"{cpu / base[1]:>9.2f} {reduce_s:>13.3f} {per_eval / 1e6:>12.3f}")
    print(f"(bytes per epoch = MB/eval x evaluations per epoch, here "
          f"{sum(results[0]['evaluations']) / len(results[0]['evaluations']):.1f})")
    _model()


if __name__ == "__main__":
    main()
