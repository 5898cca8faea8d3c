"""The geometry step before iterating: scan rotation, detector transpose, defocus and two-fold
astigmatism found by tcBF (with DPC as a cross-check near focus), checked for confidence and
applied to a run's configuration.

``find_geometry`` runs the registry's ``tcbf`` direct method (and ``dpc``), then judges the
result with checks computed here from the measured parallax shifts
(:func:`ptyframe.core.parallax.fit_parallax`): how precisely the shifts were measured, how much
of their variance the linear parallax model explains, the standard errors of the rotation and
of C10, how clearly the transpose is decided, and the DPC/tcBF agreement. ``require_confidence``
refuses with one :class:`GeometryError` naming what is uncertain; ``apply_geometry`` writes the
findings into a configuration (``[experiment]`` scan_rotation_deg and aberrations,
``[data] preprocessing transpose``); ``write_geometry`` / ``read_geometry`` keep them in the
output folder (``geometry.json``) so that a resumed run uses them instead of recomputing.

The scan step is not found: a parallax shift is lambda C10 k in Å of the specimen, measured in
scan steps, so a scan step wrong by a factor f reads as C10 wrong by 1/f; the shifts cannot tell
the two apart (see docs/reliability.md).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from ptyframe.core.experiment import Experiment
from ptyframe.core.parallax import ParallaxFit, fit_parallax
from ptyframe.core.validators import (
    boolean,
    in_range,
    one_of,
    positive,
    reject_unknown_keys,
    to_float,
)
from ptyframe.io.results import atomic_write_json

__all__ = ["GEOMETRY_FILE", "GEOMETRY_MODES", "GeometryError", "GeometrySettings", "Check",
           "GeometryFindings", "find_geometry", "require_confidence", "apply_geometry",
           "write_geometry", "read_geometry", "remove_geometry", "report", "tcbf_config"]

GEOMETRY_FILE = "geometry.json"
GEOMETRY_MODES = ("off", "check", "auto")
#: what the step can apply
APPLICABLE = ("rotation", "transpose", "defocus", "astigmatism")
_DPC_MODES = ("auto", "always", "never")
#: coefficients the geometry step fits and applies
APPLIED_ABERRATIONS = ("C10", "C12a", "C12b")
#: DPC runs in "auto" when the probe's defocus blur radius |C10| alpha is within this many scan
#: steps: the probe then covers a few scan steps and the COM field keeps its contrast
NEAR_FOCUS_BLUR_STEPS = 4.0
#: metadata differing from the findings by more than these are reported
METADATA_ROTATION_DEG = 2.0
METADATA_DEFOCUS_FRACTION = 0.2


def _names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) \
            or not all(isinstance(v, str) for v in value):
        raise ValueError(f"geometry apply: expected a list of names such as [\"rotation\", "
                         f"\"transpose\"], found {value!r}")
    return tuple(value)


class GeometryError(ValueError):
    """The geometry step is not confident (or its input is unusable)."""


@attrs.frozen(kw_only=True)
class GeometrySettings:
    """The ``[geometry]`` table.

    * ``mode``: "off" (nothing), "check" (find and report, apply nothing, never refuse),
      "auto" (find, refuse when not confident, apply)
    * ``force``: apply the findings even when not confident
    * ``min_explained``: smallest fraction of the shift variance the parallax fit explains
    * ``max_residual_steps``: largest RMS shift residual, scan steps
    * ``max_rotation_sigma_deg``: largest standard error of the rotation, degrees
    * ``max_defocus_sigma``: largest standard error of C10, fraction of |C10|
    * ``max_astigmatism_ratio``: largest |C12| / |C10| (beyond it the transpose is undecided)
    * ``min_transpose_margin``: smallest relative residual margin between the two transpose
      fits of tcBF
    * ``dpc``: DPC cross-check of the rotation: "auto" (near focus), "always", "never"
    * ``max_dpc_disagreement_deg``: largest DPC/tcBF rotation difference, degrees
    * ``apply``: what mode "auto" applies, some of "rotation", "transpose", "defocus"
      (C10), "astigmatism" (C12a, C12b)
    * ``tcbf``: settings of the ``tcbf`` direct method replacing the step's defaults
    """

    mode: str = attrs.field(default="off", validator=one_of(GEOMETRY_MODES))
    force: bool = attrs.field(default=False, validator=boolean())
    min_explained: float = attrs.field(default=0.9, converter=to_float,
                                       validator=in_range(0.0, 1.0))
    max_residual_steps: float = attrs.field(default=0.5, converter=to_float,
                                            validator=positive())
    max_rotation_sigma_deg: float = attrs.field(default=1.0, converter=to_float,
                                                validator=positive())
    max_defocus_sigma: float = attrs.field(default=0.05, converter=to_float,
                                           validator=positive())
    max_astigmatism_ratio: float = attrs.field(default=0.5, converter=to_float,
                                               validator=in_range(0.0, 1.0, low_open=True))
    min_transpose_margin: float = attrs.field(default=0.3, converter=to_float,
                                              validator=in_range(0.0, 1.0))
    dpc: str = attrs.field(default="auto", validator=one_of(_DPC_MODES))
    max_dpc_disagreement_deg: float = attrs.field(default=2.0, converter=to_float,
                                                  validator=positive())
    apply: tuple[str, ...] = attrs.field(default=APPLICABLE, converter=_names)
    tcbf: dict[str, Any] = attrs.field(factory=dict)

    @apply.validator
    def _check_apply(self, _attribute: Any, value: tuple[str, ...]) -> None:
        unknown = [v for v in value if v not in APPLICABLE]
        if unknown:
            raise ValueError(f"geometry apply: expected some of {list(APPLICABLE)}, found "
                             f"{unknown}")

    @tcbf.validator
    def _check_tcbf(self, _attribute: Any, value: Any) -> None:
        if not isinstance(value, Mapping) or "type" in value:
            raise ValueError(f"geometry tcbf: expected a table of tcbf settings without "
                             f"'type', e.g. {{binning = [2, 1]}}, found {value!r}")

    @classmethod
    def from_config(cls, section: Any) -> GeometrySettings:
        """From the ``[geometry]`` table (absent: mode "off"); errors name the key."""
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise ValueError(f"config [geometry]: expected a table such as {{mode = \"auto\"}}, "
                             f"found {type(section).__name__} {section!r}")
        reject_unknown_keys("config [geometry]", section, (f.name for f in attrs.fields(cls)))
        try:
            return cls(**{k: (dict(v) if k == "tcbf" and isinstance(v, Mapping) else v)
                          for k, v in section.items()})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config [geometry]: {exc}") from None


@attrs.frozen
class Check:
    """One confidence check: ``name`` of what it judges, the ``value`` found, the ``limit``,
    whether it ``passed`` and a ``text`` for people."""

    name: str
    value: float
    limit: float
    passed: bool
    text: str


@attrs.frozen(kw_only=True)
class GeometryFindings:
    """What the geometry step found (relative to the data as read, preprocessing included).

    ``rotation_deg``: scan rotation, degrees; ``transpose``: the detector axes must be swapped
    (relative to the data as read); ``aberrations_A``: fitted C10, C12a, C12b, Å;
    ``checks``: the confidence checks; ``notes``: metadata disagreements and remarks;
    ``details``: numbers behind the checks (JSON)."""

    rotation_deg: float
    transpose: bool
    aberrations_A: dict[str, float]
    checks: tuple[Check, ...]
    notes: tuple[str, ...] = ()
    details: dict[str, Any] = attrs.field(factory=dict)

    @property
    def defocus_A(self) -> float:
        """Defocus, Å (positive = underfocus): -C10."""
        return -float(self.aberrations_A.get("C10", 0.0))

    @property
    def confident(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def format(self) -> str:
        """A report: findings, each check, the verdict and the notes."""
        ab = self.aberrations_A
        c12 = math.hypot(ab.get("C12a", 0.0), ab.get("C12b", 0.0))
        lines = [f"geometry: scan rotation {self.rotation_deg:.2f} deg, detector "
                 f"{'transposed' if self.transpose else 'not transposed'}, defocus "
                 f"{self.defocus_A:.1f} Å (C10 {ab.get('C10', 0.0):.1f} Å), two-fold "
                 f"astigmatism {c12:.1f} Å (C12a {ab.get('C12a', 0.0):.1f}, C12b "
                 f"{ab.get('C12b', 0.0):.1f})"]
        passed = sum(c.passed for c in self.checks)
        lines.append(f"geometry: confidence {'high' if self.confident else 'LOW'} "
                     f"({passed} of {len(self.checks)} checks pass)")
        lines += [f"  [{'ok' if c.passed else 'FAIL'}] {c.text}" for c in self.checks]
        uncertainties = self.details.get("tcbf_uncertainties")
        if uncertainties:
            lines.append(f"  tcBF uncertainties: {json.dumps(uncertainties)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_record(self) -> dict[str, Any]:
        from ptyframe.apps.direct import to_jsonable

        return to_jsonable({"rotation_deg": self.rotation_deg, "transpose": self.transpose,
                            "aberrations_A": self.aberrations_A,
                            "checks": [attrs.asdict(c) for c in self.checks],
                            "notes": list(self.notes), "details": self.details})

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> GeometryFindings:
        try:
            return cls(rotation_deg=float(record["rotation_deg"]),
                       transpose=bool(record["transpose"]),
                       aberrations_A={str(k): float(v)
                                      for k, v in record["aberrations_A"].items()},
                       checks=tuple(Check(str(c["name"]),
                                          math.nan if c["value"] is None else float(c["value"]),
                                          float(c["limit"]), bool(c["passed"]), str(c["text"]))
                                    for c in record.get("checks", [])),
                       notes=tuple(str(n) for n in record.get("notes", [])),
                       details=dict(record.get("details", {})))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise GeometryError(f"{GEOMETRY_FILE}: expected a geometry record "
                                f"(rotation_deg, transpose, aberrations_A, checks), could not "
                                f"read it ({exc!r})") from None


def _wrap_deg(angle: float) -> float:
    return (angle + 180.0) % 360.0 - 180.0


def tcbf_config(settings: GeometrySettings) -> dict[str, Any]:
    """The ``tcbf`` direct method's configuration of the step: both transposes tried, C10,
    C12a and C12b fitted, then ``settings.tcbf``."""
    return {"type": "tcbf", "transpose": None, "fit_aberrations": list(APPLIED_ABERRATIONS),
            **settings.tcbf}


def find_geometry(dataset: Any, experiment: Experiment, settings: GeometrySettings,
                  device: Any = None, registry: Any = None) -> GeometryFindings:
    """Run tcBF (and DPC near focus) on ``dataset`` and judge the result (see the module
    docstring). ``experiment``: what the metadata and configuration say (its rotation is the
    prior of the 180-degree choice and the reference of the metadata notes)."""
    from ptyframe.apps.direct import run_direct
    from ptyframe.core.device import Device

    if registry is None:
        from ptyframe.registry.loader import load_registry

        registry = load_registry()
    device = device if device is not None else Device("auto")
    try:
        result = run_direct(tcbf_config(settings), dataset, experiment, device=device,
                            registry=registry)
    except ValueError as exc:
        raise GeometryError(f"geometry: tcBF could not measure the parallax ({exc}); give the "
                            "geometry explicitly and run with --geometry off") from None
    values = result.values
    transposed = bool(values.get("transpose", False))
    group_k = np.asarray(result.arrays["group_k_inv_A"], dtype=float)
    k_det = group_k[:, ::-1] if transposed else group_k  # the frame of the data as read
    fit = fit_parallax(np.asarray(result.arrays["shifts_A"], dtype=float), k_det,
                       experiment.wavelength_A, float(values["rotation_deg"]))
    aberrations = {k: float(v) for k, v in values["aberrations_A"].items()
                   if k in APPLIED_ABERRATIONS}
    step = float(np.mean(experiment.scan_step_yx_A))
    checks = _checks(fit, values, aberrations, step, settings)
    details: dict[str, Any] = {
        "parallax_fit": attrs.asdict(fit),
        "tcbf": {k: values.get(k) for k in ("rotation_deg", "transpose", "residual_rms_A",
                                             "residual_rms_A_by_transpose", "aberrations_A")},
        "tcbf_time_s": result.timings_s.get("run_direct_total"),
        "scan_step_A": step,
    }
    uncertainties = values.get("uncertainties")
    if uncertainties:
        details["tcbf_uncertainties"] = uncertainties
    rotation = float(values["rotation_deg"])
    blur_steps = abs(aberrations.get("C10", 0.0)) * experiment.convergence_angle_mrad * 1e-3 \
        / step
    dpc_hint = None
    if settings.dpc == "always" or (settings.dpc == "auto"
                                    and blur_steps <= NEAR_FOCUS_BLUR_STEPS):
        dpc_check, dpc_details, dpc_hint = _dpc_cross_check(
            dataset, experiment, device, registry, rotation, transposed, fit, settings)
        details["dpc"] = dpc_details
        if dpc_check is not None:
            checks.append(dpc_check)
    notes = _metadata_notes(experiment, rotation, transposed, aberrations)
    if dpc_hint:
        notes.append(dpc_hint)
    return GeometryFindings(rotation_deg=rotation, transpose=transposed,
                            aberrations_A=aberrations, checks=tuple(checks), notes=tuple(notes),
                            details=details)


def _checks(fit: ParallaxFit, values: Mapping[str, Any], aberrations: Mapping[str, float],
            step: float, settings: GeometrySettings) -> list[Check]:
    c10 = abs(aberrations.get("C10", fit.c10_A))
    residual_steps = fit.residual_rms_A / step
    defocus_sigma = fit.c10_sigma_A / c10 if c10 > 0 else math.inf
    checks = [
        Check("shift_precision", residual_steps, settings.max_residual_steps,
              residual_steps <= settings.max_residual_steps,
              f"parallax shifts measured to {residual_steps:.2f} scan steps RMS (limit "
              f"{settings.max_residual_steps:g}; {fit.n_shifts} shifts, parallax RMS "
              f"{fit.parallax_rms_A / step:.2f} steps)"),
        Check("explained_variance", fit.explained, settings.min_explained,
              fit.explained >= settings.min_explained,
              f"the parallax fit explains {100 * fit.explained:.1f} % of the shift variance "
              f"(limit {100 * settings.min_explained:g} %)"),
        Check("rotation", fit.rotation_sigma_deg, settings.max_rotation_sigma_deg,
              fit.rotation_sigma_deg <= settings.max_rotation_sigma_deg,
              f"rotation standard error {fit.rotation_sigma_deg:.2g} deg (limit "
              f"{settings.max_rotation_sigma_deg:g})"),
        Check("defocus", defocus_sigma, settings.max_defocus_sigma,
              defocus_sigma <= settings.max_defocus_sigma,
              f"C10 standard error {fit.c10_sigma_A:.2g} Å = {100 * defocus_sigma:.2g} % of "
              f"|C10| (limit {100 * settings.max_defocus_sigma:g} %)"),
    ]
    transposed = bool(values.get("transpose", False))
    by = values.get("residual_rms_A_by_transpose") or {}
    margin = math.nan
    if len(by) == 2:
        best, other = float(by[str(transposed)]), float(by[str(not transposed)])
        margin = (other - best) / other if other > 0 else 0.0
    agree = fit.transpose == transposed
    passed = (agree and fit.astigmatism_ratio <= settings.max_astigmatism_ratio
              and (math.isnan(margin) or margin >= settings.min_transpose_margin))
    margin_text = (f", residual margin between the two tcBF fits {100 * margin:.0f} % (limit "
                   f"{100 * settings.min_transpose_margin:g} %)" if not math.isnan(margin)
                   else ", one transpose fitted")
    checks.append(Check(
        "transpose", fit.astigmatism_ratio, settings.max_astigmatism_ratio, passed,
        f"transpose {'found' if transposed else 'not found'}: |C12|/|C10| "
        f"{fit.astigmatism_ratio:.2f} (limit {settings.max_astigmatism_ratio:g})"
        f"{margin_text}{'' if agree else '; the linear fit prefers the other transpose'}"))
    return checks


def _dpc_cross_check(dataset: Any, experiment: Experiment, device: Any, registry: Any,
                     rotation: float, transposed: bool, fit: ParallaxFit,
                     settings: GeometrySettings
                     ) -> tuple[Check | None, dict[str, Any], str | None]:
    """DPC's curl-free rotation against tcBF's: a check when DPC decides its transpose clearly
    (curl fractions differ by a factor 2), else a remark (DPC defers to tcBF)."""
    from ptyframe.apps.direct import run_direct

    result = run_direct({"type": "dpc", "rotation_guess_deg": rotation, "transpose": None},
                        dataset, experiment, device=device, registry=registry)
    v = result.values
    dpc_rotation, dpc_transpose = float(v["rotation_deg"]), bool(v["transpose"])
    fractions = {str(k): float(f) for k, f in (v.get("curl_fraction_by_transpose") or {}).items()}
    own, other = fractions.get(str(dpc_transpose)), fractions.get(str(not dpc_transpose))
    clear = own is not None and other is not None and own < 0.5 * other
    details = {"rotation_deg": dpc_rotation, "transpose": dpc_transpose,
               "curl_fraction_by_transpose": fractions, "decided": clear}
    hint = (f"DPC (curl-free COM) finds scan rotation {dpc_rotation:.2f} deg, transpose "
            f"{dpc_transpose}{'' if clear else ' (ambiguous: its curl fractions are close)'}")
    if not clear:
        return None, details, hint + "; deferring to tcBF"
    difference = abs(_wrap_deg(dpc_rotation - rotation))
    limit = max(settings.max_dpc_disagreement_deg, 3.0 * fit.rotation_sigma_deg)
    passed = difference <= limit and dpc_transpose == transposed
    check = Check("dpc_agreement", difference, limit, passed,
                  f"DPC rotation {dpc_rotation:.2f} deg (transpose {dpc_transpose}) differs "
                  f"from tcBF by {difference:.2f} deg (limit {limit:.2g})")
    return check, details, hint


def _metadata_notes(experiment: Experiment, rotation: float, transposed: bool,
                    aberrations: Mapping[str, float]) -> list[str]:
    notes = []
    d_rot = _wrap_deg(rotation - experiment.scan_rotation_deg)
    if abs(d_rot) > METADATA_ROTATION_DEG:
        notes.append(f"the metadata say scan_rotation_deg {experiment.scan_rotation_deg:g}, "
                     f"the data {rotation:.2f} deg ({d_rot:+.1f} deg)")
    found = -aberrations.get("C10", 0.0)
    given = experiment.defocus_A + 0.0
    # below step / alpha the parallax at the aperture edge changes by less than a scan step
    floor = float(np.mean(experiment.scan_step_yx_A)) / (experiment.convergence_angle_mrad
                                                         * 1e-3)
    if abs(found - given) > max(METADATA_DEFOCUS_FRACTION * max(abs(found), abs(given)),
                                floor):
        notes.append(f"the metadata say defocus_A {given:g}, the data {found:.1f} Å "
                     f"(off by more than {100 * METADATA_DEFOCUS_FRACTION:g} %)")
    if transposed:
        notes.append("the detector axes are transposed against the scan: the data are read "
                     "with [data] preprocessing transpose toggled")
    return notes


def require_confidence(findings: GeometryFindings, settings: GeometrySettings) -> None:
    """Raise :class:`GeometryError` naming what is uncertain, unless confident or forced."""
    if findings.confident or settings.force:
        return
    uncertain = "; ".join(c.text for c in findings.failed)
    hint = next((n for n in findings.notes if n.startswith("DPC")), None)
    raise GeometryError(
        f"geometry: not confident in the geometry found (rotation {findings.rotation_deg:.2f} "
        f"deg, transpose {findings.transpose}, defocus {findings.defocus_A:.1f} Å): {uncertain}"
        f"{f'. {hint}' if hint else ''}. Give the geometry explicitly ([experiment] "
        f"scan_rotation_deg and defocus_A, [data] preprocessing transpose) and run with "
        f"--geometry off, or apply these values anyway with --force-geometry "
        f"(geometry.force = true)")


def apply_geometry(config: Mapping[str, Any], findings: GeometryFindings,
                   experiment: Experiment, apply: tuple[str, ...] = APPLICABLE
                   ) -> dict[str, Any]:
    """A copy of ``config`` with the findings named in ``apply`` applied: ``[experiment]``
    scan_rotation_deg ("rotation") and aberrations (``experiment``'s, with C10 ("defocus") and
    C12a, C12b ("astigmatism") replaced; ``defocus_A`` dropped) and, when transposed,
    ``[data] preprocessing transpose`` toggled ("transpose")."""
    out = json.loads(json.dumps(config))
    section = dict(out.get("experiment") or {})
    replaced = {k: v for k, v in findings.aberrations_A.items()
                if ("defocus" in apply and k == "C10")
                or ("astigmatism" in apply and k in ("C12a", "C12b"))}
    if replaced:
        section.pop("defocus_A", None)
        aberrations = dict(experiment.aberrations)
        aberrations.update(replaced)
        section["aberrations"] = aberrations
    if "rotation" in apply:
        section["scan_rotation_deg"] = float(findings.rotation_deg)
    out["experiment"] = section
    if findings.transpose and "transpose" in apply:
        data = dict(out.get("data") or {})
        pre = dict(data.get("preprocessing") or {})
        pre["transpose"] = not bool(pre.get("transpose", False))
        data["preprocessing"] = pre
        out["data"] = data
    return out


def write_geometry(folder: str | Path, findings: GeometryFindings) -> Path:
    """Record the findings in ``folder/geometry.json`` (atomically)."""
    return atomic_write_json(Path(folder) / GEOMETRY_FILE,
                             {"format": "ptyframe.geometry", "version": 1,
                              "findings": findings.to_record()})


def read_geometry(folder: str | Path) -> GeometryFindings | None:
    """The findings recorded in ``folder`` (None: none)."""
    path = Path(folder) / GEOMETRY_FILE
    if not path.is_file() or path.is_symlink():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GeometryError(f"{path}: expected a JSON geometry record, could not read it "
                            f"({exc})") from None
    if not isinstance(record, dict) or record.get("format") != "ptyframe.geometry":
        raise GeometryError(f"{path}: expected format 'ptyframe.geometry', found "
                            f"{record.get('format') if isinstance(record, dict) else record!r}")
    return GeometryFindings.from_record(record.get("findings", {}))


def remove_geometry(folder: str | Path) -> None:
    """Remove a recorded geometry (a fresh run without the geometry step)."""
    path = Path(folder) / GEOMETRY_FILE
    if path.is_file() or path.is_symlink():
        path.unlink()


def report(findings: GeometryFindings, reused: bool = False) -> None:
    """Print the findings; metadata disagreements also as warnings."""
    head = "using the geometry recorded in the output folder\n" if reused else ""
    print("\n".join(f"ptyframe: {line}" for line in (head + findings.format()).splitlines()),
          flush=True)
    if not reused:
        log = logging.getLogger("ptyframe")
        for note in findings.notes:
            if note.startswith("the metadata say") or note.startswith("the detector axes"):
                log.warning("geometry: %s", note)
