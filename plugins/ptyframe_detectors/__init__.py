"""First-party detectors: far field (with padding and upsampling) and near field."""

from ptyframe.registry.hookspecs import hookimpl


@hookimpl
def ptyframe_register_components() -> list[type]:
    from .far_field import FarFieldDetector
    from .near_field import NearFieldDetector

    return [FarFieldDetector, NearFieldDetector]
