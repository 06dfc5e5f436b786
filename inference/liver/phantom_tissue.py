"""Tissue properties, contrast kinetics and signal equations of the liver phantom.

Every structure of the phantom is a :class:`Tissue`: relaxation times and
proton density (MR), diffusion coefficient, unenhanced attenuation (CT) and
how contrast reaches it. Images are computed from these, not painted with
per-phase grey values, so the phases stay physically consistent:

* **Kinetics** (:class:`Kinetics`) – an aortic input ``C_a(t)`` (gamma-variate
  first pass plus a slowly rising, slowly washing-out equilibrium term), a
  portal-venous input ``C_p`` (the aortic curve delayed and dispersed through
  the splanchnic bed) and, for each tissue, the dual-input one-compartment
  model ``dC/dt = F·(f_a·C_a + (1−f_a)·C_p) − (F/v_e)·C`` (Materne et al.),
  with flow ``F`` (1/s), arterial fraction ``f_a`` and distribution volume
  ``v_e``. Vessels and blood pools take a blood curve directly (aorta,
  portal, hepatic venous outflow, systemic venous return), optionally
  delayed per voxel (centripetal filling of a haemangioma).
* **MR** – T1-weighted 3D spoiled gradient echo (the VIBE/LAVA of DCE
  protocols) ``S = M0·sinα·(1−E1)/(1−cosα·E1)``, ``E1 = exp(−TR·R1)``,
  ``R1 = 1/T1 + r1·C``; T2-weighted single-shot fast spin echo with fat
  saturation ``S = M0·exp(−TE/T2)`` (flowing blood is dark, "black blood");
  diffusion ``S = M0·exp(−TE/T2)·exp(−b·ADC)`` at b = 800 s/mm².
* **CT** – ``HU = HU_unenhanced + k·C`` at the portal-venous time.

Concentrations are in mM-like units for gadolinium; CT scales the same
curves by ``hu_per_unit`` (iodine kinetics are extracellular too).
Research use only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

#: Fine time grid of the kinetic model (s).
TIME_STEP_S = 0.5
TIME_END_S = 400.0

BloodSource = Literal["aorta", "portal", "hepatic", "systemic", "blood"]


@dataclass(frozen=True)
class Tissue:
    """Physical properties of one tissue at 1.5 T.

    ``m0`` relative proton density; ``t1_ms``/``t2_ms`` relaxation times;
    ``adc`` apparent diffusion coefficient (10⁻³ mm²/s); ``hu`` unenhanced CT
    attenuation. Contrast: either a compartment (``flow_per_s`` > 0, with
    ``arterial_fraction`` and ``ve``) or a blood pool (``blood`` names the
    curve, ``ve`` is the blood volume fraction). ``fat`` tissues are
    suppressed by fat saturation; ``flowing`` blood is dark on T2/DWI.
    """

    name: str
    m0: float
    t1_ms: float
    t2_ms: float
    adc: float
    hu: float
    flow_per_s: float = 0.0
    arterial_fraction: float = 1.0
    ve: float = 0.0
    blood: BloodSource | None = None
    fat: bool = False
    flowing: bool = False

    def varied(self, rng: np.random.Generator, fraction: float = 0.06) -> Tissue:
        """The same tissue with relaxation, diffusion and kinetics jittered by ~``fraction`` (per case)."""
        def j(value: float) -> float:
            return float(value * math.exp(rng.normal(0.0, fraction)))

        return replace(self, m0=j(self.m0), t1_ms=j(self.t1_ms), t2_ms=j(self.t2_ms), adc=j(self.adc),
                       hu=self.hu + float(rng.normal(0.0, 3.0)), flow_per_s=j(self.flow_per_s), ve=j(self.ve))


def _t(name: str, m0: float, t1: float, t2: float, adc: float, hu: float, **kw: object) -> Tissue:
    return Tissue(name, m0, t1, t2, adc, hu, **kw)  # type: ignore[arg-type]


#: Normal anatomy (1.5 T relaxation times after de Bertoldi / Stanisz; CT values typical of adults).
TISSUES: dict[str, Tissue] = {t.name: t for t in (
    _t("air", 0.0, 1000, 1, 3.0, -1000.0),
    _t("lung", 0.06, 1200, 30, 2.0, -850.0, flow_per_s=0.02, ve=0.1),
    _t("fat", 0.95, 340, 130, 0.05, -100.0, flow_per_s=0.003, ve=0.08, fat=True),
    _t("skin", 0.75, 900, 40, 1.2, 40.0, flow_per_s=0.005, ve=0.15),
    _t("muscle", 0.72, 860, 44, 1.45, 50.0, flow_per_s=0.005, ve=0.12),
    _t("bone", 0.05, 300, 2, 0.3, 850.0),
    _t("marrow", 0.55, 560, 55, 0.5, 250.0, flow_per_s=0.006, ve=0.1, fat=True),
    _t("disc", 0.80, 1100, 90, 1.8, 80.0),
    _t("liver", 0.70, 586, 46, 1.15, 60.0, flow_per_s=0.020, arterial_fraction=0.25, ve=0.30),
    _t("fibrosis", 0.74, 900, 75, 1.1, 50.0, flow_per_s=0.003, arterial_fraction=0.6, ve=0.45),
    _t("spleen", 0.78, 1057, 79, 0.85, 50.0, flow_per_s=0.040, ve=0.28),
    _t("kidney_cortex", 0.80, 966, 87, 2.0, 32.0, flow_per_s=0.080, ve=0.32),
    _t("kidney_medulla", 0.82, 1412, 120, 1.9, 30.0, flow_per_s=0.018, ve=0.45),
    _t("stomach_wall", 0.74, 900, 60, 1.4, 45.0, flow_per_s=0.015, ve=0.2),
    _t("bowel_content", 0.9, 2200, 400, 2.6, 15.0),
    _t("bile", 0.98, 2800, 900, 3.0, 8.0),
    _t("ascites", 0.98, 3000, 1200, 3.1, 5.0),
    _t("myocardium", 0.78, 1030, 50, 1.3, 45.0, flow_per_s=0.02, ve=0.25),
    _t("aorta", 0.85, 1441, 290, 2.0, 42.0, blood="aorta", ve=1.0, flowing=True),
    _t("ivc", 0.85, 1441, 290, 2.0, 42.0, blood="systemic", ve=1.0, flowing=True),
    _t("portal_vein", 0.85, 1441, 290, 2.0, 42.0, blood="portal", ve=1.0, flowing=True),
    _t("hepatic_vein", 0.85, 1441, 290, 2.0, 42.0, blood="hepatic", ve=1.0, flowing=True),
    _t("heart_blood", 0.85, 1441, 290, 2.0, 42.0, blood="aorta", ve=1.0, flowing=True),
)}


# --------------------------------------------------------------------------- kinetics


@dataclass(frozen=True)
class Kinetics:
    """One injection: input curves and the times at which the phases were acquired.

    ``phase_times_s`` maps each DCE phase to its time after injection
    (pre-contrast at 0). The aortic first pass arrives at ``arrival_s``.
    """

    arrival_s: float = 16.0
    peak_mM: float = 6.0
    alpha: float = 3.0
    beta_s: float = 2.5
    injection_s: float = 10.0
    equilibrium_mM: float = 1.2
    portal_delay_s: float = 9.0
    portal_dispersion_s: float = 16.0
    phase_times_s: tuple[tuple[str, float], ...] = (
        ("pre", 0.0), ("arterial", 30.0), ("portal", 70.0), ("delayed", 180.0))

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Kinetics:
        """A plausible patient/injection: cardiac output and bolus timing vary between cases."""
        arrival = rng.uniform(13.0, 20.0)
        return cls(
            arrival_s=arrival,
            peak_mM=rng.uniform(4.5, 7.5),
            beta_s=rng.uniform(2.0, 3.0),
            injection_s=rng.uniform(8.0, 14.0),
            equilibrium_mM=rng.uniform(0.9, 1.4),
            portal_delay_s=rng.uniform(7.0, 11.0),
            portal_dispersion_s=rng.uniform(13.0, 20.0),
            phase_times_s=(("pre", 0.0), ("arterial", arrival + rng.uniform(12.0, 20.0)),
                           ("portal", rng.uniform(62.0, 80.0)), ("delayed", rng.uniform(160.0, 210.0))),
        )

    def phase_time(self, phase: str) -> float:
        return dict(self.phase_times_s)[phase]

    @property
    def times(self) -> np.ndarray:
        return np.arange(0.0, TIME_END_S, TIME_STEP_S)

    def aorta(self) -> np.ndarray:
        t = self.times
        tau = np.clip(t - self.arrival_s, 0.0, None)
        peak_tau = self.alpha * self.beta_s
        first = (tau / peak_tau) ** self.alpha * np.exp(self.alpha - tau / self.beta_s)
        box = np.ones(max(1, int(round(self.injection_s / TIME_STEP_S))))  # the injection lasts injection_s
        first = np.convolve(first, box)[: t.size]
        first *= self.peak_mM / max(float(first.max()), 1e-9)
        rise = np.clip(tau - 6.0, 0.0, None)
        equilibrium = self.equilibrium_mM * (1.0 - np.exp(-rise / 18.0)) * np.exp(-tau / 1200.0)
        return first + equilibrium

    def _disperse(self, curve: np.ndarray, delay_s: float, mean_s: float) -> np.ndarray:
        shifted = np.interp(self.times - delay_s, self.times, curve, left=0.0)
        decay = math.exp(-TIME_STEP_S / mean_s)
        return _first_order(shifted, (1.0 - decay), decay)

    def blood_curves(self, liver: Tissue | None = None) -> dict[str, np.ndarray]:
        """Concentration in each blood pool on :attr:`times`; hepatic veins drain ``liver``."""
        aorta = self.aorta()
        portal = self._disperse(aorta, self.portal_delay_s, self.portal_dispersion_s)
        liver = liver or TISSUES["liver"]
        hepatic = self.tissue_curve(liver, {"aorta": aorta, "portal": portal}) / liver.ve
        systemic = self._disperse(aorta, 8.0, 14.0)
        blood = self._disperse(aorta, 2.0, 6.0)
        return {"aorta": aorta, "portal": portal, "hepatic": hepatic, "systemic": systemic, "blood": blood}

    def tissue_curve(self, tissue: Tissue, blood: dict[str, np.ndarray]) -> np.ndarray:
        """Tissue concentration on :attr:`times` (dual-input one-compartment model, or a blood pool)."""
        if tissue.blood is not None:
            return tissue.ve * blood[tissue.blood]
        if tissue.flow_per_s <= 0 or tissue.ve <= 0:
            return np.zeros_like(self.times)
        inflow = tissue.arterial_fraction * blood["aorta"] + (1.0 - tissue.arterial_fraction) * blood["portal"]
        decay = math.exp(-TIME_STEP_S * tissue.flow_per_s / tissue.ve)
        return _first_order(inflow, tissue.flow_per_s * TIME_STEP_S, decay)


def _first_order(inflow: np.ndarray, gain: float, decay: float) -> np.ndarray:
    """``y[n] = decay·y[n−1] + gain·x[n]``: a causal exponential convolution (800 steps, plain loop)."""
    out = np.empty_like(inflow)
    acc = 0.0
    for n, value in enumerate(inflow.tolist()):
        acc = decay * acc + gain * value
        out[n] = acc
    return out


# --------------------------------------------------------------------------- signal equations


@dataclass(frozen=True)
class MRProtocol:
    """Sequence parameters of the simulated liver protocol (1.5 T)."""

    vibe_tr_ms: float = 4.1
    vibe_te_ms: float = 1.9
    vibe_flip_deg: float = 12.0
    relaxivity_per_mM_s: float = 4.5
    t2_te_ms: float = 90.0
    t2_tr_ms: float = 4000.0
    dwi_te_ms: float = 62.0
    dwi_tr_ms: float = 5200.0
    b_value: float = 800.0
    fat_suppression: float = 0.12
    flow_void: float = 0.15


def concentration(curve: np.ndarray, t_s: float, delay_s: np.ndarray | float = 0.0) -> np.ndarray | float:
    """The curve (on the kinetic time grid) at ``t_s − delay_s`` (per voxel when ``delay_s`` is an array)."""
    times = np.asarray(t_s - np.asarray(delay_s, dtype=np.float32), dtype=np.float32)
    index = np.clip(times / TIME_STEP_S, 0.0, curve.size - 1.001)
    low = index.astype(np.int64)
    frac = (index - low).astype(np.float32)
    value = curve[low] * (1 - frac) + curve[low + 1] * frac
    return value.astype(np.float32) if isinstance(value, np.ndarray) else float(value)


def t1w_signal(m0: np.ndarray | float, t1_ms: float, conc: np.ndarray | float,
               protocol: MRProtocol) -> np.ndarray | float:
    """Spoiled gradient echo signal with gadolinium shortening T1."""
    r1 = 1000.0 / t1_ms + protocol.relaxivity_per_mM_s * conc
    e1 = np.exp(-protocol.vibe_tr_ms / 1000.0 * r1)
    alpha = math.radians(protocol.vibe_flip_deg)
    return m0 * math.sin(alpha) * (1.0 - e1) / (1.0 - math.cos(alpha) * e1)


def t2w_signal(m0: np.ndarray | float, tissue: Tissue, protocol: MRProtocol) -> np.ndarray | float:
    return m0 * (1.0 - math.exp(-protocol.t2_tr_ms / tissue.t1_ms)) * math.exp(-protocol.t2_te_ms / tissue.t2_ms)


def dwi_signal(m0: np.ndarray | float, tissue: Tissue, adc: np.ndarray | float,
               protocol: MRProtocol) -> np.ndarray | float:
    t2_part = (1.0 - math.exp(-protocol.dwi_tr_ms / tissue.t1_ms)) * math.exp(-protocol.dwi_te_ms / tissue.t2_ms)
    return m0 * t2_part * np.exp(-protocol.b_value * np.asarray(adc) * 1e-3)


def effective_m0(tissue: Tissue, channel: str, protocol: MRProtocol) -> float:
    """Proton density as a sequence sees it: fat saturated; flowing blood dark on T2 and DWI."""
    m0 = tissue.m0 * (protocol.fat_suppression if tissue.fat else 1.0)
    if tissue.flowing and channel in ("t2", "dwi"):
        m0 *= protocol.flow_void
    return m0
