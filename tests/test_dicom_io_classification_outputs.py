"""DICOM outputs of liver lesion classification (issue 6): coded classes, saliency key images, SR references.

A small MR series, a SEG with two lesion segments, key images of two slices
and a TID 1500 report whose lesion groups carry the seven class
probabilities, benign/malignant, the malignant subtype and references to
the key images. Everything must pass dciodvfy and read back with highdicom
to the same codes and numbers.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicom_io import bitmap_font
from dicom_io.errors import WriterError
from dicom_io.identity import AlgorithmInfo
from dicom_io.secondary_capture import HEAT_FLOOR, RESEARCH_NOTICE, SummaryImageWriter
from dicom_io.seg import SegmentationWriter, SegmentSpec, liver_segment, tumour_segment
from dicom_io.sr import (
    PROBABILITY,
    CodedFinding,
    ImageFindings,
    MeasurementReportWriter,
    SegmentFindings,
    yes_no,
)
from inference.liver.lesion_kinds import (
    BENIGN_CODE,
    CLINICAL_DATA_USED,
    LESION_CLASS_QUESTION,
    MALIGNANCY_QUESTION,
    MALIGNANT_CODE,
    MALIGNANT_SUBTYPE_QUESTION,
    LesionKind,
    kind_of,
)
from tests.dicom_validate import assert_dsr2xml_parses, assert_valid_dicom
from tests.test_dicom_io_writing import ball, make_mr_series

SLICES, ROWS, COLUMNS = 6, 48, 48
SHAPE = (SLICES, ROWS, COLUMNS)
KEY_SLICES = (2, 4)
#: 48x48 source: enlarged 8x to 384 px, text at scale 2 under a 22-row header strip.
ZOOM, HEADER = 8, bitmap_font.CELL_HEIGHT * 2 + 2 * 2

#: Seven-class probabilities of lesion 1 (HCC most probable) and lesion 2 (cyst most probable).
PROBABILITIES = {
    2: [0.01, 0.02, 0.03, 0.04, 0.82, 0.05, 0.03],
    3: [0.70, 0.10, 0.05, 0.05, 0.04, 0.03, 0.03],
}


@pytest.fixture(scope="module")
def source() -> list[Dataset]:
    return make_mr_series(SLICES, ROWS, COLUMNS)


@pytest.fixture(scope="module")
def algorithm() -> AlgorithmInfo:
    return AlgorithmInfo("LiverLesionNet", "0.3", parameters={"clinical data": "not available"})


@pytest.fixture(scope="module")
def masks() -> dict[SegmentSpec, np.ndarray]:
    liver = ball(SHAPE, (2.5, 24, 24), 18)
    return {
        liver_segment(): liver,
        tumour_segment(1): ball(SHAPE, (2, 18, 18), 4) & liver,
        tumour_segment(2): ball(SHAPE, (4, 30, 30), 3) & liver,
    }


@pytest.fixture(scope="module")
def heat() -> np.ndarray:
    """Saliency: 1.0 in a block right of lesion 1 on slice 2, zero elsewhere."""
    values = np.zeros(SHAPE, dtype=np.float32)
    values[2, 14:22, 30:40] = 1.0
    values[4, 26:34, 26:34] = 0.5
    return values


@pytest.fixture(scope="module")
def seg(source: list[Dataset], masks: dict, algorithm: AlgorithmInfo) -> hd.seg.Segmentation:
    return SegmentationWriter().write(source, masks, algorithm, 300, "Liver lesions (AI)")


@pytest.fixture(scope="module")
def key_images(source: list[Dataset], masks: dict, heat: np.ndarray, algorithm: AlgorithmInfo) -> list[Dataset]:
    outlines = {spec.label: mask for spec, mask in masks.items() if spec.label.startswith("Liver lesion")}
    captions = {2: ["Lesion 1: HCC 82%", "malignant 95%"], 4: ["Lesion 2: cyst 70%", "benign 97%"]}
    return SummaryImageWriter().write_key_images(source, heat, outlines, list(KEY_SLICES), captions, algorithm, 310,
                                                 "Liver lesion saliency")


def _lesion_findings(segment: int) -> list[CodedFinding]:
    probabilities = PROBABILITIES[segment]
    findings = [CodedFinding(kind.code, probabilities[kind]) for kind in LesionKind]
    if segment == 2:
        findings += [CodedFinding(MALIGNANT_CODE, 0.95, name=MALIGNANCY_QUESTION),
                     CodedFinding(LesionKind.HCC.code, 0.88, name=MALIGNANT_SUBTYPE_QUESTION),
                     CodedFinding(LesionKind.METASTASIS.code, 0.07, name=MALIGNANT_SUBTYPE_QUESTION),
                     CodedFinding(LesionKind.OTHER_MALIGNANT.code, 0.05, name=MALIGNANT_SUBTYPE_QUESTION)]
    else:
        findings.append(CodedFinding(BENIGN_CODE, 0.97, name=MALIGNANCY_QUESTION))
    return findings


def _key(concept: hd.sr.CodedConcept) -> tuple[str, str]:
    return concept.value, concept.scheme_designator


def _probabilities(group: hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations) -> dict[tuple, float]:
    """(question, answer) -> probability, read from each Probability's concept modifier."""
    found = {}
    for measurement in group.get_measurements(name=PROBABILITY):
        [modifier] = [item for item in measurement[0].ContentSequence
                      if item.RelationshipType == "HAS CONCEPT MOD" and item.ValueType == "CODE"]
        question = hd.sr.CodedConcept.from_dataset(modifier.ConceptNameCodeSequence[0])
        answer = hd.sr.CodedConcept.from_dataset(modifier.ConceptCodeSequence[0])
        found[(_key(question), _key(answer))] = measurement.value
    return found


def test_lesion_kind_codes_are_distinct_and_invertible() -> None:
    assert len({_key(kind.code) for kind in LesionKind}) == 7
    assert all(kind_of(kind.code) is kind for kind in LesionKind)
    assert LesionKind.HCC.code.value == "109841003" and LesionKind.CYST.code.value == "85057007"
    assert [kind.malignant for kind in LesionKind] == [False] * 4 + [True] * 3
    with pytest.raises(KeyError, match="not a liver lesion class"):
        kind_of(codes.SCT.Liver)


def test_key_images_show_saliency_outlines_and_pass_dciodvfy(
    source: list[Dataset], key_images: list[Dataset], tmp_path: Path
) -> None:
    assert len(key_images) == len(KEY_SLICES)
    assert len({ds.SeriesInstanceUID for ds in key_images}) == 1
    for number, (image, z) in enumerate(zip(key_images, KEY_SLICES, strict=True), start=1):
        assert_valid_dicom(image, expected_iod="SCImage")
        assert image.InstanceNumber == number and image.SeriesNumber == 310
        assert image.SourceImageSequence[0].ReferencedSOPInstanceUID == source[z].SOPInstanceUID
        assert RESEARCH_NOTICE in image.SeriesDescription and RESEARCH_NOTICE in image.ImageComments
        assert image.StudyInstanceUID == source[0].StudyInstanceUID

    pixels = key_images[0].pixel_array.astype(int)   # slice 2: heat 1.0 in rows 14-21, columns 30-39

    def at(row: int, column: int) -> np.ndarray:
        return pixels[HEADER + row * ZOOM + ZOOM // 2, column * ZOOM + ZOOM // 2]

    hot = at(18, 35)
    assert hot[0] > hot[2] + 60, f"pixel under saliency 1.0 is {hot}, not tinted red"
    for row, column in ((5, 5), (40, 20), (18, 25)):   # heat 0: the grey source, unchanged
        cold = at(row, column)
        assert cold[0] == cold[1] == cold[2], f"pixel ({row}, {column}) without saliency is coloured: {cold}"
    # The lesion's outline is drawn in colour on its slice.
    lesion_rows = pixels[HEADER:HEADER + ROWS * ZOOM, :COLUMNS * ZOOM]
    coloured = (lesion_rows.max(axis=-1) - lesion_rows.min(axis=-1)) > 60
    assert coloured[(18 - 4) * ZOOM:(18 + 5) * ZOOM, (18 - 5) * ZOOM:(18 - 3) * ZOOM].any()
    # Caption text in the side panel (white pixels right of the image area).
    panel = pixels[HEADER:HEADER + ROWS * ZOOM, COLUMNS * ZOOM:]
    assert (panel == 255).all(axis=-1).sum() > 200


def test_report_carries_classes_probabilities_and_key_images(
    source: list[Dataset], seg: hd.seg.Segmentation, key_images: list[Dataset], algorithm: AlgorithmInfo,
    tmp_path: Path
) -> None:
    groups = [
        ImageFindings("Clinical data", findings=[CodedFinding(yes_no(False), name=CLINICAL_DATA_USED)]),
        SegmentFindings(2, findings=_lesion_findings(2), key_images=[key_images[0]]),
        SegmentFindings(3, findings=_lesion_findings(3), key_images=[key_images[1]]),
    ]
    sr = MeasurementReportWriter().write(source, seg, groups, algorithm, 311, "Liver lesion classes (AI)")
    path = tmp_path / "classes.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert_valid_dicom(path, expected_iod="ComprehensiveSR")
    assert_dsr2xml_parses(path)

    evidence = {item.ReferencedSOPInstanceUID
                for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for item in series.ReferencedSOPSequence}
    assert {ds.SOPInstanceUID for ds in key_images} <= evidence

    report = hd.sr.srread(path)
    [clinical] = report.content.get_image_measurement_groups()
    [answer] = clinical.get_qualitative_evaluations()
    assert answer.name == CLINICAL_DATA_USED and _key(answer.value) == ("373067005", "SCT")

    lesion_groups = report.content.get_volumetric_roi_measurement_groups()
    assert len(lesion_groups) == 2
    for group, findings, image in zip(lesion_groups, groups[1:], key_images, strict=True):
        assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert group.tracking_identifier == seg.get_segment_description(findings.segment_number).tracking_id
        evaluations = group.get_qualitative_evaluations()
        assert [(_key(e.name), _key(e.value)) for e in evaluations] == \
            [(_key(f.name), _key(f.code)) for f in findings.findings]
        assert _probabilities(group) == {(_key(f.name), _key(f.code)): f.probability for f in findings.findings}
        classes = {kind_of(e.value): p for (q, a), p in _probabilities(group).items()
                   for e in evaluations if (_key(e.name), _key(e.value)) == (q, a) and q == _key(LESION_CLASS_QUESTION)}
        assert [classes[kind] for kind in LesionKind] == PROBABILITIES[findings.segment_number]
        illustrations = [item for item in group[0].ContentSequence
                         if item.ValueType == "IMAGE" and _key(item.ConceptNameCodeSequence[0]) == ("121200", "DCM")]
        assert [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in illustrations] == \
            [image.SOPInstanceUID]
    # The same code answers two questions in lesion 1 (HCC as class and as subtype), each with its own probability.
    hcc = _key(LesionKind.HCC.code)
    first = _probabilities(lesion_groups[0])
    assert first[(_key(LESION_CLASS_QUESTION), hcc)] == pytest.approx(0.82)
    assert first[(_key(MALIGNANT_SUBTYPE_QUESTION), hcc)] == pytest.approx(0.88)
    assert first[(_key(MALIGNANCY_QUESTION), _key(MALIGNANT_CODE))] == pytest.approx(0.95)


def test_key_image_writer_rejects_bad_input(
    source: list[Dataset], heat: np.ndarray, masks: dict, algorithm: AlgorithmInfo
) -> None:
    writer = SummaryImageWriter()
    outline = {"Liver lesion 1": masks[tumour_segment(1)]}

    def write(**changes: object) -> list[Dataset]:
        arguments: dict = {"source_images": source, "heat": heat, "outlines": outline, "slices": [2],
                           "captions": {2: ["Lesion 1: HCC 82%"]}, "algorithm": algorithm, "series_number": 310}
        arguments.update(changes)
        return writer.write_key_images(**arguments)

    with pytest.raises(WriterError, match="out of range"):
        write(slices=[SLICES])
    with pytest.raises(WriterError, match="out of range"):
        write(slices=[-1])
    with pytest.raises(WriterError, match="non-empty"):
        write(slices=[])
    with pytest.raises(WriterError, match="twice"):
        write(slices=[2, 2], captions={})
    with pytest.raises(WriterError, match=r"\[0, 1\]"):
        write(heat=heat * 2.0)
    with pytest.raises(WriterError, match=r"\[0, 1\]"):
        write(heat=heat - 0.5)
    with pytest.raises(WriterError, match="finite"):
        write(heat=np.full(SHAPE, np.nan))
    with pytest.raises(WriterError, match="Saliency map"):
        write(heat=heat[:, :-1])
    with pytest.raises(WriterError, match="Outline"):
        write(outlines={"Liver lesion 1": masks[tumour_segment(1)][:-1]})
    with pytest.raises(WriterError, match="bool"):
        write(outlines={"Liver lesion 1": masks[tumour_segment(1)].astype(np.uint8)})
    with pytest.raises(WriterError, match="not one of the key slices"):
        write(captions={3: ["x"]})
    with pytest.raises(WriterError, match="sequence of text lines"):
        write(captions={2: "HCC"})
    # Saliency just under the floor leaves the source untouched: nothing is drawn.
    [image] = write(heat=np.full(SHAPE, HEAT_FLOOR / 2, dtype=np.float32), outlines={}, captions={})
    area = image.pixel_array[HEADER:HEADER + ROWS * ZOOM, :COLUMNS * ZOOM].astype(int)
    assert (area[..., 0] == area[..., 2]).all()


def test_report_refuses_foreign_or_malformed_key_images(
    source: list[Dataset], seg: hd.seg.Segmentation, key_images: list[Dataset], algorithm: AlgorithmInfo
) -> None:
    writer = MeasurementReportWriter()
    with pytest.raises(WriterError, match="key image 1 is not a DICOM instance"):
        SegmentFindings(2, key_images=[Dataset()])
    foreign = Dataset()
    foreign.update(key_images[0])
    foreign.StudyInstanceUID, foreign.SOPInstanceUID = generate_uid(), generate_uid()
    with pytest.raises(WriterError, match="another study"):
        writer.write(source, seg, [SegmentFindings(2, key_images=[foreign])], algorithm, 311)
    with pytest.raises(WriterError, match="reported twice"):
        writer.write(source, seg, [SegmentFindings(2, findings=[
            CodedFinding(LesionKind.HCC.code, 0.5), CodedFinding(LesionKind.HCC.code, 0.4)])], algorithm, 311)
