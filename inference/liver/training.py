"""Training the liver segmentation models on the liver phantom (and a site's labelled studies), on CPU.

Five models, one recipe (:data:`MODEL_RECIPES`):

* ``liver-seg-mr`` — :class:`~inference.liver.models.FusedUNet4D` on the four
  DCE phases (pre, arterial, portal, delayed);
* ``liver-seg-mr-baseline`` — :class:`~inference.liver.models.UNet3D` on the
  portal phase alone: the single-phase baseline the 4D model is compared with
  (same cases, crops, loss, optimiser and steps);
* ``liver-seg-ct`` — :class:`~inference.liver.models.UNet3D` on portal-venous CT;
* ``liver-seg-ct-multiphase`` — the same network on arterial + portal-venous CT
  (the clinical liver protocol; arterial enhancement shows lesions the portal
  phase hides);
* ``liver-seg-ct-4d`` — the 4D network of ``liver-seg-mr`` on arterial +
  portal-venous CT, its first training started from the MR model (transfer:
  the network's weights do not depend on the number of phases).

**Data.** Cases come from :func:`inference.liver.phantom.simulate_liver_mr` /
``simulate_liver_ct`` with seeds from :data:`FIRST_TRAINING_SEED` (1000) on; the
held-out evaluation seeds are 0–99 (:data:`inference.liver.evaluation.EVALUATION_SEEDS`),
so training never sees an evaluation phantom. Versions are compared on seeds
0…49; seeds 50–99 (:data:`CONFIRMATION_SEEDS`) confirm the version chosen. Each training ``--seed`` draws
its phantoms from its own stretch of seeds (:func:`first_phantom_seed`), so a
round that continues from an earlier model with a new ``--seed`` sees new
phantoms rather than the ones it was trained on already. A pool of ``pool_size``
phantoms is simulated at the start and one case is replaced by a new seed every
``refresh_every`` steps (simulating a phantom per step would cost more than the
step). Each case is prepared exactly as at inference
(:mod:`inference.liver.preprocess`: normalised, resampled to the model spacing).
Phantoms are simulated on the model grid over a fixed field of view
(:func:`phantom_grid`), so a model of a finer ``--spacing`` is trained and
scored on finer phantoms.
The phantom's phases move rigidly between acquisitions; the pipeline aligns
them with :mod:`dicom_io.registration` before the model sees them, and here the
known shift is undone instead (an ideal registration), see :func:`align_channels`.
A site's labelled studies (``--data DIR``: one folder per study with its image
series and a SEG holding liver and tumour segments) are read by
:func:`load_site_study` exactly as the pipeline reads a study and join the pool.

**Recipe.** Random crops of the patch size, two in three centred on a tumour or
liver voxel; per-channel random intensity scale and shift; Dice + cross-entropy
loss (MONAI ``DiceCELoss``, batch Dice); Adam with a cosine learning-rate decay
over the planned steps. ``torch.manual_seed``, one ``numpy`` Generator, fixed
threads and deterministic algorithms make a run reproducible for a seed on the
same CPU and torch build. Training runs on CUDA when torch sees a GPU
(``--device``; the manifest records which), the way to the longer rounds and
finer grids the CPU cannot afford; such a run is seeded but not
bit-reproducible (see :attr:`TrainingSettings.device`). ``--minutes`` stops
early between steps (recorded, since it makes the result depend on the
machine's speed). ``--crop-by-lesion`` picks a lesion before a voxel for the
tumour-centred crops, so small lesions are trained on as often as large ones, and ``--dice-per-crop`` weighs them as
much in the loss. ``--mirror`` mirrors each crop along z,
y and x at random (each with probability one half); such a model is then run on
the study and on its three mirrored copies, the probabilities averaged (the
manifest's ``inference.mirroring``: a network that never saw a mirrored abdomen
reads one poorly, so only these models are). ``--init MANIFEST`` starts from a model
of the same recipe (fine-tuning: a site adapting the committed model to its
studies, or a longer training continued), or of the recipe's ``starts_from``
(transfer to other inputs); the manifest records which.

:func:`train_liver_model` writes ``<version>.pt``, ``<version>.json`` (manifest
with sha256, recipe and held-out metrics) and regenerates
``LIVER_SEG_MODEL_CARD.md`` from every manifest in the folder
(:mod:`inference.liver.segmentation_card`); the recipes and settings are in
:mod:`inference.liver.recipes`; :func:`main` is
``pacsnode train liver-seg-mr`` / ``liver-seg-ct`` / ``liver-seg-mr-baseline``;
:func:`ensemble_main` is ``pacsnode ensemble liver-seg``, which writes an ensemble
of trained models (:mod:`inference.liver.ensemble`), evaluates it as a model is
evaluated and adds it to the card.

Research use only; not a medical device.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from inference.liver import ensemble, evaluation, postprocess, preprocess
from inference.liver import weights as lw
from inference.liver.models import build_model, config_to_json, count_parameters
from inference.liver.phases import SINGLE_CT_CHANNELS
from inference.liver.recipes import (
    CONFIRMATION_SEEDS,
    DCE_CHANNELS,
    ENSEMBLE_INFIX,
    FIRST_TRAINING_SEED,
    MODEL_RECIPES,
    PHANTOM_SEEDS_PER_TRAINING_SEED,
    ModelRecipe,
    TrainingSettings,
)
from inference.liver.segmentation_card import write_model_card
from inference.model_files import default_device

logger = logging.getLogger("pacsnode.inference.liver")


class TrainingDataError(ValueError):
    """A site's labelled study cannot be used for training; the message says why."""


class TrainingDeviceError(ValueError):
    """The requested training device cannot be used on this machine; the message says what to do."""


#: The values of ``--device``: "auto" is CUDA when torch sees a GPU, the CPU otherwise.
TRAINING_DEVICES = ("auto", "cpu", "cuda")


def training_device(requested: str) -> torch.device:
    """The torch device for *requested* (one of :data:`TRAINING_DEVICES`), refusing a CUDA that torch cannot see."""
    if requested not in TRAINING_DEVICES:
        raise TrainingDeviceError(f"device {requested!r} is not one of {', '.join(TRAINING_DEVICES)}")
    if requested == "auto":
        return default_device()
    if requested == "cuda" and not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise TrainingDeviceError(
            f"device cuda: torch {torch.__version__} ({build}) sees no CUDA GPU; train with --device cpu, or on a "
            "machine with an NVIDIA GPU and a CUDA build of torch (docker/Dockerfile.cuda installs one)")
    return torch.device(requested)


def device_description(device: torch.device) -> str:
    """*device* as the manifest records it: ``cpu``, or ``cuda`` with the GPU's name."""
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else device.type


# --------------------------------------------------------------------------- cases


@dataclass
class TrainingCase:
    """One case on the model grid: normalised channels ``[P, z, y, x]`` and labels ``[z, y, x]``."""

    source: str
    channels: np.ndarray
    labels: np.ndarray
    tumour_voxels: np.ndarray = field(init=False)
    liver_voxels: np.ndarray = field(init=False)
    #: The tumour voxels of each lesion (connected tumour component), for lesion-balanced crops.
    lesion_voxels: list[np.ndarray] = field(init=False)

    def __post_init__(self) -> None:
        self.tumour_voxels = np.argwhere(self.labels == postprocess.TUMOUR).astype(np.int32)
        self.liver_voxels = np.argwhere(self.labels == postprocess.LIVER).astype(np.int32)
        numbered, count = postprocess.components(self.labels == postprocess.TUMOUR, fully_connected=True)
        owner = numbered[tuple(self.tumour_voxels.T)] if count else np.zeros(0, np.int32)
        self.lesion_voxels = [self.tumour_voxels[owner == n] for n in range(1, count + 1)]


def align_channels(images: np.ndarray, motion_mm: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Undo each channel's known rigid shift (``motion_mm[p]`` zyx mm relative to the reference).

    Stands in for the registration the pipeline runs: channel *p* shows the
    anatomy displaced by ``motion_mm[p]``, so it is sampled at ``x + motion``
    (linear interpolation, edges held).
    """
    out = np.empty(images.shape, np.float32)
    for p, channel in enumerate(images):
        shift = np.asarray(motion_mm[p], dtype=np.float64)
        if not np.any(np.abs(shift) > 1e-6):
            out[p] = channel
            continue
        image = sitk.GetImageFromArray(np.ascontiguousarray(channel, dtype=np.float32))
        image.SetSpacing(tuple(float(s) for s in reversed(tuple(spacing))))
        transform = sitk.TranslationTransform(3, tuple(float(v) for v in reversed(shift)))
        resampler = sitk.ResampleImageFilter()
        resampler.SetReferenceImage(image)
        resampler.SetTransform(transform)
        resampler.SetInterpolator(sitk.sitkLinear)
        resampler.SetUseNearestNeighborExtrapolator(True)
        out[p] = sitk.GetArrayFromImage(resampler.Execute(image))
    return out


def phantom_grid(spacing: Sequence[float]) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """(shape, spacing) of a phantom with voxels of *spacing* (mm, zyx) over the default field of view."""
    from inference.liver import phantom as ph

    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or not all(s > 0 for s in spacing):
        raise ValueError(f"a phantom grid needs three positive (z, y, x) spacings in mm, got {spacing}")
    fov = np.asarray(ph.DEFAULT_SHAPE) * np.asarray(ph.DEFAULT_SPACING)
    return tuple(round(float(f / s)) for f, s in zip(fov, spacing, strict=True)), spacing  # type: ignore[return-value]


def simulate_phantom(recipe: ModelRecipe, seed: int, spacing: Sequence[float] | None = None) -> Any:
    """The phantom of *seed* for *recipe* (MR: all four DCE phases, so every MR model sees the same case).

    *spacing* (mm, zyx) simulates it on a grid of that voxel size over the default field of view
    (:func:`phantom_grid`); the default is the simulator's. Training and a recipe's evaluation
    simulate on the model's grid, so a model of finer spacing is trained and scored on finer phantoms.
    """
    from inference.liver import phantom as ph

    shape, spacing = phantom_grid(spacing if spacing is not None else ph.DEFAULT_SPACING)
    if recipe.modality == "CT":
        return ph.simulate_liver_ct(seed, shape=shape, spacing=spacing,
                                    phases=None if recipe.channels == SINGLE_CT_CHANNELS else recipe.channels)
    return ph.simulate_liver_mr(seed, shape=shape, spacing=spacing, channels=DCE_CHANNELS)


def aligned_phantom_channels(phantom: Any, channels: Sequence[str]) -> np.ndarray:
    """The phantom's *channels*, in order, with their known motion undone (on the truth grid)."""
    images = np.asarray(phantom.images, dtype=np.float32)
    motion = np.asarray(getattr(phantom, "motion_mm", np.zeros((len(images), 3))), dtype=np.float64)
    try:
        picked = [phantom.channel_index(c) for c in channels]
    except KeyError as exc:
        raise TrainingDataError(f"the phantom has channels {list(phantom.channels)}, the model needs "
                                f"{list(channels)}") from exc
    return align_channels(images[picked], motion[picked], phantom.spacing)


def acquired_on(channels: np.ndarray, spacing: Sequence[float], grid: Sequence[float],
                rng: np.random.Generator) -> np.ndarray:
    """*channels* (``[P, z, y, x]`` of voxel size *spacing*) as a scan of voxel size *grid* shows them.

    Each of the scan's voxels averages what lies in it (a Gaussian profile whose full width at
    half maximum is the voxel, less the detail the image already lacks), which also averages the
    image noise away; noise of the image's own level (robust estimate of what the smoothing took
    out), correlated in-plane as a CT kernel correlates it (for MR too), is then added at the scan's
    voxel size.
    Training reads such a scan brought back onto the model grid against the truth on that grid,
    so a coarse study's blur and noise texture are learnt without coarse, misplaced labels.
    """
    from inference.liver import phantom as ph

    fine = np.asarray(spacing, np.float64)
    coarse = np.asarray(grid, np.float64)
    variance = np.maximum(coarse**2 - fine**2, 0.0) / (8 * math.log(2))  # FWHM² / (8 ln 2), mm²
    shape = tuple(max(1, round(n * f / c)) for n, f, c in zip(channels.shape[1:], fine, coarse, strict=True))
    out = np.empty((len(channels), *shape), np.float32)
    for p, channel in enumerate(np.asarray(channels, np.float32)):
        image = sitk.GetImageFromArray(np.ascontiguousarray(channel))
        image.SetSpacing(tuple(float(v) for v in reversed(fine)))
        smoothed = sitk.GetArrayFromImage(sitk.DiscreteGaussian(image, [float(v) for v in reversed(variance)]))
        residual = channel - smoothed
        sigma = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
        scan = preprocess.resample(smoothed, fine, coarse, shape=shape, interpolation="linear")
        out[p] = scan + ph.ct_noise(rng, shape, sigma)
    return out


def prepare_case(
    recipe: ModelRecipe, channels: np.ndarray, labels: np.ndarray, spacing: Sequence[float],
    settings: TrainingSettings, source: str, label_spacing: Sequence[float] | None = None,
) -> TrainingCase:
    """Normalise and resample one case onto the model grid (labels, of *label_spacing* when not
    *spacing*, by nearest neighbour)."""
    spec = preprocess.default_normalisation(recipe.modality)
    normalised = preprocess.normalise(channels, spec)
    on_grid = preprocess.to_model_grid(normalised, spacing, settings.model_spacing)
    label_grid = preprocess.resample(np.asarray(labels, np.uint8), label_spacing or spacing, settings.model_spacing,
                                     shape=on_grid.shape[1:], interpolation="nearest")
    return TrainingCase(source, np.ascontiguousarray(on_grid, dtype=np.float32), label_grid.astype(np.uint8))


def first_phantom_seed(seed: int) -> int:
    """The first phantom seed of a training run seeded with *seed* (>= 0)."""
    if seed < 0:
        raise ValueError(f"training seeds are >= 0, got {seed}")
    return FIRST_TRAINING_SEED + seed * PHANTOM_SEEDS_PER_TRAINING_SEED


def phantom_case(recipe: ModelRecipe, seed: int, settings: TrainingSettings) -> TrainingCase:
    """The training phantom of *seed*, simulated on the model's grid; on a further grid of
    :attr:`TrainingSettings.phantom_spacings` (:meth:`~TrainingSettings.phantom_grid_for`) its images
    are as a scan of that grid shows them (:func:`acquired_on`), brought back onto the model's, and
    its labels stay the truth on the model's grid."""
    phantom = simulate_phantom(recipe, seed, settings.model_spacing)
    channels = aligned_phantom_channels(phantom, recipe.channels)
    grid = tuple(float(v) for v in settings.phantom_grid_for(seed))
    if grid == tuple(float(v) for v in phantom.spacing):
        return prepare_case(recipe, channels, phantom.labels, phantom.spacing, settings, f"phantom seed {seed}")
    scan = acquired_on(channels, phantom.spacing, grid, np.random.default_rng(seed))
    return prepare_case(recipe, scan, phantom.labels, grid, settings, f"phantom seed {seed} as a {grid} mm scan",
                        label_spacing=phantom.spacing)


# --------------------------------------------------------------------------- site studies


def _label_value(label: str) -> int | None:
    text = label.lower()
    if any(word in text for word in ("tumour", "tumor", "lesion", "metast", "hcc", "carcinoma", "neoplasm")):
        return postprocess.TUMOUR
    if "liver" in text or "hepat" in text:
        return postprocess.LIVER
    return None


def load_site_study(folder: Path, recipe: ModelRecipe) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """A site's labelled study: (channels ``[P, z, y, x]`` on the reference grid, labels, spacing).

    The folder holds the study's image series and one SEG (any file layout).
    Phases are identified and co-registered as the pipeline does
    (:func:`inference.liver.phases.identify_liver_study`,
    :func:`dicom_io.registration.register_phases`); the SEG is read onto the
    reference grid (portal phase, or the CT) with
    :func:`dicom_io.seg_reader.read_segmentation`. Segments whose label names
    the liver become 1, those naming a tumour/lesion 2 (painted over the liver).
    """
    from dicom_io.registration import register_phases
    from dicom_io.seg_reader import read_segmentation
    from inference.base import studies_from_files
    from inference.liver.phases import identify_liver_study
    from inference.liver.pipeline import read_phase_volume

    studies = studies_from_files(sorted(p for p in Path(folder).rglob("*") if p.is_file()))
    every_series = [series for study in studies.values() for series in study.series]
    segs = [path for series in every_series if series.modality == "SEG" for path in series.paths]
    if len(segs) != 1:
        raise TrainingDataError(f"{folder}: expected one SEG with the labels, found {len(segs)}")
    series = [s for s in every_series if s.modality != "SEG"]
    inputs = identify_liver_study(series, modality=recipe.modality, phases=recipe.channels)
    cache: dict[str, Any] = {}
    volumes = {name: read_phase_volume(source, cache) for name, source in inputs.phases.items()}
    if recipe.channels == SINGLE_CT_CHANNELS:
        reference = volumes["ct"]
        channels = np.asarray(reference.array, np.float32)[None]
    else:
        ref_name = "portal" if "portal" in volumes else next(iter(volumes))
        registered = register_phases(volumes, ref_name, skip=list(volumes) if inputs.is_4d else [])
        reference = volumes[ref_name]
        channels = np.stack([registered.array[registered.names.index(c)] for c in recipe.channels])
    on_grid = read_segmentation(segs[0], reference, threshold=0.5)
    order = sorted(on_grid.segments, key=lambda n: (_label_value(on_grid.segments[n].label) or 0))
    values = {n: _label_value(on_grid.segments[n].label) for n in order}
    values = {n: v for n, v in values.items() if v is not None}
    if postprocess.LIVER not in values.values():
        labels_found = [s.label for s in on_grid.segments.values()]
        raise TrainingDataError(f"{folder}: the SEG has no segment labelled as liver (segments {labels_found})")
    labels = on_grid.label_map(values)
    return channels.astype(np.float32), labels.astype(np.uint8), tuple(float(s) for s in reference.spacing)


def site_cases(data_dir: Path, recipe: ModelRecipe, settings: TrainingSettings,
               log: Callable[[str], None]) -> list[TrainingCase]:
    """Every study folder under *data_dir* (its immediate subfolders) as a training case."""
    cases = []
    folders = sorted(p for p in Path(data_dir).iterdir() if p.is_dir())
    if not folders:
        raise TrainingDataError(f"{data_dir} has no study folders (one folder per labelled study)")
    for folder in folders:
        channels, labels, spacing = load_site_study(folder, recipe)
        cases.append(prepare_case(recipe, channels, labels, spacing, settings, f"site study {folder.name}"))
        log(f"site study {folder.name}: {channels.shape}, {int((labels == 2).sum())} tumour voxels")
    return cases


# --------------------------------------------------------------------------- batches


def random_crop(case: TrainingCase, settings: TrainingSettings, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One training crop (channels, labels), centred on a tumour or liver voxel or anywhere, padded if needed."""
    patch = np.asarray(settings.patch_size)
    shape = np.asarray(case.labels.shape)
    u = rng.random()
    if u < settings.tumour_crop_fraction and len(case.tumour_voxels):
        voxels = (case.lesion_voxels[rng.integers(len(case.lesion_voxels))] if settings.crop_by_lesion
                  else case.tumour_voxels)
        centre = voxels[rng.integers(len(voxels))]
    elif u < settings.tumour_crop_fraction + settings.liver_crop_fraction and len(case.liver_voxels):
        centre = case.liver_voxels[rng.integers(len(case.liver_voxels))]
    else:
        centre = np.array([rng.integers(n) for n in shape])
    centre = centre + rng.integers(-patch // 4, patch // 4 + 1)
    start = np.clip(centre - patch // 2, 0, np.maximum(shape - patch, 0))
    box = tuple(slice(int(s), int(s + p)) for s, p in zip(start, patch, strict=True))
    channels = case.channels[(slice(None), *box)]
    labels = case.labels[box]
    pad = [(0, int(p - n)) for p, n in zip(patch, labels.shape, strict=True)]
    if any(after for _, after in pad):
        channels = np.pad(channels, [(0, 0), *pad], constant_values=0.0)
        labels = np.pad(labels, pad, constant_values=0)
    if settings.mirror:
        axes = [axis for axis in range(3) if rng.random() < 0.5]
        channels = np.flip(channels, [a + 1 for a in axes])
        labels = np.flip(labels, axes)
    scale = 1.0 + settings.intensity_jitter * rng.uniform(-1, 1, (channels.shape[0], 1, 1, 1))
    shift = settings.intensity_jitter * rng.uniform(-1, 1, (channels.shape[0], 1, 1, 1))
    return (channels * scale + shift).astype(np.float32), labels


def make_batch(cases: Sequence[TrainingCase], settings: TrainingSettings,
               rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    crops = [random_crop(cases[rng.integers(len(cases))], settings, rng) for _ in range(settings.batch_size)]
    x = torch.from_numpy(np.stack([c for c, _ in crops]))
    y = torch.from_numpy(np.stack([lab for _, lab in crops]).astype(np.int64))[:, None]
    return x, y


# --------------------------------------------------------------------------- segmenting phantoms


def phantom_segmenter(segmenter: ensemble.LiverModel, recipe: ModelRecipe,
                      **postprocess_options: float) -> Callable[[Any], postprocess.Segmentation]:
    """A function phantom → post-processed segmentation on the phantom's grid, as the pipeline does it."""

    def segment(phantom: Any) -> postprocess.Segmentation:
        channels = aligned_phantom_channels(phantom, recipe.channels)
        probabilities = segmenter.segment(channels, phantom.spacing)
        return postprocess.postprocess(probabilities, phantom.spacing, **postprocess_options)

    return segment


def evaluate_recipe(segmenter: ensemble.LiverModel, recipe: ModelRecipe, seeds: Sequence[int],
                    log: Callable[[str], None] | None = None,
                    min_lesion_ml: float = postprocess.MIN_LESION_VOLUME_ML) -> dict[str, Any]:
    """:func:`inference.liver.evaluation.evaluate_on_phantoms` for a model (or ensemble) of *recipe*'s inputs,
    on phantoms simulated on the model's grid (recorded in the summary as ``phantom_spacing_mm``), smaller
    predicted lesions than *min_lesion_ml* made liver as a route's ``min_lesion_ml`` does (recorded too)."""
    overlap = sorted(seed for seed in seeds if seed >= FIRST_TRAINING_SEED)
    if overlap:
        raise ValueError(f"evaluation seeds {overlap[:5]}… are training seeds (>= {FIRST_TRAINING_SEED})")
    report = evaluation.evaluate_on_phantoms(
        phantom_segmenter(segmenter, recipe, min_volume_ml=min_lesion_ml),
        lambda s: simulate_phantom(recipe, s, segmenter.spacing), seeds, log=log,
        input_images=lambda phantom: aligned_phantom_channels(phantom, recipe.channels),
    )
    report["summary"]["phantom_spacing_mm"] = list(segmenter.spacing)
    report["summary"]["min_lesion_ml"] = min_lesion_ml
    return report


# --------------------------------------------------------------------------- training


def train_liver_model(
    name: str,
    out_dir: str | Path = lw.WEIGHTS_DIR,
    settings: TrainingSettings | None = None,
    *,
    data_dir: Path | None = None,
    phantoms: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train model *name* (a key of :data:`MODEL_RECIPES`), evaluate it on held-out phantoms, write it.

    Returns the manifest. Deterministic for a seed, thread count and torch build
    on the CPU, unless ``settings.minutes`` stops it early; seeded but not
    bit-reproducible on CUDA (``settings.device``).
    """
    try:
        recipe = MODEL_RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown liver model {name!r} (known: {', '.join(MODEL_RECIPES)})") from None
    settings = settings or TrainingSettings()
    settings = replace(settings, device=training_device(settings.device).type)
    if not lw.valid_overlap(settings.sliding_window_overlap):  # refused before training, not when loaded
        raise ValueError(f"sliding-window overlap must be from 0 to under 1, not {settings.sliding_window_overlap}")
    for grid in settings.phantom_spacings:
        phantom_grid(grid)  # a grid it cannot simulate on is refused before training
    if settings.evaluation_cases:
        evaluation_seeds(settings.evaluation_cases)  # refuse a count it cannot evaluate before training, not after
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(settings.device == "cpu")
    try:
        return _train(recipe, out_dir, settings, data_dir, phantoms, log)
    finally:
        torch.use_deterministic_algorithms(deterministic_before)


def _train(recipe: ModelRecipe, out_dir: Path, settings: TrainingSettings, data_dir: Path | None,
           phantoms: bool, log: Callable[[str], None]) -> dict[str, Any]:
    from monai.losses import DiceCELoss

    rng = np.random.default_rng(settings.seed)
    architecture = settings.architecture(recipe)
    start = initial_model(recipe, settings.init_from, architecture) if settings.init_from else None
    started = time.perf_counter()
    cases: list[TrainingCase] = []
    first_seed = next_seed = first_phantom_seed(settings.seed)
    if phantoms:
        for _ in range(settings.pool_size):
            cases.append(phantom_case(recipe, next_seed, settings))
            next_seed += 1
    site: list[TrainingCase] = site_cases(data_dir, recipe, settings, log) if data_dir else []
    if not cases and not site:
        raise TrainingDataError("no training data: enable phantoms or give --data with labelled studies")
    simulate_s = time.perf_counter() - started
    log(f"{recipe.name}: {len(cases)} phantoms and {len(site)} site studies prepared in {simulate_s:.0f} s")

    device = torch.device(settings.device)
    model = build_model(recipe.model_kind, architecture)
    initial = None
    if start is not None:
        model.load_state_dict(start.model.state_dict())
        initial = {"model_version": start.version, "weights_sha256": start.manifest["weights_sha256"]}
        log(f"{recipe.name}: starting from {initial['model_version']} (sha256 {initial['weights_sha256'][:12]}…)")
    model.to(device)
    log(f"{recipe.name}: training on {device_description(device)}")
    divisor = int(getattr(model, "size_divisor", 1))
    if any(p % divisor for p in (*settings.patch_size, *settings.inference_patch_size)):
        raise ValueError(f"patch sizes {settings.patch_size}, {settings.inference_patch_size} must be multiples "
                         f"of {divisor}")
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=not settings.dice_per_crop, include_background=False,
                         weight=torch.tensor(settings.class_weights)).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, settings.steps) / settings.steps))
    )
    budget_s = settings.minutes * 60.0 if settings.minutes else None
    train_started = time.perf_counter()
    history: list[dict[str, float]] = []
    running = 0.0
    steps_run = 0
    simulate_during_s = 0.0
    model.train()
    planned = min(settings.steps, settings.stop_after or settings.steps)
    for step in range(planned):
        if budget_s is not None and time.perf_counter() - train_started > budget_s:
            log(f"time budget of {settings.minutes} min reached after {step} steps")
            break
        if phantoms and settings.refresh_every and step and step % settings.refresh_every == 0:
            t0 = time.perf_counter()
            cases[(step // settings.refresh_every - 1) % len(cases)] = phantom_case(recipe, next_seed, settings)
            next_seed += 1
            simulate_during_s += time.perf_counter() - t0
        x, y = make_batch(cases + site, settings, rng)
        optimiser.zero_grad(set_to_none=True)
        loss = loss_fn(model(x.to(device)), y.to(device))
        loss.backward()
        optimiser.step()
        scheduler.step()
        steps_run = step + 1
        running += loss.item()
        if steps_run % 25 == 0:
            history.append({"step": steps_run, "loss": round(running / 25, 4),
                            "seconds": round(time.perf_counter() - train_started, 1)})
            log(f"step {steps_run}/{settings.steps}: loss {running / 25:.4f} "
                f"({time.perf_counter() - train_started:.0f} s)")
            running = 0.0
    train_s = time.perf_counter() - train_started
    model.eval()

    model_version = settings.model_version or recipe.model_version
    weights_file = f"{model_version}.pt"
    sha = lw.save_weights(model, out_dir / weights_file)
    training = {
        "recipe": recipe.name,
        "description": recipe.description,
        "settings": settings.to_json(),
        "steps_run": steps_run,
        "stopped_by_time_budget": steps_run < planned,
        "initial_weights": initial,
        "phantom_seeds": [first_seed, next_seed - 1] if phantoms else None,
        "site_studies": [c.source for c in site],
        "loss": f"Dice (liver and tumour, batch) + cross-entropy weighted {settings.class_weights} (MONAI DiceCELoss)",
        "optimiser": f"Adam, lr {settings.learning_rate} with cosine decay over {settings.steps} steps",
        "parameters": count_parameters(model),
        "torch": torch.__version__,
        "device": device_description(device),
        "bit_reproducible": device.type == "cpu",
        "simulation_seconds": round(simulate_s + simulate_during_s, 1),
        "training_seconds": round(train_s - simulate_during_s, 1),
        "history": history,
    }
    manifest = lw.build_manifest(
        model_version=model_version,
        model_kind=recipe.model_kind,
        architecture=config_to_json(model.config),  # type: ignore[arg-type]
        weights_file=weights_file,
        weights_sha256=sha,
        channels=recipe.channels,
        modality=recipe.modality,
        spacing_zyx_mm=settings.model_spacing,
        normalisation=preprocess.default_normalisation(recipe.modality),
        patch_size_zyx=settings.inference_patch_size,
        training=training,
        mirroring=lw.MIRRORED_VIEWS if settings.mirror else (),
        overlap=settings.sliding_window_overlap,
    )
    manifest_path = out_dir / f"{model_version}.json"
    lw.write_manifest(manifest, manifest_path)
    if settings.evaluation_cases > 0 and phantoms:
        manifest = record_evaluation(recipe.name, out_dir, settings.evaluation_cases, log=log,
                                     model_version=model_version, device=settings.device)
    write_model_card(out_dir)
    log(f"{recipe.name}: wrote {manifest_path} (sha256 {sha[:12]}…)")
    return manifest


def initial_model(recipe: ModelRecipe, manifest_path: str, architecture: dict[str, Any]) -> lw.LiverSegmenter:
    """The model at *manifest_path*, checked to be of *recipe* and *architecture*, for training to start from.

    A model of another recipe (network, architecture, channels or modality)
    is refused: fine-tuning would silently start from unrelated weights. The
    one exception is a model of the recipe's :attr:`ModelRecipe.starts_from`
    (transfer, e.g. the 4D DCE-MRI network to multi-phase CT): its inputs may
    differ, its network must not — the fused U-Net's weights do not depend on
    the number of phases, since every phase goes through the same encoder and
    the ConvLSTM runs over any sequence length.
    Loading leaves torch's random state as it was, so a run stays seeded.
    """
    with torch.random.fork_rng():
        start = lw.LiverSegmenter.load(manifest_path, device="cpu")
    transfer = recipe.starts_from is not None and start.manifest["training"].get("recipe") == recipe.starts_from
    shared = [k for k in architecture if not (transfer and k == "phases")]
    wanted = {"model_kind": recipe.model_kind, **{f"architecture {k}": architecture[k] for k in shared}}
    found = {"model_kind": start.manifest["model_kind"],
             **{f"architecture {k}": start.manifest["architecture"].get(k) for k in shared}}
    if not transfer:
        wanted |= {"channels": list(recipe.channels), "modality": recipe.modality}
        found |= {"channels": list(start.channels), "modality": start.modality}
    differs = [key for key in wanted if wanted[key] != found[key]]
    if differs:
        raise TrainingDataError(
            f"{manifest_path} cannot start a {recipe.name} training: its "
            + ", ".join(f"{key} {found[key]!r} is not {wanted[key]!r}" for key in differs)
        )
    return start


def evaluation_seeds(cases: int, *, confirmation: bool = False) -> list[int]:
    """The first *cases* held-out seeds (0…), or of the :data:`CONFIRMATION_SEEDS` kept back from choosing.

    The two sets never overlap, so a confirmation figure stays free of the choices made on the other.
    """
    pool = CONFIRMATION_SEEDS if confirmation else range(evaluation.EVALUATION_SEEDS[0], CONFIRMATION_SEEDS[0])
    if not 0 < cases <= len(pool):
        raise ValueError(f"{'confirmation' if confirmation else 'held-out'} evaluation takes 1 to {len(pool)} "
                         f"cases (seeds {pool[0]}–{pool[-1]}), not {cases}")
    return list(pool)[:cases]


def record_evaluation(name: str, out_dir: str | Path, cases: int,
                      log: Callable[[str], None] | None = print,
                      model_version: str | None = None, *, confirmation: bool = False,
                      device: str = "cpu", min_lesion_ml: float = postprocess.MIN_LESION_VOLUME_ML) -> dict[str, Any]:
    """Evaluate the written model *name* on *cases* phantoms (:func:`evaluation_seeds`) on *device*, lesions
    under *min_lesion_ml* made liver; store the summary in its manifest.

    Held-out results go to ``metrics.held_out_phantoms``, confirmation results to
    ``metrics.confirmation_phantoms``; only that entry changes (the weights and their sha256 do not).
    """
    recipe = MODEL_RECIPES[name]
    manifest_path = Path(out_dir) / f"{model_version or recipe.model_version}.json"
    key, summary = _evaluate(lw.LiverSegmenter.load(manifest_path, device=device), recipe, cases, log, confirmation,
                             min_lesion_ml)
    manifest = lw.read_manifest(manifest_path)  # read after the evaluation: see _evaluate
    manifest.setdefault("metrics", {})[key] = summary
    if not confirmation:
        manifest["training"]["settings"]["evaluation_cases"] = cases
    lw.write_manifest(manifest, manifest_path)
    return manifest


def record_ensemble_evaluation(manifest_path: str | Path, cases: int, log: Callable[[str], None] | None = print,
                               *, confirmation: bool = False,
                               min_lesion_ml: float = postprocess.MIN_LESION_VOLUME_ML) -> dict[str, Any]:
    """:func:`record_evaluation` for an ensemble: its phantoms are those of its first member's recipe."""
    manifest = ensemble.read_ensemble_manifest(manifest_path)
    first = lw.read_manifest(Path(manifest["_dir"]) / manifest["members"][0]["manifest"])
    recipe = MODEL_RECIPES.get(str(first.get("training", {}).get("recipe")))
    if recipe is None:
        raise ensemble.LiverEnsembleError(
            f"ensemble {manifest['model_version']}: its member {first['model_version']} was not trained by a "
            "`pacsnode train liver-seg-*` recipe, so there are no phantoms to evaluate it on")
    key, summary = _evaluate(ensemble.LiverEnsemble.load(manifest_path, device="cpu"), recipe, cases, log,
                             confirmation, min_lesion_ml)
    manifest = ensemble.read_ensemble_manifest(manifest_path)  # read after the evaluation: see _evaluate
    manifest.setdefault("metrics", {})[key] = summary
    lw.write_manifest(manifest, Path(manifest_path))
    return manifest


def _evaluate(model: ensemble.LiverModel, recipe: ModelRecipe, cases: int, log: Callable[[str], None] | None,
              confirmation: bool, min_lesion_ml: float) -> tuple[str, dict[str, Any]]:
    """Evaluate *model* on *cases* phantoms of *recipe*: the manifest's metrics key and the summary to store there.

    An evaluation takes minutes, and the held-out and confirmation ones of a model may run side by side, so
    callers read the manifest only once it is done; read before, the one finishing last would drop the other's.
    """
    seeds = evaluation_seeds(cases, confirmation=confirmation)
    t0 = time.perf_counter()
    report = evaluate_recipe(model, recipe, seeds, log=log, min_lesion_ml=min_lesion_ml)
    key = "confirmation_phantoms" if confirmation else "held_out_phantoms"
    return key, {"seeds": [seeds[0], seeds[-1]], **report["summary"], "seconds": round(time.perf_counter() - t0, 1)}


# --------------------------------------------------------------------------- command line


def _lesion_volume_ml(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"a minimum lesion volume must be 0 ml or more, not {text}")
    return value


def _add_min_lesion_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min-lesion-ml", type=_lesion_volume_ml, default=postprocess.MIN_LESION_VOLUME_ML, metavar="ML",
                        help="the evaluation makes smaller predicted lesions liver, as a route's min_lesion_ml does "
                             "(default: %(default)s)")


def main(argv: Sequence[str] | None = None, name: str | None = None) -> int:
    """``pacsnode train liver-seg-mr | liver-seg-ct | liver-seg-mr-baseline``."""
    parser = argparse.ArgumentParser(prog=f"pacsnode train {name or ''}".strip(), description=main.__doc__)
    if name is None:
        parser.add_argument("name", choices=sorted(MODEL_RECIPES))
    defaults = TrainingSettings()
    parser.add_argument("--out", default=str(lw.WEIGHTS_DIR), help="output directory")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--minutes", type=float, default=None, help="stop early after this many minutes")
    parser.add_argument("--stop-after", type=int, default=None, metavar="STEPS",
                        help="stop after STEPS steps of the --steps schedule (reproduces a run --minutes stopped)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--pool-size", type=int, default=defaults.pool_size)
    parser.add_argument("--refresh-every", type=int, default=defaults.refresh_every, metavar="STEPS",
                        help="replace one pooled phantom by a new one every STEPS steps (0: never; default: "
                             "%(default)s); simulating costs more on a finer --spacing")
    parser.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"),
                        help=f"model grid in mm (default: {' '.join(map(str, defaults.model_spacing))}); the "
                             "training and evaluation phantoms are simulated on it")
    parser.add_argument("--phantom-spacing", type=float, nargs=3, action="append", default=None,
                        metavar=("Z", "Y", "X"),
                        help="also train on phantoms as a scan of this grid (mm; repeatable) shows them, in turn "
                             "with the model's grid, so the model learns studies of that grid brought onto its own")
    parser.add_argument("--overlap", type=float, default=defaults.sliding_window_overlap,
                        help="overlap of the sliding windows at inference, from 0 to under 1 (default: "
                             "%(default)s); less is faster")
    parser.add_argument("--evaluation-cases", type=int, default=defaults.evaluation_cases,
                        help="held-out phantoms (seeds 0…) to evaluate on afterwards (with --confirm: "
                             "confirmation phantoms)")
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--device", choices=TRAINING_DEVICES, default=defaults.device,
                        help="where to train and evaluate: auto (CUDA when torch sees a GPU, else the CPU), cpu "
                             "(bit-reproducible) or cuda (default: %(default)s)")
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--crop-by-lesion", action="store_true",
                        help="tumour-centred crops pick a lesion first, so small lesions are seen as often as large")
    parser.add_argument("--mirror", action="store_true",
                        help="mirror each crop along z, y and x at random, for test-time mirroring")
    parser.add_argument("--dice-per-crop", action="store_true",
                        help="Dice loss per crop rather than over the batch, so small lesions weigh as much as large")
    parser.add_argument("--widths", type=int, nargs="+", default=None, metavar="N",
                        help="feature channels per network level (default: the recipe's, e.g. 8 16 24 32)")
    parser.add_argument("--init", default=None, metavar="MANIFEST",
                        help="start from this model's weights (same recipe, or for liver-seg-ct-4d the MR 4D "
                             "model), e.g. to fine-tune on site studies")
    parser.add_argument("--version", default=None,
                        help="model version of the written files (default: the recipe's, e.g. liver-seg-mr-v1)")
    parser.add_argument("--data", type=Path, default=None,
                        help="folder of labelled site studies (one subfolder per study: series + SEG)")
    parser.add_argument("--no-phantoms", action="store_true", help="train on the --data studies only")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="do not train: evaluate the model already in --out and update its manifest and card")
    parser.add_argument("--confirm", action="store_true",
                        help=f"with --evaluate-only: evaluate on the confirmation phantoms (seeds "
                             f"{CONFIRMATION_SEEDS[0]}…), kept back from choosing between versions")
    _add_min_lesion_option(parser)
    args = parser.parse_args(argv)
    if args.confirm and not args.evaluate_only:
        parser.error("--confirm goes with --evaluate-only")
    if args.stop_after is not None and args.stop_after < 1:
        parser.error(f"--stop-after must be a positive number of steps, got {args.stop_after}")
    if args.evaluate_only:
        torch.set_num_threads(args.threads)
        try:
            record_evaluation(name or args.name, args.out, args.evaluation_cases, model_version=args.version,
                              confirmation=args.confirm, device=training_device(args.device).type,
                              min_lesion_ml=args.min_lesion_ml)
        except (ValueError, lw.LiverModelError) as exc:
            parser.exit(2, f"{parser.prog}: {exc}\n")
        write_model_card(Path(args.out))
        return 0
    settings = TrainingSettings(
        seed=args.seed, steps=args.steps, minutes=args.minutes, stop_after=args.stop_after,
        batch_size=args.batch_size,
        pool_size=args.pool_size, refresh_every=args.refresh_every, evaluation_cases=args.evaluation_cases,
        threads=args.threads, sliding_window_overlap=args.overlap,
        model_spacing=tuple(args.spacing) if args.spacing else defaults.model_spacing,
        phantom_spacings=tuple(tuple(g) for g in args.phantom_spacing or ()),
        learning_rate=args.learning_rate, crop_by_lesion=args.crop_by_lesion, mirror=args.mirror, init_from=args.init,
        dice_per_crop=args.dice_per_crop, device=args.device,
        model_version=args.version, widths=tuple(args.widths) if args.widths else None,
    )
    try:
        train_liver_model(name or args.name, args.out, settings, data_dir=args.data, phantoms=not args.no_phantoms)
    except (ValueError, lw.LiverModelError) as exc:
        parser.exit(2, f"{parser.prog}: {exc}\n")
    return 0


def ensemble_main(argv: Sequence[str] | None = None) -> int:
    """``pacsnode ensemble liver-seg VERSION MEMBER.json MEMBER.json ...``: an ensemble of trained models.

    Writes the ensemble's manifest beside its members, evaluates it on the held-out
    phantoms of its members' recipe (as ``pacsnode train`` does a model) and
    regenerates the model card.
    """
    parser = argparse.ArgumentParser(prog="pacsnode ensemble liver-seg", description=ensemble_main.__doc__)
    parser.add_argument("version", help=f"the ensemble's version, containing {ENSEMBLE_INFIX!r} and ending -vN, "
                                         "e.g. liver-seg-ct-multiphase-ensemble-v1")
    parser.add_argument("members", nargs="*", metavar="MEMBER",
                        help="manifests of two or more models of the same inputs, in one folder")
    parser.add_argument("--cascade", action="store_true",
                        help="the liver model, then one or more tumour models: the first says where the liver "
                             "is, the mean of the others how it splits into liver and tumour (seed 000's cascade); "
                             "they may work on different grids. Default: the members' probabilities are averaged")
    parser.add_argument("--evaluation-cases", type=int, default=TrainingSettings().evaluation_cases,
                        help="held-out phantoms (seeds 0…) to evaluate on (with --confirm: confirmation phantoms)")
    parser.add_argument("--threads", type=int, default=TrainingSettings().threads)
    parser.add_argument("--evaluate-only", action="store_true",
                        help="do not write the ensemble: evaluate the one already in --out")
    parser.add_argument("--out", type=Path, default=lw.WEIGHTS_DIR, help="with --evaluate-only: its folder")
    parser.add_argument("--confirm", action="store_true",
                        help=f"with --evaluate-only: evaluate on the confirmation phantoms (seeds {CONFIRMATION_SEEDS[0]}…)")
    _add_min_lesion_option(parser)
    args = parser.parse_args(argv)
    if ENSEMBLE_INFIX not in args.version or not args.version.rsplit("-v", 1)[-1].isdigit():
        parser.error(f"version {args.version!r} must contain {ENSEMBLE_INFIX!r} and end with -vN")
    if args.confirm and not args.evaluate_only:
        parser.error("--confirm goes with --evaluate-only")
    if args.evaluate_only == bool(args.members):
        parser.error("give two or more MEMBER manifests, or --evaluate-only without members")
    torch.set_num_threads(args.threads)
    try:
        path = (args.out / f"{args.version}.json" if args.evaluate_only
                else ensemble.write_ensemble(args.version, args.members,
                                             combination=ensemble.CASCADE if args.cascade else ensemble.COMBINATION))
        record_ensemble_evaluation(path, args.evaluation_cases, confirmation=args.confirm,
                                   min_lesion_ml=args.min_lesion_ml)
    except (ValueError, lw.LiverModelError) as exc:
        parser.exit(2, f"{parser.prog}: {exc}\n")
    write_model_card(path.parent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
