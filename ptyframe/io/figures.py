"""Figures of a run, from a :class:`~ptyframe.io.run_result.RunResult` (matplotlib only, Agg
canvas, no display and no pyplot state).

* ``object.png`` — total phase (rad, grey) and amplitude of the object, cropped to the scanned
  area, axes and scale bar in Å, colour limits from the 0.5–99.5 percentiles;
* ``probe.png`` — each probe mode in real space (amplitude and phase, Å axes) and in
  Fourier space (log intensity, mrad axes), with colour bars and each mode's share of the
  intensity;
* ``positions.png`` — initial and refined probe positions over the phase, the scanned area
  outlined, the displacement drawn magnified (the factor is in the title);
* ``loss.png`` — loss and normalised error (``loss_relative``) against epoch: log axes for
  positive values over a wide range, symlog for values of both signs, linear otherwise, so a
  negative loss is never a blank plot.

:func:`save_figures` writes all four; each ``*_figure`` function returns its
:class:`matplotlib.figure.Figure` for tests and notebooks.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ptyframe.io.run_result import RunResult

__all__ = ["save_figures", "object_figure", "probe_figure", "positions_figure",
           "loss_figure", "robust_limits", "new_figure", "image_panel", "scale_bar",
           "pixel_extent", "FIGURE_NAMES", "PHASE_CMAP", "CYCLIC_CMAP",
           "AMPLITUDE_CMAP"]

FIGURE_NAMES = ("object", "probe", "positions", "loss")
#: the object's (unwrapped, small) phase: grey, as on a microscope's screen
PHASE_CMAP = "gray"
#: a wrapped phase (-π..π): cyclic
CYCLIC_CMAP = "twilight"
#: amplitudes and intensities: perceptually uniform
AMPLITUDE_CMAP = "magma"
_DPI = 110


def new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def robust_limits(image: np.ndarray, low: float = 0.5, high: float = 99.5
                  ) -> tuple[float, float]:
    """Colour limits at the ``low``/``high`` percentiles of the finite values (a small span
    around the value when the image is flat)."""
    values = np.asarray(image, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, [low, high]))
    if not hi > lo:
        span = max(abs(lo) * 1e-3, 1e-6)
        lo, hi = lo - span, hi + span
    return lo, hi


def _nice_length(target: float) -> float:
    """1, 2 or 5 times a power of ten, at most ``target``."""
    if target <= 0 or not math.isfinite(target):
        return 1.0
    power = 10.0 ** math.floor(math.log10(target))
    for factor in (5.0, 2.0, 1.0):
        if factor * power <= target:
            return factor * power
    return power


def scale_bar(ax: Any, extent: tuple[float, float, float, float]) -> None:
    """A white bar of a round length (about a fifth of the width) with its length in Å,
    in the lower left corner of an image drawn with ``extent`` (left, right, bottom, top)."""
    from matplotlib.patches import Rectangle

    left, right, bottom, top = extent
    width, height = right - left, abs(bottom - top)
    length = _nice_length(width / 5)
    x0 = left + 0.05 * width
    y0 = max(bottom, top) - 0.07 * height
    ax.add_patch(Rectangle((x0, y0), length, 0.018 * height, color="white", ec="black",
                           lw=0.5, label="scale bar"))
    ax.text(x0 + length / 2, y0 - 0.015 * height, f"{length:g} Å", color="white", ha="center",
            va="bottom", fontsize=9, fontweight="bold")


def image_panel(fig: Any, ax: Any, image: np.ndarray, extent: tuple[float, float, float, float],
           cmap: str, title: str, label: str, limits: tuple[float, float] | None = None,
           norm: Any = None) -> Any:
    if norm is None:
        vmin, vmax = limits if limits is not None else robust_limits(image)
        im = ax.imshow(image, cmap=cmap, extent=extent, vmin=vmin, vmax=vmax,
                       interpolation="nearest")
    else:
        im = ax.imshow(image, cmap=cmap, extent=extent, norm=norm, interpolation="nearest")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label=label, shrink=0.85)
    return im


def pixel_extent(y: np.ndarray, x: np.ndarray, step: float) -> tuple[float, float, float, float]:
    """imshow extent (left, right, bottom, top) of pixel centres ``y``, ``x``."""
    return (x[0] - step / 2, x[-1] + step / 2, y[-1] + step / 2, y[0] - step / 2)


def object_figure(result: RunResult) -> Any:
    """Phase and amplitude of the object, cropped to the scanned area."""
    crop = result.scanned_area()
    y, x = result.axes_A(crop)
    extent = pixel_extent(y, x, result.pixel_size_A)
    phase = result.phase[crop]
    amplitude = result.amplitude[crop]
    aspect = (extent[1] - extent[0]) / max(extent[2] - extent[3], 1e-9)
    fig = new_figure(2 * 4.2 * min(max(aspect, 0.6), 1.6) + 1.0, 4.2)
    axes = fig.subplots(1, 2)
    n_slices = result.object.shape[0]
    summed = f" (sum of {n_slices} slices)" if n_slices > 1 else ""
    image_panel(fig, axes[0], phase, extent, PHASE_CMAP, f"object phase{summed}", "phase (rad)")
    image_panel(fig, axes[1], amplitude, extent, AMPLITUDE_CMAP, f"object amplitude{summed}",
           "amplitude")
    for ax in axes:
        ax.set_xlabel("x (Å)")
        ax.set_ylabel("y (Å)")
        scale_bar(ax, extent)
    epoch = f", epoch {result.epoch}" if result.epoch is not None else ""
    fig.suptitle(f"scanned area {y[-1] - y[0]:.3g} × {x[-1] - x[0]:.3g} Å{epoch}", fontsize=10)
    return fig


def probe_figure(result: RunResult) -> Any:
    """Every probe mode in real space and in Fourier space, with its intensity share."""
    from matplotlib.colors import LogNorm

    probe = result.probe
    if probe.ndim == 4:  # one probe per sub-scan: show the first
        probe = probe[0]
    n_modes, ny, nx = probe.shape
    power = (np.abs(probe) ** 2).sum(axis=(-2, -1))
    share = power / power.sum() if power.sum() > 0 else np.zeros_like(power)
    step = result.pixel_size_A
    extent_r = (-(nx // 2 + 0.5) * step, (nx - nx // 2 - 0.5) * step,
                (ny - ny // 2 - 0.5) * step, -(ny // 2 + 0.5) * step)
    spectra = np.fft.fftshift(np.fft.fft2(probe, norm="ortho"), axes=(-2, -1))
    dk_y, dk_x = 1.0 / (ny * step), 1.0 / (nx * step)
    if result.wavelength_A is not None:
        scale, unit = 1e3 * result.wavelength_A, "mrad"
    else:
        scale, unit = 1.0, "1/Å"
    extent_k = (-(nx // 2 + 0.5) * dk_x * scale, (nx - nx // 2 - 0.5) * dk_x * scale,
                (ny - ny // 2 - 0.5) * dk_y * scale, -(ny // 2 + 0.5) * dk_y * scale)
    fig = new_figure(max(3.6 * n_modes + 0.6, 4.6), 9.8)
    axes = np.asarray(fig.subplots(3, n_modes, squeeze=False))
    for m in range(n_modes):
        amplitude = np.abs(probe[m])
        # the phase where the probe carries intensity (5 % of the peak amplitude), blank
        # elsewhere; cyclic colour map for a wrapped phase
        phase = np.where(amplitude > 0.05 * amplitude.max(), np.angle(probe[m]), np.nan)
        image_panel(fig, axes[2, m], phase, extent_r, CYCLIC_CMAP, f"mode {m}: phase",
                    "phase (rad)", limits=(-np.pi, np.pi))
        axes[2, m].set_xlabel("x (Å)")
        axes[2, m].set_ylabel("y (Å)")
        image_panel(fig, axes[0, m], np.abs(probe[m]), extent_r, AMPLITUDE_CMAP,
               f"mode {m}: {100 * share[m]:.1f} % of intensity", "|P| (amplitude)",
               limits=(0.0, float(np.abs(probe[m]).max()) or 1.0))
        axes[0, m].set_xlabel("x (Å)")
        axes[0, m].set_ylabel("y (Å)")
        scale_bar(axes[0, m], extent_r)
        intensity = np.abs(spectra[m]) ** 2
        top = float(intensity.max()) or 1.0
        norm = LogNorm(vmin=top * 1e-4, vmax=top)
        image_panel(fig, axes[1, m], np.maximum(intensity, top * 1e-4), extent_k, AMPLITUDE_CMAP,
               f"mode {m}: Fourier space", "|P(k)|² (log)", norm=norm)
        axes[1, m].set_xlabel(f"kx ({unit})")
        axes[1, m].set_ylabel(f"ky ({unit})")
    fig.suptitle("probe: amplitude, diffraction plane, phase", fontsize=10)
    return fig


def _magnification(initial: np.ndarray, displacement: np.ndarray) -> float:
    """Factor that draws the 95th-percentile displacement at about 80 % of the scan step."""
    size = np.hypot(displacement[:, 0], displacement[:, 1])
    largest = float(np.percentile(size, 95)) if size.size else 0.0
    if largest <= 0 or initial.shape[0] < 2:
        return 1.0
    from scipy.spatial import cKDTree

    distances, _ = cKDTree(initial).query(initial, k=2)
    step = float(np.median(distances[:, 1]))
    if step <= 0:
        return 1.0
    return max(1.0, _nice_length(0.8 * step / largest))


def positions_figure(result: RunResult) -> Any:
    """Initial and refined probe positions over the phase, displacement magnified."""
    from matplotlib.patches import Rectangle

    fig = new_figure(6.4, 5.6)
    ax = fig.subplots()
    y, x = result.axes_A()
    extent = pixel_extent(y, x, result.pixel_size_A)
    crop = result.scanned_area()
    im = ax.imshow(result.phase, cmap=PHASE_CMAP, extent=extent,
                   vmin=robust_limits(result.phase[crop])[0],
                   vmax=robust_limits(result.phase[crop])[1], interpolation="nearest")
    fig.colorbar(im, ax=ax, label="phase (rad)", shrink=0.85)
    cy, cx = result.axes_A(crop)
    ax.add_patch(Rectangle((cx[0], cy[0]), cx[-1] - cx[0], cy[-1] - cy[0], fill=False,
                           ec="tab:orange", lw=1.2, ls="--", label="scanned area"))
    refined = result.positions_A
    initial = result.initial_positions_A
    if initial is not None and initial.shape == refined.shape:
        shift = refined - initial
        factor = _magnification(initial, shift)
        size = np.hypot(shift[:, 0], shift[:, 1])
        ax.plot(initial[:, 1], initial[:, 0], "o", color="tab:cyan", ms=2.5, label="initial")
        if float(size.max(initial=0.0)) > 0:
            ax.quiver(initial[:, 1], initial[:, 0], factor * shift[:, 1], factor * shift[:, 0],
                      color="tab:red", angles="xy", scale_units="xy", scale=1.0, width=0.004,
                      label=f"refined − initial (× {factor:g})")
            title = (f"positions: displacement × {factor:g} (rms {np.sqrt(np.mean(size**2)):.3g}"
                     f" Å, max {size.max():.3g} Å)")
        else:
            title = "positions: not refined (no displacement)"
    else:
        ax.plot(refined[:, 1], refined[:, 0], ".", color="tab:red", ms=3, label="refined")
        title = "positions (initial positions not recorded)"
    # the scanned area and half a probe window around it
    pad = 0.5 * result.pixel_size_A * max(result.window)
    ax.set_xlim(max(extent[0], cx[0] - pad), min(extent[1], cx[-1] + pad))
    ax.set_ylim(min(extent[2], cy[-1] + pad), max(extent[3], cy[0] - pad))
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("y (Å)")
    ax.set_title(title, fontsize=10)
    fig.legend(loc="outside lower center", ncols=3, fontsize=8)
    return fig


def _curve(ax: Any, epochs: np.ndarray, values: np.ndarray, label: str, ylabel: str) -> None:
    keep = np.isfinite(values)
    epochs, values = epochs[keep], values[keep]
    ax.plot(epochs, values, "o-" if values.size < 30 else "-", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_yscale(_scale_of(values))
    if ax.get_yscale() == "symlog":
        scale = float(np.max(np.abs(values))) or 1.0
        ax.set_yscale("symlog", linthresh=max(scale * 1e-3, 1e-12))
    ax.grid(True, which="both", alpha=0.3)


def _scale_of(values: np.ndarray) -> str:
    """``log`` for positive values spanning more than a factor 20, ``symlog`` for values of
    both signs, ``linear`` otherwise (a negative loss, or a narrow range, on a log axis
    would show no ticks or nothing at all)."""
    if values.size == 0:
        return "linear"
    if np.all(values > 0):
        return "log" if values.max() > 20 * values.min() else "linear"
    if np.any(values > 0) and np.any(values < 0):
        return "symlog"
    return "linear"


def loss_figure(result: RunResult) -> Any:
    """Loss and normalised error against epoch (log, symlog or linear: :func:`_scale_of`)."""
    fig = new_figure(9.0, 3.6)
    axes = fig.subplots(1, 2)
    loss = result.loss
    if "epoch" in loss and "loss" in loss and len(loss["epoch"]):
        epochs = np.asarray(loss["epoch"], dtype=float)
        _curve(axes[0], epochs, np.asarray(loss["loss"], dtype=float), "loss", "loss")
        if "data_loss" in loss and "regularization" in loss and np.any(
                np.nan_to_num(np.asarray(loss["regularization"], dtype=float)) != 0):
            _curve(axes[0], epochs, np.asarray(loss["data_loss"], dtype=float), "data term",
                   "loss")
            axes[0].legend(fontsize=8)
        axes[0].set_title("loss", fontsize=10)
        if "loss_relative" in loss:
            _curve(axes[1], epochs, np.asarray(loss["loss_relative"], dtype=float),
                   "loss_relative", "loss_relative")
        axes[1].set_title("normalised error (1 + (L − L₁)/|L₁|)", fontsize=10)
    else:
        for ax in axes:
            ax.text(0.5, 0.5, "no loss log", ha="center", va="center", transform=ax.transAxes)
            ax.set_xlabel("epoch")
    return fig


def save_figures(result: RunResult, folder: str | os.PathLike, suffix: str = "",
                 names: tuple[str, ...] = FIGURE_NAMES) -> list[Path]:
    """Write the figures ``names`` of ``result`` as ``<folder>/<name><suffix>.png``."""
    makers = {"object": object_figure, "probe": probe_figure,
              "positions": positions_figure, "loss": loss_figure}
    unknown = set(names) - set(makers)
    if unknown:
        raise ValueError(f"figures: unknown names {sorted(unknown)}; expected some of "
                         f"{list(makers)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        fig = makers[name](result)
        path = folder / f"{name}{suffix}.png"
        fig.savefig(path, dpi=_DPI)
        written.append(path)
    return written
