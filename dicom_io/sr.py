"""TID 1500 Measurement Reports (Comprehensive SR) of the numbers pipelines produce.

One measurement group (TID 1411, volumetric ROI) per tracked SEG segment,
carrying that segment's tracking identifier and UID, a reference to the
segment and the source images it lies on, and:

* volumes (ml), diameters (mm) and other scalars (mismatch volume and ratio,
  hypoperfusion intensity ratio) as numeric measurements, each referencing
  the source images it was measured on;
* qualitative findings as coded values, their probability as a numeric
  measurement (DCM 122157 "Probability", unit "1") in the same group: TID
  1500 qualitative evaluations take codes only. Each probability carries a
  HAS CONCEPT MOD child repeating its finding (question = answer, e.g.
  "Differential Diagnosis/Impression = Liver cell carcinoma"), so a group
  can hold a probability per class and readers tell them apart;
* key images (e.g. saliency overlays) as IMAGE items DCM 121200
  "Illustration of ROI" in the group, also listed as evidence. highdicom's
  TID 1411 class takes no such argument, so they are appended to the
  group's content after construction; dciodvfy accepts them and highdicom
  reads the group back unchanged.

The algorithm is recorded as the observer device and, per group and per
measurement, as TID 4019 Algorithm Identification. Every instance the
content references (source images, the SEG, any extra evidence) is listed as
evidence; highdicom refuses a report whose references are not.

Besides segment groups (:class:`SegmentFindings`), a report can carry:

* :class:`ImageRegionFindings`: measurements about a set of voxels marked as
  POINT image regions (SCOORD, one per voxel, each SELECTED FROM its source
  slice) in a TID 1411 group, e.g. the voxels an arterial input function was
  averaged over. Points keep the report a Comprehensive SR (3D coordinates
  would need Comprehensive 3D SR, which fewer systems accept);
* :class:`ImageFindings`: measurements and coded answers about the images as
  a whole (TID 1501), e.g. whether treatment criteria are met.

Codes: volume SCT 118565006, diameter SCT 81827009 (or long/short axis),
mismatch ratio DCM 113288 "Volume Ratio", probability DCM 122157, time of
peak concentration DCM 126370, yes/no SCT 373066001/373067005. Concepts
without a standard code use the private coding scheme ``99PACSNODE``
(declared in the Coding Scheme Identification Sequence), as PS3.16 allows
for local codes; they are all defined here (``PN-*``) so that none is given
twice.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import SegmentationStorage, generate_uid

from dicom_io.errors import WriterError
from dicom_io.identity import (
    AlgorithmInfo,
    NodeIdentity,
    copy_patient_and_study,
    fit_lo,
)
from dicom_io.source_images import (
    check_series_description,
    check_series_number,
    check_source_series,
)

logger = logging.getLogger(__name__)

#: Coding scheme of pacsnode's own concepts (the "99" prefix marks a private scheme).
PRIVATE_SCHEME = "99PACSNODE"
MISMATCH_VOLUME = Code("PN-0001", PRIVATE_SCHEME, "Perfusion mismatch volume")
HYPOPERFUSION_INTENSITY_RATIO = Code("PN-0002", PRIVATE_SCHEME, "Hypoperfusion intensity ratio")
#: The curve deconvolution uses as arterial input (finding type of the AIF's voxels).
ARTERIAL_INPUT_FUNCTION = Code("PN-0003", PRIVATE_SCHEME, "Arterial input function")
VOXELS_AVERAGED = Code("PN-0004", PRIVATE_SCHEME, "Number of voxels averaged")
PEAK_DELTA_R2STAR = Code("PN-0005", PRIVATE_SCHEME, "Peak change in transverse relaxation rate R2*")
VOF_SCALING_FACTOR = Code("PN-0006", PRIVATE_SCHEME, "Venous output function scaling factor")
AIF_QUALITY = Code("PN-0007", PRIVATE_SCHEME, "Arterial input function quality score")
#: DEFUSE 3 (Albers et al., NEJM 2018) target mismatch: answered yes/no, with the limits applied.
DEFUSE3_TARGET_MISMATCH = Code("PN-0010", PRIVATE_SCHEME, "DEFUSE 3 target mismatch criteria met")
DEFUSE3_CORE_LIMIT = Code("PN-0011", PRIVATE_SCHEME, "DEFUSE 3 core volume limit")
DEFUSE3_RATIO_LIMIT = Code("PN-0012", PRIVATE_SCHEME, "DEFUSE 3 mismatch ratio limit")
DEFUSE3_MISMATCH_LIMIT = Code("PN-0013", PRIVATE_SCHEME, "DEFUSE 3 mismatch volume limit")
#: DCM 126370, time from the first dynamic frame to the peak of a concentration curve.
TIME_OF_PEAK_CONCENTRATION = codes.DCM.TimeOfPeakConcentration
YES = codes.SCT.Yes
NO = codes.SCT.No
#: DCM 113288 "Volume Ratio": hypoperfused volume / core volume.
MISMATCH_RATIO = codes.DCM.VolumeRatio
PROBABILITY = codes.DCM.Probability
#: DCM 121200, an image that illustrates a measurement group's region (here: key images).
ILLUSTRATION_OF_ROI = codes.DCM.IllustrationOfROI

MILLILITRE = Code("ml", "UCUM", "milliliter")
MILLIMETRE = codes.UCUM.Millimeter
RATIO = codes.UCUM.Ratio
NO_UNITS = codes.UCUM.NoUnits
SECOND = Code("s", "UCUM", "second")
PER_SECOND = Code("/s", "UCUM", "per second")
VOXELS = Code("{voxels}", "UCUM", "voxels")


@dataclass(frozen=True)
class VolumeMeasurement:
    """Volume of the segment in millilitres."""

    value_ml: float
    name: Code = codes.SCT.Volume

    def __post_init__(self) -> None:
        self.to_measurement()

    def to_measurement(self) -> tuple[Code, float, Code]:
        _check_number(self.value_ml, f"{self.name.meaning} (ml)", minimum=0.0)
        return self.name, float(self.value_ml), MILLILITRE


@dataclass(frozen=True)
class DiameterMeasurement:
    """A diameter of the segment in millimetres (``name``: Diameter, or SCT Long axis / Short axis)."""

    value_mm: float
    name: Code = codes.SCT.Diameter

    def __post_init__(self) -> None:
        self.to_measurement()

    def to_measurement(self) -> tuple[Code, float, Code]:
        _check_number(self.value_mm, f"{self.name.meaning} (mm)", minimum=0.0)
        return self.name, float(self.value_mm), MILLIMETRE


@dataclass(frozen=True)
class ScalarMeasurement:
    """Any other numeric measurement: a coded concept, a value and a UCUM unit."""

    name: Code
    value: float
    unit: Code

    def __post_init__(self) -> None:
        self.to_measurement()

    def to_measurement(self) -> tuple[Code, float, Code]:
        if not isinstance(self.name, (Code, hd.sr.CodedConcept)) or not isinstance(self.unit, (Code, hd.sr.CodedConcept)):
            raise WriterError(f"ScalarMeasurement needs coded name and unit, got {self.name!r} / {self.unit!r}")
        _check_number(self.value, self.name.meaning)
        return self.name, float(self.value), self.unit


def mismatch_volume(value_ml: float) -> ScalarMeasurement:
    """Hypoperfused volume minus core volume (ml)."""
    _check_number(value_ml, "Mismatch volume", minimum=0.0)
    return ScalarMeasurement(MISMATCH_VOLUME, value_ml, MILLILITRE)


def mismatch_ratio(ratio: float) -> ScalarMeasurement:
    """Hypoperfused volume divided by core volume."""
    _check_number(ratio, "Mismatch ratio", minimum=0.0)
    return ScalarMeasurement(MISMATCH_RATIO, ratio, RATIO)


def hypoperfusion_intensity_ratio(ratio: float) -> ScalarMeasurement:
    """Volume with Tmax > 10 s divided by volume with Tmax > 6 s."""
    _check_number(ratio, "Hypoperfusion intensity ratio", minimum=0.0, maximum=1.0)
    return ScalarMeasurement(HYPOPERFUSION_INTENSITY_RATIO, ratio, RATIO)


def yes_no(answer: bool) -> Code:
    """SCT Yes (373066001) or No (373067005), the coded answer of a yes/no question."""
    return YES if answer else NO


@dataclass(frozen=True)
class CodedFinding:
    """A qualitative finding: a coded class (``code``) with the classifier's ``probability`` (0-1).

    ``name`` is the question the code answers: default DCM 111023
    "Differential Diagnosis/Impression". (DCM 121071 "Finding" would clash
    with the group's own Finding item, and readers would not find it.)
    """

    code: Code
    probability: float | None = None
    name: Code = codes.DCM.DifferentialDiagnosisImpression

    def __post_init__(self) -> None:
        if not isinstance(self.code, (Code, hd.sr.CodedConcept)) or not isinstance(self.name, (Code, hd.sr.CodedConcept)):
            raise WriterError(f"CodedFinding needs coded code and name, got {self.code!r} / {self.name!r}")
        if self.probability is not None:
            _check_number(self.probability, f"Probability of {self.code.meaning}", 0.0, 1.0)


Measurement = VolumeMeasurement | DiameterMeasurement | ScalarMeasurement


@dataclass(frozen=True)
class SegmentFindings:
    """Everything reported about one SEG segment; becomes one TID 1411 measurement group.

    ``finding_type`` defaults to the segment's Segmented Property Type and
    ``finding_site`` to its anatomic region, as written in the SEG.
    """

    segment_number: int
    measurements: Sequence[Measurement] = ()
    findings: Sequence[CodedFinding] = ()
    finding_type: Code | None = None
    finding_site: Code | None = None
    #: Images illustrating the finding (e.g. saliency key images), referenced as "Illustration of ROI".
    key_images: Sequence[Dataset] = ()

    def __post_init__(self) -> None:
        if isinstance(self.segment_number, bool) or not isinstance(self.segment_number, (int, np.integer)) \
                or self.segment_number < 1:
            raise WriterError(f"segment_number must be a positive int, got {self.segment_number!r}")
        for index, image in enumerate(self.key_images):
            if not isinstance(image, Dataset) or not image.get("SOPClassUID") or not image.get("SOPInstanceUID"):
                raise WriterError(f"Segment {self.segment_number}: key image {index + 1} is not a DICOM instance "
                                  "with SOPClassUID and SOPInstanceUID")


@dataclass(frozen=True)
class ImageRegionFindings:
    """Everything reported about a set of voxels; becomes one TID 1411 group of POINT image regions.

    ``voxels`` are ``(slice, row, column)`` indices into the writer's
    ``source_images`` (in the order given): each becomes a POINT at the
    pixel's centre, SELECTED FROM that slice. Measurements reference the
    slices the voxels lie on.
    """

    tracking_label: str
    voxels: Sequence[Sequence[int]]
    finding_type: Code
    measurements: Sequence[Measurement] = ()
    findings: Sequence[CodedFinding] = ()
    finding_site: Code | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.tracking_label, str) or not self.tracking_label.strip():
            raise WriterError(f"ImageRegionFindings needs a tracking label, got {self.tracking_label!r}")
        voxels = np.asarray(self.voxels)
        if voxels.ndim != 2 or voxels.shape[1] != 3 or len(voxels) == 0:
            raise WriterError(f"{self.tracking_label}: voxels must be a non-empty list of (slice, row, column), "
                              f"got shape {voxels.shape}")
        if not np.issubdtype(voxels.dtype, np.integer) or (voxels < 0).any():
            raise WriterError(f"{self.tracking_label}: voxel indices must be non-negative integers")
        if not isinstance(self.finding_type, (Code, hd.sr.CodedConcept)):
            raise WriterError(f"{self.tracking_label}: finding_type must be a coded concept")


@dataclass(frozen=True)
class ImageFindings:
    """Measurements and coded answers about the images as a whole; becomes one TID 1501 group."""

    tracking_label: str
    measurements: Sequence[Measurement] = ()
    findings: Sequence[CodedFinding] = ()
    finding_type: Code | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.tracking_label, str) or not self.tracking_label.strip():
            raise WriterError(f"ImageFindings needs a tracking label, got {self.tracking_label!r}")
        if not self.measurements and not self.findings:
            raise WriterError(f"{self.tracking_label}: an ImageFindings group needs a measurement or a finding")


Group = SegmentFindings | ImageRegionFindings | ImageFindings


class MeasurementReportWriter:
    """Builds TID 1500 Comprehensive SR measurement reports for one node identity."""

    def __init__(self, node: NodeIdentity | None = None) -> None:
        self.node = node or NodeIdentity()

    def write(
        self,
        source_images: Sequence[Dataset],
        segmentation: Dataset,
        groups: Sequence[Group],
        algorithm: AlgorithmInfo,
        series_number: int,
        series_description: str | None = None,
        *,
        procedure_reported: Code = codes.SCT.ImagingProcedure,
        extra_evidence: Sequence[Dataset] = (),
        instance_number: int = 1,
    ) -> hd.sr.ComprehensiveSR:
        """A measurement report with one group per entry of ``groups``, in order.

        ``segmentation`` is the SEG (as written by
        :class:`~dicom_io.seg.SegmentationWriter`) whose segments the
        :class:`SegmentFindings` refer to; it must derive from
        ``source_images``. :class:`ImageRegionFindings` index
        ``source_images`` in the order given. ``extra_evidence``
        lists further instances to record as evidence (e.g. the Parametric
        Maps the thresholds were applied to).
        """
        source = check_source_series(source_images)
        series_number = check_series_number(series_number)
        if not isinstance(algorithm, AlgorithmInfo):
            raise WriterError(f"algorithm must be an AlgorithmInfo, got {type(algorithm).__name__}")
        series_description = check_series_description(
            series_description or fit_lo(f"Measurements ({algorithm.name})")
        )
        seg = _check_segmentation(segmentation, source.first)
        if not groups:
            raise WriterError("A measurement report needs at least one group")

        segment_frames = _frames_by_segment(seg)
        by_uid = {ds.SOPInstanceUID: ds for ds in source.images}
        seen: set[int] = set()
        measurement_groups: list[Any] = []
        for group in groups:
            if isinstance(group, ImageRegionFindings):
                measurement_groups.append(self._region_group(group, algorithm, list(source.images)))
                continue
            if isinstance(group, ImageFindings):
                algorithm_id = algorithm.sr_identification()
                measurements, evaluations = _measurements_and_evaluations(
                    group.tracking_label, group.measurements, group.findings, algorithm_id, None)
                measurement_groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=group.tracking_label),
                    finding_type=group.finding_type, algorithm_id=algorithm_id,
                    measurements=measurements or None, qualitative_evaluations=evaluations or None))
                continue
            if not isinstance(group, SegmentFindings):
                raise WriterError("groups must hold SegmentFindings, ImageRegionFindings or ImageFindings, "
                                  f"got {type(group).__name__}")
            if group.segment_number in seen:
                raise WriterError(f"Segment {group.segment_number} has two measurement groups; merge them")
            seen.add(group.segment_number)
            if group.segment_number not in segment_frames:
                raise WriterError(
                    f"Segment {group.segment_number} is not in the SEG (segments "
                    f"{sorted(segment_frames)}); the report can only refer to written segments"
                )
            measurement_groups.append(
                self._group(seg, group, algorithm, segment_frames[group.segment_number], by_uid, source.images)
            )

        observer = hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=algorithm.device_uid(),
                name=algorithm.name,
                manufacturer_name=self.node.manufacturer,
                model_name=algorithm.label,
            ),
        )
        try:
            report = hd.sr.MeasurementReport(
                observation_context=hd.sr.ObservationContext(observer_device_context=observer),
                procedure_reported=procedure_reported,
                imaging_measurements=measurement_groups,
                title=codes.DCM.ImagingMeasurementReport,
                referenced_images=list(source.images),
            )
            key_images = [image for group in groups if isinstance(group, SegmentFindings) for image in group.key_images]
            evidence = list({ds.SOPInstanceUID: ds for ds in [*source.images, seg, *extra_evidence, *key_images]}
                            .values())
            sr = hd.sr.ComprehensiveSR(
                evidence=evidence,
                content=report,
                series_instance_uid=generate_uid(),
                series_number=series_number,
                sop_instance_uid=generate_uid(),
                instance_number=instance_number,
                is_complete=True,
                is_final=False,
                is_verified=False,
                series_description=series_description,
                coding_schemes=[
                    hd.coding_schemes.CodingSchemeIdentificationItem(
                        designator=PRIVATE_SCHEME, name="pacsnode local codes",
                        responsible_organization="pacsnode project",
                    )
                ],
                **self.node.equipment_kwargs(algorithm),
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise WriterError(f"{source.label}: highdicom refused the measurement report: {exc}") from exc
        copy_patient_and_study(source.first, sr)
        logger.info("Built measurement report %r (series %d): %d groups", series_description, series_number,
                    len(measurement_groups))
        return sr

    def _group(self, seg: hd.seg.Segmentation, group: SegmentFindings, algorithm: AlgorithmInfo,
               frames: list[tuple[int, str, bool]], by_uid: dict[str, Dataset],
               images: Sequence[Dataset]) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
        description = seg.get_segment_description(group.segment_number)
        tracking = hd.sr.TrackingIdentifier(
            uid=str(description.tracking_uid) if description.tracking_uid else generate_uid(),
            identifier=description.tracking_id or description.segment_label,
        )
        # The source images the segment lies on; all of its frames' sources when it is empty.
        on = [uid for _, uid, nonempty in frames if nonempty] or [uid for _, uid, _ in frames]
        unknown = [uid for uid in on if uid not in by_uid]
        if unknown:
            raise WriterError(f"The SEG refers to source images not given as source_images: {unknown[:3]}")
        measured_on = [hd.sr.SourceImageForMeasurement.from_source_image(by_uid[uid]) for uid in dict.fromkeys(on)]
        referenced_segment = hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=group.segment_number,
            source_images=[hd.sr.SourceImageForSegmentation.from_source_image(by_uid[uid])
                           for uid in dict.fromkeys(on)],
        )
        algorithm_id = algorithm.sr_identification()
        measurements, evaluations = _measurements_and_evaluations(
            f"Segment {group.segment_number}", group.measurements, group.findings, algorithm_id, measured_on)
        finding_type = group.finding_type or _plain_code(description.segmented_property_type)
        site = group.finding_site
        if site is None and description.anatomic_regions:
            site = _plain_code(description.anatomic_regions[0])
        measurement_group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_segment=referenced_segment,
            finding_type=finding_type,
            algorithm_id=algorithm_id,
            finding_sites=[hd.sr.FindingSite(site)] if site is not None else None,
            measurements=measurements or None,
            qualitative_evaluations=evaluations or None,
        )
        study = images[0].StudyInstanceUID
        for image in group.key_images:
            if image.get("StudyInstanceUID") != study:
                raise WriterError(f"Segment {group.segment_number}: key image {image.SOPInstanceUID} belongs to "
                                  "another study than the source images")
            # TID 1410/1411 row "Illustration of ROI"; highdicom has no argument for it.
            measurement_group[0].ContentSequence.append(hd.sr.ImageContentItem(
                name=ILLUSTRATION_OF_ROI, referenced_sop_class_uid=image.SOPClassUID,
                referenced_sop_instance_uid=image.SOPInstanceUID,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
        return measurement_group


    def _region_group(self, group: ImageRegionFindings, algorithm: AlgorithmInfo,
                      images: list[Dataset]) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
        """A TID 1411 group whose region is one POINT per voxel on its source slice."""
        voxels = np.asarray(group.voxels, dtype=np.int64)
        regions = []
        for slice_index, row, column in voxels:
            if slice_index >= len(images):
                raise WriterError(f"{group.tracking_label}: voxel on slice {slice_index}, but only "
                                  f"{len(images)} source images were given")
            image = images[slice_index]
            if row >= int(image.Rows) or column >= int(image.Columns):
                raise WriterError(f"{group.tracking_label}: voxel (row {row}, column {column}) is outside the "
                                  f"{image.Rows}x{image.Columns} source image")
            # SCOORD (column, row): the centre of pixel (r, c) is (c + 0.5, r + 0.5).
            regions.append(hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POINT,
                graphic_data=np.array([[column + 0.5, row + 0.5]], dtype=np.float64),
                source_image=hd.sr.SourceImageForRegion.from_source_image(image)))
        on = sorted({int(z) for z in voxels[:, 0]})
        measured_on = [hd.sr.SourceImageForMeasurement.from_source_image(images[z]) for z in on]
        algorithm_id = algorithm.sr_identification()
        measurements, evaluations = _measurements_and_evaluations(
            group.tracking_label, group.measurements, group.findings, algorithm_id, measured_on)
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=group.tracking_label),
            referenced_regions=regions,
            finding_type=group.finding_type,
            algorithm_id=algorithm_id,
            finding_sites=[hd.sr.FindingSite(group.finding_site)] if group.finding_site is not None else None,
            measurements=measurements or None,
            qualitative_evaluations=evaluations or None,
        )


def _measurements_and_evaluations(
    label: str, items: Sequence[Measurement], findings: Sequence[CodedFinding],
    algorithm_id: hd.sr.AlgorithmIdentification, measured_on: list[hd.sr.SourceImageForMeasurement] | None,
) -> tuple[list[hd.sr.Measurement], list[hd.sr.QualitativeEvaluation]]:
    """TID 300 measurements and coded evaluations of one group (a finding's probability as a measurement)."""
    measurements = []
    for item in items:
        if not isinstance(item, (VolumeMeasurement, DiameterMeasurement, ScalarMeasurement)):
            raise WriterError(f"{label}: {type(item).__name__} is not a Volume-, Diameter- or ScalarMeasurement")
        name, value, unit = item.to_measurement()
        measurements.append(hd.sr.Measurement(
            name=name, value=value, unit=unit, algorithm_id=algorithm_id, referenced_images=measured_on or None,
        ))
    evaluations = []
    answered: set[tuple[str, str, str, str]] = set()
    for finding in findings:
        if isinstance(finding, CodedFinding) and finding.name == codes.DCM.Finding:
            raise WriterError(
                f"{label}: a coded finding cannot be named DCM 121071 'Finding'; "
                "that concept is the group's finding type (use finding_type for it)"
            )
        if not isinstance(finding, CodedFinding) or not isinstance(finding.code, (Code, hd.sr.CodedConcept)):
            raise WriterError(f"{label}: findings must be CodedFinding with a Code")
        key = (finding.name.value, finding.name.scheme_designator, finding.code.value, finding.code.scheme_designator)
        if key in answered:
            raise WriterError(f"{label}: '{finding.name.meaning} = {finding.code.meaning}' is reported twice; "
                              "its probabilities could not be told apart")
        answered.add(key)
        evaluations.append(hd.sr.QualitativeEvaluation(name=finding.name, value=finding.code))
        if finding.probability is not None:
            _check_number(finding.probability, f"Probability of {finding.code.meaning}", 0.0, 1.0)
            probability = hd.sr.Measurement(
                name=PROBABILITY, value=float(finding.probability), unit=NO_UNITS,
                algorithm_id=algorithm_id, referenced_images=measured_on or None,
            )
            # Which answer this is the probability of: the finding itself, as a concept modifier.
            modifier = hd.sr.CodeContentItem(name=finding.name, value=finding.code,
                                             relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD)
            item = probability[0]
            item.ContentSequence = [*item.get("ContentSequence", []), modifier]
            measurements.append(probability)
    return measurements, evaluations


def _plain_code(concept: hd.sr.CodedConcept) -> Code:
    return Code(concept.value, concept.scheme_designator, concept.meaning)


def _check_number(value: float, what: str, minimum: float | None = None, maximum: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise WriterError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise WriterError(f"{what} must be finite, got {value!r}")
    if minimum is not None and value < minimum:
        raise WriterError(f"{what} must be at least {minimum:g}, got {value!r}")
    if maximum is not None and value > maximum:
        raise WriterError(f"{what} must be at most {maximum:g}, got {value!r}")


def _check_segmentation(segmentation: Dataset, source: Dataset) -> hd.seg.Segmentation:
    if not isinstance(segmentation, Dataset) or segmentation.get("SOPClassUID") != SegmentationStorage:
        raise WriterError("segmentation must be a DICOM Segmentation (SEG) dataset")
    for keyword in ("StudyInstanceUID", "FrameOfReferenceUID"):
        if segmentation.get(keyword) != source.get(keyword):
            raise WriterError(f"The SEG and the source images have different {keyword}s")
    referenced = {item.SeriesInstanceUID for item in segmentation.get("ReferencedSeriesSequence", [])}
    if source.SeriesInstanceUID not in referenced:
        raise WriterError("The SEG was not derived from the given source series (ReferencedSeriesSequence)")
    if isinstance(segmentation, hd.seg.Segmentation):
        return segmentation
    try:
        return hd.seg.Segmentation.from_dataset(segmentation, copy=True)
    except (ValueError, AttributeError, KeyError) as exc:
        raise WriterError(f"The SEG cannot be read back by highdicom: {exc}") from exc


def _frames_by_segment(seg: Dataset) -> dict[int, list[tuple[int, str, bool]]]:
    """Segment number -> [(frame number, source SOPInstanceUID, frame has pixels)] from the per-frame groups."""
    numbers = [int(item.SegmentNumber) for item in seg.SegmentSequence]
    result: dict[int, list[tuple[int, str, bool]]] = {n: [] for n in numbers}
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), -1)
    # With a single segment, writers may put the segment identification in the shared groups.
    shared = seg.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        identification = item.get("SegmentIdentificationSequence") or shared.get("SegmentIdentificationSequence")
        if not identification:
            raise WriterError(f"SEG frame {index + 1} names no segment (SegmentIdentificationSequence)")
        number = int(identification[0].ReferencedSegmentNumber)
        sources = [
            src.ReferencedSOPInstanceUID
            for derivation in item.get("DerivationImageSequence", [])
            for src in derivation.get("SourceImageSequence", [])
        ]
        for uid in sources:
            result.setdefault(number, []).append((index + 1, uid, bool(pixels[index].any())))
    return result
