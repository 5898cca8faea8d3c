"""Benchmark of one far-field loss + gradient evaluation against its FFT floors.

Usage::

    python benchmarks/bench_model.py [--quick] [--threads 1] [--precision single|double|both]
                                     [--batch-size 256] [--repeats 7] [--profile scipy|fftw]
                                     [--profile-fused numpy|numba] [--parallel]
                                     [--batch-sizes 32 64 128 512]

Synthetic data set: 1024 scan positions (a 32 x 32 raster with random sub-pixel jitter),
64 x 64 patterns, a ~200 x 200 object, lsq_sqrt loss. For each configuration (slices S,
probe modes M, one object mode) it reports

* ``eval``: median time of one full ``FarFieldModel.value_and_grad`` over all positions,
  gradients of object, probe and positions (after one warm-up evaluation), once per CPU FFT
  provider of the Device: ``scipy`` (scipy.fft, the default) and ``fftw`` (planned FFTW via
  pyFFTW, when the ``fftw`` extra is installed);
* two ``FFT floors``: median time of the bare 2-D FFTs that evaluation has to do, through each
  provider, on aligned work arrays of the same shape and dtype (in place);
* the ratio of each evaluation to each floor, for wall time and for CPU time (process time,
  all threads). Evaluations run with the element-wise kernels ``numpy`` (the reference) and,
  when numba is installed, ``numba`` (fused, ``Device(fused="numba")``). The machine may be
  shared, so all functions are timed interleaved and the medians reported; CPU time is the
  less load-sensitive figure.

Both precisions (complex64, complex128) by default; a closing summary gives, per precision and
configuration, the fastest evaluation's ratio to the planned-FFTW floor as the median and the
range of the per-repeat ratios (evaluation and floor timed in the same round). ``--parallel``
instead measures batch-level parallelism over two threads (see :func:`parallel_batches`);
``--batch-sizes`` the fastest variant at several batch sizes (see :func:`batch_size_table`).

FFT count per wave (one position x one probe mode x one object mode): forward 1 inverse FFT
(sub-pixel shift of the probe) + 2 (S - 1) (Fresnel steps) + 1 (far field); backward the same
number (far-field adjoint, 2 (S - 1) adjoint Fresnel steps, 1 FFT of the shifted-probe
gradient); 4 S in all. The per-mode FFTs of the probe itself (2 M per evaluation) are
negligible and left out of the floor.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
from pathlib import Path


def _threads_from_argv(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return "1"


# BLAS (the position-gradient matrix product) gets the same thread count as the FFTs; this has
# to be set before NumPy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _threads_from_argv(sys.argv[1:]))

import numpy as np  # noqa: E402

try:  # run from a source checkout without installation
    import ptyframe  # noqa: F401
except ImportError:  # pragma: no cover
    root = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(root), str(root / "plugins")]

from ptyframe_losses.intensity_losses import LeastSquaresSqrt  # noqa: E402
from ptyframe_propagators.multislice import Multislice  # noqa: E402

from ptyframe.core.device import Device  # noqa: E402
from ptyframe.core.fft import pyfftw_available  # noqa: E402
from ptyframe.core.fused import numba_available  # noqa: E402
from ptyframe.engine.model import FarFieldModel  # noqa: E402

N_SIDE = 32           # 32 x 32 = 1024 positions
WINDOW = 64           # pattern / probe window (pixels)
OBJECT = 200          # object side (pixels)
PIXEL_A = 0.4
WAVELENGTH_A = 0.0197  # 300 kV
CONFIGS = ((1, 1), (4, 3))  # (slices, probe modes)


def resolve_batch(device: Device, n_probe_modes: int, batch_size: int | str) -> int:
    """``batch_size``, or with "auto" the Device's cache-sized batch (``Device.batch_limit``,
    what a reconstruction picks when memory allows) for one object mode."""
    if batch_size == "auto":
        item = np.dtype(device.complex_dtype).itemsize
        return device.batch_limit(WINDOW * WINDOW * item * n_probe_modes)
    return int(batch_size)


def batch_arg(text: str) -> int | str:
    """--batch-size: a positive integer or "auto"."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', found "
                                         f"{text!r}")
    return value


def make_problem(device: Device, n_slices: int, n_probe_modes: int, batch_size: int | str,
                 seed: int = 0) -> tuple[FarFieldModel, dict]:
    """Synthetic data: a weak random phase object, a defocused aperture probe, patterns of a
    slightly different object (so that every gradient is non-zero). ``batch_size``: see
    :func:`resolve_batch`."""
    batch_size = resolve_batch(device, n_probe_modes, batch_size)
    rng = np.random.default_rng(seed)
    xp = device.xp
    # raster with random sub-pixel jitter, windows inside the object with a 2-pixel margin
    step = (OBJECT - WINDOW - 4) / (N_SIDE - 1)
    grid = np.arange(N_SIDE) * step + 1.5
    pos = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    pos += rng.uniform(-0.5, 0.5, pos.shape)
    # probe: circular aperture with defocus, extra modes = perturbed copies
    q = np.fft.fftfreq(WINDOW)
    q2 = q[:, None] ** 2 + q[None, :] ** 2
    aperture = (q2 < 0.2**2) * np.exp(1j * 40.0 * q2)
    base = np.fft.ifft2(aperture) * WINDOW
    probe = np.stack([base * (1.0 if m == 0 else 0.3) * np.exp(1j * m * rng.random(base.shape))
                      for m in range(n_probe_modes)])
    shape = (n_slices, 1, OBJECT, OBJECT)
    phase = 0.2 * rng.standard_normal(shape) / n_slices
    truth = np.exp(1j * phase)
    guess = np.exp(1j * 0.8 * phase)
    prop = Multislice(slice_thickness_A=2.0)
    params_true = {"object": device.complex(truth), "probe": device.complex(probe),
                   "positions": device.real(pos)}
    sim = FarFieldModel.from_geometry(
        prop, None, device, (WINDOW, WINDOW), PIXEL_A, WAVELENGTH_A, n_slices,
                        None, batch_size=batch_size)
    measured = sim.intensities(params_true)
    model = FarFieldModel.from_geometry(
        Multislice(slice_thickness_A=2.0), LeastSquaresSqrt(), device,
                          (WINDOW, WINDOW), PIXEL_A, WAVELENGTH_A, n_slices,
                          xp.asarray(measured), batch_size=batch_size)
    params = {"object": device.complex(guess), "probe": device.complex(probe),
              "positions": device.real(pos + rng.normal(0, 0.1, pos.shape))}
    model.check_blocks(params)
    return model, params


def interleaved_times(fns: list, repeats: int, device: Device
                      ) -> list[tuple[list[float], list[float]]]:
    """(wall, CPU) seconds of every timed call of each function; one warm-up call each
    (plans, work buffers, page faults), then the timed calls alternate so that all see the
    same machine load."""
    for fn in fns:
        fn()
    device.synchronize()
    wall: list[list[float]] = [[] for _ in fns]
    cpu: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, w, c in zip(fns, wall, cpu, strict=True):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            device.synchronize()
            w.append(time.perf_counter() - t0)
            c.append(time.process_time() - c0)
    return list(zip(wall, cpu, strict=True))


def interleaved_medians(fns: list, repeats: int, device: Device
                        ) -> list[tuple[float, float]]:
    """Median (wall, CPU) seconds of each function (see :func:`interleaved_times`)."""
    return [(statistics.median(w), statistics.median(c))
            for w, c in interleaved_times(fns, repeats, device)]


def ratio_spread(num: list[float], den: list[float]) -> tuple[float, float, float]:
    """(median, min, max) of the per-repeat ratios num[i] / den[i] (the two timed in the same
    round, so under about the same machine load)."""
    r = [a / b for a, b in zip(num, den, strict=True)]
    return statistics.median(r), min(r), max(r)


def fft_floor_runner(model: FarFieldModel, device: Device, n_slices: int, n_probe_modes: int,
                     n_object_modes: int):
    """A function doing the 4 S FFTs per wave of one evaluation over the model's batches (in
    place on work arrays of the evaluation's shapes; half forward, half inverse so that the
    values stay bounded), and the number of 2-D FFTs it does."""
    xp = device.xp
    n = model.n_measurements
    batch_sizes = [s.stop - s.start for s in model.batches(n)]
    rng = np.random.default_rng(1)
    work = {}
    for b in set(batch_sizes):
        shape = (n_object_modes, n_probe_modes, b, WINDOW, WINDOW)
        work[b] = device.empty(shape, device.complex_dtype)  # aligned for FFTW
        work[b][...] = xp.asarray(rng.standard_normal(shape))
    per_batch = 4 * n_slices

    def run() -> None:
        for b in batch_sizes:
            a = work[b]
            for _ in range(per_batch // 2):
                a = device.fft2(a, overwrite=True)
                a = device.ifft2(a, overwrite=True)
            work[b] = a

    return run, per_batch * n * n_probe_modes * n_object_modes


def profile(model: FarFieldModel, params: dict, top: int = 25) -> None:
    """cProfile (CPU time) of one evaluation after a warm-up: the top functions by own time."""
    model.value_and_grad(params)
    prof = cProfile.Profile(time.process_time)  # CPU time: robust on a shared machine
    prof.enable()
    model.value_and_grad(params)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def parallel_batches(precision: str, n_slices: int, n_modes: int, batch_size: int,
                     repeats: int) -> None:
    """Batch-level parallelism on this machine: one evaluation on one thread against the same
    evaluation split in two halves (measurement indices) evaluated by two threads at once
    (two models: own work buffers; pyFFTW and the numba kernels release the GIL), and
    against FFTW's own two threads per transform. Prints wall and CPU time and the speed-up
    of the wall time (> 1: parallelism pays)."""
    from concurrent.futures import ThreadPoolExecutor

    dev = Device("cpu", precision, workers=1, fft="fftw", fused="numba")
    one, params = make_problem(dev, n_slices, n_modes, batch_size)
    halves = [make_problem(Device("cpu", precision, workers=1, fft="fftw", fused="numba"),
                           n_slices, n_modes, batch_size)[0] for _ in range(2)]
    dev2 = Device("cpu", precision, workers=2, fft="fftw", fused="numba")
    fftw2, params2 = make_problem(dev2, n_slices, n_modes, batch_size)
    n = one.n_measurements
    parts = [np.arange(0, n // 2), np.arange(n // 2, n)]
    pool = ThreadPoolExecutor(2)

    def split() -> None:
        futures = [pool.submit(m.value_and_grad, params, indices=idx)
                   for m, idx in zip(halves, parts, strict=True)]
        results = [f.result() for f in futures]
        for key in results[0][1]:  # the reduction a batch-parallel engine has to do
            results[0][1][key] += results[1][1][key]

    fns = [lambda: one.value_and_grad(params), split, lambda: fftw2.value_and_grad(params2)]
    labels = ["1 thread", "2 threads over batches", "FFTW 2 threads/transform"]
    times = interleaved_times(fns, repeats, dev)
    pool.shutdown()
    print(f"\nbatch-level parallelism, {precision}, {n_slices} slice(s), {n_modes} mode(s): "
          f"median of {repeats}, speed-up = 1-thread wall / wall (same round)")
    for label, (w, c) in zip(labels, times, strict=True):
        med, lo, hi = ratio_spread(times[0][0], w)
        print(f"  {label:>26}: wall {statistics.median(w):.4f} s, CPU "
              f"{statistics.median(c):.4f} s, speed-up {med:.2f} ({lo:.2f}-{hi:.2f})")


def batch_size_table(precision: str, sizes: list[int], repeats: int, base: int) -> None:
    """The fastest CPU variant (fftw+numba, else the default kernels) at several batch sizes,
    timed interleaved in one run: median wall and CPU time per evaluation and the ratio of
    each to the evaluation at batch size ``base`` (per-repeat ratios, same round), and the
    ratio to the planned-FFTW floor measured at batch size ``base``."""
    fft = "fftw" if pyfftw_available() else "scipy"
    fused = "numba" if numba_available() else "numpy"
    sizes = sorted(set(sizes) | {base})
    print(f"\nbatch sizes, {precision}, {fft}+{fused}: median of {repeats} interleaved "
          f"repeats; ratio = time / time at batch {base} (same round)")
    for n_slices, n_modes in CONFIGS:
        fns = []
        for size in sizes:
            dev = Device("cpu", precision, workers=1, fft=fft, fused=fused)
            model, params = make_problem(dev, n_slices, n_modes, size)
            fns.append(lambda model=model, params=params: model.value_and_grad(params))
        dev = Device("cpu", precision, workers=1, fft=fft)
        floor, _ = fft_floor_runner(make_problem(dev, n_slices, n_modes, base)[0], dev,
                                    n_slices, n_modes, 1)
        times = interleaved_times(fns + [floor], repeats, dev)
        ref_wall, ref_cpu = times[sizes.index(base)]
        floor_cpu = times[-1][1]
        cells = []
        for size, (wall, cpu) in zip(sizes, times, strict=False):
            med, lo, hi = ratio_spread(cpu, ref_cpu)
            cells.append(f"{size:>5}: wall {statistics.median(wall):.4f} s "
                         f"({ratio_spread(wall, ref_wall)[0]:.2f}), CPU "
                         f"{statistics.median(cpu):.4f} s ({med:.2f}, {lo:.2f}-{hi:.2f}), "
                         f"CPU / floor {ratio_spread(cpu, floor_cpu)[0]:.2f}")
        print(f"  {n_slices} slice(s), {n_modes} mode(s), floor at batch {base} "
              f"{statistics.median(floor_cpu):.4f} s CPU")
        for cell in cells:
            print(f"    batch {cell}")


def run_table(args: argparse.Namespace, precision: str, repeats: int,
              summary: list[tuple]) -> None:
    """Time every variant and both floors for each configuration at ``precision``; print
    the table rows and add the Done-means figures (fastest variant / fftw floor) to
    ``summary``."""
    providers = ["scipy"] + (["fftw"] if pyfftw_available() and args.device == "cpu" else [])
    fused = ["numpy"] + (["numba"] if numba_available() and args.device == "cpu" else [])
    devices = {p: Device(args.device, precision, workers=args.threads, fft=p)
               for p in providers}
    device = devices["scipy"]
    # (FFT provider, element-wise kernels) of the timed evaluations
    variants = [("scipy", "numpy")] + [(p, f) for p in providers[1:] for f in fused]
    if len(providers) == 1:
        variants += [("scipy", f) for f in fused[1:]]
    n = N_SIDE * N_SIDE
    dtype = np.dtype(device.complex_dtype).name
    print(f"\n{dtype}: median of {repeats} interleaved repeats after 1 warm-up; ratios = "
          f"evaluation / FFT floor (wall, CPU)")
    header = (f"{'dtype':>10} {'slices':>6} {'modes':>5} {'FFTs':>6} {'fft+kernels':>12} "
              f"{'wall [s]':>9} {'CPU [s]':>8} "
              + " ".join(f"{'/' + p + ' wall':>11} {'CPU':>5}" for p in providers)
              + f" {'us/pattern':>10}")
    print(header)
    print("-" * len(header))
    for n_slices, n_modes in CONFIGS:
        if args.batch_size == "auto":
            print(f"{'':>10} {n_slices:>6} {n_modes:>5}  batch size "
                  f"{resolve_batch(device, n_modes, 'auto')} (auto)")
        fns, floors = [], []
        count = 0
        for p in providers:
            model, _ = make_problem(devices[p], n_slices, n_modes, args.batch_size)
            floor, count = fft_floor_runner(model, devices[p], n_slices, n_modes, 1)
            floors.append(floor)
        for p, f in variants:
            dev = Device(args.device, precision, workers=args.threads, fft=p, fused=f)
            model, params = make_problem(dev, n_slices, n_modes, args.batch_size)

            def evaluate(model: FarFieldModel = model, params: dict = params) -> None:
                model.value_and_grad(params)

            fns.append(evaluate)
        times = interleaved_times(fns + floors, repeats, device)
        evals, floor_times = times[:len(variants)], times[len(variants):]
        for (p, f), (wall, cpu) in zip(variants, evals, strict=True):
            w, c = statistics.median(wall), statistics.median(cpu)
            ratios = " ".join(f"{ratio_spread(wall, fw)[0]:>11.2f} {ratio_spread(cpu, fc)[0]:>5.2f}"
                              for fw, fc in floor_times)
            print(f"{dtype:>10} {n_slices:>6} {n_modes:>5} {count:>6} {p + '+' + f:>12} {w:>9.4f} "
                  f"{c:>8.4f} {ratios} {1e6 * w / n:>10.1f}")
        for p, (fw, fc) in zip(providers, floor_times, strict=True):
            fw, fc = statistics.median(fw), statistics.median(fc)
            print(f"{'':>10} {'':>6} {'':>5} {count:>6} {p + ' floor':>12} {fw:>9.4f} {fc:>8.4f}"
                  f"  ({1e6 * fc / count:.2f} us CPU per 2-D FFT)")
        best = len(variants) - 1  # the last variant: fftw+numba when both are installed
        floor_w, floor_c = floor_times[-1]
        summary.append((dtype, n_slices, n_modes, "+".join(variants[best]), providers[-1],
                        ratio_spread(evals[best][1], floor_c),
                        ratio_spread(evals[best][0], floor_w)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (3)")
    ap.add_argument("--threads", type=int, default=1, help="FFT worker threads (default 1)")
    ap.add_argument("--precision", choices=("single", "double", "both"), default="both")
    ap.add_argument("--batch-size", type=batch_arg, default=256,
                    help="measurements per batch, or 'auto': the Device's cache-sized batch "
                         "per configuration and precision (Device.batch_limit)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 7)")
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--profile", choices=("scipy", "fftw"), default=None,
                    help="print a cProfile of one evaluation per configuration with this "
                         "provider (and the --profile-fused kernels) instead of timing")
    ap.add_argument("--profile-fused", choices=("numpy", "numba"), default="numpy")
    ap.add_argument("--parallel", action="store_true",
                    help="measure batch-level parallelism over 2 threads (fftw+numba) instead "
                         "of the table")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                    help="instead of the table: the fastest variant at these batch sizes "
                         "against --batch-size, timed interleaved")
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    precisions = ["single", "double"] if args.precision == "both" else [args.precision]
    print(f"ptyframe model benchmark: {N_SIDE * N_SIDE} positions, {WINDOW}x{WINDOW} patterns, "
          f"object {OBJECT}x{OBJECT}, loss lsq_sqrt, gradients object+probe+positions")
    print(f"device {args.device}, FFT worker threads {args.threads} (BLAS "
          f"{os.environ.get('OPENBLAS_NUM_THREADS')}), batch size {args.batch_size}, "
          f"numpy {np.__version__}, CPUs visible {os.cpu_count()}, load average "
          f"{os.getloadavg()[0]:.2f} (the machine may be shared: CPU time is the steadier "
          f"figure)")
    if not pyfftw_available() and args.device == "cpu":
        print("pyFFTW not installed (pip install ptyframe[fftw]): no planned-FFTW floor")
    if args.profile is not None:
        for precision in precisions:
            dev = Device(args.device, precision, workers=args.threads, fft=args.profile,
                         fused=args.profile_fused)
            for n_slices, n_modes in CONFIGS:
                model, params = make_problem(dev, n_slices, n_modes, args.batch_size)
                print(f"\n=== cProfile, {precision}, {n_slices} slice(s), {n_modes} probe "
                      f"mode(s), fft={args.profile}, fused={args.profile_fused}")
                profile(model, params)
        return 0
    if args.batch_sizes:
        if args.device != "cpu" or min(args.batch_sizes) < 1:
            print("--batch-sizes: expected positive sizes on --device cpu")
            return 1
        for precision in precisions:
            batch_size_table(precision, args.batch_sizes, repeats,
                             256 if args.batch_size == "auto" else args.batch_size)
        return 0
    if args.parallel:
        if not (pyfftw_available() and numba_available()):
            print("--parallel needs pyFFTW and numba (extras 'fftw', 'numba')")
            return 1
        for precision in precisions:
            for n_slices, n_modes in CONFIGS:
                parallel_batches(precision, n_slices, n_modes, args.batch_size, repeats)
        return 0
    summary: list[tuple] = []
    for precision in precisions:
        run_table(args, precision, repeats, summary)
    print(f"\nSummary: fastest evaluation / {summary[0][4]} FFT floor, median (min-max) of "
          f"the per-repeat ratios")
    print(f"{'dtype':>10} {'slices':>6} {'modes':>5} {'variant':>12} {'CPU ratio':>20} "
          f"{'wall ratio':>20}")
    for dtype, n_slices, n_modes, variant, _, c, w in summary:
        print(f"{dtype:>10} {n_slices:>6} {n_modes:>5} {variant:>12} "
              f"{c[0]:>7.2f} ({c[1]:.2f}-{c[2]:.2f}) {w[0]:>7.2f} ({w[1]:.2f}-{w[2]:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
