"""Physiological constants that turn DSC-MRI curve ratios into CBF and CBV units.

Indicator-dilution theory gives, for tissue concentration C_t and arterial
concentration C_a (Østergaard et al., MRM 1996)::

    C_t(t) = (ρ / k_H) · F · (C_a ⊗ R)(t)
    CBV    = (k_H / ρ) · ∫C_t / ∫C_a              [ml/g]
    CBF    = (k_H / ρ) · max(F·R)                  [ml/g/s]

``ρ`` is the brain density (1.04 g/ml) and ``k_H = (1 − Hct_large) /
(1 − Hct_small)`` corrects for the haematocrit being lower in capillaries
(typically 0.25) than in the large arteries where the AIF is measured
(typically 0.45): the tracer stays in plasma, so the same blood volume holds
less tracer in large vessels. The simulator uses the forward form, the
deconvolution the inverse, with the same constants, so a round trip is exact.

ΔR2* is proportional to concentration, ΔR2* = κ·C, but κ differs between
blood in large vessels and tissue (different vessel geometry). In vivo κ is
unknown and CBF/CBV are only "absolute" up to that ratio; ratios of CBF within
one study (rCBF) and Tmax do not depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HaematocritCorrection:
    """Haematocrit and density constants for absolute CBF/CBV units."""

    #: Haematocrit in large vessels (where the AIF is measured).
    large_vessel_hct: float = 0.45
    #: Haematocrit in capillaries.
    small_vessel_hct: float = 0.25
    #: Brain tissue density (g/ml).
    brain_density_g_per_ml: float = 1.04

    def __post_init__(self) -> None:
        for name in ("large_vessel_hct", "small_vessel_hct"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.brain_density_g_per_ml <= 0:
            raise ValueError(f"brain density must be positive, got {self.brain_density_g_per_ml}")

    @property
    def k_h(self) -> float:
        """k_H = (1 − Hct_large) / (1 − Hct_small); 0.733 for 0.45/0.25."""
        return (1.0 - self.large_vessel_hct) / (1.0 - self.small_vessel_hct)

    @property
    def cbv_scale(self) -> float:
        """Multiply ∫C_t/∫C_a by this to get CBV in ml/100g."""
        return 100.0 * self.k_h / self.brain_density_g_per_ml

    @property
    def cbf_scale(self) -> float:
        """Multiply max of the deconvolved residue (1/s) by this to get CBF in ml/100g/min."""
        return 60.0 * self.cbv_scale


@dataclass(frozen=True)
class Relaxivity:
    """ΔR2* per unit concentration (1/(s·mM)) in large-vessel blood and in tissue."""

    artery: float
    tissue: float

    def __post_init__(self) -> None:
        if self.artery <= 0 or self.tissue <= 0:
            raise ValueError(f"relaxivities must be positive, got artery={self.artery}, tissue={self.tissue}")

    @property
    def tissue_to_artery_ratio(self) -> float:
        """κ_tissue / κ_artery: divide CBF and CBV computed from ΔR2* ratios by this."""
        return self.tissue / self.artery


#: Typical adult values (Hct 0.45 / 0.25, ρ 1.04 g/ml).
DEFAULT_HAEMATOCRIT = HaematocritCorrection()

#: The default: one κ for blood and tissue (uncalibrated in vivo data).
UNIT_RELAXIVITY = Relaxivity(artery=1.0, tissue=1.0)
