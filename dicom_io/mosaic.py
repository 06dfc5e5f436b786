"""Siemens CSA headers and MOSAIC images.

Siemens stores all slices of one EPI time point (e.g. a DSC perfusion
repetition) as tiles of a single 2D "mosaic" image. Unpacking needs the
number of slices (CSA ``NumberOfImagesInMosaic``, or the plain private tag
(0019,xx0A)), the direction in which the tiles are stacked (CSA
``SliceNormalVector``), and a correction of ImagePositionPatient, which
Siemens gives for the top-left corner of the whole mosaic rather than of the
first tile.

The CSA2 format (signature ``SV10``) is little-endian::

    header   'SV10' + 4 bytes, uint32 n_tags, uint32 (77)
    n_tags x tag
        name[64] (NUL-terminated), int32 vm, char vr[4], int32 syngodt,
        int32 n_items, int32 (77 or 205)
        n_items x item
            int32 x 4 (the 2nd is the value length), value[length],
            padding to a multiple of 4 bytes

Values are stored as text, whatever their VR.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from dicom_io.errors import CsaHeaderError

CSA_CREATOR = "SIEMENS CSA HEADER"
MR_HEADER_CREATOR = "SIEMENS MR HEADER"
_CSA_IMAGE_ELEMENT = 0x10
_CSA_SERIES_ELEMENT = 0x20
_MOSAIC_COUNT_ELEMENT = 0x0A

_INTEGER_VRS = frozenset({"IS", "SL", "UL", "US", "SS", "SV", "UV"})
_FLOAT_VRS = frozenset({"DS", "FD", "FL"})
_TAG_HEADER = struct.Struct("<64si4siii")
_ITEM_HEADER = struct.Struct("<4i")
# Real headers hold ~100 tags of a few items each; these bounds catch garbage early.
_MAX_TAGS = 10_000
_MAX_ITEMS = 100_000


@dataclass(frozen=True)
class CsaElement:
    """One CSA tag: its name, VR, declared multiplicity and decoded values."""

    name: str
    vr: str
    vm: int
    values: tuple[str | int | float, ...]

    @property
    def value(self) -> str | int | float | None:
        """The first value, or ``None`` if the tag is empty."""
        return self.values[0] if self.values else None


def parse_csa_header(data: bytes) -> dict[str, CsaElement]:
    """Parse a CSA2 (``SV10``) header into ``{name: CsaElement}``.

    Raises :class:`CsaHeaderError` for truncated data or the older CSA1 format
    (which has no signature and is not supported).
    """
    if len(data) < 16 or data[:4] != b"SV10":
        raise CsaHeaderError("not a CSA2 header (no 'SV10' signature); the older CSA1 format is not supported")
    n_tags = struct.unpack_from("<I", data, 8)[0]
    if n_tags > _MAX_TAGS:
        raise CsaHeaderError(f"CSA header claims {n_tags} tags, which is implausible")
    elements: dict[str, CsaElement] = {}
    offset = 16
    for _ in range(n_tags):
        if offset + _TAG_HEADER.size > len(data):
            raise CsaHeaderError(f"CSA header truncated at byte {offset} (tag header)")
        raw_name, vm, raw_vr, _syngodt, n_items, _check = _TAG_HEADER.unpack_from(data, offset)
        offset += _TAG_HEADER.size
        if not 0 <= n_items <= _MAX_ITEMS:
            raise CsaHeaderError(f"CSA tag at byte {offset - _TAG_HEADER.size} claims {n_items} items")
        name = raw_name.split(b"\0", 1)[0].decode("latin-1")
        vr = raw_vr.split(b"\0", 1)[0].decode("latin-1").strip()
        texts: list[str] = []
        for _ in range(n_items):
            if offset + _ITEM_HEADER.size > len(data):
                raise CsaHeaderError(f"CSA header truncated at byte {offset} (item of {name!r})")
            length = _ITEM_HEADER.unpack_from(data, offset)[1]
            offset += _ITEM_HEADER.size
            if length < 0 or offset + length > len(data):
                raise CsaHeaderError(f"CSA item of {name!r} has length {length} beyond the data")
            texts.append(data[offset:offset + length].split(b"\0", 1)[0].decode("latin-1").strip())
            offset += (length + 3) // 4 * 4
        if vm > 0:
            texts = texts[:vm]
        values = tuple(_convert(text, vr) for text in texts if text)
        elements[name] = CsaElement(name=name, vr=vr, vm=vm, values=values)
    return elements


def _convert(text: str, vr: str) -> str | int | float:
    try:
        if vr in _INTEGER_VRS:
            return int(float(text))
        if vr in _FLOAT_VRS:
            return float(text)
    except ValueError:
        pass
    return text


def _private_bytes(ds: Dataset, group: int, creator: str, element: int) -> bytes | int | None:
    try:
        value = ds.private_block(group, creator)[element].value
    except KeyError:
        # Some tools drop the private creator; Siemens always uses block 0x10.
        elem = ds.get((group, 0x1000 | element))
        value = None if elem is None else elem.value
    return value


def csa_image_header(ds: Dataset) -> dict[str, CsaElement] | None:
    """The parsed CSA Image Header Info of *ds*, or ``None`` if it has none."""
    data = _private_bytes(ds, 0x0029, CSA_CREATOR, _CSA_IMAGE_ELEMENT)
    if not isinstance(data, bytes | bytearray) or not data:
        return None
    return parse_csa_header(bytes(data))


@dataclass(frozen=True)
class MosaicLayout:
    """How the slices of one MOSAIC image are tiled."""

    n_images: int
    tiles_per_side: int
    tile_rows: int
    tile_columns: int
    #: Direction in which the tiles are stacked (CSA SliceNormalVector), or None if unknown.
    slice_normal: np.ndarray | None

    def tile_origin(self, k: int) -> tuple[int, int]:
        """Row and column of the top-left pixel of tile *k* in the mosaic."""
        return (k // self.tiles_per_side) * self.tile_rows, (k % self.tiles_per_side) * self.tile_columns


def is_mosaic(ds: Dataset) -> bool:
    """Whether ImageType of *ds* contains MOSAIC (read without pydicom's value conversion: a hot path)."""
    element = ds.get_item(0x00080008)
    value = None if element is None else element.value
    if value is None:
        return False
    if isinstance(value, bytes):
        values = value.decode("latin-1").split("\\")
    elif isinstance(value, str):
        values = value.split("\\")
    else:
        values = [str(v) for v in value]
    return any(v.strip(" \0").upper() == "MOSAIC" for v in values)


def mosaic_layout(ds: Dataset) -> MosaicLayout | None:
    """The tiling of *ds* if it is a MOSAIC image (ImageType says so), else ``None``.

    The slice count comes from the CSA header's NumberOfImagesInMosaic,
    falling back to the private tag (0019,xx0A). Raises :class:`ValueError`
    (with a plain message) when the image says MOSAIC but the count is
    missing or does not fit the matrix.
    """
    if not is_mosaic(ds):
        return None
    csa: dict[str, CsaElement] | None
    csa_problem = ""
    try:
        csa = csa_image_header(ds)
    except CsaHeaderError as exc:
        csa, csa_problem = None, f" (CSA header unreadable: {exc})"
    csa_count = csa.get("NumberOfImagesInMosaic") if csa else None
    n_images = int(csa_count.value) if csa_count and isinstance(csa_count.value, int | float) else None
    if not n_images:
        n_images = _plain_mosaic_count(ds)
    if not n_images or n_images < 1:
        raise ValueError(
            "image is a MOSAIC but neither the CSA header nor (0019,xx0A) gives NumberOfImagesInMosaic"
            + csa_problem
        )
    tiles_per_side = math.ceil(math.sqrt(n_images))
    rows, columns = int(ds.Rows), int(ds.Columns)
    if rows % tiles_per_side or columns % tiles_per_side:
        raise ValueError(
            f"MOSAIC of {rows}x{columns} pixels cannot hold {n_images} images on a "
            f"{tiles_per_side}x{tiles_per_side} grid"
        )
    normal = None
    csa_normal = csa.get("SliceNormalVector") if csa else None
    if csa_normal is not None and len(csa_normal.values) == 3:
        vector = np.array([float(v) for v in csa_normal.values])
        norm = np.linalg.norm(vector)
        if norm > 0:
            normal = vector / norm
    return MosaicLayout(
        n_images=n_images,
        tiles_per_side=tiles_per_side,
        tile_rows=rows // tiles_per_side,
        tile_columns=columns // tiles_per_side,
        slice_normal=normal,
    )


def _plain_mosaic_count(ds: Dataset) -> int | None:
    value = _private_bytes(ds, 0x0019, MR_HEADER_CREATOR, _MOSAIC_COUNT_ELEMENT)
    if isinstance(value, bytes | bytearray):  # implicit VR: the US arrives as raw bytes
        return int.from_bytes(value[:2], "little") if len(value) >= 2 else None
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def unpack_mosaic(pixels: np.ndarray, layout: MosaicLayout) -> np.ndarray:
    """Cut a 2D mosaic into a ``(n_images, tile_rows, tile_columns)`` stack (a copy)."""
    n = layout.tiles_per_side
    grid = pixels.reshape(n, layout.tile_rows, n, layout.tile_columns).swapaxes(1, 2)
    return grid.reshape(n * n, layout.tile_rows, layout.tile_columns)[: layout.n_images].copy()


def first_tile_position(
    mosaic_position: np.ndarray,
    row_direction: np.ndarray,
    column_direction: np.ndarray,
    pixel_spacing: tuple[float, float],
    mosaic_shape: tuple[int, int],
    layout: MosaicLayout,
) -> np.ndarray:
    """LPS position of the first voxel of the first tile.

    Siemens writes ImagePositionPatient as if the mosaic were one large image
    centred on the slice, so the corner moves inward by half the difference
    between the mosaic and tile sizes, along each in-plane axis.
    """
    row_spacing, column_spacing = pixel_spacing
    rows, columns = mosaic_shape
    shift_columns = (columns - layout.tile_columns) / 2.0
    shift_rows = (rows - layout.tile_rows) / 2.0
    return (
        np.asarray(mosaic_position, dtype=np.float64)
        + shift_columns * column_spacing * np.asarray(row_direction)
        + shift_rows * row_spacing * np.asarray(column_direction)
    )
