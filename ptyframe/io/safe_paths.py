"""Paths inside an output folder that cannot escape it.

Every file name read back from a state file (``state.json``, ``values.json``) and every
sub-folder a writer creates goes through these checks: a *plain* name (no path separator, not
``.``/``..``, no NUL, not hidden unless asked) joined to the folder, and refused when the result
is a symbolic link (or a link's target lies outside the folder). Handing someone a folder to
resume therefore never reads, moves or writes their other files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["UnsafePathError", "plain_name", "path_inside", "safe_subfolder", "file_mode"]


class UnsafePathError(ValueError):
    """A name from a state file or a configuration would reach outside its folder."""


def plain_name(name: Any, what: str, hidden: bool = False) -> str:
    """``name`` if it is a plain, non-empty file name; else :class:`UnsafePathError` naming
    ``what``. ``hidden``: allow a leading dot (staged / temporary files)."""
    if (not isinstance(name, str) or not name or name in (".", "..")
            or any(c in name for c in "/\\\0") or (name.startswith(".") and not hidden)
            or ":" in name and os.name == "nt"):
        raise UnsafePathError(
            f"{what}: expected a plain file name (no path separators, no '..'), found {name!r}")
    return name


def _outside(folder: Path, path: Path) -> bool:
    root = folder.resolve()
    target = path.resolve()
    return target != root and root not in target.parents


def path_inside(folder: str | os.PathLike, name: Any, what: str, hidden: bool = False) -> Path:
    """``folder / name`` for a plain ``name`` that is not a symbolic link; else
    :class:`UnsafePathError` (nothing is touched)."""
    folder = Path(folder)
    path = folder / plain_name(name, what, hidden=hidden)
    if path.is_symlink():
        raise UnsafePathError(
            f"{what}: {path} is a symbolic link (to {os.readlink(path)!r}); ptyframe neither "
            "reads nor writes through links inside an output folder")
    return path


def safe_subfolder(folder: str | os.PathLike, name: Any, what: str) -> Path:
    """``folder / name`` created as a directory (a plain name); refused when it exists as a
    symbolic link or as something other than a directory, or would lie outside ``folder``."""
    path = path_inside(folder, name, what)
    if path.exists() and not path.is_dir():
        raise UnsafePathError(f"{what}: {path} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    if _outside(Path(folder), path):  # e.g. a race replaced it with a link
        raise UnsafePathError(f"{what}: {path} lies outside {folder}")
    return path


def _current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read-by-setting
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Permissions of a new regular file under the user's umask (``0o666 & ~umask``)."""
    return 0o666 & ~_current_umask()
