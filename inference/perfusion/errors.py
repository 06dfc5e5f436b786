"""Input errors of the perfusion pipeline, worded for the radiographer or PACS admin who must act on them."""

from __future__ import annotations

from inference.base import PipelineInputError


class PerfusionInputError(PipelineInputError):
    """A DSC-MRI series cannot be analysed as given."""


class TooFewTimePointsError(PerfusionInputError):
    """The series has too few dynamic time points for a bolus passage."""


class NoBaselineError(PerfusionInputError):
    """The contrast bolus arrives before enough pre-contrast images were acquired."""


class NoBolusDetectedError(PerfusionInputError):
    """No contrast bolus passage is visible in the series."""


class MissingEchoTimeError(PerfusionInputError):
    """EchoTime is absent, zero or implausible, so ΔR2* cannot be computed."""


class NoArterialInputError(PerfusionInputError):
    """No voxels with an arterial-like curve were found for the AIF."""
