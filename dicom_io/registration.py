"""Rigid co-registration of volumes of one study (e.g. DCE-MRI phases) onto a reference grid.

Breathing and patient motion between the phases of a dynamic liver study
shift the organ by a few millimetres; a model that reads the phases side by
side needs them on one grid. :func:`register_rigid` finds the rigid
transform (a translation, or rotation plus translation) that best aligns a
*moving* volume with a *reference* one by maximising Mattes mutual
information (which tolerates the different contrast of each phase), in a
multi-resolution pyramid, with SimpleITK; it returns the moving volume
resampled onto the reference grid with the transform and quality figures.
:func:`register_phases` does this for every phase of a study.

A :class:`RegistrationError` says why volumes cannot be aligned: different
frames of reference that do not overlap, too little overlap, a mutual
information too low to trust, or a shift larger than the configured maximum
(which, in one study, means the registration has failed, not that the
patient moved by that much). Pipelines turn it into a failed job.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from dicom_io.errors import DicomIOError
from dicom_io.volume import Volume

if TYPE_CHECKING:
    import SimpleITK as sitk

log = logging.getLogger("pacsnode.dicom_io")

TransformKind = Literal["translation", "euler"]

#: Largest plausible motion between the phases of one study (mm); beyond it the registration is taken to have failed.
DEFAULT_MAX_SHIFT_MM = 25.0
#: Largest plausible rotation between phases (degrees), for ``euler`` registrations.
DEFAULT_MAX_ROTATION_DEG = 10.0
#: Mattes mutual information (nats) below which two volumes are taken to show different things.
DEFAULT_MIN_MUTUAL_INFORMATION = 0.05
#: Fraction of the reference volume that the moving volume must cover after alignment.
DEFAULT_MIN_OVERLAP = 0.5


class RegistrationError(DicomIOError):
    """Two volumes cannot be aligned; the message says why, in terms an administrator can check."""


@dataclass(frozen=True)
class RegistrationSettings:
    """How :func:`register_rigid` searches and when it gives up.

    ``shrink_factors`` and ``smoothing_sigmas`` (voxels) define the pyramid,
    coarse to fine; ``sampling`` is the fraction of voxels the metric samples
    (at random, with ``seed``, so runs repeat), at most ``max_samples`` per
    level; ``histogram_bins`` the Mattes histogram size. Both volumes are
    first averaged down (block means) to voxels of about
    ``working_spacing_mm``, so a 256×256×64 phase registers in seconds; the
    transform found applies to the full-resolution volume all the same.
    """

    transform: TransformKind = "translation"
    max_shift_mm: float = DEFAULT_MAX_SHIFT_MM
    max_rotation_deg: float = DEFAULT_MAX_ROTATION_DEG
    min_mutual_information: float = DEFAULT_MIN_MUTUAL_INFORMATION
    min_overlap: float = DEFAULT_MIN_OVERLAP
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas: tuple[float, ...] = (2.0, 1.0, 0.0)
    sampling: float = 0.1
    max_samples: int = 50_000
    working_spacing_mm: float = 3.0
    histogram_bins: int = 32
    iterations: int = 200
    seed: int = 7

    def __post_init__(self) -> None:
        if self.transform not in ("translation", "euler"):
            raise ValueError(f"transform must be 'translation' or 'euler', not {self.transform!r}")
        if len(self.shrink_factors) != len(self.smoothing_sigmas) or not self.shrink_factors:
            raise ValueError("shrink_factors and smoothing_sigmas need one entry per pyramid level")
        if not 0 < self.sampling <= 1:
            raise ValueError(f"sampling must be in (0, 1], got {self.sampling}")
        if self.max_samples < 1000:
            raise ValueError(f"max_samples must be at least 1000, got {self.max_samples}")
        if self.max_shift_mm <= 0:
            raise ValueError(f"max_shift_mm must be positive, got {self.max_shift_mm}")


@dataclass(frozen=True)
class RigidRegistration:
    """The moving volume aligned with the reference, and how well.

    ``transform`` maps reference (fixed) patient coordinates to moving ones
    (ITK's convention). ``shift_zyx_mm`` is how far the moving volume's
    content lies from the reference's, along the reference array's
    ``(z, y, x)`` axes: an organ that moved +3 mm along x in the moving
    volume gives ``(0, 0, 3)``.
    """

    array: np.ndarray
    transform: sitk.Transform
    shift_zyx_mm: tuple[float, float, float]
    rotation_deg: float
    #: Mattes mutual information (nats) before (identity) and after alignment; larger is better.
    mutual_information_before: float
    mutual_information: float
    #: Fraction of reference voxels inside the aligned moving volume.
    overlap: float
    iterations: int
    stop_condition: str

    @property
    def shift_mm(self) -> float:
        return float(np.linalg.norm(self.shift_zyx_mm))


@dataclass(frozen=True)
class RegisteredPhases:
    """Several volumes (phases) on the reference's grid, stacked ``[phase, z, y, x]``."""

    array: np.ndarray
    names: tuple[str, ...]
    reference: str
    #: The registration of each phase (the reference has none).
    registrations: Mapping[str, RigidRegistration]


def _float_image(volume: Volume) -> sitk.Image:
    import SimpleITK as sitk

    image = Volume(array=np.asarray(volume.array, dtype=np.float32), spacing=volume.spacing,
                   origin=volume.origin, direction=volume.direction).to_sitk()
    return sitk.Cast(image, sitk.sitkFloat32)


def overlap_fraction(moving: Volume, reference: Volume, transform: sitk.Transform | None = None,
                     samples_per_axis: int = 12) -> float:
    """Fraction of the reference volume whose points, mapped by *transform*, fall inside *moving*.

    Computed on a coarse lattice of the reference grid (the centres of
    ``samples_per_axis`` equal blocks along each axis), which is exact enough
    to decide whether two volumes overlap.
    """
    axes = [(np.arange(min(n, samples_per_axis)) + 0.5) * n / min(n, samples_per_axis) - 0.5
            for n in reference.grid_shape]
    zyx = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    points = reference.index_to_lps(zyx)
    if transform is not None:
        points = np.array([transform.TransformPoint(tuple(p)) for p in points])
    inverse = np.linalg.inv(moving.affine)
    xyz = points @ inverse[:3, :3].T + inverse[:3, 3]
    shape_xyz = np.array(moving.grid_shape[::-1], dtype=np.float64)
    inside = np.all((xyz >= -0.5) & (xyz <= shape_xyz - 0.5), axis=1)
    return float(inside.mean())


def _working_image(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """*image* block-averaged to voxels of about *spacing_mm* (integer factors; axes already coarser are kept)."""
    import SimpleITK as sitk

    factors = [max(1, round(spacing_mm / s)) for s in image.GetSpacing()]
    return image if factors == [1, 1, 1] else sitk.BinShrink(image, factors)


def _sampling(voxels: int, shrink: int, settings: RegistrationSettings) -> float:
    """The fraction of a pyramid level's voxels the metric samples: ``sampling``, capped at ``max_samples``."""
    level_voxels = max(1, voxels // shrink**3)
    return float(min(settings.sampling, max(settings.max_samples / level_voxels, 1e-4), 1.0))


def _mutual_information(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
                        settings: RegistrationSettings) -> float:
    """Mattes MI (nats, positive) of the pair under *transform*, at full resolution."""
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(_sampling(fixed.GetNumberOfPixels(), 1, settings), settings.seed)
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetMetricUseMovingImageGradientFilter(False)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetInitialTransform(transform, inPlace=False)
    return -float(method.MetricEvaluate(fixed, moving))


def _shift_and_rotation(transform: sitk.Transform, reference: Volume) -> tuple[tuple[float, float, float], float]:
    """Content shift along the reference's (z, y, x) axes and rotation angle (degrees) of *transform*."""
    centre = reference.index_to_lps(np.array(reference.grid_shape, dtype=np.float64) / 2 - 0.5)
    mapped = np.array(transform.TransformPoint(tuple(centre)))
    shift_lps = mapped - centre
    along_xyz = reference.direction.T @ shift_lps
    rotation = 0.0
    if hasattr(transform, "GetMatrix"):
        matrix = np.array(transform.GetMatrix()).reshape(3, 3)
        rotation = float(np.degrees(np.arccos(np.clip((np.trace(matrix) - 1) / 2, -1.0, 1.0))))
    return (float(along_xyz[2]), float(along_xyz[1]), float(along_xyz[0])), rotation


def register_rigid(moving: Volume, reference: Volume, settings: RegistrationSettings | None = None, *,
                   name: str = "moving", default_value: float | None = None) -> RigidRegistration:
    """Align *moving* with *reference*; the result's array lies on the reference grid.

    Raises :class:`RegistrationError` when the volumes do not overlap at all
    (named as such when their frames of reference differ), when the mutual
    information after alignment is below ``settings.min_mutual_information``,
    when the shift (rotation) exceeds ``settings.max_shift_mm``
    (``max_rotation_deg``), or when the aligned overlap is below
    ``settings.min_overlap``.
    ``name`` names the moving volume in messages (e.g. "arterial phase").
    Reference voxels that the moved volume does not cover take its nearest
    voxel's value (a phase shifted by a slice would otherwise get a black
    end slice, which a model reads as anatomy), or ``default_value`` when given.
    """
    import SimpleITK as sitk

    settings = settings or RegistrationSettings()
    other_frame = bool(moving.frame_of_reference_uid and reference.frame_of_reference_uid
                       and moving.frame_of_reference_uid != reference.frame_of_reference_uid)
    initial_overlap = overlap_fraction(moving, reference)
    if initial_overlap == 0.0:
        why = (f"they are in different frames of reference ({moving.frame_of_reference_uid} vs "
               f"{reference.frame_of_reference_uid}) and " if other_frame else "")
        raise RegistrationError(
            f"the {name} cannot be aligned with the reference: {why}their volumes do not overlap in patient "
            "space, so they were not acquired in one examination position")
    if other_frame:
        log.warning("registering volumes from different frames of reference", extra={
            "moving": name, "overlap": round(initial_overlap, 3)})

    fixed_full = _float_image(reference)
    moving_full = _float_image(moving)
    fixed_image = _working_image(fixed_full, settings.working_spacing_mm)
    moving_image = _working_image(moving_full, settings.working_spacing_mm)
    if settings.transform == "translation":
        initial: sitk.Transform = sitk.TranslationTransform(3)
    else:
        initial = sitk.CenteredTransformInitializer(
            fixed_image, moving_image, sitk.Euler3DTransform(),
            sitk.CenteredTransformInitializerFilter.GEOMETRY)
        initial.SetTranslation((0.0, 0.0, 0.0))  # type: ignore[attr-defined]
    before = _mutual_information(fixed_image, moving_image, initial, settings)

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings.histogram_bins)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentagePerLevel(
        [_sampling(fixed_image.GetNumberOfPixels(), shrink, settings) for shrink in settings.shrink_factors],
        settings.seed)
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetMetricUseMovingImageGradientFilter(False)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=0.01, numberOfIterations=settings.iterations,
        relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(settings.shrink_factors))
    method.SetSmoothingSigmasPerLevel(list(settings.smoothing_sigmas))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)
    try:
        found = method.Execute(fixed_image, moving_image)
    except RuntimeError as exc:
        raise RegistrationError(f"the {name} cannot be aligned with the reference: the registration failed "
                                f"({str(exc).splitlines()[-1] if str(exc) else exc})") from exc
    if isinstance(found, sitk.CompositeTransform) and found.GetNumberOfTransforms() == 1:
        found = found.GetNthTransform(0)
    after = _mutual_information(fixed_image, moving_image, found, settings)
    shift, rotation = _shift_and_rotation(found, reference)
    overlap = overlap_fraction(moving, reference, found)
    result_fields = {"transform": found, "shift_zyx_mm": shift, "rotation_deg": rotation,
                     "mutual_information_before": before, "mutual_information": after, "overlap": overlap,
                     "iterations": int(method.GetOptimizerIteration()),
                     "stop_condition": method.GetOptimizerStopConditionDescription()}
    shift_norm = float(np.linalg.norm(shift))
    if after < settings.min_mutual_information:
        raise RegistrationError(
            f"the {name} cannot be aligned with the reference: mutual information after alignment is "
            f"{after:.3f} nats, below the {settings.min_mutual_information:g} needed to trust it (the images do "
            "not show the same anatomy)")

    if shift_norm > settings.max_shift_mm:
        raise RegistrationError(
            f"the {name} cannot be aligned with the reference: the best alignment moves it by {shift_norm:.1f} mm "
            f"(z, y, x = {shift[0]:.1f}, {shift[1]:.1f}, {shift[2]:.1f} mm), more than max_shift_mm = "
            f"{settings.max_shift_mm:g} mm; check that the series belong to one examination")
    if rotation > settings.max_rotation_deg:
        raise RegistrationError(
            f"the {name} cannot be aligned with the reference: the best alignment rotates it by {rotation:.1f}°, "
            f"more than {settings.max_rotation_deg:g}°")
    if overlap < settings.min_overlap:
        raise RegistrationError(
            f"the {name} cannot be aligned with the reference: after alignment it covers {overlap:.0%} of the "
            f"reference volume, less than the {settings.min_overlap:.0%} required")
    resampled = sitk.Resample(moving_full, fixed_full, found, sitk.sitkLinear,
                              0.0 if default_value is None else float(default_value), sitk.sitkFloat32,
                              default_value is None)
    array = sitk.GetArrayFromImage(resampled)
    log.info("rigid registration", extra={
        "moving": name, "shift_zyx_mm": [round(v, 2) for v in shift], "rotation_deg": round(rotation, 2),
        "mi_before": round(before, 4), "mi_after": round(after, 4), "overlap": round(overlap, 3),
        "iterations": result_fields["iterations"]})
    return RigidRegistration(array=array, **result_fields)  # type: ignore[arg-type]


def register_phases(volumes: Mapping[str, Volume], reference: str, settings: RegistrationSettings | None = None,
                    *, skip: Sequence[str] = ()) -> RegisteredPhases:
    """Every volume of *volumes* aligned with ``volumes[reference]``, stacked in mapping order.

    Volumes named in *skip* (e.g. phases of one 4D series, already on one
    grid and known to be aligned) are only resampled onto the reference grid.
    """
    from dicom_io.study import resample_to

    if reference not in volumes:
        raise ValueError(f"reference {reference!r} is not one of the volumes {list(volumes)}")
    target = volumes[reference]
    arrays: list[np.ndarray] = []
    registrations: dict[str, RigidRegistration] = {}
    for name, volume in volumes.items():
        if name == reference:
            arrays.append(np.asarray(target.array, dtype=np.float32))
        elif name in skip:
            if volume.same_grid(target):
                arrays.append(np.asarray(volume.array, dtype=np.float32))
            else:
                arrays.append(resample_to(volume, target, "linear", allow_other_frame_of_reference=True)
                              .array.astype(np.float32))
        else:
            result = register_rigid(volume, target, settings, name=f"{name} phase")
            registrations[name] = result
            arrays.append(result.array)
    return RegisteredPhases(array=np.stack(arrays), names=tuple(volumes), reference=reference,
                            registrations=registrations)
