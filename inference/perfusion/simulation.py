"""Digital reference objects for DSC-MRI: simulated signal curves with known CBF, CBV, MTT and Tmax.

The recipe follows the OSIPI DSC test data (after Chakwizira et al.) with our
own recirculation and phantom geometry:

* **AIF** – a gamma variate ``C_a(t) = A·(t−t0)^α·exp(−(t−t0)/β)`` plus a
  recirculation pass: the first pass delayed, dispersed by an exponential
  kernel and attenuated (:class:`GammaVariateAIF`).
* **Tissue** – ``C_t(t) = (ρ/k_H)·F·(C_a(t − delay) ⊗ h_disp ⊗ R)(t)`` with
  residue ``R`` (exponential, gamma-distribution of transit times with shape
  λ, box or linear; ``R(0) = 1``, ``∫R = MTT``), an exponential dispersion
  kernel ``h_disp`` of mean ``dispersion_s`` and a bolus delay (negative:
  tissue before the AIF). The convolution is done on a fine grid
  (``fine_dt_s``, 0.1 s, trapezoidal weights so that ``∫C_t`` is exact), then
  point-sampled every TR (linear interpolation, which also applies the delay).
* **Signal** – ``S = S0·exp(−κ·TE·C)`` with κ for large-vessel blood and
  tissue calibrated as in the recipe (:func:`calibrate_relaxivity`): the AIF
  peak drops the signal to 0.4·S0, grey matter (CBV 4 ml/100g, CBF 60
  ml/100g/min, exponential residue) drops it by 40 %.
* **Noise** – Rician, ``σ = S0_ref/SNR`` (S0_ref = 100 unless given).

**Ground truth** is the physiology put in: CBF (ml/100g/min), CBV (ml/100g),
MTT = 60·CBV/CBF (s) and ``Tmax = delay + argmax_t (h_disp ⊗ R)(t)`` (s): the
time at which the residue an ideal deconvolution with this AIF recovers
peaks. Without dispersion every residue here peaks at t = 0, so Tmax equals
the delay; dispersion moves the peak later (and lowers it, which is why every
deconvolution underestimates CBF of dispersed tissue: the truth stays F).

Arrays are time-first: a curve set has shape ``(t, ...)`` like a 4D DSC
series ``(t, z, y, x)``. Everything random takes a seed or a
:class:`numpy.random.Generator`; nothing is read from disk or network.

:func:`make_stroke_phantom` builds a 3D slab with a one-sided ischaemic lesion
(core, penumbra, oligaemia) for end-to-end tests and for training data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from inference.perfusion.physiology import (
    DEFAULT_HAEMATOCRIT,
    HaematocritCorrection,
    Relaxivity,
)

ResidueKind = Literal["exponential", "gamma", "box", "linear"]
Seed = int | np.random.Generator | None

#: Fine grid on which the forward model is computed (s).
DEFAULT_FINE_DT_S = 0.1
#: Reference baseline signal; noise σ = S0_REF / SNR.
S0_REF = 100.0
#: Voxels per chunk in the vectorised forward model (bounds memory).
_CHUNK = 4096


def _rng(seed: Seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


# --------------------------------------------------------------------------- acquisition


@dataclass(frozen=True)
class AcquisitionTiming:
    """Timing of a simulated DSC acquisition: TR, TE, number of time points and fine grid."""

    tr_s: float = 1.5
    te_s: float = 0.030
    n_timepoints: int = 60
    #: Frames acquired before the AIF arrives (the AIF's t0 is ``baseline_frames * tr_s``).
    baseline_frames: int = 10
    fine_dt_s: float = DEFAULT_FINE_DT_S

    def __post_init__(self) -> None:
        if self.tr_s <= 0 or self.te_s <= 0 or self.fine_dt_s <= 0:
            raise ValueError("TR, TE and the fine time step must be positive")
        if self.n_timepoints < 2:
            raise ValueError(f"need at least 2 time points, got {self.n_timepoints}")

    @property
    def times_s(self) -> np.ndarray:
        """Acquisition times (s), the first at 0."""
        return np.arange(self.n_timepoints) * self.tr_s

    @property
    def bolus_arrival_s(self) -> float:
        """When the AIF's first pass starts (s)."""
        return self.baseline_frames * self.tr_s

    @property
    def duration_s(self) -> float:
        return (self.n_timepoints - 1) * self.tr_s


# --------------------------------------------------------------------------- AIF


def _exponential_kernel(mean_s: float, dt: float, n: int) -> np.ndarray:
    """Exponential kernel with the given mean, sampled on ``n`` steps of ``dt``, summing to 1."""
    if mean_s <= 0:
        kernel = np.zeros(n)
        kernel[0] = 1.0
        return kernel
    kernel = np.exp(-np.arange(n) * dt / mean_s)
    return kernel / kernel.sum()


@dataclass(frozen=True)
class GammaVariateAIF:
    """Arterial concentration: gamma-variate first pass plus a delayed, dispersed, attenuated second pass.

    ``amplitude·(t−t0)^alpha·exp(−(t−t0)/beta_s)``; the first pass peaks at
    ``t0 + alpha·beta_s``. The recirculation is the first pass delayed by
    ``recirculation_delay_s``, convolved with an exponential kernel of mean
    ``recirculation_dispersion_s`` and scaled to ``recirculation_fraction`` of
    the first pass's area. Concentrations are in arbitrary "mM".
    """

    t0_s: float = 15.0
    amplitude: float = 1.0
    alpha: float = 3.0
    beta_s: float = 1.5
    recirculation_fraction: float = 0.15
    recirculation_delay_s: float = 8.0
    recirculation_dispersion_s: float = 4.0
    #: Internal grid on which the recirculation convolution is evaluated (s).
    internal_dt_s: float = 0.01

    def first_pass(self, t_s: np.ndarray) -> np.ndarray:
        tau = np.clip(np.asarray(t_s, dtype=np.float64) - self.t0_s, 0.0, None)
        return self.amplitude * tau**self.alpha * np.exp(-tau / self.beta_s)

    def concentration(self, t_s: np.ndarray) -> np.ndarray:
        """C_a at arbitrary times (any shape); zero before ``t0_s``."""
        t = np.asarray(t_s, dtype=np.float64)
        t_max = float(np.max(t, initial=0.0))
        if self.recirculation_fraction == 0 or t_max <= self.t0_s + self.recirculation_delay_s:
            return self.first_pass(t)
        dt = self.internal_dt_s
        grid = np.arange(0.0, t_max + 2 * dt, dt)
        second = self.first_pass(grid - self.recirculation_delay_s)
        kernel = _exponential_kernel(self.recirculation_dispersion_s, dt, grid.size)
        n_fft = _fft_length(2 * grid.size)
        second = np.fft.irfft(np.fft.rfft(second, n_fft) * np.fft.rfft(kernel, n_fft), n_fft)[: grid.size]
        return self.first_pass(t) + self.recirculation_fraction * np.interp(t, grid, second, left=0.0)

    @property
    def peak_time_s(self) -> float:
        return self.t0_s + self.alpha * self.beta_s

    @property
    def first_pass_peak(self) -> float:
        return float(self.first_pass(np.array(self.peak_time_s)))


# --------------------------------------------------------------------------- residues


def residue_function(kind: ResidueKind, t_s: np.ndarray, mtt_s: np.ndarray | float,
                     gamma_lambda: float = 5.0) -> np.ndarray:
    """Residue functions R(t) with R(0) = 1 and ∫R = MTT; shape ``mtt_s.shape + t_s.shape``.

    ``exponential``: exp(−t/MTT) (well-mixed compartment). ``gamma``: 1 − CDF of
    a gamma distribution of transit times with shape λ and mean MTT (λ = 1 is
    exponential, large λ approaches a box). ``box``: plug flow, 1 until MTT
    (the edge cell is split so the area on a grid of step dt is exact).
    ``linear``: 1 − t/(2·MTT) until 2·MTT. ``t_s`` must be a uniform grid from 0.
    """
    t = np.asarray(t_s, dtype=np.float64)
    mtt = np.asarray(mtt_s, dtype=np.float64)[..., None]
    if kind == "exponential":
        return np.exp(-t / mtt)
    if kind == "linear":
        return np.clip(1.0 - t / (2.0 * mtt), 0.0, 1.0)
    if kind == "box":
        dt = float(t[1] - t[0]) if t.size > 1 else 1.0
        return np.clip((mtt - t) / dt + 0.5, 0.0, 1.0)
    if kind == "gamma":
        return _gamma_survival(t, mtt, gamma_lambda)
    raise ValueError(f"unknown residue function {kind!r}; use exponential, gamma, box or linear")


def _gamma_survival(t: np.ndarray, mtt: np.ndarray, lam: float) -> np.ndarray:
    """1 − CDF of Gamma(shape λ, scale MTT/λ): closed form for integer λ, numerical otherwise."""
    if lam <= 0:
        raise ValueError(f"gamma residue shape λ must be positive, got {lam}")
    x = t * lam / mtt
    if float(lam).is_integer():
        # Q(n, x) = exp(−x) Σ_{k<n} x^k / k!, summed term by term.
        term = np.exp(-x)
        total = term.copy()
        for k in range(1, int(lam)):
            term = term * x / k
            total += term
        return np.clip(total, 0.0, 1.0)
    # Non-integer λ: integrate the density on a 10× finer grid (trapezoid).
    sub = 10
    dt = float(t[1] - t[0]) if t.size > 1 else 1.0
    fine = np.arange((t.size - 1) * sub + 1) * (dt / sub)
    xf = fine * lam / mtt
    with np.errstate(divide="ignore"):
        log_pdf = (lam - 1) * np.log(xf) - xf - math.lgamma(lam)
    pdf = np.where(xf > 0, np.exp(log_pdf), 0.0 if lam > 1 else np.inf)
    if lam < 1:  # integrable singularity at 0: use the analytic start x^λ/Γ(λ+1)
        pdf[..., 0] = 0.0
    steps = 0.5 * (pdf[..., 1:] + pdf[..., :-1]) * np.diff(xf, axis=-1)
    if lam < 1:
        steps[..., 0] = xf[..., 1] ** lam / math.gamma(lam + 1)
    cdf = np.concatenate([np.zeros(xf.shape[:-1] + (1,)), np.cumsum(steps, axis=-1)], axis=-1)
    return np.clip(1.0 - cdf[..., ::sub], 0.0, 1.0)


# --------------------------------------------------------------------------- tissue parameters


@dataclass(frozen=True)
class TissueParameters:
    """Per-voxel physiology (arrays of one shape, or scalars broadcast to it)."""

    cbf: np.ndarray  # ml/100g/min
    cbv: np.ndarray  # ml/100g
    delay_s: np.ndarray = field(default_factory=lambda: np.zeros(()))
    dispersion_s: np.ndarray = field(default_factory=lambda: np.zeros(()))

    def __post_init__(self) -> None:
        arrays = np.broadcast_arrays(*(np.asarray(getattr(self, n), dtype=np.float64)
                                       for n in ("cbf", "cbv", "delay_s", "dispersion_s")))
        for name, value in zip(("cbf", "cbv", "delay_s", "dispersion_s"), arrays):
            object.__setattr__(self, name, np.array(value))
        if np.any(self.cbf < 0) or np.any(self.cbv < 0) or np.any(self.dispersion_s < 0):
            raise ValueError("CBF, CBV and dispersion must not be negative")
        if np.any((self.cbf > 0) != (self.cbv > 0)):
            raise ValueError("CBF and CBV must both be zero (no perfusion) or both positive")

    @property
    def shape(self) -> tuple[int, ...]:
        return self.cbf.shape

    @property
    def mtt_s(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.cbf > 0, 60.0 * self.cbv / np.where(self.cbf > 0, self.cbf, 1.0), 0.0)


def parameter_grid(cbf: Sequence[float] = (5, 10, 20, 30, 40, 50, 60, 70),
                   cbv: Sequence[float] = (2, 3, 4, 5, 6),
                   delay_s: Sequence[float] = (0.0,),
                   dispersion_s: Sequence[float] = (0.0,)) -> TissueParameters:
    """Every combination of the given values, shape ``(n_cbf, n_cbv, n_delay, n_dispersion)``."""
    grids = np.meshgrid(np.asarray(cbf, float), np.asarray(cbv, float),
                        np.asarray(delay_s, float), np.asarray(dispersion_s, float), indexing="ij")
    return TissueParameters(*grids)


def random_tissue_parameters(n: int, seed: Seed = None, *, cbf_range: tuple[float, float] = (5.0, 70.0),
                             cbv_range: tuple[float, float] = (2.0, 6.0),
                             delay_range_s: tuple[float, float] = (-2.0, 9.0),
                             dispersion_range_s: tuple[float, float] = (0.0, 4.5)) -> TissueParameters:
    """``n`` voxels drawn uniformly from the given ranges (training data for learned estimators)."""
    rng = _rng(seed)
    return TissueParameters(rng.uniform(*cbf_range, n), rng.uniform(*cbv_range, n),
                            rng.uniform(*delay_range_s, n), rng.uniform(*dispersion_range_s, n))


@dataclass(frozen=True)
class GroundTruth:
    """True maps: CBF (ml/100g/min), CBV (ml/100g), MTT (s), Tmax (s); NaN where there is no tissue."""

    cbf: np.ndarray
    cbv: np.ndarray
    mtt: np.ndarray
    tmax: np.ndarray


# --------------------------------------------------------------------------- forward model


def _fft_length(n: int) -> int:
    """Smallest 2^a·3^b·5^c ≥ n: FFT sizes that are fast (a prime size is ~100× slower)."""
    best = 1 << max(0, (n - 1).bit_length())
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p235 = p35
            while p235 < n:
                p235 *= 2
            best = min(best, p235)
            p35 *= 3
        p5 *= 5
    return best


def _fine_grid(timing: AcquisitionTiming, delays: np.ndarray) -> np.ndarray:
    """Fine grid from 0 long enough for the acquisition and the earliest-arriving (negative-delay) tissue."""
    lead = max(0.0, -float(np.min(delays, initial=0.0)))
    n = math.ceil((timing.duration_s + lead) / timing.fine_dt_s) + 2
    return np.arange(n) * timing.fine_dt_s


def _tissue_kernels(mtt: np.ndarray, dispersion: np.ndarray, fine_t: np.ndarray, n_fft: int,
                    residue: ResidueKind, gamma_lambda: float) -> tuple[np.ndarray, np.ndarray]:
    """Spectra of (h_disp ⊗ R) with trapezoidal end weight, and the argmax time of h_disp ⊗ R."""
    dt = float(fine_t[1] - fine_t[0])
    res_f = np.fft.rfft(residue_function(residue, fine_t, mtt, gamma_lambda), n_fft, axis=-1)
    peak = np.zeros(mtt.shape)
    first = np.ones(mtt.shape)  # (h ⊗ R)(0) = h(0)·R(0), R(0) = 1
    dispersed = np.flatnonzero(dispersion > 0)
    if dispersed.size:
        disp = np.exp(-fine_t[None, :] / dispersion[dispersed, None])
        disp /= disp.sum(axis=-1, keepdims=True)
        first[dispersed] = disp[:, 0]
        res_f[dispersed] *= np.fft.rfft(disp, n_fft, axis=-1)
        eff = np.fft.irfft(res_f[dispersed], n_fft, axis=-1)[:, : fine_t.size]
        peak[dispersed] = np.argmax(eff, axis=-1) * dt
    # Trapezoidal weight: the kernel's first sample counts half, so Σ C_t·dt = F'·∫C_a·MTT.
    res_f -= 0.5 * first[:, None]
    return res_f, peak


def tissue_concentration(params: TissueParameters, timing: AcquisitionTiming, aif: GammaVariateAIF, *,
                         residue: ResidueKind = "exponential", gamma_lambda: float = 5.0,
                         haematocrit: HaematocritCorrection = DEFAULT_HAEMATOCRIT,
                         tmax_target_s: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free tissue concentration sampled at TR, shape ``(t,) + params.shape``, and true Tmax.

    With ``tmax_target_s`` the delays of ``params`` are ignored and chosen so
    that the true Tmax equals the target. Vectorised over voxels in chunks;
    zero-flow voxels stay at zero.
    """
    cbf = params.cbf.ravel()
    mtt = params.mtt_s.ravel()
    delay = params.delay_s.ravel().copy()
    dispersion = params.dispersion_s.ravel()
    if tmax_target_s is not None:
        target = np.broadcast_to(np.asarray(tmax_target_s, float), params.shape).ravel()
        delay = target.copy()  # minus each voxel's residue peak offset, per chunk below
    # A target Tmax leaves room for the residue peak offset (≤ 10 s) in the fine grid's lead.
    fine_t = _fine_grid(timing, delay - (10.0 if tmax_target_s is not None else 0.0))
    dt = timing.fine_dt_s
    n_fft = _fft_length(2 * fine_t.size)
    aif_f = np.fft.rfft(aif.concentration(fine_t), n_fft)
    # (ρ/k_H)·F with F in 1/s: C_t = (ρ/k_H)·F·(C_a ⊗ R).
    flow = cbf / haematocrit.cbf_scale
    times = timing.times_s
    out = np.zeros((cbf.size, times.size))
    tmax = delay.copy()
    for start in range(0, cbf.size, _CHUNK):
        sl = slice(start, start + _CHUNK)
        perfused = np.flatnonzero(cbf[sl] > 0) + start
        if perfused.size == 0:
            continue
        kern_f, peak = _tissue_kernels(mtt[perfused], dispersion[perfused], fine_t, n_fft, residue,
                                       gamma_lambda)
        if tmax_target_s is not None:
            delay[perfused] -= peak
        conc = np.fft.irfft(kern_f * aif_f, n_fft, axis=-1)[:, : fine_t.size] * dt
        conc *= flow[perfused, None]
        # Sample at TR and apply the delay in one interpolation on the fine grid.
        pos = (times[None, :] - delay[perfused, None]) / dt
        idx = np.clip(np.floor(pos).astype(np.int64), 0, fine_t.size - 2)
        frac = np.clip(pos - idx, 0.0, 1.0)
        rows = np.arange(perfused.size)[:, None]
        sampled = conc[rows, idx] * (1 - frac) + conc[rows, idx + 1] * frac
        sampled[pos < 0] = 0.0
        out[perfused] = sampled
        tmax[perfused] = delay[perfused] + peak
    shape = params.shape
    return np.moveaxis(out.reshape(shape + (times.size,)), -1, 0), tmax.reshape(shape)


def delayed_dispersed_aif(aif: GammaVariateAIF, timing: AcquisitionTiming, delay_s: float,
                          dispersion_s: float) -> np.ndarray:
    """The AIF seen downstream (e.g. a vein): delayed and dispersed, area unchanged; sampled at TR."""
    fine_t = _fine_grid(timing, np.array([0.0]))
    kernel = _exponential_kernel(dispersion_s, timing.fine_dt_s, fine_t.size)
    n_fft = _fft_length(2 * fine_t.size)
    conc = np.fft.irfft(np.fft.rfft(aif.concentration(fine_t), n_fft) * np.fft.rfft(kernel, n_fft),
                        n_fft)[: fine_t.size]
    return np.interp(timing.times_s - delay_s, fine_t, conc, left=0.0)


def calibrate_relaxivity(aif: GammaVariateAIF, timing: AcquisitionTiming, *,
                         aif_peak_signal_fraction: float = 0.4, grey_matter_signal_drop: float = 0.4,
                         grey_matter_cbf: float = 60.0, grey_matter_cbv: float = 4.0,
                         haematocrit: HaematocritCorrection = DEFAULT_HAEMATOCRIT) -> Relaxivity:
    """κ for blood and tissue per the recipe: AIF peak → 0.4·S0; GM (CBV 4, CBF 60) drops 40 %.

    Peaks are taken on the fine grid with an exponential residue and no delay,
    so κ does not depend on TR or on the residue chosen for a simulation.
    """
    fine = AcquisitionTiming(tr_s=timing.fine_dt_s, te_s=timing.te_s,
                             n_timepoints=round(timing.duration_s / timing.fine_dt_s) + 1,
                             baseline_frames=0, fine_dt_s=timing.fine_dt_s)
    aif_peak = float(np.max(aif.concentration(fine.times_s)))
    gm, _ = tissue_concentration(TissueParameters(np.array([grey_matter_cbf]), np.array([grey_matter_cbv])),
                                 fine, aif, haematocrit=haematocrit)
    kappa_a = -math.log(aif_peak_signal_fraction) / (timing.te_s * aif_peak)
    kappa_t = -math.log(1.0 - grey_matter_signal_drop) / (timing.te_s * float(np.max(gm)))
    return Relaxivity(artery=kappa_a, tissue=kappa_t)


def concentration_to_signal(concentration: np.ndarray, kappa: float, te_s: float,
                            s0: float | np.ndarray = S0_REF) -> np.ndarray:
    """S = S0·exp(−κ·TE·C)."""
    return s0 * np.exp(-kappa * te_s * concentration)


def add_rician_noise(signal: np.ndarray, sigma: float, seed: Seed = None) -> np.ndarray:
    """|S + n_re + i·n_im| with n ~ N(0, σ²) in each channel (magnitude images)."""
    if sigma <= 0:
        return np.array(signal, copy=True)
    rng = _rng(seed)
    real = signal + rng.normal(0.0, sigma, signal.shape)
    imag = rng.normal(0.0, sigma, signal.shape)
    return np.hypot(real, imag)


# --------------------------------------------------------------------------- curve sets


@dataclass(frozen=True)
class DSCSimulation:
    """Simulated curves (time-first) with their ground truth and the constants needed to analyse them."""

    times_s: np.ndarray
    #: Tissue signal, noisy if an SNR was given, shape ``(t,) + params.shape``.
    signal: np.ndarray
    signal_noise_free: np.ndarray
    #: Arterial signal (noisy like the tissue), shape ``(t,)``.
    aif_signal: np.ndarray
    aif_concentration: np.ndarray
    tissue_concentration: np.ndarray
    truth: GroundTruth
    timing: AcquisitionTiming
    relaxivity: Relaxivity
    haematocrit: HaematocritCorrection
    snr: float | None
    s0: float = S0_REF

    def delta_r2star(self, noisy: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(tissue, AIF) ΔR2* = −ln(S/S0)/TE with the known S0 (1/s)."""
        tissue = self.signal if noisy else self.signal_noise_free
        aif = self.aif_signal if noisy else concentration_to_signal(
            self.aif_concentration, self.relaxivity.artery, self.timing.te_s, self.s0)
        te = self.timing.te_s
        return -np.log(np.maximum(tissue, 1e-6) / self.s0) / te, -np.log(np.maximum(aif, 1e-6) / self.s0) / te


def simulate_dsc(params: TissueParameters, *, timing: AcquisitionTiming = AcquisitionTiming(),
                 aif: GammaVariateAIF | None = None, residue: ResidueKind = "exponential",
                 gamma_lambda: float = 5.0, snr: float | None = None, seed: Seed = None,
                 relaxivity: Relaxivity | None = None,
                 haematocrit: HaematocritCorrection = DEFAULT_HAEMATOCRIT) -> DSCSimulation:
    """Simulate DSC signal curves for every voxel of ``params`` (noise-free when ``snr`` is None).

    The AIF defaults to a gamma variate starting ``timing.baseline_frames``
    frames into the acquisition; κ defaults to :func:`calibrate_relaxivity`.
    """
    if aif is None:
        aif = GammaVariateAIF(t0_s=timing.bolus_arrival_s)
    if relaxivity is None:
        relaxivity = calibrate_relaxivity(aif, timing, haematocrit=haematocrit)
    conc, tmax = tissue_concentration(params, timing, aif, residue=residue, gamma_lambda=gamma_lambda,
                                      haematocrit=haematocrit)
    aif_conc = aif.concentration(timing.times_s)
    clean = concentration_to_signal(conc, relaxivity.tissue, timing.te_s)
    aif_clean = concentration_to_signal(aif_conc, relaxivity.artery, timing.te_s)
    rng = _rng(seed)
    sigma = 0.0 if snr is None else S0_REF / snr
    noisy = add_rician_noise(clean, sigma, rng)
    aif_noisy = add_rician_noise(aif_clean, sigma, rng)
    perfused = params.cbf > 0
    truth = GroundTruth(cbf=params.cbf.copy(), cbv=params.cbv.copy(),
                        mtt=np.where(perfused, params.mtt_s, np.nan), tmax=np.where(perfused, tmax, np.nan))
    return DSCSimulation(times_s=timing.times_s, signal=noisy, signal_noise_free=clean, aif_signal=aif_noisy,
                         aif_concentration=aif_conc, tissue_concentration=conc, truth=truth, timing=timing,
                         relaxivity=relaxivity, haematocrit=haematocrit, snr=snr)


# --------------------------------------------------------------------------- stroke phantom

#: Tissue labels of :attr:`StrokePhantom.labels`.
TISSUE_LABELS: dict[int, str] = {0: "background", 1: "grey matter", 2: "white matter", 3: "CSF",
                                 4: "artery", 5: "artery partial volume", 6: "vein"}
#: Zone labels of :attr:`StrokePhantom.zones`.
ZONE_LABELS: dict[int, str] = {0: "normal", 1: "oligaemia", 2: "penumbra", 3: "core"}


@dataclass(frozen=True)
class LesionZone:
    """Perfusion of one ischaemic zone relative to normal tissue, and its true Tmax."""

    cbf_factor: float
    cbv_factor: float
    tmax_s: float
    dispersion_s: float
    #: Ellipsoid semi-axes (x, y, z) in mm around the lesion centre.
    radii_mm: tuple[float, float, float]


@dataclass(frozen=True)
class StrokePhantomDesign:
    """Geometry and physiology of the stroke slab phantom (lengths in mm, flows in ml/100g/min)."""

    matrix: tuple[int, int] = (128, 128)
    n_slices: int = 12
    pixel_mm: float = 1.6
    slice_mm: float = 5.0
    brain_semi_axes_mm: tuple[float, float] = (68.0, 84.0)
    cortex_mm: float = 5.0
    grey_matter: tuple[float, float] = (60.0, 4.0)   # CBF, CBV
    white_matter: tuple[float, float] = (22.0, 2.0)
    grey_matter_tmax_s: float = 0.8
    white_matter_tmax_s: float = 1.3
    normal_dispersion_s: float = 0.5
    normal_tmax_jitter_s: float = 0.4
    #: Voxel-to-voxel log-normal spread of CBF and CBV.
    heterogeneity: float = 0.08
    #: Lesion centre (x, y, z) in mm; +x is the affected side (patient left, image right).
    lesion_centre_mm: tuple[float, float, float] = (38.0, 2.0, 0.0)
    oligaemia: LesionZone = LesionZone(0.8, 1.05, 4.0, 1.0, (42.0, 56.0, 50.0))
    penumbra: LesionZone = LesionZone(0.5, 1.1, 8.0, 2.0, (31.0, 43.0, 40.0))
    core: LesionZone = LesionZone(0.08, 0.3, 13.0, 2.0, (15.0, 21.0, 18.0))
    #: Uniform spread of the lesion zones' Tmax (±, s); keeps them a frame from 6 s and 10 s.
    zone_tmax_jitter_s: float = 0.5
    s0_grey: float = 100.0
    s0_white: float = 88.0
    s0_csf: float = 150.0
    s0_blood: float = 100.0
    vein_delay_s: float = 6.0
    vein_dispersion_s: float = 2.0
    artery_partial_volume: float = 0.4


@dataclass(frozen=True)
class StrokePhantom:
    """A simulated DSC-MRI slab with a one-sided ischaemic lesion and its ground truth (arrays (t, z, y, x))."""

    signal: np.ndarray                 # (t, z, y, x) float32
    timing: AcquisitionTiming
    spacing_mm: tuple[float, float, float]  # (z, y, x)
    labels: np.ndarray                 # (z, y, x) uint8, TISSUE_LABELS
    zones: np.ndarray                  # (z, y, x) uint8, ZONE_LABELS
    truth: GroundTruth                 # maps (z, y, x), NaN outside tissue
    tissue_mask: np.ndarray
    brain_mask: np.ndarray
    artery_mask: np.ndarray
    vein_mask: np.ndarray
    hypoperfusion_mask: np.ndarray     # true Tmax > 6 s
    severe_mask: np.ndarray            # true Tmax > 10 s
    core_mask: np.ndarray              # the core zone (rCBF < 30 %)
    aif_concentration: np.ndarray
    relaxivity: Relaxivity
    haematocrit: HaematocritCorrection
    design: StrokePhantomDesign
    snr: float | None
    seed: int | None

    @property
    def times_s(self) -> np.ndarray:
        return self.timing.times_s

    def lesion_truth(self) -> dict[str, float | bool]:
        """True volumes (ml), mismatch, HIR and the DEFUSE 3 decision with default criteria."""
        from inference.perfusion.lesions import (
            Defuse3Criteria,
            mismatch_ratio,
            volume_ml,
        )

        hypo = volume_ml(self.hypoperfusion_mask, self.spacing_mm)
        severe = volume_ml(self.severe_mask, self.spacing_mm)
        core = volume_ml(self.core_mask, self.spacing_mm)
        return {"hypoperfusion_ml": hypo, "severe_hypoperfusion_ml": severe, "core_ml": core,
                "mismatch_ml": hypo - core, "mismatch_ratio": mismatch_ratio(core, hypo),
                "hypoperfusion_intensity_ratio": severe / hypo if hypo else math.nan,
                "defuse3_eligible": Defuse3Criteria().eligible(core, hypo)}


def residue_peak_offset(mtt_s: np.ndarray, dispersion_s: np.ndarray, timing: AcquisitionTiming, *,
                        residue: ResidueKind = "exponential", gamma_lambda: float = 5.0) -> np.ndarray:
    """argmax_t (h_disp ⊗ R)(t) per voxel (s): what Tmax adds to the delay."""
    mtt = np.asarray(mtt_s, float).ravel()
    disp = np.broadcast_to(np.asarray(dispersion_s, float), np.shape(mtt_s)).ravel()
    fine_t = _fine_grid(timing, np.zeros(1))
    out = np.zeros(mtt.size)
    for start in range(0, mtt.size, _CHUNK):
        sl = slice(start, start + _CHUNK)
        _, out[sl] = _tissue_kernels(mtt[sl], disp[sl], fine_t, _fft_length(2 * fine_t.size), residue,
                                     gamma_lambda)
    return out.reshape(np.shape(mtt_s))


def _phantom_geometry(d: StrokePhantomDesign) -> tuple[np.ndarray, np.ndarray]:
    """Tissue labels and lesion zones on the (z, y, x) grid."""
    nz, (ny, nx) = d.n_slices, d.matrix
    z = ((np.arange(nz) - (nz - 1) / 2) * d.slice_mm)[:, None, None]
    y = (((ny - 1) / 2 - np.arange(ny)) * d.pixel_mm)[None, :, None]   # + anterior (up in the image)
    x = ((np.arange(nx) - (nx - 1) / 2) * d.pixel_mm)[None, None, :]   # + patient left (image right)
    shape = (nz, ny, nx)
    scale = np.sqrt(np.clip(1.0 - (z / 110.0) ** 2, 0.0, 1.0))
    ax, ay = d.brain_semi_axes_mm[0] * scale, d.brain_semi_axes_mm[1] * scale
    rho = np.sqrt((x / ax) ** 2 + (y / ay) ** 2)
    brain = rho <= 1.0
    labels = np.zeros(shape, np.uint8)
    labels[brain] = 2
    cortex = brain & (rho > 1.0 - d.cortex_mm / np.sqrt(ax * ay))
    deep = (((np.abs(x) - 22.0) / 9.0) ** 2 + ((y - 2.0) / 14.0) ** 2 <= 1.0) & (np.abs(z) < 20.0)
    labels[np.broadcast_to(cortex | deep, shape) & brain] = 1
    ventricles = (((np.abs(x) - 8.0) / 5.0) ** 2 + ((y + 2.0) / 20.0) ** 2 <= 1.0) & (np.abs(z) < 25.0)
    fissure = (np.abs(x) < d.pixel_mm) & ((y > 38.0) | (y < -50.0))
    labels[np.broadcast_to(ventricles | fissure, shape) & brain] = 3
    # Arteries (unaffected side): an MCA trunk 2×2 pixels in the lowest three slices with a
    # partial-volume ring, and the two ACAs beside the midline in the lowest five slices.
    cx, cy = round((nx - 1) / 2 - 30.0 / d.pixel_mm), round((ny - 1) / 2 - 6.0 / d.pixel_mm)
    for k in range(min(3, nz)):
        labels[k, cy - 2: cy + 2, cx - 2: cx + 2] = 5
        labels[k, cy - 1: cy + 1, cx - 1: cx + 1] = 4
    aca_row = round((ny - 1) / 2 - 30.0 / d.pixel_mm)
    labels[: min(5, nz), aca_row, nx // 2 - 1: nx // 2 + 1] = 4
    # Superior sagittal sinus: 4 pixels wide at the posterior midline, in every slice.
    sinus = (np.abs(x) < 2.5 * d.pixel_mm) & (y < -ay + 4.0) & brain
    labels[np.broadcast_to(sinus, shape)] = 6

    zones = np.zeros(shape, np.uint8)
    tissue = (labels == 1) | (labels == 2)
    lx, ly, lz = d.lesion_centre_mm
    affected = np.broadcast_to(x > d.pixel_mm, shape)
    for value, zone in ((1, d.oligaemia), (2, d.penumbra), (3, d.core)):
        rx, ry, rz = zone.radii_mm
        inside = ((x - lx) / rx) ** 2 + ((y - ly) / ry) ** 2 + ((z - lz) / rz) ** 2 <= 1.0
        zones[np.broadcast_to(inside, shape) & affected & tissue] = value
    return labels, zones


def make_stroke_phantom(seed: int | None = 0, snr: float | None = 50.0, *,
                        design: StrokePhantomDesign = StrokePhantomDesign(),
                        timing: AcquisitionTiming = AcquisitionTiming(),
                        aif: GammaVariateAIF | None = None,
                        haematocrit: HaematocritCorrection = DEFAULT_HAEMATOCRIT) -> StrokePhantom:
    """Simulate the stroke slab: brain-like ellipses with GM/WM, CSF, vessels and a one-sided lesion.

    The +x hemisphere holds nested ellipsoidal zones (oligaemia ⊃ penumbra ⊃
    core) with the design's CBF/CBV factors and true Tmax (zone value ±
    jitter, so oligaemia ≤ 4.5 s, penumbra 7.5–8.5 s, core ≥ 12.5 s with the
    defaults). Delays are set so that the *true* Tmax (delay + dispersed
    residue peak) hits those values. Arterial voxels carry the AIF; the sinus a
    delayed, dispersed copy; CSF has no perfusion. ``snr`` is S0_ref/σ of the
    Rician noise (None: noise-free).
    """
    rng = _rng(seed)
    d = design
    if aif is None:
        aif = GammaVariateAIF(t0_s=timing.bolus_arrival_s)
    relaxivity = calibrate_relaxivity(aif, timing, haematocrit=haematocrit)
    labels, zones = _phantom_geometry(d)
    tissue = (labels == 1) | (labels == 2)
    grey = labels[tissue] == 1
    zone = zones[tissue]
    n = int(tissue.sum())

    base_cbf = np.where(grey, d.grey_matter[0], d.white_matter[0])
    base_cbv = np.where(grey, d.grey_matter[1], d.white_matter[1])
    cbf_factor, cbv_factor = np.ones(n), np.ones(n)
    target_tmax = np.where(grey, d.grey_matter_tmax_s, d.white_matter_tmax_s) \
        + rng.uniform(-d.normal_tmax_jitter_s, d.normal_tmax_jitter_s, n)
    dispersion = np.full(n, d.normal_dispersion_s)
    for value, spec in ((1, d.oligaemia), (2, d.penumbra), (3, d.core)):
        sel = zone == value
        cbf_factor[sel], cbv_factor[sel], dispersion[sel] = spec.cbf_factor, spec.cbv_factor, spec.dispersion_s
        target_tmax[sel] = spec.tmax_s + rng.uniform(-d.zone_tmax_jitter_s, d.zone_tmax_jitter_s, sel.sum())
    cbf = base_cbf * cbf_factor * rng.lognormal(0.0, d.heterogeneity, n)
    cbv = base_cbv * cbv_factor * rng.lognormal(0.0, d.heterogeneity, n)
    params = TissueParameters(cbf, cbv, np.zeros(n), dispersion)
    conc, tmax = tissue_concentration(params, timing, aif, haematocrit=haematocrit, tmax_target_s=target_tmax)

    n_t = timing.n_timepoints
    signal = np.zeros((n_t,) + labels.shape)
    s0_tissue = np.where(grey, d.s0_grey, d.s0_white)
    flat = signal.reshape(n_t, -1)
    flat[:, tissue.ravel()] = concentration_to_signal(conc, relaxivity.tissue, timing.te_s, s0_tissue)
    aif_conc = aif.concentration(timing.times_s)
    artery_signal = concentration_to_signal(aif_conc, relaxivity.artery, timing.te_s, d.s0_blood)
    flat[:, (labels == 4).ravel()] = artery_signal[:, None]
    gm_params = TissueParameters(np.array([d.grey_matter[0]]), np.array([d.grey_matter[1]]),
                                 np.array([d.grey_matter_tmax_s]), np.array([0.0]))
    gm_conc, _ = tissue_concentration(gm_params, timing, aif, haematocrit=haematocrit)
    gm_signal = concentration_to_signal(gm_conc[:, 0], relaxivity.tissue, timing.te_s, d.s0_grey)
    pv = d.artery_partial_volume
    flat[:, (labels == 5).ravel()] = (pv * artery_signal + (1 - pv) * gm_signal)[:, None]
    vein_conc = delayed_dispersed_aif(aif, timing, d.vein_delay_s, d.vein_dispersion_s)
    flat[:, (labels == 6).ravel()] = concentration_to_signal(vein_conc, relaxivity.artery, timing.te_s,
                                                             d.s0_blood)[:, None]
    flat[:, (labels == 3).ravel()] = d.s0_csf
    if snr is not None:
        signal = add_rician_noise(signal, S0_REF / snr, rng)

    def to_map(values: np.ndarray) -> np.ndarray:
        out = np.full(labels.shape, np.nan, np.float32)
        out[tissue] = values
        return out

    truth = GroundTruth(cbf=to_map(cbf), cbv=to_map(cbv), mtt=to_map(params.mtt_s), tmax=to_map(tmax))
    return StrokePhantom(
        signal=signal.astype(np.float32), timing=timing, spacing_mm=(d.slice_mm, d.pixel_mm, d.pixel_mm),
        labels=labels, zones=zones, truth=truth, tissue_mask=tissue, brain_mask=labels > 0,
        artery_mask=(labels == 4) | (labels == 5), vein_mask=labels == 6,
        hypoperfusion_mask=tissue & (zones >= 2), severe_mask=tissue & (zones == 3),
        core_mask=tissue & (zones == 3), aif_concentration=aif_conc, relaxivity=relaxivity,
        haematocrit=haematocrit, design=d, snr=snr, seed=seed if isinstance(seed, int) else None)
