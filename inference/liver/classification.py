"""The ``liver-classification`` pipeline: each liver lesion of an MR study classified, with key images.

After seed 003 (Zhen et al. 2020). The data path:

1. **Sequences** (:mod:`inference.liver.sequences`): T2, diffusion (b≈800),
   T1 pre-contrast, late arterial, portal venous and equilibrium are found
   among the study's series; with only the three unenhanced ones (T2, DWI,
   pre-contrast T1) the three-sequence models answer; with fewer the job
   fails naming what is missing.
2. **Lesions** (:mod:`inference.liver.lesion_source`): from a SEG in the
   study — pacsnode's own liver-segmentation output or the site's
   radiologist ROI — on the grid of the series it was drawn on; without one,
   the liver-segmentation model for the study's grid finds them on the portal
   venous phase (this needs the four DCE phases) and the SEG is sent with the
   results.
3. **Alignment**: every sequence is rigidly registered onto the lesions' grid
   (:mod:`dicom_io.registration`).
4. **Models** (:mod:`inference.liver.lesion_classifier`): lesion-centred
   multi-sequence patches per slice, per-slice probabilities summed over the
   lesion's slices (the seed's per-patient rule). Seven classes and benign /
   malignant from six sequences (models A, C) or three (B, D); the malignant
   subtype (HCC / metastasis / other primary malignancy) from images and
   clinical data (F, or G with three sequences) when the study's accession
   has clinical data, else from images only (E, six sequences only).
5. **Out**: a TID 1500 SR with one group per lesion (the SEG segment, its
   volume and diameter, each class with its SNOMED CT code and probability,
   benign/malignant, the subtype, its key image), whether clinical data was
   used; one key image per lesion — the slice where the lesion is largest
   with the input-gradient saliency of the predicted class over it; and the
   SEG when the pipeline segmented the lesions itself.

Lesions smaller than :data:`MIN_CLASSIFIED_DIAMETER_MM` are listed in the
log but not classified: the models never saw smaller ones. Research use only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicom_io.identity import AlgorithmInfo
from dicom_io.registration import (
    RegistrationError,
    RegistrationSettings,
    register_phases,
)
from dicom_io.secondary_capture import SummaryImageWriter
from dicom_io.seg import SegmentationWriter, SegmentSpec, liver_segment, tumour_segment
from dicom_io.sr import (
    CodedFinding,
    DiameterMeasurement,
    ImageFindings,
    MeasurementReportWriter,
    SegmentFindings,
    VolumeMeasurement,
    yes_no,
)
from dicom_io.volume import Volume
from inference.base import Pipeline, PipelineInputError, StudyInput
from inference.liver.lesion_kinds import (
    BENIGN_CODE,
    CLINICAL_DATA_USED,
    MALIGNANCY_QUESTION,
    MALIGNANT_CODE,
    MALIGNANT_SUBTYPE_QUESTION,
    LesionKind,
)
from inference.liver.lesion_source import (
    LesionMask,
    find_lesion_segmentation,
    lesion_masks,
    liver_mask,
    place_on_grid,
)
from inference.liver.phantom import lesion_measurements
from inference.liver.phases import DCE_PHASES, PhaseSource
from inference.liver.pipeline import (
    LiverOptions,
    lesion_findings,
    load_segmenter,
    model_for_study,
    read_phase_volume,
    source_datasets,
    weights_path,
    write_liver_seg,
)
from inference.liver.sequences import (
    LesionStudySequences,
    SequenceRules,
    identify_lesion_sequences,
)

if TYPE_CHECKING:  # the models import torch: loaded only when a study is classified
    from inference.liver.lesion_classifier import LesionClassifier, LesionPrediction
    from inference.liver.lesion_patches import LesionPatches

log = logging.getLogger("pacsnode.liver")

#: Output series numbers: deterministic, so a radiologist finds them in the same place every time.
SERIES = {"SEG": 9130, "SR": 9131, "key images": 9132}
#: The sequence whose grid the lesions are found on when the pipeline segments them itself.
SEGMENTATION_REFERENCE = "portal"


@dataclass(frozen=True)
class ClassificationOptions:
    """The pipeline's options, parsed and checked (see :meth:`from_options`)."""

    rules: SequenceRules
    registration: RegistrationSettings | None
    lesions: str
    weights: Mapping[str, Path]
    segmentation: LiverOptions
    key_images: bool

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ClassificationOptions:
        """From route/CLI options: ``lesions`` (auto: a SEG in the study, else segment; seg: a SEG is required;
        segment: always run the segmentation model), ``weights`` (task or model letter → a site's manifest,
        e.g. ``{"A": "/models/cls-a.json"}``), ``registration`` (translation|euler|none), ``max_shift_mm``,
        ``key_images`` (bool), ``sequence_regex`` and the other sequence/phase rules, and the
        liver-segmentation options used when the pipeline segments (``segmentation_weights``)."""
        lesions = str(options.get("lesions", "auto")).lower()
        if lesions not in ("auto", "seg", "segment"):
            raise PipelineInputError(f"lesions {lesions!r} is not available; choose auto, seg or segment")
        weights = options.get("weights") or {}
        if not isinstance(weights, Mapping):
            raise PipelineInputError('option weights must map model letters to manifests, e.g. {"A": "/m/a.json"}')
        unknown = sorted(set(map(str, weights)) - set("ABCDEFG"))
        if unknown:
            raise PipelineInputError(f"option weights names unknown model(s) {unknown}; models are A to G")
        key_images = options.get("key_images", True)
        if isinstance(key_images, str):
            key_images = key_images.strip().lower() not in ("0", "false", "no", "off")
        # Registration and the phase rules are parsed once, by the segmentation options, and shared.
        shared = {k: v for k, v in options.items() if k in ("phase_regex", "exclude_regex", "t1_regex",
                                                            "arterial_start_s", "portal_start_s", "delayed_start_s",
                                                            "min_lesion_ml", "registration", "max_shift_mm")}
        if options.get("segmentation_weights"):
            shared["weights"] = options["segmentation_weights"]
        segmentation = LiverOptions.from_options(shared)
        return cls(rules=SequenceRules.from_options(options), registration=segmentation.registration,
                   lesions=lesions, weights={str(k): Path(str(v)) for k, v in weights.items()},
                   segmentation=segmentation, key_images=bool(key_images))


# --------------------------------------------------------------------------- clinical data


def header_age_and_sex(datasets: Sequence[Dataset]) -> tuple[float | None, str | None]:
    """Age (years) and sex from the images' headers: PatientAge, else PatientBirthDate at the StudyDate."""
    ds = datasets[0]
    age: float | None = None
    text = str(ds.get("PatientAge", "") or "").strip().upper()
    if len(text) == 4 and text[:3].isdigit() and text[3] in "DWMY":
        age = int(text[:3]) / {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[text[3]]
    else:
        born, seen = str(ds.get("PatientBirthDate", "") or ""), str(ds.get("StudyDate", "") or "")
        if len(born) == 8 and len(seen) == 8 and born.isdigit() and seen.isdigit():
            try:
                age = (date(int(seen[:4]), int(seen[4:6]), int(seen[6:])) -
                       date(int(born[:4]), int(born[4:6]), int(born[6:]))).days / 365.25
            except ValueError:
                age = None
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    return age, (sex if sex in ("M", "F") else None)


# --------------------------------------------------------------------------- lesions and grid


@dataclass(frozen=True)
class LesionsOnGrid:
    """The lesions to classify on the reference grid, with the SEG the report refers to."""

    reference_name: str
    reference: Volume
    source: list[Dataset]
    seg: Dataset
    #: True when this pipeline wrote the SEG (it is then sent with the results).
    seg_is_new: bool
    lesions: list[LesionMask]
    liver: np.ndarray | None
    #: Every available sequence on the reference grid, by name.
    images: Mapping[str, np.ndarray]
    shifts_mm: Mapping[str, float]


def _register(volumes: Mapping[str, Volume], reference: str,
              settings: RegistrationSettings | None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    skip = [name for name in volumes if name != reference] if settings is None else []
    try:
        registered = register_phases(volumes, reference, settings, skip=skip)
    except RegistrationError as exc:
        raise PipelineInputError(f"the sequences cannot be aligned: {exc}") from exc
    images = {name: registered.array[k] for k, name in enumerate(registered.names)}
    return images, {name: r.shift_mm for name, r in registered.registrations.items()}


def lesions_from_study_seg(study: StudyInput, found: LesionStudySequences,
                           options: ClassificationOptions) -> LesionsOnGrid | None:
    """The lesions of a SEG in the study, every sequence registered onto the series it was drawn on."""
    segmentation = find_lesion_segmentation(study.series)
    if segmentation is None:
        return None
    referenced = segmentation.referenced_series
    name = next((n for n, s in found.sequences.items()
                 if s.series.series_uid == referenced.series_uid and s.time_point is None), None)
    cache: dict[str, Any] = {}
    volumes = {n: read_phase_volume(s, cache) for n, s in found.sequences.items()}
    if name is None:  # drawn on a series that is none of the six: it is still the reference grid
        name = "seg-reference"
        volumes = {name: read_phase_volume(PhaseSource(name, referenced, None, "the series the SEG was drawn on"),
                                           cache), **volumes}
    reference = volumes[name]
    placed = place_on_grid(segmentation, reference)
    masks = lesion_masks(segmentation, reference, placed=placed)
    images, shifts = _register(volumes, name, options.registration)
    images.pop("seg-reference", None)
    source = source_datasets(reference, referenced)
    liver = liver_mask(segmentation, reference, placed)
    if any(lesion.part is not None for lesion in masks):
        # A site segment held several separate lesions: each gets its own segment in a SEG of ours, so the
        # report can give every lesion its own group.
        return _resegmented(name, reference, source, masks, liver, images, shifts)
    return LesionsOnGrid(name, reference, source, segmentation.dataset, False, masks, liver, images, shifts)


def _resegmented(name: str, reference: Volume, source: list[Dataset], masks: Sequence[LesionMask],
                 liver: np.ndarray | None, images: Mapping[str, np.ndarray],
                 shifts: Mapping[str, float]) -> LesionsOnGrid:
    specs: dict[SegmentSpec, np.ndarray] = {liver_segment(): liver} if liver is not None else {}
    for number, lesion in enumerate(masks, start=1):
        specs[tumour_segment(number)] = lesion.mask
    algorithm = AlgorithmInfo(name="pacsnode liver lesion classification", version=LiverClassificationPipeline.version,
                              parameters={"lesions": "the site's SEG, one segment per separate lesion"})
    seg = SegmentationWriter().write(source, specs, algorithm, SERIES["SEG"], "Liver lesions research use",
                                     content_label="LESIONS")
    first = 2 if liver is not None else 1  # segment numbers follow the order of specs
    renumbered = [LesionMask(first + k, tumour_segment(k + 1).label, lesion.mask) for k, lesion in enumerate(masks)]
    return LesionsOnGrid(name, reference, source, seg, True, renumbered, liver, images, shifts)


def lesions_by_segmentation(found: LesionStudySequences, options: ClassificationOptions,
                            algorithm_version: str) -> LesionsOnGrid:
    """The lesions the liver-segmentation model finds on the DCE phases (the SEG is sent with the results)."""
    missing = [p for p in DCE_PHASES if p not in found.sequences]
    if missing:
        raise PipelineInputError(
            f"the study has no lesion SEG and lacks the {', '.join(missing)} phase(s) the liver-segmentation "
            f"model needs to find the lesions; send a SEG of the lesions with the study, or the DCE phases "
            f"({found.describe()})")
    cache: dict[str, Any] = {}
    volumes = {n: read_phase_volume(s, cache) for n, s in found.sequences.items()}
    images, shifts = _register(volumes, SEGMENTATION_REFERENCE, options.registration)
    reference = volumes[SEGMENTATION_REFERENCE]
    weights = model_for_study(weights_path("MR", options.segmentation), "MR", options.segmentation, reference.spacing)
    segmenter = load_segmenter(weights, "MR")
    probabilities = segmenter.segment(np.stack([images[c] for c in segmenter.channels]), reference.spacing)
    findings = lesion_findings(probabilities, reference.spacing, options.segmentation)
    source = source_datasets(reference, found.sequences[SEGMENTATION_REFERENCE].series)
    algorithm = AlgorithmInfo(name="pacsnode liver segmentation", version=algorithm_version,
                              parameters={"model": segmenter.version, "purpose": "lesions for classification"})
    seg = write_liver_seg(source, findings, algorithm, SERIES["SEG"], "Liver lesions research use")
    lesions = [LesionMask(number + 2, tumour_segment(number).label, mask)
               for number, (mask, _) in enumerate(findings.lesions, start=1)]
    return LesionsOnGrid(SEGMENTATION_REFERENCE, reference, source, seg, True, lesions, findings.liver,
                         images, shifts)


# --------------------------------------------------------------------------- classification


@dataclass(frozen=True)
class LesionResult:
    """What the models said about one lesion."""

    lesion: LesionMask
    volume_ml: float
    diameter_mm: float
    #: Model A or B (seven classes).
    seven: LesionPrediction
    #: Model C or D (benign / malignant).
    binary: LesionPrediction
    #: Model E, F or G (HCC / metastasis / other primary), when one answers.
    subtype: LesionPrediction | None
    key_slice: int
    saliency: np.ndarray


class LesionModels:
    """The models chosen for a study (by its sequences and clinical data), loaded once."""

    def __init__(self, found: LesionStudySequences, has_clinical: bool, options: ClassificationOptions) -> None:
        from inference.liver.lesion_classifier import (
            LesionClassifier,
            LesionModelError,
            choose_models,
            default_manifest,
        )

        try:
            self.letters = choose_models(set(found.sequences), has_clinical)
        except LesionModelError as exc:
            raise PipelineInputError(str(exc)) from exc
        self.models: dict[str, LesionClassifier] = {}
        for task, letter in self.letters.items():
            path = options.weights.get(letter) or default_manifest(letter)
            try:
                self.models[task] = LesionClassifier.load(path)
            except LesionModelError as exc:
                raise PipelineInputError(f"liver lesion model {letter} cannot be used: {exc}") from exc

    def versions(self) -> str:
        return ", ".join(f"{task} {model.version}" for task, model in self.models.items())


def classify_lesion(lesion: LesionMask, volume_ml: float, diameter_mm: float, grid: LesionsOnGrid,
                    models: LesionModels, clinical_vector: np.ndarray | None) -> LesionResult:
    from inference.liver.lesion_patches import extract_lesion_patches

    spacing = grid.reference.spacing
    predictions: dict[str, LesionPrediction] = {}
    patches_by_sequences: dict[tuple[str, ...], LesionPatches] = {}
    for task, model in models.models.items():
        key = tuple(model.sequences)
        if key not in patches_by_sequences:
            images = np.stack([grid.images[name] for name in key])
            patches_by_sequences[key] = extract_lesion_patches(images, spacing, lesion.mask, grid.liver)
        predictions[task] = model.classify(patches_by_sequences[key],
                                           clinical_vector if model.uses_clinical else None)
    seven = predictions["seven"]
    seven_model = models.models["seven"]
    patches = patches_by_sequences[tuple(seven_model.sequences)]
    saliency = patches.paste(seven_model.saliency(patches, int(seven.predicted)), lesion.mask.shape)
    areas = lesion.mask.sum(axis=(1, 2))
    return LesionResult(lesion, float(volume_ml), float(diameter_mm), seven, predictions["binary"],
                        predictions.get("malignant"), int(np.argmax(areas)), saliency)


# --------------------------------------------------------------------------- report


def _kind(name: str) -> LesionKind:
    """The lesion class a model's class name ("hcc", "cyst", …) stands for."""
    return LesionKind[name.upper()]


def _kind_findings(prediction: LesionPrediction) -> list[CodedFinding]:
    """One coded finding per class with its probability, the most probable first."""
    order = np.argsort(-np.asarray(prediction.probabilities))
    return [CodedFinding(_kind(prediction.classes[k]).code, float(prediction.probabilities[k]))
            for k in order]


def _malignancy_finding(prediction: LesionPrediction) -> CodedFinding:
    p_malignant = float(prediction.probabilities[list(prediction.classes).index("malignant")])
    code = MALIGNANT_CODE if p_malignant >= 0.5 else BENIGN_CODE
    return CodedFinding(code, p_malignant if p_malignant >= 0.5 else 1.0 - p_malignant, name=MALIGNANCY_QUESTION)


def _subtype_findings(prediction: LesionPrediction) -> list[CodedFinding]:
    order = np.argsort(-np.asarray(prediction.probabilities))
    return [CodedFinding(_kind(prediction.classes[k]).code, float(prediction.probabilities[k]),
                         name=MALIGNANT_SUBTYPE_QUESTION) for k in order]


def _captions(result: LesionResult) -> list[str]:
    number = result.lesion.label.rsplit(" ", 1)[-1]
    seven = result.seven
    best = _kind(seven.label)
    malignant = float(result.binary.probabilities[list(result.binary.classes).index("malignant")])
    lines = [f"Lesion {number}: {best.display_name} {100 * float(seven.probabilities[int(seven.predicted)]):.0f}%",
             f"malignant {100 * malignant:.0f}%", f"{result.diameter_mm:.0f} mm"]
    if result.subtype is not None:
        sub = _kind(result.subtype.label)
        lines.append(f"subtype {sub.display_name} {100 * float(result.subtype.probabilities[int(result.subtype.predicted)]):.0f}%")
    return lines


class LiverClassificationPipeline(Pipeline):
    """Liver lesions classified into seven classes, benign/malignant and malignant subtype (seed 003)."""

    name = "liver-classification"
    queue = "cpu"
    version = "0.1"
    summary = ("liver lesions from MR: 7 classes, benign/malignant, malignant subtype with clinical data; "
               "SR with SNOMED codes and probabilities, saliency key images (research use)")

    def run(self, study: StudyInput, options: Mapping[str, Any]) -> Sequence[Dataset]:
        from inference.liver.lesion_models import encode_clinical
        from inference.liver.lesion_patches import MIN_CLASSIFIED_DIAMETER_MM

        settings = ClassificationOptions.from_options(options)
        started = time.perf_counter()
        found = identify_lesion_sequences(study.series, settings.rules)
        clinical = dict(study.extra.get("clinical") or {})
        models = LesionModels(found, bool(clinical), settings)
        grid = None if settings.lesions == "segment" else lesions_from_study_seg(study, found, settings)
        if grid is None:
            if settings.lesions == "seg":
                raise PipelineInputError("the study holds no SEG marking liver lesions (option lesions: seg)")
            grid = lesions_by_segmentation(found, settings, self.version)
        age, sex = header_age_and_sex(grid.source)
        vector = encode_clinical(clinical, age, sex) if clinical else None
        results, skipped = [], []
        for lesion in grid.lesions:
            if not lesion.mask.any():
                continue
            _, volume_ml, _, diameter = lesion_measurements(lesion.mask, grid.reference.spacing)
            if diameter < MIN_CLASSIFIED_DIAMETER_MM:
                skipped.append(lesion.label)
                continue
            results.append(classify_lesion(lesion, volume_ml, diameter, grid, models, vector))
        log.info("liver lesions classified", extra={
            "sequences": {n: s.reason for n, s in found.sequences.items()}, "models": models.versions(),
            "lesion_source": "segmented here" if grid.seg_is_new else "SEG in the study",
            "lesions": len(results), "too_small": len(skipped), "clinical_data": bool(clinical),
            "shift_mm": {n: round(v, 2) for n, v in grid.shifts_mm.items()},
            "total_s": round(time.perf_counter() - started, 2)})
        return self._outputs(grid, results, skipped, models, bool(clinical), settings.key_images)

    def _outputs(self, grid: LesionsOnGrid, results: Sequence[LesionResult], skipped: Sequence[str],
                 models: LesionModels, clinical_used: bool, with_key_images: bool) -> list[Dataset]:
        parameters = {"models": models.versions(), "lesions": "segmented by pacsnode" if grid.seg_is_new
                      else "SEG in the study", "clinical data": "used" if clinical_used else "not available"}
        if skipped:
            parameters["not classified (too small)"] = ", ".join(skipped)
        algorithm = AlgorithmInfo(name="pacsnode liver lesion classification", version=self.version,
                                  parameters=parameters)
        outputs: list[Dataset] = [grid.seg] if grid.seg_is_new else []
        key_images: list[Dataset] = []
        if results and with_key_images:
            writer, series_uid = SummaryImageWriter(), generate_uid()
            for number, result in enumerate(results, start=1):  # one key image per lesion, one series
                key_images += writer.write_key_images(
                    grid.source, result.saliency, {result.lesion.label: result.lesion.mask}, [result.key_slice],
                    {result.key_slice: _captions(result)}, algorithm, SERIES["key images"],
                    "Liver lesion saliency research use", series_instance_uid=series_uid,
                    first_instance_number=number)
        groups: list[ImageFindings | SegmentFindings] = [ImageFindings("Clinical data", findings=[
            CodedFinding(yes_no(clinical_used), name=CLINICAL_DATA_USED)])]
        for result, key_image in zip(results, key_images or [None] * len(results), strict=True):
            findings = _kind_findings(result.seven) + [_malignancy_finding(result.binary)]
            if result.subtype is not None:
                findings += _subtype_findings(result.subtype)
            groups.append(SegmentFindings(
                result.lesion.segment_number, findings=findings,
                measurements=[VolumeMeasurement(result.volume_ml),
                              DiameterMeasurement(result.diameter_mm, name=codes.SCT.LongAxis)],
                key_images=[key_image] if key_image is not None else []))
        report = MeasurementReportWriter().write(grid.source, grid.seg, groups, algorithm, SERIES["SR"],
                                                 "Liver lesion classes research use")
        return outputs + [report] + key_images
