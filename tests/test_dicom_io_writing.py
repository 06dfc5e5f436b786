"""The writing half of dicom_io: SEG, Parametric Map, TID 1500 SR and colour summary images.

Every object type must pass dciodvfy without errors, parse with DCMTK, read
back with highdicom to the same arrays, codes and numbers, and survive a
round trip through a real Orthanc unchanged.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from dicom_io import bitmap_font
from dicom_io.errors import DicomIOError, WriterError
from dicom_io.identity import (
    AlgorithmInfo,
    copy_patient_and_study,
    pacsnode_version,
)
from dicom_io.pmap import MapParameter, ParametricMapWriter
from dicom_io.secondary_capture import RESEARCH_NOTICE, SummaryImageWriter, colour_scale
from dicom_io.seg import (
    INFARCT,
    ISCHEMIA,
    SegmentationWriter,
    SegmentSpec,
    core_segment,
    hypoperfusion_segment,
    liver_segment,
    tumour_segment,
    write_segmentation,
)
from dicom_io.sr import (
    ARTERIAL_INPUT_FUNCTION,
    DEFUSE3_CORE_LIMIT,
    DEFUSE3_TARGET_MISMATCH,
    HYPOPERFUSION_INTENSITY_RATIO,
    MILLILITRE,
    MISMATCH_RATIO,
    MISMATCH_VOLUME,
    SECOND,
    TIME_OF_PEAK_CONCENTRATION,
    VOXELS,
    VOXELS_AVERAGED,
    CodedFinding,
    DiameterMeasurement,
    ImageFindings,
    ImageRegionFindings,
    MeasurementReportWriter,
    ScalarMeasurement,
    SegmentFindings,
    VolumeMeasurement,
    hypoperfusion_intensity_ratio,
    mismatch_ratio,
    mismatch_volume,
    yes_no,
)
from tests.dicom_validate import (
    assert_dcmtk_parses,
    assert_dsr2xml_parses,
    assert_valid_dicom,
)

SLICES, ROWS, COLUMNS = 8, 64, 64
#: Summary images of a 64x64 series: enlarged 6x (to 384 px), text at scale 2 in a 22-row header strip.
ZOOM, HEADER_ROWS = 6, bitmap_font.CELL_HEIGHT * 2 + 2 * 2
PATIENT_STUDY = {
    "PatientName": "Müller^Jürgen",  # non-ASCII on purpose: the character set must travel too
    "PatientID": "PN-000123",
    "IssuerOfPatientID": "HOSP-A",
    "PatientBirthDate": "19580214",
    "PatientSex": "M",
    "PatientAge": "066Y",
    "PatientWeight": 81.5,
    "StudyDate": "20240131",
    "StudyTime": "101500",
    "StudyID": "4711",
    "AccessionNumber": "ACC-998877",
    "ReferringPhysicianName": "House^Gregory",
    "StudyDescription": "MR Brain stroke protocol",
}


# --------------------------------------------------------------------------- source fixtures


def make_mr_series(slices: int = SLICES, rows: int = ROWS, columns: int = COLUMNS,
                   study_uid: str | None = None) -> list[Dataset]:
    """A single-frame axial MR series in slice order, with full patient/study/geometry attributes."""
    study_uid = study_uid or generate_uid()
    series_uid, frame_of_reference = generate_uid(), generate_uid()
    y, x = np.mgrid[0:rows, 0:columns]
    head = np.exp(-(((y - rows / 2) / (rows / 2.6)) ** 2 + ((x - columns / 2) / (columns / 3)) ** 2))
    images = []
    for z in range(slices):
        ds = Dataset()
        sop_uid = generate_uid()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop_uid
        for keyword, value in PATIENT_STUDY.items():
            setattr(ds, keyword, value)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, 7, "ep2d_perf_TR1500"
        ds.Modality, ds.Manufacturer, ds.PatientPosition = "MR", "ACME", "HFS"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
        ds.InstanceNumber, ds.AcquisitionNumber = z + 1, 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ImagePositionPatient = [-96.0, -110.0, -20.0 + 5.0 * z]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness, ds.SpacingBetweenSlices = [3.0, 3.0], 5.0, 5.0
        ds.SliceLocation = -20.0 + 5.0 * z
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "EP", "NONE", ""
        ds.MRAcquisitionType, ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength = "2D", 30.0, 1500.0, 1
        ds.MagneticFieldStrength = 3.0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = rows, columns
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = (200 + 1500 * head + 10 * z).astype(np.uint16).tobytes()
        ds.WindowCenter, ds.WindowWidth = 900, 1800
        images.append(ds)
    return images


def make_ct_series(slices: int = 6) -> list[Dataset]:
    """An abdominal CT series (HU via RescaleIntercept -1024) built from the MR fixture."""
    images = make_mr_series(slices)
    for ds in images:
        for keyword in ("ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType", "EchoTime",
                        "RepetitionTime", "EchoTrainLength", "MagneticFieldStrength"):
            del ds[keyword]
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.Modality, ds.ImageType, ds.KVP = "CT", ["ORIGINAL", "PRIMARY", "AXIAL"], 120
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        ds.StudyDescription, ds.BodyPartExamined = "CT Abdomen", "ABDOMEN"
    return images


def ball(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float) -> np.ndarray:
    z, y, x = np.indices(shape)
    return ((z - centre[0]) * 2.5) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius ** 2


@pytest.fixture(scope="module")
def source() -> list[Dataset]:
    return make_mr_series()


@pytest.fixture(scope="module")
def algorithm() -> AlgorithmInfo:
    return AlgorithmInfo("LiverNet", "2.1.0", parameters={"threshold": "0.5"})


@pytest.fixture(scope="module")
def perfusion_algorithm() -> AlgorithmInfo:
    return AlgorithmInfo("DSC perfusion oSVD", "1.4", parameters={"Tmax threshold": "6 s"})


@pytest.fixture(scope="module")
def liver_masks() -> dict[SegmentSpec, np.ndarray]:
    shape = (SLICES, ROWS, COLUMNS)
    liver = ball(shape, (3.5, 30, 30), 22)
    tumour_1 = ball(shape, (3, 25, 25), 5) & liver
    tumour_2 = ball(shape, (5, 40, 36), 3) & liver
    tumour_2[2] = False
    gap = np.zeros(shape, dtype=bool)  # present on slices 1 and 6 only: empty frames in between must stay
    gap[1, 10:14, 10:14] = gap[6, 10:14, 10:14] = True
    return {
        liver_segment(): liver,
        tumour_segment(1, tracking_uid=generate_uid()): tumour_1,
        tumour_segment(2): tumour_2,
        SegmentSpec("Gap lesion", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion,
                    tracking_id="Gap lesion"): gap,
        SegmentSpec("Empty", codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Cyst): np.zeros(shape, bool),
    }


@pytest.fixture(scope="module")
def perfusion() -> dict[str, np.ndarray]:
    shape = (SLICES, ROWS, COLUMNS)
    z, y, x = np.indices(shape)
    brain = ((y - 32) / 26.0) ** 2 + ((x - 32) / 22.0) ** 2 <= 1
    tmax = np.where(brain, 2.0 + 10.0 * np.clip((x - 20) / 30.0, 0, 1) + 0.1 * z, 0).astype(np.float32)
    cbf = np.where(brain, 55.0 - 4.0 * np.clip(tmax - 2, 0, None), 0).astype(np.float32)
    cbv = np.where(brain, 4.0 - 0.2 * np.clip(tmax - 2, 0, None), 0).astype(np.float32)
    mtt = np.where(brain, 60.0 * cbv / np.maximum(cbf, 1e-3), 0).astype(np.float32)
    return {"CBF": cbf, "CBV": cbv, "MTT": mtt, "Tmax": tmax}


def reread(ds: Dataset, tmp_path: Path, name: str) -> tuple[Path, Dataset]:
    path = tmp_path / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, pydicom.dcmread(path)


def in_source_order(multiframe: Dataset, source: list[Dataset]) -> np.ndarray:
    """The frames of a derived multi-frame object as a (z, y, x) array in the source's slice order.

    highdicom may store frames in another order (it sorts them along the
    slice normal); each frame names its source slice in DerivationImageSequence.
    """
    index = {ds.SOPInstanceUID: z for z, ds in enumerate(source)}
    pixels = multiframe.pixel_array
    out = np.empty((len(source), *pixels.shape[1:]), dtype=pixels.dtype)
    for frame, item in enumerate(multiframe.PerFrameFunctionalGroupsSequence):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        out[index[uid]] = pixels[frame]
    return out


def assert_output_identity(ds: Dataset, source: list[Dataset], algorithm: AlgorithmInfo,
                           series_number: int, series_description: str) -> None:
    """Patient/study copied exactly, new series in the study, pacsnode as manufacturer."""
    first = source[0]
    for keyword in [*PATIENT_STUDY, "StudyInstanceUID", "SpecificCharacterSet"]:
        assert ds[keyword].value == first[keyword].value, keyword
    assert ds.SeriesInstanceUID != first.SeriesInstanceUID
    assert ds.SOPInstanceUID not in {s.SOPInstanceUID for s in source}
    assert int(ds.SeriesNumber) == series_number
    assert ds.SeriesDescription == series_description
    assert ds.Manufacturer == "pacsnode"
    assert ds.ManufacturerModelName == algorithm.name
    assert list(ds.SoftwareVersions) == [f"pacsnode {pacsnode_version()}", f"{algorithm.name} {algorithm.version}"]
    assert ds.ContentDate and ds.ContentTime


# --------------------------------------------------------------------------- identity


def test_writer_error_is_a_dicom_io_error() -> None:
    assert issubclass(WriterError, DicomIOError)


def test_copy_patient_and_study_is_exact_and_invents_nothing(source: list[Dataset]) -> None:
    target = Dataset()
    target.PatientComments = "stale"
    target.PatientName = "Wrong^Name"
    copy_patient_and_study(source[0], target)
    assert target.PatientName == source[0].PatientName and target.PatientWeight == 81.5
    assert "PatientComments" not in target  # not in the source: removed, not kept
    bare = Dataset()
    bare.StudyInstanceUID = generate_uid()
    copy_patient_and_study(bare, target)
    assert "PatientName" in target and not target.PatientName  # Type 2: present, empty
    assert "AccessionNumber" in target and not target.AccessionNumber
    with pytest.raises(WriterError, match="StudyInstanceUID"):
        copy_patient_and_study(Dataset(), target)


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "", "version": "1"}, "Algorithm name"),
    ({"name": "x" * 65, "version": "1"}, "LO element"),
    ({"name": "net", "version": ""}, "Algorithm version"),
    ({"name": "net", "version": "1", "parameters": {"a": 1}}, "parameters"),
])
def test_algorithm_info_is_strict(kwargs: dict, match: str) -> None:
    with pytest.raises(WriterError, match=match):
        AlgorithmInfo(**kwargs)


def test_pacsnode_version_has_a_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    assert pacsnode_version() == "0+unknown"


# --------------------------------------------------------------------------- SEG


def test_seg_round_trip_codes_arrays_and_references(
    source: list[Dataset], algorithm: AlgorithmInfo, liver_masks: dict, tmp_path: Path
) -> None:
    seg = SegmentationWriter().write(source, liver_masks, algorithm, 300, "Liver and tumours (AI)")
    path, back = reread(seg, tmp_path, "seg")
    assert_valid_dicom(path, expected_iod="Segmentation")
    assert_dcmtk_parses(path)
    assert_output_identity(back, source, algorithm, 300, "Liver and tumours (AI)")

    # Empty frames kept: one frame per source slice and segment.
    assert int(back.NumberOfFrames) == SLICES * len(liver_masks)
    assert back.SegmentationType == "BINARY"
    assert back.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    assert back.ReferencedSeriesSequence[0].SeriesInstanceUID == source[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in back.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == {
        s.SOPInstanceUID for s in source}
    by_position = {tuple(float(v) for v in s.ImagePositionPatient): s.SOPInstanceUID for s in source}
    for frame in back.PerFrameFunctionalGroupsSequence:
        referenced = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = tuple(float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient)
        assert by_position[position] == referenced  # each frame references the slice it lies on

    reread_seg = hd.seg.Segmentation.from_dataset(back)
    specs = list(liver_masks)
    assert reread_seg.segment_numbers == list(range(1, len(specs) + 1))
    for number, spec in enumerate(specs, start=1):
        description = reread_seg.get_segment_description(number)
        assert description.segment_label == spec.label
        assert description.segmented_property_category == spec.category
        assert description.segmented_property_type == spec.type
        assert description.tracking_id == (spec.tracking_id or spec.label)
        assert description.tracking_uid
        if spec.tracking_uid:
            assert description.tracking_uid == spec.tracking_uid
        assert description.algorithm_identification[0].AlgorithmName == "LiverNet"
        assert description.algorithm_identification[0].AlgorithmVersion == "2.1.0"
    pixels = reread_seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[s.SOPInstanceUID for s in source],
        segment_numbers=list(range(1, len(specs) + 1)),
    )
    for index, spec in enumerate(specs):
        np.testing.assert_array_equal(pixels[..., index].astype(bool), liver_masks[spec], err_msg=spec.label)


def test_perfusion_segments_use_ischemia_and_infarct_codes(
    source: list[Dataset], perfusion_algorithm: AlgorithmInfo, perfusion: dict, tmp_path: Path
) -> None:
    masks = {hypoperfusion_segment(6.0): perfusion["Tmax"] > 6, core_segment("rCBF < 30%"): perfusion["CBF"] < 20}
    masks = {spec: mask & (perfusion["Tmax"] > 0) for spec, mask in masks.items()}
    seg = write_segmentation(source, masks, perfusion_algorithm, 310, "Tmax>6s and core (AI)")
    path, back = reread(seg, tmp_path, "perfusion-seg")
    assert_valid_dicom(path, expected_iod="Segmentation")
    items = back.SegmentSequence
    assert items[0].SegmentLabel == "Hypoperfusion Tmax > 6 s"
    assert items[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == ISCHEMIA.value
    assert items[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == INFARCT.value
    assert items[0].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert items[0].AnatomicRegionSequence[0].CodeMeaning == "Brain"


def test_per_lesion_seg_with_25_lesions(source: list[Dataset], algorithm: AlgorithmInfo, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    shape = (SLICES, ROWS, COLUMNS)
    masks: dict[SegmentSpec, np.ndarray] = {liver_segment(): ball(shape, (3.5, 32, 32), 26)}
    for number in range(1, 26):
        centre = (rng.uniform(1, 6), rng.uniform(12, 52), rng.uniform(12, 52))
        masks[tumour_segment(number)] = ball(shape, centre, rng.uniform(2, 4))
    started = time.perf_counter()
    seg = SegmentationWriter().write(source, masks, algorithm, 301, "Liver lesions (AI)")
    elapsed = time.perf_counter() - started
    assert elapsed < 15, f"26-segment SEG took {elapsed:.1f} s"
    path, back = reread(seg, tmp_path, "lesions")
    assert_valid_dicom(path, expected_iod="Segmentation")
    reread_seg = hd.seg.Segmentation.from_dataset(back)
    assert reread_seg.number_of_segments == 26
    assert reread_seg.get_segment_description(26).segment_label == "Liver lesion 25"
    assert int(back.NumberOfFrames) == 26 * SLICES
    pixels = reread_seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[s.SOPInstanceUID for s in source], segment_numbers=[26])
    np.testing.assert_array_equal(pixels[..., 0].astype(bool), list(masks.values())[25])


def test_seg_omits_empty_frames_only_when_size_forbids(
    source: list[Dataset], algorithm: AlgorithmInfo, liver_masks: dict
) -> None:
    seg = SegmentationWriter(max_bytes_with_empty_frames=0).write(source, liver_masks, algorithm, 300, "Liver (AI)")
    non_empty = sum(int(mask[z].any()) for mask in liver_masks.values() for z in range(SLICES))
    assert int(seg.NumberOfFrames) == non_empty < SLICES * len(liver_masks)


def test_outputs_of_a_ct_series_are_valid(algorithm: AlgorithmInfo, tmp_path: Path) -> None:
    ct = make_ct_series()
    shape = (len(ct), ROWS, COLUMNS)
    masks = {liver_segment(): ball(shape, (2.5, 30, 30), 18), tumour_segment(): ball(shape, (2.5, 28, 28), 4)}
    seg = SegmentationWriter().write(ct, masks, algorithm, 300, "Liver and tumours (AI)")
    sr = MeasurementReportWriter().write(ct, seg, [SegmentFindings(2, [VolumeMeasurement(0.3)], [
        CodedFinding(codes.SCT.Metastasis, 0.7)])], algorithm, 302)
    overlay = SummaryImageWriter().write_mask_overlay(ct, masks, algorithm, 501)
    for name, ds, iod in (("seg", seg, "Segmentation"), ("sr", sr, "ComprehensiveSR"), ("sc", overlay[2], "SCImage")):
        path, back = reread(ds, tmp_path, f"ct-{name}")
        assert_valid_dicom(path, expected_iod=iod)
        assert back.StudyDescription == "CT Abdomen"
    assert overlay[2].BodyPartExamined == "ABDOMEN"


def _unsorted(images: list[Dataset]) -> list[Dataset]:
    return [images[1], images[0], *images[2:]]


def _other_frame_of_reference(images: list[Dataset]) -> list[Dataset]:
    changed = [copy.deepcopy(ds) for ds in images]
    changed[3].FrameOfReferenceUID = generate_uid()
    return changed


@pytest.mark.parametrize("case, match", [
    ("wrong shape", r"shape \(8, 64, 63\)"),
    ("not binary", "values other than 0 and 1"),
    ("float mask", "dtype float"),
    ("duplicate label", "labelled 'Liver'"),
    ("no segments", "non-empty mapping"),
    ("unsorted", "not in slice order"),
    ("mixed frame of reference", "FrameOfReferenceUID"),
    ("no images", "No source images"),
    ("bad series number", "series_number"),
    ("long description", "at most 64"),
])
def test_seg_rejects_bad_arguments(case: str, match: str, source: list[Dataset], algorithm: AlgorithmInfo) -> None:
    shape = (SLICES, ROWS, COLUMNS)
    images, masks = source, {liver_segment(): np.ones(shape, bool)}
    number, description = 300, "Liver (AI)"
    if case == "wrong shape":
        masks = {liver_segment(): np.ones((SLICES, ROWS, COLUMNS - 1), bool)}
    elif case == "not binary":
        masks = {liver_segment(): np.full(shape, 2, np.uint8)}
    elif case == "float mask":
        masks = {liver_segment(): np.ones(shape, np.float32)}
    elif case == "duplicate label":
        masks = {liver_segment(): np.ones(shape, bool),
                 SegmentSpec("Liver", codes.SCT.AnatomicalStructure, codes.SCT.Liver, tracking_id="other"):
                     np.ones(shape, bool)}
    elif case == "no segments":
        masks = {}
    elif case == "unsorted":
        images = _unsorted(source)
    elif case == "mixed frame of reference":
        images = _other_frame_of_reference(source)
    elif case == "no images":
        images = []
    elif case == "bad series number":
        number = 0
    elif case == "long description":
        description = "x" * 65
    with pytest.raises(WriterError, match=match):
        SegmentationWriter().write(images, masks, algorithm, number, description)


def test_segment_spec_is_strict() -> None:
    with pytest.raises(WriterError, match="label"):
        SegmentSpec("", codes.SCT.AnatomicalStructure, codes.SCT.Liver)
    with pytest.raises(WriterError, match="coded concept"):
        SegmentSpec("Liver", "Anatomical Structure", codes.SCT.Liver)  # type: ignore[arg-type]
    with pytest.raises(WriterError, match="not a valid UID"):
        SegmentSpec("Liver", codes.SCT.AnatomicalStructure, codes.SCT.Liver, tracking_uid="abc")


# --------------------------------------------------------------------------- Parametric Map


def test_parametric_maps_round_trip_every_parameter(
    source: list[Dataset], perfusion_algorithm: AlgorithmInfo, perfusion: dict, tmp_path: Path
) -> None:
    expected = {
        MapParameter.CBF: ("126390", "ml/(100.g)/min"),
        MapParameter.CBV: ("126391", "ml/(100.g)"),
        MapParameter.MTT: ("113052", "s"),
        MapParameter.TMAX: ("113084", "s"),
    }
    series_uids = set()
    for offset, (parameter, (concept, unit)) in enumerate(expected.items()):
        values = perfusion[parameter.short]
        number = 400 + offset
        pmap = ParametricMapWriter().write(source, values, parameter, perfusion_algorithm, number)
        path, back = reread(pmap, tmp_path, parameter.short)
        assert_valid_dicom(path, expected_iod="ParametricMap")
        assert_dcmtk_parses(path)
        description = f"{parameter.short} map (DSC perfusion oSVD)"
        assert_output_identity(back, source, perfusion_algorithm, number, description)
        series_uids.add(back.SeriesInstanceUID)

        assert back.FrameOfReferenceUID == source[0].FrameOfReferenceUID
        assert back.ReferencedSeriesSequence[0].SeriesInstanceUID == source[0].SeriesInstanceUID
        assert back.BitsAllocated == 32 and "FloatPixelData" in back
        reread_map = hd.pm.ParametricMap.from_dataset(back)
        np.testing.assert_array_equal(in_source_order(reread_map, source), values)
        shared = back.SharedFunctionalGroupsSequence[0]
        mapping = shared.RealWorldValueMappingSequence[0]
        assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == unit
        assert mapping.MeasurementUnitsCodeSequence[0].CodingSchemeDesignator == "UCUM"
        assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == concept
        assert (mapping.RealWorldValueSlope, mapping.RealWorldValueIntercept) == (1.0, 0.0)
        assert mapping.DoubleFloatRealWorldValueFirstValueMapped == pytest.approx(float(values.min()))
        assert mapping.DoubleFloatRealWorldValueLastValueMapped == pytest.approx(float(values.max()))
        voi = shared.FrameVOILUTSequence[0]
        assert float(voi.WindowCenter) == parameter.window_center
        assert float(voi.WindowWidth) == parameter.window_width
        assert shared.FrameAnatomySequence[0].FrameLaterality == "U"
        by_position = {tuple(float(v) for v in s.ImagePositionPatient): s.SOPInstanceUID for s in source}
        for frame in back.PerFrameFunctionalGroupsSequence:
            position = tuple(float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient)
            assert frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID == \
                by_position[position]
    assert len(series_uids) == 4  # one series per parameter


def test_tmax_window_is_centred_on_the_hypoperfusion_threshold() -> None:
    assert MapParameter.TMAX.window_center == 6.0
    assert MapParameter.CBF.display_min == 0.0 < MapParameter.CBF.window_width


@pytest.mark.parametrize("values, match", [
    (np.full((SLICES, ROWS, COLUMNS), np.nan, np.float32), "NaN"),
    (np.ones((SLICES, ROWS, COLUMNS), np.int16), "dtype int16"),
    (np.ones((SLICES - 1, ROWS, COLUMNS), np.float32), "expected"),
])
def test_parametric_map_rejects_bad_values(
    values: np.ndarray, match: str, source: list[Dataset], perfusion_algorithm: AlgorithmInfo
) -> None:
    with pytest.raises(WriterError, match=match):
        ParametricMapWriter().write(source, values, MapParameter.CBF, perfusion_algorithm, 400)


def test_parametric_map_rejects_unknown_parameter(source: list[Dataset], perfusion_algorithm: AlgorithmInfo) -> None:
    with pytest.raises(WriterError, match="MapParameter"):
        ParametricMapWriter().write(source, np.zeros((SLICES, ROWS, COLUMNS), np.float32), "CBF",  # type: ignore[arg-type]
                                    perfusion_algorithm, 400)


# --------------------------------------------------------------------------- Secondary Capture


def _assert_notice_burned_in(pixels: np.ndarray) -> None:
    """RESEARCH USE ONLY is in the pixels (bottom-left, any text scale), exactly as the font draws it."""
    notice = np.array((255, 220, 0))
    height = pixels.shape[0]
    for scale in (1, 2, 3, 4):
        mask = bitmap_font.text_mask(RESEARCH_NOTICE, scale)
        for top in range(max(0, height - 80), height - mask.shape[0] + 1):
            for left in range(24):
                region = pixels[top:top + mask.shape[0], left:left + mask.shape[1]]
                if region.shape[:2] != mask.shape:
                    continue
                ink = (region == notice).all(axis=-1)
                if np.array_equal(ink, mask):
                    return
    raise AssertionError("RESEARCH USE ONLY is not burned into the image")


def _assert_summary_series(images: list[Dataset], source: list[Dataset], algorithm: AlgorithmInfo,
                           series_number: int, description: str, tmp_path: Path) -> list[Dataset]:
    assert len(images) == len(source)
    assert len({ds.SeriesInstanceUID for ds in images}) == 1
    rereads = []
    for index, (image, slice_ds) in enumerate(zip(images, source, strict=True)):
        path, back = reread(image, tmp_path, f"sc-{series_number}-{index}")
        if index in (0, len(images) - 1):
            assert_valid_dicom(path, expected_iod="SCImage")
            assert_dcmtk_parses(path)
        assert_output_identity(back, source, algorithm, series_number, description)
        assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        assert back.PhotometricInterpretation == "RGB" and back.SamplesPerPixel == 3
        assert list(back.ImageType) == ["DERIVED", "SECONDARY"]
        assert RESEARCH_NOTICE in back.ImageComments and RESEARCH_NOTICE in back.SeriesDescription
        assert RESEARCH_NOTICE in back.DerivationDescription
        assert back.InstanceNumber == index + 1
        assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == slice_ds.SOPInstanceUID
        assert back.BurnedInAnnotation == "NO"
        _assert_notice_burned_in(back.pixel_array)
        rereads.append(back)
    return rereads


def test_colour_map_summary_series(
    source: list[Dataset], perfusion_algorithm: AlgorithmInfo, perfusion: dict, tmp_path: Path
) -> None:
    images = SummaryImageWriter().write_colour_map(source, perfusion["Tmax"], MapParameter.TMAX,
                                                   perfusion_algorithm, 500)
    description = f"Tmax colour map {RESEARCH_NOTICE}"
    backs = _assert_summary_series(images, source, perfusion_algorithm, 500, description, tmp_path)
    pixels = backs[4].pixel_array
    # The colour bar: red (high) near its top, blue (low) near its bottom.
    bar_column = pixels.shape[1] - 1 - np.argmax(
        ((pixels[:, ::-1, 2] > 200) & (pixels[:, ::-1, 0] < 50)).any(axis=0))
    bar = pixels[:, bar_column]
    coloured = np.where(bar.max(axis=-1) > 100)[0]
    top, bottom = bar[coloured.min() + 2], bar[coloured.max() - 2]
    assert top[0] > 100 and top[2] < 60, top
    assert bottom[2] > 100 and bottom[0] < 60, bottom
    # In the image area: high Tmax (right of the brain) is red, low Tmax (left) is blue.
    zoom, header = ZOOM, HEADER_ROWS
    assert pixels.shape[0] == header + ROWS * zoom + header and pixels.shape[1] > COLUMNS * zoom
    assert [float(v) for v in backs[4].PixelSpacing] == [3.0 / zoom, 3.0 / zoom]
    high = pixels[header + 32 * zoom + zoom // 2, 50 * zoom + zoom // 2]
    low = pixels[header + 32 * zoom + zoom // 2, 14 * zoom + zoom // 2]
    assert perfusion["Tmax"][4, 32, 50] > 10 and perfusion["Tmax"][4, 32, 14] < 3
    assert high[0] > 120 and high[1] < 60 and high[2] < 60, high  # above the range: dark red
    assert low[2] > 200 and low[0] < 60, low


def test_mask_overlay_summary_series(
    source: list[Dataset], algorithm: AlgorithmInfo, liver_masks: dict, tmp_path: Path
) -> None:
    images = SummaryImageWriter().write_mask_overlay(source, liver_masks, algorithm, 501,
                                                     "Liver overlay (AI)")
    description = f"Liver overlay (AI) {RESEARCH_NOTICE}"
    backs = _assert_summary_series(images, source, algorithm, 501, description, tmp_path)
    liver = next(iter(liver_masks.values()))
    zoom, header = ZOOM, HEADER_ROWS
    pixels = backs[3].pixel_array.astype(int)
    inside = np.argwhere(liver[3] & ~np.any([m[3] for m in list(liver_masks.values())[1:]], axis=0))[len(
        np.argwhere(liver[3])) // 2]
    pixel = pixels[header + inside[0] * zoom + zoom // 2, inside[1] * zoom + zoom // 2]
    assert pixel[0] > pixel[2] + 20, f"liver pixel {pixel} is not tinted towards the liver colour"


def test_summary_writer_rejects_bad_input(source: list[Dataset], algorithm: AlgorithmInfo) -> None:
    writer = SummaryImageWriter()
    with pytest.raises(WriterError, match="finite"):
        writer.write_colour_map(source, np.full((SLICES, ROWS, COLUMNS), np.inf), MapParameter.CBF, algorithm, 5)
    with pytest.raises(WriterError, match="bool"):
        writer.write_mask_overlay(source, {liver_segment(): np.ones((SLICES, ROWS, COLUMNS), np.uint8)},
                                  algorithm, 5)
    with pytest.raises(WriterError, match="at most 64"):
        writer.write_mask_overlay(source, {liver_segment(): np.ones((SLICES, ROWS, COLUMNS), bool)},
                                  algorithm, 5, "x" * 60)


def test_colour_scale_runs_blue_to_red() -> None:
    low, mid, high = colour_scale(np.array([0.0, 0.5, 1.0]))
    assert low[2] > low[0] and high[0] > high[2] and mid[1] > 200


def test_bitmap_font_glyphs() -> None:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.,:;()[]/-+=<>%_'!?*#&^ "
    masks = {char: bitmap_font.text_mask(char).tobytes() for char in alphabet}
    assert all(bitmap_font.has_glyph(char) for char in alphabet)
    assert len(set(masks.values())) == len(alphabet)  # every glyph distinct
    assert bitmap_font.text_mask("\u00b5").tobytes() == bitmap_font.text_mask("?").tobytes()
    assert bitmap_font.text_mask("AB", 3).shape == (27, 36) == bitmap_font.text_size("AB", 3)
    image = np.zeros((20, 20, 3), np.uint8)
    bitmap_font.draw_text(image, "RESEARCH", 15, 10, (255, 0, 0), scale=2)  # clipped, not an error
    assert image[..., 0].any() and not image[:15].any()


# --------------------------------------------------------------------------- SR


@pytest.fixture(scope="module")
def liver_seg(source: list[Dataset], algorithm: AlgorithmInfo, liver_masks: dict) -> hd.seg.Segmentation:
    return SegmentationWriter().write(source, liver_masks, algorithm, 300, "Liver and tumours (AI)")


def test_measurement_report_round_trip(
    source: list[Dataset], algorithm: AlgorithmInfo, liver_seg: hd.seg.Segmentation, liver_masks: dict,
    tmp_path: Path
) -> None:
    groups = [
        SegmentFindings(1, [VolumeMeasurement(1523.4)]),
        SegmentFindings(2, [VolumeMeasurement(3.25), DiameterMeasurement(18.5, codes.SCT.LongAxis),
                            DiameterMeasurement(12.0, codes.SCT.ShortAxis)],
                        [CodedFinding(codes.SCT.Hemangioma, 0.87)]),
        SegmentFindings(3, [VolumeMeasurement(0.4)], [CodedFinding(codes.SCT.Cyst, 0.61)]),
        SegmentFindings(5, [VolumeMeasurement(0.0)]),
    ]
    sr = MeasurementReportWriter().write(source, liver_seg, groups, algorithm, 302, "Liver measurements (AI)")
    path, back = reread(sr, tmp_path, "sr")
    assert_valid_dicom(path, expected_iod="ComprehensiveSR")
    assert_dcmtk_parses(path)
    xml = assert_dsr2xml_parses(path)
    assert "Imaging Measurement Report" in xml and "1523.4" in xml
    assert_output_identity(back, source, algorithm, 302, "Liver measurements (AI)")

    evidence = {item.ReferencedSOPInstanceUID
                for study in back.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for item in series.ReferencedSOPSequence}
    assert evidence == {s.SOPInstanceUID for s in source} | {liver_seg.SOPInstanceUID}

    report = hd.sr.srread(path)
    observers = report.content.get_observer_contexts()
    assert any(
        item.value == "LiverNet" for observer in observers for item in observer
        if getattr(item, "name", None) == codes.DCM.DeviceObserverName
    )
    measurement_groups = report.content.get_volumetric_roi_measurement_groups()
    assert len(measurement_groups) == 4
    specs = list(liver_masks)
    for group, findings in zip(measurement_groups, groups, strict=True):
        description = liver_seg.get_segment_description(findings.segment_number)
        assert group.tracking_uid == description.tracking_uid
        assert group.referenced_segment.referenced_sop_instance_uid == liver_seg.SOPInstanceUID
        assert group.referenced_segment.referenced_segment_numbers == [findings.segment_number] or \
            group.referenced_segment.segment_number == findings.segment_number
        assert group.finding_type == specs[findings.segment_number - 1].type
        measured = {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()}
        for item in findings.measurements:
            name, value, unit = item.to_measurement()
            assert measured[name.meaning] == (pytest.approx(value), unit.value)
        evaluations = group.get_qualitative_evaluations()
        assert [e.value for e in evaluations] == [f.code for f in findings.findings]
        if findings.findings:
            assert measured["Probability"] == (pytest.approx(findings.findings[0].probability), "1")
        # Each measurement references the source images the segment lies on.
        mask = liver_masks[specs[findings.segment_number - 1]]
        on = {source[z].SOPInstanceUID for z in range(SLICES) if mask[z].any()} or \
            {s.SOPInstanceUID for s in source}
        for measurement in group.get_measurements():
            referenced = {image.referenced_sop_instance_uid for image in measurement.referenced_images}
            assert referenced == on


def test_report_on_a_single_segment_seg(
    source: list[Dataset], algorithm: AlgorithmInfo, liver_masks: dict, tmp_path: Path
) -> None:
    """A one-segment SEG keeps its segment identification in the shared functional groups."""
    spec = next(iter(liver_masks))
    seg = SegmentationWriter().write(source, {spec: liver_masks[spec]}, algorithm, 303, "Liver (AI)")
    assert "SegmentIdentificationSequence" not in seg.PerFrameFunctionalGroupsSequence[0]
    sr = MeasurementReportWriter().write(source, seg, [SegmentFindings(1, [VolumeMeasurement(1523.4)])],
                                         algorithm, 304, "Liver volume (AI)")
    path, _ = reread(sr, tmp_path, "sr")
    assert_valid_dicom(path, expected_iod="ComprehensiveSR")
    (group,) = hd.sr.srread(path).content.get_volumetric_roi_measurement_groups()
    assert [m.value for m in group.get_measurements()] == [pytest.approx(1523.4)]


def test_perfusion_report_carries_mismatch_figures(
    source: list[Dataset], perfusion_algorithm: AlgorithmInfo, perfusion: dict, tmp_path: Path
) -> None:
    masks = {hypoperfusion_segment(): perfusion["Tmax"] > 6, core_segment(): (perfusion["CBF"] < 20) & (
        perfusion["Tmax"] > 0)}
    seg = SegmentationWriter().write(source, masks, perfusion_algorithm, 310, "Perfusion lesions (AI)")
    pmap = ParametricMapWriter().write(source, perfusion["Tmax"], MapParameter.TMAX, perfusion_algorithm, 403)
    groups = [
        SegmentFindings(1, [VolumeMeasurement(96.0), mismatch_volume(71.5), mismatch_ratio(3.9),
                            hypoperfusion_intensity_ratio(0.42)]),
        SegmentFindings(2, [VolumeMeasurement(24.5)]),
    ]
    sr = MeasurementReportWriter().write(source, seg, groups, perfusion_algorithm, 311,
                                         extra_evidence=[pmap])
    path, _ = reread(sr, tmp_path, "perfusion-sr")
    assert_valid_dicom(path, expected_iod="ComprehensiveSR")
    assert_dsr2xml_parses(path)
    report = hd.sr.srread(path)
    first = report.content.get_volumetric_roi_measurement_groups()[0]
    by_code = {(m.name.value, m.name.scheme_designator): (m.value, m.unit.value) for m in first.get_measurements()}
    assert by_code[(MISMATCH_VOLUME.value, "99PACSNODE")] == (71.5, "ml")
    assert by_code[(MISMATCH_RATIO.value, "DCM")] == (3.9, "{ratio}")
    assert by_code[(HYPOPERFUSION_INTENSITY_RATIO.value, "99PACSNODE")] == (0.42, "{ratio}")
    assert report.SeriesDescription == "Measurements (DSC perfusion oSVD)"
    assert report.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99PACSNODE"


def test_measurement_report_rejects_bad_groups(
    source: list[Dataset], algorithm: AlgorithmInfo, liver_seg: hd.seg.Segmentation
) -> None:
    writer = MeasurementReportWriter()
    with pytest.raises(WriterError, match="Segment 9 is not in the SEG"):
        writer.write(source, liver_seg, [SegmentFindings(9, [VolumeMeasurement(1.0)])], algorithm, 302)
    with pytest.raises(WriterError, match="two measurement groups"):
        writer.write(source, liver_seg, [SegmentFindings(1), SegmentFindings(1)], algorithm, 302)
    with pytest.raises(WriterError, match="reported twice"):
        writer.write(source, liver_seg, [SegmentFindings(2, findings=[
            CodedFinding(codes.SCT.Cyst, 0.5), CodedFinding(codes.SCT.Cyst, 0.4)])], algorithm, 302)
    other_series = make_mr_series(study_uid=source[0].StudyInstanceUID)
    with pytest.raises(WriterError, match="different FrameOfReferenceUIDs"):
        writer.write(other_series, liver_seg, [SegmentFindings(1)], algorithm, 302)
    for ds in other_series:
        ds.FrameOfReferenceUID = source[0].FrameOfReferenceUID
    with pytest.raises(WriterError, match="not derived from the given source series"):
        writer.write(other_series, liver_seg, [SegmentFindings(1)], algorithm, 302)
    with pytest.raises(WriterError, match="cannot be named DCM 121071"):
        writer.write(source, liver_seg, [SegmentFindings(2, findings=[
            CodedFinding(codes.SCT.Cyst, 0.5, name=codes.DCM.Finding)])], algorithm, 302)
    with pytest.raises(WriterError, match="at most 1"):
        CodedFinding(codes.SCT.Cyst, 1.5)
    with pytest.raises(WriterError, match="at least 0"):
        VolumeMeasurement(-1.0)
    with pytest.raises(WriterError, match="finite"):
        DiameterMeasurement(float("nan"))
    with pytest.raises(WriterError, match="Segmentation"):
        writer.write(source, source[0], [SegmentFindings(1)], algorithm, 302)


def test_report_with_voxel_points_and_image_level_findings(
    source: list[Dataset], perfusion_algorithm: AlgorithmInfo, perfusion: dict, tmp_path: Path
) -> None:
    masks = {hypoperfusion_segment(): perfusion["Tmax"] > 6, core_segment(): (perfusion["CBF"] < 20) & (
        perfusion["Tmax"] > 0)}
    seg = SegmentationWriter().write(source, masks, perfusion_algorithm, 310, "Perfusion lesions (AI)")
    voxels = [(2, 10, 12), (2, 11, 12), (5, 40, 3)]
    groups = [
        SegmentFindings(1, [VolumeMeasurement(96.0)]),
        ImageRegionFindings("Arterial input function", voxels, ARTERIAL_INPUT_FUNCTION, measurements=[
            ScalarMeasurement(VOXELS_AVERAGED, 3, VOXELS), ScalarMeasurement(TIME_OF_PEAK_CONCENTRATION, 19.5, SECOND),
        ], finding_site=codes.SCT.CerebralArtery),
        ImageFindings("DEFUSE 3 target mismatch", measurements=[ScalarMeasurement(DEFUSE3_CORE_LIMIT, 70, MILLILITRE)],
                      findings=[CodedFinding(yes_no(False), name=DEFUSE3_TARGET_MISMATCH)]),
    ]
    sr = MeasurementReportWriter().write(source, seg, groups, perfusion_algorithm, 311)
    path, _ = reread(sr, tmp_path, "points-sr")
    assert_valid_dicom(path, expected_iod="ComprehensiveSR")
    assert_dsr2xml_parses(path)
    report = hd.sr.srread(path)

    [_, region_group] = report.content.get_volumetric_roi_measurement_groups()
    assert region_group.tracking_identifier == "Arterial input function"
    assert region_group.finding_type == ARTERIAL_INPUT_FUNCTION
    points = []
    for region in region_group.roi:
        assert region.graphic_type == hd.sr.GraphicTypeValues.POINT
        uid = region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        [[column, row]] = region.value
        points.append(([ds.SOPInstanceUID for ds in source].index(uid), row, column))
    assert points == [(z, r + 0.5, c + 0.5) for z, r, c in voxels]   # pixel centres on their own slices
    measured = {m.name.meaning: (m.value, m.unit.value) for m in region_group.get_measurements()}
    assert measured == {"Number of voxels averaged": (3, "{voxels}"), "Time of Peak Concentration": (19.5, "s")}
    for measurement in region_group.get_measurements():
        assert {image.referenced_sop_instance_uid for image in measurement.referenced_images} == {
            source[2].SOPInstanceUID, source[5].SOPInstanceUID}

    [image_group] = report.content.get_image_measurement_groups()
    assert image_group.tracking_identifier == "DEFUSE 3 target mismatch"
    [answer] = image_group.get_qualitative_evaluations()
    assert answer.name == DEFUSE3_TARGET_MISMATCH
    assert (answer.value.value, answer.value.scheme_designator, answer.value.meaning) == ("373067005", "SCT", "No")
    assert yes_no(True) == codes.SCT.Yes and codes.SCT.Yes.value == "373066001"
    [limit] = image_group.get_measurements()
    assert (limit.name, limit.value, limit.unit.value) == (DEFUSE3_CORE_LIMIT, 70, "ml")


def test_voxel_points_and_image_findings_are_checked(
    source: list[Dataset], algorithm: AlgorithmInfo, liver_seg: hd.seg.Segmentation
) -> None:
    writer = MeasurementReportWriter()
    for voxels, match in (([], "non-empty"), ([(1, 2)], "non-empty"), ([(0, -1, 2)], "non-negative"),
                          ([(0.5, 1, 2)], "integers")):
        with pytest.raises(WriterError, match=match):
            ImageRegionFindings("AIF", voxels, ARTERIAL_INPUT_FUNCTION)
    with pytest.raises(WriterError, match="tracking label"):
        ImageRegionFindings(" ", [(0, 0, 0)], ARTERIAL_INPUT_FUNCTION)
    with pytest.raises(WriterError, match=f"only {SLICES} source images"):
        writer.write(source, liver_seg, [ImageRegionFindings("AIF", [(SLICES, 0, 0)], ARTERIAL_INPUT_FUNCTION)],
                     algorithm, 302)
    with pytest.raises(WriterError, match="outside the 64x64 source image"):
        writer.write(source, liver_seg, [ImageRegionFindings("AIF", [(0, 3, COLUMNS)], ARTERIAL_INPUT_FUNCTION)],
                     algorithm, 302)
    with pytest.raises(WriterError, match="needs a measurement or a finding"):
        ImageFindings("DEFUSE 3 target mismatch")
    with pytest.raises(WriterError, match="reported twice"):
        writer.write(source, liver_seg, [ImageFindings("Diagnosis", findings=[
            CodedFinding(codes.SCT.Cyst, 0.5), CodedFinding(codes.SCT.Cyst, 0.5)])], algorithm, 302)


# --------------------------------------------------------------------------- Orthanc round trip


def _dataset_bytes(data: bytes) -> bytes:
    """The encoded data set of a Part 10 file, without preamble and File Meta Information."""
    import io

    from pydicom.filereader import _read_file_meta_info, read_preamble
    stream = io.BytesIO(data)
    read_preamble(stream, False)
    _read_file_meta_info(stream)
    return stream.read()


@pytest.mark.e2e
def test_every_object_survives_orthanc_byte_for_byte(
    source: list[Dataset], algorithm: AlgorithmInfo, perfusion_algorithm: AlgorithmInfo,
    liver_seg: hd.seg.Segmentation, perfusion: dict, tmp_path: Path
) -> None:
    from tests.orthanc_peer import ORTHANC

    if not Path(ORTHANC).exists():
        pytest.skip(f"Orthanc is not installed ({ORTHANC} missing; apt-get install orthanc)")
    from pynetdicom import AE
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        ComprehensiveSRStorage,
        ParametricMapStorage,
        SecondaryCaptureImageStorage,
        SegmentationStorage,
    )

    from tests.orthanc_peer import OrthancPeer

    pmap = ParametricMapWriter().write(source, perfusion["CBF"], MapParameter.CBF, perfusion_algorithm, 400)
    sr = MeasurementReportWriter().write(source, liver_seg, [SegmentFindings(1, [VolumeMeasurement(1.0)])],
                                         algorithm, 302)
    sc = SummaryImageWriter().write_colour_map(source[:2], perfusion["CBF"][:2], MapParameter.CBF,
                                               perfusion_algorithm, 500)
    objects = [liver_seg, pmap, sr, *sc]
    sent: dict[str, bytes] = {}
    for index, ds in enumerate(objects):
        path = tmp_path / f"out-{index}.dcm"
        ds.save_as(path, enforce_file_format=True)
        sent[ds.SOPInstanceUID] = path.read_bytes()

    with OrthancPeer(tmp_path / "orthanc") as orthanc:
        ae = AE(ae_title="PACSNODE")
        for sop_class in (SegmentationStorage, ParametricMapStorage, ComprehensiveSRStorage,
                          SecondaryCaptureImageStorage):
            ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", orthanc.dicom_port, ae_title=orthanc.aet)
        assert assoc.is_established, "Orthanc refused the association"
        try:
            for uid, data in sent.items():
                status = assoc.send_c_store(pydicom.dcmread(pydicom.filebase.DicomBytesIO(data)))
                assert status and status.Status == 0x0000, f"C-STORE of {uid} failed: {status}"
        finally:
            assoc.release()
        ids = orthanc.instances()
        assert len(ids) == len(sent)
        for instance_id in ids:
            stored = orthanc.download(instance_id)
            uid = pydicom.dcmread(pydicom.filebase.DicomBytesIO(stored), stop_before_pixels=True).SOPInstanceUID
            assert _dataset_bytes(stored) == _dataset_bytes(sent[uid]), f"Orthanc changed {uid}"
