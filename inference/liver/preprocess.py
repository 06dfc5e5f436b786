"""Preparing liver studies for the segmentation models: intensity normalisation and resampling.

The models see intensities on a fixed scale and voxels of a fixed size (the
model spacing in their manifest); a study comes with neither. Training and
inference both go through the functions here, so a site's data are prepared
exactly as the training data were.

**Normalisation** (:func:`normalise`, described by a JSON-able spec stored in
the manifest):

* ``ct-window``: Hounsfield units clipped to an abdominal window (default
  −150…250 HU, level 50, width 400) and mapped linearly to −1…1. CT numbers
  are absolute, so nothing is estimated from the image.
* ``mr-percentile``: MR signal has no absolute scale, and each DCE phase has its
  own. Per channel, the 1st and 99th percentiles *inside the body* are mapped to
  0 and 1 (values clipped to −0.5…2). The body is one mask for all channels:
  Otsu's threshold on the mean of the channels (so the air, which is most of a
  large field of view, does not decide the scale). The relative contrast of a
  lesion to the liver within each phase — what a radiologist reads as hyper- or
  hypo-enhancement — is kept.

**Resampling** (:func:`resample`): arrays ``[z, y, x]`` or ``[P, z, y, x]`` with
spacing ``(z, y, x)`` mm are resampled with SimpleITK on grids that share the
centre of voxel ``[0, 0, 0]``; the new size is the old extent divided by the
new spacing, rounded. Images use linear interpolation (labels nearest
neighbour); points past the last voxel centre take the nearest voxel's value.
Probabilities come back onto the study's own grid with
:func:`probabilities_to_grid` (linear, so they still sum to one).

Research use only; not a medical device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk

#: The default CT window (HU) mapped to −1…1.
CT_WINDOW_HU = (-150.0, 250.0)
#: The default MR percentiles (inside the body) mapped to 0 and 1.
MR_PERCENTILES = (1.0, 99.0)
#: Normalised MR values are clipped to this range (bright vessels, dark air in the bowel).
MR_CLIP = (-0.5, 2.0)


class PreprocessError(ValueError):
    """An array, spacing or normalisation spec cannot be prepared for the model."""


# --------------------------------------------------------------------------- normalisation


def default_normalisation(modality: str) -> dict[str, Any]:
    """The normalisation spec a new model of *modality* ("CT" or "MR") is trained with."""
    if modality == "CT":
        return {"method": "ct-window", "window_hu": list(CT_WINDOW_HU)}
    if modality == "MR":
        return {
            "method": "mr-percentile",
            "percentiles": list(MR_PERCENTILES),
            "clip": list(MR_CLIP),
            "body_mask": "Otsu threshold of the channel mean",
        }
    raise PreprocessError(f"no normalisation for modality {modality!r} (expected 'CT' or 'MR')")


def body_mask(images: np.ndarray) -> np.ndarray:
    """Voxels inside the body: Otsu's threshold on the mean over channels of ``[P, z, y, x]``."""
    mean = np.asarray(images, dtype=np.float32).mean(axis=0)
    if not np.all(np.isfinite(mean)):
        raise PreprocessError("the image has NaN or infinite values")
    if float(mean.max()) <= float(mean.min()):
        return np.ones(mean.shape, dtype=bool)
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetInsideValue(0)
    otsu.SetOutsideValue(1)
    mask = sitk.GetArrayFromImage(otsu.Execute(sitk.GetImageFromArray(mean))).astype(bool)
    return mask if mask.any() else np.ones(mean.shape, dtype=bool)


def normalise(images: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """``[P, z, y, x]`` float32 intensities normalised as *spec* (a manifest's ``normalisation``) says."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise PreprocessError(f"expected [P, z, y, x] channels, got shape {images.shape}")
    method = spec.get("method")
    if method == "ct-window":
        lo, hi = (float(v) for v in spec.get("window_hu", CT_WINDOW_HU))
        if not hi > lo:
            raise PreprocessError(f"CT window must be increasing, got {lo}…{hi}")
        centre, half = (hi + lo) / 2.0, (hi - lo) / 2.0
        return ((np.clip(images, lo, hi) - centre) / half).astype(np.float32)
    if method == "mr-percentile":
        p_lo, p_hi = (float(v) for v in spec.get("percentiles", MR_PERCENTILES))
        c_lo, c_hi = (float(v) for v in spec.get("clip", MR_CLIP))
        body = body_mask(images)
        out = np.empty_like(images)
        for k, channel in enumerate(images):
            lo, hi = np.percentile(channel[body], [p_lo, p_hi])
            scale = float(hi - lo) if hi > lo else 1.0
            out[k] = np.clip((channel - lo) / scale, c_lo, c_hi)
        return out
    raise PreprocessError(f"unknown normalisation method {method!r} (expected 'ct-window' or 'mr-percentile')")


# --------------------------------------------------------------------------- resampling


def _check_spacing(spacing: Sequence[float], name: str) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(np.isfinite(values)) or min(values) <= 0:
        raise PreprocessError(f"{name} must be three positive (z, y, x) mm values, got {spacing}")
    return values  # type: ignore[return-value]


def grid_shape(shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]) -> tuple[int, int, int]:
    """The ``[z, y, x]`` size covering the same extent at *new_spacing* (rounded, at least 1)."""
    return tuple(  # type: ignore[return-value]
        max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, new_spacing, strict=True)
    )


def resample(
    array: np.ndarray,
    spacing: Sequence[float],
    new_spacing: Sequence[float],
    *,
    shape: Sequence[int] | None = None,
    interpolation: str = "linear",
) -> np.ndarray:
    """Resample ``[z, y, x]`` or ``[P, z, y, x]`` from *spacing* to *new_spacing* (mm, zyx).

    *shape* fixes the output ``[z, y, x]`` size (e.g. to return exactly onto a
    study's grid); by default :func:`grid_shape`. *interpolation* is "linear"
    or "nearest" (labels). The output has the input's dtype for "nearest",
    float32 otherwise.
    """
    spacing = _check_spacing(spacing, "spacing")
    new_spacing = _check_spacing(new_spacing, "new spacing")
    array = np.asarray(array)
    if array.ndim not in (3, 4):
        raise PreprocessError(f"expected [z, y, x] or [P, z, y, x], got shape {array.shape}")
    channels = array if array.ndim == 4 else array[None]
    out_shape = tuple(int(n) for n in shape) if shape is not None else grid_shape(channels.shape[1:], spacing,
                                                                                 new_spacing)
    if interpolation not in ("linear", "nearest"):
        raise PreprocessError(f"interpolation must be 'linear' or 'nearest', got {interpolation!r}")
    if out_shape == channels.shape[1:] and np.allclose(spacing, new_spacing, rtol=0, atol=1e-6):
        same = channels.copy() if interpolation == "nearest" else channels.astype(np.float32)
        return same if array.ndim == 4 else same[0]
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputSpacing(tuple(reversed(new_spacing)))
    resampler.SetSize(tuple(int(n) for n in reversed(out_shape)))
    resampler.SetOutputOrigin((0.0, 0.0, 0.0))
    resampler.SetInterpolator(sitk.sitkLinear if interpolation == "linear" else sitk.sitkNearestNeighbor)
    resampler.SetUseNearestNeighborExtrapolator(True)
    results = []
    for channel in channels:
        source = channel.astype(np.float32) if interpolation == "linear" else channel
        image = sitk.GetImageFromArray(np.ascontiguousarray(source))
        image.SetSpacing(tuple(reversed(spacing)))
        results.append(sitk.GetArrayFromImage(resampler.Execute(image)))
    out = np.stack(results)
    return out if array.ndim == 4 else out[0]


def to_model_grid(images: np.ndarray, spacing: Sequence[float], model_spacing: Sequence[float]) -> np.ndarray:
    """``[P, z, y, x]`` images resampled (linearly) onto the model spacing."""
    return resample(images, spacing, model_spacing, interpolation="linear")


def probabilities_to_grid(
    probabilities: np.ndarray,
    model_spacing: Sequence[float],
    shape: Sequence[int],
    spacing: Sequence[float],
) -> np.ndarray:
    """``[classes, z, y, x]`` probabilities from the model grid back onto a study grid of *shape*, *spacing*."""
    out = resample(probabilities, model_spacing, spacing, shape=shape, interpolation="linear")
    total = out.sum(axis=0, keepdims=True)
    return (out / np.maximum(total, 1e-6)).astype(np.float32)


__all__ = [
    "CT_WINDOW_HU",
    "MR_CLIP",
    "MR_PERCENTILES",
    "PreprocessError",
    "body_mask",
    "default_normalisation",
    "grid_shape",
    "normalise",
    "probabilities_to_grid",
    "resample",
    "to_model_grid",
]
