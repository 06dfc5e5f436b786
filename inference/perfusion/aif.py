"""Automatic arterial input function (AIF) and venous output function (VOF) from ΔR2* curves.

**AIF** (after Mouridsen et al., MRM 2006): from the brain-mask voxels,

1. keep the top ``candidate_fraction`` (1 %) by peak ΔR2*, then those at or
   before the candidates' median time to peak and at or below their median
   full width at half maximum (early, high, narrow);
2. cluster the survivors' curves, each normalised to unit area (shape only),
   by k-means (k = 4, seeded) and take the cluster whose mean curve has the
   earliest first moment (ties: the higher peak);
3. average the ``n_voxels`` (10) voxels of that cluster with the highest peaks.

**VOF**: voxels whose time to peak is at least ``min_delay_s`` (4 s) after the
AIF's and whose curve has returned below half its peak by the end, the
``n_voxels`` highest peaks averaged (the superior sagittal sinus in practice).
Large veins are little affected by partial volume, so when the VOF area
exceeds the AIF area the AIF is scaled up by the ratio (capped at 3). The
voxels of the vein (late, at least 85 % of the VOF peak) are reported so that
they can be kept out of tissue statistics.

**Quality** (0–1) is the geometric mean of four scores: peak over baseline
noise (1 at 30 or more), return to baseline (tail mean below 30 % of peak),
plausible width (FWHM 2–12 s) and coherence of the averaged voxels (mean
correlation with their average). Below 0.5 the AIF deserves a look.

Voxel coordinates are array indices of the spatial grid, e.g. (z, y, x).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from inference.perfusion.errors import NoArterialInputError


@dataclass(frozen=True)
class CurveFeatures:
    """Shape features of a set of curves (one value per curve)."""

    peak: np.ndarray
    time_to_peak_s: np.ndarray
    fwhm_s: np.ndarray
    first_moment_s: np.ndarray
    area: np.ndarray
    tail_fraction: np.ndarray


def curve_features(curves: np.ndarray, times_s: np.ndarray) -> CurveFeatures:
    """Features of curves ``(n, t)``: peak, time to peak, FWHM (contiguous, interpolated), first moment, area."""
    t = np.asarray(times_s, np.float64)
    dt = float(np.diff(t).mean())
    smooth = curves.copy()
    smooth[:, 1:-1] = 0.25 * curves[:, :-2] + 0.5 * curves[:, 1:-1] + 0.25 * curves[:, 2:]
    idx = np.argmax(smooth, axis=1)
    rows = np.arange(curves.shape[0])
    peak = smooth[rows, idx]
    above = smooth >= 0.5 * peak[:, None]
    frames = np.arange(curves.shape[1])[None, :]
    # Contiguous run above half max around the peak.
    left_break = np.where(~above & (frames < idx[:, None]), frames, -1).max(axis=1)
    right_break = np.where(~above & (frames > idx[:, None]), frames, curves.shape[1]).min(axis=1)
    fwhm = (right_break - left_break - 1) * dt
    positive = np.clip(curves, 0.0, None)
    area = positive.sum(axis=1) * dt
    with np.errstate(divide="ignore", invalid="ignore"):
        moment = (positive * t[None, :]).sum(axis=1) * dt / area
        tail = positive[:, -max(3, curves.shape[1] // 5):].mean(axis=1) / peak
    return CurveFeatures(peak=peak, time_to_peak_s=t[idx], fwhm_s=fwhm, first_moment_s=moment, area=area,
                         tail_fraction=tail)


def kmeans(data: np.ndarray, k: int, seed: int = 0, iterations: int = 50) -> np.ndarray:
    """Labels of k-means (k-means++ start, Lloyd iterations) on rows of ``data``."""
    rng = np.random.default_rng(seed)
    n = data.shape[0]
    k = min(k, n)
    centres = [data[rng.integers(n)]]
    for _ in range(1, k):
        dist = np.min([((data - c) ** 2).sum(axis=1) for c in centres], axis=0)
        total = dist.sum()
        centres.append(data[rng.choice(n, p=dist / total)] if total > 0 else data[rng.integers(n)])
    centre_array = np.array(centres)
    labels = np.zeros(n, np.int64)
    for _ in range(iterations):
        dist = ((data[:, None, :] - centre_array[None]) ** 2).sum(axis=2)
        new = np.argmin(dist, axis=1)
        if np.array_equal(new, labels) and _ > 0:
            break
        labels = new
        for j in range(k):
            members = data[labels == j]
            if len(members):
                centre_array[j] = members.mean(axis=0)
    return labels


@dataclass(frozen=True)
class VenousOutputFunction:
    """The venous curve, where it came from, and the large-vein voxels."""

    curve: np.ndarray
    voxels: np.ndarray          # (k, ndim) indices
    area: float
    time_to_peak_s: float
    large_vein_mask: np.ndarray  # spatial, bool


@dataclass(frozen=True)
class ArterialInputFunction:
    """The AIF used for deconvolution (ΔR2*, after VOF scaling) and what an SR needs to describe it."""

    curve: np.ndarray
    raw_curve: np.ndarray
    voxels: np.ndarray           # (k, ndim) indices of the averaged voxels
    quality: float
    quality_terms: dict[str, float]
    peak: float
    time_to_peak_s: float
    fwhm_s: float
    n_candidates: int
    cluster_size: int
    vof: VenousOutputFunction | None
    vof_scale: float

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (locations as index lists) for reports and SR content."""
        return {
            "n_voxels": len(self.voxels), "voxels": self.voxels.tolist(),
            "quality": self.quality, "quality_terms": self.quality_terms,
            "peak_delta_r2star_per_s": self.peak, "time_to_peak_s": self.time_to_peak_s,
            "fwhm_s": self.fwhm_s, "n_candidates": self.n_candidates, "cluster_size": self.cluster_size,
            "vof_scale": self.vof_scale,
            "vof": None if self.vof is None else {
                "n_voxels": len(self.vof.voxels), "voxels": self.vof.voxels.tolist(),
                "time_to_peak_s": self.vof.time_to_peak_s,
                "large_vein_voxels": int(self.vof.large_vein_mask.sum())},
        }


def _quality(curves: np.ndarray, mean_curve: np.ndarray, features: CurveFeatures,
             baseline: slice) -> dict[str, float]:
    noise = float(np.std(mean_curve[baseline])) if mean_curve[baseline].size > 1 else 0.0
    snr = features.peak[0] / noise if noise > 0 else 100.0
    corr = [np.corrcoef(c, mean_curve)[0, 1] for c in curves] if len(curves) > 1 else [1.0]
    fwhm = float(features.fwhm_s[0])
    return {
        "peak_snr": float(np.clip(snr / 30.0, 0.0, 1.0)),
        "return_to_baseline": float(np.clip(1.0 - (features.tail_fraction[0] - 0.3) / 0.4, 0.0, 1.0)),
        "width": float(1.0 if 2.0 <= fwhm <= 12.0 else np.clip(1.0 - abs(fwhm - np.clip(fwhm, 2, 12)) / 6, 0, 1)),
        "coherence": float(np.clip(np.nanmean(corr), 0.0, 1.0)),
    }


def select_vof(delta_r2s: np.ndarray, times_s: np.ndarray, mask: np.ndarray, aif_time_to_peak_s: float, *,
               n_voxels: int = 10, min_delay_s: float = 4.0) -> VenousOutputFunction | None:
    """The venous output function, or None when no late, returning, high-peak voxels exist."""
    n_t = delta_r2s.shape[0]
    index = np.flatnonzero(np.asarray(mask, bool).ravel())
    curves = delta_r2s.reshape(n_t, -1)[:, index].T.astype(np.float64)
    f = curve_features(curves, times_s)
    late = (f.time_to_peak_s >= aif_time_to_peak_s + min_delay_s) & (f.tail_fraction < 0.5) & (f.peak > 0)
    if np.count_nonzero(late) < 3:
        return None
    late_idx = np.flatnonzero(late)
    best = late_idx[np.argsort(f.peak[late_idx])[::-1][:n_voxels]]
    curve = curves[best].mean(axis=0)
    vein = np.zeros(mask.shape, bool)
    vein.ravel()[index[late & (f.peak >= 0.85 * f.peak[best].mean())]] = True
    dt = float(np.diff(times_s).mean())
    return VenousOutputFunction(
        curve=curve, voxels=np.column_stack(np.unravel_index(index[best], mask.shape)),
        area=float(np.clip(curve, 0, None).sum() * dt),
        time_to_peak_s=float(times_s[int(np.argmax(curve))]), large_vein_mask=vein)


def select_aif(delta_r2s: np.ndarray, times_s: np.ndarray, mask: np.ndarray, *, n_voxels: int = 10,
               candidate_fraction: float = 0.01, n_clusters: int = 4, use_vof: bool = True,
               baseline: slice | None = None, seed: int = 0) -> ArterialInputFunction:
    """Choose the AIF automatically from ΔR2* curves ``(t, ...)`` within ``mask``."""
    n_t = delta_r2s.shape[0]
    mask = np.asarray(mask, bool)
    index = np.flatnonzero(mask.ravel())
    if index.size < 20:
        raise NoArterialInputError(
            f"only {index.size} brain voxels to search for an arterial input function; check the brain mask "
            "and that the series covers the brain")
    curves = delta_r2s.reshape(n_t, -1)[:, index].T.astype(np.float64)
    times = np.asarray(times_s, np.float64)
    f = curve_features(curves, times)
    n_top = max(20, round(candidate_fraction * index.size))
    top = np.argsort(f.peak)[::-1][:n_top]
    top = top[f.peak[top] > 0]
    if top.size < 5:
        raise NoArterialInputError("no voxels with a contrast passage were found for the arterial input function; "
                                   "check that contrast was injected during this series")
    early = f.time_to_peak_s[top] <= np.median(f.time_to_peak_s[top])
    narrow = f.fwhm_s[top] <= np.median(f.fwhm_s[top])
    candidates = top[early & narrow]
    if candidates.size < 5:
        candidates = top[early] if np.count_nonzero(early) >= 5 else top
    shapes = curves[candidates] / np.clip(f.area[candidates], 1e-12, None)[:, None]
    labels = kmeans(shapes, n_clusters, seed=seed)
    best_label, best_key = 0, (np.inf, 0.0)
    for label in np.unique(labels):
        members = candidates[labels == label]
        mean = curves[members].mean(axis=0, keepdims=True)
        mf = curve_features(mean, times)
        key = (round(float(mf.first_moment_s[0]), 3), -float(mf.peak[0]))
        if key < best_key:
            best_label, best_key = int(label), key
    cluster = candidates[labels == best_label]
    chosen = cluster[np.argsort(f.peak[cluster])[::-1][:n_voxels]]
    raw = curves[chosen].mean(axis=0)
    features = curve_features(raw[None, :], times)
    arrival = max(int(np.argmax(raw >= 0.1 * features.peak[0])), 1)
    quality_terms = _quality(curves[chosen], raw, features, baseline if baseline is not None else slice(0, arrival))
    quality = float(np.prod(list(quality_terms.values())) ** (1.0 / len(quality_terms)))

    vof = select_vof(delta_r2s, times, mask, float(features.time_to_peak_s[0])) if use_vof else None
    scale = 1.0
    if vof is not None:
        aif_area = float(np.clip(raw, 0, None).sum() * np.diff(times).mean())
        if aif_area > 0 and vof.area > aif_area:
            scale = float(min(vof.area / aif_area, 3.0))
    return ArterialInputFunction(
        curve=raw * scale, raw_curve=raw, voxels=np.column_stack(np.unravel_index(index[chosen], mask.shape)),
        quality=quality, quality_terms=quality_terms, peak=float(features.peak[0]),
        time_to_peak_s=float(features.time_to_peak_s[0]), fwhm_s=float(features.fwhm_s[0]),
        n_candidates=int(candidates.size), cluster_size=int(cluster.size), vof=vof, vof_scale=scale)
