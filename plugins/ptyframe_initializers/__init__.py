"""First-party initializers: probes, objects and scan positions."""

from ptyframe.registry.hookspecs import hookimpl


@hookimpl
def ptyframe_register_components() -> list[type]:
    from .objects import VacuumObject
    from .positions import PositionsFromFile, ScanGridPositions
    from .probes import ApertureProbe, BinaryApertureProbe, MeanPatternProbe, ProbeFromFile

    return [ApertureProbe, MeanPatternProbe, BinaryApertureProbe, ProbeFromFile, VacuumObject,
            ScanGridPositions, PositionsFromFile]
