"""Colour summary images (Secondary Capture) that every viewer can show.

Many PACS viewers cannot display SEG or Parametric Map objects. For those,
pacsnode also sends a plain RGB Secondary Capture series, one image per
source slice: the perfusion map in colour with a labelled colour bar, or the
segmentation masks filled and outlined over the grey-scale source. Key image
series show only chosen slices: where a classifier looked (a saliency map as
a semi-transparent heat map), the lesion outlines and caption lines. The text
"RESEARCH USE ONLY" is burned into every image and repeated in the header
(SeriesDescription, ImageComments), and the images are marked as derived
(ImageType DERIVED\\SECONDARY, DerivationDescription, Source Image Sequence).

Images are enlarged by an integer factor (nearest neighbour, so no values
are invented between voxels) to at least :data:`MIN_IMAGE_SIZE` pixels, so
the burned-in text stays legible next to them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_io.bitmap_font import CELL_HEIGHT, CELL_WIDTH, draw_text
from dicom_io.errors import WriterError
from dicom_io.identity import AlgorithmInfo, NodeIdentity, copy_patient_and_study
from dicom_io.pmap import MapParameter
from dicom_io.seg import SegmentSpec
from dicom_io.source_images import (
    SourceSeries,
    check_series_description,
    check_series_number,
    check_source_series,
)

logger = logging.getLogger(__name__)

RESEARCH_NOTICE = "RESEARCH USE ONLY"
#: Smallest width/height (pixels) of the image area after enlargement.
MIN_IMAGE_SIZE = 384
#: Opacity of mask fills over the grey-scale source.
MASK_OPACITY = 0.4
#: Opacity of a saliency heat map where it is 1; it falls linearly to 0 with the value.
HEAT_OPACITY = 0.6
#: Saliency below this is not drawn at all (the source shows through unchanged).
HEAT_FLOOR = 0.05

#: Marks text cut to fit (the bitmap font has no '~' or ellipsis).
CUT = "."
_TEXT = (255, 255, 255)
_NOTICE = (255, 220, 0)
_PANEL = (0, 0, 0)
#: Key image outlines: colours outside the heat map's blue-to-red scale.
_OUTLINE_COLOURS = ((240, 50, 230), (255, 255, 255), (250, 190, 212), (145, 30, 180))
_DEFAULT_COLOURS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))

# Colour scale: dark blue -> blue -> cyan -> green -> yellow -> red -> dark red, as
# perfusion software commonly shows maps (low = blue, high = red).
_SCALE_POINTS = np.array([0.0, 0.12, 0.35, 0.5, 0.65, 0.88, 1.0])
_SCALE_COLOURS = np.array([
    (0, 0, 140), (0, 0, 255), (0, 255, 255), (0, 230, 0), (255, 255, 0), (255, 0, 0), (140, 0, 0),
], dtype=float)


def colour_scale(fraction: np.ndarray) -> np.ndarray:
    """RGB uint8 colours for values in ``[0, 1]`` (clipped), shape ``fraction.shape + (3,)``."""
    f = np.clip(np.asarray(fraction, dtype=float), 0.0, 1.0)
    channels = [np.interp(f, _SCALE_POINTS, _SCALE_COLOURS[:, c]) for c in range(3)]
    return np.round(np.stack(channels, axis=-1)).astype(np.uint8)


@dataclass(frozen=True)
class _Layout:
    """Where things go on a summary image: header strip, image area, side panel, footer strip."""

    zoom: int
    text_scale: int
    image_rows: int
    image_columns: int
    header: int
    footer: int
    panel: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.header + self.image_rows + self.footer, self.image_columns + self.panel, 3)

    @property
    def line(self) -> int:
        return CELL_HEIGHT * self.text_scale


def _layout(source: SourceSeries, panel_chars: int) -> _Layout:
    zoom = max(1, math.ceil(MIN_IMAGE_SIZE / max(source.rows, source.columns)))
    rows, columns = source.rows * zoom, source.columns * zoom
    text_scale = max(2, min(rows, columns) // 256)
    line = CELL_HEIGHT * text_scale
    panel = (panel_chars * CELL_WIDTH + 4) * text_scale
    return _Layout(zoom, text_scale, rows, columns, header=line + 2 * text_scale,
                   footer=line + 2 * text_scale, panel=panel)


def _zoom(image: np.ndarray, zoom: int) -> np.ndarray:
    return np.repeat(np.repeat(image, zoom, axis=0), zoom, axis=1) if zoom > 1 else image


def _grey_underlay(source: SourceSeries) -> np.ndarray:
    """The source slices as uint8 ``(z, y, x)``, windowed by the source's own window or its 1-99th percentile."""
    try:
        volume = np.stack([
            ds.pixel_array.astype(np.float32) * float(ds.get("RescaleSlope", 1) or 1)
            + float(ds.get("RescaleIntercept", 0) or 0)
            for ds in source.images
        ])
    except Exception as exc:  # pydicom raises many types for undecodable pixel data
        raise WriterError(f"{source.label}: the source pixel data cannot be decoded ({exc})") from exc
    if volume.shape != source.shape:
        raise WriterError(f"{source.label}: the source images are not single-channel {source.rows}x{source.columns}")
    first = source.first
    center, width = first.get("WindowCenter"), first.get("WindowWidth")
    try:
        center = float(center[0] if isinstance(center, Sequence) else center)
        width = float(width[0] if isinstance(width, Sequence) else width)
    except (TypeError, ValueError, IndexError):
        center = width = None  # type: ignore[assignment]
    if center is None or width is None or width <= 0:
        low, high = np.percentile(volume, [1, 99]) if volume.size else (0.0, 1.0)
        center, width = (low + high) / 2, max(high - low, 1e-6)
    grey = (volume - (center - width / 2)) / width
    if first.get("PhotometricInterpretation") == "MONOCHROME1":
        grey = 1.0 - grey
    return np.round(np.clip(grey, 0.0, 1.0) * 255).astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` that touch a pixel outside it (4-neighbourhood)."""
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def _patient_orientation(ds: Dataset) -> tuple[str, str]:
    """PatientOrientation (dominant direction letter of rows and columns) from ImageOrientationPatient."""
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)

    def letter(vector: np.ndarray) -> str:
        axis = int(np.argmax(np.abs(vector)))
        positive, negative = (("L", "R"), ("P", "A"), ("H", "F"))[axis]
        return positive if vector[axis] > 0 else negative

    return letter(iop[:3]), letter(iop[3:])


def _copy_laterality(source: Dataset, target: Dataset) -> None:
    """Laterality as the source states it; ImageLaterality 'U' (unpaired) when it states none."""
    for keyword in ("BodyPartExamined", "Laterality", "ImageLaterality"):
        if source.get(keyword):
            setattr(target, keyword, source.get(keyword))
    if not target.get("Laterality") and not target.get("ImageLaterality"):
        target.ImageLaterality = "U"


class SummaryImageWriter:
    """Builds RGB Secondary Capture series: colour maps with a colour bar, mask overlays."""

    def __init__(self, node: NodeIdentity | None = None) -> None:
        self.node = node or NodeIdentity()

    # ------------------------------------------------------------------ public

    def write_colour_map(
        self,
        source_images: Sequence[Dataset],
        values: np.ndarray,
        parameter: MapParameter,
        algorithm: AlgorithmInfo,
        series_number: int,
        series_description: str | None = None,
        *,
        display_range: tuple[float, float] | None = None,
    ) -> list[Dataset]:
        """One RGB image per slice: the map in colour over the dimmed source, with a labelled colour bar.

        Voxels at or below the bottom of ``display_range`` (default: the
        parameter's range) show the grey-scale source, so anatomy stays
        visible where the map is empty.
        """
        source = check_source_series(source_images)
        if not isinstance(parameter, MapParameter):
            raise WriterError(f"parameter must be a MapParameter, got {parameter!r}")
        source.check_array(values, f"{parameter.short} map")
        if not np.issubdtype(values.dtype, np.number) or not np.all(np.isfinite(values)):
            raise WriterError(f"{parameter.short} map must be numeric and finite (set masked voxels to 0)")
        low, high = display_range if display_range is not None else (parameter.display_min, parameter.display_max)
        if not (np.isfinite(low) and np.isfinite(high) and high > low):
            raise WriterError(f"display_range {display_range!r} must be two finite values, low < high")
        description = self._description(series_description, f"{parameter.short} colour map")
        ticks = [low + (high - low) * k / 4 for k in range(5)]
        tick_labels = [f"{t:.4g}" for t in ticks]
        layout = _layout(source, panel_chars=4 + max(len(t) for t in tick_labels))
        grey = _grey_underlay(source)
        fraction = (values.astype(np.float64) - low) / (high - low)
        bar = self._colour_bar(layout, tick_labels)
        header = f"{parameter.short} [{parameter.unit_text}]"
        derivation = (
            f"{parameter.title} ({parameter.unit_text}) computed by {algorithm.label}, rendered in colour "
            f"from {low:g} to {high:g} {parameter.unit_text} over the source slice by pacsnode "
            f"{self.node.software_version}. {RESEARCH_NOTICE}."
        )
        images = []
        for z in range(source.slice_count):
            rgb = np.repeat(grey[z][..., None] // 2, 3, axis=-1)
            shown = fraction[z] > 0.0
            rgb[shown] = colour_scale(fraction[z][shown])
            canvas = self._canvas(layout, _zoom(rgb, layout.zoom), header, z, source.slice_count)
            canvas[layout.header:layout.header + layout.image_rows, layout.image_columns:] = bar
            images.append(canvas)
        return self._datasets(source, images, layout, algorithm, check_series_number(series_number),
                              description, derivation)

    def write_mask_overlay(
        self,
        source_images: Sequence[Dataset],
        masks: Mapping[SegmentSpec, np.ndarray],
        algorithm: AlgorithmInfo,
        series_number: int,
        series_description: str | None = None,
    ) -> list[Dataset]:
        """One RGB image per slice: the grey-scale source with each mask filled and outlined in its colour.

        Colours come from :attr:`SegmentSpec.colour` (a fixed palette when
        unset); a legend on the right names each segment.
        """
        source = check_source_series(source_images)
        if not isinstance(masks, Mapping) or not masks:
            raise WriterError("masks must be a non-empty mapping of SegmentSpec to (z, y, x) boolean arrays")
        entries: list[tuple[str, np.ndarray, tuple[int, int, int]]] = []
        for index, (spec, mask) in enumerate(masks.items()):
            if not isinstance(spec, SegmentSpec):
                raise WriterError(f"Mask key {index} is a {type(spec).__name__}, not a SegmentSpec")
            source.check_array(mask, f"Mask of segment {spec.label!r}")
            if mask.dtype != bool:
                raise WriterError(f"Mask of segment {spec.label!r} has dtype {mask.dtype}; bool is expected")
            colour = tuple(int(c) for c in spec.colour) if spec.colour else _DEFAULT_COLOURS[index % 10]
            entries.append((spec.label, mask, colour))  # type: ignore[arg-type]
        description = self._description(series_description, "Segmentation overlay")
        legend_chars = min(24, max(len(label) for label, _, _ in entries))
        layout = _layout(source, panel_chars=legend_chars + 3)
        grey = _grey_underlay(source)
        derivation = (
            f"Segmentation by {algorithm.label} ({', '.join(label for label, _, _ in entries)})"[:700]
            + f" drawn over the source slice by pacsnode {self.node.software_version}. {RESEARCH_NOTICE}."
        )
        legend = self._legend(layout, entries, legend_chars)
        # Title: the algorithm's name, shortened to leave room for the slice counter.
        room = layout.shape[1] // (CELL_WIDTH * layout.text_scale) - 10
        title = f"{algorithm.name} segmentation"
        title = title if len(title) <= room else title[: max(room - 1, 1)] + CUT
        images = []
        for z in range(source.slice_count):
            rgb = _zoom(np.repeat(grey[z][..., None], 3, axis=-1), layout.zoom).astype(np.float32)
            for _, mask, colour in entries:
                big = _zoom(mask[z], layout.zoom)
                if not big.any():
                    continue
                rgb[big] = (1 - MASK_OPACITY) * rgb[big] + MASK_OPACITY * np.asarray(colour, dtype=np.float32)
                rgb[_outline(big)] = colour
            canvas = self._canvas(layout, np.round(rgb).astype(np.uint8), title, z, source.slice_count)
            canvas[layout.header:layout.header + layout.image_rows, layout.image_columns:] = legend
            images.append(canvas)
        return self._datasets(source, images, layout, algorithm, check_series_number(series_number),
                              description, derivation)

    def write_key_images(
        self,
        source_images: Sequence[Dataset],
        heat: np.ndarray,
        outlines: Mapping[str, np.ndarray],
        slices: Sequence[int],
        captions: Mapping[int, Sequence[str]],
        algorithm: AlgorithmInfo,
        series_number: int,
        series_description: str | None = None,
        *,
        series_instance_uid: str | None = None,
        first_instance_number: int = 1,
    ) -> list[Dataset]:
        """One RGB key image per slice in ``slices``: where a model looked, over the grey-scale source.

        ``heat`` (z, y, x, values 0-1, e.g. a normalised input-gradient
        saliency map) is blended in colour (blue low, red high), more opaque
        where it is higher and absent below :data:`HEAT_FLOOR`; each mask in
        ``outlines`` (label -> bool (z, y, x)) is outlined in its colour and
        named in the side panel, followed by ``captions[slice]`` (e.g.
        "Lesion 1: HCC 82%"). ``slices`` index ``source_images`` in the order
        given; the images are numbered in the order of ``slices`` from
        ``first_instance_number``. To gather the key images of several calls
        (one per lesion, each with its own saliency map) in one series, pass
        the same ``series_instance_uid`` (e.g. ``pydicom.uid.generate_uid()``)
        and continue the numbering.
        """
        source = check_source_series(source_images)
        source.check_array(heat, "Saliency map")
        if not np.issubdtype(heat.dtype, np.number) or not np.all(np.isfinite(heat)):
            raise WriterError("Saliency map must be numeric and finite")
        if heat.size and (float(heat.min()) < 0.0 or float(heat.max()) > 1.0):
            raise WriterError(f"Saliency map values must lie in [0, 1] (normalise it first), got "
                              f"{float(heat.min()):g} to {float(heat.max()):g}")
        if not isinstance(outlines, Mapping):
            raise WriterError("outlines must be a mapping of label to (z, y, x) boolean arrays")
        entries: list[tuple[str, np.ndarray, tuple[int, int, int]]] = []
        for index, (label, mask) in enumerate(outlines.items()):
            if not isinstance(label, str) or not label.strip():
                raise WriterError(f"Outline {index + 1} needs a text label, got {label!r}")
            source.check_array(mask, f"Outline {label!r}")
            if mask.dtype != bool:
                raise WriterError(f"Outline {label!r} has dtype {mask.dtype}; bool is expected")
            entries.append((label, mask, _OUTLINE_COLOURS[index % len(_OUTLINE_COLOURS)]))
        chosen = self._key_slices(slices, source.slice_count)
        if not isinstance(captions, Mapping):
            raise WriterError("captions must be a mapping of slice index to lines of text")
        for z, lines in captions.items():
            if z not in chosen:
                raise WriterError(f"Caption for slice {z!r}, which is not one of the key slices {list(chosen)}")
            if isinstance(lines, str) or not all(isinstance(line, str) for line in lines):
                raise WriterError(f"Caption of slice {z} must be a sequence of text lines, got {lines!r}")
        description = self._description(series_description, "Key images")
        chars = max([12, *(len(label) for label, _, _ in entries),
                     *(len(line) for lines in captions.values() for line in lines)])
        chars = min(chars, 26)
        layout = _layout(source, panel_chars=chars + 3)
        grey = _grey_underlay(source)
        derivation = (
            f"Saliency of {algorithm.label} (0-1, blue low to red high, not drawn below {HEAT_FLOOR:g})"
            f" and outlines ({', '.join(label for label, _, _ in entries) or 'none'})"[:700]
            + f" drawn over the source slice by pacsnode {self.node.software_version}. {RESEARCH_NOTICE}."
        )
        room = layout.shape[1] // (CELL_WIDTH * layout.text_scale) - 10
        title = f"{algorithm.name} saliency"
        title = title if len(title) <= room else title[: max(room - 1, 1)] + CUT
        images = []
        for z in chosen:
            rgb = _zoom(np.repeat(grey[z][..., None], 3, axis=-1), layout.zoom).astype(np.float32)
            level = _zoom(heat[z].astype(np.float64), layout.zoom)
            shown = level >= HEAT_FLOOR
            alpha = (HEAT_OPACITY * level[shown])[:, None]
            rgb[shown] = (1 - alpha) * rgb[shown] + alpha * colour_scale(level[shown]).astype(np.float32)
            for _, mask, colour in entries:
                big = _zoom(mask[z], layout.zoom)
                if big.any():
                    rgb[_outline(big)] = colour
            canvas = self._canvas(layout, np.round(rgb).astype(np.uint8), title, z, source.slice_count)
            panel = self._legend(layout, entries, chars) if entries else np.zeros(
                (layout.image_rows, layout.panel, 3), dtype=np.uint8)
            self._caption(panel, layout, len(entries), captions.get(z, ()), chars)
            canvas[layout.header:layout.header + layout.image_rows, layout.image_columns:] = panel
            images.append(canvas)
        return self._datasets(source, images, layout, algorithm, check_series_number(series_number),
                              description, derivation, slices=chosen, series_instance_uid=series_instance_uid,
                              first_instance_number=first_instance_number)

    @staticmethod
    def _key_slices(slices: Sequence[int], count: int) -> list[int]:
        if isinstance(slices, (str, bytes)) or not isinstance(slices, Sequence) or not slices:
            raise WriterError("slices must be a non-empty sequence of source slice indices")
        chosen = []
        for z in slices:
            if isinstance(z, bool) or not isinstance(z, (int, np.integer)):
                raise WriterError(f"Key slice {z!r} is not an integer index")
            if not 0 <= z < count:
                raise WriterError(f"Key slice {z} is out of range: the source series has {count} slices (0-{count - 1})")
            if int(z) in chosen:
                raise WriterError(f"Key slice {z} is given twice")
            chosen.append(int(z))
        return chosen

    # ------------------------------------------------------------------ drawing

    @staticmethod
    def _description(series_description: str | None, default: str) -> str:
        description = series_description or default
        if RESEARCH_NOTICE not in description.upper():
            description = f"{description} {RESEARCH_NOTICE}"
        return check_series_description(description)

    @staticmethod
    def _canvas(layout: _Layout, image: np.ndarray, title: str, z: int, count: int) -> np.ndarray:
        canvas = np.zeros(layout.shape, dtype=np.uint8)
        canvas[:] = _PANEL
        canvas[layout.header:layout.header + layout.image_rows, :layout.image_columns] = image
        s = layout.text_scale
        draw_text(canvas, title, s, 2 * s, _TEXT, scale=s)
        slice_text = f"{z + 1}/{count}"
        draw_text(canvas, slice_text, s, layout.shape[1] - (len(slice_text) * CELL_WIDTH + 2) * s, _TEXT, scale=s)
        draw_text(canvas, RESEARCH_NOTICE, layout.header + layout.image_rows + s, 2 * s, _NOTICE, scale=s)
        return canvas

    @staticmethod
    def _colour_bar(layout: _Layout, tick_labels: Sequence[str]) -> np.ndarray:
        """Side panel: a vertical colour scale (high at the top) with five labelled ticks."""
        s = layout.text_scale
        panel = np.zeros((layout.image_rows, layout.panel, 3), dtype=np.uint8)
        top, bottom = layout.line // 2 + s, layout.image_rows - layout.line // 2 - s
        left, width = 2 * s, 6 * s
        heights = np.linspace(1.0, 0.0, bottom - top)
        panel[top:bottom, left:left + width] = colour_scale(heights)[:, None, :]
        for k, label in enumerate(tick_labels):
            row = bottom - 1 - round((bottom - 1 - top) * k / (len(tick_labels) - 1))
            panel[max(row - s // 2, top):row - s // 2 + s, left:left + width] = _PANEL
            draw_text(panel, label, row - layout.line // 2 + s // 2, left + width + 2 * s, _TEXT, scale=s)
        return panel

    @staticmethod
    def _legend(layout: _Layout, entries: Sequence[tuple[str, np.ndarray, tuple[int, int, int]]],
                chars: int) -> np.ndarray:
        """Side panel: a colour swatch and the label of each segment, '+N more' when they do not fit."""
        s = layout.text_scale
        panel = np.zeros((layout.image_rows, layout.panel, 3), dtype=np.uint8)
        step = layout.line + 2 * s
        fits = max(1, layout.image_rows // step)
        shown = entries if len(entries) <= fits else entries[: fits - 1]
        for k, (label, _, colour) in enumerate(shown):
            row = s + k * step
            panel[row + s:row + layout.line - s, 2 * s:2 * s + 2 * CELL_WIDTH * s // 2] = colour
            text = label if len(label) <= chars else label[: chars - 1] + CUT
            draw_text(panel, text, row, 3 * CELL_WIDTH * s // 2 + 3 * s, _TEXT, scale=s)
        if len(shown) < len(entries):
            draw_text(panel, f"+{len(entries) - len(shown)} more", s + len(shown) * step, 2 * s, _TEXT, scale=s)
        return panel

    @staticmethod
    def _caption(panel: np.ndarray, layout: _Layout, legend_rows: int, lines: Sequence[str], chars: int) -> None:
        """Caption lines in the side panel below a legend of ``legend_rows`` entries; :data:`CUT` marks cut text."""
        s = layout.text_scale
        step = layout.line + 2 * s
        row = s + (legend_rows + (1 if legend_rows else 0)) * step
        for line in lines:
            if row + layout.line > panel.shape[0]:
                break
            text = line if len(line) <= chars else line[: chars - 1] + CUT
            draw_text(panel, text, row, 2 * s, _TEXT, scale=s)
            row += step

    # ------------------------------------------------------------------ DICOM

    def _datasets(self, source: SourceSeries, images: Sequence[np.ndarray], layout: _Layout,
                  algorithm: AlgorithmInfo, series_number: int, description: str,
                  derivation: str, slices: Sequence[int] | None = None, series_instance_uid: str | None = None,
                  first_instance_number: int = 1) -> list[Dataset]:
        """One Secondary Capture per image; ``slices``: the source slices they show (default: all, in order)."""
        if isinstance(first_instance_number, bool) or not isinstance(first_instance_number, int) \
                or first_instance_number < 1:
            raise WriterError(f"first_instance_number must be a positive int, got {first_instance_number!r}")
        series_uid = series_instance_uid or generate_uid()
        spacing = [float(v) / layout.zoom for v in source.first.PixelSpacing]
        shown = [source.images[z] for z in slices] if slices is not None else list(source.images)
        out = []
        for index, (ds, rgb) in enumerate(zip(shown, images, strict=True)):
            try:
                sc = hd.sc.SCImage.from_ref_dataset(
                    ref_dataset=ds,
                    pixel_array=rgb,
                    photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
                    bits_allocated=8,
                    coordinate_system=hd.CoordinateSystemNames.PATIENT,
                    series_instance_uid=series_uid,
                    series_number=series_number,
                    sop_instance_uid=generate_uid(),
                    instance_number=first_instance_number + index,
                    pixel_spacing=(spacing[0], spacing[1]),
                    patient_orientation=_patient_orientation(ds),
                    transfer_syntax_uid=ExplicitVRLittleEndian,
                    series_description=description,
                    **self.node.equipment_kwargs(algorithm),
                )
            except (ValueError, TypeError) as exc:
                raise WriterError(f"{source.label}: highdicom refused summary image {index + 1}: {exc}") from exc
            sc.ImageType = ["DERIVED", "SECONDARY"]
            sc.ConversionType = "WSD"
            sc.DerivationDescription = derivation[:1024]
            reference = Dataset()
            reference.ReferencedSOPClassUID = ds.SOPClassUID
            reference.ReferencedSOPInstanceUID = ds.SOPInstanceUID
            sc.SourceImageSequence = DicomSequence([reference])
            sc.ImageComments = f"{RESEARCH_NOTICE}. Not for diagnostic use. {description}"[:10240]
            sc.BurnedInAnnotation = "NO"
            sc.RecognizableVisualFeatures = "NO"
            sc.LossyImageCompression = "00"
            _copy_laterality(ds, sc)
            copy_patient_and_study(ds, sc)
            out.append(sc)
        logger.info("Built summary series %r (series %d): %d RGB images of %dx%d",
                    description, series_number, len(out), layout.shape[0], layout.shape[1])
        return out
