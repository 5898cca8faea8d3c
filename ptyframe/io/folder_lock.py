"""One writer per output folder: an advisory lock on ``<folder>/.ptyframe.lock``.

The lock is an ``flock`` on the lock file (POSIX), released by the operating system when the
holder exits or is killed, so a stale lock never blocks a resume. Two holders, whether
processes or threads of one process, cannot both take it: the second gets
:class:`FolderBusy` naming the holder's process id. Where ``fcntl`` does not exist (Windows)
the lock file is created exclusively and removed on release.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from types import TracebackType

__all__ = ["LOCK_FILE", "FolderBusy", "FolderLock"]

LOCK_FILE = ".ptyframe.lock"


class FolderBusy(OSError):
    """Another writer holds the output folder."""


class FolderLock:
    """Exclusive lock of ``folder`` (a context manager; :meth:`acquire` / :meth:`release`)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _holder(self) -> str:
        try:
            text = self.path.read_text(encoding="utf-8").strip()
        except OSError:
            text = ""
        return text or "unknown"

    def acquire(self) -> FolderLock:
        """Take the lock; :class:`FolderBusy` when another writer holds it."""
        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.path.is_symlink():
            raise FolderBusy(f"output folder {self.folder}: {LOCK_FILE} is a symbolic link; "
                             "remove it")
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            fcntl = None
        flags = os.O_RDWR | os.O_CREAT | (0 if fcntl else os.O_EXCL)
        try:
            fd = os.open(self.path, flags, 0o666)
        except FileExistsError:  # pragma: no cover - Windows
            raise self._busy() from None
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise self._busy() from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def _busy(self) -> FolderBusy:
        return FolderBusy(
            f"output folder {self.folder} is being written by another ptyframe run "
            f"({self._holder()}); wait for it to finish or choose another output folder")

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # releases the flock
        if os.name == "nt":  # pragma: no cover
            with contextlib.suppress(OSError):
                self.path.unlink()

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
