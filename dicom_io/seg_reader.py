"""DICOM Segmentations (SEG) read back onto the voxel grid of a reference volume.

A SEG arrives from elsewhere (a site's ground-truth labels, a radiologist's
lesion outlines, the node's own earlier output) and must be laid over a
series the node has read as a :class:`~dicom_io.volume.Volume`. Two ways, in
this order:

* **by source instance**: when the SEG's frames reference the reference
  volume's instances (Derivation Image Sequence, as every SEG derived from
  that series does), each segment's frames are placed on the slices they
  were derived from, via highdicom (missing frames are empty);
* **by plane position**: otherwise (the SEG was drawn on another series of
  the same study, e.g. another DCE phase) the segment volumes are built from
  the frames' ImagePositionPatient and resampled onto the reference grid
  (nearest neighbour for BINARY, linear for FRACTIONAL), which needs a shared
  Frame of Reference.

BINARY segments come back as boolean masks, FRACTIONAL ones as float32 in
[0, 1] (or boolean with ``threshold``). Segment metadata (label, property
category and type, tracking identifiers, anatomic region) comes with them.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import highdicom as hd
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import SegmentationStorage

from dicom_io.errors import DicomIOError, FrameOfReferenceMismatchError
from dicom_io.volume import Volume

log = logging.getLogger("pacsnode.dicom_io")


class SegmentationReadError(DicomIOError):
    """A SEG cannot be read, or cannot be placed on the reference volume."""


@dataclass(frozen=True)
class SegmentInfo:
    """What the SEG says one segment is."""

    number: int
    label: str
    category: Code
    type: Code
    tracking_id: str | None
    tracking_uid: str | None
    anatomic_regions: tuple[Code, ...]
    algorithm_type: str


@dataclass(frozen=True)
class SegmentationOnGrid:
    """The segments of a SEG as ``(z, y, x)`` arrays on a reference volume's grid."""

    #: Segment number → mask (bool, or float32 in [0, 1] for an unthresholded FRACTIONAL SEG).
    masks: Mapping[int, np.ndarray]
    segments: Mapping[int, SegmentInfo]
    segmentation_type: Literal["BINARY", "FRACTIONAL"]
    #: How the frames were placed: "source instances" or "plane positions".
    placed_by: str
    sop_instance_uid: str

    def find(self, *, type: Code | None = None, label: str | None = None) -> list[int]:
        """Segment numbers whose property type equals *type* and/or whose label matches regex *label*."""
        found = []
        for number, info in self.segments.items():
            if type is not None and (info.type.value, info.type.scheme_designator) != (
                    type.value, type.scheme_designator):
                continue
            if label is not None and not re.search(label, info.label):
                continue
            found.append(number)
        return found

    def label_map(self, labels: Mapping[int, int], dtype: type | np.dtype = np.uint8,
                  threshold: float = 0.5) -> np.ndarray:
        """One integer array: ``labels[segment_number]`` where that segment is set, else 0.

        Segments are painted in the order of *labels*, so a later one wins
        where they overlap (list the liver before its tumours).
        """
        shape = next(iter(self.masks.values())).shape
        out = np.zeros(shape, dtype=dtype)
        for number, value in labels.items():
            if number not in self.masks:
                raise KeyError(f"segment {number} is not in the SEG (segments {sorted(self.masks)})")
            mask = self.masks[number]
            out[mask if mask.dtype == bool else mask >= threshold] = value
        return out


def _plain(concept: hd.sr.CodedConcept | Code) -> Code:
    return Code(str(concept.value), str(concept.scheme_designator), str(concept.meaning))


def _segment_info(description: hd.seg.SegmentDescription) -> SegmentInfo:
    regions = tuple(_plain(c) for c in (description.anatomic_regions or ()))
    return SegmentInfo(
        number=int(description.segment_number),
        label=str(description.segment_label),
        category=_plain(description.segmented_property_category),
        type=_plain(description.segmented_property_type),
        tracking_id=str(description.tracking_id) if description.tracking_id else None,
        tracking_uid=str(description.tracking_uid) if description.tracking_uid else None,
        anatomic_regions=regions,
        algorithm_type=str(description.algorithm_type.value if hasattr(description.algorithm_type, "value")
                           else description.algorithm_type),
    )


def _load(seg: str | os.PathLike[str] | Dataset) -> hd.seg.Segmentation:
    try:
        dataset = seg if isinstance(seg, Dataset) else dcmread(seg)
    except (OSError, ValueError, EOFError) as exc:
        raise SegmentationReadError(f"the SEG {seg} cannot be read: {exc}") from exc
    if dataset.get("SOPClassUID") != SegmentationStorage:
        raise SegmentationReadError(
            f"object {dataset.get('SOPInstanceUID', '?')} is not a Segmentation (SOP class "
            f"{dataset.get('SOPClassUID', 'missing')})")
    if isinstance(dataset, hd.seg.Segmentation):
        return dataset
    try:
        return hd.seg.Segmentation.from_dataset(dataset, copy=False)
    except (ValueError, AttributeError, KeyError, TypeError) as exc:
        raise SegmentationReadError(f"the SEG {dataset.get('SOPInstanceUID', '?')} is malformed: {exc}") from exc


def _referenced_instances(seg: hd.seg.Segmentation) -> set[str]:
    return {uid for _, _, uid in seg.get_source_image_uids()}


def _by_source_instances(seg: hd.seg.Segmentation, reference: Volume, numbers: list[int],
                         fractional: bool) -> dict[int, np.ndarray] | None:
    """Masks placed by the reference's source instances, or None when the SEG does not reference them."""
    refs = reference.source_refs
    if not refs:
        return None
    referenced = _referenced_instances(seg)
    if not all(ref.sop_instance_uid in referenced for ref in refs):
        return None
    dtype = np.float32 if fractional else np.uint8
    multi_frame = any(ref.frame_number is not None for ref in refs)
    try:
        if not multi_frame:
            pixels = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=[ref.sop_instance_uid for ref in refs], segment_numbers=numbers,
                combine_segments=False, rescale_fractional=True, dtype=dtype)
        else:
            planes = []
            for ref in refs:
                planes.append(seg.get_pixels_by_source_frame(
                    source_sop_instance_uid=ref.sop_instance_uid, source_frame_numbers=[ref.frame_number or 1],
                    segment_numbers=numbers, combine_segments=False, rescale_fractional=True, dtype=dtype)[0])
            pixels = np.stack(planes)
    except (ValueError, KeyError, RuntimeError) as exc:
        log.debug("SEG frames cannot be placed by source instance (%s); trying plane positions", exc)
        return None
    if pixels.shape[1:3] != reference.grid_shape[1:]:
        return None
    return {number: pixels[..., k] for k, number in enumerate(numbers)}


def _by_plane_positions(seg: hd.seg.Segmentation, reference: Volume, numbers: list[int],
                        fractional: bool) -> dict[int, np.ndarray]:
    """Masks built from the frames' plane positions and resampled onto the reference grid."""
    from dicom_io.study import resample_to

    seg_frame = str(seg.get("FrameOfReferenceUID", "") or "") or None
    if seg_frame and reference.frame_of_reference_uid and seg_frame != reference.frame_of_reference_uid:
        raise FrameOfReferenceMismatchError(
            f"the SEG {seg.SOPInstanceUID} is in frame of reference {seg_frame}, the reference series "
            f"{reference.series_uid} in {reference.frame_of_reference_uid}: its segments cannot be placed")
    try:
        volume = seg.get_volume(segment_numbers=numbers, combine_segments=False, rescale_fractional=True,
                                dtype=np.float32 if fractional else np.uint8, allow_missing_positions=True)
    except (ValueError, RuntimeError) as exc:
        raise SegmentationReadError(
            f"the SEG {seg.SOPInstanceUID} references none of the reference series' instances and its frames do "
            f"not form a regular volume ({exc}), so it cannot be placed on the reference grid") from exc
    affine = np.asarray(volume.affine, dtype=np.float64)
    # highdicom's affine maps (slice, row, column) indices; dicom_io's direction columns are x, y, z.
    columns = affine[:3, :3]
    spacing_zyx = tuple(float(np.linalg.norm(columns[:, k])) for k in range(3))
    direction = np.stack([columns[:, 2] / spacing_zyx[2], columns[:, 1] / spacing_zyx[1],
                          columns[:, 0] / spacing_zyx[0]], axis=1)
    array = np.asarray(volume.array)
    if array.ndim == 3:
        array = array[..., np.newaxis]
    masks = {}
    for k, number in enumerate(numbers):
        own = Volume(array=np.ascontiguousarray(array[..., k]), spacing=spacing_zyx,
                     origin=tuple(affine[:3, 3]), direction=direction, frame_of_reference_uid=seg_frame)
        placed = resample_to(own, reference, "linear" if fractional else "nearest",
                             allow_other_frame_of_reference=True)
        masks[number] = placed.array
    return masks


def read_segmentation(seg: str | os.PathLike[str] | Dataset, reference: Volume, *,
                      threshold: float | None = None) -> SegmentationOnGrid:
    """The segments of *seg* on *reference*'s grid (see the module docstring for how frames are placed).

    ``threshold``: a FRACTIONAL SEG's values at or above it become True
    (None keeps the fractions). Raises :class:`SegmentationReadError` or
    :class:`~dicom_io.errors.FrameOfReferenceMismatchError` when the SEG
    cannot be placed.
    """
    segmentation = _load(seg)
    kind = str(segmentation.SegmentationType).upper()
    if kind not in ("BINARY", "FRACTIONAL"):
        raise SegmentationReadError(f"SegmentationType {kind!r} of SEG {segmentation.SOPInstanceUID} is not "
                                    "supported (BINARY or FRACTIONAL)")
    fractional = kind == "FRACTIONAL"
    infos = {int(d.segment_number): _segment_info(d) for d in segmentation.SegmentSequence}
    numbers = sorted(infos)
    if not numbers:
        raise SegmentationReadError(f"the SEG {segmentation.SOPInstanceUID} has no segments")
    masks = _by_source_instances(segmentation, reference, numbers, fractional)
    placed_by = "source instances"
    if masks is None:
        masks = _by_plane_positions(segmentation, reference, numbers, fractional)
        placed_by = "plane positions"
    result: dict[int, np.ndarray] = {}
    for number, mask in masks.items():
        if fractional:
            values = np.clip(mask.astype(np.float32), 0.0, 1.0)
            result[number] = values >= threshold if threshold is not None else values
        else:
            result[number] = mask.astype(bool)
    log.info("SEG read onto reference grid", extra={
        "sop_instance_uid": str(segmentation.SOPInstanceUID), "segments": len(numbers), "placed_by": placed_by,
        "segmentation_type": kind})
    return SegmentationOnGrid(masks=result, segments=infos, segmentation_type=kind,  # type: ignore[arg-type]
                              placed_by=placed_by, sop_instance_uid=str(segmentation.SOPInstanceUID))
