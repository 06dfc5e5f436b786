"""DICOM series to :class:`~dicom_io.volume.Volume` and :class:`~dicom_io.volume.DynamicVolume`.

One reader handles classic single-frame instances, enhanced multi-frame
objects (per-frame functional groups) and Siemens MOSAIC images: each is
broken into *frames* (one 2D plane each, with its position, orientation,
rescale and timing), the frames are checked for consistency, grouped into
time points, sorted along the slice normal and stacked.

Slices are sorted by their position along ``row x column`` (never by
InstanceNumber), so the volume's slice axis always points that way.

Timing of dynamic series (``timing=`` of :func:`read_dynamic_series`):

``temporal_position``
    frames grouped by TemporalPositionIdentifier (enhanced objects:
    FrameContentSequence TemporalPositionIndex). Times from AcquisitionTime
    or TriggerTime when every frame has one, else from the frame interval.
``acquisition_time`` / ``trigger_time``
    at each slice position the images are ordered by AcquisitionTime
    (AcquisitionDateTime, enhanced: FrameAcquisitionDateTime) or
    TriggerTime; the k-th image of every position forms time point k.
    A time point's time is its earliest image's.
``repeated``
    only repetition order is known: at each position, images are ordered by
    (AcquisitionNumber, InstanceNumber, frame number), and time point k is
    at ``k * interval``.
``auto`` (default)
    the first of the above the data supports, tried in that order; a series
    whose positions do not repeat is one time point.

The frame *interval* is ``frame_interval_s`` when given, else
TemporalResolution (0020,0110), else RepetitionTime. TR is the time per
repetition for 2D multi-slice EPI (DSC); for 3D acquisitions (DCE) it is not,
so pass ``frame_interval_s`` there if the data carries no times.
``DynamicVolume.timing_source`` records which method was used.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from dicom_io import mosaic
from dicom_io.errors import (
    DuplicateSliceError,
    EmptySeriesError,
    InconsistentMatrixError,
    MissingPixelDataError,
    MissingSliceError,
    MissingTimingError,
    MixedOrientationError,
    SeriesError,
    UnevenSpacingError,
    UnsupportedSeriesError,
)
from dicom_io.volume import DynamicVolume, SourceRef, Volume

log = logging.getLogger("pacsnode.dicom_io")

Timing = Literal["auto", "temporal_position", "acquisition_time", "trigger_time", "repeated"]
Source = str | os.PathLike[str] | Dataset

#: Two slices closer than this along the normal are at the same position (mm).
SAME_POSITION_MM = 0.01
#: Default tolerance of slice spacing, as a fraction of the nominal spacing.
DEFAULT_SPACING_TOLERANCE = 0.05
_ORIENTATION_TOLERANCE = 1e-3
_SAME_TIME_S = 1e-3
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def read_series(
    sources: Iterable[Source],
    *,
    skip_non_images: bool = False,
    spacing_tolerance: float = DEFAULT_SPACING_TOLERANCE,
) -> Volume:
    """Read one series (paths or datasets) as a 3D volume of float32 rescaled values.

    ``skip_non_images`` ignores objects without pixel data and image matrix
    (e.g. presentation states, SR) instead of rejecting the input.
    ``spacing_tolerance`` is the allowed deviation of slice spacing as a
    fraction of the nominal spacing. Raises a :class:`~dicom_io.errors.SeriesError`
    subclass when the instances do not form one regular volume; a dynamic
    series is rejected with a pointer to :func:`read_dynamic_series`.
    """
    stack = _read_stack(sources, timing="auto", dynamic=False, frame_interval_s=None,
                        skip_non_images=skip_non_images, spacing_tolerance=spacing_tolerance)
    return Volume(
        array=stack.array[0],
        spacing=stack.spacing,
        origin=stack.origin,
        direction=stack.direction,
        source_refs=stack.source_refs[0],
        series_uid=stack.series_uid,
        frame_of_reference_uid=stack.frame_of_reference_uid,
        study_uid=stack.study_uid,
        header=stack.header,
    )


def read_dynamic_series(
    sources: Iterable[Source],
    *,
    timing: Timing = "auto",
    frame_interval_s: float | None = None,
    skip_non_images: bool = False,
    spacing_tolerance: float = DEFAULT_SPACING_TOLERANCE,
) -> DynamicVolume:
    """Read a dynamic series (classic, enhanced multi-frame or MOSAIC) as (t, z, y, x).

    See the module documentation for the ``timing`` methods. A series whose
    slice positions do not repeat is returned as a single time point.
    """
    if timing not in ("auto", "temporal_position", "acquisition_time", "trigger_time", "repeated"):
        raise ValueError(f"unknown timing method {timing!r}")
    stack = _read_stack(sources, timing=timing, dynamic=True, frame_interval_s=frame_interval_s,
                        skip_non_images=skip_non_images, spacing_tolerance=spacing_tolerance)
    return DynamicVolume(
        array=stack.array,
        spacing=stack.spacing,
        origin=stack.origin,
        direction=stack.direction,
        times_s=stack.times_s,
        source_refs=stack.source_refs,
        series_uid=stack.series_uid,
        frame_of_reference_uid=stack.frame_of_reference_uid,
        study_uid=stack.study_uid,
        header=stack.header,
        echo_time_ms=stack.echo_time_ms,
        repetition_time_ms=stack.repetition_time_ms,
        timing_source=stack.timing_source,
    )


# --------------------------------------------------------------------------- frames


class _Pixels:
    """Decodes one dataset's pixel data once, on first use."""

    __slots__ = ("dataset", "_array")

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._array: np.ndarray | None = None

    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = self.dataset.pixel_array
        return self._array

    def release(self) -> None:
        self._array = None


@dataclass(slots=True)
class _Frame:
    """One 2D plane of the series and everything needed to place and scale it."""

    ref: SourceRef
    pixels: _Pixels
    #: 0-based frame index into a multi-frame pixel array, or None.
    frame_index: int | None
    #: (row, column) of the tile in a mosaic, or None.
    tile: tuple[int, int] | None
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    matrix: tuple[int, int]
    slope: float
    intercept: float
    temporal_position: int | None
    acquisition_time_s: float | None
    trigger_time_s: float | None
    echo_time_ms: float | None
    order: tuple[int, int, int]
    #: Filled in by the reader: position along the slice normal (mm).
    distance: float = 0.0
    #: Filled in by the reader: index of the distinct slice position.
    slot: int = -1

    def plane(self) -> np.ndarray:
        data = self.pixels.array()
        if self.frame_index is not None:
            data = data[self.frame_index]
        if self.tile is not None:
            r, c = self.tile
            rows, columns = self.matrix
            data = data[r:r + rows, c:c + columns]
        return data

    def describe(self) -> str:
        text = f"SOP Instance {self.ref.sop_instance_uid}"
        if self.ref.frame_number is not None:
            text += f" frame {self.ref.frame_number}"
        return text


@dataclass
class _Series:
    """Identity of the series being read, for error messages."""

    uid: str | None = None
    label: str | None = None

    def fail(self, error: type[SeriesError], problem: str) -> SeriesError:
        return error(problem, series_uid=self.uid, series_label=self.label)


def _series_label(ds: Dataset) -> str | None:
    parts = []
    description = ds.get("SeriesDescription")
    if description:
        parts.append(f"'{description}'")
    number = ds.get("SeriesNumber")
    if number not in (None, ""):
        parts.append(f"#{number}")
    return " ".join(parts) or None


def _load(sources: Iterable[Source]) -> list[Dataset]:
    datasets: list[Dataset] = []
    for source in sources:
        if isinstance(source, Dataset):
            datasets.append(source)
            continue
        try:
            datasets.append(dcmread(source))
        except InvalidDicomError as exc:
            raise UnsupportedSeriesError(f"file {Path(source)} is not a DICOM file ({exc})") from exc
        except OSError as exc:
            raise UnsupportedSeriesError(f"file {Path(source)} cannot be read ({exc})") from exc
    return datasets


def _raw(ds: Dataset, keyword: str) -> str | None:
    """An element's value as text, skipping pydicom's value conversion (the reader's hot path).

    Only for text VRs (DS, IS, TM, DA, DT, UI, CS ...); ``None`` if absent or empty.
    """
    tag = _TAGS.get(keyword)
    if tag is None:
        tag = _TAGS[keyword] = tag_for_keyword(keyword)  # type: ignore[assignment]
        if tag is None:
            raise KeyError(f"not a DICOM keyword: {keyword}")
    element = ds.get_item(tag)
    if element is None:
        return None
    value = element.value
    if value is None:
        return None
    if isinstance(value, bytes):
        text = value.decode("latin-1")
    elif isinstance(value, str):
        text = value
    elif isinstance(value, Iterable):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    text = text.strip(" \0")
    return text or None


_TAGS: dict[str, int] = {}


def _uint(ds: Dataset, tag: int, default: int = 0) -> int:
    """A US element (Rows, Columns ...) without pydicom's value conversion."""
    element = ds.get_item(tag)
    if element is None or element.value is None:
        return default
    value = element.value
    if isinstance(value, bytes):
        if len(value) < 2:
            return default
        return int.from_bytes(value[:2], "little" if getattr(element, "is_little_endian", True) else "big")
    return int(value)


def _has_pixels(ds: Dataset) -> bool:
    return any(keyword in ds for keyword in _PIXEL_DATA_KEYWORDS)


def _float(value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _vector(value: str | None, length: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        vector = np.array([float(v) for v in value.split("\\")], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return vector if vector.shape == (length,) else None


def tm_seconds(value: object) -> float | None:
    """Seconds since midnight of a TM value ('HHMMSS.FFFFFF', also the old 'HH:MM:SS'); None if unreadable."""
    if value is None:
        return None
    text = str(value).strip().replace(":", "")
    if len(text) < 2:
        return None
    try:
        hours = int(text[0:2])
        minutes = int(text[2:4]) if len(text) >= 4 else 0
        seconds = float(text[4:]) if len(text) > 4 else 0.0
    except ValueError:
        return None
    return hours * 3600 + minutes * 60 + seconds


def _da_seconds(value: object) -> float | None:
    text = str(value or "").strip().replace(".", "")
    if len(text) < 8:
        return None
    try:
        return date(int(text[0:4]), int(text[4:6]), int(text[6:8])).toordinal() * 86400.0
    except ValueError:
        return None


def _dt_seconds(value: object) -> float | None:
    """Seconds (on an arbitrary but common epoch) of a DT value; the UTC offset is ignored."""
    text = str(value or "").strip()
    for sign in "+-":
        if sign in text[8:]:
            text = text[: 8 + text[8:].index(sign)]
    day = _da_seconds(text[:8])
    if day is None:
        return None
    clock = tm_seconds(text[8:]) if len(text) > 8 else 0.0
    return None if clock is None else day + clock


def _acquisition_seconds(ds: Dataset) -> float | None:
    dt = _raw(ds, "AcquisitionDateTime")
    if dt:
        seconds = _dt_seconds(dt)
        if seconds is not None:
            return seconds
    clock = tm_seconds(_raw(ds, "AcquisitionTime"))
    if clock is None:
        return None
    day = _da_seconds(_raw(ds, "AcquisitionDate"))
    return clock if day is None else day + clock


def _int_or_none(value: object) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


def _first_item(container: Dataset | None, keyword: str) -> Dataset | None:
    if container is None:
        return None
    sequence = container.get(keyword)
    return sequence[0] if sequence else None


def _frames_of(ds: Dataset, series: _Series) -> list[_Frame]:
    """Break one dataset into its planes."""
    pixels = _Pixels(ds)
    sop_class = _raw(ds, "SOPClassUID") or ""
    sop_instance = _raw(ds, "SOPInstanceUID") or ""
    if _uint(ds, 0x00280002, default=1) != 1:
        raise series.fail(UnsupportedSeriesError,
                          f"SOP Instance {sop_instance} is a colour image "
                          f"({ds.get('PhotometricInterpretation')}); only greyscale images form volumes")
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        return _enhanced_frames(ds, pixels, sop_class, sop_instance, series)

    position = _vector(_raw(ds, "ImagePositionPatient"), 3)
    orientation = _vector(_raw(ds, "ImageOrientationPatient"), 6)
    pixel_spacing = _vector(_raw(ds, "PixelSpacing"), 2)
    if position is None or orientation is None or pixel_spacing is None:
        missing = [name for name, value in (("ImagePositionPatient", position),
                                            ("ImageOrientationPatient", orientation),
                                            ("PixelSpacing", pixel_spacing)) if value is None]
        raise series.fail(UnsupportedSeriesError,
                          f"SOP Instance {sop_instance} has no usable {', '.join(missing)}, so it cannot be "
                          "placed in a volume (a localizer, projection or secondary capture?)")
    slope = _float(_raw(ds, "RescaleSlope"))
    intercept = _float(_raw(ds, "RescaleIntercept"))
    acquisition_number = _int_or_none(_raw(ds, "AcquisitionNumber")) or 0
    instance_number = _int_or_none(_raw(ds, "InstanceNumber")) or 0
    trigger_ms = _float(_raw(ds, "TriggerTime"))
    common = dict(
        pixels=pixels,
        orientation=orientation,
        pixel_spacing=(float(pixel_spacing[0]), float(pixel_spacing[1])),
        slope=1.0 if slope is None else slope,
        intercept=0.0 if intercept is None else intercept,
        temporal_position=_int_or_none(_raw(ds, "TemporalPositionIdentifier")),
        acquisition_time_s=_acquisition_seconds(ds),
        trigger_time_s=None if trigger_ms is None else trigger_ms / 1000.0,
        echo_time_ms=_float(_raw(ds, "EchoTime")),
        order=(acquisition_number, instance_number, 0),
    )
    rows, columns = _uint(ds, 0x00280010), _uint(ds, 0x00280011)

    try:
        layout = mosaic.mosaic_layout(ds)
    except ValueError as exc:
        raise series.fail(UnsupportedSeriesError, f"SOP Instance {sop_instance}: {exc}") from exc
    if layout is None:
        number_of_frames = _int_or_none(_raw(ds, "NumberOfFrames")) or 1
        if number_of_frames != 1:
            raise series.fail(UnsupportedSeriesError,
                              f"SOP Instance {sop_instance} has {number_of_frames} frames but no functional "
                              "groups to place them")
        return [_Frame(ref=SourceRef(sop_class, sop_instance, None), frame_index=None, tile=None,
                       position=position, matrix=(rows, columns), **common)]  # type: ignore[arg-type]

    row_direction, column_direction = orientation[:3], orientation[3:]
    spacing = _float(_raw(ds, "SpacingBetweenSlices")) or _float(_raw(ds, "SliceThickness"))
    if not spacing:
        raise series.fail(UnsupportedSeriesError,
                          f"MOSAIC SOP Instance {sop_instance} has neither SpacingBetweenSlices nor "
                          "SliceThickness, so its slices cannot be placed")
    normal = layout.slice_normal if layout.slice_normal is not None else np.cross(row_direction, column_direction)
    first = mosaic.first_tile_position(position, row_direction, column_direction,
                                       common["pixel_spacing"], (rows, columns), layout)  # type: ignore[arg-type]
    return [
        _Frame(ref=SourceRef(sop_class, sop_instance, None), frame_index=None, tile=layout.tile_origin(k),
               position=first + k * spacing * normal, matrix=(layout.tile_rows, layout.tile_columns),
               **common)  # type: ignore[arg-type]
        for k in range(layout.n_images)
    ]


def _enhanced_frames(ds: Dataset, pixels: _Pixels, sop_class: str, sop_instance: str,
                     series: _Series) -> list[_Frame]:
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    number_of_frames = _int_or_none(_raw(ds, "NumberOfFrames")) or 1
    if per_frame and len(per_frame) != number_of_frames:
        raise series.fail(UnsupportedSeriesError,
                          f"SOP Instance {sop_instance} declares {number_of_frames} frames but has "
                          f"{len(per_frame)} per-frame functional group items")
    rows, columns = _uint(ds, 0x00280010), _uint(ds, 0x00280011)
    instance_number = _int_or_none(_raw(ds, "InstanceNumber")) or 0
    top_trigger = _float(_raw(ds, "TriggerTime"))

    def group(item: Dataset | None, keyword: str) -> Dataset | None:
        found = _first_item(item, keyword)
        return found if found is not None else _first_item(shared, keyword)

    frames: list[_Frame] = []
    for index in range(number_of_frames):
        item = per_frame[index] if per_frame else None
        plane_position = group(item, "PlanePositionSequence")
        plane_orientation = group(item, "PlaneOrientationSequence")
        measures = group(item, "PixelMeasuresSequence")
        position = _vector(_raw(plane_position, "ImagePositionPatient") if plane_position else None, 3)
        orientation = _vector(_raw(plane_orientation, "ImageOrientationPatient") if plane_orientation else None, 6)
        pixel_spacing = _vector(_raw(measures, "PixelSpacing") if measures else None, 2)
        if position is None or orientation is None or pixel_spacing is None:
            raise series.fail(UnsupportedSeriesError,
                              f"SOP Instance {sop_instance} frame {index + 1} lacks PlanePositionSequence, "
                              "PlaneOrientationSequence or PixelMeasuresSequence geometry")
        transform = group(item, "PixelValueTransformationSequence")
        slope = _float(_raw(transform, "RescaleSlope")) if transform else None
        intercept = _float(_raw(transform, "RescaleIntercept")) if transform else None
        content = _first_item(item, "FrameContentSequence")
        cardiac = group(item, "CardiacSynchronizationSequence")
        trigger_ms = _float(_raw(cardiac, "NominalCardiacTriggerDelayTime")) if cardiac else top_trigger
        echo = group(item, "MREchoSequence")
        frames.append(_Frame(
            ref=SourceRef(sop_class, sop_instance, index + 1),
            pixels=pixels,
            frame_index=index if number_of_frames > 1 else None,
            tile=None,
            position=position,
            orientation=orientation,
            pixel_spacing=(float(pixel_spacing[0]), float(pixel_spacing[1])),
            matrix=(rows, columns),
            slope=1.0 if slope is None else slope,
            intercept=0.0 if intercept is None else intercept,
            temporal_position=_int_or_none(_raw(content, "TemporalPositionIndex")) if content else None,
            acquisition_time_s=_dt_seconds(_raw(content, "FrameAcquisitionDateTime")) if content else None,
            trigger_time_s=None if trigger_ms is None else trigger_ms / 1000.0,
            echo_time_ms=(_float(_raw(echo, "EffectiveEchoTime")) if echo else None) or _float(_raw(ds, "EchoTime")),
            order=(0, instance_number, index + 1),
        ))
    return frames


# --------------------------------------------------------------------------- the stack


@dataclass
class _Stack:
    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    times_s: np.ndarray
    source_refs: tuple[tuple[SourceRef, ...], ...]
    series_uid: str | None
    frame_of_reference_uid: str | None
    study_uid: str | None
    header: Dataset
    echo_time_ms: float | None
    repetition_time_ms: float | None
    timing_source: str


def _read_stack(sources: Iterable[Source], *, timing: Timing, dynamic: bool, frame_interval_s: float | None,
                skip_non_images: bool, spacing_tolerance: float) -> _Stack:
    datasets = _load(sources)
    series = _identify(datasets)
    images = _image_datasets(datasets, series, skip_non_images)

    frames: list[_Frame] = []
    for ds in images:
        frames.extend(_frames_of(ds, series))
    if not frames:
        raise series.fail(EmptySeriesError, "the series contains no image frames")

    normal = _check_plane_geometry(frames, series)
    slot_positions = _assign_slots(frames, normal)
    spacing_z = _check_slice_spacing(slot_positions, series, spacing_tolerance, images[0])
    method, groups = _group_by_time(frames, len(slot_positions), timing, dynamic, series)
    if not dynamic and len(groups) > 1:
        raise series.fail(UnsupportedSeriesError,
                          f"the series is dynamic ({len(groups)} time points of {len(slot_positions)} slices, "
                          f"found by {method.replace('_', ' ')}); read it as a dynamic series")
    times = _group_times(groups, method, frame_interval_s, images[0], series)

    rows, columns = frames[0].matrix
    array = np.empty((len(groups), len(slot_positions), rows, columns), dtype=np.float32)
    refs: list[tuple[SourceRef, ...]] = []
    for t, group in enumerate(groups):
        ordered = sorted(group, key=lambda f: f.slot)
        for frame in ordered:
            _store_plane(frame, array[t, frame.slot], series)
        refs.append(tuple(frame.ref for frame in ordered))
    for frame in frames:  # drop decoded pixel caches; the datasets keep their raw pixel data
        frame.pixels.release()
    log.debug("read series %s: %d time point(s) x %d slice(s) of %dx%d from %d instance(s), timing %s",
              series.uid, len(groups), len(slot_positions), rows, columns, len(images), method)

    first = min(groups[0], key=lambda f: f.slot)
    first_ds = first.pixels.dataset
    direction = _orthonormal_direction(first.orientation)
    rows_spacing, column_spacing = first.pixel_spacing
    return _Stack(
        array=array,
        spacing=(spacing_z, rows_spacing, column_spacing),
        origin=tuple(float(v) for v in first.position),  # type: ignore[arg-type]
        direction=direction,
        times_s=times,
        source_refs=tuple(refs),
        series_uid=series.uid,
        frame_of_reference_uid=_str_or_none(first_ds.get("FrameOfReferenceUID")),
        study_uid=_str_or_none(first_ds.get("StudyInstanceUID")),
        header=_header_of(first_ds),
        echo_time_ms=first.echo_time_ms,
        repetition_time_ms=_repetition_time_ms(first_ds),
        timing_source=method,
    )


def _orthonormal_direction(orientation: np.ndarray) -> np.ndarray:
    """Direction matrix from ImageOrientationPatient, cleaned of the rounding in its decimal strings."""
    row = orientation[:3] / np.linalg.norm(orientation[:3])
    column = orientation[3:] - np.dot(orientation[3:], row) * row
    column /= np.linalg.norm(column)
    return np.column_stack([row, column, np.cross(row, column)])


def _fmt(values: Iterable[float]) -> str:
    return "[" + ", ".join(f"{float(v):.4g}" for v in values) + "]"


def _str_or_none(value: object) -> str | None:
    return str(value) if value not in (None, "") else None


def _identify(datasets: Sequence[Dataset]) -> _Series:
    if not datasets:
        raise EmptySeriesError("no instances were given")
    uids: dict[str, Dataset] = {}
    for ds in datasets:
        uids.setdefault(_raw(ds, "SeriesInstanceUID") or "", ds)
    if len(uids) > 1:
        listed = ", ".join(
            f"{uid or '(none)'} {_series_label(ds) or ''}".rstrip() for uid, ds in list(uids.items())[:5]
        )
        raise UnsupportedSeriesError(
            f"the instances belong to {len(uids)} different series ({listed}); read one series at a time",
            series_uid=None,
        )
    uid, ds = next(iter(uids.items()))
    return _Series(uid=uid or None, label=_series_label(ds))


def _image_datasets(datasets: Sequence[Dataset], series: _Series, skip_non_images: bool) -> list[Dataset]:
    images: list[Dataset] = []
    seen: dict[str, int] = {}
    for ds in datasets:
        if not _has_pixels(ds):
            if "Rows" in ds and "ImagePositionPatient" in ds or "PerFrameFunctionalGroupsSequence" in ds:
                raise series.fail(MissingPixelDataError,
                                  f"SOP Instance {ds.get('SOPInstanceUID')} is an image without pixel data "
                                  "(received or stored incompletely?)")
            if skip_non_images:
                continue
            sop_class = _raw(ds, "SOPClassUID")
            name = UID(str(sop_class)).name if sop_class else "unknown SOP class"
            raise series.fail(UnsupportedSeriesError,
                              f"SOP Instance {ds.get('SOPInstanceUID')} ({name}) is not an image; "
                              "remove it or read with skip_non_images=True")
        sop_instance = _raw(ds, "SOPInstanceUID") or ""
        if sop_instance in seen:
            raise series.fail(DuplicateSliceError,
                              f"SOP Instance {sop_instance} was given twice (the same file listed twice?)")
        seen[sop_instance] = len(images)
        images.append(ds)
    if not images:
        raise series.fail(EmptySeriesError,
                          f"none of the {len(datasets)} instances is an image with pixel data")
    return images


def _check_plane_geometry(frames: Sequence[_Frame], series: _Series) -> np.ndarray:
    """Same orientation, matrix and pixel spacing everywhere; returns the slice normal."""
    orientations = np.stack([f.orientation for f in frames])
    # Compare against the most common orientation, so the message names the odd ones out.
    _, first_of_kind, counts = np.unique(np.round(orientations, 3), axis=0, return_index=True, return_counts=True)
    reference = frames[int(first_of_kind[np.argmax(counts)])]
    off = np.abs(orientations - reference.orientation).max(axis=1) > _ORIENTATION_TOLERANCE
    if off.any():
        odd = frames[int(np.argmax(off))]
        raise series.fail(MixedOrientationError,
                          f"{int(off.sum())} of {len(frames)} images have an ImageOrientationPatient different from "
                          f"{_fmt(reference.orientation)} (e.g. {odd.describe()}: {_fmt(odd.orientation)}); "
                          "a series must hold one stack of parallel slices")
    matrices: dict[tuple[int, int], list[_Frame]] = {}
    for f in frames:
        matrices.setdefault(f.matrix, []).append(f)
    if len(matrices) > 1:
        listed = "; ".join(f"{r}x{c} in {len(fs)} image(s), e.g. {fs[0].describe()}"
                           for (r, c), fs in matrices.items())
        raise series.fail(InconsistentMatrixError, f"image matrix (Rows x Columns) varies: {listed}")
    spacings = np.array([f.pixel_spacing for f in frames])
    bad = np.abs(spacings - spacings[0]).max(axis=1) > 1e-3 * max(float(spacings[0].max()), 1.0)
    if bad.any():
        odd = frames[int(np.argmax(bad))]
        raise series.fail(InconsistentMatrixError,
                          f"PixelSpacing varies: {_fmt(reference.pixel_spacing)} mm vs {_fmt(odd.pixel_spacing)} mm "
                          f"at {odd.describe()}")
    if reference.matrix[0] < 1 or reference.matrix[1] < 1:
        raise series.fail(UnsupportedSeriesError, f"{reference.describe()} has an empty image matrix")

    row_direction, column_direction = reference.orientation[:3], reference.orientation[3:]
    normal = np.cross(row_direction, column_direction)
    norm = np.linalg.norm(normal)
    if norm < 0.5 or abs(float(np.dot(row_direction, column_direction))) > 1e-2:
        raise series.fail(UnsupportedSeriesError,
                          f"ImageOrientationPatient {_fmt(reference.orientation)} is not two perpendicular unit vectors")
    # Slices must be stacked straight along the normal (no gantry tilt / shear).
    positions = np.stack([f.position for f in frames])
    in_plane = positions @ np.column_stack([row_direction, column_direction])
    drift = np.abs(in_plane - in_plane[0]).max(axis=0)
    limit = np.maximum(0.1 * np.array(reference.pixel_spacing[::-1]), 0.01)
    if (drift > limit).any():
        raise series.fail(UnsupportedSeriesError,
                          f"slices are not stacked along the slice normal: their in-plane offset varies by up to "
                          f"{drift.max():.2f} mm (gantry tilt or a sheared acquisition?); resample it first")
    return normal / norm


def _assign_slots(frames: Sequence[_Frame], normal: np.ndarray) -> np.ndarray:
    """Give each frame the index of its distinct slice position; returns the sorted positions (mm)."""
    distances = np.stack([f.position for f in frames]) @ normal
    order = np.argsort(distances, kind="stable")
    slots = np.empty(len(frames), dtype=np.int64)
    centres: list[list[float]] = []
    start = -math.inf
    for i in order:
        d = float(distances[i])
        if d - start > SAME_POSITION_MM:
            centres.append([])
            start = d
        centres[-1].append(d)
        slots[i] = len(centres) - 1
    for frame, slot, d in zip(frames, slots, distances, strict=True):
        frame.slot = int(slot)
        frame.distance = float(d)
    return np.array([sum(c) / len(c) for c in centres])


def _check_slice_spacing(positions: np.ndarray, series: _Series,
                         tolerance: float, ds: Dataset) -> float:
    """Regular spacing between distinct positions; returns the slice spacing (mm)."""
    if len(positions) == 1:  # nothing to measure: take what the header states
        measures = _first_item(_first_item(ds, "SharedFunctionalGroupsSequence"), "PixelMeasuresSequence")
        for source in (ds, measures):
            if source is not None:
                stated = _float(_raw(source, "SpacingBetweenSlices")) or _float(_raw(source, "SliceThickness"))
                if stated:
                    return stated
        return 1.0
    gaps = np.diff(positions)
    smallest = float(gaps.min())
    multiples = np.maximum(np.round(gaps / smallest), 1.0)
    allowed = max(tolerance * smallest, SAME_POSITION_MM)
    # Gaps that are whole multiples of the smallest one are missing slices;
    # anything else is judged against the typical (median) gap.
    if np.all(np.abs(gaps - multiples * smallest) <= allowed * multiples):
        for i in np.flatnonzero(multiples > 1):
            missing = int(multiples[i]) - 1
            raise series.fail(MissingSliceError,
                              f"{missing} slice(s) missing between {positions[i]:.2f} mm and {positions[i + 1]:.2f} mm "
                              f"along the slice normal: the gap is {gaps[i]:.2f} mm where slices are {smallest:.2f} mm "
                              f"apart ({len(positions)} positions present); resend the series")
    else:
        typical = float(np.median(gaps))
        allowed = max(tolerance * typical, SAME_POSITION_MM)
        i = int(np.argmax(np.abs(gaps - typical)))
        raise series.fail(UnevenSpacingError,
                          f"slice spacing is uneven: {gaps[i]:.2f} mm between {positions[i]:.2f} mm and "
                          f"{positions[i + 1]:.2f} mm along the slice normal, but {typical:.2f} mm elsewhere "
                          f"(tolerance {100 * tolerance:.0f}%)")
    return float((positions[-1] - positions[0]) / (len(positions) - 1))


def _times_differ_at_repeats(frames: Sequence[_Frame], attribute: str) -> bool:
    """Whether *attribute* is present on every frame and tells apart some images that share a position."""
    values = [getattr(f, attribute) for f in frames]
    if any(v is None for v in values):
        return False
    by_slot: dict[int, list[float]] = {}
    for f, v in zip(frames, values, strict=True):
        by_slot.setdefault(f.slot, []).append(v)
    return any(len(vs) > 1 and max(vs) - min(vs) > _SAME_TIME_S for vs in by_slot.values())


def _group_by_time(frames: Sequence[_Frame], n_slots: int, timing: Timing, dynamic: bool,
                   series: _Series) -> tuple[str, list[list[_Frame]]]:
    """Split frames into time points; each must hold every slice position exactly once."""
    repeats = len(frames) > n_slots
    method: str = timing
    if timing == "auto":
        if not repeats:
            method = "single"
        elif (all(f.temporal_position is not None for f in frames)
              and len({f.temporal_position for f in frames}) > 1):
            method = "temporal_position"
        elif _times_differ_at_repeats(frames, "acquisition_time_s"):
            method = "acquisition_time"
        elif _times_differ_at_repeats(frames, "trigger_time_s"):
            method = "trigger_time"
        elif dynamic:
            method = "repeated"
        else:
            _raise_duplicates(frames, series, by="")
    elif not repeats and timing in ("repeated",):
        method = "single"

    if method == "single":
        if repeats:
            _raise_duplicates(frames, series, by="")
        return method, [list(frames)]

    if method == "temporal_position":
        missing = [f for f in frames if f.temporal_position is None]
        if missing:
            raise series.fail(MissingTimingError,
                              f"{len(missing)} of {len(frames)} images lack TemporalPositionIdentifier "
                              f"(e.g. {missing[0].describe()}), so they cannot be assigned to a time point")
        by_key: dict[int, list[_Frame]] = {}
        for f in frames:
            by_key.setdefault(f.temporal_position, []).append(f)  # type: ignore[arg-type]
        groups = [by_key[k] for k in sorted(by_key)]
        labels = [f"TemporalPositionIdentifier {k}" for k in sorted(by_key)]
    else:
        attribute = {"acquisition_time": "acquisition_time_s", "trigger_time": "trigger_time_s"}.get(method)
        if attribute is not None:
            missing = [f for f in frames if getattr(f, attribute) is None]
            if missing:
                name = "AcquisitionTime" if method == "acquisition_time" else "TriggerTime"
                raise series.fail(MissingTimingError,
                                  f"{len(missing)} of {len(frames)} images lack {name} "
                                  f"(e.g. {missing[0].describe()}), so the time points cannot be ordered")
            if method == "acquisition_time":
                _unwrap_midnight(frames)
        by_slot: dict[int, list[_Frame]] = {}
        for f in frames:
            by_slot.setdefault(f.slot, []).append(f)
        groups = []
        for slot_frames in by_slot.values():
            if attribute is not None:
                slot_frames.sort(key=lambda f: getattr(f, attribute))
                for a, b in zip(slot_frames, slot_frames[1:]):
                    if abs(getattr(b, attribute) - getattr(a, attribute)) <= _SAME_TIME_S:
                        _raise_duplicate_pair(a, b, series, by=f"the same {method.replace('_', ' ')}")
            else:
                slot_frames.sort(key=lambda f: f.order)
            for rank, f in enumerate(slot_frames):
                if rank == len(groups):
                    groups.append([])
                groups[rank].append(f)
        counts = {len(v) for v in by_slot.values()}
        if len(counts) > 1:
            short = min(by_slot.values(), key=len)
            most = max(counts)
            raise series.fail(MissingSliceError,
                              f"slice positions hold different numbers of images ({min(counts)} to {most}); "
                              f"e.g. the position {short[0].distance:.2f} mm has {len(short)} where others have "
                              f"{most}, so a time point is incomplete")
        labels = [f"time point {k + 1}" for k in range(len(groups))]

    for label, group in zip(labels, groups, strict=True):
        seen: dict[int, _Frame] = {}
        for f in group:
            if f.slot in seen:
                _raise_duplicate_pair(seen[f.slot], f, series, by=label)
            seen[f.slot] = f
        if len(seen) != n_slots:
            all_positions = {f.slot: f.distance for f in frames}
            absent = sorted(all_positions[s] for s in set(all_positions) - set(seen))
            shown = ", ".join(f"{d:.2f}" for d in absent[:5]) + (" ..." if len(absent) > 5 else "")
            raise series.fail(MissingSliceError,
                              f"{label} has {len(seen)} of {n_slots} slices; missing position(s) {shown} mm "
                              "along the slice normal")
    return method, groups


def _unwrap_midnight(frames: Sequence[_Frame]) -> None:
    """Acquisitions crossing midnight: TM-only times after 00:00 belong to the next day."""
    values = [f.acquisition_time_s for f in frames]
    low, high = min(values), max(values)  # type: ignore[type-var]
    if high - low > 43200 and high < 86400 * 2:  # type: ignore[operator]
        for f in frames:
            if f.acquisition_time_s < 43200:  # type: ignore[operator]
                f.acquisition_time_s += 86400  # type: ignore[operator]


def _raise_duplicates(frames: Sequence[_Frame], series: _Series, by: str) -> None:
    by_slot: dict[int, _Frame] = {}
    for f in frames:
        if f.slot in by_slot:
            _raise_duplicate_pair(by_slot[f.slot], f, series, by=by)
        by_slot[f.slot] = f


def _raise_duplicate_pair(a: _Frame, b: _Frame, series: _Series, by: str) -> None:
    hint = ""
    if a.echo_time_ms is not None and b.echo_time_ms is not None and abs(a.echo_time_ms - b.echo_time_ms) > 1e-3:
        hint = f" They differ in EchoTime ({a.echo_time_ms:g} vs {b.echo_time_ms:g} ms): a multi-echo series?"
    elif not by:
        hint = " If the series is dynamic, nothing in it (TemporalPositionIdentifier, AcquisitionTime, " \
               "TriggerTime) tells its time points apart."
    where = f" with {by}" if by else ""
    raise series.fail(DuplicateSliceError,
                      f"two images at slice position {a.distance:.2f} mm{where}: {a.describe()} and "
                      f"{b.describe()}.{hint}")


def _group_times(groups: Sequence[Sequence[_Frame]], method: str, frame_interval_s: float | None,
                 ds: Dataset, series: _Series) -> np.ndarray:
    """Seconds of each time point relative to the first."""
    if method == "single":
        return np.zeros(1)
    if method == "temporal_position":
        if all(f.acquisition_time_s is not None for g in groups for f in g):
            _unwrap_midnight([f for g in groups for f in g])
            method = "acquisition_time"
        elif all(f.trigger_time_s is not None for g in groups for f in g):
            method = "trigger_time"
        else:
            interval = _frame_interval(frame_interval_s, ds, series, "the time points' TemporalPositionIdentifier")
            keys = np.array([g[0].temporal_position for g in groups], dtype=np.float64)
            return (keys - keys[0]) * interval
    if method == "acquisition_time":
        starts = np.array([min(f.acquisition_time_s for f in g) for g in groups])  # type: ignore[type-var]
    elif method == "trigger_time":
        starts = np.array([min(f.trigger_time_s for f in g) for g in groups])  # type: ignore[type-var]
    else:
        interval = _frame_interval(frame_interval_s, ds, series, "the repetition order")
        return np.arange(len(groups), dtype=np.float64) * interval
    return starts - starts[0]


def _frame_interval(frame_interval_s: float | None, ds: Dataset, series: _Series, known: str) -> float:
    if frame_interval_s is not None:
        return float(frame_interval_s)
    resolution_ms = _float(_raw(ds, "TemporalResolution"))
    if resolution_ms:
        return resolution_ms / 1000.0
    tr_ms = _repetition_time_ms(ds)
    if tr_ms:
        return tr_ms / 1000.0
    raise series.fail(MissingTimingError,
                      f"the series is dynamic but only {known} is known: no AcquisitionTime or TriggerTime on "
                      "every image, and no TemporalResolution or RepetitionTime to space the time points")


def _repetition_time_ms(ds: Dataset) -> float | None:
    tr = _float(_raw(ds, "RepetitionTime"))
    if tr is None:
        shared = _first_item(ds, "SharedFunctionalGroupsSequence")
        timing = _first_item(shared, "MRTimingAndRelatedParametersSequence")
        if timing is None:
            timing = _first_item(_first_item(ds, "PerFrameFunctionalGroupsSequence"),
                                 "MRTimingAndRelatedParametersSequence")
        tr = _float(_raw(timing, "RepetitionTime")) if timing is not None else None
    return tr


def _store_plane(frame: _Frame, out: np.ndarray, series: _Series) -> None:
    try:
        plane = frame.plane()
    except SeriesError:
        raise
    except Exception as exc:  # decoder errors come in many types
        raise series.fail(UnsupportedSeriesError,
                          f"pixel data of {frame.describe()} cannot be decoded "
                          f"({type(exc).__name__}: {exc})") from exc
    if plane.shape != out.shape:
        raise series.fail(InconsistentMatrixError,
                          f"{frame.describe()} decodes to {plane.shape[0]}x{plane.shape[1]} pixels, but its "
                          f"header says {out.shape[0]}x{out.shape[1]}")
    if frame.slope == 1.0 and frame.intercept == 0.0:
        out[...] = plane
    else:
        np.multiply(plane, frame.slope, out=out, casting="unsafe")
        out += np.float32(frame.intercept)


def _header_of(ds: Dataset) -> Dataset:
    """The dataset's elements before the pixel data, in a new Dataset (elements shared)."""
    header = Dataset()
    for element in ds:
        if element.tag >= 0x7FE00000:
            break
        header.add(element)
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None:
        header.file_meta = file_meta
    return header
