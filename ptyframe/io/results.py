"""The reconstruction's output folder: checkpoints, loss log, parameters.

Folder layout (file names follow the reference tool, PyPty, so that its users find what
they expect)::

    output_folder/
        co.npy cp.npy cg.npy ct.npy cs.npy cb.npy ca.npy   overwritable checkpoint
        state.json                                         which epoch those files hold
        checkpoint_<block>_epoch_<N>.npy                   kept every ``checkpoint_every`` epochs
        loss.csv                                           one row per epoch
        parameters.json                                    the full configuration (JSON, no pickle)

Array layouts
-------------
Inside ptyframe the object is ``(n_slices, n_modes, Y, X)`` and the probe ``(n_modes, ny, nx)``
(slowest axis first, so that a slice or a mode is a contiguous image). On disk, ``co.npy`` and
``cp.npy`` (and the per-epoch ``checkpoint_obj/probe_epoch_N.npy``) use the reference's layout:
object ``(Y, X, n_slices, n_modes)``, probe ``(ny, nx, n_modes)``; a 4-D probe
``(n_subscans, n_modes, ny, nx)`` is stored as ``(ny, nx, n_modes, n_subscans)``.
:func:`to_reference_layout` / :func:`from_reference_layout` convert; every other block
(positions ``(N, 2)`` as ``[y, x]`` in pixels, tilts ``(N, 6)``, ...) is stored unchanged.
Loading gives back exactly the arrays that were saved (same values, dtype and shape).

Crash safety
------------
Every file is written atomically: to a temporary file in the same directory, flushed and
``fsync``-ed, then ``os.replace``-d onto its final name, so a kill at any moment leaves either
the old or the new complete file.

A checkpoint is several files that must belong to the same epoch. :meth:`OutputFolder.save_state`
makes the set atomic with a small redo journal in ``state.json``:

1. every array is written, complete and fsync-ed, to ``.<file>.staged`` (no final file touched);
2. ``state.json`` is replaced by one that still names the committed epoch but also holds a
   ``pending`` entry (the new epoch and its staged files) -- the commit point;
3. each staged file is renamed onto its final name (``co.npy`` ...);
4. ``state.json`` is replaced by the committed new state (no ``pending``).

A kill before step 2 leaves the previous checkpoint untouched (stray ``.staged`` files are
ignored and removed later). A kill after step 2 is finished on the next :func:`load_state` /
:class:`OutputFolder` creation / ``save_state`` by completing the renames (roll forward): a
staged file that is still there is renamed, one that is gone was already renamed. So a resume
always sees one consistent epoch and a kill loses at most the work since the last checkpoint.
The scheme needs no second copy of the (possibly large) object on disk. It assumes one writer
per folder.

The per-epoch ``checkpoint_*_epoch_N.npy`` files and ``loss.csv`` rows are for the user; they
are written atomically (file by file) but are not part of the resume state.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import attrs
import numpy as np

from ptyframe.core.blocks import PARAMETER_BLOCKS, from_disk_layout, to_disk_layout
from ptyframe.io.safe_paths import UnsafePathError, file_mode, path_inside, safe_subfolder

__all__ = [
    "OutputFolder", "LossLog", "load_state", "load_state_info", "read_loss_log", "load_parameters",
    "atomic_save_npy", "atomic_write_text", "atomic_write_json", "atomic_write_bytes",
    "atomic_path",
    "to_reference_layout", "from_reference_layout",
    "CHECKPOINT_FILES", "EPOCH_CHECKPOINT_NAMES", "STATE_FILE", "LOSS_FILE", "PARAMETERS_FILE",
]

#: Overwritable checkpoint file of each block, from the block table (unknown blocks:
#: ``<name>.npy``).
CHECKPOINT_FILES: dict[str, str] = {b.name: b.checkpoint_file for b in PARAMETER_BLOCKS}
#: Block name in ``checkpoint_<name>_epoch_<N>.npy`` (unknown blocks: their own name).
EPOCH_CHECKPOINT_NAMES: dict[str, str] = {b.name: b.epoch_name for b in PARAMETER_BLOCKS}
STATE_FILE = "state.json"
LOSS_FILE = "loss.csv"
PARAMETERS_FILE = "parameters.json"

_STATE_FORMAT = "ptyframe.checkpoint"
_STATE_VERSION = 1
_STAGED_SUFFIX = ".staged"
_TMP_SUFFIX = ".ptyframe-tmp"


# --------------------------------------------------------------------------- atomic writes

def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: not possible on every OS)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_error(path: Path, exc: OSError) -> OSError:
    """An OSError saying what could not be written and why, in words (a full disk shows up
    from numpy as "N requested and M written")."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if exc.errno == errno.ENOSPC or (exc.errno is None and "requested and" in str(exc)) or (
            free is not None and free < 1 << 20):
        where = f" ({free} bytes free)" if free is not None else ""
        return OSError(errno.ENOSPC, f"cannot write {path}: the disk is full{where}; the "
                       "previous file is unchanged")
    reason = exc.strerror or str(exc)
    return OSError(exc.errno, f"cannot write {path}: {reason}; the previous file is "
                   "unchanged")


def _atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` through ``write(fileobj)`` into a temp file, fsync, then rename."""
    path = Path(path)
    tmp = tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX, delete=False
    )
    try:
        with tmp:
            os.chmod(tmp.name, file_mode())  # the user's umask, like every other file
            write(tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp.name, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp.name)
        raise _write_error(path, exc) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp.name)
        raise
    _fsync_dir(path.parent)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file name beside ``path`` for writers that need a name (HDF5): created
    with the user's umask, fsync-ed and renamed onto ``path`` when the block succeeds,
    removed when it fails (a link at ``path`` is replaced, never followed)."""
    path = Path(path)
    tmp = tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=_TMP_SUFFIX, delete=False
    )
    tmp.close()
    try:
        os.chmod(tmp.name, file_mode())
        yield Path(tmp.name)
        fd = os.open(tmp.name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp.name, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp.name)
        raise _write_error(path, exc) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp.name)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically replace ``path`` with ``data``."""
    return _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if np.iscomplexobj(value):
            raise TypeError("complex arrays are not JSON-serialisable; store real and imag")
        return value.tolist()
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    to_config = getattr(value, "to_config", None)
    if callable(to_config):
        return to_config()
    raise TypeError(f"value of type {type(value).__name__} is not JSON-serialisable: {value!r}")


def _dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=_json_default) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as JSON (numpy scalars/arrays and paths are converted)."""
    return atomic_write_text(path, _dumps(obj))


def _host(array: Any) -> np.ndarray:
    """A numpy array from a numpy or device (cupy) array; object arrays are refused."""
    if not isinstance(array, np.ndarray) and hasattr(array, "get"):
        array = array.get()
    array = np.asarray(array)
    if array.dtype.hasobject:
        raise TypeError("object arrays cannot be saved (no pickle)")
    return array


def atomic_save_npy(path: str | os.PathLike, array: Any) -> Path:
    """Atomically save ``array`` as ``.npy`` (C order, no pickle)."""
    array = np.ascontiguousarray(_host(array))
    return _atomic_write(path, lambda f: np.save(f, array, allow_pickle=False))


def _write_fsynced_npy(path: Path, array: np.ndarray) -> None:
    """Write a complete, fsync-ed .npy at ``path`` (used for staged files); a file or link
    already there is removed first, never written through."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with open(fd, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------- layouts

def to_reference_layout(name: str, array: Any) -> np.ndarray:
    """Internal layout -> the reference tool's layout, as the block table gives it (object
    ``(S, K, Y, X) -> (Y, X, S, K)``; probe ``(K, ny, nx) -> (ny, nx, K)`` and
    ``(P, K, ny, nx) -> (ny, nx, K, P)``; other blocks unchanged)."""
    return to_disk_layout(name, _host(array))


def from_reference_layout(name: str, array: Any) -> np.ndarray:
    """Inverse of :func:`to_reference_layout` (returns C-contiguous arrays)."""
    return from_disk_layout(name, _host(array))


def checkpoint_file_name(name: str) -> str:
    """Overwritable checkpoint file of a block (``co.npy``, ..., or ``<name>.npy``)."""
    return CHECKPOINT_FILES.get(name, f"{name}.npy")


def epoch_checkpoint_file_name(name: str, epoch: int) -> str:
    """``checkpoint_<block>_epoch_<N>.npy`` with the reference's block names."""
    return f"checkpoint_{EPOCH_CHECKPOINT_NAMES.get(name, name)}_epoch_{epoch}.npy"


def _check_block_name(name: Any) -> None:
    if (not isinstance(name, str) or not name or name.startswith(".")
            or any(c in name for c in "/\\\0")):
        raise ValueError(f"block name: expected a plain non-empty file-name part, found {name!r}")


# --------------------------------------------------------------------------- state

def _read_state(folder: Path) -> dict[str, Any]:
    state_path = folder / STATE_FILE
    if not state_path.is_file():
        raise FileNotFoundError(
            f"no checkpoint in {folder}: {STATE_FILE} not found (the run wrote no complete "
            f"checkpoint there)"
        )
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"checkpoint in {folder}: cannot read {STATE_FILE}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
        raise ValueError(
            f"checkpoint in {folder}: {STATE_FILE} is not a ptyframe checkpoint state "
            f"(expected format {_STATE_FORMAT!r})"
        )
    if state.get("version") != _STATE_VERSION:
        raise ValueError(
            f"checkpoint in {folder}: {STATE_FILE} version {state.get('version')!r} is not "
            f"supported (expected {_STATE_VERSION})"
        )
    _check_state_names(folder, state)
    return state


def _check_files(folder: Path, files: Any, where: str) -> None:
    """Each entry of a ``files`` table names its block's own checkpoint file."""
    if not isinstance(files, Mapping):
        raise ValueError(f"checkpoint in {folder}: {where} is not a table")
    for block, entry in files.items():
        try:
            _check_block_name(block)
        except ValueError:
            raise UnsafePathError(f"checkpoint in {folder}: {where} names block {block!r}, "
                                  "which is not a plain name") from None
        if not isinstance(entry, Mapping) or entry.get("file") != checkpoint_file_name(block):
            found = entry.get("file") if isinstance(entry, Mapping) else entry
            raise UnsafePathError(
                f"checkpoint in {folder}: {where} gives block {block!r} the file {found!r}; "
                f"expected {checkpoint_file_name(block)!r} (state files may only name the "
                "folder's own checkpoint files)")


def _check_state_names(folder: Path, state: Mapping[str, Any]) -> None:
    """Refuse a state whose file names could reach outside ``folder`` (crafted or damaged):
    nothing is read, renamed or written on its behalf."""
    _check_files(folder, state.get("files") or {}, f"{STATE_FILE} 'files'")
    pending = state.get("pending")
    if not pending:
        return
    where = f"{STATE_FILE} 'pending'"
    if not isinstance(pending, Mapping):
        raise ValueError(f"checkpoint in {folder}: {where} is not a table")
    epoch = pending.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise ValueError(f"checkpoint in {folder}: {where} epoch: expected an integer >= 0, "
                         f"found {epoch!r}")
    _check_files(folder, pending.get("files"), f"{where} 'files'")
    staged = pending.get("staged")
    finals = {entry["file"] for entry in pending["files"].values()}
    if not isinstance(staged, Mapping):
        raise ValueError(f"checkpoint in {folder}: {where} 'staged' is not a table")
    for final, name in staged.items():
        if final not in finals or name != f".{final}{_STAGED_SUFFIX}":
            raise UnsafePathError(
                f"checkpoint in {folder}: {where} would rename {name!r} onto {final!r}; only "
                f"'.<file>{_STAGED_SUFFIX}' onto a checkpoint file of the same folder is "
                "allowed")


def _roll_forward(folder: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Finish a commit recorded in ``state['pending']``; return the committed state."""
    pending = state.get("pending")
    if not pending:
        return state
    what = f"checkpoint in {folder}: {STATE_FILE}"
    moves = [(path_inside(folder, staged, what, hidden=True), path_inside(folder, final, what))
             for final, staged in pending["staged"].items()]  # all checked before any move
    for staged_path, final_path in moves:
        if staged_path.exists():
            os.replace(staged_path, final_path)
    _fsync_dir(folder)
    committed = _committed_state(pending["epoch"], pending["files"], pending.get("info"))
    atomic_write_json(folder / STATE_FILE, committed)
    return committed


def _committed_state(epoch: int | None, files: dict[str, Any],
                     info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {
        "format": _STATE_FORMAT,
        "version": _STATE_VERSION,
        "epoch": epoch,
        "layout": "reference",
        "files": files,
        "info": dict(info) if info else {},
        "pending": None,
    }


def _remove_strays(folder: Path, keep: Iterable[str] = ()) -> None:
    """Remove staged/temp files left by a killed writer (never those named in ``keep``)."""
    keep = set(keep)
    for pattern in (f".*{_STAGED_SUFFIX}", f".*{_TMP_SUFFIX}"):
        for stray in folder.glob(pattern):
            if stray.name not in keep:
                with contextlib.suppress(OSError):
                    stray.unlink()


def load_state(path: str | os.PathLike, recover: bool = True) -> tuple[dict[str, np.ndarray], int]:
    """Load the last complete checkpoint of an output folder: ``(arrays, epoch)``.

    Arrays come back in the internal layout, exactly as given to ``save_state``. When a
    kill interrupted the last commit after its commit point, the commit is completed first
    (``recover=True``) or the new files are read where they lie (``recover=False``, the
    folder is not touched). Raises FileNotFoundError / ValueError naming the folder and the
    file when no complete, consistent checkpoint exists.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"no checkpoint: output folder {folder} does not exist")
    state = _read_state(folder)
    read_from: dict[str, str] = {}
    pending = state.get("pending")
    if pending:
        if recover:
            try:
                state = _roll_forward(folder, state)
            except OSError as exc:
                warnings.warn(
                    f"checkpoint in {folder}: could not finish the interrupted commit of "
                    f"epoch {pending['epoch']} ({exc}); reading its files where they lie",
                    stacklevel=2,
                )
                recover = False
        if not recover:
            read_from = {
                final: staged for final, staged in pending["staged"].items()
                if path_inside(folder, staged, str(folder), hidden=True).exists()
            }
            state = _committed_state(pending["epoch"], pending["files"], pending.get("info"))
    epoch = state.get("epoch")
    files = state.get("files") or {}
    if epoch is None or not files:
        raise ValueError(f"no complete checkpoint in {folder}: {STATE_FILE} lists no files")
    arrays: dict[str, np.ndarray] = {}
    for name, info in files.items():
        file_name = info["file"]
        file_path = path_inside(folder, read_from.get(file_name, file_name),
                                f"checkpoint in {folder}, block {name!r}", hidden=True)
        if not file_path.is_file():
            raise FileNotFoundError(
                f"checkpoint of epoch {epoch} in {folder} is incomplete: {file_name} "
                f"(block {name!r}) is missing"
            )
        try:
            array = np.load(file_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"checkpoint of epoch {epoch} in {folder}: cannot read {file_name} "
                f"(block {name!r}): {exc}"
            ) from None
        if list(array.shape) != list(info["shape"]) or str(array.dtype) != info["dtype"]:
            raise ValueError(
                f"checkpoint of epoch {epoch} in {folder}: {file_name} (block {name!r}) "
                f"expected shape {tuple(info['shape'])} {info['dtype']}, found "
                f"{array.shape} {array.dtype} (was it overwritten by something else?)"
            )
        if state.get("layout") == "reference":
            array = from_reference_layout(name, array)
        arrays[name] = array
    return arrays, int(epoch)


def load_state_info(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON values committed with the last checkpoint (``info`` of ``save_state``; an
    empty dict for checkpoints written without). Reads ``state.json`` only."""
    state = _read_state(Path(path))
    pending = state.get("pending")
    if pending:
        return dict(pending.get("info") or {})
    return dict(state.get("info") or {})


# --------------------------------------------------------------------------- parameters

def load_parameters(folder: str | os.PathLike) -> dict[str, Any]:
    """Read ``parameters.json`` of an output folder."""
    folder = Path(folder)
    path = folder / PARAMETERS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no parameters in {folder}: {PARAMETERS_FILE} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None


def _without_grid(text: str) -> Any:
    """A configuration's JSON without its ``grid`` (which follows the object as it grows)."""
    try:
        config = json.loads(text)
    except ValueError:
        return text
    if isinstance(config, dict):
        config.pop("grid", None)
    return config


# --------------------------------------------------------------------------- loss log

def _format_value(column: str, value: Any) -> str:
    if value is None:
        return ""
    if hasattr(value, "get") and not isinstance(value, (np.generic, np.ndarray, Mapping)):
        value = value.get()  # cupy 0-d array
    if isinstance(value, np.ndarray):
        if value.ndim != 0:
            raise ValueError(f"loss log column {column!r}: expected a scalar, found {value!r}")
        value = value.item()
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, str):
        if "\n" in value or "\r" in value:
            raise ValueError(f"loss log column {column!r}: line breaks are not allowed")
        return value
    raise ValueError(
        f"loss log column {column!r}: expected a number, bool, str or None, found "
        f"{type(value).__name__} {value!r}"
    )


def _csv_line(fields: Iterable[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(list(fields))
    return buffer.getvalue()


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and complete rows; an unterminated last line (a killed append) is dropped."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    if not lines:
        return [], []
    header = next(csv.reader([lines[0]]))
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        row = next(csv.reader([line]), [])
        if not row:
            continue
        if len(row) != len(header):
            raise ValueError(
                f"{path}, line {number}: expected {len(header)} fields ({','.join(header)}), "
                f"found {len(row)}"
            )
        rows.append(row)
    return header, rows


def _parse_column(values: list[str]) -> np.ndarray:
    filled = [v for v in values if v != ""]
    try:
        ints = [int(v) for v in filled]
    except ValueError:
        ints = None
    if ints is not None and len(filled) == len(values):
        return np.array(ints, dtype=np.int64)
    try:
        return np.array([float(v) if v != "" else np.nan for v in values], dtype=np.float64)
    except ValueError:
        return np.array(values, dtype=str)


def read_loss_log(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read ``loss.csv`` (a file, or an output folder holding one) column by column.

    Integer columns come back as int64 (float64 with NaN where a value is missing), numeric
    ones as float64, anything else as str. An unterminated last row is ignored.
    """
    path = Path(path)
    if path.is_dir():
        path = path / LOSS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no loss log: {path} not found")
    header, rows = _read_rows(path)
    return {name: _parse_column([row[i] for row in rows]) for i, name in enumerate(header)}


def _tuple_of_columns(columns: Iterable[str]) -> tuple[str, ...]:
    return tuple(columns)


@attrs.define
class LossLog:
    """``loss.csv``: one row per epoch, each row flushed and fsync-ed as it is appended.

    ``columns`` are fixed at creation (e.g. epoch, time_s, loss, step_size, evaluations,
    accepted, per-term contributions). Without ``resume_from_epoch`` a new file (header only)
    replaces any old one. With ``resume_from_epoch=E`` the existing file is rewritten
    (atomically) keeping only rows with ``epoch <= E``; columns of the old file that are not in
    ``columns`` are kept after them (new rows leave them empty).
    """

    path: Path = attrs.field(converter=Path)
    columns: tuple[str, ...] = attrs.field(converter=_tuple_of_columns)
    resume_from_epoch: int | None = None
    epoch_column: str = "epoch"

    @columns.validator
    def _check_columns(self, _attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
        if not value:
            raise ValueError("loss log columns: expected at least one column, found none")
        for column in value:
            if (not isinstance(column, str) or not column
                    or any(c in column for c in ',"\n\r')):
                raise ValueError(
                    f"loss log columns: expected non-empty names without commas, quotes or "
                    f"line breaks, found {column!r}"
                )
        if len(set(value)) != len(value):
            raise ValueError(f"loss log columns: expected unique names, found {list(value)}")

    def __attrs_post_init__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.resume_from_epoch is None or not self.path.is_file():
            atomic_write_text(self.path, _csv_line(self.columns))
            return
        if self.epoch_column not in self.columns:
            raise ValueError(
                f"loss log: resume_from_epoch needs an {self.epoch_column!r} column, found "
                f"{list(self.columns)}"
            )
        header, rows = _read_rows(self.path)
        if header and self.epoch_column not in header:
            raise ValueError(
                f"{self.path}: cannot resume, the file has no {self.epoch_column!r} column "
                f"(found {header})"
            )
        extras = [c for c in header if c not in self.columns]
        self.columns = self.columns + tuple(extras)
        kept = []
        index = {name: i for i, name in enumerate(header)}
        for row in rows:
            try:
                epoch = float(row[index[self.epoch_column]])
            except ValueError:
                continue
            if epoch <= self.resume_from_epoch:
                kept.append([row[index[c]] if c in index else "" for c in self.columns])
        atomic_write_text(
            self.path, _csv_line(self.columns) + "".join(_csv_line(row) for row in kept)
        )

    def append(self, row: Mapping[str, Any] | None = None, /, **values: Any) -> None:
        """Append one row (missing columns are left empty; unknown ones are an error)."""
        data = dict(row or {}, **values)
        unknown = [k for k in data if k not in self.columns]
        if unknown:
            raise ValueError(
                f"loss log: unknown columns {unknown}; the columns are {list(self.columns)}"
            )
        line = _csv_line(_format_value(c, data.get(c)) for c in self.columns)
        if self.path.is_symlink():
            raise UnsafePathError(f"loss log: {self.path} is a symbolic link; not written "
                                  "through")
        with open(self.path, "a", encoding="utf-8", newline="") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> dict[str, np.ndarray]:
        return read_loss_log(self.path)


# --------------------------------------------------------------------------- output folder

def _optional_positive_int(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{attribute.name}: expected None or an integer >= 1, found {value!r}")


@attrs.define
class OutputFolder:
    """The reconstruction's output folder (created if needed).

    ``overwrite_checkpoints``: write the overwritable checkpoint (co.npy ... + state.json)
    at every ``save_state``; without it a run cannot be resumed.
    ``checkpoint_every``: also keep ``checkpoint_<block>_epoch_<N>.npy`` at every N-th epoch.
    """

    path: Path = attrs.field(converter=Path)
    overwrite_checkpoints: bool = True
    checkpoint_every: int | None = attrs.field(default=None, validator=_optional_positive_int)

    def __attrs_post_init__(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"output folder: expected a directory, found a file at {self.path}")
        self.path.mkdir(parents=True, exist_ok=True)
        self.recover()

    # -- checkpoints -----------------------------------------------------------------------

    def recover(self) -> None:
        """Finish a commit interrupted after its commit point; remove stray temp files."""
        if (self.path / STATE_FILE).is_file():
            try:
                state = _read_state(self.path)
            except UnsafePathError:
                raise  # a crafted state: refuse the folder rather than overwrite anything
            except ValueError as exc:
                warnings.warn(f"{exc}; it will be replaced by the next checkpoint", stacklevel=2)
                return  # leave everything as it is: we do not understand this folder
            _roll_forward(self.path, state)
        _remove_strays(self.path)

    def save_state(self, arrays: Mapping[str, Any], epoch: int,
                   resume_arrays: Mapping[str, Any] | None = None,
                   info: Mapping[str, Any] | None = None) -> None:
        """Save a checkpoint of ``arrays`` (internal layout) after ``epoch`` epochs.

        ``resume_arrays`` (e.g. the engine's state) and the JSON-able ``info`` are committed
        with the same checkpoint (:func:`load_state_info` reads ``info`` back) but are not
        kept in the per-epoch ``checkpoint_*`` files.
        """
        if not isinstance(epoch, (int, np.integer)) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"epoch: expected an integer >= 0, found {epoch!r}")
        epoch = int(epoch)
        if not arrays:
            raise ValueError("save_state: expected at least one array, found none")
        on_disk: dict[str, np.ndarray] = {}
        for name, array in arrays.items():
            _check_block_name(name)
            on_disk[name] = np.ascontiguousarray(to_reference_layout(name, array))
        if self.overwrite_checkpoints:
            extra = {}
            for name, array in (resume_arrays or {}).items():
                _check_block_name(name)
                extra[name] = np.ascontiguousarray(_host(array))
            self._commit({**on_disk, **extra}, epoch, info)
        if self.checkpoint_every is not None and epoch >= 1 and epoch % self.checkpoint_every == 0:
            for name, array in on_disk.items():
                atomic_save_npy(self.path / epoch_checkpoint_file_name(name, epoch), array)

    def _commit(self, on_disk: Mapping[str, np.ndarray], epoch: int,
                info: Mapping[str, Any] | None = None) -> None:
        folder = self.path
        self.recover()
        try:
            committed = _read_state(folder)
        except (FileNotFoundError, ValueError):
            committed = _committed_state(None, {})  # first checkpoint (or unreadable state)
        if committed.get("pending"):  # recover() could not read it: start afresh
            committed = _committed_state(None, {})
        files: dict[str, Any] = {}
        staged: dict[str, str] = {}
        # 1. stage every array, complete and fsync-ed
        for name, array in on_disk.items():
            final = checkpoint_file_name(name)
            staged_name = f".{final}{_STAGED_SUFFIX}"
            _write_fsynced_npy(folder / staged_name, array)
            files[name] = {"file": final, "shape": list(array.shape), "dtype": str(array.dtype)}
            staged[final] = staged_name
        _fsync_dir(folder)
        # 2. commit point: the journal names the staged files
        journal = dict(committed)
        journal["pending"] = {"epoch": epoch, "files": files, "staged": staged,
                              "info": dict(info) if info else {}}
        atomic_write_json(folder / STATE_FILE, journal)
        # 3. + 4. rename onto the final names, then record the committed state
        _roll_forward(folder, journal)

    def load_state(self, recover: bool = True) -> tuple[dict[str, np.ndarray], int]:
        return load_state(self.path, recover=recover)

    def has_checkpoint(self) -> bool:
        """Whether a complete checkpoint is on disk (without reading the arrays)."""
        try:
            state = _read_state(self.path)
        except (FileNotFoundError, ValueError):
            return False
        pending = state.get("pending")
        if pending:
            state = {"epoch": pending["epoch"], "files": pending["files"]}
        staged = (pending or {}).get("staged", {})
        files = state.get("files") or {}
        return state.get("epoch") is not None and bool(files) and all(
            (self.path / info["file"]).is_file()
            or (info["file"] in staged and (self.path / staged[info["file"]]).is_file())
            for info in files.values()
        )

    # -- other outputs ---------------------------------------------------------------------

    def save_parameters(self, config: Mapping[str, Any]) -> Path:
        """Write the run's full configuration to ``parameters.json`` (atomically). When it
        replaces a different configuration, the old one is kept as ``parameters.rev<N>.json``
        (N = 1, 2, ...: every configuration the folder's run has had)."""
        if not isinstance(config, Mapping):
            raise TypeError(f"parameters: expected a dict, found {type(config).__name__}")
        try:
            text = _dumps(dict(config))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"parameters: cannot be written as JSON: {exc}") from None
        current = path_inside(self.path, PARAMETERS_FILE, "parameters")
        if current.is_file():
            old = current.read_text(encoding="utf-8")
            if _without_grid(old) != _without_grid(text):  # a grown object is no revision
                atomic_write_text(self.path / f"parameters.rev{self._next_revision()}.json",
                                  old)
        return atomic_write_text(current, text)

    def _next_revision(self) -> int:
        numbers = [int(p.name[len("parameters.rev"):-len(".json")])
                   for p in self.path.glob("parameters.rev*.json")
                   if p.name[len("parameters.rev"):-len(".json")].isdigit()]
        return max(numbers, default=0) + 1

    def parameter_revisions(self) -> list[Path]:
        """Earlier configurations of this folder's run, oldest first."""
        return [self.path / f"parameters.rev{n}.json" for n in range(1, self._next_revision())
                if (self.path / f"parameters.rev{n}.json").is_file()]

    def clear_run(self) -> list[str]:
        """Remove the files of the run this folder holds (checkpoint, per-epoch checkpoints,
        loss log); configurations and anything ptyframe did not write stay. Returns the
        names removed."""
        removed = []
        names = {STATE_FILE, LOSS_FILE, *CHECKPOINT_FILES.values()}
        try:
            state = _read_state(self.path)
            names |= {entry["file"] for entry in (state.get("files") or {}).values()}
        except (FileNotFoundError, ValueError):
            pass
        candidates = [self.path / n for n in sorted(names)]
        candidates += sorted(self.path.glob("checkpoint_*_epoch_*.npy"))
        for path in candidates:
            if path.is_file() or path.is_symlink():
                path.unlink()
                removed.append(path.name)
        _remove_strays(self.path)
        return removed

    def load_parameters(self) -> dict[str, Any]:
        return load_parameters(self.path)

    def loss_log(self, columns: Iterable[str], resume_from_epoch: int | None = None) -> LossLog:
        """The run's ``loss.csv`` (see :class:`LossLog`)."""
        return LossLog(self.path / LOSS_FILE, columns, resume_from_epoch=resume_from_epoch)

    def subfolder(self, name: str) -> Path:
        """A sub-folder for a method's results (``tcbf``, ``dpc``, ``wdd``), created."""
        return safe_subfolder(self.path, name, "output sub-folder")

    def save_array(self, relative_path: str | os.PathLike, array: Any) -> Path:
        """Atomically save an extra result array (e.g. ``"wdd/object.npy"``)."""
        target = self.path / relative_path
        if self.path.resolve() not in target.resolve().parents:
            raise ValueError(f"save_array: {relative_path!s} is outside {self.path}")
        target.parent.mkdir(parents=True, exist_ok=True)
        return atomic_save_npy(target, array)
