"""What the liver segmentation models are and how they are trained: recipes, settings and seed ranges.

Shared by :mod:`inference.liver.training`, which trains and evaluates the models, and
:mod:`inference.liver.segmentation_card`, which describes them in the model card.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from inference.liver.phases import CT_MULTIPHASE_PHASES
from inference.liver.weights import SLIDING_WINDOW_OVERLAP

#: Training phantoms use seeds from here on; evaluation uses 0–99.
FIRST_TRAINING_SEED = 1000
#: Evaluation seeds kept back from comparing versions: rounds are compared on the
#: held-out seeds 0… (``--evaluation-cases``), and the version finally chosen is
#: confirmed on these, which no choice has looked at (``--evaluate-only --confirm``).
CONFIRMATION_SEEDS = range(50, 100)
#: Phantom seeds set aside for each training seed: seed *s* uses the stretch from
#: ``FIRST_TRAINING_SEED + s * PHANTOM_SEEDS_PER_TRAINING_SEED`` on (a 6000-step run uses ~1200).
PHANTOM_SEEDS_PER_TRAINING_SEED = 100_000
#: The phantom channels of the DCE models, in acquisition order.
DCE_CHANNELS = ("pre", "arterial", "portal", "delayed")
#: What an ensemble's version contains (``liver-seg-ct-multiphase-ensemble-v1``), so the card finds it, and the
#: name ensembles go by where the card pairs each manifest with its recipe's name.
ENSEMBLE_INFIX = "-ensemble-"
ENSEMBLE = "ensemble"


@dataclass(frozen=True)
class ModelRecipe:
    """What one of the models is: network, inputs and modality."""

    name: str
    model_version: str
    model_kind: str
    modality: str
    channels: tuple[str, ...]
    architecture: dict[str, Any]
    description: str
    #: The recipe whose models may start this one's training though their inputs differ (transfer):
    #: the same network with other phases or another modality. ``--init`` still refuses any other.
    starts_from: str | None = None


MODEL_RECIPES: dict[str, ModelRecipe] = {
    "liver-seg-mr": ModelRecipe(
        "liver-seg-mr", "liver-seg-mr-v1", "fused-unet-4d", "MR", DCE_CHANNELS,
        {"phases": 4, "classes": 3, "widths": [8, 16, 24, 32], "lstm_kernels": [1, 1, 1, 3]},
        "4D DCE-MRI fused U-Net: shared 3D encoder per phase, ConvLSTM over the phases, nested decoder",
    ),
    "liver-seg-mr-baseline": ModelRecipe(
        "liver-seg-mr-baseline", "liver-seg-mr-baseline-v1", "unet-3d", "MR", ("portal",),
        {"in_channels": 1, "classes": 3, "widths": [8, 16, 24, 32]},
        "single-phase 3D U-Net on the portal-venous phase (baseline for the 4D model)",
    ),
    "liver-seg-ct": ModelRecipe(
        "liver-seg-ct", "liver-seg-ct-v1", "unet-3d", "CT", ("ct",),
        {"in_channels": 1, "classes": 3, "widths": [8, 16, 24, 32]},
        "3D U-Net on portal-venous CT",
    ),
    "liver-seg-ct-multiphase": ModelRecipe(
        "liver-seg-ct-multiphase", "liver-seg-ct-multiphase-v1", "unet-3d", "CT", CT_MULTIPHASE_PHASES,
        {"in_channels": 2, "classes": 3, "widths": [8, 16, 24, 32]},
        "3D U-Net on arterial + portal-venous CT (the phases as input channels)",
    ),
    "liver-seg-ct-4d": ModelRecipe(
        "liver-seg-ct-4d", "liver-seg-ct-4d-v1", "fused-unet-4d", "CT", CT_MULTIPHASE_PHASES,
        {"phases": len(CT_MULTIPHASE_PHASES), "classes": 3, "widths": [8, 16, 24, 32], "lstm_kernels": [1, 1, 1, 3]},
        "fused U-Net on arterial + portal-venous CT (shared 3D encoder per phase, ConvLSTM over the phases, "
        "nested decoder), the 4D DCE-MRI network carried over to CT",
        starts_from="liver-seg-mr",
    ),
}


@dataclass(frozen=True)
class TrainingSettings:
    """The training recipe; stored in the manifest."""

    seed: int = 0
    steps: int = 3000
    minutes: float | None = None
    #: Stop after this many steps of the ``steps``-long schedule: reproduces, step for step, a run that
    #: ``minutes`` stopped early (its manifest's ``steps_run``).
    stop_after: int | None = None
    batch_size: int = 2
    patch_size: tuple[int, int, int] = (16, 48, 48)
    #: Sliding-window size at inference (the manifest's patch size): the networks are fully
    #: convolutional, and larger windows mean fewer windows and fewer tile borders.
    inference_patch_size: tuple[int, int, int] = (32, 96, 96)
    #: Overlap of the sliding windows at inference (the manifest's): less runs fewer windows,
    #: which a finer model grid needs to stay within the CPU time target.
    sliding_window_overlap: float = SLIDING_WINDOW_OVERLAP
    model_spacing: tuple[float, float, float] = (4.0, 3.0, 3.0)
    #: Further grids (mm, zyx) of scans the training phantoms are shown as, in turn with the model's own
    #: (phantom seed *k* on grid *k* mod the number of grids; see training.acquired_on), brought back
    #: onto the model's grid as the pipeline brings a study: a model that only ever saw its own grid can
    #: misread a study of another (liver-seg-ct-multiphase-v13 marks dozens of false lesions on
    #: 4 × 3 × 3 mm studies).
    phantom_spacings: tuple[tuple[float, float, float], ...] = ()
    learning_rate: float = 3e-3
    pool_size: int = 16
    refresh_every: int = 5
    tumour_crop_fraction: float = 0.5
    liver_crop_fraction: float = 0.3
    intensity_jitter: float = 0.1
    #: Cross-entropy weights of background, liver, tumour: tumour voxels are well under 1 % of a
    #: crop even when it is centred on a lesion; without the weight 700 steps learnt no tumour.
    class_weights: tuple[float, float, float] = (1.0, 1.0, 5.0)
    #: Tumour-centred crops pick a lesion first (each equally likely), then a voxel in it, so
    #: small lesions are seen as often as large ones; otherwise a tumour voxel is picked, and a
    #: 40 mm lesion (hundreds of times the voxels of a 6 mm one) takes nearly every such crop.
    crop_by_lesion: bool = False
    #: Each crop is mirrored along each of z, y and x with probability one half, so the network
    #: reads a mirrored study as well as the study itself; the pipeline then averages its
    #: predictions over mirrored copies (test-time mirroring, see ``LiverSegmenter.predict``).
    mirror: bool = False
    #: Dice per crop rather than over the batch: the batch Dice pools the crops' voxels, so a
    #: crop on a 40 mm lesion outweighs one on a 6 mm lesion hundreds of times; per crop each
    #: counts once (crops without tumour add a constant, no gradient).
    dice_per_crop: bool = False
    #: Manifest of a model of the same recipe whose weights training starts from (fine-tuning),
    #: e.g. the committed model before a site retrains it on its own studies.
    init_from: str | None = None
    #: The written model's version; the recipe's default when None.
    model_version: str | None = None
    evaluation_cases: int = 10
    threads: int = 1
    #: Where the network trains and is evaluated: "auto" (CUDA when torch sees a GPU, the CPU
    #: otherwise), "cpu" or "cuda". A written manifest holds the one used. Only a CPU run is
    #: bit-reproducible: trilinear upsampling's backward pass has no deterministic CUDA kernel.
    device: str = "auto"
    #: Feature channels per U-Net level; the recipe's when None. Wider networks learn more from
    #: the same phantoms at a higher training and inference cost (see the benchmark).
    widths: tuple[int, ...] | None = None

    def architecture(self, recipe: ModelRecipe) -> dict[str, Any]:
        """The network *recipe* trains with these settings: its architecture, with :attr:`widths` if set."""
        return {**recipe.architecture, "widths": list(self.widths)} if self.widths else dict(recipe.architecture)

    def phantom_grid_for(self, seed: int) -> tuple[float, float, float]:
        """The grid (mm, zyx) the training phantom of *seed* is simulated on (see :attr:`phantom_spacings`)."""
        grids = (self.model_spacing, *self.phantom_spacings)
        return grids[seed % len(grids)]

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
