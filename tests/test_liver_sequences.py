"""Inputs of the liver lesion classifier: the six sequences from the headers, the lesions from a SEG, and the
six-sequence phantom study they are tested on (written at the classifier's geometry, 32 x 224 x 224)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicom_io.identity import AlgorithmInfo
from dicom_io.reader import read_series
from dicom_io.seg import SegmentationWriter, SegmentSpec, liver_segment, tumour_segment
from dicom_io.study import group_study
from inference.base import PipelineInputError, SeriesInput
from inference.liver.lesion_kinds import LesionKind
from inference.liver.lesion_source import (
    LesionSourceError,
    find_lesion_segmentation,
    lesion_masks,
    liver_mask,
)
from inference.liver.phantom_dicom import (
    phantom_accession_number,
    write_liver_lesion_study,
)
from inference.liver.sequences import (
    LESION_SEQUENCES,
    SequenceIdentificationError,
    SequenceRules,
    identify_lesion_sequences,
)
from node.clinical import ClinicalData
from tests.dicom_validate import assert_valid_dicom

KINDS = [LesionKind.HCC, LesionKind.CYST, LesionKind.HEMANGIOMA]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Seed 0 puts the three lesions apart from each other, each in one piece.
    return write_liver_lesion_study(tmp_path_factory.mktemp("lesion-study"), 0, lesion_kinds=KINDS)


@pytest.fixture(scope="module")
def truth(study: Path) -> dict:
    return json.loads((study / "ground_truth" / "truth.json").read_text())


@pytest.fixture(scope="module")
def lesion_labels(study: Path) -> np.ndarray:
    return np.load(study / "ground_truth" / "labels.npz")["lesion_labels"]


def _series(*folders: Path) -> list[SeriesInput]:
    """What the node hands a pipeline: every series found under *folders*."""
    paths = [p for folder in folders for p in folder.rglob("*.dcm") if "ground_truth" not in p.parts]
    return [SeriesInput(s.series_uid, s.modality, s.series_description, s.series_number, s.paths)
            for s in group_study(paths).values()]


def _study_series(study: Path, *, without: tuple[str, ...] = ()) -> list[SeriesInput]:
    folders = [p for p in sorted(study.iterdir()) if p.is_dir() and p.name != "ground_truth"
               and not any(name in p.name for name in without)]
    return _series(*folders)


def _copy(paths: list[Path], folder: Path, edit: Callable[[Dataset, int], None]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for k, path in enumerate(paths):
        ds = dcmread(path)
        edit(ds, k)
        written.append(folder / f"IM_{k:05d}.dcm")
        ds.save_as(written[-1], enforce_file_format=True)
    return written


def _folder(study: Path, channel: str, truth: dict) -> Path:
    return study / truth["series"][channel]["folder"]


# --------------------------------------------------------------------------- the six sequences


def test_every_sequence_of_the_phantom_study_is_its_own_series(study: Path, truth: dict) -> None:
    found = identify_lesion_sequences(_study_series(study))
    assert found.has_six and found.has_three and found.missing == ()
    assert {name: s.series.series_uid for name, s in found.sequences.items()} == {
        name: truth["series"][name]["series_instance_uid"] for name in LESION_SEQUENCES}
    assert found.dwi_b_value == 800.0
    assert "b = 800" in found.sequences["dwi"].reason
    assert all(f"{name}: " in found.describe() for name in LESION_SEQUENCES)


def test_without_descriptions_the_headers_still_identify_t2_and_dwi(study: Path, truth: dict,
                                                                     tmp_path: Path) -> None:
    def blank(ds: Dataset, _: int) -> None:
        ds.SeriesDescription = ""
        ds.ProtocolName = ""

    for channel in LESION_SEQUENCES:
        _copy(sorted(_folder(study, channel, truth).glob("*.dcm")), tmp_path / channel, blank)
    found = identify_lesion_sequences(_series(tmp_path))
    assert found.has_six
    assert {name: s.series.series_uid for name, s in found.sequences.items()} == {
        name: truth["series"][name]["series_instance_uid"] for name in LESION_SEQUENCES}
    assert "EchoTime 90 ms" in found.sequences["t2"].reason
    # Timing, not the T2 acquired first, makes the pre-contrast phase.
    assert "ContrastBolusAgent" in found.sequences["pre"].reason


def test_a_series_with_several_b_values_gives_the_b800_images(study: Path, truth: dict, tmp_path: Path) -> None:
    dwi = sorted(_folder(study, "dwi", truth).glob("*.dcm"))
    series_uid = generate_uid()
    b_values = (0.0, 800.0, 1500.0)

    def with_b(ds: Dataset, k: int) -> None:
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesDescription = "ep2d_diff_3scan_tra"
        ds.DiffusionBValue = b_values[k // len(dwi)]
        ds.InstanceNumber = k + 1

    written = _copy(dwi * len(b_values), tmp_path / "dwi", with_b)
    series = [s for s in _study_series(study, without=("diff",))] + _series(tmp_path)
    found = identify_lesion_sequences(series)
    chosen = found.sequences["dwi"]
    assert found.dwi_b_value == 800.0 and chosen.series.series_uid == series_uid
    assert sorted(chosen.series.paths) == written[len(dwi):2 * len(dwi)]
    assert "also has b = 0, 1500" in chosen.reason
    assert read_series(chosen.series.paths).shape == (len(dwi), 224, 224)


def test_one_series_per_b_value_takes_the_one_closest_to_800(study: Path, truth: dict, tmp_path: Path) -> None:
    dwi = sorted(_folder(study, "dwi", truth).glob("*.dcm"))
    uids = {}
    for b in (50.0, 700.0, 1000.0):
        uids[b] = generate_uid()

        def with_b(ds: Dataset, _: int, b: float = b) -> None:
            ds.SeriesInstanceUID = uids[b]
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.SeriesDescription = f"DWI b{b:g}"
            ds.DiffusionBValue = b

        _copy(dwi, tmp_path / f"b{b:g}", with_b)
    series = _study_series(study, without=("diff",)) + _series(tmp_path)
    assert len(series) == 8
    found = identify_lesion_sequences(series)
    assert found.dwi_b_value == 700.0 and found.sequences["dwi"].series.series_uid == uids[700.0]
    assert found.sequences["dwi"].series.paths == next(s.paths for s in series if s.series_uid == uids[700.0])
    rules = SequenceRules.from_options({"dwi_b_value": 1000})
    assert identify_lesion_sequences(series, rules).sequences["dwi"].series.series_uid == uids[1000.0]


def test_without_the_arterial_phase_only_the_three_sequence_inputs_remain(study: Path) -> None:
    found = identify_lesion_sequences(_study_series(study, without=("arterial",)))
    assert found.has_three and not found.has_six
    assert found.missing == ("arterial",)
    assert "missing: arterial" in found.describe()


def test_without_t2_the_study_is_refused_naming_it_and_the_option(study: Path) -> None:
    with pytest.raises(SequenceIdentificationError) as raised:
        identify_lesion_sequences(_study_series(study, without=("t2_haste",)))
    message = str(raised.value)
    assert message.startswith("no T2-weighted series found among series:")
    assert "'t1_vibe_fs_tra_portal' #6" in message and "sequence_regex" in message
    assert isinstance(raised.value, PipelineInputError)


def test_sequence_regex_recognises_a_site_s_own_t2_name(study: Path, truth: dict, tmp_path: Path) -> None:
    def local_name(ds: Dataset, _: int) -> None:
        ds.SeriesDescription = "abdo ax fatsat lang"
        del ds.EchoTime  # no header facts: only the description can tell

    _copy(sorted(_folder(study, "t2", truth).glob("*.dcm")), tmp_path / "t2", local_name)
    series = _study_series(study, without=("t2_haste",)) + _series(tmp_path)
    with pytest.raises(SequenceIdentificationError, match="no T2-weighted"):
        identify_lesion_sequences(series)
    rules = SequenceRules.from_options({"sequence_regex": {"t2": r"(?i)fatsat\s+lang"}})
    found = identify_lesion_sequences(series, rules)
    assert found.sequences["t2"].series.description == "abdo ax fatsat lang"
    assert "t2 rule" in found.sequences["t2"].reason
    with pytest.raises(PipelineInputError, match="unknown sequence"):
        SequenceRules.from_options({"sequence_regex": {"flair": "x"}})
    with pytest.raises(PipelineInputError, match="not a valid regular expression"):
        SequenceRules.from_options({"sequence_regex": {"dwi": "(b800"}})


# --------------------------------------------------------------------------- lesions from a SEG


def test_truth_seg_sent_with_the_study_gives_each_lesion_exactly(study: Path, truth: dict, lesion_labels: np.ndarray,
                                                                 tmp_path: Path) -> None:
    shutil.copy(study / "ground_truth" / "truth-seg.dcm", tmp_path / "seg.dcm")
    series = _study_series(study) + _series(tmp_path)
    seg = find_lesion_segmentation(series)
    assert seg is not None and seg.origin == "site"
    assert seg.referenced_series_uid == truth["series"]["portal"]["series_instance_uid"]
    assert [lesion.label for lesion in seg.lesions] == [f"Liver lesion {k}" for k in (1, 2, 3)]  # not "Liver tumours"
    reference = read_series(seg.referenced_series.paths)
    masks = lesion_masks(seg, reference)
    assert len(masks) == len(truth["lesions"]) == 3
    for k, lesion in enumerate(masks, start=1):
        assert lesion.mask.dtype == bool and np.array_equal(lesion.mask, lesion_labels == k), lesion.label
    labels = np.load(study / "ground_truth" / "labels.npz")["labels"]
    assert np.array_equal(liver_mask(seg, reference), labels > 0)
    assert find_lesion_segmentation(_study_series(study)) is None


def _seg_on_portal(study: Path, truth: dict, masks: dict, name: str, folder: Path) -> Path:
    sources = sorted((dcmread(p) for p in _folder(study, "portal", truth).glob("*.dcm")),
                     key=lambda ds: float(ds.ImagePositionPatient[2]))
    seg = SegmentationWriter().write(sources, masks, AlgorithmInfo(name=name, version="1"), 9110 if "pacsnode" in name
                                     else 300, f"{name} lesions")
    folder.mkdir(parents=True, exist_ok=True)
    seg.save_as(folder / "seg.dcm", enforce_file_format=True)
    return folder / "seg.dcm"


def test_a_site_segment_around_two_lesions_is_split_and_pacsnode_output_is_preferred(
        study: Path, truth: dict, lesion_labels: np.ndarray, tmp_path: Path) -> None:
    roi = SegmentSpec("Lesions", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm)
    _seg_on_portal(study, truth, {roi: (lesion_labels == 1) | (lesion_labels == 3)}, "site ROI tool",
                   tmp_path / "site")
    seg = find_lesion_segmentation(_study_series(study) + _series(tmp_path / "site"))
    assert seg is not None and seg.origin == "site" and seg.liver_segment is None
    masks = lesion_masks(seg, read_series(seg.referenced_series.paths))
    assert [(m.segment_number, m.part, m.label) for m in masks] == [(1, 1, "Lesions (1 of 2)"),
                                                                    (1, 2, "Lesions (2 of 2)")]
    assert {m.mask.sum() for m in masks} == {(lesion_labels == 1).sum(), (lesion_labels == 3).sum()}
    assert all(np.array_equal(m.mask, lesion_labels == lesion_labels[m.mask][0]) for m in masks)

    liver = (np.load(study / "ground_truth" / "labels.npz")["labels"] > 0)
    own = {liver_segment(): liver, tumour_segment(): lesion_labels > 0, tumour_segment(1): lesion_labels == 2}
    _seg_on_portal(study, truth, own, "pacsnode liver segmentation", tmp_path / "pacsnode")
    seg = find_lesion_segmentation(_study_series(study) + _series(tmp_path / "site") + _series(tmp_path / "pacsnode"))
    assert seg is not None and seg.origin == "pacsnode" and "taken over 1 other" in seg.reason
    masks = lesion_masks(seg, read_series(seg.referenced_series.paths))
    assert [m.label for m in masks] == ["Liver lesion 1"] and np.array_equal(masks[0].mask, lesion_labels == 2)


def test_a_seg_drawn_on_a_series_the_study_lacks_is_refused(study: Path, truth: dict, tmp_path: Path) -> None:
    shutil.copy(study / "ground_truth" / "truth-seg.dcm", tmp_path / "seg.dcm")
    with pytest.raises(LesionSourceError, match=re.escape(truth["series"]["portal"]["series_instance_uid"])) as raised:
        find_lesion_segmentation(_study_series(study, without=("portal",)) + _series(tmp_path))
    assert "not in the study" in str(raised.value) and isinstance(raised.value, PipelineInputError)


def test_an_empty_lesion_segment_is_refused(study: Path, truth: dict, lesion_labels: np.ndarray,
                                            tmp_path: Path) -> None:
    roi = SegmentSpec("Lesion", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm)
    _seg_on_portal(study, truth, {roi: np.zeros_like(lesion_labels, dtype=bool)}, "site ROI tool", tmp_path)
    seg = find_lesion_segmentation(_study_series(study) + _series(tmp_path))
    assert seg is not None
    with pytest.raises(LesionSourceError, match="empty"):
        lesion_masks(seg, read_series(seg.referenced_series.paths))


# --------------------------------------------------------------------------- the phantom study itself


def test_the_lesion_study_is_valid_dicom_with_clinical_data_the_node_accepts(study: Path, truth: dict) -> None:
    assert [lesion["kind"] for lesion in truth["lesions"]] == ["hcc", "cyst", "hemangioma"]
    for channel in LESION_SEQUENCES:
        files = sorted(_folder(study, channel, truth).glob("*.dcm"))
        assert len(files) == 32
        assert_valid_dicom(files[16], expected_iod="MRImage")
    header = dcmread(files[0], stop_before_pixels=True)
    assert (header.Rows, header.Columns) == (224, 224) and [float(v) for v in header.PixelSpacing] == [1.5, 1.5]
    assert float(header.SliceThickness) == 6.0 and header.AccessionNumber == phantom_accession_number(0)
    dwi = dcmread(min(_folder(study, "dwi", truth).glob("*.dcm")), stop_before_pixels=True)
    assert float(dwi.DiffusionBValue) == 800.0 and "TRACEW" in dwi.ImageType
    assert_valid_dicom(study / "ground_truth" / "truth-seg.dcm", expected_iod="Segmentation")
    clinical = json.loads((study / "ground_truth" / "clinical.json").read_text())
    parsed = ClinicalData.parse(clinical)
    assert parsed.given() == clinical and clinical["age_years"] == truth["clinical"]["age_years"]
