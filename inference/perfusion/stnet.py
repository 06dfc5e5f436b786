"""ST-Net-like perfusion estimation: CBV, CBF and Tmax from DSC-MRI by a spatio-temporal CNN.

The model follows Cao et al., "Quantitative perfusion maps using a novelty
spatiotemporal convolutional neural network" (ST-Net): a voxel's 7×7×T
neighbourhood goes through a 3D CNN spatial encoder with spatial-only kernels
(channels 1-8-16-32-64) that keeps the time axis; a temporal network merges the
64 feature curves with the voxel's baseline channel and the arterial input
function (AIF), splits into a global (long-range) and a local (short-range)
1D pathway, joins them with two 1D convolutions and two fully connected
layers, and outputs CBV, CBF and Tmax. MTT is CBV / CBF and is not an output.

Where this differs from the paper, or where the paper is silent, the choices
are ours ("ST-Net-like"):

* **Input quantity.** ΔR2*(t) (1/s), not raw signal: the node converts signal
  to ΔR2* once, for every method. Curves are resampled linearly (edge values
  held) to the model's grid of :data:`MODEL_FRAMES` frames every
  :data:`FRAME_INTERVAL_S` seconds, starting :data:`PRE_ARRIVAL_S` before the
  AIF's arrival (its first crossing of 20 % of its peak), and scaled so that
  the AIF has an area of :data:`AIF_AREA_S` seconds; the tissue curves are
  scaled by the same factor times :data:`TISSUE_GAIN`. This removes the
  scanner's arbitrary ΔR2* scale and the bolus arrival time from what the
  network must learn; CBV then follows from the tissue curve's area alone.
* **Baseline channel.** The paper adds the voxel's mean pre-contrast signal.
  After conversion to ΔR2* that mean is zero by construction; what it told the
  network (how noisy the curve is) is carried instead by the standard
  deviation of the voxel's normalised curve over the pre-arrival frames.
* **Spatial encoder padding.** The paper pads its first (3,3,1) convolution by
  (1,1,0). Zero padding inside a patch makes each patch's result depend on
  zeros that are real neighbours in the whole slice, so whole-slice and
  patch inference could not agree. Here the three (3,3,1) convolutions are
  'valid' (7→5→3→1) and the fourth (32→64) is (1,1,1); the receptive field is
  exactly the 7×7 patch. Applied to a whole slice the encoder gives, at every
  pixel, what the patch model gives for the patch centred there.
* **Temporal network sizes** (the paper gives none): merge Conv1d(66→16, k=1);
  global pathway three Conv1d(k=7) with dilations 1, 2, 4 (receptive field
  43 frames), width 8; local pathway two Conv1d(k=3), width 8; two Conv1d(k=3,
  stride 2) 16→16 reduce 50 frames to 13; FC 208→64, LeakyReLU, dropout 0.1,
  FC 64→3. Temporal convolutions are zero-padded ('same' length).
  LeakyReLU (slope 0.01) follows every temporal layer; ReLU every encoder layer.
* **Fully connected layers as 1×1 convolutions.** The two FC layers are 1×1
  convolutions over the slice, and the temporal network treats every pixel
  as an independent sequence, so a whole slice is one forward pass.
* **Outputs** are normalised: CBV / :data:`CBV_SCALE`, CBF / :data:`CBF_SCALE`
  (both through softplus, so never negative) and Tmax / :data:`TMAX_SCALE`.

The physics term of the training loss (the paper's eq. 9) is in
:func:`stnet_loss`. Loading a site's weights, with a manifest whose hash is
checked, is :class:`STNetPredictor`.

Research use only; not a medical device.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from inference.model_files import default_device, read_manifest_file, verified_weights

#: Frames of the model's fixed time grid.
MODEL_FRAMES = 50
#: Seconds between frames of the model's time grid.
FRAME_INTERVAL_S = 1.5
#: The model's grid starts this many seconds before the AIF's arrival.
PRE_ARRIVAL_S = 9.0
#: The AIF's arrival: its first crossing of this fraction of its peak.
ARRIVAL_FRACTION = 0.2
#: After normalisation the AIF has this area (seconds).
AIF_AREA_S = 10.0
#: Tissue curves are scaled by the AIF normalisation times this gain (keeps them O(1)).
TISSUE_GAIN = 2.0
#: Side of the spatial patch (pixels).
PATCH_SIZE = 7
#: Half the patch: the encoder trims this many pixels from each slice edge.
PATCH_HALO = PATCH_SIZE // 2
#: Output normalisation: the network predicts CBV / CBV_SCALE etc.
CBV_SCALE = 4.0  # ml/100 g
CBF_SCALE = 40.0  # ml/100 g/min
TMAX_SCALE = 5.0  # s
#: Physical constants of eq. (4): tissue density and hematocrit in large and small vessels.
TISSUE_DENSITY_G_PER_ML = 1.04
HEMATOCRIT_LARGE_VESSELS = 0.45
HEMATOCRIT_SMALL_VESSELS = 0.25
#: Tissue over arterial ΔR2* per unit concentration (κ_t / κ_a) in the training
#: simulator: a grey-matter curve (CBV 4, CBF 60) drops the signal ~40 % when the
#: AIF drops it to 0.4·S0 (the OSIPI DSC recipe). Absolute CBV/CBF assume it.
KAPPA_RATIO = 15.0

MANIFEST_FORMAT = "pacsnode-stnet"
MANIFEST_FORMAT_VERSION = 1

OUTPUT_NAMES = ("cbv", "cbf", "tmax")


class STNetError(Exception):
    """ST-Net could not be loaded or run; the message says what to do."""


class STNetWeightsError(STNetError):
    """A weights file or its manifest is missing, malformed or does not match."""


class STNetInputError(STNetError, ValueError):
    """The arrays given to :meth:`STNetPredictor.predict` cannot be used."""


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class STNetConfig:
    """The sizes of an ST-Net-like model; stored in every manifest."""

    frames: int = MODEL_FRAMES
    encoder_channels: tuple[int, ...] = (1, 8, 16, 32, 64)
    merge_channels: int = 16
    pathway_channels: int = 8
    global_kernel: int = 7
    global_dilations: tuple[int, ...] = (1, 2, 4)
    local_kernel: int = 3
    local_layers: int = 2
    reduce_channels: int = 16
    fc_channels: int = 64
    dropout: float = 0.1
    leaky_slope: float = 0.01

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> STNetConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise STNetWeightsError(f"manifest architecture has unknown fields {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    @property
    def reduced_frames(self) -> int:
        t = self.frames
        for _ in range(2):
            t = (t + 2 * 1 - 3) // 2 + 1
        return t


class SpatialEncoder(nn.Module):
    """Spatial-only (3,3,1) convolutions, 'valid', that shrink a 7×7 patch to one pixel.

    Works on any slice size: a (N, T, H, W) input gives (N·T, 64, H−6, W−6)
    features, each computed from the 7×7 neighbourhood of its pixel and frame.
    """

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        if len(channels) != 5 or channels[0] != 1:
            raise ValueError(f"encoder channels must be 1 then four widths, got {channels}")
        convs = [nn.Conv2d(channels[i], channels[i + 1], kernel_size=3) for i in range(3)]
        convs.append(nn.Conv2d(channels[3], channels[4], kernel_size=1))
        self.convs = nn.ModuleList(convs)
        self.out_channels = channels[4]

    def forward(self, tissue: torch.Tensor, project: torch.Tensor | None = None) -> torch.Tensor:
        """(N, T, H, W) → (N·T, C, H−6, W−6) features, frame-major.

        With *project* (C', 64) the features are mapped by that 1×1 matrix as
        they are made (the merge layer's feature part), so the 64-channel maps
        never exist for all frames at once; frames go through in chunks small
        enough to stay in cache, which is several times faster on CPU.
        """
        n, t, h, w = tissue.shape
        # Time frames are independent for spatial-only kernels: fold them into the batch.
        x = tissue.transpose(0, 1).reshape(t * n, 1, h, w)
        # Chunking pays off in inference; in training autograd keeps every chunk anyway.
        per_chunk = t if torch.is_grad_enabled() else max(1, _CHUNK_PIXELS // (n * h * w))
        outputs = []
        for start in range(0, t, per_chunk):
            y = x[start * n : (start + per_chunk) * n].contiguous(memory_format=torch.channels_last)
            for conv in self.convs:
                y = F.relu(conv(y))
            if project is not None:
                y = F.conv2d(y, project[:, :, None, None])
            outputs.append(y)
        out = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
        # (T·N, C, h, w) → (N·T, C, h, w)
        return out.reshape(t, n, *out.shape[1:]).transpose(0, 1).reshape(n * t, *out.shape[1:])


#: Input pixels per encoder chunk (frames × batch × H × W); sized for CPU caches.
_CHUNK_PIXELS = 40_000


def _temporal_conv(cin: int, cout: int, kernel: int, dilation: int = 1, stride: int = 1) -> nn.Conv1d:
    return nn.Conv1d(
        cin,
        cout,
        kernel_size=kernel,
        dilation=dilation,
        stride=stride,
        padding=dilation * (kernel - 1) // 2,
    )


class TemporalNetwork(nn.Module):
    """Merge, global and local 1D pathways, reduction and the 1×1 'fully connected' head."""

    def __init__(self, config: STNetConfig, feature_channels: int) -> None:
        super().__init__()
        c = config
        self.slope = c.leaky_slope
        # The paper's "1D CNN layer that merges the spatial information with the
        # additional channels": a k=1 convolution over 64 features + baseline + AIF.
        self.merge = nn.Conv1d(feature_channels + 2, c.merge_channels, kernel_size=1)
        self.feature_channels = feature_channels
        g = []
        cin = c.merge_channels
        for d in c.global_dilations:
            g.append(_temporal_conv(cin, c.pathway_channels, c.global_kernel, dilation=d))
            cin = c.pathway_channels
        self.global_path = nn.ModuleList(g)
        loc = []
        cin = c.merge_channels
        for _ in range(c.local_layers):
            loc.append(_temporal_conv(cin, c.pathway_channels, c.local_kernel))
            cin = c.pathway_channels
        self.local_path = nn.ModuleList(loc)
        self.reduce = nn.ModuleList(
            [
                _temporal_conv(2 * c.pathway_channels, c.reduce_channels, 3, stride=2),
                _temporal_conv(c.reduce_channels, c.reduce_channels, 3, stride=2),
            ]
        )
        flat = c.reduce_channels * c.reduced_frames
        self.fc1 = nn.Conv2d(flat, c.fc_channels, kernel_size=1)
        self.dropout = nn.Dropout(c.dropout)
        self.fc2 = nn.Conv2d(c.fc_channels, len(OUTPUT_NAMES), kernel_size=1)

    def merge_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The merge layer's k=1 weight split into its feature, baseline and AIF parts.

        The layer is linear, so applying the parts separately equals applying it
        to the concatenated 66-channel input, without materialising that input.
        """
        weight = self.merge.weight[:, :, 0]  # (C, 64 + 2)
        fc = self.feature_channels
        return weight[:, :fc], weight[:, fc], weight[:, fc + 1]

    def merge_inputs(
        self,
        projected: torch.Tensor,
        baseline: torch.Tensor,
        aif: torch.Tensor,
        n: int,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Finish the merge layer: (N·T, C, h, w) projected features → (V, C, T) sequences.

        *baseline* (N, h, w), *aif* (N, T); V is N·h·w, or the pixels in *keep*.
        """
        nt, c, h, w = projected.shape
        t = nt // n
        _, w_base, w_aif = self.merge_weights()
        seq = projected.reshape(n, t, c, h, w).permute(0, 3, 4, 2, 1)  # (N, h, w, C, T)
        base = baseline
        aif_n = aif[:, None, None, :].expand(n, h, w, t)
        if keep is not None:
            seq, base, aif_n = seq[keep], base[keep], aif_n[keep]
        else:
            seq, base, aif_n = (seq.reshape(-1, c, t), base.reshape(-1), aif_n.reshape(-1, t))
        merged = seq + base[:, None, None] * w_base[:, None] + aif_n[:, None, :] * w_aif[:, None]
        return F.leaky_relu(merged + self.merge.bias[:, None], self.slope)

    def forward(self, merged: torch.Tensor) -> torch.Tensor:
        """(V, C, T) merged sequences → (V, 3) normalised parameters."""
        g = merged
        for conv in self.global_path:
            g = F.leaky_relu(conv(g), self.slope)
        loc = merged
        for conv in self.local_path:
            loc = F.leaky_relu(conv(loc), self.slope)
        x = torch.cat([g, loc], dim=1)
        for conv in self.reduce:
            x = F.leaky_relu(conv(x), self.slope)
        # Fully connected layers as 1×1 convolutions over a (1, F, V, 1) "slice" of voxels.
        x = x.reshape(1, x.shape[0], -1).permute(0, 2, 1).unsqueeze(-1)
        x = self.dropout(F.leaky_relu(self.fc1(x), self.slope))
        x = self.fc2(x)
        return x[0, :, :, 0].T


class STNet(nn.Module):
    """The ST-Net-like model; see the module docstring for the architecture.

    ``forward(tissue, baseline, aif)`` takes normalised inputs on the model grid:
    *tissue* (N, T, H, W), *baseline* (N, H−6, W−6), *aif* (N, T), and returns
    (N, 3, H−6, W−6): normalised CBV, CBF, Tmax at every pixel whose 7×7
    neighbourhood lies inside the input. A 7×7 input is the paper's patch mode;
    a padded whole slice is the same computation for every pixel at once.
    With *keep* (N, H−6, W−6) bool, only those pixels go through the temporal
    network and the result is (V, 3) in ``keep.nonzero()`` order.
    """

    def __init__(self, config: STNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or STNetConfig()
        self.encoder = SpatialEncoder(self.config.encoder_channels)
        self.temporal = TemporalNetwork(self.config, self.encoder.out_channels)
        self._initialise()

    def _initialise(self) -> None:
        """He initialisation for the (leaky) ReLU layers, zero biases.

        PyTorch's default initialisation shrinks activations through the four
        ReLU encoder layers so far that training stalls at the median output.
        """
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d)):
                nn.init.kaiming_normal_(module.weight, a=self.config.leaky_slope, nonlinearity="leaky_relu")
                nn.init.zeros_(module.bias)

    def forward(
        self,
        tissue: torch.Tensor,
        baseline: torch.Tensor,
        aif: torch.Tensor,
        keep: torch.Tensor | None = None,
    ) -> torch.Tensor:
        n, t, h, w = tissue.shape
        if t != self.config.frames:
            raise STNetInputError(f"model expects {self.config.frames} frames, got {t}")
        if h < PATCH_SIZE or w < PATCH_SIZE:
            raise STNetInputError(f"input must be at least {PATCH_SIZE}×{PATCH_SIZE}, got {h}×{w}")
        w_feat, _, _ = self.temporal.merge_weights()
        projected = self.encoder(tissue, project=w_feat)
        sequences = self.temporal.merge_inputs(projected, baseline, aif, n, keep)
        raw = self.temporal(sequences)
        out = torch.cat([F.softplus(raw[:, :2]), raw[:, 2:]], dim=1)
        if keep is not None:
            return out
        return out.reshape(n, h - 2 * PATCH_HALO, w - 2 * PATCH_HALO, 3).permute(0, 3, 1, 2)


def denormalise_outputs(outputs: torch.Tensor | np.ndarray, scales: Mapping[str, float]) -> dict:
    """Normalised (..., 3) outputs → {'cbv', 'cbf', 'tmax'} in ml/100 g, ml/100 g/min, s."""
    return {name: outputs[..., i] * float(scales[name]) for i, name in enumerate(OUTPUT_NAMES)}


# --------------------------------------------------------------------------- loss


def cbv_from_curve_area(area_normalised: torch.Tensor) -> torch.Tensor:
    """CBV (ml/100 g) implied by a normalised tissue curve's area, by eq. (4).

    CBV = 100·(1−H_LV)/(ρ(1−H_SV))·∫c_t/∫c_a with c = ΔR2*/κ (eq. 2); after
    normalisation ∫ΔR2*_a = AIF_AREA_S and the tissue carries TISSUE_GAIN, so
    ∫c_t/∫c_a = area / (AIF_AREA_S · TISSUE_GAIN · KAPPA_RATIO).
    """
    k_h = (1.0 - HEMATOCRIT_LARGE_VESSELS) / (1.0 - HEMATOCRIT_SMALL_VESSELS)
    ratio = area_normalised / (AIF_AREA_S * TISSUE_GAIN * KAPPA_RATIO)
    return 100.0 * k_h / TISSUE_DENSITY_G_PER_ML * ratio


def curve_area(curves: torch.Tensor, frame_interval_s: float = FRAME_INTERVAL_S) -> torch.Tensor:
    """Trapezoidal area of (..., T) curves on the model grid (normalised units · s)."""
    return torch.trapezoid(curves, dx=frame_interval_s, dim=-1)


def stnet_loss(
    predicted: torch.Tensor,
    target: torch.Tensor,
    centre_curves: torch.Tensor,
    physics_weight: float = 0.1,
    cbf_relative_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The paper's eq. (9): MAE on (CBV, CBF, Tmax) + w · MAE(∫c_t dt, f(CBV_pred)), plus our relative CBF term.

    *predicted* and *target* are (B, 3) normalised outputs; *centre_curves* (B, T)
    the normalised tissue curve of each patch's centre voxel as given to the
    network. The physics term compares the curve's measured area with the area
    eq. (4) implies for the predicted CBV, expressed in CBV's normalised units
    (both sides divided by the constant of eq. (4) and by CBV_SCALE), so that
    *physics_weight* weighs it on the same scale as the supervised terms. It
    needs no ground truth (it is the paper's unsupervised term).

    *cbf_relative_weight* adds w · MAE(log CBF_pred, log CBF_true) (not in the
    paper): the absolute MAE lets low-flow tissue carry large relative errors,
    and the ischaemic core is defined by relative CBF (< 30 % of normal), so
    a bias at low flow moves penumbra into the core.
    """
    supervised = (predicted - target).abs().mean()
    implied = cbv_from_curve_area(curve_area(centre_curves)) / CBV_SCALE
    physics = (implied - predicted[:, 0]).abs().mean()
    total = supervised + physics_weight * physics
    cbf = OUTPUT_NAMES.index("cbf")
    relative = (torch.log(predicted[:, cbf] + 1e-3) - torch.log(target[:, cbf] + 1e-3)).abs().mean()
    if cbf_relative_weight:
        total = total + cbf_relative_weight * relative
    per_output = (predicted - target).abs().mean(dim=0)
    parts = {"supervised": supervised.detach(), "physics": physics.detach(), "cbf_relative": relative.detach()}
    parts.update({f"mae_{n}": per_output[i].detach() for i, n in enumerate(OUTPUT_NAMES)})
    return total, parts


# --------------------------------------------------------------------------- input preparation


def aif_arrival_time(aif: np.ndarray, times_s: np.ndarray) -> float:
    """The AIF's first (linearly interpolated) crossing of ARRIVAL_FRACTION of its peak."""
    aif = np.asarray(aif, dtype=np.float64)
    peak_index = int(np.argmax(aif))
    level = ARRIVAL_FRACTION * aif[peak_index]
    if not np.isfinite(level) or level <= 0:
        raise STNetInputError("the AIF has no positive peak; check its sign (ΔR2*, not signal)")
    above = np.flatnonzero(aif[: peak_index + 1] >= level)
    i = int(above[0])
    if i == 0:
        return float(times_s[0])
    a0, a1 = aif[i - 1], aif[i]
    frac = (level - a0) / (a1 - a0) if a1 != a0 else 0.0
    return float(times_s[i - 1] + frac * (times_s[i] - times_s[i - 1]))


def model_grid(arrival_s: float, frames: int = MODEL_FRAMES, interval_s: float = FRAME_INTERVAL_S) -> np.ndarray:
    """The model's sample times (s, in the acquisition's clock) for an AIF arriving at *arrival_s*."""
    return arrival_s - PRE_ARRIVAL_S + interval_s * np.arange(frames)


def resampling_matrix(times_s: np.ndarray, grid_s: np.ndarray) -> np.ndarray:
    """(len(grid), len(times)) linear-interpolation weights; edge values are held (np.interp)."""
    times_s = np.asarray(times_s, dtype=np.float64)
    if times_s.ndim != 1 or len(times_s) < 2 or np.any(np.diff(times_s) <= 0):
        raise STNetInputError("times_s must be strictly increasing with at least two frames")
    g = np.clip(grid_s, times_s[0], times_s[-1])
    j = np.clip(np.searchsorted(times_s, g, side="right") - 1, 0, len(times_s) - 2)
    frac = (g - times_s[j]) / (times_s[j + 1] - times_s[j])
    m = np.zeros((len(grid_s), len(times_s)))
    rows = np.arange(len(grid_s))
    m[rows, j] = 1.0 - frac
    m[rows, j + 1] += frac
    return m


@dataclass(frozen=True)
class ModelInputs:
    """Curves on the model grid, normalised; produced by :func:`prepare_inputs`."""

    tissue: np.ndarray  # (T_model, ...) float32, normalised ΔR2*
    baseline: np.ndarray  # (...) float32, pre-arrival std of the normalised curve
    aif: np.ndarray  # (T_model,) float32, area AIF_AREA_S
    arrival_s: float


def prepare_inputs(
    delta_r2: np.ndarray,
    aif: np.ndarray,
    times_s: np.ndarray,
    frames: int = MODEL_FRAMES,
    interval_s: float = FRAME_INTERVAL_S,
    tissue_to_artery_relaxivity: float | None = None,
) -> ModelInputs:
    """Resample (T, ...) ΔR2* curves and the AIF to the model grid and normalise them.

    *tissue_to_artery_relaxivity* is κ_tissue/κ_artery of the data; the tissue curves are
    rescaled to the model's :data:`KAPPA_RATIO` (None: the data already follow it).
    Training and inference both go through this function, so a site's data see
    exactly the transformation the model was trained with.
    """
    times_s = np.asarray(times_s, dtype=np.float64)
    aif = np.asarray(aif, dtype=np.float64)
    if aif.shape != times_s.shape or delta_r2.shape[0] != len(times_s):
        raise STNetInputError(
            f"time axes disagree: delta_r2 has {delta_r2.shape[0]} frames, aif {aif.shape}, "
            f"times_s {times_s.shape}"
        )
    arrival = aif_arrival_time(aif, times_s)
    grid = model_grid(arrival, frames, interval_s)
    m = resampling_matrix(times_s, grid)
    aif_grid = m @ aif
    area = float(np.trapezoid(aif_grid, dx=interval_s))
    if not area > 0:
        raise STNetInputError("the AIF has no positive area on the model's time grid")
    scale = AIF_AREA_S / area
    kappa = 1.0 if tissue_to_artery_relaxivity is None else KAPPA_RATIO / float(tissue_to_artery_relaxivity)
    if not kappa > 0:
        raise STNetInputError(f"tissue_to_artery_relaxivity must be positive, got {tissue_to_artery_relaxivity}")
    flat = np.asarray(delta_r2, dtype=np.float32).reshape(len(times_s), -1)
    tissue = (m.astype(np.float32) @ flat) * np.float32(scale * TISSUE_GAIN * kappa)
    pre = max(2, int(round((PRE_ARRIVAL_S - 1.0) / interval_s)))
    baseline = tissue[:pre].std(axis=0)
    return ModelInputs(
        tissue=tissue.reshape((frames,) + delta_r2.shape[1:]),
        baseline=baseline.reshape(delta_r2.shape[1:]),
        aif=(aif_grid * scale).astype(np.float32),
        arrival_s=arrival,
    )


# --------------------------------------------------------------------------- weights and inference


def manifest_path_for(weights_path: Path) -> Path:
    return weights_path.with_suffix(".json")


def read_manifest(path: Path) -> dict[str, Any]:
    """Read and check a manifest's format; *path* may name the manifest or its weights."""
    manifest, _ = read_manifest_file(
        path, format_name=MANIFEST_FORMAT, format_version=MANIFEST_FORMAT_VERSION,
        required=("weights_file", "weights_sha256", "architecture", "time_grid", "outputs"), what="ST-Net",
        fix="weights must come with the manifest written by `pacsnode train stnet`",
        missing=STNetWeightsError, invalid=STNetWeightsError)
    return manifest


class STNetPredictor:
    """Runs a trained ST-Net-like model over whole slices of a DSC study.

    Use :meth:`load` with a site's weights (the ``.pt`` file or its ``.json``
    manifest); the weights' sha256 must match the manifest's.
    """

    def __init__(self, model: STNet, manifest: Mapping[str, Any], device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        self.manifest = dict(manifest)
        grid = self.manifest["time_grid"]
        self.frames = int(grid["frames"])
        self.interval_s = float(grid["frame_interval_s"])
        norm = self.manifest.get("normalisation", {})
        physics = self.manifest.get("physics", {})
        expected = {
            "time_grid.pre_arrival_s": (grid.get("pre_arrival_s"), PRE_ARRIVAL_S),
            "normalisation.aif_area_s": (norm.get("aif_area_s"), AIF_AREA_S),
            "normalisation.tissue_gain": (norm.get("tissue_gain"), TISSUE_GAIN),
            "physics.kappa_ratio_tissue_to_artery": (physics.get("kappa_ratio_tissue_to_artery"), KAPPA_RATIO),
        }
        for key, (found, wanted) in expected.items():
            if found is None or abs(float(found) - wanted) > 1e-9:
                raise STNetWeightsError(
                    f"manifest {key} is {found!r} but this pacsnode prepares inputs with {wanted}; "
                    "the weights were trained for another input preparation: retrain or upgrade pacsnode"
                )
        self.scales = {n: float(self.manifest["outputs"][n]["scale"]) for n in OUTPUT_NAMES}

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str | None = None) -> STNetPredictor:
        """Load weights and manifest, refusing weights whose sha256 is not the manifest's."""
        manifest = read_manifest(Path(path))
        weights = verified_weights(manifest, "ST-Net", "restore it or retrain with `pacsnode train stnet`",
                                   STNetWeightsError, STNetWeightsError)
        config = STNetConfig.from_json(manifest["architecture"])
        model = STNet(config)
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:  # torch raises several types for malformed files
            raise STNetWeightsError(f"cannot load ST-Net weights {weights}: {exc}") from exc
        return cls(model, manifest, device)

    @property
    def version(self) -> str:
        return str(self.manifest.get("model_version", "unknown"))

    def predict(
        self,
        delta_r2: np.ndarray,
        aif: np.ndarray,
        mask: np.ndarray,
        times_s: np.ndarray,
        tissue_to_artery_relaxivity: float | None = None,
    ) -> dict[str, np.ndarray]:
        """CBF (ml/100 g/min), CBV (ml/100 g), Tmax (s) and MTT (s) maps, (z, y, x) float32.

        *delta_r2* (t, z, y, x) ΔR2* in 1/s, *aif* (t,) in the same units,
        *mask* (z, y, x) the voxels to compute (NaN elsewhere, as
        :mod:`inference.perfusion.deconvolution` does), *times_s* (t,) the
        frame times. *tissue_to_artery_relaxivity* (κ_tissue/κ_artery) of the data: absolute
        CBV and CBF scale with it (None: the training simulator's, :data:`KAPPA_RATIO`);
        Tmax does not depend on it. Each slice is cropped to its mask's bounding box (plus the
        3-pixel halo, edges replicated) and processed in one forward pass.
        """
        delta_r2 = np.asarray(delta_r2)
        if delta_r2.ndim != 4:
            raise STNetInputError(f"delta_r2 must be (t, z, y, x), got shape {delta_r2.shape}")
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != delta_r2.shape[1:]:
            raise STNetInputError(f"mask shape {mask.shape} does not match delta_r2's {delta_r2.shape[1:]}")
        if not np.all(np.isfinite(delta_r2[:, mask])):
            raise STNetInputError("delta_r2 has NaN or infinite values inside the mask")
        _, nz, ny, nx = delta_r2.shape
        maps = {name: np.full((nz, ny, nx), np.nan, np.float32) for name in OUTPUT_NAMES}
        prepared_aif: np.ndarray | None = None
        halo = PATCH_HALO
        with torch.inference_mode():
            for z in range(nz):
                if not mask[z].any():
                    continue
                ys, xs = np.nonzero(mask[z])
                y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
                slab = delta_r2[:, z]
                padded = np.pad(slab, ((0, 0), (halo, halo), (halo, halo)), mode="edge")
                crop = padded[:, y0 : y1 + 2 * halo, x0 : x1 + 2 * halo]
                inputs = prepare_inputs(crop, aif, times_s, self.frames, self.interval_s, tissue_to_artery_relaxivity)
                if prepared_aif is None:
                    prepared_aif = inputs.aif
                keep = mask[z, y0:y1, x0:x1]
                tissue = torch.from_numpy(np.ascontiguousarray(inputs.tissue)).to(self.device)[None]
                baseline = torch.from_numpy(inputs.baseline[halo:-halo, halo:-halo].copy()).to(self.device)[None]
                aif_t = torch.from_numpy(inputs.aif).to(self.device)[None]
                keep_t = torch.from_numpy(keep).to(self.device)[None]
                out = self.model(tissue, baseline, aif_t, keep=keep_t).float().cpu().numpy()
                values = denormalise_outputs(out, self.scales)
                for name in OUTPUT_NAMES:
                    sub = maps[name][z, y0:y1, x0:x1]
                    sub[keep] = values[name]
        with np.errstate(divide="ignore", invalid="ignore"):
            mtt = np.where(maps["cbf"] > 0, 60.0 * maps["cbv"] / maps["cbf"], np.nan)
        maps["mtt"] = mtt.astype(np.float32)
        return maps


def build_manifest(
    config: STNetConfig,
    weights_file: str,
    weights_sha256: str,
    *,
    model_version: str,
    training: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest a site's weights travel with (see :meth:`STNetPredictor.load`)."""
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_FORMAT_VERSION,
        "model_version": model_version,
        "weights_file": weights_file,
        "weights_sha256": weights_sha256,
        "architecture": config.to_json(),
        "input": {
            "quantity": "delta_r2star",
            "units": "1/s",
            "layout": "t,z,y,x",
            "patch": [PATCH_SIZE, PATCH_SIZE],
            "aif": "delta_r2star in 1/s, same scale as tissue",
        },
        "time_grid": {
            "frames": config.frames,
            "frame_interval_s": FRAME_INTERVAL_S,
            "pre_arrival_s": PRE_ARRIVAL_S,
            "arrival": f"first crossing of {ARRIVAL_FRACTION} x AIF peak",
            "resampling": "linear interpolation from the acquisition times; edge values held",
        },
        "normalisation": {
            "aif_area_s": AIF_AREA_S,
            "tissue_gain": TISSUE_GAIN,
            "baseline_channel": "std of normalised tissue curve over pre-arrival frames",
        },
        "outputs": {
            "cbv": {"units": "ml/100g", "scale": CBV_SCALE, "activation": "softplus"},
            "cbf": {"units": "ml/100g/min", "scale": CBF_SCALE, "activation": "softplus"},
            "tmax": {"units": "s", "scale": TMAX_SCALE, "activation": "identity"},
        },
        "physics": {
            "tissue_density_g_per_ml": TISSUE_DENSITY_G_PER_ML,
            "hematocrit_large_vessels": HEMATOCRIT_LARGE_VESSELS,
            "hematocrit_small_vessels": HEMATOCRIT_SMALL_VESSELS,
            "kappa_ratio_tissue_to_artery": KAPPA_RATIO,
        },
        "training": dict(training),
        "metrics": dict(metrics or {}),
        "intended_use": "research use only; not a medical device",
    }
