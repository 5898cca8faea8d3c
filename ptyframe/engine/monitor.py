"""Reporting of a running reconstruction: progress bar or lines, the loss log, the cadence of
checkpoints. One role: tell the user and the output folder what each epoch did."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ptyframe.io.results import OutputFolder

__all__ = ["EpochReport", "RunMonitor", "LOG_COLUMNS"]

#: loss.csv columns before the regularizer terms
LOG_COLUMNS = ("epoch", "time_s", "loss", "data_loss", "validation_loss", "regularization",
               "step_size",
               "evaluations", "accepted", "line_search", "blocks", "n_measurements",
               "memory_mb")


@attrs.define
class EpochReport:
    """What a callback sees after each epoch. ``params`` are the live device arrays;
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
    validation_loss: float | None = None


class RunMonitor:
    """Progress display and loss log of one call of ``Reconstruction.run``.

    ``verbosity``: 0 silent, 1 a progress bar, 2 one line per epoch, 3 also every loss term;
    ``output``: the output folder (None: nothing written); ``term_names``: regularizer
    columns; ``resume_from_epoch``: rows after it are dropped from an existing loss log.
    """

    def __init__(self, verbosity: int, epochs: int, output: OutputFolder | None,
                 term_names: Sequence[str], resume_from_epoch: int | None,
                 write_log: bool = True) -> None:
        self.verbosity = verbosity
        self.term_names = tuple(term_names)
        self.log = None
        if output is not None and write_log:
            self.log = output.loss_log(LOG_COLUMNS + self.term_names,
                                       resume_from_epoch=resume_from_epoch)
        self.bar = None
        if verbosity == 1:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=epochs, desc="ptyframe", unit="epoch", leave=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def report(self, report: EpochReport, memory_mb: float) -> None:
        self._write_log(report, memory_mb)
        self._display(report)

    def _write_log(self, report: EpochReport, memory_mb: float) -> None:
        if self.log is None:
            return
        terms = report.info.get("terms", {})
        self.log.append(epoch=report.epoch, time_s=report.elapsed_s, loss=report.loss,
                        data_loss=report.data_loss,
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

    def _display(self, report: EpochReport) -> None:
        if self.bar is not None:
            self.bar.update(1)
            postfix = {"loss": f"{report.loss:.5g}"}
            if report.validation_loss is not None:
                postfix["val"] = f"{report.validation_loss:.5g}"
            postfix["step"] = f"{report.step_size:.2g}"
            self.bar.set_postfix(postfix)
            return
        if self.verbosity >= 2:
            val = ("" if report.validation_loss is None
                   else f"validation {report.validation_loss:.6g} ")
            line = (f"epoch {report.epoch}: loss {report.loss:.6g} {val}"
                    f"step {report.step_size:.3g} "
                    f"evaluations {report.evaluations} blocks {'+'.join(report.blocks)} "
                    f"{report.elapsed_s:.1f} s")
            if self.verbosity >= 3:
                line += " | " + ", ".join(f"{k} {v:.4g}" for k, v in
                                          report.info.get("terms", {}).items())
            print(line, flush=True)
