"""Scoring liver segmentations against ground truth: overlap, surface distance and lesion detection.

The metrics are seed 002's and LiTS's:

* per class — **liver** (liver ∪ tumour: the organ, tumours included, as in
  LiTS) and **tumour** — Dice, IoU (Jaccard), HD95 (mm: the larger of the two
  directed 95th-percentile surface distances, MONAI's convention, computed
  with SimpleITK distance maps and the voxel spacing), precision and recall.
  When both masks are empty Dice, IoU, precision and recall are undefined (NaN)
  and left out of case means; HD95 is NaN when either is empty;
* per lesion — a true lesion is **detected** when a predicted tumour component
  overlaps it with Dice > 0.1 or has its centre inside it; a predicted
  component touching no true lesion is a **false positive**. Sensitivity is
  reported over all lesions and over lesions with a longest diameter ≥ 10 mm
  (the issue's target), with false positives per case, and per size band.
* per lesion, when the model's input images are given — its **conspicuity**:
  the largest, over the input channels, of |mean inside − mean of the liver
  2–3 voxels around it| / standard deviation of that liver. A lesion under
  :data:`CONSPICUOUS_CNR` barely differs from the liver around it in every
  image the model sees (an FNH or a filled-in haemangioma on portal-venous
  CT); the "conspicuous" sensitivity separates what the images do not show
  from what the model misses. The **tumour Dice ceiling** of a case is the
  Dice of a model that outlines every conspicuous lesion voxel for voxel and
  nothing else (a lesion whose conspicuity could not be measured counts as not
  conspicuous, as in the sensitivity); its case mean is the most a model that
  finds only what the images show can score, and a case whose only lesions
  the images do not show holds it at 0. The **tumour Dice on conspicuous
  lesions** scores the model against that same truth: the voxels of the
  lesions the images do not show are set aside (neither found nor missed,
  whatever the model marks there), as a reader-drawn truth, which holds only
  what the reader saw, would leave them; a case whose lesions are all hidden
  has no such truth and is left out of its case mean.
* per lesion kind, when the truth names them (the phantom's lesions do: cyst,
  haemangioma, FNH, …) — sensitivity over all lesions and over lesions ≥ 10 mm
  of each kind, so a model that reads hyper-enhancing lesions as vessels, say,
  shows it.

:func:`evaluate_on_phantoms` runs a model on held-out simulator seeds
(disjoint from the training seeds, see :mod:`inference.liver.training`) and
returns a JSON-able report.

Research use only; not a medical device.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from inference.liver import postprocess as post

logger = logging.getLogger("pacsnode.inference.liver")

#: Lesions at least this long (mm) count towards the "≥ 10 mm" sensitivity.
LARGE_LESION_MM = 10.0
#: Contrast-to-noise ratio below which a lesion counts as not conspicuous in the model's input.
CONSPICUOUS_CNR = 1.0
#: Size bands (mm, longest diameter) of the per-size detection and delineation figures.
SIZE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("under 10 mm", 0.0, 10.0), ("10-20 mm", 10.0, 20.0), ("20 mm and over", 20.0, float("inf")),
)
#: A predicted component detects a true lesion above this Dice (or with its centre inside).
DETECTION_DICE = 0.1
#: Held-out evaluation seeds: 0 … 99 (training uses seeds from 1000 on).
EVALUATION_SEEDS = range(100)


# --------------------------------------------------------------------------- voxel metrics


def _counts(pred: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    tp = int(np.count_nonzero(pred & truth))
    return tp, int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(truth)) - tp


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    tp, fp, fn = _counts(np.asarray(pred, bool), np.asarray(truth, bool))
    return _ratio(2 * tp, 2 * tp + fp + fn)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    tp, fp, fn = _counts(np.asarray(pred, bool), np.asarray(truth, bool))
    return _ratio(tp, tp + fp + fn)


def _surface_distances(source: np.ndarray, target: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Distances (mm) from each surface voxel of *source* to the surface of *target*."""
    xyz = tuple(float(s) for s in reversed(tuple(spacing)))
    src = sitk.GetImageFromArray(source.astype(np.uint8))
    src.SetSpacing(xyz)
    tgt = sitk.GetImageFromArray(target.astype(np.uint8))
    tgt.SetSpacing(xyz)
    # A mask that fills the image has no contour (the image edge is not one): its voxels stand in
    # for the source's surface, and every source voxel lies in such a target (distance 0).
    surface = sitk.GetArrayFromImage(sitk.LabelContour(src)).astype(bool)
    if not surface.any():
        surface = source
    target_contour = sitk.LabelContour(tgt)
    if not sitk.GetArrayViewFromImage(target_contour).any():
        return np.zeros(int(surface.sum()))
    # Distance to the nearest contour voxel centre of the target (zero on the contour itself).
    contour_distance = sitk.SignedMaurerDistanceMap(target_contour, insideIsPositive=False,
                                                    squaredDistance=False, useImageSpacing=True)
    return np.abs(sitk.GetArrayFromImage(contour_distance))[surface]


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance (mm); NaN when either mask is empty."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if not pred.any() or not truth.any():
        return float("nan")
    forward = _surface_distances(pred, truth, spacing)
    backward = _surface_distances(truth, pred, spacing)
    return float(max(np.percentile(forward, 95), np.percentile(backward, 95)))


def mask_metrics(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Dice, IoU, HD95 (mm), precision, recall and the voxel counts of one binary mask pair."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    tp, fp, fn = _counts(pred, truth)
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "hd95_mm": hd95(pred, truth, spacing),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def class_masks(labels: np.ndarray) -> dict[str, np.ndarray]:
    """The evaluated masks of a 0/1/2 label array: liver (with its tumours) and tumour."""
    labels = np.asarray(labels)
    return {"liver": labels > 0, "tumour": labels == post.TUMOUR}


def segmentation_metrics(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float]) -> dict[str, dict[str, float]]:
    """Per-class :func:`mask_metrics` of two 0/1/2 label arrays on the same grid."""
    if np.shape(pred) != np.shape(truth):
        raise ValueError(f"prediction {np.shape(pred)} and truth {np.shape(truth)} are not on the same grid")
    p, t = class_masks(pred), class_masks(truth)
    return {name: mask_metrics(p[name], t[name], spacing) for name in p}


# --------------------------------------------------------------------------- lesion detection


@dataclass(frozen=True)
class LesionMatch:
    """Detection result of one true lesion."""

    index: int
    longest_diameter_mm: float
    detected: bool
    best_dice: float
    #: Largest contrast-to-noise ratio over the model's input channels; None when not measured.
    contrast_to_noise: float | None = None
    #: The lesion's kind (e.g. "hemangioma") when the truth names it; None otherwise.
    kind: str | None = None


def lesion_contrast_to_noise(images: np.ndarray, truth_labels: np.ndarray,
                             truth_lesion_labels: np.ndarray) -> dict[int, float]:
    """Each true lesion's conspicuity in *images* ``[P, z, y, x]`` (module docstring), by lesion index.

    The ring is the liver (label 1) two to three voxels from the lesion: the
    voxels touching it are left out, so partial-volume edge voxels do not
    count as liver. A lesion with no liver around it is left out (not measured).
    """
    from scipy import ndimage

    images = np.asarray(images, np.float32)
    if images.ndim == 3:
        images = images[None]
    liver = np.asarray(truth_labels) == 1
    lesions = np.asarray(truth_lesion_labels)
    out: dict[int, float] = {}
    for index, box in enumerate(ndimage.find_objects(lesions), start=1):
        if box is None:
            continue
        grown = tuple(slice(max(b.start - 3, 0), b.stop + 3) for b in box)
        mask = lesions[grown] == index
        near = ndimage.binary_dilation(mask, iterations=3) & ~ndimage.binary_dilation(mask, iterations=1)
        ring = near & liver[grown]
        if not ring.any():
            continue
        values = []
        for channel in images:
            crop = channel[grown]
            spread = float(crop[ring].std())
            values.append(abs(float(crop[mask].mean() - crop[ring].mean())) / spread if spread > 0 else float("inf"))
        out[index] = max(values)
    return out


def _conspicuous(contrast_to_noise: float | None) -> bool:
    """Whether a lesion of this conspicuity counts as shown; an unmeasured one (None) does not."""
    return (contrast_to_noise or 0.0) >= CONSPICUOUS_CNR


def tumour_dice_ceiling(truth_labels: np.ndarray, truth_lesion_labels: np.ndarray,
                        contrast_to_noise: Mapping[int, float]) -> float | None:
    """The tumour Dice of outlining exactly the conspicuous true lesions (module docstring); None without tumour.

    *contrast_to_noise* is :func:`lesion_contrast_to_noise`'s result for the case.
    """
    tumour = np.asarray(truth_labels) == post.TUMOUR
    total = int(np.count_nonzero(tumour))
    if total == 0:
        return None
    lesions = np.asarray(truth_lesion_labels)
    shown = int(np.count_nonzero(tumour & ~np.isin(lesions, _hidden_lesions(tumour, lesions, contrast_to_noise))))
    return 2.0 * shown / (shown + total)


def tumour_dice_on_conspicuous(pred_labels: np.ndarray, truth_labels: np.ndarray, truth_lesion_labels: np.ndarray,
                               contrast_to_noise: Mapping[int, float]) -> float | None:
    """The tumour Dice with the voxels of the hidden true lesions set aside (module docstring).

    None when the truth has no conspicuous lesion.
    """
    truth = np.asarray(truth_labels) == post.TUMOUR
    lesions = np.asarray(truth_lesion_labels)
    scored = ~np.isin(lesions, _hidden_lesions(truth, lesions, contrast_to_noise))
    if not (truth & scored).any():
        return None
    return dice((np.asarray(pred_labels) == post.TUMOUR) & scored, truth & scored)


def _hidden_lesions(tumour: np.ndarray, lesions: np.ndarray, contrast_to_noise: Mapping[int, float]) -> list[int]:
    """The indices of the true lesions (inside *tumour*) that do not count as conspicuous."""
    return [i for i in np.unique(lesions[tumour]).tolist() if i > 0 and not _conspicuous(contrast_to_noise.get(i))]


def lesion_detection(
    pred_lesion_labels: np.ndarray,
    truth_lesion_labels: np.ndarray,
    truth_diameters_mm: Mapping[int, float],
    contrast_to_noise: Mapping[int, float] | None = None,
    kinds: Mapping[int, str] | None = None,
) -> tuple[list[LesionMatch], int]:
    """Match predicted lesion components to true lesions: (one match per true lesion, false positives).

    *pred_lesion_labels* / *truth_lesion_labels*: int arrays, 0 outside lesions,
    the lesion's index inside; *truth_diameters_mm*: each true lesion's longest
    diameter. Detection rule: Dice > :data:`DETECTION_DICE`, or the predicted
    component's centroid (rounded to a voxel) inside the true lesion.
    """
    pred = np.asarray(pred_lesion_labels)
    truth = np.asarray(truth_lesion_labels)
    n_pred = int(pred.max()) if pred.size else 0
    pred_sizes = np.bincount(pred.ravel(), minlength=n_pred + 1)
    centres: dict[int, tuple[int, ...]] = {}
    for p in range(1, n_pred + 1):
        coords = np.argwhere(pred == p)
        if len(coords):
            centres[p] = tuple(int(round(c)) for c in coords.mean(axis=0))
    matches = []
    touched: set[int] = set()
    for index in sorted(int(i) for i in np.unique(truth) if i > 0):
        member = truth == index
        size = int(np.count_nonzero(member))
        overlapping = np.bincount(pred[member].ravel(), minlength=n_pred + 1)
        best = 0.0
        detected = False
        for p in range(1, n_pred + 1):
            centre_inside = p in centres and bool(member[centres[p]])
            if overlapping[p] == 0 and not centre_inside:
                continue
            touched.add(p)
            d = float(2.0 * overlapping[p] / (size + pred_sizes[p]))
            best = max(best, d)
            detected = detected or d > DETECTION_DICE or centre_inside
        diameter = float(truth_diameters_mm.get(index, float("nan")))
        cnr = None if contrast_to_noise is None else contrast_to_noise.get(index)
        matches.append(LesionMatch(index=index, longest_diameter_mm=diameter, detected=detected, best_dice=best,
                                   contrast_to_noise=None if cnr is None else round(float(cnr), 3),
                                   kind=None if kinds is None else kinds.get(index)))
    false_positives = sum(1 for p in range(1, n_pred + 1) if pred_sizes[p] > 0 and p not in touched)
    return matches, int(false_positives)


# --------------------------------------------------------------------------- reports


def _nanmean(values: Iterable[float]) -> float | None:
    array = np.asarray([v for v in values if v is not None], dtype=np.float64)
    array = array[np.isfinite(array)]
    return round(float(array.mean()), 4) if array.size else None


def _global_dice(cases: Sequence[Mapping[str, Any]], name: str) -> float | None:
    tp = sum(c["metrics"][name]["tp"] for c in cases)
    fp = sum(c["metrics"][name]["fp"] for c in cases)
    fn = sum(c["metrics"][name]["fn"] for c in cases)
    return round(2 * tp / (2 * tp + fp + fn), 4) if (2 * tp + fp + fn) else None


def summarise(cases: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Aggregate per-case results (as made by :func:`evaluate_case`) into a report summary."""
    summary: dict[str, Any] = {"cases": len(cases)}
    for name in ("liver", "tumour"):
        with_truth = [c for c in cases if c["metrics"][name]["tp"] + c["metrics"][name]["fn"] > 0]
        summary[name] = {
            metric: _nanmean(c["metrics"][name][metric] for c in with_truth)
            for metric in ("dice", "iou", "hd95_mm", "precision", "recall")
        }
        summary[name]["dice_global"] = _global_dice(cases, name)
        summary[name]["cases_with_truth"] = len(with_truth)
        if name == "tumour" and any("tumour_dice_ceiling" in c for c in with_truth):
            summary[name]["dice_ceiling"] = _nanmean(c.get("tumour_dice_ceiling") for c in with_truth)
            shown = [c["tumour_dice_conspicuous"] for c in with_truth if c.get("tumour_dice_conspicuous") is not None]
            summary[name]["dice_conspicuous"] = _nanmean(shown)
            summary[name]["cases_with_conspicuous_truth"] = len(shown)
    lesions = [m for c in cases for m in c["lesions"]]
    large = [m for m in lesions if m["longest_diameter_mm"] >= LARGE_LESION_MM]
    summary["lesions"] = {
        "count": len(lesions),
        "detected": int(sum(bool(m["detected"]) for m in lesions)),
        "sensitivity": round(sum(m["detected"] for m in lesions) / len(lesions), 4) if lesions else None,
        "count_ge_10mm": len(large),
        "sensitivity_ge_10mm": round(sum(m["detected"] for m in large) / len(large), 4) if large else None,
        "false_positives_per_case": round(sum(c["false_positives"] for c in cases) / len(cases), 3) if cases else None,
        "by_size": {name: _band(lesions, low, high) for name, low, high in SIZE_BANDS},
    }
    if any(m.get("contrast_to_noise") is not None for m in lesions):
        shown = [m for m in large if _conspicuous(m.get("contrast_to_noise"))]
        summary["lesions"]["count_ge_10mm_conspicuous"] = len(shown)
        summary["lesions"]["sensitivity_ge_10mm_conspicuous"] = (
            round(sum(m["detected"] for m in shown) / len(shown), 4) if shown else None)
    kinds = sorted({m["kind"] for m in lesions if m.get("kind")})
    if kinds:
        summary["lesions"]["by_kind"] = {kind: _kind(lesions, kind) for kind in kinds}
    return summary


def _kind(lesions: Sequence[Mapping[str, Any]], kind: str) -> dict[str, Any]:
    """Detection of the true lesions of one kind, over all sizes and over those ≥ 10 mm."""
    of_kind = [m for m in lesions if m.get("kind") == kind]
    large = [m for m in of_kind if m["longest_diameter_mm"] >= LARGE_LESION_MM]
    return {
        "count": len(of_kind),
        "detected": sum(bool(m["detected"]) for m in of_kind),
        "count_ge_10mm": len(large),
        "detected_ge_10mm": sum(bool(m["detected"]) for m in large),
        "sensitivity_ge_10mm": round(sum(m["detected"] for m in large) / len(large), 4) if large else None,
    }


def _band(lesions: Sequence[Mapping[str, Any]], low: float, high: float) -> dict[str, Any]:
    """Detection and delineation of the true lesions with low ≤ longest diameter < high.

    ``dice_detected`` is the mean Dice of each detected lesion with its best
    predicted component: how well found lesions are outlined, apart from
    whether small ones are found at all.
    """
    band = [m for m in lesions if low <= m["longest_diameter_mm"] < high]
    found = [m for m in band if m["detected"]]
    return {
        "count": len(band),
        "detected": len(found),
        "sensitivity": round(len(found) / len(band), 4) if band else None,
        "dice_detected": round(float(np.mean([m["best_dice"] for m in found])), 4) if found else None,
    }


def evaluate_case(
    segmentation: post.Segmentation,
    truth_labels: np.ndarray,
    truth_lesion_labels: np.ndarray,
    truth_diameters_mm: Mapping[int, float],
    spacing: Sequence[float],
    input_images: np.ndarray | None = None,
    truth_kinds: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """One case's metrics: per-class voxel metrics, lesion matches and false positives.

    *input_images* (the model's input channels on the truth grid, aligned)
    adds each lesion's conspicuity, the case's tumour Dice ceiling and its
    tumour Dice on the conspicuous lesions;
    *truth_kinds* (lesion index → kind) each lesion's kind.
    """
    metrics = segmentation_metrics(segmentation.labels, truth_labels, spacing)
    cnr = (None if input_images is None
           else lesion_contrast_to_noise(input_images, truth_labels, truth_lesion_labels))
    matches, false_positives = lesion_detection(segmentation.lesion_labels, truth_lesion_labels, truth_diameters_mm,
                                                cnr, truth_kinds)
    case = {
        "metrics": metrics,
        "lesions": [m.__dict__ for m in matches],
        "false_positives": false_positives,
        "predicted_lesions": len(segmentation.lesions),
    }
    if cnr is not None:
        ceiling = tumour_dice_ceiling(truth_labels, truth_lesion_labels, cnr)
        if ceiling is not None:
            case["tumour_dice_ceiling"] = round(ceiling, 4)
            shown = tumour_dice_on_conspicuous(segmentation.labels, truth_labels, truth_lesion_labels, cnr)
            case["tumour_dice_conspicuous"] = None if shown is None else round(shown, 4)
    return case


def evaluate_on_phantoms(
    segment: Callable[[Any], post.Segmentation],
    simulate: Callable[[int], Any],
    seeds: Iterable[int] = EVALUATION_SEEDS,
    *,
    log: Callable[[str], None] | None = None,
    input_images: Callable[[Any], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Run *segment* on the phantom ``simulate(seed)`` of every seed and score it against its truth.

    *simulate* returns an :class:`inference.liver.phantom.LiverPhantom`;
    *segment* turns one into a :class:`~inference.liver.postprocess.Segmentation`
    on the phantom's grid (see :func:`inference.liver.training.phantom_segmenter`);
    *input_images*, when given, returns the model's input channels aligned on
    the truth grid, for each lesion's conspicuity.
    """
    cases = []
    started = time.perf_counter()
    for seed in seeds:
        phantom = simulate(seed)
        t0 = time.perf_counter()
        segmentation = segment(phantom)
        seconds = time.perf_counter() - t0
        diameters = {lesion.index: lesion.longest_diameter_mm for lesion in phantom.lesions}
        kinds = {lesion.index: lesion.kind.display_name for lesion in phantom.lesions}
        case = evaluate_case(segmentation, phantom.labels, phantom.lesion_labels, diameters, phantom.spacing,
                             input_images(phantom) if input_images else None, kinds)
        case["seed"] = int(seed)
        case["seconds"] = round(seconds, 2)
        cases.append(case)
        if log:
            m = case["metrics"]
            log(f"seed {seed}: liver Dice {m['liver']['dice']:.3f}, tumour Dice {m['tumour']['dice']:.3f}, "
                f"{sum(x['detected'] for x in case['lesions'])}/{len(case['lesions'])} lesions, "
                f"{case['false_positives']} FP, {seconds:.1f} s")
    report = {"summary": summarise(cases), "cases": cases,
              "seconds": round(time.perf_counter() - started, 1)}
    logger.info("liver evaluation finished", extra={"cases": len(cases), "summary": report["summary"]})
    return report


__all__ = [
    "CONSPICUOUS_CNR",
    "DETECTION_DICE",
    "EVALUATION_SEEDS",
    "LARGE_LESION_MM",
    "SIZE_BANDS",
    "LesionMatch",
    "class_masks",
    "dice",
    "evaluate_case",
    "evaluate_on_phantoms",
    "hd95",
    "iou",
    "lesion_contrast_to_noise",
    "lesion_detection",
    "mask_metrics",
    "segmentation_metrics",
    "summarise",
    "tumour_dice_ceiling",
    "tumour_dice_on_conspicuous",
]
