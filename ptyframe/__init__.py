"""ptyframe: plugin-based phase retrieval for TEM/STEM.

The core holds abstractions (components, device, data, experiment, reconstruction); concrete
methods are plugins found through the registry (entry-point group ``ptyframe``).
"""

from .data import DataError, Dataset, Preprocessing
from .device import Device
from .experiment import Experiment, ReconstructionGrid
from .hookspecs import hookimpl
from .metadata import load_experiment, positions_from_metadata
from .plugins import load_registry
from .reconstruction import EpochReport, Reconstruction, ReconstructionResult
from .schedules import Constant, EveryN, FromEpoch, Linear, Piecewise, Schedule, Until

__version__ = "0.1.0"

__all__ = [
    "Constant", "DataError", "Dataset", "Device", "EpochReport", "EveryN", "Experiment",
    "FromEpoch", "Linear", "Piecewise", "Preprocessing", "Reconstruction",
    "ReconstructionGrid", "ReconstructionResult", "Schedule", "Until", "hookimpl",
    "load_experiment", "load_registry", "positions_from_metadata",
]
