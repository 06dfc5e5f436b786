"""Binary DICOM Segmentations (SEG) of a source series, built with highdicom.

One segment per structure (liver, each tumour, hypoperfused region, core),
each with a coded category and type, a tracking identifier the SR refers to,
and the algorithm that produced it. The SEG shares the source's Frame of
Reference and references each source slice per frame (Derivation Image
Sequence) and the source series (ReferencedSeriesSequence), which OHIF and
Weasis need to place it. Empty frames are kept (viewers have misplaced
segments with gaps otherwise) unless the object would grow beyond
:data:`MAX_BYTES_WITH_EMPTY_FRAMES`.

Codes: categories and types come from DICOM CID 7150/7151/7159 (SNOMED CT).
The perfusion regions, which CID 7159 does not list, use SNOMED CT
"Ischemia" (52674009) for the hypoperfused region and "Infarct" (55641003)
for the core, both "Morphologically Abnormal Structure"; the segment label
says how each was thresholded.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from dicom_io.errors import WriterError
from dicom_io.identity import (
    AlgorithmInfo,
    NodeIdentity,
    copy_patient_and_study,
    fit_lo,
)
from dicom_io.source_images import (
    check_series_description,
    check_series_number,
    check_source_series,
)

logger = logging.getLogger(__name__)

#: Above this size of pixel data (bytes), empty frames are omitted to keep the SEG storable and viewable.
MAX_BYTES_WITH_EMPTY_FRAMES = 256 * 1024 * 1024

#: SNOMED CT "Ischemia": the hypoperfused region (e.g. Tmax > 6 s).
ISCHEMIA = Code("52674009", "SCT", "Ischemia")
#: SNOMED CT "Infarct": the ischaemic core.
INFARCT = Code("55641003", "SCT", "Infarct")

_LABEL_MAX = 64


@dataclass(frozen=True)
class SegmentSpec:
    """What one segment is: label, codes, tracking identity and display colour.

    ``category`` and ``type`` are the Segmented Property Category and Type
    (CID 7150 / 7151 family). ``tracking_id`` is a short human-readable
    identifier ("Lesion 3"); ``tracking_uid`` a UID that follows the finding
    across objects (the SR measurement group reuses both). ``colour`` is the
    recommended display colour as sRGB 0-255.
    """

    label: str
    category: Code
    type: Code
    tracking_id: str | None = None
    tracking_uid: str | None = None
    anatomic_region: Code | None = None
    colour: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not self.label.strip() or len(self.label) > _LABEL_MAX:
            raise WriterError(f"Segment label must be 1 to {_LABEL_MAX} characters, got {self.label!r}")
        for name in ("category", "type"):
            if not isinstance(getattr(self, name), (Code, hd.sr.CodedConcept)):
                raise WriterError(f"Segment {self.label!r}: {name} must be a coded concept (pydicom Code)")
        if self.anatomic_region is not None and not isinstance(self.anatomic_region, (Code, hd.sr.CodedConcept)):
            raise WriterError(f"Segment {self.label!r}: anatomic_region must be a coded concept")
        if self.tracking_id is not None and (not self.tracking_id.strip() or len(self.tracking_id) > _LABEL_MAX):
            raise WriterError(f"Segment {self.label!r}: tracking_id must be 1 to {_LABEL_MAX} characters")
        if self.tracking_uid is not None and not _is_uid(self.tracking_uid):
            raise WriterError(f"Segment {self.label!r}: tracking_uid {self.tracking_uid!r} is not a valid UID")
        if self.colour is not None and (
            len(self.colour) != 3 or any(not 0 <= int(c) <= 255 for c in self.colour)
        ):
            raise WriterError(f"Segment {self.label!r}: colour must be three 0-255 values, got {self.colour!r}")


def liver_segment(tracking_uid: str | None = None) -> SegmentSpec:
    """The whole liver: Anatomical Structure / Liver."""
    return SegmentSpec(
        label="Liver",
        category=codes.SCT.AnatomicalStructure,
        type=codes.SCT.Liver,
        tracking_id="Liver",
        tracking_uid=tracking_uid,
        colour=(221, 130, 101),
    )


def tumour_segment(number: int | None = None, tracking_uid: str | None = None) -> SegmentSpec:
    """A liver tumour (``number`` given: one lesion; ``None``: all tumours together)."""
    label = "Liver tumours" if number is None else f"Liver lesion {number}"
    return SegmentSpec(
        label=label,
        category=codes.SCT.MorphologicallyAbnormalStructure,
        type=codes.SCT.Neoplasm,
        tracking_id=label,
        tracking_uid=tracking_uid,
        anatomic_region=codes.SCT.Liver,
        colour=(255, 215, 0),
    )


def hypoperfusion_segment(tmax_threshold_s: float = 6.0, tracking_uid: str | None = None) -> SegmentSpec:
    """The hypoperfused region, Tmax above ``tmax_threshold_s`` seconds."""
    label = f"Hypoperfusion Tmax > {tmax_threshold_s:g} s"
    return SegmentSpec(
        label=label,
        category=codes.SCT.MorphologicallyAbnormalStructure,
        type=ISCHEMIA,
        tracking_id=label,
        tracking_uid=tracking_uid,
        anatomic_region=codes.SCT.Brain,
        colour=(0, 200, 0),
    )


def core_segment(criterion: str = "rCBF < 30%", tracking_uid: str | None = None) -> SegmentSpec:
    """The ischaemic core; ``criterion`` says how it was defined (goes into the label)."""
    label = f"Ischemic core {criterion}"
    return SegmentSpec(
        label=label,
        category=codes.SCT.MorphologicallyAbnormalStructure,
        type=INFARCT,
        tracking_id=label,
        tracking_uid=tracking_uid,
        anatomic_region=codes.SCT.Brain,
        colour=(220, 0, 0),
    )


class SegmentationWriter:
    """Builds BINARY SEG objects for one node identity.

    A writer holds no per-study state: one instance can serve every pipeline run.
    """

    def __init__(self, node: NodeIdentity | None = None,
                 max_bytes_with_empty_frames: int = MAX_BYTES_WITH_EMPTY_FRAMES) -> None:
        self.node = node or NodeIdentity()
        self.max_bytes_with_empty_frames = max_bytes_with_empty_frames

    def write(
        self,
        source_images: Sequence[Dataset],
        masks: Mapping[SegmentSpec, np.ndarray],
        algorithm: AlgorithmInfo,
        series_number: int,
        series_description: str,
        *,
        content_label: str = "SEGMENTATION",
        content_description: str | None = None,
        instance_number: int = 1,
    ) -> hd.seg.Segmentation:
        """A SEG with one segment per entry of ``masks``, numbered in mapping order from 1.

        ``masks`` maps each :class:`SegmentSpec` to a boolean ``(z, y, x)``
        array aligned with ``source_images`` (the slices of one series, in
        slice order). Raises :class:`WriterError` on any inconsistency.
        """
        source = check_source_series(source_images)
        series_number = check_series_number(series_number)
        series_description = check_series_description(series_description)
        if not isinstance(algorithm, AlgorithmInfo):
            raise WriterError(f"algorithm must be an AlgorithmInfo, got {type(algorithm).__name__}")
        if not isinstance(masks, Mapping) or not masks:
            raise WriterError("masks must be a non-empty mapping of SegmentSpec to (z, y, x) boolean arrays")
        _check_content_label(content_label)

        specs = list(masks)
        labels: set[str] = set()
        tracking: set[str] = set()
        stack = np.zeros((*source.shape, len(specs)), dtype=bool)
        for index, spec in enumerate(specs):
            if not isinstance(spec, SegmentSpec):
                raise WriterError(f"Segment key {index} is a {type(spec).__name__}, not a SegmentSpec")
            if spec.label in labels:
                raise WriterError(f"Two segments are labelled {spec.label!r}; labels must be unique")
            labels.add(spec.label)
            for ident in (spec.tracking_id, spec.tracking_uid):
                if ident is not None:
                    if ident in tracking:
                        raise WriterError(f"Segment {spec.label!r}: tracking identifier {ident!r} is used twice")
                    tracking.add(ident)
            mask = masks[spec]
            source.check_array(mask, f"Mask of segment {spec.label!r}")
            stack[..., index] = _as_binary(mask, spec.label)

        algorithm_id = algorithm.segmentation_identification()
        descriptions = [
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=spec.label,
                segmented_property_category=spec.category,
                segmented_property_type=spec.type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm_id,
                # TrackingID and TrackingUID come as a pair: fill the missing one.
                tracking_id=spec.tracking_id or spec.label,
                tracking_uid=spec.tracking_uid or generate_uid(),
                anatomic_regions=[spec.anatomic_region] if spec.anatomic_region is not None else None,
                display_color=hd.color.CIELabColor.from_rgb(*spec.colour) if spec.colour else None,
            )
            for number, spec in enumerate(specs, start=1)
        ]

        frame_bytes = (source.rows * source.columns + 7) // 8
        keep_empty = stack.shape[0] * len(specs) * frame_bytes <= self.max_bytes_with_empty_frames
        if not keep_empty:
            logger.warning(
                "SEG of %d slices x %d segments exceeds %d bytes with empty frames; omitting empty frames",
                stack.shape[0], len(specs), self.max_bytes_with_empty_frames,
            )
        try:
            seg = hd.seg.Segmentation(
                source_images=list(source.images),
                pixel_array=stack,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions,
                series_instance_uid=generate_uid(),
                series_number=series_number,
                sop_instance_uid=generate_uid(),
                instance_number=instance_number,
                omit_empty_frames=not keep_empty,
                content_label=content_label,
                content_description=fit_lo(content_description or f"{algorithm.label} segmentation"),
                series_description=series_description,
                **self.node.equipment_kwargs(algorithm),
            )
        except (ValueError, TypeError) as exc:
            raise WriterError(f"{source.label}: highdicom refused the segmentation: {exc}") from exc
        copy_patient_and_study(source.first, seg)
        logger.info(
            "Built SEG %r (series %d): %d segments over %d slices, %d frames",
            series_description, series_number, len(specs), source.slice_count, int(seg.NumberOfFrames),
        )
        return seg


def write_segmentation(
    source_images: Sequence[Dataset],
    masks: Mapping[SegmentSpec, np.ndarray],
    algorithm: AlgorithmInfo,
    series_number: int,
    series_description: str,
    *,
    node: NodeIdentity | None = None,
    **kwargs: object,
) -> hd.seg.Segmentation:
    """Shortcut for ``SegmentationWriter(node).write(...)``."""
    return SegmentationWriter(node).write(
        source_images, masks, algorithm, series_number, series_description, **kwargs  # type: ignore[arg-type]
    )


def _is_uid(value: object) -> bool:
    return isinstance(value, str) and len(value) <= 64 and re.fullmatch(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*", value) is not None


def _as_binary(mask: np.ndarray, label: str) -> np.ndarray:
    if mask.dtype == bool:
        return mask
    if np.issubdtype(mask.dtype, np.integer):
        if mask.size and (mask.min() < 0 or mask.max() > 1):
            raise WriterError(
                f"Mask of segment {label!r} has values other than 0 and 1 "
                f"({int(mask.min())}..{int(mask.max())}); give one boolean mask per segment"
            )
        return mask.astype(bool)
    raise WriterError(f"Mask of segment {label!r} has dtype {mask.dtype}; a binary SEG needs bool (or 0/1 integers)")


def _check_content_label(content_label: str) -> None:
    """ContentLabel is a CS: at most 16 of A-Z, 0-9, space and underscore."""
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _")
    if not content_label or len(content_label) > 16 or not set(content_label) <= allowed:
        raise WriterError(
            f"content_label {content_label!r} must be 1 to 16 upper-case letters, digits, spaces or underscores"
        )
