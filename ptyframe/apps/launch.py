"""The one-node shortcut ``ptyframe run config.toml --gpus 0,1,2,3``.

It starts ``mpiexec -n <number of GPUs>`` on ``python -m ptyframe run config.toml`` with the
GPU list in the environment variable :data:`GPUS_VARIABLE`; each rank then uses the GPU of the
list at its rank on the node (:func:`gpu_for_rank`). One GPU needs no launcher: the run stays
in this process on that GPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["GPUS_VARIABLE", "parse_gpus", "gpus_from_environment", "gpu_for_rank",
           "find_mpiexec", "launch_command", "launch"]

#: environment variable carrying the GPU list to the ranks, e.g. "0,1,2,3"
GPUS_VARIABLE = "PTYFRAME_GPUS"


def parse_gpus(text: str, what: str = "--gpus") -> list[int]:
    """GPU ids from "0,1,2,3": non-empty, integers >= 0, no repeats; ValueError otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(not p.isdigit() for p in parts):
        raise ValueError(f"{what}: expected comma-separated GPU ids >= 0 such as 0,1,2,3, "
                         f"found {text!r}")
    ids = [int(p) for p in parts]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{what}: expected each GPU once, found {text!r}")
    return ids


def gpus_from_environment(environ: Mapping[str, str] | None = None) -> list[int] | None:
    """The GPU list a ``--gpus`` launch gave this process (None when not launched so)."""
    value = (os.environ if environ is None else environ).get(GPUS_VARIABLE)
    return None if value is None else parse_gpus(value, what=GPUS_VARIABLE)


def gpu_for_rank(gpus: Sequence[int], local_rank: int) -> int:
    """The GPU of the rank ``local_rank`` on its node."""
    return int(gpus[local_rank % len(gpus)])


def find_mpiexec() -> str:
    """``mpiexec`` next to this interpreter (the ``mpich`` wheel installs it there) or on
    PATH; ValueError naming the fix when there is none."""
    local = Path(sys.executable).parent / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if found is None:
        raise ValueError("--gpus: expected an MPI launcher (mpiexec) next to the interpreter "
                         "or on PATH, found none; install the mpi extra: "
                         "pip install 'ptyframe[mpi]'")
    return found


def launch_command(mpiexec: str, gpus: Sequence[int], config: str | Path,
                   extra: Sequence[str] = ()) -> list[str]:
    """The mpiexec command line of one rank per GPU."""
    return [mpiexec, "-n", str(len(gpus)), sys.executable, "-m", "ptyframe", "run",
            str(config), *extra]


def launch(config: str | Path, gpus: Sequence[int], extra: Sequence[str] = ()) -> int:
    """Run ``ptyframe run config`` on one rank per GPU of this node; the launcher's exit
    status. Checks first that CuPy sees every GPU named."""
    from ptyframe.core.device import cupy_available

    if not cupy_available():
        raise ValueError("--gpus: expected CuPy with CUDA devices, found none (install the gpu "
                         "extra: pip install 'ptyframe[gpu]')")
    import cupy

    count = int(cupy.cuda.runtime.getDeviceCount())
    missing = [g for g in gpus if g >= count]
    if missing:
        raise ValueError(f"--gpus: expected ids below the {count} GPUs visible, found "
                         f"{missing}")
    env = dict(os.environ, **{GPUS_VARIABLE: ",".join(str(g) for g in gpus)})
    if len(gpus) == 1:
        cmd = [sys.executable, "-m", "ptyframe", "run", str(config), *extra]
    else:
        cmd = launch_command(find_mpiexec(), gpus, config, extra)
    return subprocess.run(cmd, env=env, check=False).returncode
