"""ptyframe: plugin-based phase retrieval for TEM/STEM.

The core holds abstractions (components, device, data, experiment, reconstruction); concrete
methods are plugins found through the registry (entry-point group ``ptyframe``).
"""

from ptyframe.core.device import Device
from ptyframe.core.experiment import Experiment, ReconstructionGrid
from ptyframe.core.schedules import Constant, EveryN, FromEpoch, Linear, Piecewise, Schedule, Until
from ptyframe.engine.reconstruction import EpochReport, Reconstruction, ReconstructionResult
from ptyframe.io.data import DataError, Dataset, Preprocessing
from ptyframe.io.metadata import load_experiment, positions_from_metadata
from ptyframe.io.run_result import RunResult, open_result
from ptyframe.registry.hookspecs import hookimpl
from ptyframe.registry.loader import load_registry

__version__ = "0.1.0"

__all__ = [
    "Constant", "DataError", "Dataset", "Device", "EpochReport", "EveryN", "Experiment",
    "FromEpoch", "Linear", "Piecewise", "Preprocessing", "Reconstruction",
    "ReconstructionGrid", "ReconstructionResult", "RunResult", "Schedule", "Until", "hookimpl",
    "load_experiment", "load_registry", "open_result", "positions_from_metadata",
]
