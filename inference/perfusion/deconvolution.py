"""SVD deconvolution of DSC-MRI curves into CBF, CBV, MTT and Tmax maps.

Three methods, all vectorised over voxels (one SVD per AIF, matrix products
over chunks of voxels; no per-voxel Python loop):

``sSVD``
    Standard truncated SVD of the causal (lower-triangular) convolution matrix,
    singular values below 0.2·s_max discarded (Østergaard et al., MRM 1996).
    Tissue arriving before the AIF cannot be represented by a causal residue,
    so its CBF is overestimated and its Tmax pinned near 0.
``cSVD``
    Block-circulant SVD (Wu et al., MRM 2003): curves zero-padded to 2N points
    and a circulant matrix, threshold 0.1·s_max. Insensitive to the delay
    between AIF and tissue; residue samples at index ≥ N are negative times.
``oSVD``
    cSVD with a per-voxel threshold: the smallest threshold of a ladder whose
    residue's oscillation index ``OI = Σ|r[k] − 2r[k−1] + r[k−2]| / (L·max r)``
    is below 0.035 (Wu et al. 2003). Because truncation keeps the *leading*
    singular components, the residue for every threshold of the ladder is a
    partial sum of one projection; the ladder costs about two matrix products
    per chunk, not one per threshold.

Discretisation: ``A[i, j] = Δt·(a[i−j] + a[i−j−1])/2`` (linear AIF, residue
constant over each frame; see :func:`convolution_matrix`); residue sample k
is the frame starting at k·Δt.

Maps (float32, NaN outside the mask; :meth:`PerfusionMaps.filled` gives 0 there):

* CBF = max r · 100·60·k_H/ρ  (ml/100g/min)
* CBV = ∫C_t / ∫C_a · 100·k_H/ρ  (ml/100g), over the acquired frames
* MTT = 60·CBV/CBF  (s; NaN where CBF ≤ 0)
* Tmax = argmax r · Δt (s), refined by a parabola through the peak and its
  neighbours; circulant indices ≥ N are mapped to negative times.

Inputs are ΔR2* (or concentration) curves, time first. ΔR2* ratios are
concentration ratios only if κ is equal in blood and tissue; when a
simulation or calibration says otherwise pass ``tissue_to_artery_relaxivity``
(κ_tissue/κ_artery), by which CBF and CBV are divided. Tmax and ratios of
CBF within a study do not depend on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np

from inference.perfusion.errors import NoArterialInputError, TooFewTimePointsError
from inference.perfusion.physiology import DEFAULT_HAEMATOCRIT, HaematocritCorrection

if TYPE_CHECKING:
    from inference.perfusion.aif import ArterialInputFunction

Method = Literal["sSVD", "cSVD", "oSVD"]

#: Relative singular-value thresholds of the fixed-threshold methods.
DEFAULT_THRESHOLDS: dict[str, float] = {"sSVD": 0.2, "cSVD": 0.1}
#: Oscillation-index limit of oSVD (Wu et al. 2003).
DEFAULT_OI_LIMIT = 0.035
#: Relative thresholds oSVD chooses from, largest first.
DEFAULT_THRESHOLD_LADDER: tuple[float, ...] = (
    0.6, 0.5, 0.4, 0.32, 0.26, 0.2, 0.16, 0.13, 0.1, 0.08, 0.065, 0.05, 0.04, 0.03, 0.02, 0.01)
#: Fewest time points a deconvolution is attempted with.
MIN_TIMEPOINTS = 10
_CHUNK = 16384


@dataclass(frozen=True)
class PerfusionMaps:
    """Perfusion maps of one study and how they were made."""

    cbf: np.ndarray
    cbv: np.ndarray
    mtt: np.ndarray
    tmax: np.ndarray
    mask: np.ndarray
    method: str
    #: Relative SVD threshold (sSVD, cSVD) or None (oSVD, see ``svd_threshold``).
    threshold: float | None
    oi_limit: float | None
    #: oSVD: the relative threshold chosen in each voxel (NaN outside the mask).
    svd_threshold: np.ndarray | None
    tr_s: float
    haematocrit: HaematocritCorrection
    tissue_to_artery_relaxivity: float
    aif: ArterialInputFunction | None = None

    units: ClassVar[dict[str, str]] = {
        "cbf": "ml/100g/min", "cbv": "ml/100g", "mtt": "s", "tmax": "s"}

    def filled(self, value: float = 0.0) -> PerfusionMaps:
        """The maps with ``value`` instead of NaN (outside the mask, MTT where CBF ≤ 0)."""
        return replace(self, **{name: np.nan_to_num(getattr(self, name), nan=value, posinf=value, neginf=value)
                                for name in ("cbf", "cbv", "mtt", "tmax")})


def convolution_matrix(aif: np.ndarray, dt: float, size: int | None = None, *, circulant: bool) -> np.ndarray:
    """Discrete convolution operator of the AIF: causal Toeplitz (N×N), or circulant of ``size`` (2N).

    ``A[i, j] = Δt·(a[i−j] + a[i−j−1])/2``: the exact integral of a linearly
    interpolated AIF against a residue that is constant on each frame
    ``[t_j, t_j+1)``. A residue jumps from 0 to its maximum when the bolus
    arrives; a piecewise-constant residue represents that jump, whereas the
    common hat-function form (1-4-1 weights) spreads it over the frame before
    and reads Tmax about 0.8 s later with the same thresholds.
    """
    a = np.asarray(aif, dtype=np.float64)
    n = a.size
    size = (2 * n if circulant else n) if size is None else size
    padded = np.zeros(size + 1)
    padded[1: n + 1] = a  # padded[m + 1] = a[m]; a[-1] = 0
    m = np.arange(size)
    kernel = 0.5 * (padded[m + 1] + padded[m])
    lag = m[:, None] - m[None, :]
    if circulant:
        return dt * kernel[lag % size]
    return dt * np.where(lag >= 0, kernel[np.clip(lag, 0, None)], 0.0)


def oscillation_index(residue: np.ndarray) -> np.ndarray:
    """Wu's oscillation index of residues (last axis): mean |second difference| over max."""
    second = residue[..., 2:] - 2.0 * residue[..., 1:-1] + residue[..., :-2]
    peak = residue.max(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(peak > 0, np.abs(second).sum(axis=-1) / (residue.shape[-1] * peak), np.inf)


@dataclass(frozen=True)
class _Operator:
    """An AIF's SVD, restricted to the N acquired tissue samples."""

    u_rows: np.ndarray  # (N, M): rows of U for the acquired samples
    s: np.ndarray       # (M,)
    vt: np.ndarray      # (M, M)
    circulant: bool

    @classmethod
    def of(cls, aif: np.ndarray, dt: float, circulant: bool) -> _Operator:
        matrix = convolution_matrix(aif, dt, circulant=circulant)
        u, s, vt = np.linalg.svd(matrix)
        return cls(u_rows=u[: aif.size], s=s, vt=vt, circulant=circulant)

    def n_kept(self, threshold: float) -> int:
        return int(np.count_nonzero(self.s >= threshold * self.s[0]))

    def pseudo_inverse(self, threshold: float) -> np.ndarray:
        """(N, M) matrix P with residue = curve @ P."""
        k = self.n_kept(threshold)
        return (self.u_rows[:, :k] / self.s[:k]) @ self.vt[:k]


def _fixed_threshold_residues(curves: np.ndarray, op: _Operator, threshold: float) -> np.ndarray:
    return curves @ op.pseudo_inverse(threshold).astype(np.float32)


def _osvd_residues(curves: np.ndarray, op: _Operator, ladder: Sequence[float],
                   oi_limit: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-voxel smallest ladder threshold with OI < limit; returns residues and chosen thresholds."""
    kept = np.array([op.n_kept(t) for t in ladder])
    m_max = int(kept.max())
    size = op.vt.shape[1]
    projection = op.u_rows[:, :m_max] / op.s[:m_max]
    q = curves @ projection.astype(np.float32)                      # (n, m_max)
    vt = op.vt[:m_max].astype(np.float32)                            # (m_max, M)
    vt_d2 = (vt[:, 2:] - 2.0 * vt[:, 1:-1] + vt[:, :-2])            # second differences of each component
    n = curves.shape[0]
    residue = np.zeros((n, size), np.float32)
    second = np.zeros((n, size - 2), np.float32)
    chosen = np.full(n, kept[0], np.int64)
    chosen_threshold = np.full(n, ladder[0], np.float32)
    done = 0
    for threshold, k in zip(ladder, kept):
        if k > done:
            residue += q[:, done:k] @ vt[done:k]
            second += q[:, done:k] @ vt_d2[done:k]
            done = k
        peak = residue.max(axis=1)
        total = np.abs(second).sum(axis=1)
        ok = (peak > 0) & (total < oi_limit * size * peak)
        chosen = np.where(ok, k, chosen)
        chosen_threshold = np.where(ok, np.float32(threshold), chosen_threshold)
    keep = np.arange(m_max)[None, :] < chosen[:, None]
    return (q * keep) @ vt, chosen_threshold


def _peak_time(residue: np.ndarray, dt: float, n_acquired: int, circulant: bool) -> tuple[np.ndarray, np.ndarray]:
    """Max and argmax time of each residue, parabolic sub-frame refinement, circulant wrap to negative times."""
    size = residue.shape[1]
    idx = np.argmax(residue, axis=1)
    rows = np.arange(residue.shape[0])
    peak = residue[rows, idx]
    if circulant:
        left = residue[rows, (idx - 1) % size]
        right = residue[rows, (idx + 1) % size]
        interior = np.ones_like(idx, dtype=bool)
    else:
        left = residue[rows, np.clip(idx - 1, 0, size - 1)]
        right = residue[rows, np.clip(idx + 1, 0, size - 1)]
        interior = (idx > 0) & (idx < size - 1)
    curvature = left - 2.0 * peak + right
    with np.errstate(divide="ignore", invalid="ignore"):
        shift = np.where(interior & (curvature < 0), 0.5 * (left - right) / curvature, 0.0)
    shift = np.clip(np.nan_to_num(shift), -0.5, 0.5)
    index = idx.astype(np.float64)
    if circulant:
        index = np.where(idx >= n_acquired, index - size, index)
    return peak, (index + shift) * dt


def deconvolve(tissue: np.ndarray, aif: np.ndarray, tr_s: float, method: Method = "oSVD", *,
               mask: np.ndarray | None = None, threshold: float | None = None,
               oi_limit: float = DEFAULT_OI_LIMIT, threshold_ladder: Sequence[float] = DEFAULT_THRESHOLD_LADDER,
               haematocrit: HaematocritCorrection = DEFAULT_HAEMATOCRIT,
               tissue_to_artery_relaxivity: float = 1.0, aif_info: ArterialInputFunction | None = None,
               chunk_voxels: int = _CHUNK) -> PerfusionMaps:
    """CBF, CBV, MTT and Tmax from tissue curves ``(t, ...)`` and an AIF ``(t,)`` sampled every ``tr_s``.

    ``mask`` (spatial shape) selects the voxels to analyse (default: all).
    ``threshold`` overrides the relative SVD threshold of sSVD/cSVD;
    ``oi_limit`` and ``threshold_ladder`` configure oSVD.
    """
    if method not in ("sSVD", "cSVD", "oSVD"):
        raise ValueError(f"unknown deconvolution method {method!r}; use sSVD, cSVD or oSVD")
    tissue = np.asarray(tissue)
    aif = np.asarray(aif, dtype=np.float64)
    n_t = tissue.shape[0]
    if aif.shape != (n_t,):
        raise ValueError(f"AIF has shape {aif.shape}, expected ({n_t},) to match the tissue curves")
    if n_t < MIN_TIMEPOINTS:
        raise TooFewTimePointsError(
            f"the perfusion series has {n_t} time points; deconvolution needs at least {MIN_TIMEPOINTS}")
    if not np.all(np.isfinite(aif)) or aif.sum() <= 0 or aif.max() <= 0:
        raise NoArterialInputError("the arterial input function has no positive contrast passage "
                                   "(its area is not positive); check the AIF selection")
    if tr_s <= 0:
        raise ValueError(f"TR must be positive, got {tr_s}")
    spatial = tissue.shape[1:]
    mask = np.ones(spatial, bool) if mask is None else np.asarray(mask, bool)
    if mask.shape != spatial:
        raise ValueError(f"mask shape {mask.shape} does not match the curves' spatial shape {spatial}")
    curves = tissue.reshape(n_t, -1)[:, mask.ravel()].T.astype(np.float32)  # (n, t)
    circulant = method != "sSVD"
    op = _Operator.of(aif, tr_s, circulant)
    if method != "oSVD":
        threshold = DEFAULT_THRESHOLDS[method] if threshold is None else threshold
        pinv = op.pseudo_inverse(threshold).astype(np.float32)
    ladder = tuple(sorted(threshold_ladder, reverse=True))

    n = curves.shape[0]
    peak = np.empty(n)
    tmax = np.empty(n)
    chosen = np.empty(n, np.float32) if method == "oSVD" else None
    for start in range(0, n, chunk_voxels):
        block = curves[start: start + chunk_voxels]
        if method == "oSVD":
            residue, chosen[start: start + len(block)] = _osvd_residues(block, op, ladder, oi_limit)
        else:
            residue = block @ pinv
        peak[start: start + len(block)], tmax[start: start + len(block)] = _peak_time(
            residue, tr_s, n_t, circulant)

    scale = 1.0 / tissue_to_artery_relaxivity
    cbf = peak * haematocrit.cbf_scale * scale
    cbv = curves.sum(axis=1, dtype=np.float64) / aif.sum() * haematocrit.cbv_scale * scale
    with np.errstate(divide="ignore", invalid="ignore"):
        mtt = np.where(cbf > 0, 60.0 * cbv / cbf, np.nan)

    def to_map(values: np.ndarray) -> np.ndarray:
        out = np.full(spatial, np.nan, np.float32)
        out[mask] = values
        return out

    return PerfusionMaps(
        cbf=to_map(cbf), cbv=to_map(cbv), mtt=to_map(mtt), tmax=to_map(tmax), mask=mask, method=method,
        threshold=None if method == "oSVD" else threshold, oi_limit=oi_limit if method == "oSVD" else None,
        svd_threshold=to_map(chosen) if chosen is not None else None, tr_s=tr_s, haematocrit=haematocrit,
        tissue_to_artery_relaxivity=tissue_to_artery_relaxivity, aif=aif_info)
