"""A liver phantom: abdomen stacks with known liver, tumours and lesion kinds, as MR phases or CT.

Each case is an axial stack through the upper abdomen, from the lung bases
above the liver dome to below the tip of the right lobe, built from implicit
shapes in patient millimetres (LPS: +x patient left, +y posterior, +z head):

* body outline with skin, subcutaneous fat and the muscle wall; visceral fat;
  vertebrae (cortex, marrow, discs), spinal canal and paraspinal muscles;
  aorta, inferior vena cava, lung bases and heart above the diaphragm domes;
  kidneys (cortex, medulla, sinus fat), spleen, stomach with an air–fluid
  level, a few bowel loops, gallbladder;
* the liver: smooth union of deformed ellipsoids (right lobe, inferior tip,
  left lobe, caudate) warped by a random low-frequency field, under the
  diaphragm and clear of kidney, IVC and gallbladder; a branching portal
  tree from the hilum and three hepatic-vein trees draining into the IVC;
  cirrhotic livers get a nodular surface, right-lobe atrophy with caudate
  and left-lobe hypertrophy, enhancing fibrous septa, splenomegaly and,
  with the clinical data, ascites;
* 0–5 lesions of the seven :class:`LesionKind` classes, 5–45 mm, ellipsoids
  with low-order surface perturbations, inside the liver and apart, each
  made of components (HCC body and capsule, metastasis rim and necrotic
  core, FNH and scar, haemangioma with centripetal filling …) whose tissue
  properties are drawn from overlapping class distributions.

Images come from tissue physics (:mod:`inference.liver.phantom_tissue`):
dual-input contrast kinetics sampled at each phase time, spoiled-gradient-
echo, T2 and diffusion signal equations, or HU. Partial volume comes from
soft occupancies (each shape's signed distance over one voxel), then a
per-case multiplicative bias field and Rician noise (MR) or correlated
Gaussian noise (CT). Each MR channel is a separate breath-hold: it is
rigidly shifted (mostly along z and y) relative to the portal-venous
reference; ``motion_mm`` records the shifts, and the labels stay on the
reference grid.

Labels: 0 background, 1 liver (with the vessels inside it), 2 tumour;
``lesion_labels`` numbers the lesions from 1. Lesion centres are in mm from
the centre of voxel ``[0, 0, 0]`` along the array axes; diameters are
measured on the label map (longest 3D: largest distance between voxel
centres; axial: the same within one slice). Every random choice comes from
one ``numpy.random.Generator`` seeded by ``seed``. Research use only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from inference.liver.lesion_kinds import LesionKind
from inference.liver.phantom_clinical import cirrhosis_probability, sample_clinical
from inference.liver.phantom_tissue import (
    TISSUES,
    Kinetics,
    MRProtocol,
    Tissue,
    concentration,
    dwi_signal,
    effective_m0,
    t1w_signal,
    t2w_signal,
)

__all__ = [
    "DCE_PHASES", "LIVER_CLASSES", "MR_SEQUENCES", "LesionKind", "LesionTruth", "LiverPhantom",
    "PhantomParameterError", "lesion_measurements", "simulate_liver_ct", "simulate_liver_mr",
]

log = logging.getLogger("pacsnode.liver.phantom")

DCE_PHASES: tuple[str, ...] = ("pre", "arterial", "portal", "delayed")
MR_SEQUENCES: tuple[str, ...] = ("t2", "dwi", "pre", "arterial", "portal", "delayed")
LIVER_CLASSES: tuple[str, ...] = ("background", "liver", "tumour")
#: The MR channel whose grid the labels are on.
REFERENCE_CHANNEL = "portal"
DEFAULT_SHAPE = (48, 128, 128)
DEFAULT_SPACING = (4.0, 3.0, 3.0)
DEFAULT_SNR = 30.0
DEFAULT_MOTION_MM = 5.0

#: Probability of 0, 1, … 5 lesions when ``n_lesions`` is not given.
_LESION_COUNT_P = (0.15, 0.3, 0.2, 0.15, 0.1, 0.1)
#: Prevalence of the leading lesion kind (roughly seed 003's case mix).
_KIND_P = (0.15, 0.16, 0.1, 0.1, 0.2, 0.18, 0.11)
#: Longest diameter range (mm) per kind, sampled log-uniformly (overlapping on purpose).
_DIAMETER_MM = {
    LesionKind.CYST: (5.0, 35.0), LesionKind.HEMANGIOMA: (8.0, 45.0), LesionKind.FNH: (12.0, 45.0),
    LesionKind.OTHER_BENIGN: (5.0, 22.0), LesionKind.HCC: (10.0, 45.0), LesionKind.METASTASIS: (7.0, 40.0),
    LesionKind.OTHER_MALIGNANT: (18.0, 45.0),
}
#: Surface perturbation amplitude range per kind (fraction of the radius).
_ROUGHNESS = {
    LesionKind.CYST: (0.0, 0.05), LesionKind.HEMANGIOMA: (0.05, 0.15), LesionKind.FNH: (0.04, 0.1),
    LesionKind.OTHER_BENIGN: (0.0, 0.06), LesionKind.HCC: (0.02, 0.09), LesionKind.METASTASIS: (0.05, 0.16),
    LesionKind.OTHER_MALIGNANT: (0.1, 0.2),
}


class PhantomParameterError(ValueError):
    """A simulator parameter (shape, spacing, channels, lesions) that cannot be honoured."""


@dataclass(frozen=True)
class LesionTruth:
    """One simulated lesion, measured on the label map."""

    #: 1-based; the value of this lesion's voxels in ``lesion_labels``.
    index: int
    kind: LesionKind
    #: Centroid in mm from the centre of voxel [0, 0, 0] along the array axes (z, y, x).
    centre_zyx_mm: tuple[float, float, float]
    volume_ml: float
    #: Largest distance between two voxel centres of the lesion (mm).
    longest_diameter_mm: float
    #: The same within one axial slice, the slice where it is largest (mm; RECIST-like).
    longest_axial_diameter_mm: float = 0.0
    #: Designed (continuous) longest diameter before voxelisation and clipping by the liver (mm).
    design_diameter_mm: float = 0.0


@dataclass
class LiverPhantom:
    """A simulated case: images, labels on the reference grid, lesion truth and clinical data."""

    images: np.ndarray
    channels: tuple[str, ...]
    labels: np.ndarray
    lesion_labels: np.ndarray
    lesions: tuple[LesionTruth, ...]
    spacing: tuple[float, float, float]
    modality: str
    motion_mm: np.ndarray
    clinical: dict = field(default_factory=dict)
    seed: int = 0
    #: Time of each channel after injection (s); NaN for T2 and DWI.
    channel_times_s: tuple[float, ...] = ()

    def channel_index(self, name: str) -> int:
        """Where channel *name* is in :attr:`images`. ``"ct"`` (a single-series CT model's input) is
        the portal-venous image of a multi-phase CT phantom."""
        if self.modality == "CT" and name not in self.channels:
            name = _contrast_phase(name)
        try:
            return self.channels.index(name)
        except ValueError:
            raise KeyError(f"channel {name!r} not simulated; this phantom has {self.channels}") from None

    def channel(self, name: str) -> np.ndarray:
        """The image of one channel, e.g. ``phantom.channel("arterial")``."""
        return self.images[self.channel_index(name)]

    @property
    def reference_channel(self) -> str:
        return REFERENCE_CHANNEL if REFERENCE_CHANNEL in self.channels else self.channels[0]


# --------------------------------------------------------------------------- grid and shapes


Region = tuple[slice, slice, slice]


class _Grid:
    """Voxel centres in patient mm, centred on the field of view."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
        self.shape = shape
        self.spacing = spacing
        self.axes = tuple(((np.arange(n) - (n - 1) / 2.0) * d).astype(np.float32) for n, d in zip(shape, spacing))
        #: Width of the partial-volume transition (mm).
        self.blur = float(np.mean(spacing))
        self.full: Region = (slice(0, shape[0]), slice(0, shape[1]), slice(0, shape[2]))

    @property
    def extent_mm(self) -> np.ndarray:
        return np.array(self.shape) * np.array(self.spacing)

    def region(self, lo: Sequence[float], hi: Sequence[float]) -> Region | None:
        """Index slices of the voxels whose centres lie in the box [lo, hi] (z, y, x mm); None if empty."""
        slices = []
        for axis, n, d, a, b in zip(self.axes, self.shape, self.spacing, lo, hi):
            start = int(np.clip(math.floor((a - axis[0]) / d), 0, n))
            stop = int(np.clip(math.ceil((b - axis[0]) / d) + 1, 0, n))
            if stop <= start:
                return None
            slices.append(slice(start, stop))
        return tuple(slices)  # type: ignore[return-value]

    def box(self, centre: Sequence[float], half: Sequence[float] | float) -> Region | None:
        half_arr = np.broadcast_to(np.asarray(half, dtype=float), (3,)) + 2 * np.array(self.spacing)
        return self.region(np.asarray(centre) - half_arr, np.asarray(centre) + half_arr)

    def coords(self, region: Region) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable z (n,1,1), y (1,n,1), x (1,1,n) mm coordinates of a region."""
        z, y, x = (axis[s] for axis, s in zip(self.axes, region))
        return z[:, None, None], y[None, :, None], x[None, None, :]

    def occupancy(self, sdf: np.ndarray) -> np.ndarray:
        """Fraction of each voxel inside a shape from its signed distance (mm, negative inside)."""
        return np.clip(0.5 - sdf / self.blur, 0.0, 1.0).astype(np.float32)


def _ellipsoid_sdf(z: np.ndarray, y: np.ndarray, x: np.ndarray, centre: Sequence[float],
                   radii: Sequence[float], angle: float = 0.0) -> np.ndarray:
    """Approximate signed distance (mm) to an ellipsoid with radii (z, y, x), rotated by ``angle`` about z."""
    dz, dy, dx = z - centre[0], y - centre[1], x - centre[2]
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    qz, qy, qx = dz / radii[0], dy / radii[1], dx / radii[2]
    r = np.sqrt(qz * qz + qy * qy + qx * qx)
    grad = np.sqrt((qz / radii[0]) ** 2 + (qy / radii[1]) ** 2 + (qx / radii[2]) ** 2)
    return ((r - 1.0) * r / np.maximum(grad, 1e-6)).astype(np.float32)


def _ellipse_sdf(y: np.ndarray, x: np.ndarray, centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """Approximate signed distance (mm) to an axis-aligned ellipse in the axial plane (y, x radii)."""
    qy, qx = (y - centre[0]) / radii[0], (x - centre[1]) / radii[1]
    r = np.sqrt(qy * qy + qx * qx)
    grad = np.sqrt((qy / radii[0]) ** 2 + (qx / radii[1]) ** 2)
    return ((r - 1.0) * r / np.maximum(grad, 1e-6)).astype(np.float32)


def _smooth_union(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum of two signed distances (blends the shapes over ~k mm)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return (b * (1 - h) + a * h - k * h * (1 - h)).astype(np.float32)


def _interp_axis(array: np.ndarray, positions: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``array`` along ``axis`` at fractional indices (clamped at the ends)."""
    n = array.shape[axis]
    pos = np.clip(positions, 0.0, n - 1.0)
    low = np.minimum(np.floor(pos).astype(np.int64), max(n - 2, 0))
    frac = (pos - low).astype(np.float32)
    high = np.minimum(low + 1, n - 1)
    shape = [1] * array.ndim
    shape[axis] = -1
    frac = frac.reshape(shape)
    return np.take(array, low, axis=axis) * (1 - frac) + np.take(array, high, axis=axis) * frac


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], spacing: Sequence[float],
                  cell_mm: float) -> np.ndarray:
    """Zero-mean, unit-variance random field varying over ~``cell_mm`` (coarse lattice, linearly upsampled)."""
    coarse_shape = [max(2, int(math.ceil(n * d / cell_mm)) + 1) for n, d in zip(shape, spacing)]
    field_ = rng.standard_normal(coarse_shape).astype(np.float32)
    for axis, n in enumerate(shape):
        field_ = _interp_axis(field_, np.linspace(0.0, coarse_shape[axis] - 1.0, n), axis)
    return ((field_ - field_.mean()) / max(float(field_.std()), 1e-6)).astype(np.float32)


def _shift(image: np.ndarray, shift_voxels: Sequence[float]) -> np.ndarray:
    """``out[i] = image[i − shift]`` with linear interpolation and edge values repeated (rigid translation)."""
    out = image
    for axis, s in enumerate(shift_voxels):
        if abs(s) > 1e-3:
            out = _interp_axis(out, np.arange(image.shape[axis], dtype=np.float32) - s, axis)
    return np.ascontiguousarray(out, dtype=np.float32)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _unit(v: Sequence[float]) -> np.ndarray:
    a = np.asarray(v, dtype=float)
    return a / np.linalg.norm(a)


# --------------------------------------------------------------------------- layers


@dataclass
class _Layer:
    """One tissue painted over the image in a region, with its voxel occupancy (painter's order)."""

    region: Region
    occupancy: np.ndarray
    tissue: Tissue
    #: Per-voxel modulations (scalars or arrays broadcastable to the region).
    m0_scale: np.ndarray | float = 1.0
    enhancement: np.ndarray | float = 1.0
    delay_s: np.ndarray | float = 0.0
    adc_scale: np.ndarray | float = 1.0
    hu_offset: np.ndarray | float = 0.0


@dataclass
class _Anatomy:
    """Everything built for one case before rendering."""

    layers: list[_Layer]
    liver_occupancy: np.ndarray
    lesion_occupancies: list[tuple[Region, np.ndarray]]
    lesion_kinds: list[LesionKind]
    lesion_design_mm: list[float]
    tissues: dict[str, Tissue]


class _AbdomenBuilder:
    """Builds the layers of one case in painter's order (later layers cover earlier ones)."""

    def __init__(self, grid: _Grid, rng: np.random.Generator, cirrhosis: bool, ascites: bool) -> None:
        self.grid = grid
        self.rng = rng
        self.cirrhosis = cirrhosis
        self.ascites = ascites
        self.layers: list[_Layer] = []
        self.tissues = {name: tissue.varied(rng) for name, tissue in TISSUES.items()}
        if cirrhosis:
            liver = self.tissues["liver"]
            self.tissues["liver"] = replace(liver, flow_per_s=liver.flow_per_s * 0.75, arterial_fraction=0.4,
                                            t1_ms=liver.t1_ms * 1.12, adc=liver.adc * 0.9)

    def add(self, region: Region | None, occupancy: np.ndarray, tissue: str | Tissue, **kw: object) -> None:
        if region is None:
            return
        occupancy = np.asarray(occupancy, dtype=np.float32)
        inside = occupancy > 1e-3
        if not inside.any():
            return
        # Paint only the bounding box of the shape: most layers are small next to the field of view.
        crop: list[slice] = []
        for axis in range(3):
            if occupancy.shape[axis] == 1:
                crop.append(slice(None))
                continue
            hits = np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != axis)))
            crop.append(slice(int(hits[0]), int(hits[-1]) + 1))
        region = tuple(slice(r.start + (c.start or 0), r.start + (c.stop if c.stop is not None else r.stop - r.start))
                       for r, c in zip(region, crop))  # type: ignore[assignment]

        def cropped(value: object) -> object:
            if isinstance(value, np.ndarray) and value.ndim == 3:
                return value[tuple(c if n > 1 else slice(None) for c, n in zip(crop, value.shape))]
            return value

        t = self.tissues[tissue] if isinstance(tissue, str) else tissue
        self.layers.append(_Layer(region, cropped(occupancy), t,  # type: ignore[arg-type]
                                  **{k: cropped(v) for k, v in kw.items()}))

    # ----------------------------------------------------------------- body

    def build(self, kinds: Sequence[LesionKind]) -> _Anatomy:
        g, rng = self.grid, self.rng
        full = g.full
        z, y, x = g.coords(full)
        fov_z = g.extent_mm[0]

        # Body outline and walls (axial ellipses, the same on every slice).
        a, b, yc = rng.uniform(148, 175), rng.uniform(105, 128), rng.uniform(0, 10)
        fat_t, muscle_t = rng.uniform(10, 32), rng.uniform(7, 13)
        body = _ellipse_sdf(y, x, (yc, 0.0), (b, a))
        self.add(full, g.occupancy(body), "skin")
        self.add(full, g.occupancy(body + 2.5), "fat")
        self.add(full, g.occupancy(_ellipse_sdf(y, x, (yc, 0.0), (b - fat_t, a - fat_t))), "muscle")
        cav_r = (b - fat_t - muscle_t, a - fat_t - muscle_t)
        cavity_sdf = _ellipse_sdf(y, x, (yc, 0.0), cav_r)
        cavity = g.occupancy(cavity_sdf)
        self.cavity_sdf = cavity_sdf[0]  # (y, x)
        self.add(full, cavity, "fat")

        # Spine behind the cavity centre: paraspinal muscles, vertebral body with discs, canal, posterior arch.
        yv = yc + b - fat_t - rng.uniform(62, 75)
        self.add(full, g.occupancy(np.minimum(_ellipse_sdf(y, x, (yv + 42, -38), (26, 24)),
                                              _ellipse_sdf(y, x, (yv + 42, 38), (26, 24)))), "muscle")
        vb_r = (rng.uniform(15, 19), rng.uniform(20, 25))
        vertebra = _ellipse_sdf(y, x, (yv, 0.0), vb_r)
        self.add(full, g.occupancy(vertebra), "bone")
        self.add(full, g.occupancy(vertebra + 2.5), "marrow")
        period, phase = rng.uniform(30, 36), rng.uniform(0, 36)
        disc_z = g.occupancy(np.abs(np.mod(z - phase, period) - period / 2) - 4.0)
        self.add(full, g.occupancy(vertebra) * disc_z, "disc")
        self.add(full, g.occupancy(_ellipse_sdf(y, x, (yv + vb_r[0] + 18, 0.0), (12, 13))), "bone")
        self.add(full, g.occupancy(_ellipse_sdf(y, x, (yv + vb_r[0] + 15, 0.0), (7, 8))), "bile")  # CSF
        self.add(full, g.occupancy(_ellipse_sdf(y, x, (yv + vb_r[0] + 38, 0.0), (14, 6))), "bone")

        # Liver height and dome position: the stack starts in the lung bases and ends below the tip.
        height = min(rng.uniform(125, 165), max(fov_z - 45.0, 60.0))
        z_dome = fov_z / 2 - rng.uniform(12, 28)
        self.liver_params = {"z_dome": z_dome, "height": height}

        # Diaphragm domes: z_dia(x, y); lungs above them inside the cavity, heart on the central tendon.
        curvature = rng.uniform(100, 140)
        xr, xl = -a * rng.uniform(0.35, 0.45), a * rng.uniform(0.35, 0.45)
        left_top = z_dome - rng.uniform(8, 22)
        z_dia = np.maximum(z_dome + 3 - ((x - xr) ** 2 + (y - yc - 10) ** 2) / (2 * curvature),
                           left_top + 3 - ((x - xl) ** 2 + (y - yc - 10) ** 2) / (2 * curvature)).astype(np.float32)
        self.z_dia = z_dia[0]  # (y, x)
        above = g.occupancy(z_dia - z)
        self.add(full, cavity * above, "lung")
        heart_c = (z_dome + rng.uniform(30, 45), yc - 0.3 * b, rng.uniform(10, 30))
        heart_region = g.box(heart_c, (60, 60, 70))
        if heart_region is not None:
            hz, hy, hx = g.coords(heart_region)
            self.add(heart_region, g.occupancy(_ellipsoid_sdf(hz, hy, hx, heart_c, (55, 55, 65), 0.5)), "myocardium")
            self.add(heart_region, g.occupancy(_ellipsoid_sdf(hz, hy, hx, heart_c, (42, 42, 50), 0.5)), "heart_blood")
        below = 1.0 - above
        self.below = below

        # Ascites in the perihepatic and perisplenic spaces (the organs cover it where they are).
        if self.ascites:
            self.add(full, cavity * below * g.occupancy(-cavity_sdf - rng.uniform(8, 25)), "ascites")

        # Bowel loops (anterior, lower slices) and the stomach (left upper quadrant, air-fluid level).
        for _ in range(int(rng.integers(3, 7))):
            c = (rng.uniform(-fov_z / 2, z_dome - height * 0.6), yc - rng.uniform(0.1, 0.6) * b,
                 rng.uniform(-0.5, 0.7) * a)
            r = rng.uniform(10, 18)
            region = g.box(c, r)
            if region is not None:
                bz, by, bx = g.coords(region)
                sdf = _ellipsoid_sdf(bz, by, bx, c, (r * 1.4, r, r))
                self.add(region, g.occupancy(sdf), "stomach_wall")
                self.add(region, g.occupancy(sdf + 3), "air" if rng.random() < 0.4 else "bowel_content")
        st_c = (left_top - rng.uniform(35, 55), yc - b * rng.uniform(0.15, 0.35), a * rng.uniform(0.22, 0.38))
        st_r = (rng.uniform(40, 55), rng.uniform(28, 38), rng.uniform(32, 45))
        region = g.box(st_c, st_r)
        if region is not None:
            sz, sy, sx = g.coords(region)
            clip = sz - self.z_dia[region[1], region[2]][None] + 4.0
            wall = np.maximum(_ellipsoid_sdf(sz, sy, sx, st_c, st_r, 0.4), clip)
            self.add(region, g.occupancy(wall), "stomach_wall")
            inner = g.occupancy(np.maximum(_ellipsoid_sdf(sz, sy, sx, st_c, [r - 4 for r in st_r], 0.4), clip + 4))
            level = st_c[1] - st_r[1] * rng.uniform(0.0, 0.5)
            gas = g.occupancy(sy - level)  # anterior (smaller y) of the level is non-dependent: gas
            self.add(region, inner * gas, "air")
            self.add(region, inner * (1 - gas), "bowel_content")

        # Kidneys (right lower than left) with medulla and sinus fat.
        self.kidney_sdf: dict[str, tuple[Region, np.ndarray]] = {}
        for side, sign in (("right", -1.0), ("left", 1.0)):
            kz = z_dome - height * 0.62 - rng.uniform(35, 55) + (15 if side == "left" else 0)
            kc = (kz, yv + rng.uniform(-2, 12), sign * rng.uniform(55, 70))
            kr = (rng.uniform(48, 58), rng.uniform(24, 29), rng.uniform(22, 27))
            angle = sign * rng.uniform(0.2, 0.5)
            region = g.box(kc, max(kr))
            if region is None:
                continue
            kz_, ky_, kx_ = g.coords(region)
            sdf = _ellipsoid_sdf(kz_, ky_, kx_, kc, kr, angle)
            self.kidney_sdf[side] = (region, sdf)
            self.add(region, g.occupancy(sdf), "kidney_cortex")
            self.add(region, g.occupancy(_ellipsoid_sdf(kz_, ky_, kx_, kc, [r * 0.68 for r in kr], angle)),
                     "kidney_medulla")
            sinus_c = (kc[0], kc[1] - 6, kc[2] - sign * 12)
            self.add(region, g.occupancy(_ellipsoid_sdf(kz_, ky_, kx_, sinus_c, (kr[0] * 0.45, 8, 9), angle)), "fat")

        # Spleen (left upper quadrant, under the left dome), enlarged in cirrhosis.
        grow = rng.uniform(1.2, 1.45) if self.cirrhosis else 1.0
        sp_c = (left_top - rng.uniform(40, 60), yc + b * rng.uniform(0.2, 0.4), a * rng.uniform(0.48, 0.6))
        sp_r = (rng.uniform(45, 60) * grow, rng.uniform(45, 58) * grow, rng.uniform(20, 28))
        region = g.box(sp_c, max(sp_r))
        if region is not None:
            pz, py, px = g.coords(region)
            sdf = np.maximum(_ellipsoid_sdf(pz, py, px, sp_c, sp_r, -0.6), self.cavity_sdf[region[1], region[2]][None] + 2)
            sdf = np.maximum(sdf, pz - self.z_dia[region[1], region[2]][None] + 3)
            self.add(region, g.occupancy(sdf), "spleen")

        # Great vessels: aorta (anterior-left of the spine) and IVC (right), full length.
        self.aorta_c = (yv - vb_r[0] - rng.uniform(10, 16), rng.uniform(6, 18))
        self.add(full, g.occupancy(_ellipse_sdf(y, x, self.aorta_c, (rng.uniform(9, 13),) * 2)), "aorta")
        self.ivc_c = (yv - vb_r[0] - rng.uniform(8, 14), -rng.uniform(20, 30))
        self.ivc_r = (rng.uniform(7, 10), rng.uniform(10, 14))
        ivc_sdf = _ellipse_sdf(y, x, self.ivc_c, self.ivc_r)
        self.ivc_sdf = ivc_sdf[0]  # (y, x)
        self.add(full, g.occupancy(ivc_sdf), "ivc")

        liver = self._liver(a, b, yc, z_dome, height, xr)
        self._lesions(kinds, liver)
        return _Anatomy(self.layers, self.liver_occ, self.lesion_occ, self.lesion_kinds, self.lesion_design,
                        self.tissues)

    # ----------------------------------------------------------------- liver

    def _liver(self, a: float, b: float, yc: float, z_dome: float, height: float, xr: float) -> Region:
        g, rng = self.grid, self.rng
        cirr = self.cirrhosis
        right_scale = rng.uniform(0.8, 0.9) if cirr else 1.0
        left_scale = rng.uniform(1.1, 1.25) if cirr else 1.0
        y_r = yc + rng.uniform(-5, 12)
        r_right = (height * rng.uniform(0.4, 0.46), b * rng.uniform(0.6, 0.72) * right_scale,
                   a * rng.uniform(0.34, 0.42) * right_scale)
        c_right = (z_dome - r_right[0] * 0.95, y_r, xr + rng.uniform(-8, 8))
        r_tip = (height * rng.uniform(0.25, 0.32), r_right[1] * rng.uniform(0.55, 0.7), r_right[2] * rng.uniform(0.55, 0.75))
        c_tip = (z_dome - height + r_tip[0], y_r - rng.uniform(0, 15), c_right[2] - rng.uniform(0, 15))
        r_left = (height * rng.uniform(0.22, 0.3) * left_scale, b * rng.uniform(0.25, 0.34) * left_scale,
                  a * rng.uniform(0.3, 0.42) * left_scale)
        c_left = (z_dome - rng.uniform(28, 45), y_r - rng.uniform(30, 48), c_right[2] + rng.uniform(65, 95))
        r_caud = tuple(v * (rng.uniform(1.3, 1.6) if cirr else 1.0) for v in (rng.uniform(22, 32), 16.0, 18.0))
        c_caud = (z_dome - height * 0.4, self.ivc_c[0] - 8, self.ivc_c[1] + 18)
        lo = np.min([np.subtract(c, r) for c, r in ((c_right, r_right), (c_tip, r_tip), (c_left, r_left))], axis=0)
        hi = np.max([np.add(c, r) for c, r in ((c_right, r_right), (c_tip, r_tip), (c_left, r_left))], axis=0)
        region = g.region(lo - 20, hi + 20)
        if region is None:
            raise PhantomParameterError("the field of view does not contain the liver; use a larger shape or spacing")
        z, y, x = g.coords(region)
        sub_shape = tuple(s.stop - s.start for s in region)
        # Low-frequency warp of the coordinates: every liver has its own shape.
        warp = [_smooth_noise(rng, sub_shape, g.spacing, 70.0) * rng.uniform(4, 9) for _ in range(3)]
        zw, yw, xw = z + warp[0], y + warp[1], x + warp[2]
        sdf = _ellipsoid_sdf(zw, yw, xw, c_right, r_right, rng.uniform(-0.2, 0.2))
        sdf = _smooth_union(sdf, _ellipsoid_sdf(zw, yw, xw, c_tip, r_tip, rng.uniform(-0.3, 0.3)), 20.0)
        sdf = _smooth_union(sdf, _ellipsoid_sdf(zw, yw, xw, c_left, r_left, rng.uniform(-0.5, -0.1)), 18.0)
        sdf = _smooth_union(sdf, _ellipsoid_sdf(zw, yw, xw, c_caud, r_caud), 10.0)
        if cirr:  # nodular surface
            sdf = sdf + _smooth_noise(rng, sub_shape, g.spacing, 9.0) * rng.uniform(1.5, 3.0)
        # Under the diaphragm, inside the cavity, clear of the right kidney and the IVC.
        sdf = np.maximum(sdf, z - self.z_dia[region[1], region[2]][None] + 2.0)
        sdf = np.maximum(sdf, self.cavity_sdf[region[1], region[2]][None] + 1.0)
        if "right" in self.kidney_sdf:
            k_region, k_sdf = self.kidney_sdf["right"]
            kidney = np.full(sub_shape, 1e3, dtype=np.float32)
            _paste_min(kidney, region, k_sdf, k_region)
            sdf = np.maximum(sdf, -kidney + 4.0)
        sdf = np.maximum(sdf, -self.ivc_sdf[region[1], region[2]][None] + 1.5)
        # Gallbladder in the fossa between the lobes (absent after cholecystectomy).
        gb = None
        if rng.random() < 0.85:
            gb_c = (z_dome - height * rng.uniform(0.55, 0.7), y_r - rng.uniform(25, 45), c_right[2] + rng.uniform(30, 45))
            gb = _ellipsoid_sdf(z, y, x, gb_c, (rng.uniform(30, 42), rng.uniform(12, 18), rng.uniform(12, 18)),
                                rng.uniform(0.3, 0.9))
            sdf = np.maximum(sdf, -gb + 1.0)
        liver_occ = g.occupancy(sdf)
        self.liver_sdf, self.liver_region = sdf, region
        self.liver_occ = np.zeros(g.shape, dtype=np.float32)
        self.liver_occ[region] = liver_occ

        # Parenchyma with texture; cirrhosis: coarse heterogeneity and enhancing fibrous septa.
        texture = _smooth_noise(rng, sub_shape, g.spacing, 14.0)
        amplitude = 0.07 if self.cirrhosis else 0.025
        self.add(region, liver_occ, "liver", m0_scale=1 + amplitude * texture,
                 enhancement=1 + 1.5 * amplitude * _smooth_noise(rng, sub_shape, g.spacing, 20.0),
                 hu_offset=4.0 * texture)
        if self.cirrhosis:
            septa = np.clip(1.0 - np.abs(_smooth_noise(rng, sub_shape, g.spacing, 10.0)) / 0.18, 0.0, 1.0) ** 2
            self.add(region, liver_occ * septa * rng.uniform(0.5, 0.8), "fibrosis")
        if gb is not None:
            self.add(region, g.occupancy(gb), "bile")
        self._vessels(region, liver_occ, c_right, c_left, z_dome, height)
        return region

    def _vessels(self, region: Region, liver_occ: np.ndarray, c_right: tuple, c_left: tuple,
                 z_dome: float, height: float) -> None:
        """Portal tree from the hilum and three hepatic-vein trees to the IVC, clipped to the liver."""
        rng = self.rng
        sdf = self.liver_sdf

        def inside(point: np.ndarray) -> bool:
            idx = [int(round((p - axis[0]) / d)) - s.start
                   for p, axis, d, s in zip(point, self.grid.axes, self.grid.spacing, region)]
            if any(i < 0 or i >= n for i, n in zip(idx, sdf.shape)):
                return False
            return bool(sdf[tuple(idx)] < -1.5)

        hilum = np.array([z_dome - height * 0.5, c_right[1] - 5, c_right[2] + rng.uniform(30, 45)])
        trunk_start = hilum + np.array([-45.0, 10.0, rng.uniform(25, 40)])
        portal = [(trunk_start, hilum, 6.5, 6.0)]
        _grow(rng, hilum, _unit([0.15, 0.1, -1.0]), rng.uniform(30, 40), 5.0, 4, portal)
        _grow(rng, hilum, _unit([0.25, -0.6, 1.0]), rng.uniform(30, 40), 4.5, 4, portal)
        confluence = np.array([z_dome - 18.0, self.ivc_c[0], self.ivc_c[1]])
        hepatic: list = []
        for direction, length, radius in (([-0.5, -0.1, -1.0], 50, 5.0), ([-0.5, -1.0, -0.4], 45, 4.5),
                                          ([-0.3, -1.0, 0.7], 40, 4.0)):
            _grow(rng, confluence, _unit(direction), length * rng.uniform(0.85, 1.15), radius, 3, hepatic)
        for segments, tissue, extrahepatic in ((portal, "portal_vein", 1), (hepatic, "hepatic_vein", 0)):
            dist = np.full(liver_occ.shape, 1e3, dtype=np.float32)
            outside = np.full(liver_occ.shape, 1e3, dtype=np.float32)
            for k, (p0, p1, r0, r1) in enumerate(segments):
                if k >= extrahepatic and not (inside(p0) or inside(p1) or inside((p0 + p1) / 2)):
                    continue
                target = outside if k < extrahepatic else dist
                _capsule_into(target, region, self.grid, p0, p1, r0, r1)
            self.add(region, self.grid.occupancy(dist) * np.clip(liver_occ * 1.2, 0, 1), tissue)
            if extrahepatic:
                self.add(region, self.grid.occupancy(outside), tissue)

    # ----------------------------------------------------------------- lesions

    def _lesions(self, kinds: Sequence[LesionKind], region: Region) -> None:
        import SimpleITK as sitk

        g, rng = self.grid, self.rng
        self.lesion_occ: list[tuple[Region, np.ndarray]] = []
        self.lesion_kinds: list[LesionKind] = []
        self.lesion_design: list[float] = []
        if not kinds:
            return
        mask = (self.liver_occ[region] > 0.5).astype(np.uint8)
        image = sitk.GetImageFromArray(mask)
        image.SetSpacing(tuple(float(s) for s in g.spacing[::-1]))
        depth = -sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
            image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True))
        placed: list[tuple[np.ndarray, float]] = []
        offsets = np.array([s.start for s in region])
        for kind in kinds:
            lo, hi = _DIAMETER_MM[kind]
            diameter = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
            for _attempt in range(6):
                radius = diameter / 2
                rough = rng.uniform(*_ROUGHNESS[kind])
                bound = radius * (1 + 2 * rough)
                candidates = np.argwhere(depth >= max(0.7 * bound, 2.0))
                if len(candidates):
                    picks = candidates[rng.choice(len(candidates), size=min(40, len(candidates)), replace=False)]
                    for pick in picks:
                        centre = np.array([g.axes[i][offsets[i] + pick[i]] for i in range(3)], dtype=float)
                        centre += rng.uniform(-0.5, 0.5, 3) * np.array(g.spacing)
                        if all(np.linalg.norm(centre - c) > bound + r + 3.0 for c, r in placed):
                            break
                    else:
                        pick = None
                    if pick is not None:
                        placed.append((centre, bound))
                        self._lesion(kind, centre, radius, rough)
                        self.lesion_design.append(diameter)
                        break
                diameter = max(5.0, diameter * 0.75)
            else:
                log.debug("lesion of kind %s did not fit in the liver; dropped", kind.name,
                          extra={"kind": kind.name})

    def _lesion(self, kind: LesionKind, centre: np.ndarray, radius: float, rough: float) -> None:
        g, rng = self.grid, self.rng
        axes = radius * np.array([1.0, rng.uniform(0.72, 1.0), rng.uniform(0.72, 1.0)])
        rng.shuffle(axes)
        region = g.box(centre, radius * (1 + 2 * rough) + 2)
        assert region is not None
        z, y, x = g.coords(region)
        d = np.stack(np.broadcast_arrays(z - centre[0], y - centre[1], x - centre[2]), axis=-1)
        q = (d @ _random_rotation(rng).T) / axes
        r = np.linalg.norm(q, axis=-1)
        u = q / np.maximum(r, 1e-6)[..., None]
        modulation = np.ones_like(r)
        for _ in range(3):
            v = _unit(rng.standard_normal(3))
            c = u @ v
            legendre = (3 * c * c - 1) / 2 if rng.random() < 0.5 else (5 * c ** 3 - 3 * c) / 2
            modulation += rough * rng.uniform(0.5, 1.0) * legendre
        rho = (r / modulation).astype(np.float32)
        grad = np.linalg.norm(q / axes, axis=-1)
        sdf = ((rho - 1.0) * r / np.maximum(grad, 1e-6)).astype(np.float32)
        occ = g.occupancy(sdf) * self.liver_occ[region]
        for other_region, other in self.lesion_occ:  # keep lesions apart even where bounds were loose
            overlap = _crop(other, other_region, region)
            if overlap is not None:
                occ = occ * (overlap < 0.5)
        self.lesion_occ.append((region, occ))
        self.lesion_kinds.append(kind)
        for tissue, weight, extras in _lesion_components(kind, rng, rho, sdf, u, radius, self.grid, region):
            self.add(region, occ * weight, tissue, **extras)


def _grow(rng: np.random.Generator, start: np.ndarray, direction: np.ndarray, length: float, radius: float,
          generations: int, out: list) -> None:
    """Append a vessel segment and, recursively, two thinner, shorter daughter branches."""
    end = start + direction * length
    out.append((start, end, radius, radius * 0.92))
    if generations == 0 or radius < 1.3:
        return
    axis = _unit(np.cross(direction, rng.standard_normal(3)))
    for sign in (1.0, -1.0):
        angle = sign * rng.uniform(0.4, 0.8)
        twist = _unit(axis + rng.normal(0, 0.3, 3))
        child = _unit(direction * math.cos(angle) + np.cross(twist, direction) * math.sin(angle))
        _grow(rng, end, child, length * rng.uniform(0.65, 0.85), radius * rng.uniform(0.7, 0.82),
              generations - 1, out)


def _capsule_into(target: np.ndarray, region: Region, grid: _Grid, p0: np.ndarray, p1: np.ndarray,
                  r0: float, r1: float) -> None:
    """Min-accumulate the signed distance of a tapered tube from p0 to p1 into ``target`` (over ``region``)."""
    lo = np.minimum(p0, p1) - max(r0, r1)
    hi = np.maximum(p0, p1) + max(r0, r1)
    box = grid.region(lo, hi)
    if box is None:
        return
    inner = tuple(slice(max(b.start, r.start), min(b.stop, r.stop)) for b, r in zip(box, region))
    if any(s.stop <= s.start for s in inner):
        return
    z, y, x = grid.coords(inner)
    seg = p1 - p0
    length2 = float(seg @ seg) or 1e-6
    pz, py, px = z - p0[0], y - p0[1], x - p0[2]
    t = np.clip((pz * seg[0] + py * seg[1] + px * seg[2]) / length2, 0.0, 1.0)
    dist = np.sqrt((pz - t * seg[0]) ** 2 + (py - t * seg[1]) ** 2 + (px - t * seg[2]) ** 2) - (r0 + t * (r1 - r0))
    local = tuple(slice(s.start - r.start, s.stop - r.start) for s, r in zip(inner, region))
    np.minimum(target[local], dist.astype(np.float32), out=target[local])


def _paste_min(target: np.ndarray, target_region: Region, source: np.ndarray, source_region: Region) -> None:
    inner = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(target_region, source_region))
    if any(s.stop <= s.start for s in inner):
        return
    t = tuple(slice(s.start - r.start, s.stop - r.start) for s, r in zip(inner, target_region))
    s_ = tuple(slice(s.start - r.start, s.stop - r.start) for s, r in zip(inner, source_region))
    np.minimum(target[t], source[s_], out=target[t])


def _crop(array: np.ndarray, array_region: Region, region: Region) -> np.ndarray | None:
    """``array`` (defined on ``array_region``) on ``region``, zero outside; None if they do not meet."""
    inner = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(array_region, region))
    if any(s.stop <= s.start for s in inner):
        return None
    out = np.zeros(tuple(s.stop - s.start for s in region), dtype=array.dtype)
    out[tuple(slice(s.start - r.start, s.stop - r.start) for s, r in zip(inner, region))] = \
        array[tuple(slice(s.start - r.start, s.stop - r.start) for s, r in zip(inner, array_region))]
    return out


# --------------------------------------------------------------------------- lesion components


def _lesion_tissue(name: str, rng: np.random.Generator, m0: tuple[float, float], t1: tuple[float, float],
                   t2: tuple[float, float], adc: tuple[float, float], hu: tuple[float, float],
                   flow: tuple[float, float] = (0.0, 0.0), af: tuple[float, float] = (1.0, 1.0),
                   ve: tuple[float, float] = (0.0, 0.0), blood: str | None = None) -> Tissue:
    u = rng.uniform
    return Tissue(name, u(*m0), u(*t1), u(*t2), u(*adc), u(*hu), flow_per_s=u(*flow),
                  arterial_fraction=u(*af), ve=u(*ve), blood=blood)  # type: ignore[arg-type]


def _angular_spots(rng: np.random.Generator, u: np.ndarray, count: int, width: float) -> np.ndarray:
    """1 near ``count`` random directions (angular half-width ~``width`` rad), 0 elsewhere."""
    spots = np.zeros(u.shape[:-1], dtype=np.float32)
    for _ in range(count):
        c = u @ _unit(rng.standard_normal(3))
        spots = np.maximum(spots, np.exp(-(1.0 - c) / (1.0 - math.cos(width))).astype(np.float32))
    return spots


def _lesion_components(kind: LesionKind, rng: np.random.Generator, rho: np.ndarray, sdf: np.ndarray,
                       u: np.ndarray, radius: float, grid: _Grid, region: Region) -> list[tuple[Tissue, object, dict]]:
    """The tissues a lesion is made of, with their weight maps and per-voxel modulations.

    ``rho`` is the normalised radius (1 on the surface), ``sdf`` the signed
    distance to the surface (mm), ``u`` the unit direction from the centre.
    Painted in order, so a component covers the previous ones by its weight.
    """
    shape = rho.shape
    inner_depth = np.clip(1.0 - rho, 0.0, 1.0)
    if kind is LesionKind.CYST:
        cyst = _lesion_tissue("cyst", rng, (0.95, 1.0), (2500, 3600), (600, 1500), (2.5, 3.2), (0, 18))
        return [(cyst, 1.0, {})]
    if kind is LesionKind.HEMANGIOMA:
        pool = _lesion_tissue("hemangioma", rng, (0.82, 0.9), (1200, 1700), (160, 320), (1.5, 2.2), (36, 46),
                              ve=(0.55, 0.85), blood="blood")
        if rng.random() < 0.15:  # flash-filling: homogeneous arterial enhancement
            fill_s = rng.uniform(3, 12)
        else:
            fill_s = rng.uniform(60, 140) * (radius / 12.0) ** 0.5
        nodules = _angular_spots(rng, u, int(rng.integers(4, 9)), rng.uniform(0.25, 0.45))
        delay = fill_s * inner_depth ** 0.7 * (1.0 - 0.8 * nodules)
        if radius > 15 and rng.random() < 0.3:  # central cleft that never fills
            delay = np.where(rho < 0.18, 1e4, delay)
        return [(pool, 1.0, {"delay_s": delay.astype(np.float32)})]
    if kind is LesionKind.FNH:
        body = _lesion_tissue("fnh", rng, (0.7, 0.76), (520, 720), (46, 64), (1.1, 1.45), (54, 66),
                              flow=(0.04, 0.075), af=(0.8, 0.95), ve=(0.24, 0.33))
        parts: list[tuple[Tissue, object, dict]] = [(body, 1.0, {"enhancement": 1 + 0.06 * rng.standard_normal()})]
        if rng.random() < (0.75 if radius > 12 else 0.3):
            scar = _lesion_tissue("fnh_scar", rng, (0.78, 0.85), (1000, 1300), (100, 170), (1.5, 1.9), (40, 50),
                                  flow=(0.002, 0.005), af=(0.6, 0.8), ve=(0.4, 0.55))
            central = np.clip(1.0 - rho / rng.uniform(0.18, 0.3), 0.0, 1.0) ** 0.5
            spokes = _angular_spots(rng, u, int(rng.integers(3, 6)), 0.12) * (rho < 0.75)
            parts.append((scar, np.maximum(central, spokes * 0.8), {}))
        return parts
    if kind is LesionKind.OTHER_BENIGN:
        adenoma_like = rng.random() < 0.25
        nodule = _lesion_tissue("benign_nodule", rng, (0.7, 0.75), (430, 650), (38, 56), (1.0, 1.35), (54, 68),
                                flow=(0.03, 0.045) if adenoma_like else (0.014, 0.028),
                                af=(0.7, 0.9) if adenoma_like else (0.3, 0.65), ve=(0.22, 0.3))
        return [(nodule, 1.0, {"m0_scale": 1 + 0.03 * rng.standard_normal(shape).astype(np.float32) * 0.5})]
    if kind is LesionKind.HCC:
        hypovascular = rng.random() < 0.15
        body = _lesion_tissue("hcc", rng, (0.72, 0.78), (700, 1100), (55, 95), (0.85, 1.25), (40, 55),
                              flow=(0.012, 0.02) if hypovascular else (0.03, 0.07),
                              af=(0.55, 0.75) if hypovascular else (0.8, 1.0), ve=(0.11, 0.22))
        mosaic = 1 + rng.uniform(0.1, 0.3) * _smooth_noise(rng, shape, grid.spacing, max(radius / 2, 4.0))
        parts = [(body, 1.0, {"enhancement": np.clip(mosaic, 0.4, 1.8)})]
        if radius > 14 and rng.random() < 0.45:
            necrosis = _lesion_tissue("necrosis", rng, (0.85, 0.95), (1600, 2200), (140, 300), (1.7, 2.4), (20, 34),
                                      flow=(0.0005, 0.0015), ve=(0.2, 0.35))
            parts.append((necrosis, np.clip((rng.uniform(0.3, 0.5) - rho) / 0.12, 0.0, 1.0), {}))
        if rng.random() < (0.75 if radius > 10 else 0.45):
            capsule = _lesion_tissue("hcc_capsule", rng, (0.75, 0.8), (950, 1150), (50, 70), (1.1, 1.3), (46, 54),
                                     flow=(0.002, 0.004), af=(0.4, 0.6), ve=(0.4, 0.5))
            thickness = rng.uniform(1.2, 2.8)
            parts.append((capsule, np.exp(-((sdf + thickness / 2) / (thickness / 2)) ** 2), {}))
        return parts
    if kind is LesionKind.METASTASIS:
        hypervascular = rng.random() < 0.2
        rim = _lesion_tissue("metastasis", rng, (0.76, 0.82), (900, 1300), (70, 115), (0.75, 1.05), (34, 48),
                             flow=(0.04, 0.07) if hypervascular else (0.007, 0.018), af=(0.85, 1.0),
                             ve=(0.14, 0.22) if hypervascular else (0.15, 0.26))
        core = _lesion_tissue("metastasis_core", rng, (0.83, 0.92), (1200, 1800), (100, 220), (1.0, 1.5), (24, 40),
                              flow=(0.001, 0.004), af=(0.8, 1.0), ve=(0.2, 0.4))
        core_rho = rng.uniform(0.45, 0.8) if radius > 7 else rng.uniform(0.15, 0.4)
        return [(rim, 1.0, {}), (core, np.clip((core_rho - rho) / 0.15 + 0.5, 0.0, 1.0), {})]
    if kind is LesionKind.OTHER_MALIGNANT:
        rim = _lesion_tissue("cholangiocarcinoma_rim", rng, (0.74, 0.8), (900, 1200), (65, 100), (1.0, 1.3), (40, 50),
                             flow=(0.02, 0.04), af=(0.85, 1.0), ve=(0.18, 0.25))
        stroma = _lesion_tissue("cholangiocarcinoma_stroma", rng, (0.76, 0.82), (1000, 1300), (60, 110),
                                (1.0, 1.35), (38, 48), flow=(0.003, 0.008), af=(0.7, 0.9), ve=(0.45, 0.65))
        rim_rho = rng.uniform(0.72, 0.9)
        return [(rim, 1.0, {}), (stroma, np.clip((rim_rho - rho) / 0.1 + 0.5, 0.0, 1.0), {})]
    raise PhantomParameterError(f"unknown lesion kind {kind!r}")


# --------------------------------------------------------------------------- rendering


class _Renderer:
    """Turns layers into channel images (tissue physics at each phase time)."""

    def __init__(self, anatomy: _Anatomy, kinetics: Kinetics, protocol: MRProtocol, shape: tuple[int, int, int],
                 gains: dict[str, float], hu_per_unit: float = 118.0, modality: str = "MR") -> None:
        self.anatomy = anatomy
        self.modality = modality
        self.kinetics = kinetics
        self.protocol = protocol
        self.shape = shape
        self.gains = gains
        self.hu_per_unit = hu_per_unit
        self.blood = kinetics.blood_curves(anatomy.tissues["liver"])
        self._curves: dict[int, np.ndarray] = {}

    def curve(self, tissue: Tissue) -> np.ndarray:
        key = id(tissue)
        if key not in self._curves:
            self._curves[key] = self.kinetics.tissue_curve(tissue, self.blood)
        return self._curves[key]

    def signal(self, layer: _Layer, channel: str) -> np.ndarray | float:
        tissue = layer.tissue
        if self.modality == "CT":
            conc = concentration(self.curve(tissue), self.kinetics.phase_time(_contrast_phase(channel)),
                                 layer.delay_s)
            return tissue.hu + self.hu_per_unit * conc * layer.enhancement + layer.hu_offset
        m0 = effective_m0(tissue, channel, self.protocol) * layer.m0_scale
        gain = self.gains[channel]
        if channel == "t2":
            return gain * t2w_signal(m0, tissue, self.protocol)
        if channel == "dwi":
            return gain * dwi_signal(m0, tissue, tissue.adc * layer.adc_scale, self.protocol)
        conc = concentration(self.curve(tissue), self.kinetics.phase_time(channel), layer.delay_s)
        return gain * t1w_signal(m0, tissue.t1_ms, conc * layer.enhancement, self.protocol)

    def render(self, channel: str) -> np.ndarray:
        background = -1000.0 if self.modality == "CT" else 0.0
        image = np.full(self.shape, background, dtype=np.float32)
        for layer in self.anatomy.layers:
            value = self.signal(layer, channel)
            sub = image[layer.region]
            sub += layer.occupancy * (value - sub)
        return image


def _default_gains(tissues: dict[str, Tissue], protocol: MRProtocol, rng: np.random.Generator) -> dict[str, float]:
    """Receiver gains so the liver reads ~100 (T1, T2) and ~60 (DWI) units, varied per case."""
    liver = tissues["liver"]
    t1 = 100.0 * rng.uniform(0.8, 1.25) / t1w_signal(liver.m0, liver.t1_ms, 0.0, protocol)
    return {
        **{phase: t1 for phase in DCE_PHASES},
        "t2": 100.0 * rng.uniform(0.8, 1.25) / t2w_signal(liver.m0, liver, protocol),
        "dwi": 60.0 * rng.uniform(0.8, 1.25) / dwi_signal(liver.m0, liver, liver.adc, protocol),
    }


# --------------------------------------------------------------------------- truth


def lesion_measurements(mask: np.ndarray, spacing: Sequence[float]) -> tuple[tuple[float, float, float], float,
                                                                               float, float]:
    """Centroid (mm from voxel [0,0,0], z y x), volume (ml), longest 3D and longest axial diameter (mm).

    Diameters are the largest distance between two voxel centres of ``mask``
    (3D, and within one axial slice), as SimpleITK's Feret diameter defines it.
    """
    sp = np.asarray(spacing, dtype=np.float64)
    points = np.argwhere(mask)
    if len(points) == 0:
        return (0.0, 0.0, 0.0), 0.0, 0.0, 0.0
    centre = tuple(float(v) for v in points.mean(axis=0) * sp)
    volume = float(len(points) * np.prod(sp) / 1000.0)
    boundary = _boundary_points(mask) * sp
    longest = _max_pairwise(boundary)
    axial = 0.0
    for z in np.unique(points[:, 0]):
        plane = _boundary_points(mask[z:z + 1]) * sp
        axial = max(axial, _max_pairwise(plane))
    return centre, volume, longest, axial


def _boundary_points(mask: np.ndarray) -> np.ndarray:
    """Indices of voxels of ``mask`` with a 6-neighbour outside it (the extreme points are among them)."""
    padded = np.pad(mask.astype(bool), 1)
    interior = padded[1:-1, 1:-1, 1:-1].copy()
    for axis in range(3):
        for step in (-1, 1):
            interior &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
    return np.argwhere(mask.astype(bool) & ~interior).astype(np.float64)


def _max_pairwise(points: np.ndarray) -> float:
    best = 0.0
    for start in range(0, len(points), 512):
        block = points[start:start + 512]
        d2 = ((block[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1)
        best = max(best, float(d2.max()))
    return math.sqrt(best)


# --------------------------------------------------------------------------- public API


def _check_geometry(shape: Sequence[int], spacing: Sequence[float]) -> tuple[tuple[int, int, int],
                                                                               tuple[float, float, float]]:
    if len(shape) != 3 or any(int(n) != n or n < 8 for n in shape):
        raise PhantomParameterError(f"shape must be three integers >= 8 (z, y, x), got {tuple(shape)}")
    if len(spacing) != 3 or any(not (0.2 <= float(s) <= 20.0) for s in spacing):
        raise PhantomParameterError(f"spacing must be three values between 0.2 and 20 mm (z, y, x), got {tuple(spacing)}")
    extent = np.array(shape) * np.array(spacing, dtype=float)
    if extent[1] < 250 or extent[2] < 300 or extent[0] < 80:
        raise PhantomParameterError(
            f"a field of view of {extent[0]:.0f} x {extent[1]:.0f} x {extent[2]:.0f} mm (z, y, x) cannot hold an "
            "adult abdomen; it needs at least 80 x 250 x 300 mm (raise the shape or the spacing)")
    return (int(shape[0]), int(shape[1]), int(shape[2])), (float(spacing[0]), float(spacing[1]), float(spacing[2]))


def _choose_kinds(rng: np.random.Generator, n_lesions: int | None,
                  lesion_kinds: Sequence[LesionKind | int] | None) -> list[LesionKind]:
    if lesion_kinds is not None:
        kinds = [LesionKind(int(k)) for k in lesion_kinds]
        if n_lesions is not None and n_lesions != len(kinds):
            raise PhantomParameterError(f"n_lesions={n_lesions} but {len(kinds)} lesion_kinds were given")
        return kinds
    if n_lesions is None:
        n_lesions = int(rng.choice(len(_LESION_COUNT_P), p=_LESION_COUNT_P))
    if not 0 <= n_lesions <= 12:
        raise PhantomParameterError(f"n_lesions must be between 0 and 12, got {n_lesions}")
    if n_lesions == 0:
        return []
    leading = LesionKind(int(rng.choice(len(_KIND_P), p=_KIND_P)))
    kinds = [leading]
    for _ in range(n_lesions - 1):
        if rng.random() < 0.7:
            kinds.append(leading)  # multiple lesions of one disease (metastases, cysts, multifocal HCC)
        else:  # incidental benign lesions are the common companions
            kinds.append(LesionKind(int(rng.choice(7, p=(0.35, 0.3, 0.05, 0.1, 0.08, 0.08, 0.04)))))
    return kinds


def _simulate(seed: int, shape: Sequence[int], spacing: Sequence[float], n_lesions: int | None,
              lesion_kinds: Sequence[LesionKind | int] | None
              ) -> tuple[np.random.Generator, _Grid, _Anatomy, Kinetics, dict, list[LesionKind]]:
    grid = _Grid(*_check_geometry(shape, spacing))
    rng = np.random.default_rng(seed)
    kinds = _choose_kinds(rng, n_lesions, lesion_kinds)
    cirrhosis = bool(rng.random() < cirrhosis_probability(kinds[0] if kinds else None))
    clinical = sample_clinical(rng, kinds, cirrhosis)
    kinetics = Kinetics.sample(rng)
    anatomy = _AbdomenBuilder(grid, rng, cirrhosis, bool(clinical["ascites"])).build(kinds)
    return rng, grid, anatomy, kinetics, clinical, kinds


def _truth(anatomy: _Anatomy, grid: _Grid) -> tuple[np.ndarray, np.ndarray, tuple[LesionTruth, ...]]:
    liver = anatomy.liver_occupancy > 0.5
    lesion_labels = np.zeros(grid.shape, dtype=np.int16)
    lesions = []
    index = 0
    for (region, occ), kind, design in zip(anatomy.lesion_occupancies, anatomy.lesion_kinds,
                                          anatomy.lesion_design_mm):
        own = (occ > 0.5) & (lesion_labels[region] == 0) & liver[region]
        if not own.any():  # smaller than half a voxel everywhere: keep its most occupied voxel
            peak = np.unravel_index(int(np.argmax(occ)), occ.shape)
            if occ[peak] <= 0.05 or not liver[region][peak] or lesion_labels[region][peak]:
                continue
            own[peak] = True
        index += 1
        lesion_labels[region][own] = index
        mask = lesion_labels == index
        centre, volume, longest, axial = lesion_measurements(mask, grid.spacing)
        lesions.append(LesionTruth(index, kind, centre, volume, longest, axial, float(design)))
    labels = np.where(lesion_labels > 0, 2, np.where(liver, 1, 0)).astype(np.uint8)
    return labels, lesion_labels, tuple(lesions)


def _channel_motion(rng: np.random.Generator, channels: Sequence[str], reference: str,
                    max_mm: float) -> np.ndarray:
    """Rigid shift (z, y, x mm) of each channel's anatomy relative to the reference channel."""
    motion = np.zeros((len(channels), 3), dtype=np.float64)
    for i, channel in enumerate(channels):
        if channel != reference and max_mm > 0:
            motion[i] = rng.uniform(-1, 1, 3) * max_mm * np.array([1.0, 0.5, 0.2])
    return motion


def simulate_liver_mr(seed: int, *, shape: Sequence[int] = DEFAULT_SHAPE,
                      spacing: Sequence[float] = DEFAULT_SPACING, channels: Sequence[str] = DCE_PHASES,
                      n_lesions: int | None = None, lesion_kinds: Sequence[LesionKind | int] | None = None,
                      snr: float = DEFAULT_SNR, motion_mm: float = DEFAULT_MOTION_MM,
                      bias_field: bool = True) -> LiverPhantom:
    """Simulate a liver MR case: one image per requested channel of :data:`MR_SEQUENCES`.

    ``n_lesions`` (0–12; random 0–5 when None) and ``lesion_kinds`` (random
    when None; the first drives the clinical profile) choose the lesions;
    lesions that do not fit in the liver are dropped. ``snr`` is the liver's
    signal-to-noise ratio on the pre-contrast T1 and T2 images (DWI gets half);
    ``motion_mm`` the largest shift between breath-holds; ``bias_field`` a
    smooth coil sensitivity. Same seed and arguments, same phantom.
    """
    channels = tuple(channels)
    if not channels or len(set(channels)) != len(channels) or any(c not in MR_SEQUENCES for c in channels):
        raise PhantomParameterError(f"channels must be distinct names from {MR_SEQUENCES}, got {channels}")
    if snr <= 0 or motion_mm < 0:
        raise PhantomParameterError(f"snr must be positive and motion_mm non-negative, got {snr}, {motion_mm}")
    rng, grid, anatomy, kinetics, clinical, _kinds = _simulate(seed, shape, spacing, n_lesions, lesion_kinds)
    protocol = replace(MRProtocol(), relaxivity_per_mM_s=rng.uniform(3.8, 5.2))
    gains = _default_gains(anatomy.tissues, protocol, rng)
    renderer = _Renderer(anatomy, kinetics, protocol, grid.shape, gains)
    reference = REFERENCE_CHANNEL if REFERENCE_CHANNEL in channels else channels[0]
    motion = _channel_motion(rng, channels, reference, motion_mm)
    coil = np.exp(0.15 * _smooth_noise(rng, grid.shape, grid.spacing, 160.0)
                  - 0.1 * grid.coords(grid.full)[1] / (grid.extent_mm[1] / 2)) if bias_field else None
    images = np.empty((len(channels), *grid.shape), dtype=np.float32)

    def gains_level(channel: str) -> float:
        return 100.0 if channel == "t2" else 120.0

    liver_t1 = gains["pre"] * t1w_signal(anatomy.tissues["liver"].m0, anatomy.tissues["liver"].t1_ms, 0.0, protocol)
    for i, channel in enumerate(channels):
        image = _shift(renderer.render(channel), motion[i] / np.array(grid.spacing))
        if coil is not None:
            scale = coil if channel in DCE_PHASES else coil ** rng.uniform(0.8, 1.2)
            image *= scale.astype(np.float32)
        # Noise from the liver's nominal level: SNR on T1 and T2, half of it on DWI.
        sigma = (liver_t1 if channel in DCE_PHASES else gains_level(channel)) / snr
        noise_r = rng.standard_normal(grid.shape, dtype=np.float32) * sigma
        noise_i = rng.standard_normal(grid.shape, dtype=np.float32) * sigma
        images[i] = np.sqrt((image + noise_r) ** 2 + noise_i ** 2)
    labels, lesion_labels, lesions = _truth(anatomy, grid)
    times = tuple(kinetics.phase_time(c) if c in DCE_PHASES else float("nan") for c in channels)
    log.debug("simulated liver MR phantom", extra={"seed": seed, "lesions": len(lesions), "channels": channels})
    return LiverPhantom(images=images, channels=channels, labels=labels, lesion_labels=lesion_labels,
                        lesions=lesions, spacing=grid.spacing, modality="MR", motion_mm=motion,
                        clinical=clinical, seed=seed, channel_times_s=times)


def simulate_liver_ct(seed: int, *, shape: Sequence[int] = DEFAULT_SHAPE,
                      spacing: Sequence[float] = DEFAULT_SPACING, n_lesions: int | None = None,
                      lesion_kinds: Sequence[LesionKind | int] | None = None,
                      noise_hu: float | None = None, phases: Sequence[str] | None = None,
                      motion_mm: float = DEFAULT_MOTION_MM) -> LiverPhantom:
    """Simulate a contrast CT of the same kind of case, in HU.

    With ``phases`` None: one portal-venous image, channel ``"ct"``. With
    ``phases`` (DCE phase names, e.g. ``("arterial", "portal")``): a multi-phase
    liver CT, one channel per phase named after it, each with its own noise
    and, relative to the portal phase, a rigid shift of up to ``motion_mm``
    (the patient breathes between the phases' breath-holds). ``noise_hu`` is
    the standard deviation of the (in-plane correlated) noise; random between
    10 and 20 HU when None. The case (anatomy, lesions, kinetics) for a seed is
    the same with or without ``phases``.
    """
    if noise_hu is not None and noise_hu < 0:
        raise PhantomParameterError(f"noise_hu must be non-negative, got {noise_hu}")
    channels = ("ct",) if phases is None else tuple(phases)
    if phases is not None and (not channels or len(set(channels)) != len(channels)
                               or any(c not in DCE_PHASES for c in channels)):
        raise PhantomParameterError(f"CT phases must be distinct names from {DCE_PHASES}, got {channels}")
    if motion_mm < 0:
        raise PhantomParameterError(f"motion_mm must be non-negative, got {motion_mm}")
    rng, grid, anatomy, kinetics, clinical, _kinds = _simulate(seed, shape, spacing, n_lesions, lesion_kinds)
    renderer = _Renderer(anatomy, kinetics, MRProtocol(), grid.shape, {}, hu_per_unit=rng.uniform(95, 120),
                         modality="CT")
    sigma = rng.uniform(10.0, 20.0) if noise_hu is None else noise_hu
    if phases is None:
        motion = np.zeros((1, 3))
    else:
        motion = _channel_motion(rng, channels, "portal" if "portal" in channels else channels[0], motion_mm)
    images = np.empty((len(channels), *grid.shape), dtype=np.float32)
    for i, channel in enumerate(channels):
        image = renderer.render(channel)
        if motion[i].any():
            image = _shift(image, motion[i] / np.array(grid.spacing))
        images[i] = np.clip(image + ct_noise(rng, grid.shape, sigma), -1024.0, 3071.0)
    labels, lesion_labels, lesions = _truth(anatomy, grid)
    times = tuple(kinetics.phase_time(_contrast_phase(c)) for c in channels)
    return LiverPhantom(images=images, channels=channels, labels=labels, lesion_labels=lesion_labels,
                        lesions=lesions, spacing=grid.spacing, modality="CT", motion_mm=motion,
                        clinical=clinical, seed=seed, channel_times_s=times)


def _contrast_phase(channel: str) -> str:
    """The contrast phase a CT channel shows: its own name, or the portal-venous phase for the
    single-phase CT channel ``"ct"``."""
    return "portal" if channel == "ct" else channel


def ct_noise(rng: np.random.Generator, shape: Sequence[int], sigma: float) -> np.ndarray:
    """CT noise of standard deviation *sigma* HU, correlated between neighbouring pixels in-plane
    (the reconstruction kernel)."""
    noise = rng.standard_normal(tuple(shape), dtype=np.float32)
    for axis in (1, 2):
        noise = 0.25 * np.roll(noise, 1, axis) + 0.5 * noise + 0.25 * np.roll(noise, -1, axis)
    return noise * (sigma / max(float(noise.std()), 1e-6))
