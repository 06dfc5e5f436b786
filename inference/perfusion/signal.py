"""DSC signal to ΔR2*: bolus detection, pre-contrast baseline, brain mask and per-voxel bolus arrival.

``ΔR2*(t) = −ln(S(t)/S0)/TE`` with S0 the mean of the pre-bolus baseline frames.

**Bolus detection** uses the mean curve over the head (voxels whose mean
signal is above an Otsu threshold): its minimum is the bolus peak; the drop
must exceed both 2 % of the baseline and 5× the frame-to-frame noise of the
curve, else :class:`NoBolusDetectedError`. The bolus *arrives* after the
last frame before the peak whose drop is below 10 % of the peak drop. The
baseline is every frame before that one, except the first when enough remain
(the first images of an EPI series are often brighter, before T1 steady
state). Fewer than three baseline frames is :class:`NoBaselineError`.

**Brain mask**: voxels whose S0 is above the Otsu threshold of S0 (drops air
and background), minus *CSF-like* voxels: bright (S0 > 1.35× the median S0 of
the mask: long T2*) **and** without a contrast passage (peak ΔR2* < 25 % of the
mask's median peak). Ischaemic core keeps its ordinary S0 and stays in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from inference.perfusion.errors import (
    MissingEchoTimeError,
    NoBaselineError,
    NoBolusDetectedError,
    TooFewTimePointsError,
)

#: A DSC series needs baseline, first pass and recirculation: at least this many time points.
MIN_TIMEPOINTS = 15
#: Fewest pre-contrast frames S0 is averaged over.
MIN_BASELINE_FRAMES = 3
#: EchoTime outside this range (s) is not a DSC (T2*-weighted) acquisition or is in the wrong unit.
ECHO_TIME_RANGE_S = (0.005, 0.2)


@dataclass(frozen=True)
class BolusTiming:
    """Where the contrast bolus is in the series (frame indices of the whole-head mean curve)."""

    arrival_frame: int
    peak_frame: int
    baseline_start: int
    baseline_stop: int  # exclusive
    #: Relative drop of the whole-head mean signal at the bolus peak.
    peak_drop: float

    @property
    def baseline(self) -> slice:
        return slice(self.baseline_start, self.baseline_stop)

    @property
    def n_baseline(self) -> int:
        return self.baseline_stop - self.baseline_start


@dataclass(frozen=True)
class DeltaR2Star:
    """ΔR2* curves (1/s, time first, 0 outside the mask) with the S0 and mask they came from."""

    values: np.ndarray
    s0: np.ndarray
    mask: np.ndarray
    bolus: BolusTiming
    te_s: float


def check_echo_time(te_s: float | None) -> float:
    """EchoTime in seconds, or :class:`MissingEchoTimeError` with what to check."""
    if te_s is None or not math.isfinite(float(te_s)) or float(te_s) <= 0:
        raise MissingEchoTimeError(
            f"EchoTime (0018,0081) is {'missing' if te_s is None else repr(te_s)} in the perfusion series; "
            "ΔR2* cannot be computed without it. Check that the series is the DSC (T2*-weighted EPI) "
            "perfusion series and that the scanner export or anonymiser keeps EchoTime.")
    te = float(te_s)
    low, high = ECHO_TIME_RANGE_S
    if te > high:
        raise MissingEchoTimeError(
            f"EchoTime {te:g} s is implausible for DSC-MRI (expected 0.02–0.05 s); "
            "was a value in milliseconds passed as seconds?")
    if te < low:
        raise MissingEchoTimeError(
            f"EchoTime {te * 1000:g} ms is too short for a DSC (T2*-weighted) series (expected 20–50 ms); "
            "check that the right series was routed to the perfusion pipeline.")
    return te


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a set of values (maximises the between-class variance)."""
    values = np.asarray(values, np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0 or values.min() == values.max():
        return float(values.min()) if values.size else 0.0
    counts, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    weight = np.cumsum(counts)
    mean = np.cumsum(counts * centres)
    total, total_mean = weight[-1], mean[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mean * weight - mean * total) ** 2 / (weight * (total - weight))
    return float(edges[1:][np.nanargmax(between[:-1])])


def _check_timepoints(signal: np.ndarray) -> None:
    n = signal.shape[0]
    if n < MIN_TIMEPOINTS:
        raise TooFewTimePointsError(
            f"the perfusion series has {n} time points; DSC analysis needs at least {MIN_TIMEPOINTS} "
            "(typically 40–80, one every 1–2 s) covering the baseline, the bolus passage and recirculation. "
            "Check that the whole dynamic series was sent and not split into several series.")


def detect_bolus(signal: np.ndarray, head_mask: np.ndarray | None = None) -> BolusTiming:
    """Find the bolus passage and the pre-contrast baseline in the whole-head mean curve of ``(t, ...)``."""
    signal = np.asarray(signal)
    _check_timepoints(signal)
    n_t = signal.shape[0]
    flat = signal.reshape(n_t, -1)
    if head_mask is None:
        mean_image = flat.mean(axis=0)
        head = mean_image > otsu_threshold(mean_image)
        if not head.any():
            head = np.ones_like(mean_image, bool)
    else:
        head = np.asarray(head_mask, bool).ravel()
    curve = flat[:, head].mean(axis=1, dtype=np.float64)
    peak = int(np.argmin(curve))
    early = curve[: max(3, peak // 2)] if peak >= 3 else curve[:3]
    level = float(np.median(early))
    drop = level - float(curve[peak])
    # Frame-to-frame noise from the whole series: the median ignores the few bolus frames.
    noise = float(np.median(np.abs(np.diff(curve))) * 1.4826 / np.sqrt(2.0))
    if peak < 2 or drop <= max(0.02 * level, 5.0 * noise):
        where = "at the very start of the series" if peak < 2 else "anywhere in the series"
        raise NoBolusDetectedError(
            f"no contrast bolus passage was found {where}: the whole-head signal drops by at most "
            f"{100 * max(drop, 0) / level if level else 0:.1f} % (a DSC bolus drops it by 10–40 %). "
            "Check that contrast was injected during this series and that it is the DSC perfusion series.")
    below = np.flatnonzero(level - curve[:peak] <= 0.1 * drop)
    last_quiet = int(below[-1]) if below.size else -1
    arrival = last_quiet + 1
    start = 1 if last_quiet - 1 >= MIN_BASELINE_FRAMES else 0
    stop = max(last_quiet, 0)
    if stop - start < MIN_BASELINE_FRAMES:
        raise NoBaselineError(
            f"the contrast bolus arrives at time point {arrival + 1} of {n_t}, leaving {max(stop - start, 0)} "
            f"pre-contrast images; at least {MIN_BASELINE_FRAMES} (ideally 10 or more) are needed for the "
            "baseline signal. Start the dynamic acquisition 10–20 s before the contrast injection.")
    return BolusTiming(arrival_frame=arrival, peak_frame=peak, baseline_start=start, baseline_stop=stop,
                       peak_drop=drop / level)


def _smooth_time(curves: np.ndarray) -> np.ndarray:
    """[1, 2, 1]/4 along the first axis, edges held."""
    padded = np.concatenate([curves[:1], curves, curves[-1:]], axis=0)
    return 0.25 * padded[:-2] + 0.5 * padded[1:-1] + 0.25 * padded[2:]


def brain_mask(s0: np.ndarray, peak_delta_r2s: np.ndarray, *, csf_intensity_ratio: float = 1.35,
               csf_peak_fraction: float = 0.25) -> np.ndarray:
    """Voxels above the Otsu threshold of S0, minus bright voxels without a contrast passage (CSF)."""
    intensity = s0 > otsu_threshold(s0)
    if not intensity.any():
        return intensity
    bright = s0 > csf_intensity_ratio * np.median(s0[intensity])
    flat = peak_delta_r2s < csf_peak_fraction * np.median(peak_delta_r2s[intensity])
    return intensity & ~(bright & flat)


def signal_to_delta_r2star(signal: np.ndarray, te_s: float | None, *, mask: np.ndarray | None = None,
                           bolus: BolusTiming | None = None) -> DeltaR2Star:
    """ΔR2* from a DSC series ``(t, ...)``: baseline and brain mask found automatically unless given."""
    te = check_echo_time(te_s)
    signal = np.asarray(signal, np.float32)
    _check_timepoints(signal)
    if bolus is None:
        bolus = detect_bolus(signal)
    s0 = signal[bolus.baseline].mean(axis=0)
    floor = np.maximum(s0 * 1e-3, np.finfo(np.float32).tiny)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = -np.log(np.maximum(signal, floor) / np.where(s0 > 0, s0, 1.0)) / te
    values = np.where(s0 > 0, values, 0.0).astype(np.float32)
    if mask is None:
        peak = _smooth_time(values)[bolus.arrival_frame:].max(axis=0)
        mask = brain_mask(s0, peak)
    mask = np.asarray(mask, bool)
    values[:, ~mask] = 0.0
    return DeltaR2Star(values=values, s0=s0, mask=mask, bolus=bolus, te_s=te)


def bolus_arrival_times(delta_r2s: np.ndarray, times_s: np.ndarray, mask: np.ndarray | None = None,
                        fraction: float = 0.2) -> np.ndarray:
    """Per voxel: when the (smoothed) curve first crosses ``fraction`` of its peak before the peak (s, NaN outside).

    The crossing is interpolated linearly between frames.
    """
    values = np.asarray(delta_r2s, np.float32)
    n_t = values.shape[0]
    spatial = values.shape[1:]
    mask = np.ones(spatial, bool) if mask is None else np.asarray(mask, bool)
    curves = _smooth_time(values.reshape(n_t, -1)[:, mask.ravel()])
    peak_idx = np.argmax(curves, axis=0)
    peak = curves[peak_idx, np.arange(curves.shape[1])]
    level = fraction * peak
    frames = np.arange(n_t)[:, None]
    below = (curves < level) & (frames <= peak_idx)
    # Last frame below the level before the peak (−1 when the curve starts above it).
    last = np.where(below.any(axis=0), n_t - 1 - np.argmax(below[::-1], axis=0), -1)
    nxt = np.clip(last + 1, 0, n_t - 1)
    cols = np.arange(curves.shape[1])
    v0 = curves[np.clip(last, 0, n_t - 1), cols]
    v1 = curves[nxt, cols]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(v1 > v0, (level - v0) / (v1 - v0), 0.0)
    t = np.asarray(times_s, np.float64)
    arrival = np.where(last >= 0, t[np.clip(last, 0, n_t - 1)] + np.clip(frac, 0, 1) * np.diff(t).mean(), t[0])
    arrival = np.where(peak > 0, arrival, np.nan)
    out = np.full(spatial, np.nan, np.float32)
    out[mask] = arrival
    return out
