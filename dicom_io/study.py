"""Multi-series studies: find the series in a set of files, and put volumes on one grid.

:func:`group_study` reads headers only (no pixel data) and summarises each
series so a pipeline can pick its inputs (e.g. the DSC series and the T1)
before reading any pixels. :func:`resample_to` brings one volume onto
another's voxel grid, so multi-sequence models get co-registered inputs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom_io.errors import FrameOfReferenceMismatchError
from dicom_io.volume import DynamicVolume, Volume

log = logging.getLogger("pacsnode.dicom_io")

_SUMMARY_TAGS = [
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesDescription",
    "SeriesNumber", "ImageType", "BodyPartExamined", "FrameOfReferenceUID", "NumberOfFrames",
]


@dataclass(frozen=True)
class SeriesSummary:
    """What the headers say about one series of a study."""

    series_uid: str
    study_uid: str | None
    modality: str | None
    series_description: str | None
    series_number: int | None
    image_type: tuple[str, ...]
    body_part_examined: str | None
    frame_of_reference_uid: str | None
    #: Number of instances (files) of the series.
    instance_count: int
    #: Total number of frames (instances count as one frame unless multi-frame).
    frame_count: int
    sop_class_uids: frozenset[str]
    #: The series' files, sorted.
    paths: tuple[Path, ...]


def _iter_files(source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]]) -> list[Path]:
    if isinstance(source, str | os.PathLike):
        root = Path(source)
        if root.is_dir():
            return sorted(p for p in root.rglob("*") if p.is_file())
        return [root]
    return [Path(p) for p in source]


def group_study(
    source: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> dict[str, SeriesSummary]:
    """Group files (a directory tree or a list of paths) by SeriesInstanceUID.

    Only headers are read (``stop_before_pixels``). Files that are not DICOM
    (or lack a SeriesInstanceUID, e.g. a DICOMDIR) are skipped and counted in
    a debug log. The result is ordered by SeriesNumber, then UID.
    """
    collected: dict[str, list[tuple[Path, Dataset]]] = {}
    skipped = 0
    for path in _iter_files(source):
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=_SUMMARY_TAGS)
        except (InvalidDicomError, OSError, EOFError, ValueError):
            skipped += 1
            continue
        series_uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not series_uid:
            skipped += 1
            continue
        collected.setdefault(series_uid, []).append((path, ds))
    if skipped:
        log.debug("group_study skipped %d file(s) that are not DICOM series instances", skipped)

    summaries = [_summarise(uid, members) for uid, members in collected.items()]
    summaries.sort(key=lambda s: (s.series_number is None, s.series_number or 0, s.series_uid))
    return {s.series_uid: s for s in summaries}


def _first_value(members: list[tuple[Path, Dataset]], keyword: str) -> object:
    for _, ds in members:
        value = ds.get(keyword)
        if value not in (None, ""):
            return value
    return None


def _summarise(series_uid: str, members: list[tuple[Path, Dataset]]) -> SeriesSummary:
    members.sort(key=lambda m: str(m[0]))
    image_type = _first_value(members, "ImageType")
    if image_type is None:
        image_type_tuple: tuple[str, ...] = ()
    elif isinstance(image_type, str):
        image_type_tuple = (image_type,)
    else:
        image_type_tuple = tuple(str(v) for v in image_type)  # type: ignore[attr-defined]
    number = _first_value(members, "SeriesNumber")
    frames = sum(int(ds.get("NumberOfFrames", 1) or 1) for _, ds in members)

    def text(keyword: str) -> str | None:
        value = _first_value(members, keyword)
        return None if value is None else str(value)

    return SeriesSummary(
        series_uid=series_uid,
        study_uid=text("StudyInstanceUID"),
        modality=text("Modality"),
        series_description=text("SeriesDescription"),
        series_number=int(number) if number is not None else None,  # type: ignore[call-overload]
        image_type=image_type_tuple,
        body_part_examined=text("BodyPartExamined"),
        frame_of_reference_uid=text("FrameOfReferenceUID"),
        instance_count=len(members),
        frame_count=frames,
        sop_class_uids=frozenset(str(ds.get("SOPClassUID", "")) for _, ds in members),
        paths=tuple(path for path, _ in members),
    )


Interpolation = Literal["linear", "nearest"]


def resample_to(
    volume: Volume | DynamicVolume,
    reference: Volume | DynamicVolume,
    interpolation: Interpolation = "linear",
    *,
    default_value: float = 0.0,
    allow_other_frame_of_reference: bool = False,
) -> Volume | DynamicVolume:
    """*volume* resampled onto *reference*'s voxel grid (patient coordinates, no registration).

    Use ``linear`` for images and ``nearest`` for label maps (nearest keeps
    the array's dtype). Voxels outside *volume* get ``default_value``. A
    dynamic *volume* is resampled frame by frame.

    The result keeps *volume*'s identity (series, study, header, times) but
    takes *reference*'s geometry and ``source_refs``, since its slices now lie
    in the reference's planes. Volumes in different frames of reference are
    refused (their coordinates are unrelated) unless
    ``allow_other_frame_of_reference`` is set.
    """
    import SimpleITK as sitk

    if interpolation not in ("linear", "nearest"):
        raise ValueError(f"interpolation must be 'linear' or 'nearest', not {interpolation!r}")
    if (
        not allow_other_frame_of_reference
        and volume.frame_of_reference_uid
        and reference.frame_of_reference_uid
        and volume.frame_of_reference_uid != reference.frame_of_reference_uid
    ):
        raise FrameOfReferenceMismatchError(
            f"cannot resample series {volume.series_uid} onto series {reference.series_uid}: they are in different "
            f"frames of reference ({volume.frame_of_reference_uid} vs {reference.frame_of_reference_uid}), so "
            "their patient coordinates are not comparable without registration"
        )
    grid = reference.frame(0) if isinstance(reference, DynamicVolume) else reference
    target = Volume(array=np.zeros(grid.grid_shape, dtype=np.uint8), spacing=grid.spacing, origin=grid.origin,
                    direction=grid.direction).to_sitk()
    interpolator = sitk.sitkLinear if interpolation == "linear" else sitk.sitkNearestNeighbor

    def resample_array(array: np.ndarray) -> np.ndarray:
        source = Volume(array=array, spacing=volume.spacing, origin=volume.origin,
                        direction=volume.direction).to_sitk()
        output_type = source.GetPixelID() if interpolation == "nearest" else sitk.sitkFloat32
        resampled = sitk.Resample(source, target, sitk.Transform(), interpolator, default_value, output_type)
        return sitk.GetArrayFromImage(resampled)

    identity = dict(
        spacing=grid.spacing,
        origin=grid.origin,
        direction=grid.direction,
        series_uid=volume.series_uid,
        frame_of_reference_uid=grid.frame_of_reference_uid or volume.frame_of_reference_uid,
        study_uid=volume.study_uid,
        header=volume.header,
    )
    if isinstance(volume, DynamicVolume):
        reference_refs = reference.source_refs[0] if isinstance(reference, DynamicVolume) and reference.source_refs \
            else grid.source_refs
        return DynamicVolume(
            array=np.stack([resample_array(volume.array[t]) for t in range(volume.n_times)]),
            times_s=volume.times_s,
            source_refs=tuple(reference_refs for _ in range(volume.n_times)) if reference_refs else (),
            echo_time_ms=volume.echo_time_ms,
            repetition_time_ms=volume.repetition_time_ms,
            timing_source=volume.timing_source,
            **identity,  # type: ignore[arg-type]
        )
    return Volume(array=resample_array(volume.array), source_refs=grid.source_refs, **identity)  # type: ignore[arg-type]
