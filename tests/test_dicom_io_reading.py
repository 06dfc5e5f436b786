"""The reading half of dicom_io: series to volumes, timing, MOSAIC, study grouping, resampling, errors."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from dicom_io.errors import (
    CsaHeaderError,
    DicomIOError,
    DuplicateSliceError,
    EmptySeriesError,
    FrameOfReferenceMismatchError,
    InconsistentMatrixError,
    MissingPixelDataError,
    MissingSliceError,
    MissingTimingError,
    MixedOrientationError,
    SeriesError,
    UnevenSpacingError,
    UnsupportedSeriesError,
)
from dicom_io.mosaic import mosaic_layout, parse_csa_header, unpack_mosaic
from dicom_io.reader import read_dynamic_series, read_series
from dicom_io.study import group_study, resample_to
from dicom_io.volume import DynamicVolume, SourceRef, Volume
from tests import dicom_factories as f

OBLIQUE = (0.9848078, 0.1736482, 0.0, -0.0868241, 0.4924039, -0.8660254)  # rotated about two axes


def _by_slice(datasets: list[Dataset]) -> list[Dataset]:
    """Datasets in slice order (the factories' z index), whatever their list order."""
    return [ds for _, ds in sorted(zip(f.slice_indices(datasets), datasets, strict=True), key=lambda p: p[0])]


# --------------------------------------------------------------------------- static series


def test_series_is_sorted_by_position_not_instance_number() -> None:
    datasets = f.make_mr_datasets((7, 10, 12), spacing=(2.5, 0.8, 0.6), shuffle_seed=11)
    instance_numbers_in_slice_order = [int(ds.InstanceNumber) for ds in _by_slice(datasets)]
    assert instance_numbers_in_slice_order != sorted(instance_numbers_in_slice_order), "shuffle had no effect"

    volume = read_series(datasets)

    assert volume.array.dtype == np.float32
    assert volume.shape == (7, 10, 12)
    np.testing.assert_array_equal(volume.array, f.expected_array((7, 10, 12))[0])
    assert volume.spacing == pytest.approx((2.5, 0.8, 0.6))
    assert volume.origin == pytest.approx((-8.0, -8.0, -10.0))
    np.testing.assert_allclose(volume.direction, np.eye(3))
    assert [ref.sop_instance_uid for ref in volume.source_refs] == [ds.SOPInstanceUID for ds in _by_slice(datasets)]
    assert all(ref.frame_number is None and ref.sop_class_uid == "1.2.840.10008.5.1.4.1.1.4"
               for ref in volume.source_refs)
    assert volume.series_uid == datasets[0].SeriesInstanceUID
    assert volume.study_uid == datasets[0].StudyInstanceUID
    assert volume.frame_of_reference_uid == datasets[0].FrameOfReferenceUID
    assert volume.header is not None and "PixelData" not in volume.header
    assert volume.header.SOPInstanceUID == volume.source_refs[0].sop_instance_uid
    assert "PixelData" in datasets[0], "the caller's datasets must not be modified"


def test_oblique_geometry_matches_dicom_pixel_to_patient_formula() -> None:
    spacing = (3.0, 0.9, 0.7)
    origin = (12.5, -30.0, 44.0)
    datasets = f.make_mr_datasets((5, 9, 11), spacing=spacing, orientation=OBLIQUE, origin=origin, shuffle_seed=3)
    volume = read_series(datasets)

    ds = _by_slice(datasets)[3]
    row, column = np.array(OBLIQUE[:3]), np.array(OBLIQUE[3:])
    y, x = 6, 8  # row index 6, column index 8 of slice 3
    # DICOM PS3.3 C.7.6.2.1.1: P = S + column * d_col * row_dir + row * d_row * col_dir
    expected = (np.array(ds.ImagePositionPatient, float)
                + x * float(ds.PixelSpacing[1]) * row + y * float(ds.PixelSpacing[0]) * column)
    np.testing.assert_allclose(volume.index_to_lps((3, y, x)), expected, atol=1e-4)
    np.testing.assert_allclose((volume.affine @ [x, y, 3, 1])[:3], expected, atol=1e-4)
    np.testing.assert_allclose(volume.direction[:, 2], np.cross(row, column), atol=1e-6)
    assert np.linalg.det(volume.direction) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(volume.array[3, y, x], f.stored_pattern(0, 3, 9, 11)[y, x])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    angles=st.tuples(*[st.floats(-np.pi, np.pi, allow_nan=False) for _ in range(3)]),
    spacing=st.tuples(st.floats(0.5, 6.0), st.floats(0.3, 2.0), st.floats(0.3, 2.0)),
    seed=st.integers(0, 10_000),
)
def test_any_rotation_and_order_round_trips(angles: tuple[float, float, float],
                                            spacing: tuple[float, float, float], seed: int) -> None:
    rotation = sitk.Euler3DTransform((0, 0, 0), *angles).GetMatrix()
    matrix = np.array(rotation).reshape(3, 3)
    orientation = tuple(float(v) for v in (*matrix[:, 0], *matrix[:, 1]))
    datasets = f.make_mr_datasets((4, 5, 6), spacing=spacing, orientation=orientation, origin=(1.0, 2.0, 3.0),
                                  shuffle_seed=seed)
    volume = read_series(datasets)
    np.testing.assert_array_equal(volume.array, f.expected_array((4, 5, 6))[0])
    np.testing.assert_allclose(volume.spacing, spacing, atol=1e-4)
    np.testing.assert_allclose(volume.origin, (1.0, 2.0, 3.0), atol=1e-5)
    np.testing.assert_allclose(volume.direction[:, :2], matrix[:, :2], atol=1e-5)


def test_ct_rescale_is_applied_as_float32_hounsfield() -> None:
    datasets = f.make_ct_datasets((4, 8, 8), shuffle_seed=1)
    volume = read_series(datasets)
    assert volume.array.dtype == np.float32
    np.testing.assert_array_equal(volume.array, f.expected_array((4, 8, 8), rescale=(1.0, -1024.0))[0])
    assert volume.array.min() == -1024.0


def test_fractional_rescale_slope() -> None:
    datasets = f.make_mr_datasets((3, 4, 4), rescale=(2.5, -7.25))
    volume = read_series(datasets)
    np.testing.assert_allclose(volume.array, f.expected_array((3, 4, 4), rescale=(2.5, -7.25))[0])


def test_reading_files_equals_reading_datasets(tmp_path: Path) -> None:
    datasets = f.make_mr_datasets((5, 6, 7), orientation=f.SAGITTAL, shuffle_seed=2)
    paths = f.write_series(datasets, tmp_path)
    from_files = read_series(reversed(paths))
    from_memory = read_series(datasets)
    np.testing.assert_array_equal(from_files.array, from_memory.array)
    assert from_files.origin == pytest.approx(from_memory.origin)
    assert from_files.source_refs == from_memory.source_refs


def test_single_slice_takes_spacing_between_slices() -> None:
    volume = read_series(f.make_mr_datasets((1, 6, 6), spacing=(4.5, 1.0, 1.0)))
    assert volume.shape == (1, 6, 6)
    assert volume.spacing[0] == pytest.approx(4.5)


def test_single_frame_enhanced_takes_spacing_from_pixel_measures() -> None:
    volume = read_series([f.make_enhanced_mr_dataset((1, 4, 4), spacing=(6.0, 1.0, 1.0))])
    assert volume.shape == (1, 4, 4) and volume.spacing == pytest.approx((6.0, 1.0, 1.0))
    assert volume.source_refs[0].frame_number == 1


def test_sitk_round_trip_keeps_geometry() -> None:
    volume = read_series(f.make_mr_datasets((4, 5, 6), spacing=(3.0, 0.9, 0.7), orientation=OBLIQUE))
    image = volume.to_sitk()
    assert image.GetSize() == (6, 5, 4)
    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint((5, 4, 3)), volume.index_to_lps((3, 4, 5)),
                               atol=1e-6)
    back = Volume.from_sitk(image, like=volume)
    assert back.same_grid(volume)
    np.testing.assert_array_equal(back.array, volume.array)
    assert back.source_refs == volume.source_refs and back.series_uid == volume.series_uid


# --------------------------------------------------------------------------- dynamic series


@pytest.mark.parametrize("timing", ["temporal_position", "acquisition_time", "trigger_time", "repeated"])
def test_dynamic_series_by_each_timing_method(timing: str) -> None:
    datasets = f.make_mr_datasets((4, 6, 5), n_times=6, timing=timing, frame_interval_s=1.7, shuffle_seed=7)
    dynamic = read_dynamic_series(datasets)
    assert dynamic.timing_source == timing
    assert dynamic.shape == (6, 4, 6, 5)
    np.testing.assert_allclose(dynamic.times_s, np.arange(6) * 1.7, atol=1e-6)
    np.testing.assert_array_equal(dynamic.array, f.expected_array((4, 6, 5), n_times=6))
    # Every time point references its own instances, in slice order.
    for t in range(6):
        expected_uids = [ds.SOPInstanceUID for ds in _by_slice([d for d in datasets if d.AcquisitionNumber == t + 1])]
        assert [ref.sop_instance_uid for ref in dynamic.source_refs[t]] == expected_uids


def test_dynamic_series_from_shuffled_files(tmp_path: Path) -> None:
    paths = f.make_mr_series(tmp_path, (5, 8, 8), n_times=4, timing="temporal_position", frame_interval_s=2.5,
                             orientation=OBLIQUE, shuffle_seed=8)
    dynamic = read_dynamic_series(sorted(paths, key=lambda p: hash(p.name)))
    np.testing.assert_array_equal(dynamic.array, f.expected_array((5, 8, 8), n_times=4))
    np.testing.assert_allclose(dynamic.times_s, [0.0, 2.5, 5.0, 7.5])
    assert "PixelData" not in dynamic.header and dynamic.header.TemporalPositionIdentifier == 1


def test_explicit_timing_method_is_obeyed() -> None:
    datasets = f.make_mr_datasets((3, 4, 4), n_times=3, timing="acquisition_time", frame_interval_s=2.0)
    dynamic = read_dynamic_series(datasets, timing="acquisition_time")
    np.testing.assert_allclose(dynamic.times_s, [0.0, 2.0, 4.0])
    with pytest.raises(MissingTimingError, match=r"9 of 9 images lack TriggerTime"):
        read_dynamic_series(datasets, timing="trigger_time")


def test_repetition_order_uses_tr_or_a_given_interval() -> None:
    datasets = f.make_mr_datasets((3, 4, 4), n_times=4, timing="repeated", repetition_time_ms=1250.0)
    dynamic = read_dynamic_series(datasets)
    assert dynamic.timing_source == "repeated"
    np.testing.assert_allclose(dynamic.times_s, [0.0, 1.25, 2.5, 3.75])
    overridden = read_dynamic_series(datasets, frame_interval_s=0.5)
    np.testing.assert_allclose(overridden.times_s, [0.0, 0.5, 1.0, 1.5])


def test_acquisition_times_across_midnight() -> None:
    datasets = f.make_mr_datasets((3, 4, 4), n_times=4, timing="acquisition_time")
    for ds in datasets:
        seconds = (86400 - 3.0 + 2.0 * (int(ds.AcquisitionNumber) - 1)) % 86400
        ds.AcquisitionTime = f"{int(seconds // 3600):02d}{int(seconds % 3600 // 60):02d}{seconds % 60:09.6f}"
    dynamic = read_dynamic_series(datasets)
    np.testing.assert_allclose(dynamic.times_s, [0.0, 2.0, 4.0, 6.0])
    np.testing.assert_array_equal(dynamic.array, f.expected_array((3, 4, 4), n_times=4))


def test_echo_and_repetition_time_are_exposed() -> None:
    dynamic = read_dynamic_series(f.make_mr_datasets((2, 4, 4), n_times=2, echo_time_ms=32.0,
                                                     repetition_time_ms=1400.0))
    assert dynamic.echo_time_ms == 32.0 and dynamic.echo_time_s == pytest.approx(0.032)
    assert dynamic.repetition_time_ms == 1400.0 and dynamic.repetition_time_s == pytest.approx(1.4)


def test_static_series_read_as_dynamic_is_one_time_point() -> None:
    dynamic = read_dynamic_series(f.make_mr_datasets((3, 4, 4)))
    assert dynamic.shape == (1, 3, 4, 4)
    assert dynamic.timing_source == "single"
    np.testing.assert_array_equal(dynamic.times_s, [0.0])
    frame = dynamic.frame(0)
    assert isinstance(frame, Volume) and frame.shape == (3, 4, 4)


def test_dynamic_series_refused_by_static_read() -> None:
    datasets = f.make_mr_datasets((3, 4, 4), n_times=5, series_description="DCE 4D", series_number=9)
    with pytest.raises(UnsupportedSeriesError) as caught:
        read_series(datasets)
    message = str(caught.value)
    assert "dynamic (5 time points of 3 slices" in message
    assert "'DCE 4D' #9" in message and datasets[0].SeriesInstanceUID in message


# --------------------------------------------------------------------------- enhanced multi-frame


def _frame_tz(ds: Dataset, frame_number: int) -> tuple[int, int]:
    content = ds.PerFrameFunctionalGroupsSequence[frame_number - 1].FrameContentSequence[0]
    return int(content.TemporalPositionIndex) - 1, int(content.InStackPositionNumber) - 1


def test_enhanced_multiframe_dynamic_with_shuffled_frames_and_per_frame_rescale() -> None:
    ds = f.make_enhanced_mr_dataset((5, 12, 10), n_times=3, frame_interval_s=3.0, shuffle_seed=4)
    dynamic = read_dynamic_series([ds])
    assert dynamic.shape == (3, 5, 12, 10)
    np.testing.assert_allclose(dynamic.array, f.expected_array((5, 12, 10), n_times=3, rescale=f.enhanced_rescale))
    np.testing.assert_allclose(dynamic.times_s, [0.0, 3.0, 6.0])
    assert dynamic.timing_source == "temporal_position"
    assert dynamic.spacing == pytest.approx((4.0, 1.5, 1.25))
    assert dynamic.origin == pytest.approx((-10.0, 20.0, 30.0))
    np.testing.assert_allclose(dynamic.direction, [[1, 0, 0], [0, 0, 1], [0, -1, 0]], atol=1e-9)
    assert dynamic.echo_time_ms == 25.0 and dynamic.repetition_time_ms == 5.0
    for t in range(3):
        for z in range(5):
            ref = dynamic.source_refs[t][z]
            assert ref.sop_instance_uid == ds.SOPInstanceUID
            assert _frame_tz(ds, ref.frame_number) == (t, z)


def test_enhanced_timing_from_frame_acquisition_datetime() -> None:
    ds = f.make_enhanced_mr_dataset((4, 6, 6), n_times=4, frame_interval_s=2.5, timing="acquisition_time",
                                    shuffle_seed=9)
    dynamic = read_dynamic_series([ds])
    assert dynamic.timing_source == "acquisition_time"
    np.testing.assert_allclose(dynamic.times_s, [0.0, 2.5, 5.0, 7.5])
    np.testing.assert_allclose(dynamic.array, f.expected_array((4, 6, 6), n_times=4, rescale=f.enhanced_rescale))


def test_enhanced_static_with_shared_rescale_from_file(tmp_path: Path) -> None:
    path = f.make_enhanced_mr_file(tmp_path, shape=(4, 6, 7), per_frame_rescale=False, shuffle_seed=1)
    volume = read_series([path])
    np.testing.assert_allclose(volume.array, f.expected_array((4, 6, 7), rescale=(2.0, -5.0))[0])
    assert [ref.frame_number is not None for ref in volume.source_refs] == [True] * 4


# --------------------------------------------------------------------------- CSA and MOSAIC


def test_csa2_header_parses_names_types_and_multiplicity() -> None:
    data = f.encode_csa2({
        "NumberOfImagesInMosaic": ("US", [30]),
        "SliceNormalVector": ("FD", ["0.1", "-0.2", "0.97"]),
        "ImaCoilString": ("LO", ["HEA;HEP"]),
        "Empty": ("DS", []),
    })
    header = parse_csa_header(data)
    assert header["NumberOfImagesInMosaic"].value == 30
    assert isinstance(header["NumberOfImagesInMosaic"].value, int)
    assert header["SliceNormalVector"].values == (0.1, -0.2, 0.97)
    assert header["SliceNormalVector"].vm == 3
    assert header["ImaCoilString"].value == "HEA;HEP"
    assert header["Empty"].values == () and header["Empty"].value is None


def test_csa_header_rejects_csa1_and_truncation() -> None:
    with pytest.raises(CsaHeaderError, match="SV10"):
        parse_csa_header(b"\x05\x00\x00\x00" + b"\x00" * 100)
    data = f.encode_csa2({"NumberOfImagesInMosaic": ("US", [30])})
    with pytest.raises(CsaHeaderError, match="truncated"):
        parse_csa_header(data[:60])
    bad_count = data[:8] + struct.pack("<I", 10**9) + data[12:]
    with pytest.raises(CsaHeaderError, match="implausible"):
        parse_csa_header(bad_count)


def test_unpack_mosaic_tiles_row_major() -> None:
    tiles = np.arange(7 * 4 * 5, dtype=np.uint16).reshape(7, 4, 5)
    mosaic = np.zeros((3 * 4, 3 * 5), dtype=np.uint16)
    for k in range(7):
        mosaic[(k // 3) * 4:(k // 3) * 4 + 4, (k % 3) * 5:(k % 3) * 5 + 5] = tiles[k]
    ds = f.make_mosaic_dsc_datasets(n_slices=7, tile_shape=(4, 5), n_times=1)[0]
    layout = mosaic_layout(ds)
    assert layout is not None and (layout.n_images, layout.tiles_per_side) == (7, 3)
    np.testing.assert_array_equal(unpack_mosaic(mosaic, layout), tiles)


@pytest.mark.parametrize("normal_sign", [1, -1])
@pytest.mark.parametrize("count_source", ["csa", "plain"])
def test_mosaic_dsc_series(normal_sign: int, count_source: str, tmp_path: Path) -> None:
    paths = f.make_mosaic_dsc_series(tmp_path, n_slices=6, tile_shape=(8, 6), n_times=5, spacing=(5.0, 2.0, 1.5),
                                     orientation=OBLIQUE, origin=(3.0, -4.0, 5.0), normal_sign=normal_sign,
                                     mosaic_count_source=count_source, repetition_time_ms=1600.0,
                                     echo_time_ms=32.0, shuffle_seed=2)
    dynamic = read_dynamic_series(paths)
    assert dynamic.shape == (5, 6, 8, 6)
    np.testing.assert_array_equal(dynamic.array, f.expected_array((6, 8, 6), n_times=5))
    np.testing.assert_allclose(dynamic.times_s, np.arange(5) * 1.6, atol=1e-6)
    assert dynamic.timing_source == "acquisition_time"
    assert dynamic.origin == pytest.approx((3.0, -4.0, 5.0), abs=1e-4)
    assert dynamic.spacing == pytest.approx((5.0, 2.0, 1.5))
    np.testing.assert_allclose(dynamic.direction[:, 2], f.slice_normal(OBLIQUE), atol=1e-6)
    assert dynamic.echo_time_ms == 32.0 and dynamic.repetition_time_s == pytest.approx(1.6)
    # Each time point is one mosaic instance, referenced for every slice.
    for t in range(5):
        assert len({ref.sop_instance_uid for ref in dynamic.source_refs[t]}) == 1
        assert dynamic.source_refs[t][0].frame_number is None


def test_mosaic_without_acquisition_time_is_spaced_by_tr() -> None:
    datasets = f.make_mosaic_dsc_datasets(n_times=4, timing="repeated", repetition_time_ms=1500.0, shuffle_seed=1)
    dynamic = read_dynamic_series(datasets)
    assert dynamic.timing_source == "repeated"
    np.testing.assert_allclose(dynamic.times_s, [0.0, 1.5, 3.0, 4.5])
    np.testing.assert_array_equal(dynamic.array, f.expected_array((5, 8, 8), n_times=4))


def test_single_mosaic_reads_as_a_volume() -> None:
    ds = f.make_mosaic_dsc_datasets(n_slices=9, n_times=1, normal_sign=-1)[0]
    volume = read_series([ds])
    assert volume.shape == (9, 8, 8)
    np.testing.assert_array_equal(volume.array, f.expected_array((9, 8, 8))[0])


def test_mosaic_count_from_implicit_vr_private_tag(tmp_path: Path) -> None:
    datasets = f.make_mosaic_dsc_datasets(n_times=2, mosaic_count_source="plain")
    for ds in datasets:
        del ds[0x0029, 0x1010]  # no CSA at all: the plain tag alone must do
        ds[0x0019, 0x100A].VR = "UN"
        ds[0x0019, 0x100A].value = struct.pack("<H", 5)
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    dynamic = read_dynamic_series(f.write_series(datasets, tmp_path))
    np.testing.assert_array_equal(dynamic.array, f.expected_array((5, 8, 8), n_times=2))


def test_mosaic_without_count_is_refused() -> None:
    datasets = f.make_mosaic_dsc_datasets(mosaic_count_source="none", series_description="ep2d_perf")
    with pytest.raises(UnsupportedSeriesError, match="NumberOfImagesInMosaic") as caught:
        read_dynamic_series(datasets)
    assert "'ep2d_perf' #12" in str(caught.value)


# --------------------------------------------------------------------------- transfer syntaxes


SHAPE = (4, 32, 32)  # JPEG 2000 needs at least 32 pixels a side with the default resolutions


@pytest.mark.parametrize("transfer_syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_series(transfer_syntax: str, tmp_path: Path) -> None:
    datasets = f.compressed(f.make_mr_datasets(SHAPE, shuffle_seed=3), transfer_syntax)
    paths = f.write_series(datasets, tmp_path)
    assert dcmread(paths[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == transfer_syntax
    np.testing.assert_array_equal(read_series(paths).array, f.expected_array(SHAPE)[0])


def test_jpeg_lossless_series(tmp_path: Path) -> None:
    # pydicom cannot encode JPEG Lossless; the factories' minimal encoder does.
    paths = f.write_series(f.jpeg_lossless_datasets(f.make_ct_datasets(SHAPE, shuffle_seed=3)), tmp_path)
    np.testing.assert_array_equal(read_series(paths).array, f.expected_array(SHAPE, rescale=(1.0, -1024.0))[0])


def test_jpeg_baseline_series(tmp_path: Path) -> None:
    pytest.importorskip("PIL", reason="Pillow (the only JPEG baseline encoder here) is not installed")
    paths = f.write_series(f.jpeg_baseline_datasets((4, 16, 16), shuffle_seed=1), tmp_path)
    volume = read_series(paths)
    np.testing.assert_array_equal(volume.array[:, 5, 7], [10.0, 30.0, 50.0, 70.0])


def test_deflated_series(tmp_path: Path) -> None:
    datasets = f.make_mr_datasets((3, 8, 8))
    for ds in datasets:
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    np.testing.assert_array_equal(read_series(f.write_series(datasets, tmp_path)).array,
                                  f.expected_array((3, 8, 8))[0])


# --------------------------------------------------------------------------- inconsistent input


def _fails(error: type[SeriesError], datasets: list[Dataset], *fragments: str, dynamic: bool = False,
           **kwargs: object) -> SeriesError:
    reader = read_dynamic_series if dynamic else read_series
    with pytest.raises(error) as caught:
        reader(datasets, **kwargs)  # type: ignore[arg-type]
    exc = caught.value
    message = str(exc)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    if datasets and "SeriesInstanceUID" in datasets[0]:
        assert exc.series_uid == datasets[0].SeriesInstanceUID
        assert datasets[0].SeriesInstanceUID in message
        assert "'SYNTH T1' #3" in message
    assert exc.problem in message
    assert isinstance(exc, SeriesError) and isinstance(exc, DicomIOError)
    return exc


def test_empty_input() -> None:
    exc = _fails(EmptySeriesError, [], "no instances")
    assert exc.series_uid is None and "SeriesInstanceUID unknown" in str(exc)


def test_only_non_images_is_an_empty_series() -> None:
    reference = f.make_mr_datasets((2, 4, 4))[0]
    _fails(EmptySeriesError, [f.make_non_image_instance(reference)], "none of the 1 instances is an image",
           skip_non_images=True)


def test_non_image_instance_refused_unless_skipped() -> None:
    datasets = f.make_mr_datasets((3, 4, 4))
    mixed = datasets + [f.make_non_image_instance(datasets[0])]
    _fails(UnsupportedSeriesError, mixed, "Grayscale Softcopy Presentation State Storage", "is not an image",
           "skip_non_images=True")
    np.testing.assert_array_equal(read_series(mixed, skip_non_images=True).array, f.expected_array((3, 4, 4))[0])


def test_mixed_orientation() -> None:
    datasets = f.with_mixed_orientation(f.make_mr_datasets((5, 4, 4)), index=2)
    _fails(MixedOrientationError, datasets, "1 of 5 images have an ImageOrientationPatient different",
           datasets[2].SOPInstanceUID)


def test_missing_slice_gap() -> None:
    datasets = f.without_slice(f.make_mr_datasets((6, 4, 4), shuffle_seed=5), z=3)
    _fails(MissingSliceError, datasets, "1 slice(s) missing between -4.00 mm and 2.00 mm",
           "the gap is 6.00 mm where slices are 3.00 mm apart")


def test_missing_slice_in_one_time_point() -> None:
    datasets = f.without_slice(f.make_mr_datasets((4, 4, 4), n_times=3, timing="temporal_position"),
                               z=2, time_point=1)
    _fails(MissingSliceError, datasets, "TemporalPositionIdentifier 2 has 3 of 4 slices", "missing position(s) -4.00",
           dynamic=True)


def test_missing_image_in_repeated_series() -> None:
    datasets = f.without_slice(f.make_mr_datasets((4, 4, 4), n_times=3, timing="repeated"), z=0, time_point=2)
    _fails(MissingSliceError, datasets, "slice positions hold different numbers of images (2 to 3)",
           "position -10.00 mm has 2", dynamic=True)


def test_duplicate_slice_static() -> None:
    datasets = f.with_duplicate_slice(f.make_mr_datasets((4, 4, 4)), index=1)
    _fails(DuplicateSliceError, datasets, "two images at slice position -7.00 mm", datasets[1].SOPInstanceUID,
           datasets[-1].SOPInstanceUID)


def test_duplicate_slice_at_same_temporal_position() -> None:
    datasets = f.with_duplicate_slice(f.make_mr_datasets((4, 4, 4), n_times=2), index=5)
    _fails(DuplicateSliceError, datasets, "with TemporalPositionIdentifier 2", dynamic=True)


def test_duplicate_slice_at_same_acquisition_time() -> None:
    datasets = f.with_duplicate_slice(f.make_mr_datasets((4, 4, 4), n_times=2, timing="acquisition_time"), index=0)
    _fails(DuplicateSliceError, datasets, "with the same acquisition time", dynamic=True, timing="acquisition_time")


def test_same_instance_twice() -> None:
    datasets = f.make_mr_datasets((3, 4, 4))
    _fails(DuplicateSliceError, datasets + [datasets[0]], f"SOP Instance {datasets[0].SOPInstanceUID} was given twice")


def test_multi_echo_duplicates_are_explained() -> None:
    datasets = f.with_duplicate_slice(f.make_mr_datasets((3, 4, 4)), index=0)
    datasets[-1].EchoTime = 60.0
    _fails(DuplicateSliceError, datasets, "differ in EchoTime (30 vs 60 ms)", "multi-echo")


def test_uneven_spacing() -> None:
    datasets = f.with_shifted_slice(f.make_mr_datasets((6, 4, 4)), z=2, shift_mm=0.9)
    _fails(UnevenSpacingError, datasets, "slice spacing is uneven: 3.90 mm between -7.00 mm and -3.10 mm", "3.00 mm elsewhere", "tolerance 5%")


def test_small_spacing_jitter_is_tolerated() -> None:
    datasets = f.with_shifted_slice(f.make_mr_datasets((6, 4, 4)), z=2, shift_mm=0.05)
    assert read_series(datasets).spacing[0] == pytest.approx(3.0)
    with pytest.raises(UnevenSpacingError):
        read_series(datasets, spacing_tolerance=0.001)


def test_varying_matrix_size() -> None:
    datasets = f.with_matrix(f.make_mr_datasets((4, 8, 8)), index=2, rows=8, columns=6)
    _fails(InconsistentMatrixError, datasets, "image matrix (Rows x Columns) varies", "8x8 in 3 image(s)",
           f"8x6 in 1 image(s), e.g. SOP Instance {datasets[2].SOPInstanceUID}")


def test_varying_pixel_spacing() -> None:
    datasets = f.make_mr_datasets((4, 8, 8))
    datasets[1].PixelSpacing = ["1.2", "1.2"]
    _fails(InconsistentMatrixError, datasets, "PixelSpacing varies")


def test_missing_pixel_data() -> None:
    datasets = f.without_pixel_data(f.make_mr_datasets((3, 4, 4)), index=1)
    _fails(MissingPixelDataError, datasets, f"SOP Instance {datasets[1].SOPInstanceUID} is an image without pixel data")


def test_missing_timing_for_dynamic_read() -> None:
    datasets = f.make_mr_datasets((3, 4, 4), n_times=4, timing="none")
    _fails(MissingTimingError, datasets, "only the repetition order is known", "RepetitionTime",
           dynamic=True)
    np.testing.assert_allclose(read_dynamic_series(datasets, frame_interval_s=3.0).times_s, [0, 3, 6, 9])


def test_missing_timing_when_explicitly_requested() -> None:
    datasets = f.without_timing(f.make_mr_datasets((3, 4, 4), n_times=2))
    _fails(MissingTimingError, datasets, "6 of 6 images lack TemporalPositionIdentifier", dynamic=True,
           timing="temporal_position")


def test_several_series_refused() -> None:
    first = f.make_mr_datasets((2, 4, 4))
    second = f.make_mr_datasets((2, 4, 4), series_description="OTHER")
    with pytest.raises(UnsupportedSeriesError, match="belong to 2 different series") as caught:
        read_series(first + second)
    assert first[0].SeriesInstanceUID in str(caught.value) and "'OTHER' #3" in str(caught.value)


def test_non_dicom_file_refused(tmp_path: Path) -> None:
    paths = f.write_series(f.make_mr_datasets((2, 4, 4)), tmp_path)
    junk = tmp_path / "notes.txt"
    junk.write_text("not DICOM")
    with pytest.raises(UnsupportedSeriesError, match="notes.txt is not a DICOM file"):
        read_series([*paths, junk])


def test_gantry_tilt_is_refused() -> None:
    datasets = f.make_ct_datasets((4, 8, 8))
    for ds, z in zip(datasets, f.slice_indices(datasets), strict=True):
        position = np.array(ds.ImagePositionPatient, float) + [0.0, 0.5 * z, 0.0]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    with pytest.raises(UnsupportedSeriesError, match="not stacked along the slice normal"):
        read_series(datasets)


def test_colour_image_refused() -> None:
    datasets = f.make_mr_datasets((2, 4, 4))
    datasets[0].SamplesPerPixel = 3
    datasets[0].PhotometricInterpretation = "RGB"
    _fails(UnsupportedSeriesError, datasets, "colour image (RGB)")


# --------------------------------------------------------------------------- study grouping


def test_group_study_summarises_each_series(tmp_path: Path) -> None:
    study_uid = generate_uid()
    t1 = f.make_mr_series(tmp_path / "a" / "t1", (5, 4, 4), study_uid=study_uid, series_number=2,
                          series_description="T1 VIBE")
    dsc = f.make_mosaic_dsc_series(tmp_path / "b", n_times=3, study_uid=study_uid)
    ct = f.make_ct_series(tmp_path / "a" / "ct", (3, 4, 4), study_uid=study_uid, series_number=1)
    enhanced = f.make_enhanced_mr_file(tmp_path / "c", n_times=2, study_uid=study_uid, series_number=20)
    (tmp_path / "README").write_text("not dicom")
    (tmp_path / "b" / "empty.dcm").write_bytes(b"")

    summaries = group_study(tmp_path)

    assert [s.series_number for s in summaries.values()] == [1, 2, 12, 20]
    by_number = {s.series_number: s for s in summaries.values()}
    assert by_number[2].paths == tuple(sorted(t1))
    assert by_number[2].instance_count == 5 and by_number[2].frame_count == 5
    assert by_number[2].modality == "MR" and by_number[2].series_description == "T1 VIBE"
    assert by_number[2].image_type == ("ORIGINAL", "PRIMARY", "M", "ND")
    assert by_number[2].body_part_examined == "HEAD"
    assert by_number[2].frame_of_reference_uid == dcmread(t1[0]).FrameOfReferenceUID
    assert by_number[1].modality == "CT" and by_number[1].instance_count == 3 and by_number[1].paths == tuple(sorted(ct))
    assert "MOSAIC" in by_number[12].image_type and by_number[12].instance_count == 3
    assert by_number[12].paths == tuple(sorted(dsc))
    assert by_number[20].instance_count == 1 and by_number[20].frame_count == 10
    assert by_number[20].sop_class_uids == {"1.2.840.10008.5.1.4.1.1.4.1"}
    assert {s.study_uid for s in summaries.values()} == {study_uid}
    assert set(summaries) == {s.series_uid for s in summaries.values()}
    # A list of paths works too, and the grouped paths read straight back.
    listed = group_study([*t1, *enhanced.parent.iterdir()])
    assert set(listed) == {by_number[2].series_uid, by_number[20].series_uid}
    np.testing.assert_array_equal(read_series(by_number[2].paths).array, f.expected_array((5, 4, 4))[0])


# --------------------------------------------------------------------------- resampling


def _lps_x_ramp(shape: tuple[int, int, int], spacing: tuple[float, float, float], orientation: tuple[float, ...],
                origin: tuple[float, float, float], frame_of_reference_uid: str) -> Volume:
    """A volume whose voxel values are their own LPS x coordinate (linear, so linear interpolation is exact)."""
    template = read_series(f.make_mr_datasets(shape, spacing=spacing, orientation=orientation, origin=origin,
                                              frame_of_reference_uid=frame_of_reference_uid))
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    points = template.index_to_lps(np.stack([z, y, x], axis=-1).reshape(-1, 3))
    template.array = points[:, 0].reshape(shape).astype(np.float32)
    return template


def test_resample_linear_onto_another_grid() -> None:
    frame_of_reference = generate_uid()
    moving = _lps_x_ramp((20, 24, 24), (2.0, 1.5, 1.5), f.AXIAL, (-18.0, -18.0, -20.0), frame_of_reference)
    reference = read_series(f.make_mr_datasets((5, 8, 8), spacing=(3.0, 2.0, 2.0), orientation=OBLIQUE,
                                               origin=(-5.0, -5.0, -3.0), frame_of_reference_uid=frame_of_reference))
    resampled = resample_to(moving, reference, "linear")
    assert isinstance(resampled, Volume) and resampled.same_grid(reference)
    z, y, x = np.meshgrid(*[np.arange(n) for n in reference.shape], indexing="ij")
    expected_x = reference.index_to_lps(np.stack([z, y, x], axis=-1).reshape(-1, 3))[:, 0].reshape(reference.shape)
    np.testing.assert_allclose(resampled.array, expected_x, atol=1e-3)
    assert resampled.series_uid == moving.series_uid and resampled.source_refs == reference.source_refs


def test_resample_nearest_keeps_labels() -> None:
    frame_of_reference = generate_uid()
    labels = read_series(f.make_mr_datasets((6, 10, 10), frame_of_reference_uid=frame_of_reference))
    labels.array = np.zeros(labels.shape, dtype=np.uint8)
    labels.array[2:4, 3:7, 3:7] = 2
    labels.array[4:, :, :5] = 5
    reference = read_series(f.make_mr_datasets((4, 7, 7), spacing=(4.0, 1.3, 1.3), origin=(-7.3, -6.9, -9.0),
                                               frame_of_reference_uid=frame_of_reference))
    resampled = resample_to(labels, reference, "nearest")
    assert resampled.array.dtype == np.uint8
    assert set(np.unique(resampled.array)) <= {0, 2, 5}
    assert {2, 5} <= set(np.unique(resampled.array))


def test_resample_dynamic_frame_by_frame() -> None:
    frame_of_reference = generate_uid()
    dynamic = read_dynamic_series(f.make_mr_datasets((4, 6, 6), n_times=3, frame_of_reference_uid=frame_of_reference))
    resampled = resample_to(dynamic, dynamic.frame(0), "linear")
    assert isinstance(resampled, DynamicVolume)
    np.testing.assert_allclose(resampled.array, dynamic.array, atol=1e-3)
    np.testing.assert_array_equal(resampled.times_s, dynamic.times_s)


def test_resample_refuses_other_frame_of_reference() -> None:
    moving = read_series(f.make_mr_datasets((3, 4, 4)))
    reference = read_series(f.make_mr_datasets((3, 4, 4)))
    with pytest.raises(FrameOfReferenceMismatchError, match="different frames of reference"):
        resample_to(moving, reference)
    assert resample_to(moving, reference, allow_other_frame_of_reference=True).same_grid(reference)


def test_volume_rejects_inconsistent_construction() -> None:
    with pytest.raises(ValueError, match="3D"):
        Volume(array=np.zeros((2, 2)), spacing=(1, 1, 1), origin=(0, 0, 0), direction=np.eye(3))
    with pytest.raises(ValueError, match="orthonormal"):
        Volume(array=np.zeros((2, 2, 2)), spacing=(1, 1, 1), origin=(0, 0, 0), direction=np.eye(3) * 2)
    with pytest.raises(ValueError, match="source_refs"):
        Volume(array=np.zeros((2, 2, 2)), spacing=(1, 1, 1), origin=(0, 0, 0), direction=np.eye(3),
               source_refs=(SourceRef("1.2", "1.2.3"),))
    with pytest.raises(ValueError, match="times"):
        DynamicVolume(array=np.zeros((2, 2, 2, 2)), spacing=(1, 1, 1), origin=(0, 0, 0), direction=np.eye(3),
                      times_s=[0.0])
