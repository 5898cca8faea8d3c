"""First-party constraints ("by hand" projections between optimizer steps).

Object: gaussian_filter, charge_flip, fancy_sigma, band_limit, restart_from_vacuum,
phase_only_object. Probe: orthogonal_probe_modes, probe_fourier_projection, probe_phase_only,
probe_amplitude_only.
"""

from ptyframe.registry.hookspecs import hookimpl


@hookimpl
def ptyframe_register_components() -> list[type]:
    from .object_constraints import (
        BandLimit,
        ChargeFlip,
        FancySigma,
        GaussianFilter,
        PhaseOnlyObject,
        RestartFromVacuum,
    )
    from .probe_constraints import (
        OrthogonalProbeModes,
        ProbeAmplitudeOnly,
        ProbeFourierProjection,
        ProbePhaseOnly,
    )

    return [GaussianFilter, ChargeFlip, FancySigma, BandLimit, RestartFromVacuum,
            PhaseOnlyObject, OrthogonalProbeModes, ProbeFourierProjection, ProbePhaseOnly,
            ProbeAmplitudeOnly]
