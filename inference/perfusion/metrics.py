"""Agreement metrics between estimated and true perfusion maps and lesion masks (numpy only).

Maps: PSNR, SSIM (2D or 3D), Pearson (PCC) and Spearman (SCC) correlation,
NRMSE. Masks: ROC AUC of a score against a binary truth, Dice, IoU and the
95th-percentile Hausdorff distance in mm. These are the figures ST-Net
(Cao et al.) reports, so a learned estimator and the SVD methods can be
compared on the same phantom.

Conventions (stated because libraries differ):

* ``data_range`` of PSNR and SSIM is ``max − min`` of the **truth** within the
  evaluated voxels unless given.
* SSIM uses a Gaussian window (σ = 1.5, 11 taps; Wang et al. 2004) over the
  whole array ('valid' region: windows fully inside), K1 = 0.01, K2 = 0.03,
  and returns the mean SSIM map; values outside ``mask`` are set to 0 in
  both images first.
* NRMSE is RMSE / (max − min of the truth) by default (``normalisation`` may
  be 'mean' or 'euclidean': ‖x − y‖/‖y‖).
* Ties in Spearman ranks and in AUC get average ranks.
* HD95 is the 95th percentile of all surface-to-surface distances in both
  directions (surface: mask voxels with a 6-neighbour outside the mask),
  computed exactly by brute force in chunks. Empty masks give NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np


def _select(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    estimate, truth = np.asarray(estimate, np.float64), np.asarray(truth, np.float64)
    if estimate.shape != truth.shape:
        raise ValueError(f"shapes differ: {estimate.shape} vs {truth.shape}")
    keep = np.isfinite(estimate) & np.isfinite(truth)
    if mask is not None:
        keep &= np.asarray(mask, bool)
    return estimate[keep], truth[keep]


def psnr(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None,
         data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio (dB) with the truth's range as peak."""
    x, y = _select(estimate, truth, mask)
    data_range = float(y.max() - y.min()) if data_range is None else data_range
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range**2 / mse))


def nrmse(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None,
          normalisation: Literal["range", "mean", "euclidean"] = "range") -> float:
    """Root-mean-square error normalised by the truth's range, mean, or norm."""
    x, y = _select(estimate, truth, mask)
    rmse = float(np.sqrt(np.mean((x - y) ** 2)))
    if normalisation == "range":
        return rmse / float(y.max() - y.min())
    if normalisation == "mean":
        return rmse / float(np.mean(y))
    if normalisation == "euclidean":
        return float(np.linalg.norm(x - y) / np.linalg.norm(y))
    raise ValueError(f"unknown normalisation {normalisation!r}")


def pearson(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Pearson correlation coefficient (PCC)."""
    x, y = _select(estimate, truth, mask)
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def rank(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their average rank."""
    values = np.asarray(values).ravel()
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    boundaries = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [values.size]])
    average = (starts + ends + 1) / 2.0  # mean of ranks start+1 … end
    ranks = np.empty(values.size)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def spearman(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Spearman rank correlation coefficient (SCC): Pearson of the ranks."""
    x, y = _select(estimate, truth, mask)
    return pearson(rank(x), rank(y))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    w = np.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def _filter_valid(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable correlation with ``window`` along every axis, 'valid' region only."""
    out = image
    for axis in range(image.ndim):
        if out.shape[axis] < window.size:
            raise ValueError(f"SSIM window of {window.size} is larger than axis {axis} ({image.shape[axis]})")
        view = np.lib.stride_tricks.sliding_window_view(out, window.size, axis=axis)
        out = view @ window
    return out


def ssim(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, *,
         data_range: float | None = None, window: Literal["gaussian", "uniform"] = "gaussian",
         window_size: int = 11, sigma: float = 1.5) -> float:
    """Mean structural similarity of 2D or 3D maps (see the module notes for the conventions)."""
    x = np.nan_to_num(np.asarray(estimate, np.float64))
    y = np.nan_to_num(np.asarray(truth, np.float64))
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    if mask is not None:
        m = np.asarray(mask, bool)
        x, y = np.where(m, x, 0.0), np.where(m, y, 0.0)
        data_range = float(y[m].max() - y[m].min()) if data_range is None else data_range
    elif data_range is None:
        data_range = float(y.max() - y.min())
    w = _gaussian_window(window_size, sigma) if window == "gaussian" else np.full(window_size, 1.0 / window_size)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = _filter_valid(x, w), _filter_valid(y, w)
    sxx = _filter_valid(x * x, w) - mx * mx
    syy = _filter_valid(y * y, w) - my * my
    sxy = _filter_valid(x * y, w) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return float(s.mean())


# --------------------------------------------------------------------------- masks


def dice(estimate: np.ndarray, truth: np.ndarray) -> float:
    """2|A∩B| / (|A|+|B|); 1 when both are empty."""
    a, b = np.asarray(estimate, bool), np.asarray(truth, bool)
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def iou(estimate: np.ndarray, truth: np.ndarray) -> float:
    """|A∩B| / |A∪B|; 1 when both are empty."""
    a, b = np.asarray(estimate, bool), np.asarray(truth, bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def roc_auc(score: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Area under the ROC curve of ``score`` for the binary ``truth`` (Mann–Whitney, ties count half)."""
    s = np.asarray(score, np.float64)
    t = np.asarray(truth, bool)
    keep = np.isfinite(s) if mask is None else np.isfinite(s) & np.asarray(mask, bool)
    s, t = s[keep], t[keep]
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rank(s)
    return float((ranks[t].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with at least one face neighbour outside the mask (the array edge counts as outside)."""
    m = np.asarray(mask, bool)
    padded = np.pad(m, 1)
    interior = padded.copy()
    for axis in range(m.ndim):
        interior &= np.roll(padded, 1, axis) & np.roll(padded, -1, axis)
    return m & ~interior[tuple(slice(1, -1) for _ in range(m.ndim))]


def _nearest_distances(points: np.ndarray, others: np.ndarray, chunk: int = 2048) -> np.ndarray:
    out = np.empty(len(points))
    for start in range(0, len(points), chunk):
        p = points[start: start + chunk]
        d2 = (p * p).sum(1)[:, None] + (others * others).sum(1)[None, :] - 2.0 * p @ others.T
        out[start: start + chunk] = np.sqrt(np.clip(d2.min(axis=1), 0.0, None))
    return out


def hd95(estimate: np.ndarray, truth: np.ndarray, spacing_mm: Sequence[float] | None = None) -> float:
    """95th percentile of the symmetric surface distances (mm); NaN if either mask is empty."""
    a, b = np.asarray(estimate, bool), np.asarray(truth, bool)
    if not a.any() or not b.any():
        return float("nan")
    spacing = np.ones(a.ndim) if spacing_mm is None else np.asarray(spacing_mm, np.float64)
    pa = np.argwhere(surface_voxels(a)) * spacing
    pb = np.argwhere(surface_voxels(b)) * spacing
    distances = np.concatenate([_nearest_distances(pa, pb), _nearest_distances(pb, pa)])
    return float(np.percentile(distances, 95))
