"""``pacsnode evaluate liver-seg``: the liver models scored side by side on held-out phantoms.

For MR, the 4D fused U-Net and the single-phase 3D U-Net baseline run on the
same held-out DCE phantoms, each phase first co-registered onto the portal
venous phase exactly as the pipeline does (:mod:`dicom_io.registration`);
for CT, the multi-phase CT model (arterial + portal venous, registered the
same way) and the single-phase one (portal venous) on the same held-out
multi-phase CT phantoms. Scores are
:mod:`inference.liver.evaluation`'s (Dice, IoU, HD95, precision, recall per
class; lesion sensitivity overall and for lesions ≥ 10 mm; false positives
per case), next to the issue's targets. Research use only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from inference.liver.evaluation import CONSPICUOUS_CNR

#: The issue's targets on held-out phantoms.
TARGETS = {"liver_dice": 0.95, "tumour_dice": 0.85, "sensitivity_ge_10mm": 0.9}


def _phase_volumes(phantom: Any) -> dict[str, Any]:
    from dicom_io.volume import Volume

    return {name: Volume(array=np.asarray(phantom.images[k], np.float32), spacing=phantom.spacing,
                         origin=(0.0, 0.0, 0.0), direction=np.eye(3))
            for k, name in enumerate(phantom.channels)}


def phantom_channels(phantom: Any, channels: Sequence[str], register: bool = True) -> np.ndarray:
    """``[P, z, y, x]`` of the phantom's *channels*, co-registered onto the portal phase when the
    model reads more than one."""
    if register and len(channels) > 1:
        from dicom_io.registration import register_phases

        stacked = register_phases(_phase_volumes(phantom), "portal")
        return np.stack([stacked.array[stacked.names.index(c)] for c in channels])
    return np.stack([np.asarray(phantom.channel(c), np.float32) for c in channels])


def model_segmenter(weights: str | Path, min_lesion_ml: float,
                    register: bool = True) -> tuple[str, tuple[str, ...], Callable[[Any], Any]]:
    """The model's version, its input channels and a function phantom → post-processed segmentation
    (lesions under *min_lesion_ml* made liver)."""
    from inference.liver.ensemble import load_liver_model
    from inference.liver.postprocess import postprocess

    segmenter = load_liver_model(weights)

    def segment(phantom: Any) -> Any:
        channels = phantom_channels(phantom, segmenter.channels, register)
        return postprocess(segmenter.segment(channels, phantom.spacing), phantom.spacing, min_volume_ml=min_lesion_ml)

    return segmenter.version, segmenter.channels, segment


def compare_models(modality: str, cases: int, first_seed: int, models: dict[str, str | Path],
                   log: Callable[[str], None] | None = None,
                   spacing: Sequence[float] | None = None, min_lesion_ml: float | None = None) -> dict[str, Any]:
    """Each of *models* (label → manifest) evaluated on the same ``cases`` phantoms from ``first_seed``.

    *spacing* (mm, zyx) simulates the phantoms on that grid over the simulator's field of view
    (default: the simulator's 4 × 3 × 3 mm), as a study of another scanner protocol would come:
    each model resamples it onto its own grid, and is scored on the phantom's. *min_lesion_ml* (default:
    the pipeline's) is the smallest predicted lesion kept, as a route's ``min_lesion_ml``.
    """
    from inference.liver.evaluation import EVALUATION_SEEDS, evaluate_on_phantoms
    from inference.liver.phantom import (
        DEFAULT_SPACING,
        simulate_liver_ct,
        simulate_liver_mr,
    )
    from inference.liver.phases import CT_MULTIPHASE_PHASES
    from inference.liver.postprocess import MIN_LESION_VOLUME_ML
    from inference.liver.training import aligned_phantom_channels, phantom_grid

    seeds = list(range(first_seed, first_seed + cases))
    held_out = set(EVALUATION_SEEDS)
    if not set(seeds) <= held_out:
        raise ValueError(f"seeds {seeds[0]}…{seeds[-1]} are not all held-out evaluation seeds "
                         f"({min(held_out)}…{max(held_out)}); training seeds would flatter the models")
    min_lesion_ml = MIN_LESION_VOLUME_ML if min_lesion_ml is None else float(min_lesion_ml)
    if not min_lesion_ml >= 0:
        raise ValueError(f"a minimum lesion volume must be 0 ml or more, not {min_lesion_ml}")
    shape, grid = phantom_grid(spacing if spacing is not None else DEFAULT_SPACING)
    simulate = (partial(simulate_liver_ct, phases=CT_MULTIPHASE_PHASES, shape=shape, spacing=grid)
                if modality.upper() == "CT" else partial(simulate_liver_mr, shape=shape, spacing=grid))
    report: dict[str, Any] = {"modality": modality.upper(), "seeds": seeds, "phantom_spacing_mm": list(grid),
                              "min_lesion_ml": min_lesion_ml,
                              "targets": TARGETS, "models": {},
                              "intended_use": "research use only; simulated phantoms, not patients"}
    for label, weights in models.items():
        version, channels, segment = model_segmenter(weights, min_lesion_ml)
        if log:
            log(f"{label}: {version}")
        result = evaluate_on_phantoms(segment, simulate, seeds, log=log,
                                      input_images=lambda phantom, c=channels: aligned_phantom_channels(phantom, c))
        report["models"][label] = {"model": version, "weights": str(weights), **result}
    return report


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _found(kind: dict[str, Any] | None) -> str | None:
    """"detected/count" of one lesion kind's lesions ≥ 10 mm; None when there are none."""
    if not kind or not kind["count_ge_10mm"]:
        return None
    return f"{kind['detected_ge_10mm']}/{kind['count_ge_10mm']}"


def format_comparison(report: dict[str, Any]) -> str:
    """The report as a plain-text table, one column per model."""
    labels = list(report["models"])
    rows: list[tuple[str, list[Any]]] = []
    summaries = [report["models"][label]["summary"] for label in labels]
    for name in ("liver", "tumour"):
        for metric in ("dice", "dice_global", "iou", "hd95_mm", "precision", "recall"):
            rows.append((f"{name} {metric}", [s[name][metric] for s in summaries]))
    for metric in ("dice_ceiling", "dice_conspicuous", "cases_with_conspicuous_truth"):
        rows.append((f"tumour {metric}", [s["tumour"].get(metric) for s in summaries]))
    for metric in ("count", "detected", "sensitivity", "count_ge_10mm", "sensitivity_ge_10mm",
                   "count_ge_10mm_conspicuous", "sensitivity_ge_10mm_conspicuous", "false_positives_per_case"):
        rows.append((f"lesions {metric}", [s["lesions"].get(metric) for s in summaries]))
    for band in summaries[0]["lesions"]["by_size"]:
        for metric in ("count", "sensitivity", "dice_detected"):
            rows.append((f"lesions {band} {metric}", [s["lesions"]["by_size"][band][metric] for s in summaries]))
    for kind in summaries[0]["lesions"].get("by_kind", {}):
        rows.append((f"lesions {kind} ≥ 10 mm found", [_found(s["lesions"]["by_kind"].get(kind)) for s in summaries]))
    rows.append(("seconds", [report["models"][label]["seconds"] for label in labels]))
    headers = [f"{label} ({report['models'][label]['model']})" for label in labels]
    width = max(len(h) for h in headers) + 2
    seeds = report["seeds"]
    grid = " × ".join(f"{v:g}" for v in report["phantom_spacing_mm"])
    lines = [(f"liver-seg on {len(seeds)} held-out {report['modality']} phantoms (seeds {seeds[0]}–{seeds[-1]}, "
              f"{grid} mm voxels, lesions under {report['min_lesion_ml']:g} ml made liver); research use only"),
             f"{'metric':<42}" + "".join(f"{h:>{width}}" for h in headers)]
    lines += [f"{name:<42}" + "".join(f"{_fmt(v):>{width}}" for v in values) for name, values in rows]
    targets = report["targets"]
    lines.append(f"targets: liver Dice ≥ {targets['liver_dice']}, tumour Dice ≥ {targets['tumour_dice']}, "
                 f"sensitivity for lesions ≥ 10 mm ≥ {targets['sensitivity_ge_10mm']}")
    lines.append(f"conspicuous: contrast-to-noise ≥ {CONSPICUOUS_CNR:g} against the liver around the lesion in at "
                 "least one of the model's input images; tumour dice_ceiling: the case-mean tumour Dice of "
                 "outlining exactly the conspicuous lesions, the most a model that finds only what the images show "
                 "can score; tumour dice_conspicuous: the case-mean tumour Dice with the hidden lesions' voxels set "
                 "aside, as a reader-drawn truth would leave them, over the cases with a conspicuous lesion")
    return "\n".join(lines)
