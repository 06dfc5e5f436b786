"""Which series of a liver MR study is which of the six sequences a lesion classifier reads.

The six: T2-weighted, diffusion-weighted (b ≈ 800 s/mm²), and the T1 dynamic
phases pre-contrast, (late) arterial, portal venous and equilibrium
(delayed). Read from the headers only, as a radiographer would:

* **T2**: a SeriesDescription matching the ``t2`` rule (t2, haste, ssfse…),
  else the header facts of a T2-weighted spin echo: ScanningSequence SE or
  RM (not echo planar, not gradient echo), EchoTime of at least
  ``t2_min_echo_time_ms`` (60 ms) and below ``t2_max_echo_time_ms`` (MRCP
  is heavier), no contrast agent. Axial series are preferred to coronal ones.
* **DWI**: images stating a b-value (DiffusionBValue, the MR Diffusion
  Sequence, or the Siemens SequenceName "*ep_b800t"), ImageType
  DIFFUSION/TRACEW, or a description matching the ``dwi`` rule; never ADC,
  FA or exponential maps. Among all diffusion images of the study the b-value
  closest to ``dwi_b_value`` (800) is taken, whether each b-value is its own
  series or one series holds several: the result then names only that
  b-value's images (isotropic/trace ones when the series also has
  directional images), so reading it gives one volume.
* **pre, arterial, portal, delayed**: :func:`inference.liver.phases.find_dce_phases`,
  on the series that are neither T2 nor diffusion (with blank descriptions a
  T2 acquired before the dynamic would otherwise look pre-contrast).

Every rule can be set per route (:meth:`SequenceRules.from_options`). A study
needs at least T2, DWI and the pre-contrast T1; otherwise
:class:`SequenceIdentificationError` names what is missing and lists the
study's series.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from inference.base import PipelineInputError, SeriesInput
from inference.liver.phases import (
    DCE_PHASES,
    PhaseRules,
    PhaseSource,
    SeriesFacts,
    describe_series,
    find_dce_phases,
    read_series_facts,
)

log = logging.getLogger("pacsnode.liver")

#: The six sequences, in the order the classifier takes them.
LESION_SEQUENCES: tuple[str, ...] = ("t2", "dwi", *DCE_PHASES)
#: The least a study must have: T2, diffusion and the pre-contrast T1.
REQUIRED_SEQUENCES: tuple[str, ...] = ("t2", "dwi", "pre")

# Letters-only word boundaries, as in phases.py: "ep2d_diff_b800" must split at "_".
_B = r"(?<![a-z])"
_E = r"(?![a-z])"

DEFAULT_SEQUENCE_PATTERNS: dict[str, str] = {
    # "t2" may run into the next word ("t2tse", "T2W", "t2spair"); T2* and T2 maps are excluded below.
    "t2": rf"(?i)(?<![a-z0-9])t2|{_B}(haste|ssfse|ss[-_ ]?fse|ss[-_ ]?tse|single[-_ ]?shot|blade|propeller){_E}",
    "dwi": rf"(?i){_B}(dwi|diff|diffusion|dwibs|ep2d[-_ ]?diff|trace|tracew|b[-_ ]?\d{{2,4}}){_E}",
}
#: Series that match a rule above but are not that sequence.
DEFAULT_SEQUENCE_EXCLUDE: dict[str, str] = {
    "t2": rf"(?i)t2[-_ ]?(\*|star)|{_B}(map|mapping|mrcp|cholangio\w*|fl2d|gre|flash|dwi|diff|adc|trace|"
          rf"loc|localizer|localiser|scout|survey|sub|mip){_E}",
    "dwi": rf"(?i){_B}(adc|eadc|exp|expadc|exponential|fa|colfa|map|mip|sub|calc){_E}",
}
#: ImageType values of derived diffusion maps (never the DWI input).
_DIFFUSION_MAPS = frozenset({"ADC", "EADC", "FA", "EXP", "EXPONENTIAL", "CALC_BVALUE"})
_NOT_SOURCE_IMAGES = frozenset({"LOCALIZER", "SUBTRACTION", "PROJECTION IMAGE", "MIP"})


class SequenceIdentificationError(PipelineInputError):
    """The study lacks a sequence the lesion classifier needs (T2, diffusion or the pre-contrast T1)."""


@dataclass(frozen=True)
class SequenceRules:
    """How the six sequences are recognised; every field can be set from pipeline options."""

    #: "t2" and "dwi" → regex on SeriesDescription.
    patterns: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_SEQUENCE_PATTERNS))
    #: "t2" and "dwi" → regex of descriptions that are never that sequence.
    exclude: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_SEQUENCE_EXCLUDE))
    #: The b-value (s/mm²) the classifier was built for; the closest one in the study is taken.
    dwi_b_value: float = 800.0
    #: Images below this b-value are not diffusion-weighted enough to stand for the DWI (b = 0 is a T2 EPI).
    dwi_min_b_value: float = 100.0
    #: A spin-echo series with EchoTime in [min, max) ms and no contrast is T2-weighted.
    t2_min_echo_time_ms: float = 60.0
    t2_max_echo_time_ms: float = 400.0
    #: The DCE phase rules (phase_regex, timing windows…), see :class:`PhaseRules`.
    phases: PhaseRules = field(default_factory=PhaseRules)

    def __post_init__(self) -> None:
        for kind, rules in (("sequence_regex", self.patterns), ("sequence_exclude_regex", self.exclude)):
            for name, pattern in rules.items():
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise PipelineInputError(f"{kind} {name!r}: {pattern!r} is not a valid regular expression "
                                             f"({exc})") from exc
        if not 0 < self.dwi_min_b_value <= self.dwi_b_value:
            raise PipelineInputError(f"dwi_b_value ({self.dwi_b_value:g}) must be at least dwi_min_b_value "
                                     f"({self.dwi_min_b_value:g}), which must be positive")
        if not 0 < self.t2_min_echo_time_ms < self.t2_max_echo_time_ms:
            raise PipelineInputError("t2_min_echo_time_ms must be positive and below t2_max_echo_time_ms")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> SequenceRules:
        """Rules from pipeline options: ``sequence_regex`` and ``sequence_exclude_regex`` ({"t2": …, "dwi": …},
        merged over the defaults), ``dwi_b_value``, ``dwi_min_b_value``, ``t2_min_echo_time_ms``,
        ``t2_max_echo_time_ms``, and every option :meth:`PhaseRules.from_options` takes."""
        rules = cls()
        changes: dict[str, Any] = {"phases": PhaseRules.from_options(options)}
        for option, attribute in (("sequence_regex", "patterns"), ("sequence_exclude_regex", "exclude")):
            overrides = options.get(option) or {}
            if not isinstance(overrides, Mapping):
                raise PipelineInputError(f"option {option} must map t2 and/or dwi to regular expressions, e.g. "
                                         '{"t2": "(?i)t2|haste", "dwi": "(?i)dwi|b800"}')
            unknown = set(overrides) - {"t2", "dwi"}
            if unknown:
                raise PipelineInputError(f"option {option} names unknown sequence(s) {sorted(unknown)}; it takes "
                                         "t2 and dwi (the T1 phases take phase_regex)")
            changes[attribute] = {**getattr(rules, attribute), **{k: str(v) for k, v in overrides.items()}}
        for name in ("dwi_b_value", "dwi_min_b_value", "t2_min_echo_time_ms", "t2_max_echo_time_ms"):
            if options.get(name) is not None:
                try:
                    changes[name] = float(options[name])
                except (TypeError, ValueError) as exc:
                    raise PipelineInputError(f"option {name} must be a number, got {options[name]!r}") from exc
        return replace(rules, **changes)


@dataclass(frozen=True)
class LesionStudySequences:
    """The sequences found in a liver MR study, and which of the six are missing."""

    #: Sequence name (from :data:`LESION_SEQUENCES`) → where its images are. The DWI's ``series.paths`` are
    #: only the images of the chosen b-value.
    sequences: Mapping[str, PhaseSource]
    missing: tuple[str, ...]
    #: The b-value of the DWI images taken (None when the headers state none).
    dwi_b_value: float | None = None

    @property
    def has_six(self) -> bool:
        return not self.missing

    @property
    def has_three(self) -> bool:
        """T2, DWI and pre-contrast T1: what the three-sequence model reads."""
        return all(name in self.sequences for name in REQUIRED_SEQUENCES)

    def describe(self) -> str:
        """One line per sequence: which series it is and why, then what is missing."""
        lines = [f"{name}: {self.sequences[name].reason}" for name in LESION_SEQUENCES if name in self.sequences]
        if self.missing:
            lines.append(f"missing: {', '.join(self.missing)}")
        return "\n".join(lines)


def identify_lesion_sequences(series: Sequence[SeriesInput], rules: SequenceRules | None = None
                              ) -> LesionStudySequences:
    """The six sequences of a liver MR study (at least T2, DWI and pre-contrast T1, or it raises)."""
    rules = rules or SequenceRules()
    facts = [read_series_facts(s) for s in series if s.paths]
    mr = [f for f in facts if f.modality == "MR" and not _not_source_images(f)]
    found: dict[str, PhaseSource] = {}
    t2_candidates = [f for f in mr if _is_t2(f, rules)]
    t2_uids = {f.series.series_uid for f in t2_candidates}
    dwi_candidates = [f for f in mr if f.series.series_uid not in t2_uids and _is_dwi(f, rules)]
    t2 = _choose_t2(t2_candidates, rules)
    if t2 is not None:
        found["t2"] = t2
    dwi, b_value = _choose_dwi(dwi_candidates, rules)
    if dwi is not None:
        found["dwi"] = dwi
    taken = t2_uids | {f.series.series_uid for f in dwi_candidates}
    phases, phase_problem = find_dce_phases([f for f in facts if f.series.series_uid not in taken], rules.phases)
    found.update(phases)
    missing = tuple(name for name in LESION_SEQUENCES if name not in found)
    required_missing = [name for name in REQUIRED_SEQUENCES if name in missing]
    if required_missing:
        raise SequenceIdentificationError(_missing_message(required_missing, missing, facts, phase_problem))
    result = LesionStudySequences({name: found[name] for name in LESION_SEQUENCES if name in found}, missing,
                                  b_value)
    log.info("liver lesion sequences identified", extra={
        "sequences": {name: source.reason for name, source in result.sequences.items()},
        "missing": list(missing), "dwi_b_value": b_value})
    return result


def _not_source_images(f: SeriesFacts) -> bool:
    return bool({v.upper() for v in f.image_type} & _NOT_SOURCE_IMAGES)


def _is_diffusion_map(f: SeriesFacts, rules: SequenceRules) -> bool:
    return bool({v.upper() for v in f.image_type} & _DIFFUSION_MAPS) or bool(
        re.search(rules.exclude["dwi"], f.description))


def _has_diffusion_headers(f: SeriesFacts) -> bool:
    kinds = {v.upper() for v in f.image_type}
    return bool(f.b_values) or bool(kinds & {"DIFFUSION", "TRACEW", "TRACE"})


def _described_t2(f: SeriesFacts, rules: SequenceRules) -> bool:
    return bool(re.search(rules.patterns["t2"], f.description)) and not re.search(rules.exclude["t2"],
                                                                                   f.description)


def _t2_by_headers(f: SeriesFacts, rules: SequenceRules) -> bool:
    """A T2-weighted spin echo by its headers: SE/RM without EP or GR, long EchoTime, no contrast."""
    scanning = set(f.scanning_sequence)
    return (bool(scanning & {"SE", "RM"}) and not scanning & {"EP", "GR"}
            and f.echo_time_ms is not None
            and rules.t2_min_echo_time_ms <= f.echo_time_ms < rules.t2_max_echo_time_ms
            and f.contrast_agent is None and not re.search(rules.exclude["t2"], f.description))


def _is_t2(f: SeriesFacts, rules: SequenceRules) -> bool:
    if _has_diffusion_headers(f) or re.search(rules.patterns["dwi"], f.description):
        return False
    return _described_t2(f, rules) or _t2_by_headers(f, rules)


def _is_dwi(f: SeriesFacts, rules: SequenceRules) -> bool:
    if _is_diffusion_map(f, rules):
        return False
    return _has_diffusion_headers(f) or bool(re.search(rules.patterns["dwi"], f.description))


def _choose_t2(candidates: Sequence[SeriesFacts], rules: SequenceRules) -> PhaseSource | None:
    """The T2 series: described ones before header-only ones, axial before other planes, then the largest."""
    if not candidates:
        return None
    chosen = max(candidates, key=lambda f: (_described_t2(f, rules), f.axial is not False, len(f.series.paths),
                                            -(f.acquisition_s or 0.0)))
    if _described_t2(chosen, rules):
        why = "description matches the t2 rule"
    else:
        why = (f"T2-weighted by its headers (ScanningSequence {'/'.join(chosen.scanning_sequence)}, "
               f"EchoTime {chosen.echo_time_ms:g} ms, no contrast)")
    others = f"; {len(candidates) - 1} other T2 series not taken" if len(candidates) > 1 else ""
    return PhaseSource("t2", chosen.series, None, f"{chosen.label}: {why}{others}")


def _choose_dwi(candidates: Sequence[SeriesFacts], rules: SequenceRules) -> tuple[PhaseSource | None, float | None]:
    """The DWI images: the b-value closest to ``rules.dwi_b_value`` among every diffusion image of the study."""
    if not candidates:
        return None, None
    options: list[tuple[tuple[float, bool, bool, int], SeriesFacts, float]] = []
    for f in candidates:
        for b_value in sorted(set(f.b_values.values())):
            if b_value < rules.dwi_min_b_value:
                continue
            paths = [p for p, b in f.b_values.items() if b == b_value]
            trace = any(p in f.isotropic_paths for p in paths)
            described = bool(re.search(rules.patterns["dwi"], f.description))
            options.append(((-abs(b_value - rules.dwi_b_value), trace, described, len(paths)), f, b_value))
    if options:
        _, chosen, b_value = max(options, key=lambda option: option[0])
        return _dwi_images(chosen, b_value), b_value
    # No b-value in any header: a series described (or typed) as diffusion, trace images preferred.
    unstated = [f for f in candidates if not f.b_values]
    if not unstated:
        stated = sorted({b for f in candidates for b in f.b_values.values()})
        log.warning("diffusion series found but no b-value reaches dwi_min_b_value", extra={
            "b_values": stated, "dwi_min_b_value": rules.dwi_min_b_value})
        return None, None
    chosen = max(unstated, key=lambda f: ("TRACEW" in {v.upper() for v in f.image_type}, f.axial is not False,
                                          len(f.series.paths)))
    return PhaseSource("dwi", chosen.series, None,
                       f"{chosen.label}: diffusion series by its description or ImageType; its headers state no "
                       f"b-value (assumed near {rules.dwi_b_value:g} s/mm²)"), None


def _dwi_images(f: SeriesFacts, b_value: float) -> PhaseSource:
    """The images of *f* at *b_value* (its isotropic ones when it also has directional images at that b-value)."""
    paths = [p for p in f.series.paths if f.b_values.get(Path(p)) == b_value]
    trace = [p for p in paths if Path(p) in f.isotropic_paths]
    if trace and len(trace) < len(paths):
        paths = trace
    others = sorted({b for b in f.b_values.values() if b != b_value})
    if not others and len(paths) == len(f.series.paths):
        return PhaseSource("dwi", f.series, None, f"{f.label}: diffusion images, b = {b_value:g} s/mm²")
    detail = f"{len(paths)} of its {len(f.series.paths)} images"
    if others:
        detail += f"; the series also has b = {', '.join(f'{b:g}' for b in others)}"
    series = replace(f.series, paths=tuple(paths))
    return PhaseSource("dwi", series, None, f"{f.label}: diffusion images, b = {b_value:g} s/mm² ({detail})")


def _missing_message(required: Sequence[str], missing: Sequence[str], facts: Sequence[SeriesFacts],
                     phase_problem: str | None) -> str:
    names = {"t2": "T2-weighted", "dwi": "diffusion-weighted (DWI)", "pre": "pre-contrast T1"}
    text = (f"no {' and no '.join(names[name] for name in required)} series found among series: "
            f"{describe_series(facts)}; the lesion classifier needs at least T2, DWI and the pre-contrast T1 "
            f"(missing: {', '.join(missing)}).")
    if "t2" in required or "dwi" in required:
        text += (" If the series is there, set the route option sequence_regex, e.g. "
                 '{"t2": "(?i)<regex matching its SeriesDescription>", "dwi": "(?i)dwi|b800"}.')
    if "pre" in required and phase_problem:
        text += f" T1 phases: {phase_problem}"
    return text
