"""Cramér–Rao bound of the scan positions of a validation dataset, from its ground truth.

    python benchmarks/position_bound.py [sto_rot_jitter] [--data-dir ../shared/data]
                                        [--prior-A 0.1]

How precisely can the patterns of a dataset tell where the probe was, even with the object and
the probe known exactly? For each scan point this computes the Fisher information of the
Poisson counts about the probe position r = (y, x),

    F(r) = sum_k  grad_r lambda_k  grad_r lambda_k^T / lambda_k,
    lambda_k = N_e |FFT_ortho(P(x - r) O(x))|^2,

from the file's ground truth alone (``gt_transmission_phase`` as a single projected slice,
``gt_probe`` shifted by a Fourier phase ramp, ``electrons_per_pattern``), with derivatives by
central differences of 0.002 Å. It prints the bound per axis and as the rms distance
``sqrt(trace F^-1)`` (the figure ``position_error_A`` reports), and, with ``--prior-A``, the
Bayesian bound of an estimator that knows the jitter is Gaussian with that rms per axis
(F + I / s^2). An unbiased position estimate can do no better, whatever the algorithm; a
reconstruction that must also find the object and the probe does worse. The projected-phase
model's mismatch with the multislice data is reported as sum |model - data_noiseless| /
sum data_noiseless (a few per cent on thin specimens).

This model is numpy only and independent of ptyframe's forward model, on purpose: the bound is
a property of the data, not of the code being judged.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
STEP_A = 0.002


class ProjectedModel:
    """Expected counts of a pattern for a probe position, from a file's ground truth."""

    def __init__(self, fh: h5py.File) -> None:
        self.transmission = np.exp(1j * fh["gt_transmission_phase"][()].astype(float))
        probe = fh["gt_probe"][()].astype(complex)
        self.n = probe.shape[0]
        self.probe_spectrum = np.fft.fft2(probe)
        freq = np.fft.fftfreq(self.n)
        self.ky, self.kx = np.meshgrid(freq, freq, indexing="ij")
        self.pixel_A = float(fh.attrs["recon_pixel_size_A"])
        self.origin_A = np.asarray(fh.attrs["gt_origin_yx_A"], dtype=float)
        self.electrons = float(fh.attrs["electrons_per_pattern"])

    def counts(self, r_A: np.ndarray, corner: np.ndarray) -> np.ndarray:
        """Expected counts (ky, kx), fftshifted, for the probe centre at ``r_A`` (Å) with the
        object window's first pixel at ``corner`` (fixed across a finite difference)."""
        frac = (r_A - self.origin_A) / self.pixel_A - corner - self.n // 2
        ramp = np.exp(-2j * np.pi * (self.ky * frac[0] + self.kx * frac[1]))
        probe = np.fft.ifft2(self.probe_spectrum * ramp)
        y0, x0 = corner
        wave = probe * self.transmission[y0:y0 + self.n, x0:x0 + self.n]
        return np.fft.fftshift(np.abs(np.fft.fft2(wave, norm="ortho")) ** 2) * self.electrons

    def corner(self, r_A: np.ndarray) -> np.ndarray | None:
        """Object-window corner (pixels) for a probe centre, None when the window leaves the
        ground-truth grid."""
        c = np.floor((r_A - self.origin_A) / self.pixel_A).astype(int) - self.n // 2
        if (c < 0).any() or c[0] + self.n > self.transmission.shape[0] or \
                c[1] + self.n > self.transmission.shape[1]:
            return None
        return c


def fisher_information(model: ProjectedModel, r_A: np.ndarray, corner: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(2, 2) Fisher information (1/Å²) of one pattern about its position, and the counts."""
    counts = model.counts(r_A, corner)
    grads = []
    for delta in (np.array([STEP_A, 0.0]), np.array([0.0, STEP_A])):
        plus = model.counts(r_A + delta, corner)
        minus = model.counts(r_A - delta, corner)
        grads.append(((plus - minus) / (2 * STEP_A)).ravel())
    g = np.array(grads)
    return (g / np.maximum(counts.ravel(), 1e-12)) @ g.T, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", default="sto_rot_jitter")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--prior-A", type=float, default=None,
                        help="rms (Å, per axis) of a Gaussian jitter prior for the Bayesian "
                             "bound (default: the file's position_jitter_A when present)")
    args = parser.parse_args()
    path = args.data_dir / f"{args.name}.h5"
    if not path.is_file():
        raise SystemExit(f"name: expected a dataset in {args.data_dir}, found no {path.name}")
    with h5py.File(path, "r") as fh:
        model = ProjectedModel(fh)
        positions = fh["positions_A"][()]
        noiseless = fh["data_noiseless"][()]
        prior = args.prior_A
        if prior is None and "position_jitter_A" in fh.attrs:
            prior = float(fh.attrs["position_jitter_A"]) or None
    if prior is not None and prior <= 0:
        raise SystemExit(f"--prior-A: expected a positive rms in Å, found {prior}")
    covariances, bayes, mismatch = [], [], []
    for n, r in enumerate(positions):
        corner = model.corner(r)
        if corner is None:
            continue
        info, counts = fisher_information(model, r, corner)
        covariances.append(np.linalg.inv(info))
        if prior is not None:
            bayes.append(np.linalg.inv(info + np.eye(2) / prior ** 2))
        mismatch.append(np.abs(counts / model.electrons - noiseless[n]).sum()
                        / noiseless[n].sum())
    cov = np.array(covariances)
    per_axis = np.sqrt(np.mean(cov[:, [0, 1], [0, 1]]))
    distance = np.sqrt(np.mean(cov[:, 0, 0] + cov[:, 1, 1]))
    print(f"{args.name}: {len(cov)} of {len(positions)} scan points inside the ground truth, "
          f"{model.electrons:.0f} electrons per pattern")
    print(f"  Cramér–Rao bound, object and probe known: {per_axis:.4f} Å rms per axis, "
          f"{distance:.4f} Å rms distance")
    if bayes:
        b = np.array(bayes)
        print(f"  with a Gaussian jitter prior of {prior:g} Å per axis: "
              f"{np.sqrt(np.mean(b[:, 0, 0] + b[:, 1, 1])):.4f} Å rms distance")
    print(f"  projected-phase model against data_noiseless: median sum|diff|/sum = "
          f"{np.median(mismatch):.3f}")


if __name__ == "__main__":
    main()
