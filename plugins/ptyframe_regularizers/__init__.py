"""First-party regularizers (penalty terms added to the loss).

Object: ``atv``, ``l1_phase``, ``l1_absorption``, ``mixed_variance``, ``missing_wedge``.
Probe: ``probe_fourier_mask``, ``probe_window``. Scan: ``position_smoothness``,
``tilt_smoothness``, ``deformation``.
"""

from ptyframe.registry.hookspecs import hookimpl


@hookimpl
def ptyframe_register_components() -> list[type]:
    from .object_regularizers import (
        AdaptiveTotalVariation,
        L1Absorption,
        L1Phase,
        MissingWedge,
        MixedVariance,
    )
    from .probe_regularizers import ProbeFourierMask, ProbeWindow
    from .scan_regularizers import AffineDeformation, PositionSmoothness, TiltSmoothness

    return [AdaptiveTotalVariation, L1Phase, L1Absorption, MixedVariance, MissingWedge,
            ProbeFourierMask, ProbeWindow, PositionSmoothness, TiltSmoothness,
            AffineDeformation]
