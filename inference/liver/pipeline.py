"""The ``liver-segmentation`` pipeline: a liver MR or CT study in, the liver and its tumours out.

DCE-MRI: the pre-contrast, arterial, portal venous and delayed phases are
identified among the study's series (:mod:`inference.liver.phases`), read,
rigidly co-registered onto the portal venous phase's grid
(:mod:`dicom_io.registration`), normalised and resampled to the model's
spacing, segmented by the 4D fused U-Net (3D CNN encoder per phase, ConvLSTM
over the phases) with sliding windows, brought back onto the portal grid and
post-processed (one liver, tumours inside it, one lesion per component); a
study of pixels up to 2 mm and slices up to 4 mm gets the model trained
on a 3 × 1.5 × 1.5 mm grid, any other the one on 4 × 3 × 3 mm.
CT: a multi-phase liver CT (arterial and portal venous series) is read and
co-registered the same way and segmented by a 3D U-Net reading both phases as
channels; a CT with one contrast phase only by the 3D U-Net on its portal
venous series. A CT of pixels up to 1.5 mm and slices up to 2.5 mm gets the
models trained on a 2 × 1.5 × 1.5 mm grid (for one phase, a cascade: the
coarse-grid U-Net finds the liver, the fine-grid one the tumours in it), any
other those on 4 × 3 × 3 mm (:func:`model_for_grid`). A route's
``weights``/``ct_weights`` may name a model's manifest or an ensemble's
(:mod:`inference.liver.ensemble`).

Out: a SEG on the reference series (the liver, all tumours, one segment per
lesion), a TID 1500 SR with the liver volume, the total tumour volume and
tumour burden, each lesion's volume and longest axial diameter, referencing
the SEG's segments, and an RGB overlay series for any viewer. Volumes in the
SR are computed from the very masks written into the SEG.

The models run on the CPU queue; a GPU worker runs them several times faster
(the segmenter picks CUDA when the worker has it). Research use only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_io.errors import DicomIOError
from dicom_io.identity import AlgorithmInfo
from dicom_io.reader import read_dynamic_series, read_series
from dicom_io.registration import (
    DEFAULT_MAX_SHIFT_MM,
    RegisteredPhases,
    RegistrationError,
    RegistrationSettings,
    RigidRegistration,
    register_phases,
)
from dicom_io.secondary_capture import SummaryImageWriter
from dicom_io.seg import SegmentationWriter, SegmentSpec, liver_segment, tumour_segment
from dicom_io.sr import (
    PRIVATE_SCHEME,
    DiameterMeasurement,
    MeasurementReportWriter,
    ScalarMeasurement,
    SegmentFindings,
    VolumeMeasurement,
)
from dicom_io.volume import Volume
from inference.base import Pipeline, PipelineInputError, SeriesInput, StudyInput
from inference.liver.phases import (
    CT_MULTIPHASE_PHASES,
    DCE_PHASES,
    SINGLE_CT_CHANNELS,
    LiverStudyInputs,
    PhaseRules,
    PhaseSource,
    SeriesFacts,
    choose_modality,
    find_dce_phases,
    identify_ct_inputs,
    identify_dce_phases,
    read_series_facts,
)
from inference.liver.postprocess import MIN_LESION_VOLUME_ML

log = logging.getLogger("pacsnode.liver")
T = TypeVar("T")

#: Output series numbers: deterministic, so a radiologist finds them in the same place every time.
SERIES = {"SEG": 9110, "SR": 9111, "overlay": 9120}
#: ``method`` option → committed model (see inference.liver.weights.DEFAULT_MODELS).
METHODS = {"fused": "mr", "baseline": "mr-baseline"}
#: ``ct_method`` option: the multi-phase CT model when the study has its phases (auto), always
#: (multiphase: a study without them fails), or never (single: the portal-venous series alone).
CT_METHODS = ("auto", "multiphase", "single")
#: Tumour volume as a percentage of the liver volume: no standard concept, so a pacsnode local code.
TUMOUR_BURDEN = Code("PN-0101", PRIVATE_SCHEME, "Liver tumour burden")
PERCENT = codes.UCUM.Percent
#: The phase whose grid the others are registered onto and the SEG is written on.
REFERENCE_PHASE = "portal"
#: Committed models (or ensembles) on grids finer than a default model's, finest first, by that default
#: (all keys of inference.liver.weights.DEFAULT_MODELS). A study whose grid is within :data:`GRID_SLACK_ZYX`
#: of one's gets it; a coarser study, brought up to that grid, is misread (liver-seg-ct-multiphase-v13
#: marks dozens of false lesions on 4 × 3 × 3 mm studies), so it goes to the default, coarse-grid model.
FINER_MODELS: dict[str, tuple[str, ...]] = {
    "mr": ("mr-fine",), "ct-multiphase": ("ct-multiphase-fine",), "ct": ("ct-fine",)}
#: How much coarser than a model's grid a study's header may give it from rounding alone (1.52 mm pixels
#: for a model of 1.5 mm).
HEADER_ROUNDING = 1.05
#: How many times coarser than a finer model's grid a study may be along z, y and x, by that model (a
#: key of DEFAULT_MODELS), measured on phantoms of the study's grid (model card). CT: 2.5 mm slices for
#: the models of 2 mm, where multi-phase v13 reads phantoms of 0.8 mm pixels far better than v9 while on
#: 5 mm slices it marks false lesions v9 does not; in-plane only the headers' rounding (v13 fails on 3 mm
#: pixels). DCE-MRI (liver-seg-mr-v10, 3 × 1.5 × 1.5 mm): 4 mm slices and 2 mm pixels, where it outlines
#: tumours better than the 4 × 3 × 3 mm model v7 without more false lesions (4 × 2 × 2 mm phantoms too);
#: on 5 mm slices it marks three times v7's false lesions for little more tumour Dice, and on 4 × 2.5 ×
#: 2.5 mm phantoms a few more than v7 for 0.014.
GRID_SLACK_ZYX: dict[str, tuple[float, float, float]] = {
    "ct-multiphase-fine": (1.25, HEADER_ROUNDING, HEADER_ROUNDING),
    "ct-fine": (1.25, HEADER_ROUNDING, HEADER_ROUNDING),
    "mr-fine": (4 / 3, 4 / 3, 4 / 3)}


@dataclass(frozen=True)
class LiverOptions:
    """The pipeline's options, parsed and checked (see :meth:`from_options`)."""

    modality: str | None
    method: str
    ct_method: str
    weights: Path | None
    ct_weights: Path | None
    min_lesion_mm: float
    min_lesion_ml: float
    rules: PhaseRules
    registration: RegistrationSettings | None
    overlay: bool

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> LiverOptions:
        """From route/CLI options: ``modality`` (mr|ct), ``method`` (fused|baseline), ``ct_method``
        (auto|multiphase|single), ``weights`` (the manifest of a site's MR model) and ``ct_weights`` (of its
        CT model, single- or multi-phase as its manifest says), ``min_lesion_mm``, ``min_lesion_ml``,
        ``phase_regex`` and the other :class:`PhaseRules` fields,
        ``max_shift_mm``, ``registration`` (translation|euler|none), ``overlay`` (bool)."""
        modality = options.get("modality")
        modality = str(modality).upper() if modality not in (None, "", "auto") else None
        if modality not in (None, "MR", "CT"):
            raise PipelineInputError(f"modality {options.get('modality')!r} is not supported; use mr or ct")
        method = str(options.get("method", "fused")).lower()
        if method not in METHODS:
            raise PipelineInputError(f"liver method {method!r} is not available; choose one of {sorted(METHODS)}")
        ct_method = str(options.get("ct_method", "auto")).lower()
        if ct_method not in CT_METHODS:
            raise PipelineInputError(f"ct_method {ct_method!r} is not available; choose one of {', '.join(CT_METHODS)}")
        kind = str(options.get("registration", "translation")).lower()
        if kind not in ("translation", "euler", "none"):
            raise PipelineInputError(f"registration {kind!r} is not available; choose translation, euler or none")
        try:
            registration = None if kind == "none" else RegistrationSettings(
                transform=kind,  # type: ignore[arg-type]
                max_shift_mm=float(options.get("max_shift_mm", DEFAULT_MAX_SHIFT_MM)))
            min_lesion_mm = float(options.get("min_lesion_mm", 0.0))
            min_lesion_ml = float(options.get("min_lesion_ml", MIN_LESION_VOLUME_ML))
        except (TypeError, ValueError) as exc:
            raise PipelineInputError(f"liver-segmentation options: {exc}") from exc
        weights, ct_weights = options.get("weights"), options.get("ct_weights")
        overlay = options.get("overlay", True)
        if isinstance(overlay, str):
            overlay = overlay.strip().lower() not in ("0", "false", "no", "off")
        return cls(modality=modality, method=method, ct_method=ct_method, weights=Path(weights) if weights else None,
                   ct_weights=Path(ct_weights) if ct_weights else None,
                   min_lesion_mm=min_lesion_mm, min_lesion_ml=min_lesion_ml, rules=PhaseRules.from_options(options),
                   registration=registration, overlay=bool(overlay))


def weights_path(modality: str, options: LiverOptions) -> Path:
    """The manifest of the MR model, or of the single-series CT model: the site's or the committed one."""
    from inference.liver.weights import default_weights

    if modality == "CT":
        return options.ct_weights or default_weights("ct")
    return options.weights or default_weights(METHODS[options.method])


def _manifest_input(path: Path, field: str, convert: Callable[[Any], T]) -> T | None:
    """The ``input`` *field* of the model's manifest, through *convert*; None when the manifest cannot be
    read or say (loading the model reports that problem later, after the study itself has been checked)."""
    from inference.liver.ensemble import read_model_manifest
    from inference.liver.weights import LiverModelError

    try:
        return convert(read_model_manifest(path)["input"][field])
    except (LiverModelError, KeyError, TypeError, ValueError):
        return None


def _model_channels(path: Path, fallback: tuple[str, ...]) -> tuple[str, ...]:
    """The phases the model reads, from its manifest; *fallback* when the manifest cannot say."""
    channels = _manifest_input(path, "channels", lambda value: tuple(str(c) for c in value))
    return fallback if channels is None else channels


def choose_ct_inputs(facts: Sequence[SeriesFacts], options: LiverOptions) -> tuple[Path, LiverStudyInputs]:
    """The CT model for this study and the series it reads.

    A site's ``ct_weights`` model reads what its manifest names. Otherwise the
    multi-phase model (arterial + portal-venous) is used when the study has
    those phases (``ct_method`` auto) or must be (multiphase), else the
    single-series model on the portal-venous series: single-phase CT cannot
    show the lesions that only enhance in the arterial phase.
    """
    from inference.liver.weights import default_weights

    rules = options.rules
    if options.ct_weights is not None or options.ct_method == "single":
        weights = weights_path("CT", options)
        return weights, identify_ct_inputs(facts, rules, _model_channels(weights, SINGLE_CT_CHANNELS))
    weights = default_weights("ct-multiphase")
    channels = _model_channels(weights, CT_MULTIPHASE_PHASES)
    _found, problem = find_dce_phases(facts, rules, channels, modality="CT")
    if problem is None or options.ct_method == "multiphase":
        return weights, identify_ct_inputs(facts, rules, channels)
    log.info("liver CT read as a single phase", extra={"why": problem})
    return weights_path("CT", options), identify_ct_inputs(facts, rules)


def model_for_grid(name: str, spacing: Sequence[float]) -> Path:
    """The committed model *name* (a key of DEFAULT_MODELS) for a study of voxel size *spacing* (mm, zyx):
    the first of its :data:`FINER_MODELS` whose grid the study is within that model's
    :data:`GRID_SLACK_ZYX` of, else *name*'s."""
    from inference.liver.weights import default_weights

    for finer in FINER_MODELS.get(name, ()):
        path = default_weights(finer)
        grid = _manifest_input(path, "spacing_zyx_mm", lambda value: tuple(float(v) for v in value))
        slack = GRID_SLACK_ZYX[finer]
        if grid is not None and all(s <= g * k + 1e-6 for s, g, k in zip(spacing, grid, slack, strict=True)):
            return path
    return default_weights(name)


def model_for_study(weights: Path, modality: str, settings: LiverOptions, spacing: Sequence[float]) -> Path:
    """*weights*, or the committed model for the study's grid when *weights* is a default model the
    route did not name and that default has :data:`FINER_MODELS` (:func:`model_for_grid`)."""
    from inference.liver.weights import default_weights

    if (settings.ct_weights if modality == "CT" else settings.weights) is not None:
        return weights
    for name in FINER_MODELS:
        if weights == default_weights(name):
            return model_for_grid(name, spacing)
    return weights


def load_segmenter(path: Path, modality: str):  # type: ignore[no-untyped-def]
    """The model (or ensemble) of manifest *path*, checked to be for *modality*; problems fail the job."""
    from inference.liver.ensemble import load_liver_model
    from inference.liver.weights import LiverModelError

    try:
        segmenter = load_liver_model(path)
    except LiverModelError as exc:
        raise PipelineInputError(f"liver segmentation weights cannot be used: {exc}") from exc
    if segmenter.modality.upper() != modality:
        raise PipelineInputError(
            f"the liver model {segmenter.version} ({path}) is for {segmenter.modality}, but the study is {modality}; "
            "set the weights option to a model of the study's modality")
    return segmenter


def read_phase_volume(source: PhaseSource, cache: dict[str, Any]) -> Volume:
    """The phase's volume: a 3D series, or one time point of a 4D series (read once per series)."""
    series = source.series
    try:
        if source.time_point is None:
            return read_series(series.paths, skip_non_images=True)
        if series.series_uid not in cache:
            cache[series.series_uid] = read_dynamic_series(series.paths, skip_non_images=True)
        dynamic = cache[series.series_uid]
        if source.time_point >= dynamic.n_times:
            raise PipelineInputError(
                f"the 4D series {series.description!r} has {dynamic.n_times} time points; the {source.phase} phase "
                f"was expected at time point {source.time_point + 1}")
        return dynamic.frame(source.time_point)
    except DicomIOError as exc:
        raise PipelineInputError(f"the {source.phase} series cannot be read as a volume: {exc}") from exc


def source_datasets(volume: Volume, series: SeriesInput) -> list[Dataset]:
    """The reference volume's source images in slice order, for the writers to reference."""
    wanted = {ref.sop_instance_uid: k for k, ref in enumerate(volume.source_refs)}
    found: list[Dataset | None] = [None] * len(wanted)
    for path in series.paths:
        header = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        index = wanted.get(str(header.SOPInstanceUID))
        if index is not None:
            found[index] = dcmread(path)
    if any(ds is None for ds in found) or any(ref.frame_number is not None for ref in volume.source_refs):
        raise PipelineInputError(
            f"the results cannot reference series {series.description!r}: it is not a series of single-frame images")
    return found  # type: ignore[return-value]


def register_onto_reference(volumes: Mapping[str, Volume], options: LiverOptions) -> RegisteredPhases:
    reference = REFERENCE_PHASE if REFERENCE_PHASE in volumes else next(iter(volumes))
    skip = list(volumes) if options.registration is None else []
    try:
        return register_phases(volumes, reference, options.registration, skip=skip)
    except RegistrationError as exc:
        raise PipelineInputError(f"the contrast phases cannot be aligned: {exc}") from exc


@dataclass(frozen=True)
class LiverFindings:
    """What the pipeline measured, on the reference grid (the masks that go into the SEG)."""

    liver: np.ndarray
    tumours: np.ndarray
    lesions: tuple[tuple[np.ndarray, float], ...]  # (mask, longest axial diameter mm) per lesion
    voxel_ml: float

    def volume_ml(self, mask: np.ndarray) -> float:
        return float(np.count_nonzero(mask) * self.voxel_ml)

    def masks(self) -> dict[SegmentSpec, np.ndarray]:
        """The SEG's segments in order: 1 liver, 2 all tumours, 3… one per lesion (lesion N is segment N + 2).

        The all-tumours segment is there even when empty: "no tumour, 0 ml" is a finding too.
        """
        masks: dict[SegmentSpec, np.ndarray] = {liver_segment(): self.liver, tumour_segment(): self.tumours}
        for number, (mask, _) in enumerate(self.lesions, start=1):
            masks[tumour_segment(number)] = mask
        return masks


def write_liver_seg(source: Sequence[Dataset], findings: LiverFindings, algorithm: AlgorithmInfo,
                    series_number: int, description: str) -> Dataset:
    """The SEG of :meth:`LiverFindings.masks` on the reference series *source*."""
    return SegmentationWriter().write(list(source), findings.masks(), algorithm, series_number, description,
                                      content_label="LIVER")


def lesion_findings(probabilities: np.ndarray, spacing: Sequence[float], options: LiverOptions) -> LiverFindings:
    from inference.liver.postprocess import postprocess

    result = postprocess(probabilities, spacing, min_volume_ml=options.min_lesion_ml,
                         min_diameter_mm=options.min_lesion_mm)
    liver = result.labels > 0
    if not liver.any():
        raise PipelineInputError("no liver was found in the study: check that the series cover the upper abdomen")
    lesions = tuple((result.lesion_labels == lesion.index, lesion.longest_axial_diameter_mm)
                    for lesion in result.lesions)
    return LiverFindings(liver=liver, tumours=result.labels == 2, lesions=lesions,
                         voxel_ml=float(np.prod(spacing)) / 1000.0)


@dataclass(frozen=True)
class PreparedStudy:
    """A liver study ready for the model: its phases found, read and aligned on the reference grid."""

    modality: str
    inputs: LiverStudyInputs
    #: The phase (or "ct") whose grid everything lies on and whose series the results reference.
    reference_name: str
    reference: Volume
    #: Every phase's image on the reference grid, ``[phase, z, y, x]``, in the order of :attr:`names`.
    images: np.ndarray
    names: tuple[str, ...]
    #: How each non-reference phase was moved (none for CT).
    registrations: Mapping[str, RigidRegistration]
    weights: Path

    def channels(self, order: Sequence[str]) -> np.ndarray:
        """``[P, z, y, x]`` of the phases in *order* (the model's channel order)."""
        return np.stack([self.images[self.names.index(name)] for name in order])


def prepare_study(study: StudyInput, settings: LiverOptions) -> PreparedStudy:
    """Identify the phases (or CT series) the model needs, read them and co-register them.

    Everything that can be wrong with the study itself fails here, before the
    model is loaded, with a :class:`PipelineInputError` naming the problem. A
    study without a site's model gets the committed model for its grid
    (:func:`model_for_study`).
    """
    facts = [read_series_facts(s) for s in study.series if s.paths]
    modality = choose_modality(facts, settings.rules, settings.modality)
    if modality == "CT":
        weights, inputs = choose_ct_inputs(facts, settings)
    else:
        weights = weights_path(modality, settings)
        inputs = LiverStudyInputs("MR", identify_dce_phases(facts, settings.rules,
                                                            phases=_model_channels(weights, DCE_PHASES)))
    cache: dict[str, Any] = {}
    volumes = {name: read_phase_volume(source, cache) for name, source in inputs.phases.items()}
    if len(volumes) == 1:
        name, volume = next(iter(volumes.items()))
        return PreparedStudy(modality, inputs, name, volume, np.asarray(volume.array, np.float32)[np.newaxis],
                             (name,), {}, model_for_study(weights, modality, settings, volume.spacing))
    registered = register_onto_reference(volumes, settings)
    reference = volumes[registered.reference]
    return PreparedStudy(modality, inputs, registered.reference, reference, registered.array,
                         registered.names, dict(registered.registrations),
                         model_for_study(weights, modality, settings, reference.spacing))


class LiverSegmentationPipeline(Pipeline):
    """Liver and liver tumour segmentation from 4D DCE-MRI (fused U-Net) or CT (3D U-Net on one or two phases)."""

    name = "liver-segmentation"
    queue = "cpu"
    version = "0.1"
    summary = "liver and tumours from DCE-MRI phases or CT: SEG, volumes/diameters SR, overlay (research use)"

    def run(self, study: StudyInput, options: Mapping[str, Any]) -> Sequence[Dataset]:
        settings = LiverOptions.from_options(options)
        started = time.perf_counter()
        prepared = prepare_study(study, settings)
        read_s = time.perf_counter() - started
        segmenter = load_segmenter(prepared.weights, prepared.modality)
        reference = prepared.reference
        probabilities = segmenter.segment(prepared.channels(segmenter.channels), reference.spacing)
        findings = lesion_findings(probabilities, reference.spacing, settings)
        del probabilities
        registrations = prepared.registrations
        log.info("liver segmented", extra={
            "modality": prepared.modality, "model": segmenter.version, "device": str(segmenter.device),
            "phases": {n: s.reason for n, s in prepared.inputs.phases.items()},
            "shift_mm": {n: round(r.shift_mm, 2) for n, r in registrations.items()},
            "liver_ml": round(findings.volume_ml(findings.liver), 1), "lesions": len(findings.lesions),
            "read_register_s": round(read_s, 2), "total_s": round(time.perf_counter() - started, 2)})

        source = source_datasets(reference, prepared.inputs.phases[prepared.reference_name].series)
        parameters = {"model": segmenter.version, "modality": prepared.modality,
                      "min lesion": f"{settings.min_lesion_ml:g} ml, {settings.min_lesion_mm:g} mm"}
        if registrations:
            parameters["registration"] = "; ".join(f"{n} {r.shift_mm:.1f} mm" for n, r in registrations.items())
        algorithm = AlgorithmInfo(name="pacsnode liver segmentation", version=self.version, parameters=parameters)
        return self._outputs(source, findings, algorithm, settings)

    @staticmethod
    def _outputs(source: list[Dataset], findings: LiverFindings, algorithm: AlgorithmInfo,
                 options: LiverOptions) -> list[Dataset]:
        seg = write_liver_seg(source, findings, algorithm, SERIES["SEG"], "Liver segmentation research use")
        masks = findings.masks()
        liver_ml = findings.volume_ml(findings.liver)
        tumour_ml = findings.volume_ml(findings.tumours)
        groups = [SegmentFindings(1, measurements=[VolumeMeasurement(liver_ml)]),
                  SegmentFindings(2, measurements=[
                      VolumeMeasurement(tumour_ml),
                      ScalarMeasurement(TUMOUR_BURDEN, 100.0 * tumour_ml / liver_ml, PERCENT)])]
        for number, (mask, diameter) in enumerate(findings.lesions, start=1):
            groups.append(SegmentFindings(number + 2, measurements=[
                VolumeMeasurement(findings.volume_ml(mask)),
                DiameterMeasurement(diameter, name=codes.SCT.LongAxis)]))
        report = MeasurementReportWriter().write(source, seg, groups, algorithm, SERIES["SR"],
                                                 "Liver volumes research use")
        outputs: list[Dataset] = [seg, report]
        if options.overlay:
            overlay = {spec: mask for spec, mask in masks.items() if spec.label in ("Liver", "Liver tumours")}
            outputs += SummaryImageWriter().write_mask_overlay(source, overlay, algorithm, SERIES["overlay"],
                                                               "Liver segmentation overlay")
        return outputs
