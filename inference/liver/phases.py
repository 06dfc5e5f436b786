"""Which series of a liver study is which: the DCE-MRI phases, or the CT series.

Scanners do not label contrast phases in one standard attribute, so a study is
read the way a radiographer would read it, from the headers only:

1. **Series descriptions**, matched against one regular expression per phase
   (:class:`PhaseRules`; a site overrides them with the pipeline option
   ``phase_regex``, e.g. ``{"arterial": "(?i)hap|art"}``). Series that match
   the ``exclude`` rule (T2, diffusion, subtractions, localisers…) are never
   phases.
2. **Contrast timing**: ``AcquisitionTime`` minus ``ContrastBolusStartTime``
   places a series in the pre-contrast, arterial, portal or delayed window; a
   series without ``ContrastBolusAgent`` acquired before every contrast
   series is the pre-contrast one.
3. **Acquisition order**: when as many unassigned T1 series remain as phases
   are missing, they fill the missing phases in ``AcquisitionTime`` order.

A single 4D series (several ``TemporalPositionIdentifier`` values, or slice
positions repeated) supplies all phases at once: its time points are placed
by contrast timing when the bolus start is known, else in order when there
are exactly as many time points as phases.

When a phase cannot be found the study fails with a :class:`PhaseIdentificationError`
that names the missing phase and lists the study's series, so the
administrator can fix the route's ``phase_regex``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from dicom_io.reader import tm_seconds
from inference.base import PipelineInputError, SeriesInput

log = logging.getLogger("pacsnode.liver")

#: The DCE-MRI phases the liver models take, in acquisition order.
DCE_PHASES: tuple[str, ...] = ("pre", "arterial", "portal", "delayed")
#: The input of a single-series CT model: one (portal-venous) CT series, whatever its description.
SINGLE_CT_CHANNELS: tuple[str, ...] = ("ct",)
#: The phases of a multi-phase liver CT the committed multi-phase model reads, in acquisition order.
CT_MULTIPHASE_PHASES: tuple[str, ...] = ("arterial", "portal")

# Letters-only word boundaries: scanners write "t1_vibe_art", where \b would not split at "_".
_B = r"(?<![a-z])"
_E = r"(?![a-z])"

DEFAULT_PHASE_PATTERNS: dict[str, str] = {
    "pre": rf"(?i){_B}(pre|precontrast|native|nativ|unenhanced|non[-_ ]?contrast|plain|mask){_E}",
    "arterial": rf"(?i){_B}(art|arterial|arteriell|hap|late[-_ ]?art(erial)?|early[-_ ]?art(erial)?){_E}",
    "portal": rf"(?i){_B}(portal|pv|pvp|venous|portal[-_ ]?venous|portalvenous){_E}",
    "delayed": rf"(?i){_B}(delayed|delay|equil|equilibrium|transitional|late){_E}(?![-_ ]?art)",
}
#: Series that are never DCE phases or the CT series (other sequences, derived images, localisers).
DEFAULT_EXCLUDE_PATTERN = (
    rf"(?i){_B}(t2|haste|dwi|diff|adc|trace|sub|subtraction|mip|mpr|loc|localizer|localiser|scout|survey|"
    rf"topogram|mrcp|in[-_ ]?phase|opp(osed)?[-_ ]?phase|hbp|hepatobiliary|dose[-_ ]?report|seg)"
    rf"{_E}"
)
#: A T1-weighted dynamic series (used only to decide which unmatched series take part in timing rules).
DEFAULT_T1_PATTERN = rf"(?i){_B}(t1|vibe|lava|thrive|dce|dyn|dynamic|flash|gre|starvibe|tw[-_ ]?vibe){_E}"


@dataclass(frozen=True)
class PhaseRules:
    """How phases are recognised; every field can be set from pipeline options (:meth:`from_options`).

    Timing windows are seconds after ``ContrastBolusStartTime``: arterial from
    ``arterial_start_s``, portal from ``portal_start_s``, delayed from
    ``delayed_start_s``; earlier than ``arterial_start_s`` is pre-contrast.
    """

    patterns: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_PHASE_PATTERNS))
    exclude: str = DEFAULT_EXCLUDE_PATTERN
    t1: str = DEFAULT_T1_PATTERN
    arterial_start_s: float = 0.0
    portal_start_s: float = 45.0
    delayed_start_s: float = 120.0

    def __post_init__(self) -> None:
        for name, pattern in [*self.patterns.items(), ("exclude", self.exclude), ("t1", self.t1)]:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise PipelineInputError(f"phase rule {name!r}: {pattern!r} is not a valid regular expression "
                                         f"({exc})") from exc
        if not self.arterial_start_s < self.portal_start_s < self.delayed_start_s:
            raise PipelineInputError("phase timing windows must satisfy arterial_start_s < portal_start_s < "
                                     "delayed_start_s")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> PhaseRules:
        """Rules from pipeline options: ``phase_regex`` (phase → regex, merged over the defaults),
        ``exclude_regex``, ``t1_regex``, ``arterial_start_s``, ``portal_start_s``, ``delayed_start_s``."""
        rules = cls()
        overrides = options.get("phase_regex") or {}
        if not isinstance(overrides, Mapping):
            raise PipelineInputError("option phase_regex must map phase names to regular expressions, e.g. "
                                     '{"arterial": "(?i)art"}')
        unknown = set(overrides) - set(rules.patterns)
        if unknown:
            raise PipelineInputError(f"option phase_regex names unknown phase(s) {sorted(unknown)}; "
                                     f"phases are {list(rules.patterns)}")
        changes: dict[str, Any] = {"patterns": {**rules.patterns, **{k: str(v) for k, v in overrides.items()}}}
        if options.get("exclude_regex") is not None:
            changes["exclude"] = str(options["exclude_regex"])
        if options.get("t1_regex") is not None:
            changes["t1"] = str(options["t1_regex"])
        for name in ("arterial_start_s", "portal_start_s", "delayed_start_s"):
            if options.get(name) is not None:
                changes[name] = float(options[name])
        return replace(rules, **changes)

    def phase_by_delay(self, delay_s: float) -> str:
        """The phase whose window holds *delay_s* seconds after the bolus start."""
        if delay_s < self.arterial_start_s:
            return "pre"
        if delay_s < self.portal_start_s:
            return "arterial"
        if delay_s < self.delayed_start_s:
            return "portal"
        return "delayed"


@dataclass(frozen=True)
class SeriesFacts:
    """What the headers of one series say about its role in a liver study."""

    series: SeriesInput
    modality: str
    description: str
    image_type: tuple[str, ...]
    contrast_agent: str | None
    #: ContrastBolusStartTime, seconds since midnight.
    bolus_start_s: float | None
    #: Earliest AcquisitionTime of each time point (one entry for a 3D series), seconds since midnight.
    time_point_starts_s: tuple[float | None, ...]
    frame_of_reference_uid: str | None
    #: EchoTime (ms) and ScanningSequence (e.g. ("SE",), ("EP",), ("GR",)) as the first instance states them.
    echo_time_ms: float | None = None
    scanning_sequence: tuple[str, ...] = ()
    sequence_name: str = ""
    #: Whether the slices are axial (slice normal within ~37° of the patient's z axis); None when not stated.
    axial: bool | None = None
    #: Diffusion-weighted images: path → b-value (s/mm²), from DiffusionBValue (top level or the MR
    #: Diffusion Sequence) or the Siemens SequenceName ("*ep_b800t").
    b_values: Mapping[Path, float] = field(default_factory=dict)
    #: Images that are isotropic (trace) diffusion images (DiffusionDirectionality ISOTROPIC, ImageType TRACEW).
    isotropic_paths: frozenset[Path] = frozenset()

    @property
    def label(self) -> str:
        number = f" #{self.series.number}" if self.series.number is not None else ""
        return f"{self.description or '(no description)'!r}{number}"

    @property
    def time_points(self) -> int:
        return len(self.time_point_starts_s)

    @property
    def acquisition_s(self) -> float | None:
        return self.time_point_starts_s[0] if self.time_point_starts_s else None


@dataclass(frozen=True)
class PhaseSource:
    """Where one phase's images are: a series, and for a 4D series the time point (0-based, in time order)."""

    phase: str
    series: SeriesInput
    time_point: int | None
    #: Why this series was taken for the phase, for the log and the report.
    reason: str


@dataclass(frozen=True)
class LiverStudyInputs:
    """The identified inputs of a liver study: the four DCE phases (MR) or the CT series."""

    modality: Literal["MR", "CT"]
    phases: Mapping[str, PhaseSource]

    @property
    def is_4d(self) -> bool:
        return any(source.time_point is not None for source in self.phases.values())


class PhaseIdentificationError(PipelineInputError):
    """The study lacks a phase the model needs, or its phases cannot be told apart."""


_HEADER_TAGS = ["Modality", "SeriesDescription", "ImageType", "ContrastBolusAgent", "ContrastBolusStartTime",
                "AcquisitionTime", "AcquisitionDateTime", "ContentTime", "TemporalPositionIdentifier",
                "NumberOfTemporalPositions", "ImagePositionPatient", "FrameOfReferenceUID", "TriggerTime",
                "NumberOfFrames", "EchoTime", "ScanningSequence", "SequenceName", "ImageOrientationPatient",
                "DiffusionBValue", "DiffusionDirectionality", "MRDiffusionSequence"]
# Siemens writes the b-value into SequenceName: "*ep_b800t", "ep_b0", "*ep_b1000#1".
_SIEMENS_B_VALUE = re.compile(r"(?i)ep_b(\d{1,5})")


def _strings(value: object) -> tuple[str, ...]:
    """A CS value (single or multi-valued) as upper-case strings."""
    if value in (None, ""):
        return ()
    if isinstance(value, str):
        return tuple(v.strip().upper() for v in value.split("\\") if v.strip())
    return tuple(str(v).strip().upper() for v in value)  # type: ignore[attr-defined]


def _diffusion(ds: Any, image_type: tuple[str, ...]) -> tuple[float | None, bool]:
    """The b-value of one image (None when it states none) and whether it is an isotropic (trace) image."""
    value = ds.get("DiffusionBValue")
    directionality = str(ds.get("DiffusionDirectionality", "") or "").upper()
    if value in (None, "") and ds.get("MRDiffusionSequence"):
        item = ds.MRDiffusionSequence[0]
        value = item.get("DiffusionBValue")
        directionality = directionality or str(item.get("DiffusionDirectionality", "") or "").upper()
    b_value: float | None = None
    if value not in (None, ""):
        try:
            b_value = float(value)
        except (TypeError, ValueError):
            b_value = None
    if b_value is None:
        match = _SIEMENS_B_VALUE.search(str(ds.get("SequenceName", "") or ""))
        b_value = float(match.group(1)) if match else None
    isotropic = directionality == "ISOTROPIC" or bool({"TRACEW", "TRACE"} & set(image_type))
    return b_value, isotropic


def _clock_seconds(value: object) -> float | None:
    """Seconds since midnight of a TM value (or the time part of a DT)."""
    text = str(value or "").strip().replace(":", "")
    if not text:
        return None
    if len(text) > 8 and text[:8].isdigit() and len(text) >= 14:  # DT: YYYYMMDDHHMMSS…
        text = text[8:]
    for sign in "+-":
        if sign in text:
            text = text[: text.index(sign)]
    return tm_seconds(text)


def read_series_facts(series: SeriesInput) -> SeriesFacts:
    """The headers of every instance of *series* summarised (no pixel data is read)."""
    agent: str | None = None
    bolus: float | None = None
    image_type: tuple[str, ...] = ()
    frame_of_reference: str | None = None
    modality = (series.modality or "").upper()
    description = series.description or ""
    by_temporal_position: dict[int, list[float]] = {}
    by_slice_position: dict[tuple[float, ...], list[float]] = {}
    untimed_repeats: dict[tuple[float, ...], int] = {}
    declared_positions = 1
    echo_time: float | None = None
    scanning: tuple[str, ...] = ()
    sequence_name = ""
    axial: bool | None = None
    b_values: dict[Path, float] = {}
    isotropic: set[Path] = set()
    for path in series.paths:
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        except (InvalidDicomError, OSError, EOFError, ValueError):
            continue
        modality = modality or str(ds.get("Modality", "") or "").upper()
        description = description or str(ds.get("SeriesDescription", "") or "")
        if not image_type and ds.get("ImageType"):
            value = ds.ImageType
            image_type = (str(value),) if isinstance(value, str) else tuple(str(v) for v in value)
        if echo_time is None and ds.get("EchoTime") not in (None, ""):
            echo_time = float(ds.EchoTime)
        scanning = scanning or _strings(ds.get("ScanningSequence"))
        sequence_name = sequence_name or str(ds.get("SequenceName", "") or "")
        if axial is None and ds.get("ImageOrientationPatient") is not None and len(ds.ImageOrientationPatient) == 6:
            row, column = [float(v) for v in ds.ImageOrientationPatient[:3]], [float(v) for v in
                                                                              ds.ImageOrientationPatient[3:]]
            normal_z = row[0] * column[1] - row[1] * column[0]
            axial = abs(normal_z) > 0.8
        b_value, is_trace = _diffusion(ds, _strings(ds.get("ImageType")))
        if b_value is not None:
            b_values[Path(path)] = b_value
        if is_trace:
            isotropic.add(Path(path))
        agent = agent or (str(ds.get("ContrastBolusAgent", "") or "").strip() or None)
        bolus = bolus if bolus is not None else _clock_seconds(ds.get("ContrastBolusStartTime"))
        frame_of_reference = frame_of_reference or (str(ds.get("FrameOfReferenceUID", "") or "") or None)
        declared_positions = max(declared_positions, int(ds.get("NumberOfTemporalPositions", 1) or 1))
        clock = _clock_seconds(ds.get("AcquisitionDateTime")) if ds.get("AcquisitionDateTime") else None
        clock = clock if clock is not None else _clock_seconds(ds.get("AcquisitionTime") or ds.get("ContentTime"))
        temporal = ds.get("TemporalPositionIdentifier")
        if temporal not in (None, ""):
            by_temporal_position.setdefault(int(temporal), [])
            if clock is not None:
                by_temporal_position[int(temporal)].append(clock)
        elif ds.get("ImagePositionPatient") is not None:
            where = tuple(round(float(v), 2) for v in ds.ImagePositionPatient)
            by_slice_position.setdefault(where, [])
            if clock is not None:
                by_slice_position[where].append(clock)
            else:
                untimed_repeats[where] = untimed_repeats.get(where, 0) + 1
    starts = _time_point_starts(by_temporal_position, by_slice_position, untimed_repeats)
    if len(starts) == 1 and declared_positions > 1:  # an enhanced multi-frame 4D object: order only
        starts = tuple([starts[0]] + [None] * (declared_positions - 1))
    return SeriesFacts(series=series, modality=modality, description=description, image_type=image_type,
                       contrast_agent=agent, bolus_start_s=bolus, time_point_starts_s=starts,
                       frame_of_reference_uid=frame_of_reference, echo_time_ms=echo_time, scanning_sequence=scanning,
                       sequence_name=sequence_name, axial=axial, b_values=b_values,
                       isotropic_paths=frozenset(isotropic))


def _time_point_starts(by_temporal_position: Mapping[int, list[float]],
                       by_slice_position: Mapping[tuple[float, ...], list[float]],
                       untimed_repeats: Mapping[tuple[float, ...], int]) -> tuple[float | None, ...]:
    """Earliest time of each time point: by TemporalPositionIdentifier, else the k-th repeat
    (in time order) of every slice position is time point k."""
    if by_temporal_position:
        return tuple(min(times) if times else None
                     for _, times in sorted(by_temporal_position.items()))
    if untimed_repeats:
        return tuple([None] * max(untimed_repeats.values()))
    repeats = max((len(times) for times in by_slice_position.values()), default=0)
    if repeats <= 1:
        times = [t for values in by_slice_position.values() for t in values]
        return (min(times) if times else None,)
    ordered = [sorted(times) for times in by_slice_position.values()]
    return tuple(min(times[k] for times in ordered if len(times) > k) for k in range(repeats))


def is_excluded(facts: SeriesFacts, rules: PhaseRules) -> bool:
    """Whether the series can never be a phase (localiser, subtraction, MIP, or the exclude rule)."""
    kinds = {v.upper() for v in facts.image_type}
    if kinds & {"LOCALIZER", "SUBTRACTION", "PROJECTION IMAGE", "MIP"}:
        return True
    return re.search(rules.exclude, facts.description) is not None


def describe_series(all_facts: Sequence[SeriesFacts]) -> str:
    """The study's series as messages list them: description, number and modality."""
    return ", ".join(f"{f.label} ({f.modality or '?'})" for f in all_facts) or "(none)"


def choose_modality(facts: Sequence[SeriesFacts], rules: PhaseRules, modality: str | None = None) -> str:
    """"MR" or "CT": *modality* when given, else MR when the study has MR image series that are not excluded."""
    wanted = (modality or "").upper() or None
    if wanted not in (None, "MR", "CT"):
        raise PhaseIdentificationError(f"modality {modality!r} is not supported; use 'mr' or 'ct'")
    if wanted:
        return wanted
    if any(f.modality == "MR" and not is_excluded(f, rules) for f in facts):
        return "MR"
    if any(f.modality == "CT" and not is_excluded(f, rules) for f in facts):
        return "CT"
    raise PhaseIdentificationError(
        f"the study has neither usable MR nor CT image series; series: {describe_series(facts)}")


def identify_liver_study(series: Sequence[SeriesInput], rules: PhaseRules | None = None,
                         modality: str | None = None, phases: Sequence[str] | None = None) -> LiverStudyInputs:
    """The inputs of a liver study; ``modality`` forces "MR" or "CT" (see :func:`choose_modality`).

    *phases* are what the model reads: DCE phases (MR; all four when None), or for CT
    :data:`SINGLE_CT_CHANNELS` (one CT series, the default) or the contrast phases of a
    multi-phase CT, found as the MR phases are.
    """
    rules = rules or PhaseRules()
    facts = [read_series_facts(s) for s in series if s.paths]
    if choose_modality(facts, rules, modality) == "CT":
        return identify_ct_inputs(facts, rules, SINGLE_CT_CHANNELS if phases is None else phases)
    return LiverStudyInputs("MR", identify_dce_phases(facts, rules, DCE_PHASES if phases is None else phases))


def identify_ct_inputs(facts: Sequence[SeriesFacts], rules: PhaseRules,
                       phases: Sequence[str] = SINGLE_CT_CHANNELS) -> LiverStudyInputs:
    """What a CT model reads: one CT series for :data:`SINGLE_CT_CHANNELS`, else the contrast *phases*
    of a multi-phase CT; raises when they cannot be found."""
    if tuple(phases) == SINGLE_CT_CHANNELS:
        return LiverStudyInputs("CT", {"ct": identify_ct_series(facts, rules)})
    return LiverStudyInputs("CT", identify_dce_phases(facts, rules, phases, modality="CT"))


def identify_ct_series(facts: Sequence[SeriesFacts], rules: PhaseRules) -> PhaseSource:
    """The CT series to segment: a portal-venous one when the descriptions say so, else the largest."""
    candidates = [f for f in facts if f.modality == "CT" and not is_excluded(f, rules)]
    if not candidates:
        raise PhaseIdentificationError(f"no CT image series found among series: {describe_series(facts)}")
    portal = [f for f in candidates if re.search(rules.patterns.get("portal", "$^"), f.description)]
    pool = portal or candidates
    chosen = max(pool, key=lambda f: len(f.series.paths))
    why = "description matches the portal rule" if portal else "the CT series with the most images"
    return PhaseSource("ct", chosen.series, None, f"{chosen.label}: {why}")


def identify_dce_phases(facts: Sequence[SeriesFacts], rules: PhaseRules,
                        phases: Sequence[str] = DCE_PHASES, modality: str = "MR") -> dict[str, PhaseSource]:
    """Each of *phases* mapped to its series (or 4D time point); raises when one cannot be found."""
    found, problem = find_dce_phases(facts, rules, phases, modality)
    if problem is not None:
        raise PhaseIdentificationError(problem)
    log.info("liver contrast phases identified", extra={
        "modality": modality, "phases": {p: s.reason for p, s in found.items()}})
    return found


def find_dce_phases(facts: Sequence[SeriesFacts], rules: PhaseRules, phases: Sequence[str] = DCE_PHASES,
                    modality: str = "MR") -> tuple[dict[str, PhaseSource], str | None]:
    """The *phases* that can be found among the *modality* series, and when some cannot, a message
    naming the first missing one and the study's series (what :func:`identify_dce_phases` raises).
    For callers that can do without a phase.

    MR phases are T1-weighted series; for CT ("CT") every image series that the exclude rule leaves
    is a candidate (a multi-phase liver CT: unenhanced, arterial, portal-venous, delayed)."""
    candidates = [f for f in facts if f.modality == modality and not is_excluded(f, rules)]
    if not candidates:
        what = "a DCE phase" if modality == "MR" else "a contrast phase"
        return {}, (f"no {modality} series usable as {what} among series: {describe_series(facts)} (T2, "
                    "diffusion, subtraction and localiser series are excluded by the exclude_regex rule)")
    dynamic = [f for f in candidates if f.time_points >= len(phases)]
    described = [f for f in candidates if any(re.search(rules.patterns[p], f.description) for p in phases)]
    if dynamic and len(described) < len(phases):
        return _phases_of_4d(max(dynamic, key=lambda f: (f.time_points, len(f.series.paths))), rules, phases)

    found: dict[str, PhaseSource] = {}
    used: set[str] = set()
    # 1. Descriptions: a series matching exactly one phase's rule.
    for phase in phases:
        matching = [f for f in candidates if f.time_points == 1 and _only_match(f, rules, phases) == phase]
        if matching:
            chosen = max(matching, key=lambda f: (len(f.series.paths), f.acquisition_s or 0.0))
            found[phase] = PhaseSource(phase, chosen.series, None,
                                       f"{chosen.label}: description matches the {phase} rule")
            used.add(chosen.series.series_uid)
    # 2. Contrast timing of the remaining T1 series.
    remaining = [f for f in candidates if f.series.series_uid not in used and f.time_points == 1
                 and (modality == "CT" or re.search(rules.t1, f.description) or not f.description
                      or _only_match(f, rules, phases) is None and f.bolus_start_s is not None)]
    for f in sorted(remaining, key=lambda f: f.acquisition_s or 0.0):
        phase = _phase_by_contrast(f, rules, candidates)
        if phase is not None and phase in phases and phase not in found:
            found[phase] = PhaseSource(phase, f.series, None, f"{f.label}: {_timing_reason(f, phase)}")
            used.add(f.series.series_uid)
    # 3. Acquisition order, when exactly as many timed series remain as phases are missing.
    missing = [p for p in phases if p not in found]
    left = [f for f in remaining if f.series.series_uid not in used and f.acquisition_s is not None]
    if missing and len(left) == len(missing) and _order_fits(found, left, missing, phases, candidates):
        for phase, f in zip(missing, sorted(left, key=lambda f: f.acquisition_s or 0.0), strict=True):
            found[phase] = PhaseSource(phase, f.series, None, f"{f.label}: acquisition order")
    missing = [p for p in phases if p not in found]
    result = {p: found[p] for p in phases if p in found}
    if missing:
        assigned = ", ".join(f"{p}: {found[p].reason.split(':')[0]}" for p in phases if p in found) or "none"
        return result, (
            f"no {missing[0]} phase found among series: {describe_series(facts)}"
            f"{' (also missing: ' + ', '.join(missing[1:]) + ')' if len(missing) > 1 else ''}; "
            f"phases found: {assigned}. Set the route option phase_regex "
            f"(e.g. {{\"{missing[0]}\": \"<regex matching its SeriesDescription>\"}}) if the series is there")
    return result, None


def _only_match(f: SeriesFacts, rules: PhaseRules, phases: Sequence[str]) -> str | None:
    hits = [p for p in phases if re.search(rules.patterns[p], f.description)]
    return hits[0] if len(hits) == 1 else None


def _phase_by_contrast(f: SeriesFacts, rules: PhaseRules, candidates: Sequence[SeriesFacts]) -> str | None:
    if f.bolus_start_s is not None and f.acquisition_s is not None:
        return rules.phase_by_delay(_delay(f.acquisition_s, f.bolus_start_s))
    if f.contrast_agent is None and f.acquisition_s is not None:
        enhanced = [c.acquisition_s for c in candidates if c.contrast_agent and c.acquisition_s is not None]
        if enhanced and f.acquisition_s < min(enhanced):
            return "pre"
    return None


def _delay(acquisition_s: float, bolus_start_s: float) -> float:
    delay = acquisition_s - bolus_start_s
    if delay < -12 * 3600:  # acquired after midnight, bolus before
        delay += 24 * 3600
    return delay


def _timing_reason(f: SeriesFacts, phase: str) -> str:
    if f.bolus_start_s is not None and f.acquisition_s is not None:
        return f"acquired {_delay(f.acquisition_s, f.bolus_start_s):.0f} s after ContrastBolusStartTime ({phase})"
    return "no ContrastBolusAgent and acquired before every contrast series (pre)"


def _order_fits(found: Mapping[str, PhaseSource], left: Sequence[SeriesFacts], missing: Sequence[str],
                phases: Sequence[str], candidates: Sequence[SeriesFacts]) -> bool:
    """Whether filling *missing* with *left* in time order keeps every phase in acquisition order."""
    times = {f.series.series_uid: f.acquisition_s for f in candidates}
    slots = dict.fromkeys(phases)
    for phase, source in found.items():
        slots[phase] = times.get(source.series.series_uid)
    for phase, f in zip(missing, sorted(left, key=lambda f: f.acquisition_s or 0.0), strict=True):
        slots[phase] = f.acquisition_s
    ordered = [slots[p] for p in phases]
    if any(t is None for t in ordered):
        return not found  # nothing to contradict: order alone decides
    return all(a < b for a, b in pairwise(ordered))  # type: ignore[operator]


def _phases_of_4d(f: SeriesFacts, rules: PhaseRules,
                  phases: Sequence[str]) -> tuple[dict[str, PhaseSource], str | None]:
    """The phases found as time points of one 4D series, and why the others are missing."""
    starts = f.time_point_starts_s
    result: dict[str, PhaseSource] = {}
    if f.bolus_start_s is not None and all(t is not None for t in starts):
        for index, start in enumerate(starts):
            phase = rules.phase_by_delay(_delay(start, f.bolus_start_s))  # type: ignore[arg-type]
            # The last time point of each window: arterial imaging aims at its end (late arterial).
            if phase in phases and (phase not in result or phase != "pre"):
                result[phase] = PhaseSource(phase, f.series, index,
                                            f"{f.label} time point {index + 1}: {_delay(start, f.bolus_start_s):.0f} s "  # type: ignore[arg-type]
                                            f"after ContrastBolusStartTime")
        missing = [p for p in phases if p not in result]
        found = {p: result[p] for p in phases if p in result}
        if not missing:
            return found, None
        return found, (
            f"no {missing[0]} phase found in the 4D series {f.label}: its {len(starts)} time points lie at "
            f"{', '.join(f'{_delay(t, f.bolus_start_s):.0f}' for t in starts)} s after ContrastBolusStartTime "  # type: ignore[arg-type]
            f"(windows: arterial from {rules.arterial_start_s:g} s, portal from {rules.portal_start_s:g} s, "
            f"delayed from {rules.delayed_start_s:g} s)")
    if len(starts) == len(phases):
        return {p: PhaseSource(p, f.series, i, f"{f.label} time point {i + 1} of {len(starts)} (order)")
                for i, p in enumerate(phases)}, None
    return {}, (
        f"the 4D series {f.label} has {len(starts)} time points but no ContrastBolusStartTime, so its "
        f"{', '.join(phases)} phases cannot be told apart; send the phases as separate series or with the "
        "bolus start time")
