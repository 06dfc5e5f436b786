"""Where a study's liver lesions are outlined: a DICOM SEG among its series.

Two kinds of SEG mark lesions:

* **pacsnode's own** liver-segmentation output (Manufacturer "pacsnode",
  ManufacturerModelName "pacsnode liver segmentation"): one segment per
  lesion ("Liver lesion N"); its "Liver tumours" segment is every lesion
  together, not a lesion of its own;
* **a site's** SEG (a radiologist's ROIs, another product's output): every
  segment whose Segmented Property Type or label says tumour, lesion, mass,
  neoplasm, nodule, cyst, metastasis… is a lesion, except an all-lesions
  segment (plural label: "Tumours", "All lesions") when single-lesion
  segments are there too. A segment drawn around several separate lesions
  is split into its connected parts (parts closer than ``join_within_mm``
  stay one lesion).

When several lesion SEGs are in the study, pacsnode's own is taken, then the
newest (ContentDate/ContentTime), then the lowest SOPInstanceUID, so the same
study always gives the same choice; the log says why. The SEG's referenced
series (ReferencedSeriesSequence) is the series it was drawn on, and the
natural reference grid for :func:`lesion_masks`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import SegmentationStorage
from scipy import ndimage

from dicom_io.errors import DicomIOError
from dicom_io.identity import MANUFACTURER
from dicom_io.seg_reader import SegmentationOnGrid, read_segmentation
from dicom_io.volume import Volume
from inference.base import PipelineInputError, SeriesInput

log = logging.getLogger("pacsnode.liver")

#: ManufacturerModelName of the liver-segmentation pipeline's SEG (its AlgorithmInfo name).
PACSNODE_LIVER_SEGMENTATION = "pacsnode liver segmentation"
#: SNOMED CT Segmented Property Types that are a lesion: neoplasm, mass, lesion, cyst, nodule, metastatic
#: neoplasm, carcinoma, hepatocellular carcinoma, abscess (other types count when their meaning or the
#: segment label names a lesion).
LESION_TYPE_CODES = frozenset({"108369006", "4147007", "52988006", "441457006", "27925004", "14799000",
                               "68453008", "25370001", "44132006"})
LIVER_TYPE_CODE = "10200004"
_LESION_WORDS = re.compile(r"(?i)tumou?r|lesion|mass|neoplas|nodul|cyst|metasta|carcinoma|\bhcc\b|\bfnh\b|"
                           r"ha?emangioma|adenoma|abscess|malignan|cancer")
#: An all-lesions segment: "Liver tumours", "All lesions", "Metastases"…
_AGGREGATE_LABEL = re.compile(r"(?i)\b(all|total)\b|tumou?rs\b|lesions\b|masses\b|nodules\b|cysts\b|metastases\b|"
                              r"neoplasms\b")
_PACSNODE_LESION_LABEL = re.compile(r"^Liver lesion \d+$")
#: Parts of one segment closer than this (mm) are one lesion (a lesion cut by a vessel, a partial-volume gap).
DEFAULT_JOIN_WITHIN_MM = 3.0


class LesionSourceError(PipelineInputError):
    """A lesion SEG cannot be used: it references a series the study lacks, its segments are empty…"""


@dataclass(frozen=True)
class LesionSegment:
    """One segment of a SEG that outlines one lesion (or, for a site's SEG, possibly several)."""

    number: int
    label: str
    tracking_id: str | None
    tracking_uid: str | None


@dataclass(frozen=True)
class LesionSegmentation:
    """A SEG of the study that marks liver lesions, and the series it was drawn on."""

    dataset: Dataset
    path: Path | None
    origin: Literal["pacsnode", "site"]
    #: The study's series the SEG references (the series it was drawn on).
    referenced_series: SeriesInput
    lesions: tuple[LesionSegment, ...]
    #: The segment number of the whole liver, when the SEG has one.
    liver_segment: int | None
    #: Why this SEG was taken, for the log and the report.
    reason: str

    @property
    def referenced_series_uid(self) -> str:
        return self.referenced_series.series_uid

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)


@dataclass(frozen=True)
class LesionMask:
    """One lesion on a reference grid."""

    segment_number: int
    label: str
    #: bool ``[z, y, x]`` on the reference volume's grid.
    mask: np.ndarray
    tracking_uid: str | None = None
    #: 1-based part number when a site's segment held several separate lesions, else None.
    part: int | None = None


def _code_value(item: Dataset, keyword: str) -> tuple[str, str]:
    sequence = item.get(keyword)
    if not sequence:
        return "", ""
    code = sequence[0]
    return str(code.get("CodeValue", "") or ""), str(code.get("CodeMeaning", "") or "")


def _is_pacsnode_liver_seg(ds: Dataset) -> bool:
    return (str(ds.get("Manufacturer", "") or "") == MANUFACTURER
            and str(ds.get("ManufacturerModelName", "") or "") == PACSNODE_LIVER_SEGMENTATION)


def _classify_segments(ds: Dataset) -> tuple[list[LesionSegment], int | None]:
    """The lesion segments (all-lesion segments dropped when single ones exist) and the liver segment."""
    lesions: list[tuple[LesionSegment, bool]] = []
    liver: int | None = None
    pacsnode = _is_pacsnode_liver_seg(ds)
    for item in ds.get("SegmentSequence", []):
        number = int(item.SegmentNumber)
        label = str(item.get("SegmentLabel", "") or "")
        type_code, type_meaning = _code_value(item, "SegmentedPropertyTypeCodeSequence")
        if type_code == LIVER_TYPE_CODE or (not type_code and label.strip().lower() == "liver"):
            liver = liver if liver is not None else number
            continue
        segment = LesionSegment(number, label, str(item.get("TrackingID", "") or "") or None,
                                str(item.get("TrackingUID", "") or "") or None)
        if pacsnode:
            if _PACSNODE_LESION_LABEL.match(label):
                lesions.append((segment, False))
            continue
        if type_code in LESION_TYPE_CODES or _LESION_WORDS.search(label) or _LESION_WORDS.search(type_meaning):
            lesions.append((segment, bool(_AGGREGATE_LABEL.search(label))))
    singles = [segment for segment, aggregate in lesions if not aggregate]
    return (singles or [segment for segment, _ in lesions]), liver


def _content_moment(ds: Dataset) -> str:
    date = str(ds.get("ContentDate", "") or ds.get("SeriesDate", "") or "")
    time = str(ds.get("ContentTime", "") or ds.get("SeriesTime", "") or "")
    return f"{date:0<8}{time.replace(':', ''):0<13}"


def lesion_segmentation(dataset: Dataset, study_series: Sequence[SeriesInput], path: Path | None = None,
                        reason: str = "") -> LesionSegmentation:
    """*dataset* (a SEG) as a lesion source, its referenced series found among *study_series*.

    Raises :class:`LesionSourceError` when it is not a SEG, marks no lesion,
    or references no series of the study.
    """
    uid = str(dataset.get("SOPInstanceUID", "?"))
    if dataset.get("SOPClassUID") != SegmentationStorage:
        raise LesionSourceError(f"object {uid} is not a Segmentation (SOP class {dataset.get('SOPClassUID')})")
    lesions, liver = _classify_segments(dataset)
    if not lesions:
        labels = [str(item.get("SegmentLabel", "")) for item in dataset.get("SegmentSequence", [])]
        raise LesionSourceError(f"the SEG {uid} marks no lesion: none of its segments {labels} is a tumour, lesion, "
                                "mass, nodule or cyst by its Segmented Property Type or label")
    referenced = [str(item.SeriesInstanceUID) for item in dataset.get("ReferencedSeriesSequence", [])
                  if item.get("SeriesInstanceUID")]
    by_uid = {s.series_uid: s for s in study_series}
    found = [by_uid[r] for r in referenced if r in by_uid and by_uid[r].paths]
    if not found:
        described = ", ".join(f"{s.description or '(no description)'!r} #{s.number}" for s in study_series
                              if (s.modality or "").upper() != "SEG") or "(none)"
        raise LesionSourceError(
            f"the lesion SEG {uid} (series {dataset.get('SeriesNumber', '?')}, "
            f"{dataset.get('SeriesDescription', '')!r}) was drawn on series {', '.join(referenced) or '(none named)'}, "
            f"which is not in the study (series: {described}); send the SEG with the series it was drawn on")
    origin: Literal["pacsnode", "site"] = "pacsnode" if _is_pacsnode_liver_seg(dataset) else "site"
    return LesionSegmentation(dataset=dataset, path=path, origin=origin, referenced_series=found[0],
                              lesions=tuple(lesions), liver_segment=liver, reason=reason)


def _seg_headers(series: Sequence[SeriesInput]) -> list[tuple[Path, Dataset]]:
    headers = []
    for s in series:
        if (s.modality or "SEG").upper() != "SEG":
            continue
        for path in s.paths:
            try:
                ds = dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, EOFError, ValueError):
                continue
            if ds.get("SOPClassUID") == SegmentationStorage:
                headers.append((Path(path), ds))
    return headers


def find_lesion_segmentation(series: Sequence[SeriesInput]) -> LesionSegmentation | None:
    """The study's SEG that marks liver lesions, or None when it has none.

    pacsnode's own liver segmentation first, then the newest, then the lowest
    SOPInstanceUID. A lesion SEG whose referenced series is not in the study
    is passed over when another can be used, else it raises
    :class:`LesionSourceError`.
    """
    usable: list[tuple[bool, str, str, Path]] = []
    problems: list[LesionSourceError] = []
    for path, header in _seg_headers(series):
        if not _classify_segments(header)[0]:
            log.info("SEG marks no lesion; not a lesion source", extra={
                "sop_instance_uid": str(header.get("SOPInstanceUID", "")),
                "segments": len(header.get("SegmentSequence", []))})
            continue
        try:
            lesion_segmentation(header, series, path)
        except LesionSourceError as exc:
            problems.append(exc)
            log.warning("lesion SEG cannot be used", extra={"reason": str(exc)})
            continue
        usable.append((_is_pacsnode_liver_seg(header), _content_moment(header), str(header.SOPInstanceUID), path))
    if not usable:
        if problems:
            raise problems[0]
        return None
    # pacsnode's first, then the newest; ties by the lowest SOPInstanceUID (sorts are stable).
    usable.sort(key=lambda entry: entry[2])
    usable.sort(key=lambda entry: (entry[0], entry[1]), reverse=True)
    pacsnode, _, _, path = usable[0]
    why = "pacsnode's liver segmentation" if pacsnode else "a site's SEG marking lesions"
    if len(usable) > 1:
        why += (f", taken over {len(usable) - 1} other lesion SEG(s) as "
                f"{'pacsnode output' if pacsnode else 'the newest (ContentDate/ContentTime)'}")
    dataset = dcmread(path)
    result = lesion_segmentation(dataset, series, path, reason=why)
    log.info("lesion SEG found", extra={
        "sop_instance_uid": result.sop_instance_uid, "origin": result.origin, "lesion_segments": len(result.lesions),
        "referenced_series": result.referenced_series_uid, "reason": why})
    return result


def place_on_grid(seg: LesionSegmentation, reference: Volume) -> SegmentationOnGrid:
    """Every segment of *seg* on *reference*'s grid; read once and pass to :func:`lesion_masks` and
    :func:`liver_mask` (placing a SEG costs about a second on a full study)."""
    try:
        return read_segmentation(seg.dataset, reference, threshold=0.5)
    except DicomIOError as exc:
        raise LesionSourceError(f"the lesion SEG {seg.sop_instance_uid} cannot be placed on series "
                                f"{reference.series_uid}: {exc}") from exc


def _separate(mask: np.ndarray, spacing: Sequence[float], join_within_mm: float) -> list[np.ndarray]:
    """The separate lesions of one mask: connected parts, parts within *join_within_mm* joined."""
    reach = [int(join_within_mm / 2 // float(s)) for s in spacing]
    grown = mask
    if any(reach):
        grown = ndimage.binary_dilation(mask, structure=np.ones([2 * r + 1 for r in reach], dtype=bool))
    labels, count = ndimage.label(grown, structure=np.ones((3, 3, 3), dtype=bool))
    return [mask & (labels == k) for k in range(1, count + 1)]


def lesion_masks(seg: LesionSegmentation, reference: Volume, *, join_within_mm: float = DEFAULT_JOIN_WITHIN_MM,
                 placed: SegmentationOnGrid | None = None) -> list[LesionMask]:
    """Each lesion of *seg* as a boolean mask on *reference*'s grid, in segment order.

    A site's segment holding several separate lesions gives one mask per
    lesion. Raises :class:`LesionSourceError` when the SEG cannot be placed
    on *reference* or a lesion segment is empty there.
    """
    placed = placed or place_on_grid(seg, reference)
    masks: list[LesionMask] = []
    for lesion in seg.lesions:
        mask = np.asarray(placed.masks[lesion.number], dtype=bool)
        if not mask.any():
            raise LesionSourceError(
                f"segment {lesion.number} ({lesion.label!r}) of the lesion SEG {seg.sop_instance_uid} is empty on "
                f"series {reference.series_uid}: the SEG has no voxels of it there (empty segment, or drawn outside "
                "the series' volume)")
        parts = [mask] if seg.origin == "pacsnode" else _separate(mask, reference.spacing, join_within_mm)
        if len(parts) == 1:
            masks.append(LesionMask(lesion.number, lesion.label, mask, lesion.tracking_uid))
            continue
        log.info("one SEG segment holds several lesions; split", extra={
            "segment_number": lesion.number, "lesions": len(parts), "join_within_mm": join_within_mm})
        masks.extend(LesionMask(lesion.number, f"{lesion.label} ({k} of {len(parts)})", part, lesion.tracking_uid, k)
                     for k, part in enumerate(parts, start=1))
    return masks


def liver_mask(seg: LesionSegmentation, reference: Volume,
               placed: SegmentationOnGrid | None = None) -> np.ndarray | None:
    """The SEG's liver segment on *reference*'s grid (bool ``[z, y, x]``), or None when it has none."""
    if seg.liver_segment is None:
        return None
    return np.asarray((placed or place_on_grid(seg, reference)).masks[seg.liver_segment], dtype=bool)
