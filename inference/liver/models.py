"""Liver and liver-tumour segmentation networks: a 4D fused U-Net for DCE-MRI and a 3D U-Net.

Both map a multi-channel volume to three class scores per voxel
(:data:`LIVER_CLASSES`: background, liver, tumour; the liver includes its tumours
when the labels are read as organs).

:class:`FusedUNet4D` follows seed 002 (Zheng et al. 2022 as retold there: "3D
CNN + ConvLSTM", "fused U-Net"). Its input is ``[B, P, z, y, x]``, one channel
per DCE phase in acquisition order:

* a **shared 3D CNN encoder** is applied to every phase separately (phases are
  folded into the batch, so the weights are the same for every phase);
* at every encoder level a **convolutional LSTM** (:class:`ConvLSTM3d`) runs over
  the phase sequence and its last hidden state is that level's fused feature
  map. The seed puts the ConvLSTM at the bottleneck only; here it also fuses the
  skip levels, because a tumour's wash-in/wash-out pattern is a per-voxel
  signal that the full-resolution skips must carry (a bottleneck-only fusion
  leaves the skips with four unrelated phase features to average). To stay
  within a CPU budget the finer levels use 1×1×1 LSTM kernels (a per-voxel
  LSTM over the enhancement curve) and the bottleneck a 3×3×3 kernel;
* a **decoder with dense nested skips** (U-Net++; the seed's eq. 2,
  ``x^{i,j} = D([x^{i,0..j-1}, T(x^{i+1,j-1})])``) produces the class scores
  from the finest node ``x^{0,L-1}``. Deep supervision is not used.

:class:`UNet3D` is the seed-000 CT model (a plain 3D U-Net with concatenating
skips) and also the single-phase baseline the 4D model is compared with.

Where both differ from the seeds: widths are small (base 8–16, 3–4 levels) so
that they train on two CPU cores and the weights are a few hundred kB; every
convolution is followed by batch normalisation and ReLU (batch statistics are
frozen at inference, so sliding-window tiles are normalised identically — an
instance norm would renormalise each tile); pooling is 2×2×2 max pooling and
upsampling trilinear interpolation followed by a 1×1×1 convolution; no
dropout. Inputs must have spatial sizes divisible by ``2**(levels-1)``;
:attr:`FusedUNet4D.size_divisor` tells the sliding window how to tile.

Research use only; not a medical device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Output classes, in channel order.
LIVER_CLASSES = ("background", "liver", "tumour")


class ModelConfigError(ValueError):
    """An architecture description (e.g. a manifest's) cannot build a model."""


# --------------------------------------------------------------------------- building blocks


class ConvBlock(nn.Module):
    """``n`` × (3×3×3 convolution, batch norm, ReLU)."""

    def __init__(self, in_channels: int, out_channels: int, n: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(n):
            layers += [
                nn.Conv3d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm3d(out_channels),
                nn.ReLU(inplace=True),
            ]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Up(nn.Module):
    """Trilinear ×2 upsampling then a 1×1×1 convolution to *out_channels* (the seed's T)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.project = nn.Conv3d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return self.project(F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=False))


class ConvLSTM3dCell(nn.Module):
    """One step of a convolutional LSTM on 3D feature maps (Shi et al. 2015, without peepholes).

    The input, forget, output and candidate gates are one convolution of the
    concatenated input and hidden state, so the state has the input's spatial size.
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ModelConfigError(f"ConvLSTM kernel size must be odd, got {kernel_size}")
        self.hidden_channels = hidden_channels
        self.gates = nn.Conv3d(in_channels + hidden_channels, 4 * hidden_channels, kernel_size,
                               padding=kernel_size // 2)
        with torch.no_grad():
            # Forget-gate bias 1: remember earlier phases from the start of training.
            self.gates.bias.zero_()
            self.gates.bias[hidden_channels : 2 * hidden_channels].fill_(1.0)

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if state is None:
            zeros = x.new_zeros((x.shape[0], self.hidden_channels, *x.shape[2:]))
            state = (zeros, zeros)
        h, c = state
        i, f, o, g = torch.chunk(self.gates(torch.cat([x, h], dim=1)), 4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class ConvLSTM3d(nn.Module):
    """A :class:`ConvLSTM3dCell` run over a sequence ``[B, T, C, z, y, x]``; returns the last hidden state.

    The result depends on the order of the sequence (it is a recurrence), which
    is the point: for DCE the order is pre-contrast → arterial → portal → delayed.
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.cell = ConvLSTM3dCell(in_channels, hidden_channels, kernel_size)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        state = None
        for t in range(sequence.shape[1]):
            state = self.cell(sequence[:, t], state)
        assert state is not None
        return state[0]


# --------------------------------------------------------------------------- configurations


@dataclass(frozen=True)
class FusedUNet4DConfig:
    """Sizes of a :class:`FusedUNet4D`; stored in every manifest."""

    phases: int = 4
    classes: int = len(LIVER_CLASSES)
    widths: tuple[int, ...] = (8, 16, 24, 32)
    lstm_kernels: tuple[int, ...] = (1, 1, 1, 3)

    def __post_init__(self) -> None:
        if len(self.widths) < 2 or len(self.lstm_kernels) != len(self.widths):
            raise ModelConfigError(
                f"need at least two levels and one LSTM kernel per level (widths {self.widths}, "
                f"lstm_kernels {self.lstm_kernels})"
            )
        if self.phases < 1 or self.classes < 2:
            raise ModelConfigError(f"phases must be ≥ 1 and classes ≥ 2, got {self.phases}, {self.classes}")


@dataclass(frozen=True)
class UNet3DConfig:
    """Sizes of a :class:`UNet3D`; stored in every manifest."""

    in_channels: int = 1
    classes: int = len(LIVER_CLASSES)
    widths: tuple[int, ...] = (8, 16, 24, 32)

    def __post_init__(self) -> None:
        if len(self.widths) < 2:
            raise ModelConfigError(f"need at least two levels, got widths {self.widths}")
        if self.in_channels < 1 or self.classes < 2:
            raise ModelConfigError(f"in_channels must be ≥ 1 and classes ≥ 2, got {self.in_channels}, {self.classes}")


# --------------------------------------------------------------------------- networks


class FusedUNet4D(nn.Module):
    """4D DCE-MRI segmenter: shared per-phase 3D encoder, ConvLSTM fusion per level, U-Net++ decoder.

    ``forward(x)`` takes ``[B, P, z, y, x]`` (P = ``config.phases``, in acquisition
    order) and returns class logits ``[B, classes, z, y, x]``.
    """

    def __init__(self, config: FusedUNet4DConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or FusedUNet4DConfig()
        w = config.widths
        self.levels = len(w)
        self.encoders = nn.ModuleList(
            [ConvBlock(1 if i == 0 else w[i - 1], w[i]) for i in range(self.levels)]
        )
        self.fusers = nn.ModuleList(
            [ConvLSTM3d(w[i], w[i], config.lstm_kernels[i]) for i in range(self.levels)]
        )
        # Nested decoder nodes x^{i,j}, i + j < levels, j ≥ 1: inputs are x^{i,0..j-1}
        # (each w[i] wide) and the upsampled x^{i+1,j-1} (projected to w[i]).
        self.ups = nn.ModuleDict()
        self.nodes = nn.ModuleDict()
        for j in range(1, self.levels):
            for i in range(self.levels - j):
                self.ups[f"{i}_{j}"] = Up(w[i + 1], w[i])
                self.nodes[f"{i}_{j}"] = ConvBlock((j + 1) * w[i], w[i], n=1)
        self.head = nn.Conv3d(w[0], config.classes, 1)

    @property
    def size_divisor(self) -> int:
        return 2 ** (self.levels - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.config.phases:
            raise ValueError(f"expected [B, {self.config.phases}, z, y, x], got {tuple(x.shape)}")
        b, p = x.shape[:2]
        feats = x.reshape(b * p, 1, *x.shape[2:])  # every phase through the same encoder
        grid: dict[tuple[int, int], torch.Tensor] = {}
        for i in range(self.levels):
            if i > 0:
                feats = F.max_pool3d(feats, 2)
            feats = self.encoders[i](feats)
            sequence = feats.reshape(b, p, *feats.shape[1:])
            grid[(i, 0)] = self.fusers[i](sequence)
        for j in range(1, self.levels):
            for i in range(self.levels - j):
                below = self.ups[f"{i}_{j}"](grid[(i + 1, j - 1)], grid[(i, 0)].shape[2:])
                same = [grid[(i, k)] for k in range(j)]
                grid[(i, j)] = self.nodes[f"{i}_{j}"](torch.cat([*same, below], dim=1))
        return self.head(grid[(0, self.levels - 1)])


class UNet3D(nn.Module):
    """Plain 3D U-Net (seed 000): CT, and the single-phase (portal) MR baseline.

    ``forward(x)`` takes ``[B, C, z, y, x]`` and returns logits ``[B, classes, z, y, x]``.
    """

    def __init__(self, config: UNet3DConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or UNet3DConfig()
        w = config.widths
        self.levels = len(w)
        self.encoders = nn.ModuleList(
            [ConvBlock(config.in_channels if i == 0 else w[i - 1], w[i]) for i in range(self.levels)]
        )
        self.ups = nn.ModuleList([Up(w[i + 1], w[i]) for i in range(self.levels - 1)])
        self.decoders = nn.ModuleList([ConvBlock(2 * w[i], w[i]) for i in range(self.levels - 1)])
        self.head = nn.Conv3d(w[0], config.classes, 1)

    @property
    def size_divisor(self) -> int:
        return 2 ** (self.levels - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected [B, {self.config.in_channels}, z, y, x], got {tuple(x.shape)}")
        skips = []
        feats = x
        for i in range(self.levels):
            if i > 0:
                feats = F.max_pool3d(feats, 2)
            feats = self.encoders[i](feats)
            skips.append(feats)
        for i in reversed(range(self.levels - 1)):
            feats = self.ups[i](feats, skips[i].shape[2:])
            feats = self.decoders[i](torch.cat([skips[i], feats], dim=1))
        return self.head(feats)


# --------------------------------------------------------------------------- construction from manifests

#: Model kinds a manifest may name, with their config and network classes.
MODEL_KINDS: Mapping[str, tuple[type, type[nn.Module]]] = {
    "fused-unet-4d": (FusedUNet4DConfig, FusedUNet4D),
    "unet-3d": (UNet3DConfig, UNet3D),
}


def config_to_json(config: FusedUNet4DConfig | UNet3DConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def build_model(kind: str, architecture: Mapping[str, Any]) -> nn.Module:
    """The untrained network a manifest describes (*kind* and its architecture kwargs)."""
    try:
        config_cls, model_cls = MODEL_KINDS[kind]
    except KeyError:
        raise ModelConfigError(f"unknown model kind {kind!r} (known: {', '.join(MODEL_KINDS)})") from None
    known = set(config_cls.__dataclass_fields__)
    unknown = set(architecture) - known
    if unknown:
        raise ModelConfigError(f"architecture of {kind!r} has unknown fields {sorted(unknown)}")
    try:
        config = config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in architecture.items()})
    except TypeError as exc:
        raise ModelConfigError(f"architecture of {kind!r} is malformed: {exc}") from exc
    return model_cls(config)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "LIVER_CLASSES",
    "ConvLSTM3d",
    "ConvLSTM3dCell",
    "FusedUNet4D",
    "FusedUNet4DConfig",
    "ModelConfigError",
    "UNet3D",
    "UNet3DConfig",
    "build_model",
    "config_to_json",
    "count_parameters",
]
