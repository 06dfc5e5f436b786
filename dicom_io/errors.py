"""Exceptions raised when DICOM objects cannot be turned into volumes (or back).

Every series problem names the series (SeriesInstanceUID plus description and
number when known) and says what is wrong in words a PACS administrator can
act on. Pipelines turn these into a failed job with ``str(exc)`` as the reason.

Hierarchy::

    DicomIOError
    ├── SeriesError                  (series_uid, series_label, problem)
    │   ├── MixedOrientationError
    │   ├── MissingSliceError
    │   ├── DuplicateSliceError
    │   ├── UnevenSpacingError
    │   ├── InconsistentMatrixError
    │   ├── MissingTimingError
    │   ├── EmptySeriesError
    │   ├── MissingPixelDataError
    │   └── UnsupportedSeriesError
    └── FrameOfReferenceMismatchError
"""

from __future__ import annotations


class DicomIOError(Exception):
    """Base class of every error raised by :mod:`dicom_io`."""


class SeriesError(DicomIOError):
    """A series cannot be read as a volume.

    ``series_uid`` is the SeriesInstanceUID (``None`` when it could not be
    determined, e.g. for an empty input), ``series_label`` the human-readable
    description and number, ``problem`` the sentence that says what is wrong.
    """

    def __init__(self, problem: str, series_uid: str | None = None, series_label: str | None = None) -> None:
        self.problem = problem
        self.series_uid = series_uid
        self.series_label = series_label
        super().__init__(f"{describe_series(series_uid, series_label)}: {problem}")


def describe_series(series_uid: str | None, series_label: str | None) -> str:
    """``Series 'T2 TSE' #4 (UID 1.2.3)``: how error messages name a series."""
    label = f" {series_label}" if series_label else ""
    uid = f" (UID {series_uid})" if series_uid else " (SeriesInstanceUID unknown)"
    return f"Series{label}{uid}"


class MixedOrientationError(SeriesError):
    """Instances of the series have different ImageOrientationPatient values."""


class MissingSliceError(SeriesError):
    """There is a gap in the slice positions, or a time point lacks slices."""


class DuplicateSliceError(SeriesError):
    """Two instances or frames share a slice position and time point."""


class UnevenSpacingError(SeriesError):
    """The distance between adjacent slices varies beyond the tolerance."""


class InconsistentMatrixError(SeriesError):
    """Rows, Columns or PixelSpacing differ between instances of the series."""


class MissingTimingError(SeriesError):
    """A dynamic read needs time information that the series does not carry."""


class EmptySeriesError(SeriesError):
    """No image instances were given."""


class MissingPixelDataError(SeriesError):
    """An image instance carries no pixel data."""


class UnsupportedSeriesError(SeriesError):
    """The series is valid DICOM but not something the reader can turn into a volume."""


class FrameOfReferenceMismatchError(DicomIOError):
    """Two volumes live in different frames of reference, so their coordinates are not comparable."""


class CsaHeaderError(DicomIOError):
    """A Siemens CSA header (private tag (0029,xx10)/(0029,xx20)) is malformed or in an unknown format."""


class WriterError(DicomIOError):
    """A DICOM output cannot be built from the arguments given; nothing was written."""
