"""Accuracy of the perfusion pipeline on held-out stroke phantoms, every method side by side.

Behind ``pacsnode evaluate perfusion``. For each case a stroke phantom
(:func:`~inference.perfusion.simulation.make_stroke_phantom`) is simulated,
written as a DSC DICOM series and read back with the pipeline's own reader;
each method then runs through :func:`~inference.perfusion.pipeline.analyse_dsc`,
the pipeline's whole computation (ΔR2*, automatic AIF, maps, lesions), so the
figures are those of what the pipeline would report. The only option added is
the phantom's κ_tissue/κ_artery as ``tissue_to_artery_relaxivity``, the
calibration a site would supply; without it CBF and CBV are relative.

Figures per case and method (conventions in :mod:`inference.perfusion.metrics`):

* each map (CBF, CBV, MTT, Tmax) against the truth over the phantom's tissue
  voxels and over the truly hypoperfused voxels: PSNR, SSIM, PCC, SCC and
  NRMSE, the ST-Net paper's Table 2 metrics. Maps are scored as written to
  DICOM (0 outside the pipeline's brain mask). SSIM is 2D, the mean over
  slices of per-slice SSIM with the truth's range over the region as
  ``data_range``;
* CBF relative error per phantom cell: the mean estimated CBF over the
  cell's voxels divided by the mean true CBF, minus 1, for each tissue class
  (grey, white matter) and zone (normal, oligaemia, penumbra, core);
* Tmax > 6 s (Table 1): ROC AUC of the Tmax map against the true
  hypoperfusion, and Dice, IoU and HD95 (mm) of the pipeline's mask;
* core and hypoperfusion volumes, mismatch volume and ratio against the
  truth, and whether the DEFUSE 3 decision equals the truth's (both with the
  same criteria).

**Held out**: the ST-Net-like weights are trained on simulated 7×7 patches
drawn from the training seed (``training.seed`` of the weights' manifest);
training never builds a stroke phantom, and its model card reports one
phantom, seed :data:`~inference.perfusion.stnet_training.PHANTOM_SEED`. Those
seeds are refused here; cases start at seed 1001 by default.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dicom_io.volume import DynamicVolume
from inference.base import SeriesInput
from inference.perfusion import metrics
from inference.perfusion.deconvolution import PerfusionMaps
from inference.perfusion.lesions import LesionReport, mismatch_ratio, volume_ml
from inference.perfusion.phantom_dicom import SERIES_DESCRIPTION, write_phantom_series
from inference.perfusion.pipeline import (
    DEFAULT_STNET_WEIGHTS,
    METHODS,
    PerfusionAnalysis,
    PerfusionSettings,
    analyse_dsc,
    assess_lesions,
    read_dsc,
)
from inference.perfusion.simulation import (
    TISSUE_LABELS,
    ZONE_LABELS,
    StrokePhantom,
    StrokePhantomDesign,
    make_stroke_phantom,
)
from inference.perfusion.stnet_training import PHANTOM_SEED

log = logging.getLogger("pacsnode.perfusion.evaluation")

DEFAULT_FIRST_SEED = 1001
DEFAULT_CASES = 3
DEFAULT_SNR = 50.0
MAP_NAMES = ("cbf", "cbv", "mtt", "tmax")
MAP_LABELS = {"cbf": "CBF", "cbv": "CBV", "mtt": "MTT", "tmax": "Tmax"}
MAP_METRICS = ("psnr", "ssim", "pcc", "scc", "nrmse")
TMAX_METRICS = ("auc", "dice", "iou", "hd95_mm")
#: Tissue labels whose CBF is scored per cell.
CELL_TISSUES = (1, 2)


class EvaluationError(ValueError):
    """The evaluation cannot run as asked (held-in seed, unknown method, no cases)."""


@dataclass(frozen=True)
class PhantomCase:
    """One held-out phantom: its truth, and its DSC series as the pipeline reads it from DICOM."""

    seed: int
    phantom: StrokePhantom
    volume: DynamicVolume


def training_seeds(weights: Path = DEFAULT_STNET_WEIGHTS) -> set[int]:
    """Seeds the ST-Net-like weights were trained or reported on (refused as evaluation cases)."""
    seeds = {PHANTOM_SEED}
    try:
        manifest = json.loads(Path(weights).read_text())
        seeds.add(int(manifest["training"]["seed"]))
    except (OSError, ValueError, KeyError, TypeError):
        seeds.add(0)  # the trainer's default seed
    return seeds


def held_out_seeds(first_seed: int, cases: int, weights: Path = DEFAULT_STNET_WEIGHTS) -> list[int]:
    """``cases`` consecutive seeds from ``first_seed``, none of them a training seed."""
    if cases < 1:
        raise EvaluationError(f"the evaluation needs at least one case, got {cases}")
    seeds = list(range(first_seed, first_seed + cases))
    clash = sorted(set(seeds) & training_seeds(weights))
    if clash:
        raise EvaluationError(
            f"phantom seed(s) {clash} were used to train or report the ST-Net-like weights; "
            f"choose seeds the training never saw (e.g. --seed {DEFAULT_FIRST_SEED})")
    return seeds


def load_case(seed: int, snr: float, design: StrokePhantomDesign = StrokePhantomDesign(),
              workdir: Path | None = None) -> PhantomCase:
    """Simulate a phantom, write it as DICOM and read it back with the pipeline's reader."""
    phantom = make_stroke_phantom(seed=seed, snr=snr, design=design)
    with tempfile.TemporaryDirectory(dir=workdir) as folder:
        paths = write_phantom_series(phantom, Path(folder) / "DSC", seed)
        volume = read_dsc(SeriesInput(f"phantom-{seed}", "MR", SERIES_DESCRIPTION, 7, tuple(paths)))
    return PhantomCase(seed=seed, phantom=phantom, volume=volume)


# --------------------------------------------------------------------------- scores


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _slice_ssim(estimate: np.ndarray, truth: np.ndarray, region: np.ndarray, data_range: float) -> float:
    """Mean over slices (with region voxels) of 2D SSIM within the region."""
    values = [metrics.ssim(estimate[z], truth[z], region[z], data_range=data_range)
              for z in range(region.shape[0]) if region[z].any()]
    return float(np.mean(values)) if values else math.nan


def score_map(estimate: np.ndarray, truth: np.ndarray, region: np.ndarray) -> dict[str, float | None]:
    """PSNR, SSIM, PCC, SCC and NRMSE of one map over ``region`` (NaN-free estimate expected)."""
    region = np.asarray(region, bool) & np.isfinite(truth)
    if np.count_nonzero(region) < 2:
        return dict.fromkeys(MAP_METRICS)
    truth_filled = np.nan_to_num(truth, nan=0.0)
    data_range = float(np.ptp(truth[region]))
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = {
            "psnr": metrics.psnr(estimate, truth, region),
            "ssim": _slice_ssim(estimate, truth_filled, region, data_range) if data_range > 0 else math.nan,
            "pcc": metrics.pearson(estimate, truth, region),
            "scc": metrics.spearman(estimate, truth, region),
            "nrmse": metrics.nrmse(estimate, truth, region),
        }
    return {name: _finite(value) for name, value in scores.items()}


def cbf_cell_errors(cbf: np.ndarray, phantom: StrokePhantom) -> dict[str, float | None]:
    """Relative error of the mean CBF in each (tissue class, zone) cell of the phantom."""
    out: dict[str, float | None] = {}
    for label in CELL_TISSUES:
        for zone, zone_name in ZONE_LABELS.items():
            cell = (phantom.labels == label) & (phantom.zones == zone) & phantom.tissue_mask
            if not cell.any():
                continue
            true_mean = float(np.mean(phantom.truth.cbf[cell]))
            out[f"{TISSUE_LABELS[label]} / {zone_name}"] = _finite(float(np.mean(cbf[cell])) / true_mean - 1.0)
    return out


def score_lesions(tmax: np.ndarray, lesions: LesionReport, phantom: StrokePhantom) -> dict[str, Any]:
    """Tmax > 6 s agreement (AUC, Dice, IoU, HD95), volumes against the truth and the DEFUSE 3 decision."""
    truth_mask = phantom.hypoperfusion_mask
    found = lesions.hypoperfusion_mask
    core_ml = volume_ml(phantom.core_mask, phantom.spacing_mm)
    hypo_ml = volume_ml(truth_mask, phantom.spacing_mm)
    truth_decision = lesions.criteria.eligible(core_ml, hypo_ml)
    return {
        "tmax6": {
            "auc": _finite(metrics.roc_auc(tmax, truth_mask, phantom.tissue_mask)),
            "dice": metrics.dice(found, truth_mask),
            "iou": metrics.iou(found, truth_mask),
            "hd95_mm": _finite(metrics.hd95(found, truth_mask, phantom.spacing_mm)),
        },
        "volumes": {
            "core_ml": lesions.core_ml, "true_core_ml": core_ml,
            "hypoperfusion_ml": lesions.hypoperfusion_ml, "true_hypoperfusion_ml": hypo_ml,
            "mismatch_ml": lesions.mismatch_ml, "true_mismatch_ml": hypo_ml - core_ml,
            "mismatch_ratio": _finite(lesions.mismatch_ratio),
            "true_mismatch_ratio": _finite(mismatch_ratio(core_ml, hypo_ml)),
        },
        "defuse3": {"estimate": lesions.defuse3_eligible, "truth": truth_decision,
                    "agrees": lesions.defuse3_eligible == truth_decision},
    }


def score_maps(maps: PerfusionMaps, lesions: LesionReport, phantom: StrokePhantom) -> dict[str, Any]:
    """Every figure for one method on one phantom, from its maps (as written: 0 outside the mask) and lesions."""
    filled = maps.filled(0.0)
    regions = {"tissue": phantom.tissue_mask, "hypoperfused": phantom.hypoperfusion_mask}
    return {
        "maps": {region: {name: score_map(getattr(filled, name), getattr(phantom.truth, name), mask)
                          for name in MAP_NAMES}
                 for region, mask in regions.items()},
        "cbf_cells": cbf_cell_errors(filled.cbf, phantom),
        **score_lesions(filled.tmax, lesions, phantom),
    }


def score_analysis(analysis: PerfusionAnalysis, phantom: StrokePhantom) -> dict[str, Any]:
    """Figures of one pipeline analysis against the phantom's truth."""
    scores = score_maps(analysis.maps, analysis.lesions, phantom)
    aif_voxels = tuple(analysis.aif.voxels.T)
    scores["aif"] = {"n_voxels": len(analysis.aif.voxels),
                     "in_artery_fraction": float(np.mean(phantom.artery_mask[aif_voxels])),
                     "quality": analysis.aif.quality}
    return scores


def rescore_with_maps(analysis: PerfusionAnalysis, maps: PerfusionMaps, phantom: StrokePhantom) -> dict[str, Any]:
    """Figures for other maps (e.g. deliberately corrupted ones) with the lesions the pipeline derives from them."""
    lesions = assess_lesions(maps, phantom.spacing_mm, analysis.settings)
    return score_maps(maps, lesions, phantom)


# --------------------------------------------------------------------------- evaluation


def _mean(values: Sequence[Any]) -> Any:
    """Mean of numbers, key by key for nested dicts (None where no case has a value)."""
    first = values[0]
    if isinstance(first, Mapping):
        return {key: _mean([v[key] for v in values]) for key in first}
    numbers = [float(v) for v in values if v is not None and not isinstance(v, bool)]
    return float(np.mean(numbers)) if numbers else None


def evaluate_perfusion(cases: int = DEFAULT_CASES, snr: float = DEFAULT_SNR, first_seed: int = DEFAULT_FIRST_SEED,
                       methods: Sequence[str] = tuple(METHODS), *,
                       design: StrokePhantomDesign = StrokePhantomDesign(),
                       options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run every method on ``cases`` held-out phantoms and score it; a JSON-ready report.

    ``options`` are pipeline options applied to every method (thresholds,
    DEFUSE 3 criteria, ``stnet_weights``); ``method`` and
    ``tissue_to_artery_relaxivity`` are set per method and phantom.
    """
    keys = [m.lower() for m in methods]
    unknown = [m for m in keys if m not in METHODS]
    if unknown or not keys:
        raise EvaluationError(f"unknown perfusion method(s) {unknown}; choose from {sorted(METHODS)}")
    options = dict(options or {})
    weights = Path(options.get("stnet_weights", DEFAULT_STNET_WEIGHTS))
    seeds = held_out_seeds(first_seed, cases, weights)
    per_method: dict[str, list[dict[str, Any]]] = {key: [] for key in keys}
    phantoms = []
    for seed in seeds:
        started = time.perf_counter()
        case = load_case(seed, snr, design)
        phantom = case.phantom
        ratio = phantom.relaxivity.tissue_to_artery_ratio
        phantoms.append({"seed": seed, "snr": snr, "shape": list(phantom.labels.shape),
                         "tissue_voxels": int(phantom.tissue_mask.sum()),
                         "tissue_to_artery_relaxivity": ratio,
                         "truth": {k: (_finite(v) if isinstance(v, float) else v)
                                   for k, v in phantom.lesion_truth().items()},
                         "simulation_s": round(time.perf_counter() - started, 2)})
        for key in keys:
            settings = PerfusionSettings.from_options({**options, "method": key, "tissue_to_artery_relaxivity": ratio})
            started = time.perf_counter()
            analysis = analyse_dsc(case.volume.array, case.volume.times_s, case.volume.echo_time_s,
                                   case.volume.spacing, settings)
            seconds = time.perf_counter() - started
            scores = score_analysis(analysis, phantom)
            scores.update(seed=seed, seconds=round(seconds, 2))
            per_method[key].append(scores)
            log.info("perfusion evaluation case scored", extra={
                "seed": seed, "method": settings.method, "seconds": round(seconds, 2),
                "tmax6_dice": round(scores["tmax6"]["dice"], 3), "defuse3_agrees": scores["defuse3"]["agrees"]})
    summary = {}
    for key, results in per_method.items():
        summary[key] = {
            "method": METHODS[key],
            "mean": {part: _mean([r[part] for r in results])
                     for part in ("maps", "cbf_cells", "tmax6", "volumes", "seconds")},
            "defuse3_agreement": sum(r["defuse3"]["agrees"] for r in results),
            "cases": results,
        }
    return {
        "description": "pacsnode perfusion accuracy on held-out stroke phantoms (simulated; research use only)",
        "settings": {"cases": cases, "snr": snr, "seeds": seeds, "methods": keys,
                     "options": {k: str(v) for k, v in options.items()},
                     "training_seeds_excluded": sorted(training_seeds(weights))},
        "conventions": {
            "region": "maps scored over the phantom's tissue voxels and over its true Tmax > 6 s voxels; "
                      "estimates as written to DICOM (0 outside the pipeline's brain mask)",
            "psnr": "dB, peak = range of the truth in the region",
            "ssim": "2D per slice (Gaussian window 11, sigma 1.5), mean over slices, data range of the truth",
            "nrmse": "RMSE / range of the truth in the region",
            "cbf_cells": "mean estimated CBF / mean true CBF - 1 per tissue class and zone",
            "tmax6": "AUC of the Tmax map; Dice, IoU, HD95 (mm) of the pipeline's Tmax > 6 s mask",
            "defuse3": "the pipeline's decision vs the decision on the true volumes, same criteria",
        },
        "phantoms": phantoms,
        "methods": summary,
    }


# --------------------------------------------------------------------------- table


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.{digits}f}"


def format_report(report: Mapping[str, Any]) -> str:
    """The report as a plain-text table, methods side by side (means over cases)."""
    settings = report["settings"]
    keys = list(report["methods"])
    names = [report["methods"][k]["method"] for k in keys]
    width = max(10, *(len(n) + 2 for n in names))
    means = {k: report["methods"][k]["mean"] for k in keys}

    def row(label: str, values: Sequence[str]) -> str:
        return f"{label:<34}" + "".join(f"{v:>{width}}" for v in values)

    lines = [
        f"Perfusion accuracy on {settings['cases']} held-out stroke phantom(s) "
        f"(seeds {', '.join(map(str, settings['seeds']))}; tissue SNR {settings['snr']:g}); "
        "mean over cases. Research use only.",
        "",
        row("", names),
    ]
    for region in ("tissue", "hypoperfused"):
        lines.append(f"Maps over {region} voxels")
        for name in MAP_NAMES:
            for metric in MAP_METRICS:
                digits = 2 if metric == "psnr" else 3
                lines.append(row(f"  {MAP_LABELS[name]:<5} {metric.upper()}",
                                 [_fmt(means[k]["maps"][region][name][metric], digits) for k in keys]))
    lines.append("Tmax > 6 s hypoperfusion")
    for metric in TMAX_METRICS:
        label = "HD95 (mm)" if metric == "hd95_mm" else metric.upper()
        lines.append(row(f"  {label}", [_fmt(means[k]["tmax6"][metric], 2 if metric == "hd95_mm" else 3)
                                        for k in keys]))
    lines.append("Volumes (ml; truth in brackets)")
    truth = report["phantoms"]
    for label, est, true in (("core", "core_ml", "true_core_ml"),
                             ("Tmax > 6 s", "hypoperfusion_ml", "true_hypoperfusion_ml"),
                             ("mismatch", "mismatch_ml", "true_mismatch_ml")):
        true_mean = means[keys[0]]["volumes"][true]
        lines.append(row(f"  {label} [{_fmt(true_mean, 1)}]", [_fmt(means[k]["volumes"][est], 1) for k in keys]))
    lines.append(row("  mismatch ratio", [_fmt(means[k]["volumes"]["mismatch_ratio"], 2) for k in keys]))
    lines.append(row("DEFUSE 3 decision = truth's", [
        f"{report['methods'][k]['defuse3_agreement']}/{len(truth)}" for k in keys]))
    lines.append("CBF relative error per cell")
    for cell in means[keys[0]]["cbf_cells"]:
        lines.append(row(f"  {cell}", [_fmt(means[k]["cbf_cells"].get(cell), 3) for k in keys]))
    lines.append(row("Seconds per case (maps + lesions)", [_fmt(means[k]["seconds"], 1) for k in keys]))
    return "\n".join(lines)
