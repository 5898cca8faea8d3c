"""Watch a run as it progresses: a callback that redraws the run's figures every N epochs.

In a Jupyter notebook::

    from ptyframe.apps.live import LiveFigures
    rec = Reconstruction(...)
    rec.run(200, callbacks=[LiveFigures(rec, every=10)])

replaces the cell's output with the object and loss figures every 10 epochs. Outside a
notebook (no IPython), or with ``folder=...``, the PNGs are written there instead, to be
reloaded by an image viewer. For a run started elsewhere (``ptyframe run``), set
``figures_every`` in ``[output]``: the run itself redraws ``OUTPUT_DIR/figures/*.png``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ptyframe.engine.monitor import EpochReport
from ptyframe.io.figures import (
    FIGURE_NAMES,
    loss_figure,
    object_figure,
    positions_figure,
    probe_figure,
    save_figures,
)

__all__ = ["LiveFigures"]

_MAKERS = {"object": object_figure, "probe": probe_figure, "positions": positions_figure,
           "loss": loss_figure}


def _notebook_display() -> Callable[[Sequence[Any]], None] | None:
    """``show(figures)`` that replaces a notebook cell's output, or None without IPython."""
    try:
        from IPython import get_ipython
        from IPython.display import clear_output, display
    except ImportError:
        return None
    if get_ipython() is None:
        return None

    def show(figures: Sequence[Any]) -> None:
        clear_output(wait=True)
        for fig in figures:
            display(fig)

    return show


class LiveFigures:
    """Callback for ``Reconstruction.run(callbacks=[...])`` redrawing figures every ``every``
    epochs (and at the first).

    ``reconstruction``: the running :class:`~ptyframe.engine.reconstruction.Reconstruction`
    (its :meth:`snapshot` is drawn); ``names``: which figures (of ``object``, ``probe``,
    ``positions``, ``loss``); ``folder``: write PNGs there instead of displaying; ``show``:
    a function taking the list of figures (default: the notebook's display, when running in
    IPython). Never stops the run.
    """

    def __init__(self, reconstruction: Any, every: int = 10,
                 names: Sequence[str] = ("object", "loss"),
                 folder: str | os.PathLike | None = None,
                 show: Callable[[Sequence[Any]], None] | None = None) -> None:
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every: expected an integer >= 1, found {every!r}")
        unknown = set(names) - set(FIGURE_NAMES)
        if unknown or not names:
            raise ValueError(f"names: expected some of {list(FIGURE_NAMES)}, found "
                             f"{list(names)}")
        self.reconstruction = reconstruction
        self.every = every
        self.names = tuple(names)
        self.folder = Path(folder) if folder is not None else None
        self.show = show if show is not None else (
            None if self.folder is not None else _notebook_display())
        if self.show is None and self.folder is None:
            raise ValueError("LiveFigures: not in a notebook; give folder=... to write PNGs "
                             "or show=... to display them")
        self.drawn: list[int] = []

    def __call__(self, report: EpochReport) -> bool:
        if report.epoch % self.every and report.epoch != 1:
            return False
        snapshot = self.reconstruction.snapshot()
        if self.folder is not None:
            save_figures(snapshot, self.folder, names=self.names)
        if self.show is not None:
            self.show([_MAKERS[name](snapshot) for name in self.names])
        self.drawn.append(report.epoch)
        return False
