"""``ptyframe inspect DATA``: what ptyframe reads from a data file, before a long run.

Reports the reader, shapes, dtype, scan and detector axes, every metadata value with where it
came from, the Experiment the metadata give, and the bright-field disc measured on the mean
pattern (centre, radius) against the radius the calibration predicts
(``alpha / (lambda * dk)`` pixels); a calibration off by more than
:data:`DISC_TOLERANCE` is flagged. :func:`template_config` writes a ready-to-edit config.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from ptyframe.core.experiment import Experiment
from ptyframe.io.data import Dataset
from ptyframe.io.metadata import MetadataError, experiment_from_metadata, read_file_metadata

__all__ = ["DISC_TOLERANCE", "DataReport", "EpochEstimate", "estimate_epoch", "inspect_data",
           "measure_bright_field_disc", "template_config"]

#: relative disagreement between measured and predicted disc radius that is flagged
DISC_TOLERANCE = 0.05
_MAX_VALUE_CHARS = 100


def measure_bright_field_disc(mean_pattern: np.ndarray) -> tuple[float, float, float]:
    """(centre y, centre x, radius) in pixels of the bright-field disc of a mean pattern.

    The disc level is the median of the pixels above half the 99.5th percentile; the centre
    is the intensity centroid of the pixels above half that level; the radius is
    ``sqrt(A / pi)`` with ``A`` the summed, clipped fraction ``min(I / level, 1)`` within 1.5
    threshold radii of the centre (sub-pixel: edge pixels count by their fill)."""
    m = np.asarray(mean_pattern, dtype=float)
    if m.ndim != 2 or not np.all(np.isfinite(m)) or m.max() <= 0:
        raise ValueError(f"mean pattern: expected a finite 2D pattern with counts, found shape "
                         f"{m.shape} and max {np.nanmax(m) if m.size else None}")
    top = np.percentile(m, 99.5)
    inside = float(np.median(m[m > 0.5 * top]))
    mask = m > 0.5 * inside
    yy, xx = np.indices(m.shape)
    weight = m[mask]
    cy = float((yy[mask] * weight).sum() / weight.sum())
    cx = float((xx[mask] * weight).sum() / weight.sum())
    r_threshold = math.sqrt(mask.sum() / math.pi)
    near = (yy - cy) ** 2 + (xx - cx) ** 2 <= (1.5 * r_threshold) ** 2
    radius = math.sqrt(float(np.clip(m[near] / inside, 0.0, 1.0).sum()) / math.pi)
    return cy, cx, radius


def _flatten(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _show(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    text = " ".join(text.split())
    return text if len(text) <= _MAX_VALUE_CHARS else text[:_MAX_VALUE_CHARS - 3] + "..."


@attrs.frozen
class BrightFieldDisc:
    """The bright-field disc of the mean pattern: ``centre_px`` (y, x) and ``radius_px``
    measured, ``predicted_radius_px`` from the convergence angle and the detector
    calibration (None without them)."""

    centre_px: tuple[float, float]
    radius_px: float
    predicted_radius_px: float | None


@attrs.frozen
class CountStatistics:
    """``mean_counts`` per pattern; ``totals_cv``: coefficient of variation of the total
    counts over the patterns; ``pattern_cv``: that of the mean pattern over its pixels."""

    mean_counts: float
    totals_cv: float
    pattern_cv: float


@attrs.frozen(kw_only=True)
class DataReport:
    """Everything :func:`inspect_data` found (see :meth:`format`)."""

    path: Path
    reader: str
    source: str
    n_patterns: int
    raw_pattern_shape: tuple[int, int]
    dtype: str
    scan_shape: tuple[int, int] | None
    metadata: list[tuple[str, str, str]]  # (key, value as text, origin)
    experiment: Experiment | None
    experiment_error: str | None
    disc: BrightFieldDisc
    counts: CountStatistics

    @property
    def disc_centre_px(self) -> tuple[float, float]:
        return self.disc.centre_px

    @property
    def disc_radius_px(self) -> float:
        return self.disc.radius_px

    @property
    def predicted_radius_px(self) -> float | None:
        return self.disc.predicted_radius_px

    @property
    def mean_counts(self) -> float:
        return self.counts.mean_counts

    @property
    def totals_cv(self) -> float:
        return self.counts.totals_cv

    @property
    def pattern_cv(self) -> float:
        return self.counts.pattern_cv

    @property
    def radius_error(self) -> float | None:
        """(measured - predicted) / predicted disc radius; None without a calibration."""
        if self.predicted_radius_px is None:
            return None
        return (self.disc_radius_px - self.predicted_radius_px) / self.predicted_radius_px

    @property
    def warnings(self) -> list[str]:
        out = []
        err = self.radius_error
        if err is not None and abs(err) > DISC_TOLERANCE:
            out.append(
                f"CALIBRATION: the measured bright-field disc radius {self.disc_radius_px:.2f} "
                f"px differs by {100 * err:+.1f} % from the {self.predicted_radius_px:.2f} px "
                f"that convergence_angle_mrad and the detector pixel size predict (tolerance "
                f"{100 * DISC_TOLERANCE:.0f} %); check the detector calibration and the "
                f"convergence angle")
        if self.totals_cv > self.pattern_cv:
            out.append(
                f"AXES: the total counts vary more from pattern to pattern (CV "
                f"{self.totals_cv:.2f}) than the mean pattern varies across the detector (CV "
                f"{self.pattern_cv:.2f}); the scan and detector axes may be swapped")
        if self.experiment_error is not None:
            out.append(f"METADATA: {self.experiment_error}")
        return out

    def format(self) -> str:
        """The report as text, one fact a line."""
        lines = [f"file        {self.path}",
                 f"reader      {self.reader}  ({self.source})",
                 f"patterns    {self.n_patterns} x {self.raw_pattern_shape[0]} x "
                 f"{self.raw_pattern_shape[1]} px (N, ky, kx), dtype {self.dtype}",
                 f"scan        {self.scan_shape if self.scan_shape else 'not known'} (sy, sx; "
                 "y slow, x fast)",
                 f"counts      {self.mean_counts:.6g} per pattern on average",
                 "", "metadata (key = value  <- where it came from)"]
        width = max((len(k) for k, _, _ in self.metadata), default=0)
        lines += [f"  {k.ljust(width)} = {v}  <- {o}" for k, v, o in self.metadata] or \
            ["  (none)"]
        lines.append("")
        if self.experiment is not None:
            lines.append("experiment")
            for key, value in self.experiment.to_config().items():
                lines.append(f"  {key} = {_show(value)}")
            lines.append(f"  (defocus_A = {self.experiment.defocus_A:g}, positive = underfocus; "
                         f"wavelength {self.experiment.wavelength_A:.5g} Å)")
        else:
            lines.append(f"experiment  incomplete: {self.experiment_error}")
        cy, cx = self.disc_centre_px
        ky, kx = self.raw_pattern_shape
        lines += ["", f"bright-field disc  centre ({cy:.2f}, {cx:.2f}) px (the convention puts "
                      f"it at ({ky // 2}, {kx // 2})), radius {self.disc_radius_px:.2f} px"]
        if self.predicted_radius_px is not None:
            lines.append(f"  predicted radius {self.predicted_radius_px:.2f} px from the "
                         f"metadata: {100 * self.radius_error:+.1f} %")
        for w in self.warnings:
            lines.append(f"WARNING {w}")
        return "\n".join(lines) + "\n"


def _scan_contrast(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """(mean pattern, total counts per pattern), read once in bounded chunks."""
    ky, kx = ds.raw_pattern_shape
    step = max(1, ds.chunk_bytes // (16 * ky * kx))
    total = np.zeros(ds.pattern_shape, dtype=np.float64)
    totals = np.empty(len(ds), dtype=np.float64)
    for start in range(0, len(ds), step):
        block = ds.read(np.arange(start, min(len(ds), start + step)), dtype=np.float64)
        total += block.sum(axis=0)
        totals[start:start + block.shape[0]] = block.sum(axis=(1, 2))
    return total / len(ds), totals


def _cv(values: np.ndarray) -> float:
    mean = float(np.mean(values))
    return float(np.std(values) / mean) if mean > 0 else float("inf")


def inspect_data(path: str | Path, reader: Any = None, dataset_name: str | None = None,
                 **overrides: Any) -> DataReport:
    """Read ``path`` as a reconstruction would and describe it (see the module docstring).
    ``overrides`` are Experiment fields (and ``defocus_A``) replacing the metadata."""
    p = Path(path)
    ds = Dataset.from_file(p, dataset_name=dataset_name, reader=reader, validate=False,
                           scan_shape=overrides.get("scan_shape"))
    meta = read_file_metadata(p, reader=ds.reader, registry=None)
    items = []
    for top, value in meta.values.items():
        origin = meta.origins.get(top, "?")
        if isinstance(value, Mapping) and value:
            items += [(k, _show(v), origin) for k, v in _flatten(value, f"{top}.")]
        else:
            items.append((top, _show(value), origin))
    experiment: Experiment | None = None
    error: str | None = None
    try:
        experiment = experiment_from_metadata(meta.values, **overrides)
    except MetadataError as exc:
        error = str(exc)
    mean, totals = _scan_contrast(ds)
    cy, cx, radius = measure_bright_field_disc(mean)
    predicted = None
    if experiment is not None:
        predicted = (experiment.convergence_angle_mrad * 1e-3 / experiment.wavelength_A
                     / experiment.dk_inv_A)
    scan = ds.scan_shape or (experiment.scan_shape if experiment is not None else None)
    return DataReport(path=p, reader=ds.reader.name, source=ds.source.description,
                      n_patterns=len(ds), raw_pattern_shape=ds.raw_pattern_shape,
                      dtype=str(ds.source.dtype), scan_shape=scan, metadata=items,
                      experiment=experiment, experiment_error=error,
                      disc=BrightFieldDisc((cy, cx), radius, predicted),
                      counts=CountStatistics(float(totals.mean()), _cv(totals), _cv(mean)))


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(float(value)) if isinstance(value, float) else str(value)


def template_config(report: DataReport, config_path: str | Path | None = None) -> str:
    """A ready-to-edit TOML configuration for the inspected file: its path (relative to
    ``config_path``'s folder when given), its reader, the Experiment from the metadata (with
    ``REQUIRED`` lines for what is missing) and recommended starting settings for counting
    data."""
    data_path = report.path.resolve()
    if config_path is not None:
        base = Path(config_path).resolve().parent
        try:
            data_path = data_path.relative_to(base)
        except ValueError:
            pass
    lines = [f"# ptyframe configuration for {report.path.name}, written by "
             "`ptyframe inspect --template`.",
             "# Check every value, then: ptyframe run THIS_FILE", "",
             "epochs = 50", "n_slices = 1", "",
             "[data]", f"path = {_toml(data_path.as_posix())}",
             f"reader = {{type = {_toml(report.reader)}}}",
             "# preprocessing = {bin = 1, pad = 0, flip_ky = false, flip_kx = false, "
             "transpose = false}", "",
             "[experiment]",
             "from_metadata = true   # the values below override the file's metadata"]
    exp = report.experiment
    if exp is not None:
        lines.append("# as read from the metadata:")
        for key, value in exp.to_config().items():
            if value is not None and value != {}:
                lines.append(f"# {key} = {_toml(value)}")
    else:
        lines.append(f"# REQUIRED: {report.experiment_error}")
        lines += ["# voltage_kV = ...", "# convergence_angle_mrad = ...",
                  "# detector_pixel_size_mrad = ...   # or detector_pixel_size_inv_A"]
    if report.scan_shape is None:
        lines.append("# scan_shape = [sy, sx]   # REQUIRED: the file does not give it")
    defocus = exp.defocus_A if exp is not None else 0.0
    lines += [f"# defocus_A = {defocus!r}   # Å, positive = underfocus (sets C10 = -defocus_A)",
              "",
              "[loss]", 'type = "ml"   # Poisson likelihood: the loss for counting data', "",
              "[refine]", "object = true", 'probe = {type = "from", start = 5}',
              "positions = false", "",
              "[device]", 'kind = "auto"   # "cpu" or "gpu"', "",
              "[output]", f"dir = {_toml(report.path.stem + '-recon')}",
              "checkpoint_every = 10", ""]
    return "\n".join(lines)


@attrs.frozen
class EpochEstimate:
    """What one epoch of a configuration costs, measured by running it (no output written).

    ``setup_s``: reading the data and building the starting values (wall, s); ``epoch_s`` /
    ``epoch_cpu_s``: the first epoch (wall / process CPU time, s); ``peak_bytes``: peak of
    the memory allocated while setting up and running it (CPU: Python/NumPy allocations
    traced by tracemalloc; GPU: CuPy's memory pool); ``epochs``: the configuration's count.
    """

    setup_s: float
    epoch_s: float
    epoch_cpu_s: float
    peak_bytes: int
    device: str
    epochs: int

    def format(self) -> str:
        total = self.setup_s + self.epoch_s * self.epochs
        return (f"setup {self.setup_s:.3g} s; first epoch {self.epoch_s:.3g} s wall, "
                f"{self.epoch_cpu_s:.3g} s CPU on {self.device}; peak memory "
                f"{self.peak_bytes / 2**20:.1f} MiB; {self.epochs} epochs ~ {total:.3g} s "
                f"(the first epoch repeated; later epochs may take more or fewer line-search "
                f"evaluations)")


def estimate_epoch(rec: Any, epochs: int) -> EpochEstimate:
    """Set up ``rec`` and run one epoch, measuring time and peak memory (see
    :class:`EpochEstimate`); ``rec`` should have no output folder."""
    import time
    import tracemalloc

    gpu = rec.device.kind == "gpu"
    pool = rec.device.xp.get_default_memory_pool() if gpu else None
    if not gpu:
        tracemalloc.start()
    try:
        t0 = time.perf_counter()
        rec.initialize()
        t1, c1 = time.perf_counter(), time.process_time()
        rec.run(1)
        rec.device.synchronize()
        t2, c2 = time.perf_counter(), time.process_time()
        peak = int(pool.total_bytes()) if gpu else int(tracemalloc.get_traced_memory()[1])
    finally:
        if not gpu:
            tracemalloc.stop()
    return EpochEstimate(setup_s=t1 - t0, epoch_s=t2 - t1, epoch_cpu_s=c2 - c1,
                         peak_bytes=peak, device=str(rec.device), epochs=epochs)
