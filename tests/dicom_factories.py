"""Synthetic DICOM test data, built in memory with pydicom (no files downloaded).

Every builder returns pydicom Datasets; :func:`write_series` saves them as
Part 10 files, and the ``make_*_series`` wrappers do both. Geometry follows
the conventions of :mod:`dicom_io.volume`: ``shape`` and ``spacing`` are
``(z, y, x)``, ``origin`` is the LPS centre of the first voxel of the slice
lowest along ``row x column``, ``orientation`` the six ImageOrientationPatient
cosines.

Pixel values are predictable so tests can check them: the stored value of
voxel ``(t, z, y, x)`` is :func:`stored_pattern` and the expected real value
``slope * stored + intercept`` (see :func:`expected_array`).

The ``with_*``/``without_*`` helpers return broken copies of a series for
error-path tests; they never modify their input.
"""

from __future__ import annotations

import copy
import io
import random
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    JPEGBaseline8Bit,
    MRImageStorage,
    UID,
    generate_uid,
)

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)

ClassicTiming = Literal["temporal_position", "acquisition_time", "trigger_time", "repeated", "none"]

#: Clock time (seconds after midnight) of the first acquisition: 10:00:00.
BASE_TIME_S = 36000.0
STUDY_DATE = "20240131"


# --------------------------------------------------------------------------- values and geometry


def stored_pattern(t: int, z: int, rows: int, columns: int) -> np.ndarray:
    """Stored (pre-rescale) uint16 pixels of slice ``z`` at time ``t``.

    ``t * 1000 + z * 40 + (y + 2x) % 40``: unique per slice and time point
    for ``z < 25`` and ``t < 65``, and varying in-plane so flips show.
    """
    y, x = np.mgrid[0:rows, 0:columns]
    return (t * 1000 + z * 40 + (y + 2 * x) % 40).astype(np.uint16)


def expected_array(shape: Sequence[int], n_times: int = 1,
                   rescale: Callable[[int, int], tuple[float, float]] | tuple[float, float] = (1.0, 0.0)
                   ) -> np.ndarray:
    """The float32 (t, z, y, x) array a correct reader returns for the factories' patterns.

    ``rescale`` is ``(slope, intercept)`` or a function of ``(t, z)`` giving them.
    """
    z_count, rows, columns = shape
    out = np.empty((n_times, z_count, rows, columns), dtype=np.float32)
    for t in range(n_times):
        for z in range(z_count):
            slope, intercept = rescale(t, z) if callable(rescale) else rescale
            out[t, z] = stored_pattern(t, z, rows, columns).astype(np.float32) * slope + intercept
    return out


def slice_normal(orientation: Sequence[float]) -> np.ndarray:
    row, column = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    return np.cross(row, column)


def slice_position(origin: Sequence[float], orientation: Sequence[float], spacing_z: float, z: int) -> np.ndarray:
    """LPS position of slice ``z``'s first voxel."""
    return np.asarray(origin, float) + z * spacing_z * slice_normal(orientation)


def _ds_string(values: Sequence[float]) -> list[str]:
    """Decimal strings of at most 6 decimals (DS values are limited to 16 characters)."""
    return [f"{float(v):.6f}".rstrip("0").rstrip(".").replace("-0", "0") if abs(float(v)) < 5e-7
            else f"{float(v):.6f}".rstrip("0").rstrip(".") for v in values]


def _tm(seconds: float) -> str:
    seconds %= 86400
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{int(hours):02d}{int(minutes):02d}{secs:09.6f}"


def _dt(seconds: float) -> str:
    return STUDY_DATE + _tm(seconds)


# --------------------------------------------------------------------------- common attributes


def _base_dataset(sop_class_uid: str, modality: str, study_uid: str, series_uid: str, frame_of_reference_uid: str,
                  series_description: str, series_number: int) -> Dataset:
    ds = Dataset()
    sop_instance_uid = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = UID(sop_class_uid)
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyDate = STUDY_DATE
    ds.Modality = modality
    ds.PatientName = "Test^Synthetic"
    ds.PatientID = "SYNTH-0001"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.SeriesDescription = series_description
    ds.SeriesNumber = series_number
    ds.BodyPartExamined = "HEAD" if modality == "MR" else "ABDOMEN"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    return ds


def make_mr_datasets(
    shape: tuple[int, int, int] = (6, 16, 16),
    spacing: tuple[float, float, float] = (3.0, 1.0, 1.0),
    orientation: Sequence[float] = AXIAL,
    origin: Sequence[float] = (-8.0, -8.0, -10.0),
    *,
    n_times: int = 1,
    timing: ClassicTiming = "temporal_position",
    frame_interval_s: float = 2.0,
    rescale: tuple[float, float] | None = None,
    modality: str = "MR",
    sop_class_uid: str = MRImageStorage,
    series_description: str = "SYNTH T1",
    series_number: int = 3,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "M", "ND"),
    echo_time_ms: float | None = 30.0,
    repetition_time_ms: float | None = 1500.0,
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    shuffle_seed: int | None = None,
) -> list[Dataset]:
    """A classic single-frame series: ``n_times`` repetitions of ``shape[0]`` slices.

    ``timing`` says how a dynamic series marks its time points:
    ``temporal_position`` (TemporalPositionIdentifier, plus TemporalResolution =
    the frame interval), ``acquisition_time`` (AcquisitionTime, with the slices
    of one repetition spread over the interval like a 2D multi-slice
    acquisition), ``trigger_time`` (TriggerTime), ``repeated`` (nothing but
    InstanceNumber order; RepetitionTime = the frame interval unless given),
    or ``none`` (nothing at all, and no RepetitionTime). A static series
    (``n_times == 1``) carries one AcquisitionTime for all slices.

    ``shuffle_seed`` shuffles the list and the InstanceNumbers within each
    repetition, so readers must sort by position. ``rescale`` defaults to
    none for MR and ``(1, -1024)`` for CT.
    """
    z_count, rows, columns = shape
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_of_reference_uid = frame_of_reference_uid or generate_uid()
    if rescale is None:
        rescale = (1.0, -1024.0) if modality == "CT" else (1.0, 0.0)
    if timing == "repeated" and repetition_time_ms == 1500.0:
        repetition_time_ms = frame_interval_s * 1000.0
    if timing == "none":
        repetition_time_ms = None
    rng = random.Random(shuffle_seed)

    datasets: list[Dataset] = []
    for t in range(n_times):
        instance_numbers = list(range(t * z_count + 1, (t + 1) * z_count + 1))
        if shuffle_seed is not None:
            rng.shuffle(instance_numbers)
        for z in range(z_count):
            ds = _base_dataset(sop_class_uid, modality, study_uid, series_uid, frame_of_reference_uid,
                               series_description, series_number)
            ds.ImageType = list(image_type)
            ds.InstanceNumber = instance_numbers[z]
            ds.AcquisitionNumber = t + 1 if n_times > 1 else 1
            ds.ImagePositionPatient = _ds_string(slice_position(origin, orientation, spacing[0], z))
            ds.ImageOrientationPatient = _ds_string(orientation)
            ds.PixelSpacing = _ds_string(spacing[1:])
            ds.SliceThickness = _ds_string([spacing[0]])[0]
            ds.SpacingBetweenSlices = _ds_string([spacing[0]])[0]
            if echo_time_ms is not None:
                ds.EchoTime = echo_time_ms
            if repetition_time_ms is not None:
                ds.RepetitionTime = repetition_time_ms
            if n_times == 1:
                ds.AcquisitionTime = _tm(BASE_TIME_S)
            elif timing == "temporal_position":
                ds.TemporalPositionIdentifier = t + 1
                ds.NumberOfTemporalPositions = n_times
                ds.TemporalResolution = frame_interval_s * 1000.0
            elif timing == "acquisition_time":
                ds.AcquisitionTime = _tm(BASE_TIME_S + t * frame_interval_s + z * frame_interval_s / z_count)
            elif timing == "trigger_time":
                ds.TriggerTime = t * frame_interval_s * 1000.0
            if rescale != (1.0, 0.0) or modality == "CT":
                ds.RescaleSlope = _ds_string([rescale[0]])[0]
                ds.RescaleIntercept = _ds_string([rescale[1]])[0]
                ds.RescaleType = "HU" if modality == "CT" else "US"
            ds.Rows, ds.Columns = rows, columns
            ds.PixelData = stored_pattern(t, z, rows, columns).tobytes()
            datasets.append(ds)
    if shuffle_seed is not None:
        rng.shuffle(datasets)
    return datasets


def make_ct_datasets(
    shape: tuple[int, int, int] = (8, 16, 16),
    spacing: tuple[float, float, float] = (2.5, 0.75, 0.75),
    orientation: Sequence[float] = AXIAL,
    origin: Sequence[float] = (-6.0, -6.0, -100.0),
    **kwargs: object,
) -> list[Dataset]:
    """A CT Image Storage series (RescaleIntercept -1024 by default); see :func:`make_mr_datasets`."""
    kwargs.setdefault("series_description", "SYNTH CT")
    kwargs.setdefault("echo_time_ms", None)
    kwargs.setdefault("repetition_time_ms", None)
    return make_mr_datasets(shape, spacing, orientation, origin, modality="CT",  # type: ignore[arg-type]
                            sop_class_uid=CTImageStorage, **kwargs)


# --------------------------------------------------------------------------- enhanced multi-frame


def enhanced_rescale(t: int, z: int) -> tuple[float, float]:
    """The per-frame (slope, intercept) :func:`make_enhanced_mr_dataset` writes."""
    return 1.0 + 0.5 * ((t + z) % 2), -10.0 * z


def make_enhanced_mr_dataset(
    shape: tuple[int, int, int] = (5, 12, 10),
    spacing: tuple[float, float, float] = (4.0, 1.5, 1.25),
    orientation: Sequence[float] = CORONAL,
    origin: Sequence[float] = (-10.0, 20.0, 30.0),
    *,
    n_times: int = 1,
    frame_interval_s: float = 3.0,
    timing: Literal["temporal_position", "acquisition_time", "both"] = "both",
    per_frame_rescale: bool = True,
    shuffle_seed: int | None = None,
    echo_time_ms: float = 25.0,
    repetition_time_ms: float = 5.0,
    series_description: str = "SYNTH ENHANCED",
    series_number: int = 7,
    study_uid: str | None = None,
    series_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
) -> Dataset:
    """One Enhanced MR Image object holding ``n_times * shape[0]`` frames.

    Orientation and pixel measures are shared functional groups; position,
    frame content (TemporalPositionIndex and/or FrameAcquisitionDateTime) and,
    with ``per_frame_rescale``, PixelValueTransformation (:func:`enhanced_rescale`)
    are per frame. ``shuffle_seed`` stores the frames in a random order.
    """
    z_count, rows, columns = shape
    ds = _base_dataset(EnhancedMRImageStorage, "MR", study_uid or generate_uid(), series_uid or generate_uid(),
                       frame_of_reference_uid or generate_uid(), series_description, series_number)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "PERFUSION", "NONE"]
    ds.InstanceNumber = 1
    ds.ContentDate = STUDY_DATE
    ds.ContentTime = _tm(BASE_TIME_S)
    ds.AcquisitionDateTime = _dt(BASE_TIME_S)
    ds.Rows, ds.Columns = rows, columns

    shared = Dataset()
    plane_orientation = Dataset()
    plane_orientation.ImageOrientationPatient = _ds_string(orientation)
    shared.PlaneOrientationSequence = DicomSequence([plane_orientation])
    measures = Dataset()
    measures.PixelSpacing = _ds_string(spacing[1:])
    measures.SliceThickness = _ds_string([spacing[0]])[0]
    measures.SpacingBetweenSlices = _ds_string([spacing[0]])[0]
    shared.PixelMeasuresSequence = DicomSequence([measures])
    mr_timing = Dataset()
    mr_timing.RepetitionTime = repetition_time_ms
    shared.MRTimingAndRelatedParametersSequence = DicomSequence([mr_timing])
    echo = Dataset()
    echo.EffectiveEchoTime = echo_time_ms
    shared.MREchoSequence = DicomSequence([echo])
    if not per_frame_rescale:
        transform = Dataset()
        transform.RescaleSlope = "2"
        transform.RescaleIntercept = "-5"
        transform.RescaleType = "US"
        shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

    order = [(t, z) for t in range(n_times) for z in range(z_count)]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(order)
    per_frame_items = []
    planes = []
    for t, z in order:
        item = Dataset()
        position = Dataset()
        position.ImagePositionPatient = _ds_string(slice_position(origin, orientation, spacing[0], z))
        item.PlanePositionSequence = DicomSequence([position])
        content = Dataset()
        if timing in ("temporal_position", "both"):
            content.TemporalPositionIndex = t + 1
        if timing in ("acquisition_time", "both"):
            content.FrameAcquisitionDateTime = _dt(BASE_TIME_S + t * frame_interval_s)
        content.InStackPositionNumber = z + 1
        content.StackID = "1"
        item.FrameContentSequence = DicomSequence([content])
        if per_frame_rescale:
            slope, intercept = enhanced_rescale(t, z)
            transform = Dataset()
            transform.RescaleSlope = _ds_string([slope])[0]
            transform.RescaleIntercept = _ds_string([intercept])[0]
            transform.RescaleType = "US"
            item.PixelValueTransformationSequence = DicomSequence([transform])
        per_frame_items.append(item)
        planes.append(stored_pattern(t, z, rows, columns))
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame_items)
    ds.NumberOfFrames = len(order)
    ds.PixelData = np.stack(planes).tobytes()
    return ds


# --------------------------------------------------------------------------- Siemens MOSAIC


def encode_csa2(elements: dict[str, tuple[str, Sequence[object]]]) -> bytes:
    """A Siemens CSA2 ('SV10') header holding ``{name: (vr, values)}``.

    Like real headers, single values are followed by empty items (6 in all).
    """
    out = io.BytesIO()
    out.write(b"SV10\x04\x03\x02\x01")
    out.write(struct.pack("<II", len(elements), 77))
    for name, (vr, values) in elements.items():
        texts = [str(v).encode("latin-1") + b"\0" for v in values]
        n_items = max(len(texts), 6)
        out.write(struct.pack("<64si4siii", name.encode("latin-1"), len(values), vr.encode("latin-1"), 3,
                              n_items, 77 if values else 205))
        for i in range(n_items):
            value = texts[i] if i < len(texts) else b""
            out.write(struct.pack("<4i", len(value), len(value), 77, len(value)))
            out.write(value + b"\0" * ((4 - len(value) % 4) % 4))
    return out.getvalue()


def make_mosaic_dsc_datasets(
    n_slices: int = 5,
    tile_shape: tuple[int, int] = (8, 8),
    spacing: tuple[float, float, float] = (4.0, 2.0, 2.0),
    orientation: Sequence[float] = AXIAL,
    origin: Sequence[float] = (-7.0, -7.0, 0.0),
    *,
    n_times: int = 4,
    normal_sign: int = 1,
    mosaic_count_source: Literal["csa", "plain", "none"] = "csa",
    timing: Literal["acquisition_time", "repeated"] = "acquisition_time",
    repetition_time_ms: float = 1500.0,
    echo_time_ms: float = 30.0,
    series_description: str = "ep2d_perf",
    series_number: int = 12,
    study_uid: str | None = None,
    series_uid: str | None = None,
    shuffle_seed: int | None = None,
) -> list[Dataset]:
    """A Siemens MOSAIC DSC series: one MR instance per time point, slices tiled.

    Slice ``z`` of the expected volume is ascending along ``row x column``;
    the tiles are stacked along the CSA SliceNormalVector, which is
    ``normal_sign * (row x column)`` (with -1 the tiles run top to bottom).
    ImagePositionPatient follows the Siemens convention (corner of the mosaic
    as if it were one image centred on the slice). ``mosaic_count_source``
    puts NumberOfImagesInMosaic in the CSA header, in the plain private tag
    (0019,xx0A), or nowhere. ``timing='repeated'`` omits AcquisitionTime.
    """
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_of_reference_uid = generate_uid()
    tile_rows, tile_columns = tile_shape
    per_side = int(np.ceil(np.sqrt(n_slices)))
    mosaic_rows, mosaic_columns = per_side * tile_rows, per_side * tile_columns
    row_direction, column_direction = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = slice_normal(orientation)
    tile_normal = normal * normal_sign
    first_tile = slice_position(origin, orientation, spacing[0], 0 if normal_sign > 0 else n_slices - 1)
    corner = (first_tile
              - (mosaic_columns - tile_columns) / 2 * spacing[2] * row_direction
              - (mosaic_rows - tile_rows) / 2 * spacing[1] * column_direction)
    csa_elements: dict[str, tuple[str, Sequence[object]]] = {
        "EchoLinePosition": ("IS", [32]),
        "SliceNormalVector": ("FD", [f"{v:.8f}" for v in tile_normal]),
        "BandwidthPerPixelPhaseEncode": ("FD", ["20.5"]),
        "MosaicRefAcqTimes": ("FD", [f"{k * 100.0:.2f}" for k in range(n_slices)]),
    }
    if mosaic_count_source == "csa":
        csa_elements["NumberOfImagesInMosaic"] = ("US", [n_slices])
    csa = encode_csa2(csa_elements)

    datasets = []
    for t in range(n_times):
        ds = _base_dataset(MRImageStorage, "MR", study_uid, series_uid, frame_of_reference_uid,
                           series_description, series_number)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
        ds.InstanceNumber = t + 1
        ds.AcquisitionNumber = t + 1
        ds.ImagePositionPatient = _ds_string(corner)
        ds.ImageOrientationPatient = _ds_string(orientation)
        ds.PixelSpacing = _ds_string(spacing[1:])
        ds.SliceThickness = _ds_string([spacing[0]])[0]
        ds.SpacingBetweenSlices = _ds_string([spacing[0]])[0]
        ds.EchoTime = echo_time_ms
        ds.RepetitionTime = repetition_time_ms
        if timing == "acquisition_time":
            ds.AcquisitionTime = _tm(BASE_TIME_S + t * repetition_time_ms / 1000.0)
        mr_block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
        if mosaic_count_source == "plain":
            mr_block.add_new(0x0A, "US", n_slices)
        csa_block = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
        csa_block.add_new(0x08, "CS", "IMAGE NUM 4")
        csa_block.add_new(0x10, "OB", csa)
        pixels = np.zeros((mosaic_rows, mosaic_columns), dtype=np.uint16)
        for k in range(n_slices):
            z = k if normal_sign > 0 else n_slices - 1 - k
            r, c = (k // per_side) * tile_rows, (k % per_side) * tile_columns
            pixels[r:r + tile_rows, c:c + tile_columns] = stored_pattern(t, z, tile_rows, tile_columns)
        ds.Rows, ds.Columns = mosaic_rows, mosaic_columns
        ds.PixelData = pixels.tobytes()
        datasets.append(ds)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(datasets)
    return datasets


# --------------------------------------------------------------------------- encodings and files


def compressed(datasets: Sequence[Dataset], transfer_syntax_uid: str, **encoding_kwargs: object) -> list[Dataset]:
    """Copies of *datasets* with pixel data encoded in *transfer_syntax_uid* via ``Dataset.compress``.

    Needs an installed encoder (RLE: pydicom/pylibjpeg-rle; JPEG-LS: pyjpegls;
    JPEG 2000: pylibjpeg-openjpeg). pydicom has no JPEG baseline/lossless
    encoder: use :func:`jpeg_baseline_datasets` for baseline.
    """
    out = []
    for ds in datasets:
        copy_ = copy.deepcopy(ds)
        copy_.compress(transfer_syntax_uid, **encoding_kwargs)
        out.append(copy_)
    return out


def jpeg_baseline_datasets(shape: tuple[int, int, int] = (4, 16, 16), spacing: tuple[float, float, float] = (3.0, 1.0, 1.0),
                           *, shuffle_seed: int | None = None) -> list[Dataset]:
    """An 8-bit MR series encoded as JPEG Baseline with Pillow.

    Slice ``z`` is flat with value ``20 * z + 10``: flat 8x8 blocks survive
    the lossy coding exactly, so the decoded values are known.
    """
    from PIL import Image  # Pillow is a dependency of highdicom
    from pydicom.encaps import encapsulate

    datasets = make_mr_datasets(shape, spacing, shuffle_seed=shuffle_seed)
    z_count, rows, columns = shape
    for ds, z in zip(datasets, slice_indices(datasets), strict=True):
        plane = np.full((rows, columns), 20 * z + 10, dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(plane, mode="L").save(buffer, format="JPEG", quality=95)
        ds.BitsAllocated = 8
        ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return datasets


def encode_jpeg_lossless_sv1(plane: np.ndarray, precision: int = 16) -> bytes:
    """Encode a 2D unsigned greyscale plane as JPEG Lossless, process 14, predictor 1.

    pydicom has no encoder for this transfer syntax, so this minimal one
    exists for tests: one component, no point transform, and one Huffman
    table giving every difference category (0-16) a 5-bit code.
    """
    rows, columns = plane.shape
    values = plane.astype(np.int64)
    modulus = 1 << 16
    categories = list(range(17))
    codes = {category: category for category in categories}  # canonical codes of length 5: 0..16

    bits: list[int] = []

    def put(value: int, length: int) -> None:
        bits.extend((value >> (length - 1 - i)) & 1 for i in range(length))

    for r in range(rows):
        for c in range(columns):
            if r == 0 and c == 0:
                prediction = 1 << (precision - 1)
            elif r == 0:
                prediction = int(values[r, c - 1])
            elif c == 0:
                prediction = int(values[r - 1, c])
            else:
                prediction = int(values[r, c - 1])
            difference = (int(values[r, c]) - prediction) % modulus
            if difference >= modulus // 2:
                difference -= modulus
            category = 16 if difference == -32768 else abs(difference).bit_length()
            put(codes[category], 5)
            if 0 < category < 16:
                put(difference if difference >= 0 else difference - 1 + (1 << category), category)
    bits.extend([1] * (-len(bits) % 8))
    entropy = bytearray()
    for i in range(0, len(bits), 8):
        byte = int("".join(map(str, bits[i:i + 8])), 2)
        entropy.append(byte)
        if byte == 0xFF:
            entropy.append(0x00)

    def segment(marker: int, payload: bytes) -> bytes:
        return struct.pack(">HH", marker, len(payload) + 2) + payload

    counts = [0] * 16
    counts[4] = len(categories)
    return b"".join([
        b"\xff\xd8",
        segment(0xFFC3, struct.pack(">BHHB", precision, rows, columns, 1) + bytes([1, 0x11, 0])),
        segment(0xFFC4, bytes([0x00]) + bytes(counts) + bytes(categories)),
        segment(0xFFDA, bytes([1, 1, 0x00, 1, 0, 0])),
        bytes(entropy),
        b"\xff\xd9",
    ])


def jpeg_lossless_datasets(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Copies of single-frame 16-bit *datasets* encoded as JPEG Lossless SV1 (see :func:`encode_jpeg_lossless_sv1`)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    out = _copies(datasets)
    for ds in out:
        plane = np.frombuffer(ds.PixelData, dtype=np.uint16).reshape(ds.Rows, ds.Columns)
        ds.PixelData = encapsulate([encode_jpeg_lossless_sv1(plane, precision=int(ds.BitsStored))])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    return out


def write_series(datasets: Sequence[Dataset], directory: Path, prefix: str = "IM") -> list[Path]:
    """Save each dataset as a Part 10 file ``<prefix>NNNNN.dcm`` in *directory*; returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = directory / f"{prefix}{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def make_mr_series(directory: Path, shape: tuple[int, int, int] = (6, 16, 16), **kwargs: object) -> list[Path]:
    """:func:`make_mr_datasets` saved to *directory*."""
    return write_series(make_mr_datasets(shape, **kwargs), directory)  # type: ignore[arg-type]


def make_ct_series(directory: Path, shape: tuple[int, int, int] = (8, 16, 16), **kwargs: object) -> list[Path]:
    """:func:`make_ct_datasets` saved to *directory*."""
    return write_series(make_ct_datasets(shape, **kwargs), directory)  # type: ignore[arg-type]


def make_enhanced_mr_file(directory: Path, **kwargs: object) -> Path:
    """:func:`make_enhanced_mr_dataset` saved to *directory*."""
    return write_series([make_enhanced_mr_dataset(**kwargs)], directory, prefix="EMR")[0]  # type: ignore[arg-type]


def make_mosaic_dsc_series(directory: Path, **kwargs: object) -> list[Path]:
    """:func:`make_mosaic_dsc_datasets` saved to *directory*."""
    return write_series(make_mosaic_dsc_datasets(**kwargs), directory, prefix="MOS")  # type: ignore[arg-type]


def make_non_image_instance(reference: Dataset) -> Dataset:
    """A presentation-state-like object (no pixel data) in *reference*'s series."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = GrayscaleSoftcopyPresentationStateStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = GrayscaleSoftcopyPresentationStateStorage
    ds.Modality = "PR"
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SeriesDescription", "SeriesNumber"):
        setattr(ds, keyword, reference.get(keyword))
    ds.ContentLabel = "ANNOTATION"
    return ds


# --------------------------------------------------------------------------- deliberately broken series


def _copies(datasets: Sequence[Dataset]) -> list[Dataset]:
    return [copy.deepcopy(ds) for ds in datasets]


def _distance(ds: Dataset) -> float:
    return float(np.dot(np.array(ds.ImagePositionPatient, float), slice_normal(ds.ImageOrientationPatient)))


def slice_indices(datasets: Sequence[Dataset]) -> list[int]:
    """Index of each dataset's distinct slice position, counted along the slice normal."""
    distances = [round(_distance(ds), 3) for ds in datasets]
    ranks = {d: i for i, d in enumerate(sorted(set(distances)))}
    return [ranks[d] for d in distances]


def without_slice(datasets: Sequence[Dataset], z: int, *, time_point: int | None = None) -> list[Dataset]:
    """Drop slice ``z`` (of every repetition, or only of AcquisitionNumber ``time_point + 1``)."""
    return [ds for ds, index in zip(_copies(datasets), slice_indices(datasets), strict=True)
            if not (index == z and (time_point is None or int(ds.AcquisitionNumber) == time_point + 1))]


def with_duplicate_slice(datasets: Sequence[Dataset], index: int = 0) -> list[Dataset]:
    """Append a copy of ``datasets[index]`` under a new SOPInstanceUID (same position and time)."""
    out = _copies(datasets)
    twin = copy.deepcopy(out[index])
    twin.SOPInstanceUID = generate_uid()
    twin.file_meta.MediaStorageSOPInstanceUID = twin.SOPInstanceUID
    twin.InstanceNumber = 9999
    return out + [twin]


def with_shifted_slice(datasets: Sequence[Dataset], z: int, shift_mm: float) -> list[Dataset]:
    """Move slice ``z`` along the slice normal by ``shift_mm`` (uneven spacing)."""
    out = _copies(datasets)
    for ds, index in zip(out, slice_indices(datasets), strict=True):
        if index == z:
            moved = np.array(ds.ImagePositionPatient, float) + shift_mm * slice_normal(ds.ImageOrientationPatient)
            ds.ImagePositionPatient = _ds_string(moved)
    return out


def with_mixed_orientation(datasets: Sequence[Dataset], index: int = -1, degrees: float = 10.0) -> list[Dataset]:
    """Rotate ``datasets[index]`` in-plane about the slice normal by ``degrees``."""
    out = _copies(datasets)
    ds = out[index]
    row, column = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
    angle = np.radians(degrees)
    new_row = np.cos(angle) * row + np.sin(angle) * column
    new_column = -np.sin(angle) * row + np.cos(angle) * column
    ds.ImageOrientationPatient = _ds_string([*new_row, *new_column])
    return out


def with_matrix(datasets: Sequence[Dataset], index: int, rows: int, columns: int) -> list[Dataset]:
    """Give ``datasets[index]`` a different Rows x Columns (with matching pixel data)."""
    out = _copies(datasets)
    ds = out[index]
    ds.Rows, ds.Columns = rows, columns
    ds.PixelData = np.zeros((rows, columns), dtype=np.uint16).tobytes()
    return out


def without_pixel_data(datasets: Sequence[Dataset], index: int = 0) -> list[Dataset]:
    """Delete the pixel data of ``datasets[index]``."""
    out = _copies(datasets)
    del out[index].PixelData
    return out


def without_timing(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Strip every time attribute (and RepetitionTime / TemporalResolution) from the series."""
    out = _copies(datasets)
    for ds in out:
        for keyword in ("TemporalPositionIdentifier", "NumberOfTemporalPositions", "TemporalResolution",
                        "AcquisitionTime", "AcquisitionDateTime", "TriggerTime", "RepetitionTime"):
            if keyword in ds:
                delattr(ds, keyword)
    return out
