"""From class probabilities to a clean liver mask and a list of measured lesions.

Steps (:func:`postprocess`), on the study's grid:

1. **Labels** are the most probable class per voxel (0 background, 1 liver,
   2 tumour).
2. **One liver.** The liver *includes* its tumours: the largest 6-connected
   component of liver ∪ tumour is kept, everything else is background (a
   spleen or kidney mistaken for liver is usually a separate component).
3. **Tumours inside the liver.** The liver envelope is the parenchyma with its
   enclosed holes filled (a tumour inside the liver is such a hole), dilated by
   ``margin_mm`` (default 5 mm). A tumour component (26-connected) is kept when
   at least half of it lies in the envelope; otherwise it is background —
   a lesion of a neighbouring organ touching the liver is not a liver tumour.
   Whole components are kept or dropped, so a tumour bulging out of the liver
   is not cut at the envelope.
4. **Lesions.** Each remaining tumour component is a lesion with its volume
   (ml), its longest 3D diameter (mm; SimpleITK's Feret diameter, the largest
   distance between voxel centres, with the spacing), its longest axial
   diameter (the same in the slice where it is largest, as RECIST measures),
   and its centre. Components smaller than ``min_volume_ml`` or shorter than
   ``min_diameter_mm`` are not lesions: their voxels become liver.

Distances and volumes use the voxel spacing ``(z, y, x)`` mm; centres are in mm
from the centre of voxel ``[0, 0, 0]`` along the array axes (add the volume's
geometry to place them in the patient).

Research use only; not a medical device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

BACKGROUND, LIVER, TUMOUR = 0, 1, 2
#: Default margin of the liver envelope around the parenchyma (mm).
LIVER_MARGIN_MM = 5.0
#: Default smallest lesion volume (ml); smaller tumour components become liver.
MIN_LESION_VOLUME_ML = 0.1
#: Default smallest lesion diameter (mm).
MIN_LESION_DIAMETER_MM = 0.0


class PostprocessError(ValueError):
    """Probabilities, labels or spacing that cannot be post-processed."""


@dataclass(frozen=True)
class Lesion:
    """One tumour component of a segmentation."""

    #: 1-based; the value of this lesion's voxels in :attr:`Segmentation.lesion_labels`.
    index: int
    voxel_count: int
    volume_ml: float
    #: Longest 3D diameter (mm): the largest distance between two of its voxel centres.
    longest_diameter_mm: float
    #: Longest diameter within one axial slice (mm), over its slices.
    longest_axial_diameter_mm: float
    #: Centroid in voxel indices (z, y, x), and in mm from voxel [0, 0, 0] along the array axes.
    centre_zyx: tuple[float, float, float]
    centre_zyx_mm: tuple[float, float, float]
    #: Bounding box as (z0, y0, x0, z1, y1, x1), end exclusive.
    bbox: tuple[int, int, int, int, int, int]

    def slices(self) -> tuple[slice, slice, slice]:
        z0, y0, x0, z1, y1, x1 = self.bbox
        return slice(z0, z1), slice(y0, y1), slice(x0, x1)


@dataclass(frozen=True)
class Segmentation:
    """The post-processed result on the study's grid."""

    #: uint8 [z, y, x]: 0 background, 1 liver parenchyma, 2 tumour.
    labels: np.ndarray
    #: int16 [z, y, x]: 0 or the 1-based index of the lesion the voxel belongs to.
    lesion_labels: np.ndarray
    lesions: tuple[Lesion, ...]
    spacing: tuple[float, float, float]

    @property
    def liver_volume_ml(self) -> float:
        """Liver including its tumours."""
        return float(np.count_nonzero(self.labels) * _voxel_ml(self.spacing))

    @property
    def tumour_volume_ml(self) -> float:
        return float(np.count_nonzero(self.labels == TUMOUR) * _voxel_ml(self.spacing))

    @property
    def tumour_burden_percent(self) -> float:
        """Tumour volume as a percentage of the liver volume (tumours included)."""
        liver = self.liver_volume_ml
        return 100.0 * self.tumour_volume_ml / liver if liver > 0 else 0.0


def _voxel_ml(spacing: Sequence[float]) -> float:
    return float(np.prod(spacing)) / 1000.0


def _image(array: np.ndarray, spacing: Sequence[float]) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(float(s) for s in reversed(tuple(spacing))))
    return image


def _check(labels: np.ndarray, spacing: Sequence[float]) -> tuple[float, float, float]:
    if labels.ndim != 3:
        raise PostprocessError(f"expected [z, y, x] labels, got shape {labels.shape}")
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or min(values) <= 0:
        raise PostprocessError(f"spacing must be three positive (z, y, x) mm values, got {spacing}")
    return values  # type: ignore[return-value]


def labels_from_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """uint8 ``[z, y, x]``: the most probable of the three classes in ``[3, z, y, x]``."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 4 or probabilities.shape[0] != 3:
        raise PostprocessError(f"expected [3, z, y, x] probabilities, got shape {probabilities.shape}")
    return np.argmax(probabilities, axis=0).astype(np.uint8)


def components(mask: np.ndarray, *, fully_connected: bool) -> tuple[np.ndarray, int]:
    """Connected components of a boolean mask, numbered 1… by decreasing size; and their count."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(mask.astype(np.uint8)))
    labelled = sitk.RelabelComponent(sitk.ConnectedComponent(image, fully_connected))
    array = sitk.GetArrayFromImage(labelled).astype(np.int32)
    return array, int(array.max())


def keep_largest_liver(labels: np.ndarray) -> np.ndarray:
    """Labels with only the largest 6-connected component of liver ∪ tumour left (liver includes tumours)."""
    labels = np.asarray(labels, dtype=np.uint8)
    numbered, count = components(labels > 0, fully_connected=False)
    if count <= 1:
        return labels.copy()
    return np.where(numbered == 1, labels, BACKGROUND).astype(np.uint8)


def liver_envelope(labels: np.ndarray, spacing: Sequence[float], margin_mm: float = LIVER_MARGIN_MM) -> np.ndarray:
    """The parenchyma with its enclosed holes filled, dilated by *margin_mm* (an ellipsoid in voxels)."""
    spacing = _check(labels, spacing)
    parenchyma = _image((labels == LIVER).astype(np.uint8), spacing)
    filled = sitk.BinaryFillhole(parenchyma, fullyConnected=False, foregroundValue=1)
    radius = [int(np.ceil(margin_mm / s)) for s in reversed(spacing)]
    if margin_mm > 0 and any(radius):
        filled = sitk.BinaryDilate(filled, radius, sitk.sitkBall, 0, 1)
    return sitk.GetArrayFromImage(filled).astype(bool)


def tumours_inside_liver(
    labels: np.ndarray, spacing: Sequence[float], margin_mm: float = LIVER_MARGIN_MM
) -> np.ndarray:
    """Labels where tumour components lying mostly outside the liver envelope became background."""
    labels = np.asarray(labels, dtype=np.uint8)
    envelope = liver_envelope(labels, spacing, margin_mm)
    numbered, count = components(labels == TUMOUR, fully_connected=True)
    if count == 0:
        return labels.copy()
    sizes = np.bincount(numbered.ravel(), minlength=count + 1)
    inside = np.bincount(numbered[envelope].ravel(), minlength=count + 1)
    drop = np.flatnonzero(inside < 0.5 * sizes)
    drop = drop[drop > 0]
    out = labels.copy()
    out[np.isin(numbered, drop)] = BACKGROUND
    return out


def _axial_diameter(mask: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """Largest in-slice Feret diameter (mm) over the slices of a lesion's boolean crop ``[z, y, x]``."""
    best = 0.0
    shape_stats = sitk.LabelShapeStatisticsImageFilter()
    shape_stats.ComputeFeretDiameterOn()
    for plane in mask:
        if np.count_nonzero(plane) < 2:
            continue
        image = sitk.GetImageFromArray(plane.astype(np.uint8))
        image.SetSpacing((spacing[2], spacing[1]))
        shape_stats.Execute(image)
        best = max(best, float(shape_stats.GetFeretDiameter(1)))
    return best


def find_lesions(
    labels: np.ndarray,
    spacing: Sequence[float],
    *,
    min_volume_ml: float = MIN_LESION_VOLUME_ML,
    min_diameter_mm: float = MIN_LESION_DIAMETER_MM,
) -> tuple[np.ndarray, np.ndarray, tuple[Lesion, ...]]:
    """Tumour components as lesions: (labels with too-small tumours made liver, lesion labels, lesions).

    Lesions are numbered 1… by decreasing volume.
    """
    spacing = _check(np.asarray(labels), spacing)
    labels = np.asarray(labels, dtype=np.uint8).copy()
    numbered, count = components(labels == TUMOUR, fully_connected=True)
    lesion_labels = np.zeros(labels.shape, np.int16)
    if count == 0:
        return labels, lesion_labels, ()
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.ComputeFeretDiameterOn()
    stats.Execute(_image(numbered, spacing))
    voxel_ml = _voxel_ml(spacing)
    lesions: list[Lesion] = []
    for component in range(1, count + 1):  # RelabelComponent numbered them by decreasing size
        voxels = int(stats.GetNumberOfPixels(component))
        volume = voxels * voxel_ml
        diameter = float(stats.GetFeretDiameter(component))
        x0, y0, z0, sx, sy, sz = stats.GetBoundingBox(component)
        box = (slice(z0, z0 + sz), slice(y0, y0 + sy), slice(x0, x0 + sx))
        member = numbered[box] == component
        if volume < min_volume_ml or diameter < min_diameter_mm:
            labels[box][member] = LIVER
            continue
        index = len(lesions) + 1
        lesion_labels[box][member] = index
        cx, cy, cz = stats.GetCentroid(component)  # physical, origin 0: mm along x, y, z
        lesions.append(
            Lesion(
                index=index,
                voxel_count=voxels,
                volume_ml=float(volume),
                longest_diameter_mm=diameter,
                longest_axial_diameter_mm=_axial_diameter(member, spacing),
                centre_zyx=(cz / spacing[0], cy / spacing[1], cx / spacing[2]),
                centre_zyx_mm=(float(cz), float(cy), float(cx)),
                bbox=(z0, y0, x0, z0 + sz, y0 + sy, x0 + sx),
            )
        )
    return labels, lesion_labels, tuple(lesions)


def postprocess(
    probabilities: np.ndarray,
    spacing: Sequence[float],
    *,
    min_volume_ml: float = MIN_LESION_VOLUME_ML,
    min_diameter_mm: float = MIN_LESION_DIAMETER_MM,
    margin_mm: float = LIVER_MARGIN_MM,
) -> Segmentation:
    """Probabilities ``[3, z, y, x]`` → one liver, tumours inside it, measured lesions (module docstring)."""
    return postprocess_labels(
        labels_from_probabilities(probabilities), spacing,
        min_volume_ml=min_volume_ml, min_diameter_mm=min_diameter_mm, margin_mm=margin_mm,
    )


def postprocess_labels(
    labels: np.ndarray,
    spacing: Sequence[float],
    *,
    min_volume_ml: float = MIN_LESION_VOLUME_ML,
    min_diameter_mm: float = MIN_LESION_DIAMETER_MM,
    margin_mm: float = LIVER_MARGIN_MM,
) -> Segmentation:
    """Steps 2–4 of :func:`postprocess` on a label array ``[z, y, x]`` (0/1/2)."""
    spacing = _check(np.asarray(labels), spacing)
    labels = keep_largest_liver(labels)
    labels = tumours_inside_liver(labels, spacing, margin_mm)
    labels, lesion_labels, lesions = find_lesions(
        labels, spacing, min_volume_ml=min_volume_ml, min_diameter_mm=min_diameter_mm
    )
    return Segmentation(labels=labels, lesion_labels=lesion_labels, lesions=lesions, spacing=spacing)


__all__ = [
    "BACKGROUND",
    "LIVER",
    "LIVER_MARGIN_MM",
    "MIN_LESION_DIAMETER_MM",
    "MIN_LESION_VOLUME_ML",
    "TUMOUR",
    "Lesion",
    "PostprocessError",
    "Segmentation",
    "components",
    "find_lesions",
    "keep_largest_liver",
    "labels_from_probabilities",
    "liver_envelope",
    "postprocess",
    "postprocess_labels",
    "tumours_inside_liver",
]
