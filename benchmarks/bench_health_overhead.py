"""Cost of watching a run for non-finite values (``ptyframe/engine/health.py``).

Usage::

    python benchmarks/bench_health_overhead.py [--epochs 60] [--repeats 3] [--window 48]

Runs the same reconstruction (simulated data, CPU, single precision, lsq_sqrt, object and
probe refined) with the watch on, and with its per-evaluation check replaced by a no-op, in
the same process, alternating; prints the median CPU and wall time of each and their ratio.
The results are identical (the watch only reads).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from ptyframe import Device, Reconstruction, load_registry
from ptyframe.engine.health import HealthWatch
from ptyframe.testing.simulate import simulate_dataset


def _run(sim, epochs: int, watched: bool) -> tuple[float, float, float]:
    rec = Reconstruction(sim.patterns, sim.experiment, positions_A=sim.positions_A,
                         device=Device("cpu", "single"), progress=False, refine_probe=True)
    if not watched:
        rec._health.check = lambda *args, **kwargs: None  # the baseline: nothing checked
    rec.initialize()
    cpu, wall = time.process_time(), time.perf_counter()
    result = rec.run(epochs)
    return time.process_time() - cpu, time.perf_counter() - wall, result.loss[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--window", type=int, default=48)
    args = parser.parse_args()
    prop = load_registry().create("propagator", {"type": "multislice"})
    sim = simulate_dataset(prop, window=args.window, scan_shape=(12, 12), step_A=0.6, seed=0,
                           dose_per_pattern=1e5)
    times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    losses = {}
    _run(sim, 2, True)  # warm-up
    for _ in range(args.repeats):
        for watched in (False, True):
            cpu, wall, loss = _run(sim, args.epochs, watched)
            times[watched].append((cpu, wall))
            losses[watched] = loss
    assert np.float32(losses[True]) == np.float32(losses[False]), losses
    base = [statistics.median(v) for v in zip(*times[False], strict=True)]
    watch = [statistics.median(v) for v in zip(*times[True], strict=True)]
    print(f"{args.epochs} epochs, window {args.window}, 144 positions, median of "
          f"{args.repeats}")
    print(f"{'':12s}{'CPU s':>10s}{'wall s':>10s}")
    print(f"{'unwatched':12s}{base[0]:10.3f}{base[1]:10.3f}")
    print(f"{'watched':12s}{watch[0]:10.3f}{watch[1]:10.3f}")
    print(f"{'ratio':12s}{watch[0] / base[0]:10.3f}{watch[1] / base[1]:10.3f}")
    print(f"(HealthWatch: {HealthWatch.__doc__.splitlines()[0]})")


if __name__ == "__main__":
    main()
