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

from inference.perfusion.physiology import HaematocritCorrection, Relaxivity

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
        n_fft = 2 * grid.size
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


def _fine_grid(timing: AcquisitionTiming, delays: np.ndarray) -> np.ndarray:
    """Fine grid from 0 long enough for the acquisition and the earliest-arriving (negative-delay) tissue."""
    lead = max(0.0, -float(np.min(delays, initial=0.0)))
    n = int(math.ceil((timing.duration_s + lead) / timing.fine_dt_s)) + 2
    return np.arange(n) * timing.fine_dt_s


def _tissue_kernels(mtt: np.ndarray, dispersion: np.ndarray, fine_t: np.ndarray, n_fft: int,
                    residue: ResidueKind, gamma_lambda: float) -> tuple[np.ndarray, np.ndarray]:
    """Spectra of (h_disp ⊗ R) with trapezoidal end weight, and the argmax time of h_disp ⊗ R."""
    dt = float(fine_t[1] - fine_t[0])
    res = residue_function(residue, fine_t, mtt, gamma_lambda)
    res_f = np.fft.rfft(res, n_fft, axis=-1)
    peak = np.zeros(mtt.shape)
    dispersed = dispersion > 0
    if np.any(dispersed):
        disp = np.exp(-fine_t[None, :] / np.where(dispersed, dispersion, 1.0)[:, None])
        disp /= disp.sum(axis=-1, keepdims=True)
        disp_f = np.fft.rfft(disp, n_fft, axis=-1)
        res_f = np.where(dispersed[:, None], res_f * disp_f, res_f)
        eff = np.fft.irfft(res_f[dispersed], n_fft, axis=-1)[:, : fine_t.size]
        peak[dispersed] = np.argmax(eff, axis=-1) * dt
    # Trapezoidal weight: the kernel's first sample counts half, so Σ C_t·dt = F'·∫C_a·MTT.
    first = np.fft.irfft(res_f, n_fft, axis=-1)[:, :1]
    res_f = res_f - 0.5 * first
    return res_f, peak


def tissue_concentration(params: TissueParameters, timing: AcquisitionTiming, aif: GammaVariateAIF, *,
                         residue: ResidueKind = "exponential", gamma_lambda: float = 5.0,
                         haematocrit: HaematocritCorrection = HaematocritCorrection(),
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free tissue concentration sampled at TR, shape ``(t,) + params.shape``, and true Tmax.

    Vectorised over voxels in chunks; zero-flow voxels stay at zero.
    """
    cbf = params.cbf.ravel()
    mtt = params.mtt_s.ravel()
    delay = params.delay_s.ravel()
    dispersion = params.dispersion_s.ravel()
    fine_t = _fine_grid(timing, delay)
    dt = timing.fine_dt_s
    n_fft = 2 * fine_t.size
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
        tmax[perfused] += peak
    shape = params.shape
    return np.moveaxis(out.reshape(shape + (times.size,)), -1, 0), tmax.reshape(shape)


def delayed_dispersed_aif(aif: GammaVariateAIF, timing: AcquisitionTiming, delay_s: float,
                          dispersion_s: float) -> np.ndarray:
    """The AIF seen downstream (e.g. a vein): delayed and dispersed, area unchanged; sampled at TR."""
    fine_t = _fine_grid(timing, np.array([0.0]))
    kernel = _exponential_kernel(dispersion_s, timing.fine_dt_s, fine_t.size)
    n_fft = 2 * fine_t.size
    conc = np.fft.irfft(np.fft.rfft(aif.concentration(fine_t), n_fft) * np.fft.rfft(kernel, n_fft),
                        n_fft)[: fine_t.size]
    return np.interp(timing.times_s - delay_s, fine_t, conc, left=0.0)


def calibrate_relaxivity(aif: GammaVariateAIF, timing: AcquisitionTiming, *,
                         aif_peak_signal_fraction: float = 0.4, grey_matter_signal_drop: float = 0.4,
                         grey_matter_cbf: float = 60.0, grey_matter_cbv: float = 4.0,
                         haematocrit: HaematocritCorrection = HaematocritCorrection()) -> Relaxivity:
    """κ for blood and tissue per the recipe: AIF peak → 0.4·S0; GM (CBV 4, CBF 60) drops 40 %.

    Peaks are taken on the fine grid with an exponential residue and no delay,
    so κ does not depend on TR or on the residue chosen for a simulation.
    """
    fine = AcquisitionTiming(tr_s=timing.fine_dt_s, te_s=timing.te_s,
                             n_timepoints=int(round(timing.duration_s / timing.fine_dt_s)) + 1,
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
                 haematocrit: HaematocritCorrection = HaematocritCorrection()) -> DSCSimulation:
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
