"""dicom_io.seg_reader: SEGs (binary and fractional) read back onto a reference volume's grid."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicom_io.errors import FrameOfReferenceMismatchError
from dicom_io.identity import AlgorithmInfo
from dicom_io.reader import read_series
from dicom_io.seg import SegmentationWriter, liver_segment, tumour_segment
from dicom_io.seg_reader import SegmentationReadError, read_segmentation
from tests.dicom_factories import make_mr_datasets

SHAPE = (8, 24, 20)


def _series(**kwargs):  # type: ignore[no-untyped-def]
    datasets = make_mr_datasets(kwargs.pop("shape", SHAPE), spacing=kwargs.pop("spacing", (3.0, 1.0, 1.0)),
                                shuffle_seed=kwargs.pop("shuffle_seed", 5), **kwargs)
    for ds in datasets:  # what a SEG copies from its source
        ds.PatientBirthDate = ds.PatientSex = ds.ReferringPhysicianName = ds.AccessionNumber = ""
        ds.StudyTime, ds.StudyID = "100000", "1"
    return datasets


def _in_slice_order(datasets):  # type: ignore[no-untyped-def]
    return sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))


def _masks() -> tuple[np.ndarray, np.ndarray]:
    liver = np.zeros(SHAPE, bool)
    liver[2:7, 4:20, 3:16] = True
    tumour = np.zeros(SHAPE, bool)
    tumour[3:5, 8:12, 6:10] = True
    return liver, tumour


ALGORITHM = AlgorithmInfo(name="seg reader test", version="1")


def test_binary_seg_comes_back_voxel_for_voxel_with_its_segment_metadata():
    datasets = _series()
    volume = read_series(datasets)
    liver, tumour = _masks()
    seg = SegmentationWriter().write(_in_slice_order(datasets), {liver_segment(): liver, tumour_segment(1): tumour},
                                     ALGORITHM, 9110, "test")
    result = read_segmentation(seg, volume)
    assert result.placed_by == "source instances" and result.segmentation_type == "BINARY"
    assert np.array_equal(result.masks[1], liver) and np.array_equal(result.masks[2], tumour)
    assert result.segments[1].label == "Liver" and result.segments[1].type == codes.SCT.Liver
    assert result.segments[2].type == codes.SCT.Neoplasm
    assert result.segments[2].anatomic_regions == (codes.SCT.Liver,)
    assert result.segments[2].tracking_id == "Liver lesion 1" and result.segments[2].algorithm_type == "AUTOMATIC"
    assert result.find(type=codes.SCT.Neoplasm) == [2] and result.find(label="^Liver$") == [1]
    labels = result.label_map({1: 1, 2: 2})
    assert np.array_equal(labels, np.where(tumour, 2, np.where(liver, 1, 0)))


def test_seg_without_its_empty_frames_still_fills_the_whole_grid(tmp_path):
    datasets = _series()
    volume = read_series(datasets)
    liver, tumour = _masks()
    seg = SegmentationWriter(max_bytes_with_empty_frames=0).write(
        _in_slice_order(datasets), {liver_segment(): liver, tumour_segment(1): tumour}, ALGORITHM, 9110, "sparse")
    assert int(seg.NumberOfFrames) == 5 + 2
    path = tmp_path / "seg.dcm"
    seg.save_as(path)
    result = read_segmentation(path, volume)
    assert result.placed_by == "source instances"
    assert np.array_equal(result.masks[1], liver) and np.array_equal(result.masks[2], tumour)


def test_seg_drawn_on_another_series_is_resampled_by_plane_position():
    datasets = _series()
    liver, tumour = _masks()
    seg = SegmentationWriter().write(_in_slice_order(datasets), {liver_segment(): liver, tumour_segment(1): tumour},
                                     ALGORITHM, 9110, "test")
    # Another phase of the same examination: same frame of reference, half the slice spacing, coarser pixels.
    other = read_series(_series(shape=(16, 12, 10), spacing=(1.5, 2.0, 2.0), origin=(-7.5, -7.5, -10.0),
                                study_uid=str(datasets[0].StudyInstanceUID),
                                frame_of_reference_uid=str(datasets[0].FrameOfReferenceUID)))
    result = read_segmentation(seg, other)
    assert result.placed_by == "plane positions"
    assert result.masks[1].shape == other.shape
    for number, mask in ((1, liver), (2, tumour)):
        ml_source = mask.sum() * 3.0 / 1000
        ml_other = result.masks[number].sum() * 1.5 * 2 * 2 / 1000
        assert ml_other == pytest.approx(ml_source, rel=0.25), number
    # The tumour lands where it was: its centre in patient coordinates is preserved within a voxel.
    source_volume = read_series(datasets)
    centre_source = source_volume.index_to_lps(np.argwhere(tumour).mean(axis=0))
    centre_other = other.index_to_lps(np.argwhere(result.masks[2]).mean(axis=0))
    assert np.linalg.norm(centre_source - centre_other) < 2.0


def test_fractional_seg_keeps_its_fractions_or_thresholds_them():
    datasets = _series()
    volume = read_series(datasets)
    ordered = _in_slice_order(datasets)
    liver, _ = _masks()
    probability = np.where(liver, 0.8, 0.0).astype(np.float32)
    probability[3, 10, 8] = 0.3
    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Liver probability",
        segmented_property_category=codes.SCT.AnatomicalStructure, segmented_property_type=codes.SCT.Liver,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=ALGORITHM.segmentation_identification())
    seg = hd.seg.Segmentation(
        source_images=ordered, pixel_array=probability[..., np.newaxis],
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL, segment_descriptions=[description],
        series_instance_uid=generate_uid(), series_number=9112, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="pacsnode", manufacturer_model_name="test", software_versions="1", device_serial_number="1",
        max_fractional_value=255)
    result = read_segmentation(seg, volume)
    assert result.segmentation_type == "FRACTIONAL" and result.masks[1].dtype == np.float32
    assert np.allclose(result.masks[1], probability, atol=1 / 255)
    binary = read_segmentation(seg, volume, threshold=0.5)
    assert np.array_equal(binary.masks[1], probability >= 0.5)


def test_seg_of_another_frame_of_reference_is_refused():
    datasets = _series()
    liver, _ = _masks()
    seg = SegmentationWriter().write(_in_slice_order(datasets), {liver_segment(): liver}, ALGORITHM, 9110, "test")
    elsewhere = read_series(_series(frame_of_reference_uid=generate_uid()))
    with pytest.raises(FrameOfReferenceMismatchError, match="frame of reference"):
        read_segmentation(seg, elsewhere)


def test_an_image_is_not_a_seg():
    datasets = _series()
    with pytest.raises(SegmentationReadError, match="not a Segmentation"):
        read_segmentation(datasets[0], read_series(datasets))
