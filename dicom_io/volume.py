"""Volumes: voxel arrays with the geometry that places them in the patient.

Conventions (the same everywhere in :mod:`dicom_io`):

* ``array`` is indexed ``[z, y, x]`` (``[t, z, y, x]`` for dynamic volumes):
  ``x`` runs along a DICOM row (increasing column index), ``y`` down the
  columns (increasing row index), ``z`` across slices.
* ``spacing`` is ``(z, y, x)`` in mm: slice spacing, row spacing
  (PixelSpacing[0]), column spacing (PixelSpacing[1]).
* ``origin`` is the LPS patient position (mm) of the centre of voxel ``[0, 0, 0]``.
* ``direction`` is a 3x3 matrix whose columns are the unit vectors of the
  x, y and z axes in LPS: row direction, column direction, slice normal.
  The reader always makes the slice normal ``row x column``, so the matrix
  is a proper rotation.
* ``source_refs[k]`` names the instance (and frame) slice ``k`` came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset

if TYPE_CHECKING:
    import SimpleITK as sitk


@dataclass(frozen=True)
class SourceRef:
    """The DICOM object (and frame of it) that one slice of a volume came from."""

    sop_class_uid: str
    sop_instance_uid: str
    #: 1-based frame number for multi-frame objects, ``None`` for single-frame ones.
    frame_number: int | None = None


def _as_direction(direction: np.ndarray | list | tuple) -> np.ndarray:
    matrix = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    if abs(abs(np.linalg.det(matrix)) - 1.0) > 1e-3:
        raise ValueError(f"direction must be orthonormal (determinant {np.linalg.det(matrix):.4f})")
    return matrix


class _Geometry:
    """Methods shared by static and dynamic volumes (fields live on the dataclasses)."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix mapping voxel indices ``(x, y, z, 1)`` to LPS mm.

        Note the index order is column, row, slice (as in ITK and NIfTI),
        the reverse of the array's ``[z, y, x]`` indexing; see :meth:`index_to_lps`.
        """
        affine = np.eye(4)
        dz, dy, dx = self.spacing
        affine[:3, :3] = self.direction * np.array([dx, dy, dz])
        affine[:3, 3] = self.origin
        return affine

    def index_to_lps(self, zyx: np.ndarray | tuple[float, float, float]) -> np.ndarray:
        """LPS mm position(s) of array index/indices ``[z, y, x]`` (shape (3,) or (n, 3))."""
        points = np.asarray(zyx, dtype=np.float64)
        xyz = points[..., ::-1]
        return xyz @ self.affine[:3, :3].T + self.affine[:3, 3]

    @property
    def slice_normal(self) -> np.ndarray:
        return self.direction[:, 2]

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """The spatial shape ``(z, y, x)`` (the last three array axes)."""
        return tuple(self.array.shape[-3:])  # type: ignore[attr-defined,return-value]

    def same_grid(self, other: _Geometry, tolerance_mm: float = 1e-3) -> bool:
        """Whether both lie on the same voxel grid (shape, spacing, origin, direction)."""
        return (
            self.grid_shape == other.grid_shape
            and bool(np.allclose(self.spacing, other.spacing, atol=tolerance_mm))
            and bool(np.allclose(self.origin, other.origin, atol=tolerance_mm))
            and bool(np.allclose(self.direction, other.direction, atol=1e-5))
        )


@dataclass(eq=False)
class Volume(_Geometry):
    """A 3D image (or label map) in patient space, read from one DICOM series."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    source_refs: tuple[SourceRef, ...] = ()
    series_uid: str | None = None
    frame_of_reference_uid: str | None = None
    study_uid: str | None = None
    #: Header of the series' first slice, without pixel data (shares elements
    #: with the source dataset: treat it as read-only).
    header: Dataset | None = None

    def __post_init__(self) -> None:
        self.direction = _as_direction(self.direction)
        self.spacing = tuple(float(v) for v in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(v) for v in self.origin)  # type: ignore[assignment]
        if self.array.ndim != 3:
            raise ValueError(f"a Volume array must be 3D (z, y, x), got shape {self.array.shape}")
        if self.source_refs and len(self.source_refs) != self.array.shape[0]:
            raise ValueError(f"{len(self.source_refs)} source_refs for {self.array.shape[0]} slices")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    def to_sitk(self) -> sitk.Image:
        """A SimpleITK image with the same voxels and geometry (array copied)."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(self.array, isVector=False)
        dz, dy, dx = self.spacing
        image.SetSpacing((dx, dy, dz))
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(self.direction.flatten()))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image, like: Volume | None = None, **overrides: object) -> Volume:
        """A Volume from a 3D SimpleITK image.

        Identity fields (UIDs, header, source_refs) are copied from *like* when
        given and its slice count matches, then replaced by *overrides*.
        """
        import SimpleITK as sitk

        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
        array = sitk.GetArrayFromImage(image)
        sx, sy, sz = image.GetSpacing()
        fields: dict[str, object] = {}
        if like is not None:
            fields = {
                "series_uid": like.series_uid,
                "frame_of_reference_uid": like.frame_of_reference_uid,
                "study_uid": like.study_uid,
                "header": like.header,
            }
            if len(like.source_refs) == array.shape[0]:
                fields["source_refs"] = like.source_refs
        fields.update(overrides)
        return cls(
            spacing=(sz, sy, sx),
            origin=tuple(image.GetOrigin()),  # type: ignore[arg-type]
            direction=np.array(image.GetDirection()).reshape(3, 3),
            array=array,
            **fields,  # type: ignore[arg-type]
        )


@dataclass(eq=False)
class DynamicVolume(_Geometry):
    """A time series of 3D volumes on one grid, e.g. DSC or DCE perfusion."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    #: Acquisition time of each frame in seconds, relative to the first (``times_s[0] == 0``).
    times_s: np.ndarray
    #: ``source_refs[t][z]``: where slice z of time point t came from.
    source_refs: tuple[tuple[SourceRef, ...], ...] = ()
    series_uid: str | None = None
    frame_of_reference_uid: str | None = None
    study_uid: str | None = None
    header: Dataset | None = None
    #: EchoTime / RepetitionTime in ms, as DICOM states them (None if absent).
    echo_time_ms: float | None = None
    repetition_time_ms: float | None = None
    #: How frame times were obtained: 'temporal_position', 'acquisition_time',
    #: 'trigger_time', 'repeated' (order only, times from TR) or 'single'.
    timing_source: str = "single"

    def __post_init__(self) -> None:
        self.direction = _as_direction(self.direction)
        self.spacing = tuple(float(v) for v in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(v) for v in self.origin)  # type: ignore[assignment]
        self.times_s = np.asarray(self.times_s, dtype=np.float64)
        if self.array.ndim != 4:
            raise ValueError(f"a DynamicVolume array must be 4D (t, z, y, x), got shape {self.array.shape}")
        if self.times_s.shape != (self.array.shape[0],):
            raise ValueError(f"{self.times_s.size} times for {self.array.shape[0]} time points")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def n_times(self) -> int:
        return int(self.array.shape[0])

    @property
    def echo_time_s(self) -> float | None:
        return None if self.echo_time_ms is None else self.echo_time_ms / 1000.0

    @property
    def repetition_time_s(self) -> float | None:
        return None if self.repetition_time_ms is None else self.repetition_time_ms / 1000.0

    def frame(self, t: int) -> Volume:
        """Time point *t* as a :class:`Volume` (a view of the array, not a copy)."""
        return Volume(
            spacing=self.spacing,
            origin=self.origin,
            direction=self.direction,
            array=self.array[t],
            source_refs=self.source_refs[t] if self.source_refs else (),
            series_uid=self.series_uid,
            frame_of_reference_uid=self.frame_of_reference_uid,
            study_uid=self.study_uid,
            header=self.header,
        )
