"""Lesion-centred multi-sequence patches: what the liver lesion classifiers see (issue 6).

Seed 003 (Zhen et al. 2020) classifies a lesion from the axial slices
through it, every sequence of a slice stacked as one multi-channel image,
and sums the per-slice predictions. :func:`extract_lesion_patches` builds
those images from channels already on one grid (the pipeline registers the
sequences first; training undoes the simulator's known motion):

* slices: every axial slice whose lesion area is at least
  :data:`MIN_SLICE_AREA_FRACTION` of the largest (at least one), so the
  thin caps of a lesion, mostly partial volume, are left out;
* crop: a square centred on the lesion's in-slice centre, its side in mm
  ``max(1.5 × axial diameter + 15 mm, 30 mm)`` so there is always a rim of
  surrounding liver to compare with, resampled bilinearly to
  :data:`PATCH_SIZE` pixels;
* intensities: each sequence divided by the median of the surrounding liver
  in the crop (pixels outside the dilated lesion, inside the liver mask when
  given), so the network sees lesion-to-liver contrast, not scanner units;
  clipped to ``[0, NORMALISED_MAX]``;
* the lesion mask as the last channel, and the log of the lesion's longest
  axial diameter (mm) as a per-lesion scalar, since cropping to the lesion's
  size hides its size from the image.

:meth:`LesionPatches.paste` puts per-slice maps (saliency) back on the
volume grid. Research use only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "CLS_SHAPE", "CLS_SPACING", "MIN_CLASSIFIED_DIAMETER_MM", "MIN_SLICE_AREA_FRACTION", "NORMALISED_MAX", "PATCH_SIZE",
    "LesionPatchError", "LesionPatches", "crop_side_mm", "extract_lesion_patches",
]

#: Geometry of the classification phantoms (z, y, x voxels and mm): finer in-plane than segmentation's.
CLS_SHAPE: tuple[int, int, int] = (32, 224, 224)
CLS_SPACING: tuple[float, float, float] = (6.0, 1.5, 1.5)
#: Side of the square patches (pixels).
PATCH_SIZE = 32
#: Slices whose lesion area is below this fraction of the largest are not used.
MIN_SLICE_AREA_FRACTION = 0.3
#: Lesions whose longest axial diameter is below this (mm) are not classified: too few pixels
#: for texture and enhancement pattern (seed 003's smallest lesions were ~1 cm). Training uses the
#: same limit on the truth lesions.
MIN_CLASSIFIED_DIAMETER_MM = 10.0
#: Upper clip of the liver-normalised intensities (cysts reach ~6× liver on T2).
NORMALISED_MAX = 10.0
#: Pixels within this distance (mm) of the lesion do not count as surrounding liver.
_LESION_MARGIN_MM = 3.0


class LesionPatchError(ValueError):
    """The images or masks given cannot make lesion patches; the message says what is wrong."""


def crop_side_mm(axial_diameter_mm: float) -> float:
    """Side of the square crop (mm) for a lesion of this axial diameter: lesion plus a rim of liver."""
    return max(1.5 * float(axial_diameter_mm) + 15.0, 30.0)


@dataclass(frozen=True)
class LesionPatches:
    """The patches of one lesion, and where they came from on the volume grid."""

    #: [S, C + 1, P, P] float32: C liver-normalised sequences, then the lesion mask.
    patches: np.ndarray
    #: Axial slice index of each patch.
    slice_indices: tuple[int, ...]
    #: Per patch, the crop in continuous voxel coordinates (y0, x0, y1, x1); voxel centres are integers.
    boxes: np.ndarray
    #: Longest axial diameter of the lesion mask (mm).
    diameter_mm: float
    #: The reference intensity (surrounding liver median) per slice and sequence, [S, C].
    references: np.ndarray

    @property
    def size_feature(self) -> float:
        """log of the longest axial diameter in mm (the classifier's size input)."""
        return math.log(max(self.diameter_mm, 1.0))

    @property
    def patch_size(self) -> int:
        return int(self.patches.shape[-1])

    def paste(self, maps: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        """Per-slice maps ``[S, P, P]`` put back on a ``[z, y, x]`` volume of *shape* (zero elsewhere).

        Each map is sampled bilinearly at the volume pixels inside its crop box,
        so the result lines up with the images the patches were cut from.
        """
        maps = np.asarray(maps, dtype=np.float32)
        size = self.patch_size
        if maps.shape != (len(self.slice_indices), size, size):
            raise LesionPatchError(f"maps must have shape {(len(self.slice_indices), size, size)}, got {maps.shape}")
        if len(shape) != 3:
            raise LesionPatchError(f"shape must be (z, y, x), got {tuple(shape)}")
        volume = np.zeros(tuple(int(n) for n in shape), dtype=np.float32)
        for index, z in enumerate(self.slice_indices):
            y0, x0, y1, x1 = (float(v) for v in self.boxes[index])
            ys = np.arange(max(0, math.ceil(y0)), min(volume.shape[1], math.floor(y1) + 1))
            xs = np.arange(max(0, math.ceil(x0)), min(volume.shape[2], math.floor(x1) + 1))
            if not len(ys) or not len(xs) or not 0 <= z < volume.shape[0]:
                continue
            u = (ys - y0) / ((y1 - y0) / size) - 0.5
            v = (xs - x0) / ((x1 - x0) / size) - 0.5
            uu, vv = np.meshgrid(u, v, indexing="ij")
            sampled = ndimage.map_coordinates(maps[index], [uu, vv], order=1, mode="nearest")
            volume[z, ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1] = sampled
        return volume


def _axial_diameter_mm(mask2d: np.ndarray, dy: float, dx: float) -> float:
    points = np.argwhere(mask2d).astype(np.float64) * np.array([dy, dx])
    if len(points) < 2:
        return float(min(dy, dx))
    if len(points) > 2000:  # boundary pixels carry the extreme distances
        eroded = ndimage.binary_erosion(mask2d)
        points = np.argwhere(mask2d & ~eroded).astype(np.float64) * np.array([dy, dx])
    d2 = ((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1)
    # Feret diameter between pixel centres, as inference.liver.phantom.lesion_measurements measures it.
    return max(float(math.sqrt(float(d2.max()))), min(dy, dx))


def _sample(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    uu, vv = np.meshgrid(ys, xs, indexing="ij")
    return ndimage.map_coordinates(image, [uu, vv], order=1, mode="nearest").astype(np.float32)


def extract_lesion_patches(images: np.ndarray, spacing: Sequence[float], lesion_mask: np.ndarray,
                           liver_mask: np.ndarray | None = None, patch_size: int = PATCH_SIZE) -> LesionPatches:
    """The patches of one lesion from ``images [C, z, y, x]`` (all channels on one grid).

    *spacing* is (dz, dy, dx) mm; *lesion_mask* marks the lesion and
    *liver_mask* (optional) the liver, both ``[z, y, x]``. Raises
    :class:`LesionPatchError` for an empty mask or mismatched shapes.
    """
    images = np.asarray(images)
    lesion = np.asarray(lesion_mask).astype(bool)
    if images.ndim != 4:
        raise LesionPatchError(f"images must be [channels, z, y, x], got shape {images.shape}")
    if lesion.shape != images.shape[1:]:
        raise LesionPatchError(f"lesion mask shape {lesion.shape} differs from the images' {images.shape[1:]}")
    liver = None
    if liver_mask is not None:
        liver = np.asarray(liver_mask).astype(bool)
        if liver.shape != lesion.shape:
            raise LesionPatchError(f"liver mask shape {liver.shape} differs from the images' {images.shape[1:]}")
    if len(spacing) != 3 or any(not float(s) > 0 for s in spacing):
        raise LesionPatchError(f"spacing must be three positive values (dz, dy, dx) mm, got {tuple(spacing)}")
    if not lesion.any():
        raise LesionPatchError("the lesion mask is empty: there is no lesion to classify")
    if not np.all(np.isfinite(images)):
        raise LesionPatchError("the images have NaN or infinite values")
    if patch_size < 8:
        raise LesionPatchError(f"patch_size must be at least 8 pixels, got {patch_size}")
    _, dy, dx = (float(s) for s in spacing)
    areas = lesion.sum(axis=(1, 2))
    slices = [int(z) for z in np.flatnonzero(areas >= MIN_SLICE_AREA_FRACTION * areas.max())]
    diameter = max(_axial_diameter_mm(lesion[z], dy, dx) for z in slices)
    side_mm = crop_side_mm(diameter)
    margin = max(1, round(_LESION_MARGIN_MM / min(dy, dx)))
    n_channels = images.shape[0]
    patches = np.empty((len(slices), n_channels + 1, patch_size, patch_size), dtype=np.float32)
    boxes = np.empty((len(slices), 4), dtype=np.float64)
    references = np.empty((len(slices), n_channels), dtype=np.float32)
    offsets = (np.arange(patch_size) + 0.5) / patch_size - 0.5  # pixel centres, fractions of the side
    for index, z in enumerate(slices):
        cy, cx = np.argwhere(lesion[z]).mean(axis=0)
        side_y, side_x = side_mm / dy, side_mm / dx
        boxes[index] = (cy - side_y / 2, cx - side_x / 2, cy + side_y / 2, cx + side_x / 2)
        ys, xs = cy + offsets * side_y, cx + offsets * side_x
        mask_patch = _sample(lesion[z].astype(np.float32), ys, xs)
        near = _sample(ndimage.binary_dilation(lesion[z], iterations=margin).astype(np.float32), ys, xs) > 0.01
        surround = ~near
        if liver is not None:
            in_liver = _sample(liver[z].astype(np.float32), ys, xs) > 0.5
            if (surround & in_liver).sum() >= 8:
                surround &= in_liver
        for c in range(n_channels):
            patch = _sample(np.asarray(images[c, z], dtype=np.float32), ys, xs)
            values = patch[surround] if surround.sum() >= 8 else patch[~(mask_patch > 0.5)]
            reference = float(np.median(values)) if values.size else float(np.median(patch))
            if not reference > 1e-6:
                reference = max(float(np.abs(patch).mean()), 1e-6)
            references[index, c] = reference
            patches[index, c] = np.clip(patch / reference, 0.0, NORMALISED_MAX)
        patches[index, n_channels] = mask_patch
    return LesionPatches(patches=patches, slice_indices=tuple(slices), boxes=boxes, diameter_mm=diameter,
                         references=references)
