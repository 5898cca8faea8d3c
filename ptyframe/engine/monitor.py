"""Reporting of a running reconstruction: progress bar or log lines, the loss log, the
normalised error. One role: tell the user and the output folder what each epoch did.

The display goes to the ``ptyframe`` logger (:mod:`logging`): a progress bar only when
standard error is a terminal, otherwise one line per epoch, so a log file never fills with
carriage returns. When no logging handler is configured anywhere (a plain Python script), the
lines go to standard error.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import attrs

from ptyframe.io.results import OutputFolder

__all__ = ["EpochReport", "RunMonitor", "LOG_COLUMNS", "relative_loss", "LOGGER_NAME"]

LOGGER_NAME = "ptyframe"

#: loss.csv columns before the regularizer terms
LOG_COLUMNS = ("epoch", "time_s", "loss", "loss_relative", "data_loss", "validation_loss",
               "regularization", "step_size", "evaluations", "accepted", "line_search",
               "blocks", "n_measurements", "memory_mb")


def relative_loss(loss: float, reference: float) -> float:
    """The normalised error of ``loss`` against the run's first-epoch loss ``reference``:
    ``1 + (loss - reference) / |reference|``.

    It is ``loss / reference`` for a positive loss (least squares), starts at 1 and falls as
    the run converges whatever the loss's sign or scale (a Poisson likelihood can be
    negative); NaN when the reference is 0 or not finite.
    """
    if not (math.isfinite(reference) and reference != 0.0):
        return float("nan")
    return 1.0 + (float(loss) - reference) / abs(reference)


@attrs.define
class EpochReport:
    """What a callback sees after each epoch. ``params`` are the live device arrays;
    ``loss_relative``: :func:`relative_loss` of ``loss``.
    ``validation_loss``: data loss per held-out pattern (None: nothing held out)."""

    epoch: int
    loss: float
    data_loss: float
    step_size: float
    evaluations: int
    accepted: bool
    elapsed_s: float
    blocks: tuple[str, ...]
    params: Mapping[str, Any]
    info: dict[str, Any] = attrs.field(factory=dict)
    loss_relative: float = float("nan")
    validation_loss: float | None = None


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class RunMonitor:
    """Progress display and loss log of one call of ``Reconstruction.run``.

    ``verbosity``: 0 silent, 1 a progress bar on a terminal (one line per epoch otherwise),
    2 one line per epoch, 3 also every loss term; ``output``: the output folder (None:
    nothing written); ``term_names``: regularizer columns; ``resume_from_epoch``: rows after
    it are dropped from an existing loss log; ``reference_loss``: the first epoch's loss of
    the run (None: this call's first epoch), the reference of the normalised error;
    ``stream``: where the bar and, without a logging handler, the lines go (default stderr).
    """

    def __init__(self, verbosity: int, epochs: int, output: OutputFolder | None,
                 term_names: Sequence[str], resume_from_epoch: int | None,
                 write_log: bool = True, reference_loss: float | None = None,
                 stream: TextIO | None = None) -> None:
        self.verbosity = verbosity
        self.term_names = tuple(term_names)
        self.reference_loss = reference_loss
        self.stream = stream if stream is not None else sys.stderr
        self.logger = logging.getLogger(LOGGER_NAME)
        self.log = None
        if output is not None and write_log:
            self.log = output.loss_log(LOG_COLUMNS + self.term_names,
                                       resume_from_epoch=resume_from_epoch)
        self.bar = None
        shown = not self.logger.hasHandlers() or self.logger.isEnabledFor(logging.INFO)
        if verbosity == 1 and shown and _is_terminal(self.stream):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=epochs, desc="ptyframe", unit="epoch", leave=True,
                            file=self.stream)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def normalised(self, loss: float) -> float:
        """:func:`relative_loss` against the run's reference (set by the first report)."""
        if self.reference_loss is None:
            self.reference_loss = float(loss)
        return relative_loss(loss, self.reference_loss)

    def report(self, report: EpochReport, memory_mb: float) -> None:
        if math.isnan(report.loss_relative):
            report.loss_relative = self.normalised(report.loss)
        self._write_log(report, memory_mb)
        self._display(report)

    def _write_log(self, report: EpochReport, memory_mb: float) -> None:
        if self.log is None:
            return
        terms = report.info.get("terms", {})
        self.log.append(epoch=report.epoch, time_s=report.elapsed_s, loss=report.loss,
                        loss_relative=report.loss_relative, data_loss=report.data_loss,
                        validation_loss=(float("nan") if report.validation_loss is None
                                         else report.validation_loss),
                        regularization=report.loss - report.data_loss,
                        step_size=report.step_size, evaluations=report.evaluations,
                        accepted=report.accepted,
                        line_search=str(report.info.get("line_search", "")),
                        blocks="+".join(report.blocks),
                        n_measurements=report.info.get("n_measurements"),
                        memory_mb=memory_mb,
                        **{name: terms.get(name, float("nan")) for name in self.term_names})

    def line(self, report: EpochReport) -> str:
        """The one-line summary of an epoch."""
        line = (f"epoch {report.epoch}: loss {report.loss:.6g} (relative "
                f"{report.loss_relative:.4g}) "
                + ("" if report.validation_loss is None
                   else f"validation {report.validation_loss:.6g} ")
                + f"step {report.step_size:.3g} evaluations "
                f"{report.evaluations} blocks {'+'.join(report.blocks)} "
                f"{report.elapsed_s:.1f} s")
        if self.verbosity >= 3:
            line += " | " + ", ".join(f"{k} {v:.4g}" for k, v in
                                      report.info.get("terms", {}).items())
        return line

    def _display(self, report: EpochReport) -> None:
        if self.verbosity == 0:
            return
        if self.bar is not None:
            self.bar.update(1)
            postfix = {"loss": f"{report.loss:.5g}", "relative": f"{report.loss_relative:.3g}"}
            if report.validation_loss is not None:
                postfix["val"] = f"{report.validation_loss:.5g}"
            postfix["step"] = f"{report.step_size:.2g}"
            self.bar.set_postfix(postfix)
            return
        self.emit(self.line(report))

    def emit(self, message: str) -> None:
        """``message`` to the ``ptyframe`` logger at INFO, or to the stream when no logging
        handler is configured at all; nothing at verbosity 0."""
        if self.verbosity == 0:
            return
        if self.logger.hasHandlers():
            self.logger.info(message)
        else:
            print(message, file=self.stream, flush=True)
