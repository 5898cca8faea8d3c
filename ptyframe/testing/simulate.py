"""ptyframe's own simulator: the forward model run once on a synthetic specimen.

Used to make test and demo data with known ground truth. The specimen is a set of Gaussian
"atoms" (random positions with a minimum spacing) whose projected phase per slice is known
exactly on the reconstruction grid.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import attrs
import numpy as np
from scipy import ndimage

from ptyframe.components import Propagator
from ptyframe.core.device import Device
from ptyframe.core.experiment import Experiment, ReconstructionGrid
from ptyframe.core.physics import aberration_function, aperture, spatial_frequencies
from ptyframe.engine.model import PtychographyModel

__all__ = ["SimulatedData", "simulate_dataset", "random_atoms_phase", "scan_positions",
           "rotate_patterns"]


@attrs.define
class SimulatedData:
    """A simulated 4D-STEM dataset and its truth.

    ``patterns``: (N, n, n) float32 centred patterns (zero frequency at pixel (n/2, n/2)),
    counts when ``dose_per_pattern`` was given (Poisson noise) else expected counts.
    ``positions_A``: true probe positions (N, 2); ``nominal_positions_A``: before jitter.
    ``object``: true transmission (n_slices, n_modes, Y, X) on ``grid``; ``phase``: its
    summed phase (Y, X); ``probe``: (n_modes, n, n).
    """

    patterns: np.ndarray
    experiment: Experiment
    grid: ReconstructionGrid
    positions_A: np.ndarray
    nominal_positions_A: np.ndarray
    object: np.ndarray
    probe: np.ndarray
    extra: dict[str, np.ndarray] = attrs.field(factory=dict)

    @property
    def phase(self) -> np.ndarray:
        return np.angle(self.object[:, 0]).sum(axis=0)


def scan_positions(scan_shape: tuple[int, int], step_A: float, origin_A: tuple[float, float]
                   ) -> np.ndarray:
    iy, ix = np.meshgrid(np.arange(scan_shape[0]), np.arange(scan_shape[1]), indexing="ij")
    return np.stack([origin_A[0] + iy.ravel() * step_A, origin_A[1] + ix.ravel() * step_A], 1)


def random_atoms_phase(shape: tuple[int, int], pixel_size_A: float, rng: np.random.Generator,
                       density_per_A2: float = 0.08, sigma_A: float = 0.35,
                       peak_rad: float = 0.4, min_distance_A: float = 1.4) -> np.ndarray:
    """Phase map (rad) of Gaussian atoms at random, well-separated positions."""
    ny, nx = shape
    area = ny * nx * pixel_size_A**2
    n_target = int(density_per_A2 * area)
    pts: list[np.ndarray] = []
    tries = 0
    while len(pts) < n_target and tries < 50 * n_target:
        tries += 1
        p = rng.random(2) * np.array(shape) * pixel_size_A
        if all(np.hypot(*(p - q)) >= min_distance_A for q in pts):
            pts.append(p)
    y = np.arange(ny)[:, None] * pixel_size_A
    x = np.arange(nx)[None, :] * pixel_size_A
    phase = np.zeros(shape)
    for (py, px), w in zip(pts, 0.5 + rng.random(len(pts)), strict=True):
        phase += w * peak_rad * np.exp(-((y - py) ** 2 + (x - px) ** 2) / (2 * sigma_A**2))
    return phase


@attrs.define(kw_only=True)
class ScanGeometry:
    """Detector of ``window`` pixels with dk = 1 / (window * pixel_size_A) (Å);
    ``voltage_kV``; ``scan_shape`` raster with ``step_A`` (Å) and Gaussian
    ``position_jitter_A``; ``margin_px`` of object around the scan."""

    window: int = 32
    voltage_kV: float = 200.0
    pixel_size_A: float = 0.25
    scan_shape: tuple[int, int] = (10, 10)
    step_A: float = 0.6
    position_jitter_A: float = 0.0
    margin_px: int = 8


@attrs.define(kw_only=True)
class Illumination:
    """Probe from the aperture (``convergence_angle_mrad``) and ``defocus_A`` (positive =
    underfocus, C10 = -defocus); ``n_probe_modes`` with ``probe_mode_power`` in the extra
    modes; ``dose_per_pattern``: electrons per pattern with Poisson noise (None: noise-free
    probabilities)."""

    convergence_angle_mrad: float = 25.0
    defocus_A: float = 50.0
    n_probe_modes: int = 1
    probe_mode_power: float = 0.2
    dose_per_pattern: float | None = None


@attrs.define(kw_only=True)
class Specimen:
    """``n_slices`` of random atoms (``phase_scale``, ``absorption``), ``n_object_modes``
    incoherent states (each its own atoms; the model averages them), random ``seed``."""

    n_slices: int = 1
    n_object_modes: int = 1
    absorption: float = 0.05
    phase_scale: float = 1.0
    seed: int = 0


@attrs.define(kw_only=True)
class ExtraBlocks:
    """The model's other blocks, applied before the noise: ``tilts`` (1 or N, 6) rad with
    ``tilt_mode``, ``beam_current`` (N,), ``background`` (intensity per pixel, centred, or a
    number), ``aberrations_array`` (n_sets, n_coefficients) Å with ``aberration_marker``
    (N,)."""

    tilts: np.ndarray | None = None
    tilt_mode: int = 0
    beam_current: np.ndarray | None = None
    background: np.ndarray | float | None = None
    aberrations_array: np.ndarray | None = None
    aberration_marker: np.ndarray | None = None


_GROUPS = {"geometry": ScanGeometry, "illumination": Illumination, "specimen": Specimen,
           "blocks": ExtraBlocks}


@attrs.define(kw_only=True)
class SimulationSettings:
    """What :func:`simulate_dataset` simulates, in four groups; :meth:`from_keywords` takes
    any of their fields by name."""

    geometry: ScanGeometry = attrs.field(factory=ScanGeometry)
    illumination: Illumination = attrs.field(factory=Illumination)
    specimen: Specimen = attrs.field(factory=Specimen)
    blocks: ExtraBlocks = attrs.field(factory=ExtraBlocks)

    @classmethod
    def from_keywords(cls, **keywords: Any) -> SimulationSettings:
        grouped: dict[str, dict[str, Any]] = {name: {} for name in _GROUPS}
        owner = {f.name: name for name, group in _GROUPS.items() for f in attrs.fields(group)}
        unknown = sorted(set(keywords) - set(owner))
        if unknown:
            raise TypeError(f"simulate_dataset: unknown settings {unknown}; expected some of "
                            f"{sorted(owner)}")
        for key, value in keywords.items():
            grouped[owner[key]][key] = value
        return cls(**{name: _GROUPS[name](**values) for name, values in grouped.items()})


def simulate_dataset(propagator: Propagator, *, device: Device | None = None,
                     settings: SimulationSettings | None = None, **keywords: Any
                     ) -> SimulatedData:
    """Simulate far-field patterns with the project's own forward model.

    ``propagator`` supplies the multislice physics (e.g. the registry's ``multislice`` with
    its slice thickness); ``settings`` (or its fields as keywords, see
    :class:`SimulationSettings`) what is simulated; ``device`` where (default: CPU, double).
    Returns :class:`SimulatedData` (``extra`` holds the optional blocks).
    """
    if settings is not None and keywords:
        raise TypeError("simulate_dataset: give settings or keywords, not both")
    cfg = settings if settings is not None else SimulationSettings.from_keywords(**keywords)
    g, ill, sp, s = cfg.geometry, cfg.illumination, cfg.specimen, cfg.blocks
    window, pixel_size_A, seed = g.window, g.pixel_size_A, sp.seed
    scan_shape, step_A, n_slices = g.scan_shape, g.step_A, sp.n_slices
    n_probe_modes, n_object_modes = ill.n_probe_modes, sp.n_object_modes
    convergence_angle_mrad, dose_per_pattern = ill.convergence_angle_mrad, ill.dose_per_pattern
    position_jitter_A, tilts, beam_current = g.position_jitter_A, s.tilts, s.beam_current
    background, aberrations_array = s.background, s.aberrations_array
    rng = np.random.default_rng(seed)
    device = device or Device("cpu", "double")
    dk = 1.0 / (window * pixel_size_A)
    experiment = Experiment(voltage_kV=g.voltage_kV, convergence_angle_mrad=convergence_angle_mrad,
                            detector_pixel_size_inv_A=dk, aberrations={"C10": -ill.defocus_A},
                            scan_shape=scan_shape, scan_step_A=step_A)
    nominal = scan_positions(scan_shape, step_A, (0.0, 0.0))
    jitter = rng.normal(0.0, position_jitter_A, nominal.shape) if position_jitter_A else 0.0
    positions = nominal + jitter
    grid = ReconstructionGrid.covering(np.concatenate([nominal, positions]), (window, window),
                                       dk, margin_px=g.margin_px)
    obj = np.empty((n_slices, n_object_modes, *grid.object_shape), dtype=complex)
    for s_ in range(n_slices):
        for k in range(n_object_modes):
            phase = sp.phase_scale * random_atoms_phase(grid.object_shape, pixel_size_A, rng)
            obj[s_, k] = np.exp((1j - sp.absorption) * phase)
    lam = experiment.wavelength_A
    qy, qx = spatial_frequencies((window, window), pixel_size_A)
    spec = aperture(np.hypot(qy, qx), lam, convergence_angle_mrad, 1.0, dk) * np.exp(
        -1j * aberration_function(qy, qx, lam, experiment.aberrations))
    probe = np.fft.fftshift(np.fft.ifft2(spec))
    if n_probe_modes > 1:
        # partially coherent illumination: modes from small random defocus/shift spread
        modes = [probe]
        for _ in range(n_probe_modes - 1):
            df = rng.normal(0, 30.0)
            shift = rng.normal(0, 0.3, 2)
            extra = np.exp(-1j * np.pi * lam * df * (qy**2 + qx**2)
                           - 2j * np.pi * (qy * shift[0] + qx * shift[1]))
            modes.append(np.fft.fftshift(np.fft.ifft2(spec * extra)))
        probe = np.stack(modes)
        weights = np.array([1 - ill.probe_mode_power] + [ill.probe_mode_power / (n_probe_modes - 1)]
                           * (n_probe_modes - 1))
    else:
        probe = probe[None]
        weights = np.ones(1)
    scale = float(dose_per_pattern) if dose_per_pattern else 1.0
    probe = probe / np.sqrt(np.sum(np.abs(probe) ** 2, axis=(1, 2), keepdims=True))
    probe *= np.sqrt(weights * scale)[:, None, None]
    n = positions.shape[0]
    model = PtychographyModel.from_geometry(
        propagator, None, device, (window, window), pixel_size_A, lam,
                              n_slices, None, tilt_mode=s.tilt_mode,
                              aberration_marker=s.aberration_marker, n_measurements=n)
    params = {"object": device.complex(obj), "probe": device.complex(probe),
              "positions": device.real(grid.positions_to_pixels(positions))}
    extra: dict[str, np.ndarray] = {}
    if tilts is not None:
        extra["tilts"] = np.asarray(tilts, dtype=float)
    if beam_current is not None:
        extra["beam_current"] = np.asarray(beam_current, dtype=float)
    if aberrations_array is not None:
        extra["aberrations"] = np.atleast_2d(np.asarray(aberrations_array, dtype=float))
    for key, value in extra.items():
        params[key] = device.real(value)
    if background is not None:
        level = np.broadcast_to(np.asarray(background, dtype=float), (window, window))
        extra["background"] = np.array(level)
        params["static_background"] = device.real(np.sqrt(np.fft.ifftshift(level)))
    model.check_blocks(params)
    expected = np.fft.fftshift(device.to_host(model.intensities(params)), axes=(-2, -1))
    if dose_per_pattern:
        patterns = rng.poisson(np.clip(expected, 0, None)).astype(np.float32)
    else:
        patterns = expected.astype(np.float32)
    return SimulatedData(patterns=patterns, experiment=experiment, grid=grid,
                         positions_A=positions, nominal_positions_A=nominal, object=obj,
                         probe=probe, extra=extra)


def rotate_patterns(patterns: np.ndarray, angle_deg: float) -> np.ndarray:
    """Patterns (n, N, N) whose content at k moved to R(angle) k about pixel (N/2, N/2):
    ``x' = cos x - sin y``, ``y' = sin x + cos y`` in (row, column) = (y, x) pixels (bilinear,
    float32); simulates a scan-detector rotation for direct-method tests."""
    n = patterns.shape[-1]
    c = n // 2
    t = math.radians(angle_deg)
    y, x = np.meshgrid(np.arange(n) - c, np.arange(n) - c, indexing="ij")
    src_x = math.cos(t) * x + math.sin(t) * y
    src_y = -math.sin(t) * x + math.cos(t) * y
    return np.stack([ndimage.map_coordinates(p, [src_y + c, src_x + c], order=1)
                     for p in patterns]).astype(np.float32)


def write_scan_file(sim: SimulatedData, path: str | Path) -> Path:
    """Write simulated patterns as an HDF5 scan file (dataset ``data``) with the metadata
    attributes ptyframe reads (kV, mrad, 1/Å, Å), for tests and examples of file-based runs."""
    import h5py

    path = Path(path)
    exp = sim.experiment
    with h5py.File(path, "w") as fh:
        fh["data"] = sim.patterns
        fh.attrs["acc_voltage_kV"] = exp.voltage_kV
        fh.attrs["convergence_semiangle_mrad"] = exp.convergence_angle_mrad
        fh.attrs["detector_pixel_size_inv_A"] = exp.dk_inv_A
        fh.attrs["defocus_A"] = exp.defocus_A
        fh.attrs["scan_shape"] = list(exp.scan_shape)
        step = exp.scan_step_A
        fh.attrs["scan_step_A"] = list(step) if isinstance(step, tuple) else float(step)
    return path
