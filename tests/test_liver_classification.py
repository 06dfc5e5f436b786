"""The liver-classification pipeline: a six-sequence phantom study in, an SR with coded classes and
probabilities and saliency key images out; the fallbacks and refusals; end to end through a node into Orthanc."""

from __future__ import annotations

import io
import json
import shutil
import urllib.request
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.sr.codedict import codes

from dicom_io.study import group_study
from inference.base import PipelineInputError, SeriesInput, StudyInput
from inference.liver.classification import (
    SERIES,
    LiverClassificationPipeline,
    header_age_and_sex,
)
from inference.liver.lesion_kinds import (
    CLINICAL_DATA_USED,
    LESION_CLASS_QUESTION,
    MALIGNANCY_QUESTION,
    MALIGNANT_SUBTYPE_QUESTION,
    LesionKind,
    kind_of,
)
from inference.liver.phantom_dicom import write_liver_lesion_study
from tests.dicom_validate import assert_valid_dicom

SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
TOKEN = "cls-token"
#: A held-out phantom (seeds below 10000 are never trained on) with a large cyst and an HCC.
SEED, KINDS = 4, [LesionKind.CYST, LesionKind.HCC]  # 27 mm and 29 mm


def _study_input(folder: Path, extra: dict | None = None, drop: tuple[str, ...] = ()) -> StudyInput:
    """What the node hands the pipeline: the study's series (the ground truth stays behind unless copied in)."""
    paths = [p for p in folder.rglob("*") if p.is_file() and "ground_truth" not in p.parts]
    series = tuple(SeriesInput(s.series_uid, s.modality, s.series_description, s.series_number, s.paths)
                   for s in group_study(paths).values()
                   if not any(word in (s.series_description or "").lower() for word in drop))
    return StudyInput(str(series[0].paths and dcmread(series[0].paths[0]).StudyInstanceUID), series,
                      extra=extra or {})


@pytest.fixture(scope="module")
def study_folder(tmp_path_factory) -> Path:
    """The phantom study with its truth SEG sent along as the site's lesion ROI."""
    folder = write_liver_lesion_study(tmp_path_factory.mktemp("lesions"), SEED, lesion_kinds=KINDS)
    (folder / "90_lesion_roi").mkdir()
    shutil.copy(folder / "ground_truth" / "truth-seg.dcm", folder / "90_lesion_roi" / "seg.dcm")
    return folder


@pytest.fixture(scope="module")
def truth(study_folder: Path) -> dict:
    return json.loads((study_folder / "ground_truth" / "truth.json").read_text())


@pytest.fixture(scope="module")
def image_only(study_folder: Path) -> list:
    return list(LiverClassificationPipeline().run(_study_input(study_folder), {}))


def _report(outputs) -> hd.sr.ComprehensiveSR:  # type: ignore[no-untyped-def]
    [sr] = [ds for ds in outputs if ds.SOPClassUID == SR_CLASS]
    return hd.sr.ComprehensiveSR.from_dataset(sr)


def _lesion_groups(report: hd.sr.ComprehensiveSR) -> dict[int, dict]:
    """Segment number → {"classes": {LesionKind: p}, "malignancy": (meaning, p), "subtype": {LesionKind: p},
    "key_images": [SOP Instance UID]}, read back with highdicom: each probability names its (question, answer)
    in a HAS CONCEPT MOD item."""
    groups = {}
    for group in report.content.get_volumetric_roi_measurement_groups():
        [number] = group.referenced_segment.referenced_segment_numbers
        entry: dict = {"classes": {}, "subtype": {}, "malignancy": None, "key_images": []}
        answers = {(e.name.value, e.value.value): e.value for e in group.get_qualitative_evaluations()}
        for measurement in group.get_measurements(name=codes.DCM.Probability):
            [modifier] = [item for item in measurement[0].ContentSequence
                          if item.RelationshipType == "HAS CONCEPT MOD" and item.ValueType == "CODE"]
            question = modifier.ConceptNameCodeSequence[0].CodeValue
            answer = answers[(question, modifier.ConceptCodeSequence[0].CodeValue)]
            if question == MALIGNANCY_QUESTION.value:
                entry["malignancy"] = (answer.meaning, float(measurement.value))
            elif question == MALIGNANT_SUBTYPE_QUESTION.value:
                entry["subtype"][kind_of(answer)] = float(measurement.value)
            elif question == LESION_CLASS_QUESTION.value:
                entry["classes"][kind_of(answer)] = float(measurement.value)
        entry["key_images"] = [str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                               for item in group[0].ContentSequence if item.ValueType == "IMAGE"
                               and item.ConceptNameCodeSequence[0].CodeValue == "121200"]  # Illustration of ROI
        groups[int(number)] = entry
    return groups


def _texts(ds) -> str:  # type: ignore[no-untyped-def]
    """Every string value of a dataset, nested ones included (algorithm names and parameters are among them)."""
    found: list[str] = []
    ds.walk(lambda _, element: found.append(str(element.value)) if element.VR in ("LO", "ST", "UT", "SH", "LT")
            else None)
    return "\n".join(found)


def _clinical_answer(report: hd.sr.ComprehensiveSR) -> str:
    """The SR's answer (Yes/No) to "Clinical data used"."""
    for group in report.content.get_image_measurement_groups():
        for evaluation in group.get_qualitative_evaluations():
            if evaluation.name.value == CLINICAL_DATA_USED.value:
                return str(evaluation.value.meaning)
    raise AssertionError("the SR does not say whether clinical data was used")


def test_every_lesion_gets_seven_coded_classes_with_probabilities_and_a_key_image(image_only, truth):
    report = _report(image_only)
    groups = _lesion_groups(report)
    classified = [lesion for lesion in truth["lesions"] if lesion["longest_axial_diameter_mm"] >= 10.0]
    # Segment numbers of the truth SEG: 1 liver, 2 all tumours, then lesion N is segment N + 2.
    assert sorted(groups) == sorted(lesion["index"] + 2 for lesion in classified)
    key_images = {str(ds.SOPInstanceUID): ds for ds in image_only if ds.SOPClassUID == SC_CLASS}
    assert len(key_images) == len(classified)
    assert {int(ds.SeriesNumber) for ds in key_images.values()} == {SERIES["key images"]}
    assert len({str(ds.SeriesInstanceUID) for ds in key_images.values()}) == 1
    for entry in groups.values():
        assert set(entry["classes"]) == set(LesionKind)
        assert sum(entry["classes"].values()) == pytest.approx(1.0, abs=1e-3)
        assert entry["malignancy"][0] in ("Benign", "Malignant") and 0.5 <= entry["malignancy"][1] <= 1.0
        assert set(entry["subtype"]) == {LesionKind.HCC, LesionKind.METASTASIS, LesionKind.OTHER_MALIGNANT}
        [key_image] = entry["key_images"]
        assert key_image in key_images
    assert _clinical_answer(report) == "No"


def test_outputs_are_valid_dicom(image_only):
    for ds in image_only:
        assert_valid_dicom(ds)


def test_the_large_cyst_is_called_a_benign_cyst(image_only, study_folder, truth):
    [cyst] = [lesion for lesion in truth["lesions"] if lesion["kind"] == "cyst"]
    assert cyst["longest_axial_diameter_mm"] >= 15.0
    groups = _lesion_groups(_report(image_only))
    # Segment numbers of the truth SEG: 1 liver, 2 all tumours, then lesion N is segment N + 2.
    entry = groups[cyst["index"] + 2]
    assert max(entry["classes"], key=entry["classes"].get) is LesionKind.CYST
    assert entry["malignancy"][0] == "Benign"


def test_clinical_data_switches_the_subtype_to_the_clinical_model_and_the_sr_says_so(study_folder):
    clinical = json.loads((study_folder / "ground_truth" / "clinical.json").read_text())
    outputs = LiverClassificationPipeline().run(_study_input(study_folder, extra={"clinical": clinical}), {})
    report = _report(outputs)
    assert _clinical_answer(report) == "Yes"
    [sr] = [ds for ds in outputs if ds.SOPClassUID == SR_CLASS]
    assert "liver-cls-f" in _texts(sr)


def test_without_contrast_phases_the_three_sequence_models_answer(study_folder):
    outputs = LiverClassificationPipeline().run(
        _study_input(study_folder, drop=("arterial", "delayed")), {})  # the ROI is on the portal phase
    [sr] = [ds for ds in outputs if ds.SOPClassUID == SR_CLASS]
    text = _texts(sr)
    assert "liver-cls-b" in text and "liver-cls-d" in text and "liver-cls-a" not in text
    groups = _lesion_groups(_report(outputs))
    assert groups and all(not entry["subtype"] for entry in groups.values())  # E needs six sequences


def test_without_t2_the_job_fails_naming_it(study_folder):
    with pytest.raises(PipelineInputError, match="t2"):
        LiverClassificationPipeline().run(_study_input(study_folder, drop=("t2",)), {})


def test_without_a_seg_the_lesions_are_segmented_first_and_the_seg_is_sent(study_folder):
    outputs = LiverClassificationPipeline().run(_study_input(study_folder, drop=("ground truth", "roi")),
                                                {"lesions": "auto"})
    [seg] = [ds for ds in outputs if ds.SOPClassUID == SEG_CLASS]
    assert int(seg.SeriesNumber) == SERIES["SEG"]
    [sr] = [ds for ds in outputs if ds.SOPClassUID == SR_CLASS]
    referenced = {str(item.ReferencedSOPInstanceUID) for item in
                  sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence}
    assert referenced  # the SR lists its evidence
    assert any(str(ds.SOPInstanceUID) == str(seg.SOPInstanceUID) for ds in outputs)
    assert _lesion_groups(_report(outputs))  # the segmentation model found lesions to classify


def test_lesions_seg_option_refuses_a_study_without_a_seg(study_folder):
    with pytest.raises(PipelineInputError, match="no SEG"):
        LiverClassificationPipeline().run(_study_input(study_folder, drop=("ground truth", "roi")),
                                          {"lesions": "seg"})


def test_age_and_sex_come_from_the_header(study_folder):
    [first] = [p for p in sorted(study_folder.rglob("*.dcm")) if "ground_truth" not in p.parts][:1]
    ds = dcmread(first)
    ds.PatientAge, ds.PatientSex = "067Y", "F"
    assert header_age_and_sex([ds]) == (67.0, "F")
    del ds.PatientAge
    ds.PatientBirthDate, ds.StudyDate = "19600101", "20200101"
    age, _ = header_age_and_sex([ds])
    assert age == pytest.approx(60.0, abs=0.01)


def test_pushed_with_storescu_then_segmented_and_classified_into_orthanc(tmp_path, study_folder):
    from tests.node_harness import NodeProcess, wait_until
    from tests.orthanc_peer import OrthancPeer

    orthanc = OrthancPeer(tmp_path / "orthanc")
    route = {"name": "liver-lesions", "level": "study", "match": {"Modality": "MR"},
             "pipelines": ["liver-classification"], "destinations": ["PACS"]}
    node = NodeProcess(tmp_path / "node", routes=[route], study={"stable_seconds": 2}, http={"token": TOKEN},
                       destinations={"PACS": {"ae_title": "ORTHANC", "host": "127.0.0.1",
                                              "port": orthanc.dicom_port}})
    node.start()
    try:
        files = sorted(p for p in study_folder.rglob("*") if p.is_file()
                       and "ground_truth" not in p.parts and "90_lesion_roi" not in p.parts)
        accession = str(dcmread(files[0]).AccessionNumber)
        clinical = (study_folder / "ground_truth" / "clinical.json").read_bytes()
        request = urllib.request.Request(f"http://127.0.0.1:{node.http_port}/clinical/{accession}", data=clinical,
                                         method="PUT", headers={"Authorization": f"Bearer {TOKEN}",
                                                                "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status in (200, 201)
        result = node.storescu(*files)
        assert result.returncode == 0, result.stderr
        wait_until(lambda: node.status()["outbox"] and all(r["state"] == "sent" for r in node.status()["outbox"]),
                   timeout=400, interval=2, what="classification results in Orthanc")
        [study] = node.status()["studies"]
        [job] = study["jobs"]
        assert job["pipeline"] == "liver-classification" and job["state"] == "succeeded"
        arrived: dict[str, list] = {}
        for instance_id in orthanc.instances():
            ds = dcmread(io.BytesIO(orthanc.download(instance_id)))
            arrived.setdefault(str(ds.SOPClassUID), []).append(ds)
        [seg], [sr] = arrived[SEG_CLASS], arrived[SR_CLASS]
        key_images = arrived[SC_CLASS]
        for ds in [seg, sr, *key_images]:
            assert_valid_dicom(ds)
        report = hd.sr.ComprehensiveSR.from_dataset(sr)
        assert _clinical_answer(report) == "Yes"
        groups = _lesion_groups(report)
        assert groups and len(key_images) == len(groups)
        for entry in groups.values():
            assert sum(entry["classes"].values()) == pytest.approx(1.0, abs=1e-3)
            assert entry["subtype"] and sum(entry["subtype"].values()) == pytest.approx(1.0, abs=1e-3)
            assert entry["key_images"][0] in {str(ds.SOPInstanceUID) for ds in key_images}
        assert np.all([int(ds.SeriesNumber) == SERIES["key images"] for ds in key_images])
    finally:
        node.stop()
        orthanc.stop()


def test_evaluate_runs_the_whole_pipeline_on_held_out_studies():
    from click.testing import CliRunner

    from node.cli import main

    result = CliRunner().invoke(main, ["evaluate", "liver-cls", "--pipeline", "seg", "--cases", "1", "--seed", "4",
                                       "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{"):])
    assert report["seeds"] == [4] and report["lesions"] == "seg"  # seed 4's first lesion, a 27 mm cyst
    assert report["confusion"]["counts"][LesionKind.CYST][LesionKind.CYST] == 1
    assert report["accuracy"]["value"] == 1.0 and report["missed"] == 0
    refused = CliRunner().invoke(main, ["evaluate", "liver-cls", "--pipeline", "seg", "--seed", "9999"])
    assert refused.exit_code != 0


def test_a_site_segment_holding_two_lesions_gives_each_its_own_segment_and_group(study_folder, truth, tmp_path):
    from pydicom.sr.codedict import codes as sr_codes

    from dicom_io.identity import AlgorithmInfo
    from dicom_io.seg import SegmentationWriter, SegmentSpec

    folder = tmp_path / "study"
    shutil.copytree(study_folder, folder, ignore=shutil.ignore_patterns("90_lesion_roi"))
    labels = np.load(folder / "ground_truth" / "labels.npz")["lesion_labels"]
    portal = folder / truth["series"]["portal"]["folder"]
    sources = sorted((dcmread(p) for p in portal.glob("*.dcm")), key=lambda ds: float(ds.ImagePositionPatient[2]))
    spec = SegmentSpec("Lesions", sr_codes.SCT.MorphologicallyAbnormalStructure, sr_codes.SCT.Neoplasm, "Lesions")
    seg = SegmentationWriter().write(sources, {spec: labels > 0}, AlgorithmInfo(name="site ROI", version="1"), 95,
                                     "Lesion ROI")
    (folder / "95_roi").mkdir()
    seg.save_as(folder / "95_roi" / "seg.dcm", enforce_file_format=True)
    outputs = LiverClassificationPipeline().run(_study_input(folder), {"lesions": "seg"})
    [ours] = [ds for ds in outputs if ds.SOPClassUID == SEG_CLASS]
    assert int(ours.SeriesNumber) == SERIES["SEG"]
    assert [str(s.SegmentLabel) for s in ours.SegmentSequence] == ["Liver lesion 1", "Liver lesion 2"]
    assert sorted(_lesion_groups(_report(outputs))) == [1, 2]
