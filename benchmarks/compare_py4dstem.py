"""Side-by-side speed of ptyframe and py4DSTEM single-slice ptychography on the same data.

    python benchmarks/compare_py4dstem.py [--data sto_thin] [--epochs 40] [--iterations 40]
                                          [--threads 1] [--json out.json]

Both codes reconstruct the same validation dataset (default ../shared/data/sto_thin.h5,
abTEM data with ground truth; ``--data`` takes another name of that folder or a path), on
CPU, with the same number of threads (OMP/MKL/OPENBLAS/NUMEXPR variables and threadpoolctl
set before NumPy is imported, FFTs on one thread: ptyframe ``Device(workers=threads)``,
py4DSTEM calls ``numpy.fft``, which is single-threaded), from the same starting probe (an
aperture of the metadata's convergence semi-angle with the metadata's defocus at the
metadata's voltage; no vacuum pattern) and the same (nominal) scan positions, kept fixed.

After every ptyframe epoch / py4DSTEM iteration it records the wall time (perf_counter)
and CPU time (process_time) since the start of the code's setup (object construction and
preprocessing included, data reading from the file excluded, scoring excluded) and the
phase Pearson correlation with the ground truth, computed as in
``validate_shared_data.py``: the reconstruction cropped to the scanned area at the place
its own position convention predicts, then aligned to the truth by a sub-pixel shift,
low-passed (sigma 0.5 px) and correlated (global phase offset removed). It prints the
trace, the time each code takes to reach Pearson 0.99, 0.98 and 0.95, the median time of
one iteration after the first, and the ratios py4DSTEM / ptyframe; ``--json`` writes all of
it. CPU time is the figure to read on a shared machine.

Without py4DSTEM installed (``pip install -e ".[compare]"``; py4DSTEM 0.14 needs numpy < 2:
use a separate virtual environment) only ptyframe runs, with a message saying so.

Settings (see docs/benchmarks.md for the reasons): ptyframe as validate_shared_data.py
runs it (ml loss for counts, lsq_sqrt otherwise, quasi-Newton full batch or, with
``--engine mini_batch``, mini-batch passes first, probe refined from epoch 5, no held-out
patterns so both codes fit all data); py4DSTEM gradient descent
with its defaults (step 0.5, normalization_min 1, aperture rolloff 2 mrad, probe refined
from the start with its centre of mass fixed) in mini-batches of ``--py4dstem-batch``
patterns (default 16, the fastest to 0.99 of 8 to 576 on sto_thin; its own default, all
patterns, is the slowest), the rotation forced to 0 and no transpose (the detector axes
are parallel to the scan axes in these files).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def _threads_from_argv(argv: list[str]) -> str:
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return "1"


#: thread pools bounded through the environment (read when NumPy and BLAS load)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS")

if __name__ == "__main__":  # every pool the same size, before NumPy is imported
    for _var in THREAD_VARIABLES:
        os.environ[_var] = _threads_from_argv(sys.argv[1:])
    os.environ.setdefault("MPLBACKEND", "Agg")

import attrs  # noqa: E402
import h5py  # noqa: E402
import numpy as np  # noqa: E402
from ptyframe_initializers.positions import scan_grid  # noqa: E402

from ptyframe import (  # noqa: E402
    Dataset,
    Device,
    FromEpoch,
    Reconstruction,
    load_experiment,
    load_registry,
)
from ptyframe.testing.validation import phase_correlation  # noqa: E402


def _sibling(name: str) -> Any:
    """The benchmark script ``name``.py next to this one, as a module."""
    spec = importlib.util.spec_from_file_location(
        f"_ptyframe_benchmark_{name}", Path(__file__).resolve().with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# the loading and scoring of validate_shared_data.py, reused as they are
_VALIDATE = _sibling("validate_shared_data")
DATA_DIR: Path = _VALIDATE.DATA_DIR
truth_on_recon_grid = _VALIDATE.truth_on_recon_grid

#: Pearson correlations whose first crossing is reported
TARGETS = (0.99, 0.98, 0.95)
#: the low-pass of validate_shared_data.py (pixels)
LOWPASS_PX = 0.5


@attrs.define
class Row:
    """One iteration: times (s) since the start of the code's setup, scoring excluded;
    ``error``: the code's own normalised error (ptyframe: the relative loss, 1 at the first
    epoch; py4DSTEM: its error_iterations)."""

    iteration: int
    wall_s: float
    cpu_s: float
    pearson: float
    error: float
    #: loss+gradient evaluations of the epoch (ptyframe; None for py4DSTEM's passes)
    evaluations: int | None = None


@attrs.define
class Trace:
    """The per-iteration record of one code."""

    code: str
    settings: dict
    setup_wall_s: float = 0.0
    setup_cpu_s: float = 0.0
    rows: list[Row] = attrs.field(factory=list)

    def first_reaching(self, target: float) -> Row | None:
        return next((row for row in self.rows if row.pearson >= target), None)

    def best(self) -> Row | None:
        return max(self.rows, key=lambda row: row.pearson, default=None)

    def per_iteration(self) -> dict[str, float] | None:
        """Median wall and CPU time (s) of one iteration after the first (which carries the
        warm-up: FFT plans, JIT compilation, the first line search); None below 3 rows."""
        if len(self.rows) < 3:
            return None
        wall = np.diff([row.wall_s for row in self.rows])
        cpu = np.diff([row.cpu_s for row in self.rows])
        return {"wall": float(np.median(wall)), "cpu": float(np.median(cpu))}

    def to_json(self) -> dict:
        return {
            "code": self.code, "settings": self.settings,
            "setup_wall_s": self.setup_wall_s, "setup_cpu_s": self.setup_cpu_s,
            "rows": [attrs.asdict(row) for row in self.rows],
            "time_to": {f"{t:.2f}": (attrs.asdict(r) if (r := self.first_reaching(t)) else None)
                        for t in TARGETS},
            "best": attrs.asdict(self.best()) if self.rows else None,
            "per_iteration_s": self.per_iteration(),
        }


class Clock:
    """Wall and CPU time since ``start()``, without the intervals spent inside ``paused()``."""

    def __init__(self) -> None:
        self._wall0 = self._cpu0 = 0.0
        self._paused_wall = self._paused_cpu = 0.0

    def start(self) -> None:
        self._wall0, self._cpu0 = time.perf_counter(), time.process_time()
        self._paused_wall = self._paused_cpu = 0.0

    def now(self) -> tuple[float, float]:
        return (time.perf_counter() - self._wall0 - self._paused_wall,
                time.process_time() - self._cpu0 - self._paused_cpu)

    def pause_for(self, work: Callable[..., Any], *args: Any) -> Any:
        """``work(*args)``, its time left out of :meth:`now`."""
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return work(*args)
        finally:
            self._paused_wall += time.perf_counter() - wall
            self._paused_cpu += time.process_time() - cpu


@attrs.define
class _Grid:
    """Where an image's pixels are: pixel (iy, ix) at origin_A + (iy, ix) * pixel_size_A."""

    pixel_size_A: float
    origin_A: tuple[float, float]


@attrs.define
class _Placed:
    """The part of a ReconstructionResult that truth_on_recon_grid reads."""

    phase: np.ndarray
    grid: _Grid


class Scorer:
    """Phase Pearson with the ground truth of one dataset file, as validate_shared_data.py."""

    def __init__(self, path: Path, nominal_ours_A: np.ndarray) -> None:
        self.path = path
        self.nominal_ours_A = nominal_ours_A

    def __call__(self, phase: np.ndarray, pixel_size_A: float, origin_A: np.ndarray) -> float:
        grid = _Grid(float(pixel_size_A), (float(origin_A[0]), float(origin_A[1])))
        rec_crop, gt_crop = truth_on_recon_grid(self.path, _Placed(phase, grid),
                                                self.nominal_ours_A)
        if rec_crop.shape != gt_crop.shape:
            raise ValueError(f"reconstruction: expected to cover the scanned area "
                             f"{gt_crop.shape} px, found {rec_crop.shape}")
        return phase_correlation(rec_crop, gt_crop, lowpass_sigma_px=LOWPASS_PX)


# ---------------------------------------------------------------------------- ptyframe
def run_ptyframe(patterns: np.ndarray, path: Path, scorer: Scorer,
                 args: argparse.Namespace) -> Trace:
    settings = {"loss": args.loss or "default", "engine": args.engine,
                "optimizer": "quasi_newton", "refine_probe_from_epoch": args.probe_from,
                "validation_fraction": 0.0, "precision": args.precision,
                "fft": args.fft, "fused": args.fused, "workers": args.threads,
                "epochs": args.epochs}
    trace = Trace("ptyframe", settings)
    clock = Clock()
    clock.start()
    experiment = load_experiment(path)
    dataset = Dataset.from_array(patterns, scan_shape=experiment.scan_shape)
    registry = load_registry()
    loss = registry.create("loss", {"type": args.loss}) if args.loss else None
    engine_config: dict[str, Any] = {"type": args.engine}
    if args.engine == "mini_batch":
        engine_config.update(batch_size=args.batch_size, switch_epoch=args.switch_epoch)
    settings["engine"] = engine_config
    engine = registry.create("engine", engine_config)
    rec = Reconstruction(
        dataset, experiment, loss=loss, engine=engine, n_slices=1, n_probe_modes=1,
        refine_probe=FromEpoch(args.probe_from),
        validation_fraction=0.0, keep_best=False,
        device=Device("cpu", args.precision, workers=args.threads, fft=args.fft,
                      fused=args.fused),
        progress=False, figures=False, result_file=False, save_loss_log=False)
    rec.initialize()
    trace.settings["loss"] = rec.loss.name
    trace.setup_wall_s, trace.setup_cpu_s = clock.now()

    def score() -> float:
        result = rec.result()
        return scorer(result.phase, result.grid.pixel_size_A, np.asarray(result.grid.origin_A))

    def on_epoch(report: Any) -> bool:
        wall, cpu = clock.now()
        pearson = clock.pause_for(score)
        trace.rows.append(Row(report.epoch, wall, cpu, pearson, float(report.loss_relative),
                              int(report.evaluations)))
        return args.stop_at is not None and pearson >= args.stop_at

    rec.run(args.epochs, callbacks=[on_epoch])
    return trace


# ---------------------------------------------------------------------------- py4DSTEM
def _py4dstem() -> tuple[Any, Any, str | None]:
    """(py4DSTEM, SingleslicePtychography, None), or (None, None, why) when not importable."""
    try:
        import py4DSTEM
        from py4DSTEM.process.phase import SingleslicePtychography
    except ImportError as exc:
        return None, None, str(exc)
    return py4DSTEM, SingleslicePtychography, None


def run_py4dstem(patterns: np.ndarray, path: Path, scorer: Scorer,
                 args: argparse.Namespace) -> Trace:
    py4DSTEM, SingleslicePtychography, _ = _py4dstem()
    exp = load_experiment(path)  # the metadata ptyframe reads, for py4DSTEM too
    if not isinstance(exp.scan_step_A, (int, float)):
        raise ValueError(f"scan_step_A: py4DSTEM's scan calibration expects one step, found "
                         f"{exp.scan_step_A}")
    settings = {"method": "gradient-descent", "step_size": args.py4dstem_step,
                "max_batch_size": args.py4dstem_batch, "normalization_min": 1.0,
                "fix_probe_iterations": args.py4dstem_fix_probe, "fix_probe_com": True,
                "fix_positions": True, "force_com_rotation": 0.0,
                "force_com_transpose": False,
                "semiangle_cutoff_mrad": exp.convergence_angle_mrad,
                "rolloff_mrad": args.py4dstem_rolloff, "defocus_A": exp.defocus_A,
                "energy_eV": exp.voltage_kV * 1e3, "iterations": args.iterations,
                "version": py4DSTEM.__version__}
    trace = Trace("py4DSTEM", settings)
    clock = Clock()
    clock.start()
    # py4DSTEM's axes are (Rx, Ry, Qx, Qy) with x first: our (y, x) map onto its (x, y)
    # for scan and detector alike, so no transpose and no rotation.
    cube = py4DSTEM.DataCube(data=patterns.reshape(tuple(exp.scan_shape) + patterns.shape[1:]))
    cube.calibration.set_R_pixel_size(float(exp.scan_step_A))
    cube.calibration.set_R_pixel_units("A")
    cube.calibration.set_Q_pixel_size(float(exp.dk_inv_A))
    cube.calibration.set_Q_pixel_units("A^-1")
    # py4DSTEM's "defocus" is -C10, as the metadata's defocus_A (checked: +C10 instead
    # gives a Pearson of ~0.2 on sto_thin)
    ptycho = SingleslicePtychography(
        energy=exp.voltage_kV * 1e3, datacube=cube,
        semiangle_cutoff=exp.convergence_angle_mrad, rolloff=args.py4dstem_rolloff,
        defocus=exp.defocus_A, initial_scan_positions=scorer.nominal_ours_A.copy(),
        device="cpu", verbose=False)
    ptycho.preprocess(plot_center_of_mass=False, plot_rotation=False,
                      plot_probe_overlaps=False, force_com_rotation=0.0,
                      force_com_transpose=False)
    trace.setup_wall_s, trace.setup_cpu_s = clock.now()
    pixel = np.asarray(ptycho.sampling, dtype=float)
    if not np.allclose(pixel, pixel[0], rtol=1e-6):
        raise ValueError(f"py4DSTEM sampling: expected square pixels, found {pixel}")

    def score() -> float:
        # py4DSTEM's probe is corner-centred: its centre sits at ``positions`` (Å from
        # object pixel (0, 0)), so object pixel (0, 0) is at nominal[n] - positions[n] in
        # our frame; ``object`` is the whole (uncropped) object after each reconstruct
        origin = np.mean(scorer.nominal_ours_A - np.asarray(ptycho.positions), axis=0)
        return scorer(np.angle(np.asarray(ptycho.object)), pixel[0], origin)

    for iteration in range(1, args.iterations + 1):
        ptycho.reconstruct(
            num_iter=1, reconstruction_method="gradient-descent",
            step_size=args.py4dstem_step, max_batch_size=args.py4dstem_batch,
            seed_random=iteration, normalization_min=1.0,
            fix_probe=iteration <= args.py4dstem_fix_probe,
            fix_probe_com=True, fix_positions=True, progress_bar=False,
            reset=True if iteration == 1 else False, store_iterations=False)
        wall, cpu = clock.now()
        pearson = clock.pause_for(score)
        trace.rows.append(Row(iteration, wall, cpu, pearson,
                              float(ptycho.error_iterations[-1])))
        if args.stop_at is not None and pearson >= args.stop_at:
            break
    return trace


# ---------------------------------------------------------------------------- report
def _fmt(row: Row | None) -> str:
    return "not reached" if row is None else (
        f"{row.wall_s:7.2f} s wall {row.cpu_s:7.2f} s CPU (it {row.iteration}, "
        f"r {row.pearson:.4f})")


def ratios(ours: Trace, theirs: Trace) -> dict:
    """py4DSTEM / ptyframe time to each target and per iteration (wall and CPU; None where
    one never reached the target or ran too few iterations)."""
    out: dict[str, dict[str, float] | None] = {}
    for target in TARGETS:
        a, b = ours.first_reaching(target), theirs.first_reaching(target)
        out[f"{target:.2f}"] = None if a is None or b is None else {
            "wall": b.wall_s / a.wall_s, "cpu": b.cpu_s / a.cpu_s}
    a, b = ours.per_iteration(), theirs.per_iteration()
    out["per_iteration"] = None if a is None or b is None else {
        "wall": b["wall"] / a["wall"], "cpu": b["cpu"] / a["cpu"]}
    return out


def print_report(traces: list[Trace]) -> None:
    for trace in traces:
        print(f"\n{trace.code}: setup {trace.setup_wall_s:.2f} s wall "
              f"{trace.setup_cpu_s:.2f} s CPU; settings {trace.settings}")
        print(f"  {'it':>4} {'wall s':>8} {'CPU s':>8} {'Pearson':>8} {'error':>10} "
              f"{'evals':>5}")
        for row in trace.rows:
            evals = "" if row.evaluations is None else str(row.evaluations)
            print(f"  {row.iteration:4d} {row.wall_s:8.2f} {row.cpu_s:8.2f} "
                  f"{row.pearson:8.4f} {row.error:10.4g} {evals:>5}")
    print("\ntime to reach the phase Pearson (setup included, scoring excluded)")
    for trace in traces:
        best = trace.best()
        print(f"  {trace.code}: best {best.pearson:.4f} at iteration {best.iteration} "
              f"({best.wall_s:.2f} s)" if best else f"  {trace.code}: no iteration")
        for target in TARGETS:
            print(f"    {target:.2f}: {_fmt(trace.first_reaching(target))}")
        each = trace.per_iteration()
        if each is not None:
            print(f"    one iteration after the first (median): {each['wall']:.3f} s wall "
                  f"{each['cpu']:.3f} s CPU")
    if len(traces) == 2:
        print("  ratio py4DSTEM / ptyframe:")
        for key, value in ratios(*traces).items():
            label = "per iteration" if key == "per_iteration" else f"to {key}"
            shown = ("n/a (not reached by both)" if value is None else
                     f"{value['wall']:.2f} (wall), {value['cpu']:.2f} (CPU)")
            print(f"    {label}: {shown}")


def _dataset_path(value: str) -> Path:
    path = Path(value)
    if path.is_file():
        return path
    named = DATA_DIR / f"{value}.h5"
    if named.is_file():
        return named
    raise SystemExit(f"--data: expected a file or a name of {DATA_DIR}, found {value!r}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="sto_thin",
                        help="dataset name in ../shared/data or path to one (default sto_thin)")
    parser.add_argument("--epochs", type=int, default=40, help="ptyframe epochs")
    parser.add_argument("--iterations", type=int, default=40, help="py4DSTEM iterations")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads of every pool, both codes (default 1)")
    parser.add_argument("--precision", choices=("single", "double"), default="single",
                        help="ptyframe precision (py4DSTEM computes in complex64)")
    parser.add_argument("--loss", default=None,
                        help="ptyframe loss: ml or lsq_sqrt (default: its choice, ml for counts "
                             "and lsq_sqrt otherwise; py4DSTEM fits amplitudes, like lsq_sqrt)")
    parser.add_argument("--probe-from", type=int, default=5,
                        help="ptyframe epoch from which the probe is refined (default 5, as "
                             "validate_shared_data.py)")
    parser.add_argument("--engine", choices=("full_batch", "mini_batch"), default="full_batch",
                        help="ptyframe engine (default full_batch)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="mini_batch engine: measurements per mini-batch (default 32)")
    parser.add_argument("--switch-epoch", type=int, default=3,
                        help="mini_batch engine: mini-batch passes before full batch "
                             "(default 3)")
    parser.add_argument("--noiseless", action="store_true",
                        help="reconstruct data_noiseless x electrons_per_pattern instead of the "
                             "Poisson counts")
    parser.add_argument("--fft", default="scipy", help="ptyframe CPU FFT: scipy or fftw")
    parser.add_argument("--fused", default="numpy", help="ptyframe kernels: numpy or numba")
    parser.add_argument("--py4dstem-batch", type=int, default=16,
                        help="py4DSTEM max_batch_size (patterns per update)")
    parser.add_argument("--py4dstem-step", type=float, default=0.5,
                        help="py4DSTEM gradient-descent step_size (its default 0.5)")
    parser.add_argument("--py4dstem-rolloff", type=float, default=2.0,
                        help="py4DSTEM aperture edge (mrad, inside the semi-angle; its "
                             "default 2)")
    parser.add_argument("--py4dstem-fix-probe", type=int, default=0,
                        help="py4DSTEM iterations with the probe fixed before it is refined")
    parser.add_argument("--stop-at", type=float, default=None,
                        help="stop a code once its Pearson reaches this (default: run all)")
    parser.add_argument("--codes", default="ptyframe,py4dstem",
                        help="comma-separated: ptyframe, py4dstem")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    for name in ("epochs", "iterations", "threads", "py4dstem_batch", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected an integer >= 1, found "
                         f"{getattr(args, name)}")
    for name in ("probe_from", "py4dstem_fix_probe", "switch_epoch"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')}: expected an integer >= 0, found "
                         f"{getattr(args, name)}")
    if not (np.isfinite(args.py4dstem_step) and args.py4dstem_step > 0):
        parser.error(f"--py4dstem-step: expected a finite number > 0, found "
                     f"{args.py4dstem_step}")
    if not (np.isfinite(args.py4dstem_rolloff) and args.py4dstem_rolloff >= 0):
        parser.error(f"--py4dstem-rolloff: expected a finite number >= 0 (mrad), found "
                     f"{args.py4dstem_rolloff}")
    codes = [c.strip().lower() for c in args.codes.split(",") if c.strip()]
    unknown = sorted(set(codes) - {"ptyframe", "py4dstem"})
    if unknown or not codes:
        parser.error(f"--codes: expected ptyframe and/or py4dstem, found {args.codes!r}")
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        limits = None  # the environment variables bound the BLAS pools of a script run
    else:
        limits = threadpool_limits(args.threads)

    path = _dataset_path(args.data)
    with h5py.File(path, "r") as fh:
        if args.noiseless:  # expected counts, as validate_shared_data.py --noiseless
            patterns = np.asarray(fh["data_noiseless"][()] * float(
                fh.attrs["electrons_per_pattern"]), dtype=np.float32)
        else:
            patterns = np.asarray(fh["data"][()], dtype=np.float32)
    experiment = load_experiment(path)
    nominal = scan_grid(experiment.scan_shape, experiment.scan_step_yx_A,
                        experiment.scan_rotation_deg)
    if abs(experiment.scan_rotation_deg) > 1e-9 and "py4dstem" in codes:
        print(f"note: the scan is rotated by {experiment.scan_rotation_deg} deg; py4DSTEM "
              f"gets the rotated nominal positions and force_com_rotation=0")
    scorer = Scorer(path, nominal)
    print(f"{path.name}: {patterns.shape[0]} patterns {patterns.shape[1:]}, "
          f"{args.threads} thread(s) per code")

    traces = []
    if "ptyframe" in codes:
        traces.append(run_ptyframe(patterns, path, scorer, args))
    if "py4dstem" in codes:
        _, _, why = _py4dstem()
        if why is None:
            traces.append(run_py4dstem(patterns, path, scorer, args))
        else:
            print(f"py4DSTEM is not installed ({why}): "
                  f"{'running ptyframe only' if traces else 'nothing to run'}. Install it "
                  f"with `pip install py4DSTEM` (it needs numpy < 2: use a separate "
                  f"virtual environment) to compare.")
            if not traces:
                return 2
    print_report(traces)
    if args.json is not None:
        out = {"data": str(path), "noiseless": args.noiseless, "threads": args.threads,
               "targets": list(TARGETS),
               "numpy": np.__version__, "traces": [t.to_json() for t in traces]}
        if len(traces) == 2:
            out["ratio_py4dstem_over_ptyframe"] = ratios(*traces)
        args.json.write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")
    if limits is not None:
        limits.restore_original_limits()
    return 0


if __name__ == "__main__":
    sys.exit(main())
