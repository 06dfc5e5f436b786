"""Stroke lesion volumes from perfusion maps: hypoperfusion, core, mismatch and DEFUSE 3 eligibility.

* **Hypoperfusion**: Tmax > 6 s; **severe hypoperfusion**: Tmax > 10 s; the
  hypoperfusion intensity ratio (HIR) is vol(Tmax > 10 s) / vol(Tmax > 6 s).
* **Core**: relative CBF < 30 % of normal (the CT-perfusion convention; on
  MRI the core is usually taken from ADC, so the threshold is configurable).
  By default core voxels must also be hypoperfused (Tmax > 6 s): low CBF in
  normally-timed tissue is noise or CSF partial volume, not ischaemic core.
* **Normal CBF** (the rCBF reference) is the median CBF of tissue voxels in
  the hemisphere *without* the larger Tmax > 6 s volume that themselves have
  Tmax below ``reference_tmax_max_s`` (4 s): unaffected tissue of the same
  patient, study and AIF, so the scale of CBF (κ, AIF partial volume) cancels.
  The hemispheres are split at the tissue mask's centre of mass along x (the
  last array axis). Pass ``reference_mask`` to choose the reference yourself.
* Each mask is cleaned of connected components (6-connected) smaller than
  ``min_component_ml``.
* **DEFUSE 3** target mismatch: core < 70 ml, mismatch ratio ≥ 1.8 and
  mismatch volume ≥ 15 ml. Sources write > and ≥ differently; each comparison
  is configurable in :class:`Defuse3Criteria`.

Volumes are in ml from the voxel spacing (mm, in array axis order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class LesionThresholds:
    """Thresholds that define the lesion masks."""

    tmax_hypoperfusion_s: float = 6.0
    tmax_severe_s: float = 10.0
    core_relative_cbf: float = 0.30
    core_within_hypoperfusion: bool = True
    #: Reference (normal) voxels must have Tmax below this (s).
    reference_tmax_max_s: float = 4.0
    #: Connected components smaller than this are removed from each mask (ml).
    min_component_ml: float = 0.2


@dataclass(frozen=True)
class Defuse3Criteria:
    """DEFUSE 3 target-mismatch criteria (Albers et al., NEJM 2018), each comparison configurable."""

    max_core_ml: float = 70.0
    min_mismatch_ratio: float = 1.8
    min_mismatch_ml: float = 15.0
    core_limit_inclusive: bool = False      # core < 70 (False) or core ≤ 70 (True)
    ratio_limit_inclusive: bool = True      # ratio ≥ 1.8 (True) or > 1.8 (False)
    volume_limit_inclusive: bool = True     # mismatch ≥ 15 (True) or > 15 (False)

    def eligible(self, core_ml: float, hypoperfusion_ml: float) -> bool:
        """Whether a core and a Tmax > 6 s volume meet the target mismatch."""
        mismatch_ml = hypoperfusion_ml - core_ml
        ratio = mismatch_ratio(core_ml, hypoperfusion_ml)
        core_ok = core_ml <= self.max_core_ml if self.core_limit_inclusive else core_ml < self.max_core_ml
        ratio_ok = ratio >= self.min_mismatch_ratio if self.ratio_limit_inclusive else ratio > self.min_mismatch_ratio
        volume_ok = (mismatch_ml >= self.min_mismatch_ml if self.volume_limit_inclusive
                     else mismatch_ml > self.min_mismatch_ml)
        return bool(core_ok and ratio_ok and volume_ok)


def mismatch_ratio(core_ml: float, hypoperfusion_ml: float) -> float:
    """vol(Tmax > 6 s) / vol(core); infinite when there is no core but some hypoperfusion."""
    if core_ml > 0:
        return hypoperfusion_ml / core_ml
    return math.inf if hypoperfusion_ml > 0 else math.nan


def voxel_volume_ml(spacing_mm: Sequence[float]) -> float:
    return float(np.prod(spacing_mm)) / 1000.0


def volume_ml(mask: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Volume of a boolean mask in ml."""
    return int(np.count_nonzero(mask)) * voxel_volume_ml(spacing_mm)


def remove_small_components(mask: np.ndarray, spacing_mm: Sequence[float], min_ml: float) -> np.ndarray:
    """The mask without 6-connected components smaller than ``min_ml``."""
    mask = np.asarray(mask, bool)
    min_voxels = math.ceil(min_ml / voxel_volume_ml(spacing_mm)) if min_ml > 0 else 0
    if min_voxels <= 1 or not mask.any():
        return mask.copy()
    labels = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), False)
    kept = sitk.RelabelComponent(labels, minimumObjectSize=min_voxels)
    return sitk.GetArrayFromImage(kept) > 0


@dataclass(frozen=True)
class LesionReport:
    """Lesion masks, volumes and the mismatch decision, with the settings that produced them."""

    hypoperfusion_mask: np.ndarray
    severe_mask: np.ndarray
    core_mask: np.ndarray
    hypoperfusion_ml: float
    severe_ml: float
    core_ml: float
    mismatch_ml: float
    mismatch_ratio: float
    hypoperfusion_intensity_ratio: float
    reference_cbf: float
    reference_voxels: int
    #: Side of the larger Tmax > 6 s volume: '+x' (higher column index) or '-x'.
    affected_side: Literal["+x", "-x"]
    defuse3_eligible: bool
    thresholds: LesionThresholds = field(default_factory=LesionThresholds)
    criteria: Defuse3Criteria = field(default_factory=Defuse3Criteria)

    def summary(self) -> dict[str, Any]:
        """Numbers for a report (JSON-serialisable; infinities as strings)."""
        def clean(value: float) -> float | str:
            return value if math.isfinite(value) else str(value)
        return {
            "hypoperfusion_ml": self.hypoperfusion_ml, "severe_hypoperfusion_ml": self.severe_ml,
            "core_ml": self.core_ml, "mismatch_ml": self.mismatch_ml,
            "mismatch_ratio": clean(self.mismatch_ratio),
            "hypoperfusion_intensity_ratio": clean(self.hypoperfusion_intensity_ratio),
            "reference_cbf": clean(self.reference_cbf), "reference_voxels": self.reference_voxels,
            "affected_side": self.affected_side, "defuse3_eligible": self.defuse3_eligible,
            "thresholds": asdict(self.thresholds), "criteria": asdict(self.criteria),
        }


def hemisphere_masks(tissue_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(−x half, +x half) of the volume, split at the tissue's centre of mass along the last axis."""
    columns = np.nonzero(tissue_mask)[-1]
    midline = float(columns.mean()) if columns.size else (tissue_mask.shape[-1] - 1) / 2
    x = np.arange(tissue_mask.shape[-1])
    plus = np.broadcast_to(x > midline, tissue_mask.shape)
    return ~plus, plus


def segment_lesions(cbf: np.ndarray, tmax: np.ndarray, tissue_mask: np.ndarray, spacing_mm: Sequence[float], *,
                    thresholds: LesionThresholds = LesionThresholds(),
                    criteria: Defuse3Criteria = Defuse3Criteria(),
                    reference_mask: np.ndarray | None = None) -> LesionReport:
    """Hypoperfusion, severe hypoperfusion and core masks and the DEFUSE 3 decision from CBF and Tmax maps."""
    tissue = np.asarray(tissue_mask, bool) & np.isfinite(cbf) & np.isfinite(tmax)
    with np.errstate(invalid="ignore"):
        hypo = tissue & (tmax > thresholds.tmax_hypoperfusion_s)
        severe = tissue & (tmax > thresholds.tmax_severe_s)
    hypo = remove_small_components(hypo, spacing_mm, thresholds.min_component_ml)
    severe = remove_small_components(severe, spacing_mm, thresholds.min_component_ml)

    minus, plus = hemisphere_masks(tissue)
    side: Literal["+x", "-x"] = "+x" if np.count_nonzero(hypo & plus) >= np.count_nonzero(hypo & minus) else "-x"
    if reference_mask is None:
        contralateral = minus if side == "+x" else plus
        with np.errstate(invalid="ignore"):
            reference_mask = tissue & contralateral & (tmax < thresholds.reference_tmax_max_s)
        if np.count_nonzero(reference_mask) < 100:  # too little normal tissue on the other side
            reference_mask = tissue & ~hypo
    reference_mask = np.asarray(reference_mask, bool) & tissue
    reference = float(np.median(cbf[reference_mask])) if reference_mask.any() else math.nan

    with np.errstate(invalid="ignore"):
        core = tissue & (cbf < thresholds.core_relative_cbf * reference)
    if thresholds.core_within_hypoperfusion:
        core &= hypo
    core = remove_small_components(core, spacing_mm, thresholds.min_component_ml)

    hypo_ml, severe_ml, core_ml = (volume_ml(m, spacing_mm) for m in (hypo, severe, core))
    return LesionReport(
        hypoperfusion_mask=hypo, severe_mask=severe, core_mask=core,
        hypoperfusion_ml=hypo_ml, severe_ml=severe_ml, core_ml=core_ml,
        mismatch_ml=hypo_ml - core_ml, mismatch_ratio=mismatch_ratio(core_ml, hypo_ml),
        hypoperfusion_intensity_ratio=severe_ml / hypo_ml if hypo_ml > 0 else math.nan,
        reference_cbf=reference, reference_voxels=int(np.count_nonzero(reference_mask)), affected_side=side,
        defuse3_eligible=criteria.eligible(core_ml, hypo_ml), thresholds=thresholds, criteria=criteria)
