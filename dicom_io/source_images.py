"""Checks on the source series a writer derives an output from.

Writers receive the single-frame images of one series (CT or MR) sorted in
slice order, plus arrays indexed ``[z, y, x]`` along that order. Everything a
derived object promises (same Frame of Reference, one frame per source slice,
per-frame source references) depends on that input being what it claims, so
it is checked here once, before any object is built, and every problem is
reported as a :class:`~dicom_io.errors.WriterError` that names the series.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from dicom_io.errors import WriterError

#: Longest SeriesDescription (LO) a PACS stores without truncating it.
SERIES_DESCRIPTION_MAX = 64


@dataclass(frozen=True)
class SourceSeries:
    """A checked source series: its images in slice order and their shared geometry."""

    images: tuple[Dataset, ...]
    rows: int
    columns: int

    @property
    def first(self) -> Dataset:
        return self.images[0]

    @property
    def slice_count(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(z, y, x)`` shape an array aligned with the source must have."""
        return (len(self.images), self.rows, self.columns)

    @property
    def label(self) -> str:
        """How messages name the series: number, description and UID (no patient data)."""
        ds = self.first
        number = ds.get("SeriesNumber")
        description = ds.get("SeriesDescription")
        parts = ["Source series"]
        if description:
            parts.append(repr(str(description)))
        if number is not None and number != "":
            parts.append(f"#{number}")
        parts.append(f"(UID {ds.get('SeriesInstanceUID', 'unknown')})")
        return " ".join(parts)

    def check_array(self, array: np.ndarray, what: str) -> None:
        """Raise unless ``array`` is a ``(z, y, x)`` array aligned with this series."""
        if not isinstance(array, np.ndarray):
            raise WriterError(f"{what} must be a numpy array, got {type(array).__name__}")
        if array.shape != self.shape:
            raise WriterError(
                f"{what} has shape {array.shape} but {self.label} has {self.slice_count} slices "
                f"of {self.rows}x{self.columns}: expected (z, y, x) = {self.shape}"
            )


def check_source_series(source_images: Sequence[Dataset]) -> SourceSeries:
    """Check that ``source_images`` are the single-frame slices of one series, in slice order.

    Required: at least one image; one StudyInstanceUID, SeriesInstanceUID and
    FrameOfReferenceUID; single-frame pixel data of one matrix size; a common
    ImageOrientationPatient; ImagePositionPatient strictly monotonic along the
    slice normal (ascending or descending), so arrays indexed by list position
    are unambiguous.
    """
    if isinstance(source_images, Dataset) or not isinstance(source_images, Sequence):
        raise WriterError("source_images must be a sequence of pydicom Datasets (the slices of one series)")
    images = tuple(source_images)
    if not images:
        raise WriterError("No source images were given; a derived object needs the series it was computed from")
    for index, ds in enumerate(images):
        if not isinstance(ds, Dataset):
            raise WriterError(f"Source image {index} is a {type(ds).__name__}, not a pydicom Dataset")
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns"):
            if not ds.get(keyword):
                raise WriterError(f"Source image {index} has no {keyword}")
        if int(ds.get("NumberOfFrames", 1) or 1) != 1:
            raise WriterError(
                f"Source image {index} ({ds.SOPInstanceUID}) is multi-frame; "
                "the writers take the single-frame images of a classic CT or MR series"
            )
    series = SourceSeries(images=images, rows=int(images[0].Rows), columns=int(images[0].Columns))

    def _one(keyword: str) -> None:
        values = {str(ds.get(keyword, "")) for ds in images}
        if len(values) != 1 or "" in values:
            raise WriterError(f"{series.label}: the source images do not share one {keyword} ({sorted(values)})")

    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        _one(keyword)
    if len({ds.SOPInstanceUID for ds in images}) != len(images):
        raise WriterError(f"{series.label}: the same SOPInstanceUID appears more than once")
    if any((int(ds.Rows), int(ds.Columns)) != (series.rows, series.columns) for ds in images):
        raise WriterError(f"{series.label}: the source images differ in Rows/Columns")

    orientations = []
    positions = []
    for index, ds in enumerate(images):
        iop = ds.get("ImageOrientationPatient")
        ipp = ds.get("ImagePositionPatient")
        if iop is None or len(iop) != 6 or ipp is None or len(ipp) != 3 or not ds.get("PixelSpacing"):
            raise WriterError(
                f"{series.label}: source image {index} lacks ImageOrientationPatient, "
                "ImagePositionPatient or PixelSpacing; outputs must share the source's geometry"
            )
        orientations.append(np.asarray(iop, dtype=float))
        positions.append(np.asarray(ipp, dtype=float))
    if np.abs(np.asarray(orientations) - orientations[0]).max() > 1e-4:
        raise WriterError(f"{series.label}: the source images have different ImageOrientationPatient values")
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    along = np.asarray(positions) @ normal
    if len(images) > 1:
        steps = np.diff(along)
        if not (np.all(steps > 1e-4) or np.all(steps < -1e-4)):
            raise WriterError(
                f"{series.label}: the source images are not in slice order (positions along the slice "
                "normal must strictly increase or decrease); sort them as the reader returns them"
            )
    return series


def check_series_number(series_number: int) -> int:
    """SeriesNumber must be a positive integer that fits IS (deterministic, chosen by the caller)."""
    if isinstance(series_number, bool) or not isinstance(series_number, (int, np.integer)):
        raise WriterError(f"series_number must be an int, got {series_number!r}")
    if not 1 <= int(series_number) <= 2**31 - 1:
        raise WriterError(f"series_number must be between 1 and 2147483647, got {series_number}")
    return int(series_number)


def check_series_description(series_description: str) -> str:
    """SeriesDescription must be non-empty readable text of at most 64 characters."""
    if not isinstance(series_description, str) or not series_description.strip():
        raise WriterError(f"series_description must be a non-empty string, got {series_description!r}")
    if len(series_description) > SERIES_DESCRIPTION_MAX or "\\" in series_description or any(
        ord(c) < 32 for c in series_description
    ):
        raise WriterError(
            f"series_description {series_description!r} is not a valid DICOM LO value "
            f"(at most {SERIES_DESCRIPTION_MAX} characters, no backslash or control characters)"
        )
    return series_description
