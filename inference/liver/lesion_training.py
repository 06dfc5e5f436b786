"""``pacsnode train liver-cls``: the seven liver lesion classifiers (A–G) trained on the liver phantom, on CPU.

**Data.** Phantoms from :func:`inference.liver.phantom.simulate_liver_mr` at
:data:`~inference.liver.lesion_patches.CLS_SHAPE` / ``CLS_SPACING`` with all six
sequences, seeds from :data:`FIRST_TRAINING_SEED` (10000) on; seeds below it
are the held-out evaluation phantoms and are refused. Case *i* has 1–3
lesions of one kind (kinds cycle over the seven classes, so classes are
balanced and each case's clinical profile matches its lesions). The
sequences are aligned with :func:`inference.liver.training.align_channels`
(the simulator's recorded motion stands in for the pipeline's registration)
and every truth lesion with a longest axial diameter of at least
:data:`MIN_CLASSIFIED_DIAMETER_MM` gives patches through
:func:`~inference.liver.lesion_patches.extract_lesion_patches`, with the
truth lesion and liver masks: the pipeline's path. The patches are cached
(``.npz``) so the seven models train from one simulated dataset.

**Recipe.** :class:`~inference.liver.lesion_models.LesionNet` per model; each
epoch draws one random slice patch per lesion; augmentation by the eight
right-angle rotations and flips and a per-sequence intensity scale
(±10 %); cross-entropy; Adam with cosine learning-rate decay. E, F and G
train on malignant lesions only. Seeded (``torch.manual_seed``, numpy
Generators, deterministic algorithms, fixed threads): the same seed gives
the same weights on the same CPU and torch build.

Writes ``liver-cls-<letter>-v1.pt`` + ``.json`` for each model, evaluates
them on held-out phantoms (:mod:`inference.liver.lesion_evaluation`), stores
the figures in the manifests and writes ``LIVER_CLS_MODEL_CARD.md``.
``--data DIR`` adds a site's labelled studies (:mod:`inference.liver.lesion_site_data`),
``--no-phantoms`` trains on them alone. Research use only.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.liver.lesion_classifier import (
    MANIFEST_FORMAT,
    MANIFEST_FORMAT_VERSION,
    WEIGHTS_DIR,
)
from inference.liver.lesion_kinds import LesionKind
from inference.liver.lesion_models import (
    CLINICAL_ENCODING_VERSION,
    CLINICAL_FEATURES,
    MODEL_SPECS,
    SIX,
    LesionNet,
    ModelSpec,
    count_parameters,
    encode_clinical,
    target_index,
)
from inference.liver.lesion_patches import (
    CLS_SHAPE,
    CLS_SPACING,
    MIN_CLASSIFIED_DIAMETER_MM,
    NORMALISED_MAX,
    PATCH_SIZE,
    extract_lesion_patches,
)
from inference.model_files import sha256_of_file

__all__ = [
    "FIRST_TRAINING_SEED",
    "MIN_CLASSIFIED_DIAMETER_MM",
    "MODEL_CARD",
    "LesionDataset",
    "TrainSettings",
    "TrainingSeedError",
    "build_dataset",
    "main",
    "phantom_lesions",
    "train_models",
]

#: Training phantoms use seeds from here on; 0–9999 are reserved for held-out evaluation.
FIRST_TRAINING_SEED = 10000
MODEL_CARD = "LIVER_CLS_MODEL_CARD.md"
_CACHE_VERSION = 1
DEFAULT_CACHE = Path.home() / ".cache" / "pacsnode" / "liver-cls"


class TrainingSeedError(ValueError):
    """A training seed inside the held-out evaluation range."""


@dataclass(frozen=True)
class TrainSettings:
    """The training recipe; stored in every manifest."""

    seed: int = 0
    cases: int = 630
    first_seed: int = FIRST_TRAINING_SEED
    epochs: int = 25
    malignant_epochs: int = 40
    batch_size: int = 32
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    intensity_scale: float = 0.1
    #: Probability that a clinical field of a training sample is blanked to "missing" (sites rarely send all).
    clinical_dropout: float = 0.2
    threads: int = 1
    evaluation_cases: int = 140


@dataclass
class LesionDataset:
    """Patches of many lesions, concatenated: lesion *i* owns ``patches[offsets[i]:offsets[i + 1]]``."""

    #: [slices, 7, P, P] float16: the six sequences (``SIX`` order) and the lesion mask.
    patches: np.ndarray
    offsets: np.ndarray
    kinds: np.ndarray
    sizes: np.ndarray
    clinical: np.ndarray
    seeds: np.ndarray

    def __len__(self) -> int:
        return len(self.kinds)

    @classmethod
    def from_lesions(cls, lesions: Sequence[tuple[np.ndarray, int, float, np.ndarray]],
                     seed: int) -> LesionDataset:
        """A dataset of ``(patches, class index, size feature, clinical vector)`` lesions, all with *seed*."""
        offsets = np.cumsum([0] + [len(patches) for patches, _, _, _ in lesions]).astype(np.int64)
        return cls(np.concatenate([patches for patches, _, _, _ in lesions]).astype(np.float16), offsets,
                   np.asarray([kind for _, kind, _, _ in lesions], np.int64),
                   np.asarray([size for _, _, size, _ in lesions], np.float32),
                   np.stack([vector for _, _, _, vector in lesions]).astype(np.float32),
                   np.full(len(lesions), seed, np.int64))

    def __add__(self, other: LesionDataset) -> LesionDataset:
        return LesionDataset(np.concatenate([self.patches, other.patches]),
                             np.concatenate([self.offsets, other.offsets[1:] + self.offsets[-1]]),
                             np.concatenate([self.kinds, other.kinds]), np.concatenate([self.sizes, other.sizes]),
                             np.concatenate([self.clinical, other.clinical]), np.concatenate([self.seeds, other.seeds]))


def phantom_lesions(phantom: Any, min_diameter_mm: float = MIN_CLASSIFIED_DIAMETER_MM
                    ) -> list[tuple[Any, Any]]:
    """(truth lesion, LesionPatches) for each lesion of a six-sequence phantom big enough to classify.

    Channels are aligned with the recorded motion and put in :data:`SIX` order;
    the masks are the truth lesion and the truth liver parenchyma.
    """
    from inference.liver.training import align_channels

    order = [list(phantom.channels).index(s) for s in SIX]
    images = align_channels(np.asarray(phantom.images)[order], np.asarray(phantom.motion_mm)[order], phantom.spacing)
    liver = phantom.labels == 1
    out = []
    for truth in phantom.lesions:
        if truth.longest_axial_diameter_mm < min_diameter_mm:
            continue
        out.append((truth, extract_lesion_patches(images, phantom.spacing, phantom.lesion_labels == truth.index,
                                                  liver)))
    return out


def clinical_vector(clinical: dict[str, Any]) -> np.ndarray:
    """The phantom's clinical data encoded as the pipeline does (age and sex as if from the DICOM header)."""
    rest = {k: v for k, v in clinical.items() if k not in ("age_years", "sex")}
    return encode_clinical(rest, age_years=clinical.get("age_years"), sex=clinical.get("sex"))


def _check_seeds(first_seed: int) -> None:
    if first_seed < FIRST_TRAINING_SEED:
        raise TrainingSeedError(f"training seeds must be >= {FIRST_TRAINING_SEED}; seeds 0–{FIRST_TRAINING_SEED - 1} "
                                f"are the held-out evaluation phantoms (got first seed {first_seed})")


def case_kinds(i: int) -> list[LesionKind]:
    """Lesions of training case *i*: kind cycling over the seven, 1–3 of them.

    Cysts and "other benign" lesions get one more: the simulator draws them
    smallest, and about half fall below :data:`MIN_CLASSIFIED_DIAMETER_MM`.
    """
    kind = LesionKind(i % len(LesionKind))
    extra = 1 if kind in (LesionKind.CYST, LesionKind.OTHER_BENIGN) else 0
    return [kind] * (1 + extra + (i // len(LesionKind)) % 3)


def build_dataset(cases: int, first_seed: int = FIRST_TRAINING_SEED, cache_dir: Path | None = DEFAULT_CACHE,
                  log: Callable[[str], None] = print) -> LesionDataset:
    """Simulate *cases* training phantoms (or read them from the cache) and cut their lesion patches."""
    _check_seeds(first_seed)
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / (f"liver-cls-v{_CACHE_VERSION}-{first_seed}-{cases}-p{PATCH_SIZE}-"
                                   f"{'x'.join(map(str, CLS_SHAPE))}.npz")
        if cache.is_file():
            with np.load(cache) as data:
                log(f"read {cache}")
                return LesionDataset(**{k: data[k] for k in ("patches", "offsets", "kinds", "sizes", "clinical",
                                                              "seeds")})
    from inference.liver.phantom import simulate_liver_mr

    patches: list[np.ndarray] = []
    offsets, kinds, sizes, clinical, seeds = [0], [], [], [], []
    started = time.perf_counter()
    for i in range(cases):
        seed = first_seed + i
        phantom = simulate_liver_mr(seed, shape=CLS_SHAPE, spacing=CLS_SPACING, channels=SIX,
                                    lesion_kinds=case_kinds(i))
        vector = clinical_vector(phantom.clinical)
        for truth, lesion in phantom_lesions(phantom):
            patches.append(lesion.patches.astype(np.float16))
            offsets.append(offsets[-1] + len(lesion.patches))
            kinds.append(int(truth.kind))
            sizes.append(lesion.size_feature)
            clinical.append(vector)
            seeds.append(seed)
        if (i + 1) % 50 == 0:
            log(f"simulated {i + 1}/{cases} training phantoms, {len(kinds)} lesions "
                f"({time.perf_counter() - started:.0f} s)")
    if not kinds:
        raise ValueError(f"{cases} training phantoms gave no lesion of {MIN_CLASSIFIED_DIAMETER_MM} mm or more")
    dataset = LesionDataset(np.concatenate(patches), np.asarray(offsets, np.int64), np.asarray(kinds, np.int64),
                            np.asarray(sizes, np.float32), np.stack(clinical).astype(np.float32),
                            np.asarray(seeds, np.int64))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(cache.name + ".partial.npz")
        np.savez(partial, **asdict(dataset))
        partial.replace(cache)
    return dataset


# --------------------------------------------------------------------------- training


def _channel_indices(spec: ModelSpec) -> list[int]:
    return [SIX.index(s) for s in spec.sequences] + [len(SIX)]


def _augment(batch: torch.Tensor, rng: np.random.Generator, scale: float, n_images: int) -> torch.Tensor:
    out = []
    for patch in batch:
        patch = torch.rot90(patch, int(rng.integers(4)), dims=(1, 2))
        if rng.random() < 0.5:
            patch = torch.flip(patch, dims=(2,))
        factors = torch.ones(patch.shape[0], 1, 1)
        factors[:n_images, 0, 0] = torch.from_numpy(rng.uniform(1 - scale, 1 + scale, n_images).astype(np.float32))
        out.append(patch * factors)
    return torch.stack(out)


def _clinical_groups() -> list[tuple[np.ndarray, int]]:
    """Per clinical field: the indices of its features and the index of its missing indicator."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(CLINICAL_FEATURES):
        groups.setdefault(name.split(":")[0], []).append(i)
    return [(np.asarray(ix), CLINICAL_FEATURES.index(f"{field}:missing")) for field, ix in groups.items()]


_CLINICAL_GROUPS = _clinical_groups()


def _drop_clinical_fields(clinical: np.ndarray, rng: np.random.Generator, probability: float) -> np.ndarray:
    """A copy of encoded clinical vectors with each field set to "missing" with *probability*."""
    out = clinical.copy()
    for indices, missing in _CLINICAL_GROUPS:
        drop = rng.random(len(out)) < probability
        out[np.ix_(drop, indices)] = 0.0
        out[drop, missing] = 1.0
    return out


def train_model(spec: ModelSpec, dataset: LesionDataset, settings: TrainSettings,
                log: Callable[[str], None] = print) -> tuple[LesionNet, dict[str, Any]]:
    """Train one model of the family on *dataset*; returns the network (eval mode) and its training record."""
    letter_offset = list(MODEL_SPECS).index(spec.letter)
    torch.manual_seed(settings.seed * 100 + letter_offset)
    rng = np.random.default_rng([settings.seed, letter_offset])
    targets = [target_index(spec, k) for k in dataset.kinds]
    lesions = np.array([i for i, t in enumerate(targets) if t is not None], dtype=np.int64)
    if len(lesions) == 0:
        raise ValueError(f"no training lesions for model {spec.letter} ({spec.task})")
    labels = np.array([targets[i] for i in lesions], dtype=np.int64)
    channels = _channel_indices(spec)
    n_extra = 1 + (len(CLINICAL_FEATURES) if spec.uses_clinical else 0)
    network = LesionNet(len(channels), len(spec.classes), n_extra)
    epochs = settings.malignant_epochs if spec.malignant_only else settings.epochs
    steps_per_epoch = math.ceil(len(lesions) / settings.batch_size)
    total_steps = max(1, epochs * steps_per_epoch)
    optimiser = torch.optim.Adam(network.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    loss_fn = torch.nn.CrossEntropyLoss()
    history = []
    started = time.perf_counter()
    network.train()
    for epoch in range(epochs):
        order = rng.permutation(len(lesions))
        running, correct = 0.0, 0
        for start in range(0, len(order), settings.batch_size):
            picked = order[start:start + settings.batch_size]
            if len(picked) < 2:  # BatchNorm needs two samples
                continue
            index = lesions[picked]
            slices = dataset.offsets[index] + (rng.random(len(index)) * np.diff(dataset.offsets)[index]).astype(
                np.int64)
            x = torch.from_numpy(dataset.patches[slices][:, channels].astype(np.float32))
            x = _augment(x, rng, settings.intensity_scale, len(channels) - 1)
            extra = torch.from_numpy(dataset.sizes[index][:, None])
            if spec.uses_clinical:
                clinical = _drop_clinical_fields(dataset.clinical[index], rng, settings.clinical_dropout)
                extra = torch.cat([extra, torch.from_numpy(clinical)], dim=1)
            y = torch.from_numpy(labels[picked])
            optimiser.zero_grad(set_to_none=True)
            logits = network(x, extra)
            loss = loss_fn(logits, y)
            loss.backward()
            optimiser.step()
            scheduler.step()
            running += float(loss.item()) * len(picked)
            correct += int((logits.argmax(1) == y).sum())
        history.append({"epoch": epoch + 1, "loss": round(running / len(order), 4),
                        "train_accuracy": round(correct / len(order), 4),
                        "seconds": round(time.perf_counter() - started, 1)})
        if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            log(f"model {spec.letter}: epoch {epoch + 1}/{epochs} loss {history[-1]['loss']:.3f} "
                f"train accuracy {history[-1]['train_accuracy']:.3f} ({history[-1]['seconds']:.0f} s)")
    network.eval()
    record = {
        "lesions": len(lesions),
        "slice_patches": int(sum(np.diff(dataset.offsets)[lesions])),
        "class_counts": {name: int((labels == i).sum()) for i, name in enumerate(spec.classes)},
        "epochs": epochs,
        "steps": total_steps,
        "parameters": count_parameters(network),
        "optimiser": f"Adam lr {settings.learning_rate} weight decay {settings.weight_decay}, cosine decay over "
                     f"{total_steps} steps, batch {settings.batch_size}",
        "loss": "cross-entropy",
        "sampling": "each epoch one random slice patch per lesion",
        "augmentation": f"8 right-angle rotations/flips; per-sequence intensity scale ±{settings.intensity_scale:g}"
                        + (f"; each clinical field blanked to missing with probability {settings.clinical_dropout:g}"
                           if spec.uses_clinical else ""),
        "training_seconds": round(time.perf_counter() - started, 1),
        "history": history,
    }
    return network, record


def write_model(spec: ModelSpec, network: LesionNet, record: dict[str, Any], settings: TrainSettings,
                dataset_info: dict[str, Any], out_dir: Path) -> Path:
    """Write ``<version>.pt`` and its manifest; returns the manifest path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{spec.version}.pt"
    torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, weights)
    manifest = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_FORMAT_VERSION,
        "version": spec.version,
        "letter": spec.letter,
        "task": spec.task,
        "sequences": list(spec.sequences),
        "uses_clinical": spec.uses_clinical,
        "clinical": ({"encoding": CLINICAL_ENCODING_VERSION, "features": list(CLINICAL_FEATURES),
                      "source": "age and sex from the DICOM header, the rest from the clinical store"}
                     if spec.uses_clinical else None),
        "classes": list(spec.classes),
        "patch_size": PATCH_SIZE,
        "normalisation": {
            "method": "divide each sequence by the median of the surrounding liver in the patch "
                      "(outside the dilated lesion, inside the liver mask); clip",
            "clip": [0.0, NORMALISED_MAX],
            "crop_side_mm": "max(1.5 * longest axial diameter + 15, 30)",
            "extra_channels": ["lesion mask"],
            "size_feature": "log(longest axial diameter mm)",
            "min_diameter_mm": MIN_CLASSIFIED_DIAMETER_MM,
        },
        "aggregation": "per-slice softmax summed over the slices, normalised (seed 003's per-patient rule)",
        "architecture": network.config,
        "weights_file": weights.name,
        "weights_sha256": sha256_of_file(weights),
        "training": {"settings": asdict(settings), "data": dataset_info, **record, "torch": torch.__version__},
        "metrics": {},
        "intended_use": "research use only; not a medical device",
    }
    path = out_dir / f"{spec.version}.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def train_models(letters: Sequence[str], out_dir: Path, settings: TrainSettings, cache_dir: Path | None,
                 log: Callable[[str], None] = print, site_data: Path | None = None,
                 phantoms: bool = True) -> dict[str, Path]:
    """Build (or read) the dataset and train, write and return the manifests of *letters*.

    *site_data*: a folder of the site's labelled studies
    (:mod:`inference.liver.lesion_site_data`), added to the phantoms, or
    used alone when *phantoms* is False.
    """
    _check_seeds(settings.first_seed)
    unknown = [x for x in letters if x not in MODEL_SPECS]
    if unknown:
        raise ValueError(f"unknown lesion model(s) {unknown}; models are {', '.join(MODEL_SPECS)}")
    if settings.threads:
        torch.set_num_threads(settings.threads)
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        started = time.perf_counter()
        dataset = build_dataset(settings.cases, settings.first_seed, cache_dir, log) if phantoms else None
        simulate_s = time.perf_counter() - started
        site_studies: list[str] = []
        if site_data is not None:
            from inference.liver.lesion_site_data import SITE_LESION, read_site_lesions

            site_lesions, site_studies = read_site_lesions(site_data, log)
            site = LesionDataset.from_lesions(site_lesions, SITE_LESION)
            dataset = site if dataset is None else dataset + site
        if dataset is None:
            raise ValueError("no training data: give --data with the phantoms turned off")
        dataset_info = {
            "source": "liver phantom (inference.liver.phantom.simulate_liver_mr), six sequences",
            "shape_zyx": list(CLS_SHAPE), "spacing_zyx_mm": list(CLS_SPACING),
            "phantom_seeds": [settings.first_seed, settings.first_seed + settings.cases - 1] if phantoms else [],
            "lesions_per_case": "1-3 of one kind, kinds cycling over the seven classes",
            "min_axial_diameter_mm": MIN_CLASSIFIED_DIAMETER_MM,
            "lesions": len(dataset), "slice_patches": len(dataset.patches),
            "lesions_per_kind": {k.name.lower(): int((dataset.kinds == k).sum()) for k in LesionKind},
            "simulation_seconds": round(simulate_s, 1),
            "site_studies": site_studies,
        }
        log(f"{len(dataset)} lesions, {len(dataset.patches)} slice patches ({simulate_s:.0f} s)")
        written = {}
        for letter in letters:
            spec = MODEL_SPECS[letter]
            network, record = train_model(spec, dataset, settings, log)
            written[letter] = write_model(spec, network, record, settings, dataset_info, out_dir)
            log(f"wrote {written[letter]}")
        return written
    finally:
        torch.use_deterministic_algorithms(deterministic_before)


def main(argv: Sequence[str] | None = None) -> int:
    """``pacsnode train liver-cls``: train the lesion classifiers A–G on phantoms, evaluate, write the card."""
    defaults = TrainSettings()
    parser = argparse.ArgumentParser(prog="pacsnode train liver-cls", description=main.__doc__)
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="output directory (default: committed weights)")
    parser.add_argument("--models", default="ABCDEFG", help="letters of the models to train (default ABCDEFG)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--cases", type=int, default=defaults.cases, help="training phantoms")
    parser.add_argument("--first-seed", type=int, default=defaults.first_seed,
                        help=f"first phantom seed (>= {FIRST_TRAINING_SEED})")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="epochs of models A–D")
    parser.add_argument("--malignant-epochs", type=int, default=defaults.malignant_epochs,
                        help="epochs of models E–G (malignant lesions only)")
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where simulated patches are cached")
    parser.add_argument("--no-cache", action="store_true", help="simulate without reading or writing the cache")
    parser.add_argument("--data", type=Path, default=None,
                        help="a folder of the site's labelled studies (six sequences + a SEG whose lesion segments' "
                             "Segmented Property Type is the class code), added to the phantoms")
    parser.add_argument("--no-phantoms", action="store_true", help="train on the --data studies only")
    parser.add_argument("--evaluation-cases", type=int, default=defaults.evaluation_cases,
                        help="held-out phantoms to evaluate on afterwards (0: skip evaluation and model card)")
    args = parser.parse_args(argv)
    settings = TrainSettings(seed=args.seed, cases=args.cases, first_seed=args.first_seed, epochs=args.epochs,
                             malignant_epochs=args.malignant_epochs, threads=args.threads,
                             evaluation_cases=args.evaluation_cases)
    letters = [c for c in args.models.upper() if not c.isspace() and c != ","]
    try:
        written = train_models(letters, args.out, settings, None if args.no_cache else args.cache,
                               site_data=args.data, phantoms=not args.no_phantoms)
    except (TrainingSeedError, ValueError) as exc:
        parser.exit(2, f"pacsnode train liver-cls: {exc}\n")
    if settings.evaluation_cases > 0:
        from inference.liver import lesion_evaluation

        report = lesion_evaluation.evaluate(written, settings.evaluation_cases, cache_dir=None if args.no_cache
                                            else args.cache)
        lesion_evaluation.record_metrics(report, written)
        lesion_evaluation.write_model_card(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
