"""First-party data-file readers of ptyframe: HDF5 (any suffix), .npy, EMD 1.0 / py4DSTEM,
Dectris/arina master files, and the rosettasciio formats of the ``formats`` extra (Merlin
.mib, Digital Micrograph .dm3/.dm4, EMPAD, .mrc, HyperSpy .hspy/.zspy, Velox .emd),
registered exactly as a third-party plugin would be."""

from ptyframe.registry.hookspecs import hookimpl


@hookimpl
def ptyframe_register_components():
    from .dectris import DectrisReader
    from .emd import EMDReader
    from .hdf5 import HDF5Reader
    from .npy import NpyReader
    from .rosetta import ROSETTA_READERS

    return [HDF5Reader, NpyReader, EMDReader, DectrisReader, *ROSETTA_READERS]
