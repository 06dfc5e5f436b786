"""A site's labelled studies as training data for the lesion classifiers (``pacsnode train liver-cls --data DIR``).

Each sub-folder of ``DIR`` holding DICOM files is one study: the liver MR
sequences and a SEG of its lesions in which every lesion segment's Segmented
Property Type is the lesion's class — the very codes the classification SR
writes (:attr:`~inference.liver.lesion_kinds.LesionKind.code`: SNOMED CT
"Cyst of liver", "Hemangioma of liver", … or pacsnode's private code for
"other benign liver nodule"). A ``clinical.json`` beside the images (the
fields ``pacsnode clinical put`` accepts) feeds the clinical models; age and
sex come from the DICOM header, as in the pipeline.

Every study is read exactly as the pipeline reads one
(:func:`inference.liver.classification.lesions_from_study_seg`): sequences
identified, the SEG placed on the series it was drawn on, the other
sequences registered onto it, patches cut with the same function. The
models take all six sequences, so a study without them is skipped with its
reason, as is a lesion under the minimum diameter. Research use only.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.sr.coding import Code

from inference.base import PipelineInputError, StudyInput, studies_from_files
from inference.liver.lesion_kinds import LesionKind, kind_of
from inference.liver.lesion_models import SIX, encode_clinical
from inference.liver.lesion_patches import (
    MIN_CLASSIFIED_DIAMETER_MM,
    extract_lesion_patches,
)
from inference.liver.phantom import lesion_measurements

log = logging.getLogger("pacsnode.liver")

#: ``seeds`` value of a site lesion in the training dataset (phantom lesions carry their phantom's seed).
SITE_LESION = -1


#: The class codes a site's SEG uses, as written in messages.
_CLASS_CODES = ", ".join(f"{k.code.scheme_designator} {k.code.value} ({k.code.meaning})" for k in LesionKind)


class SiteDataError(ValueError):
    """A site's training data cannot be used; the message names the study or segment and the fix."""


def _segment_kinds(seg_dataset: object) -> dict[int, LesionKind]:
    """Segment number → class, from each segment's Segmented Property Type."""
    kinds = {}
    for item in getattr(seg_dataset, "SegmentSequence", []):
        types = item.get("SegmentedPropertyTypeCodeSequence") or []
        if not types:
            continue
        code = Code(str(types[0].CodeValue), str(types[0].CodingSchemeDesignator), str(types[0].CodeMeaning))
        try:
            kinds[int(item.SegmentNumber)] = kind_of(code)
        except KeyError:
            continue
    return kinds


def _studies(data_dir: Path) -> list[tuple[Path, StudyInput]]:
    """Every study under *data_dir* (files grouped by StudyInstanceUID), with the folder holding its files."""
    paths = [p for p in data_dir.rglob("*") if p.is_file() and p.name != "clinical.json"]
    return [(Path(os.path.commonpath([str(p.parent) for p in study.all_paths])), study)
            for _uid, study in sorted(studies_from_files(paths).items())]


def _clinical(folder: Path) -> dict:
    from node.clinical import ClinicalData, ClinicalDataError

    path = folder / "clinical.json"
    if not path.is_file():
        return {}
    try:
        return ClinicalData.parse(json.loads(path.read_text())).given()
    except (json.JSONDecodeError, ClinicalDataError) as exc:
        raise SiteDataError(f"{path}: {exc}") from exc


def read_site_lesions(data_dir: str | Path, log_line: Callable[[str], None] = print
                      ) -> tuple[list[tuple[np.ndarray, int, float, np.ndarray]], list[str]]:
    """Every classifiable lesion of the labelled studies under *data_dir*.

    Returns ``(lesions, studies)``: per lesion ``(patches [S, 7, P, P] in
    :data:`SIX` order plus the mask, class index, size feature, clinical
    vector)``, and the folders of the studies used. Studies that cannot be
    used are reported through *log_line* and skipped; none usable at all
    raises :class:`SiteDataError`.
    """
    from inference.liver.classification import (
        ClassificationOptions,
        header_age_and_sex,
        lesions_from_study_seg,
    )
    from inference.liver.sequences import identify_lesion_sequences

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise SiteDataError(f"--data {data_dir} is not a folder of labelled studies")
    options = ClassificationOptions.from_options({})
    lesions: list[tuple[np.ndarray, int, float, np.ndarray]] = []
    used: list[str] = []
    for folder, study in _studies(data_dir):
        try:
            found = identify_lesion_sequences(study.series, options.rules)
            if not found.has_six:
                raise SiteDataError(f"it lacks the {', '.join(found.missing)} sequence(s); the classifiers are "
                                    "trained on all six")
            grid = lesions_from_study_seg(study, found, options)
            if grid is None:
                raise SiteDataError("it holds no SEG of its lesions")
            if grid.seg_is_new:  # a segment was split into several lesions, whose classes may differ
                raise SiteDataError("a lesion segment holds several separate lesions; give each lesion its own "
                                    "segment so each gets its class")
            kinds = _segment_kinds(grid.seg)
            clinical = _clinical(folder)
            age, sex = header_age_and_sex(grid.source)
            vector = encode_clinical(clinical, age, sex)
            images = np.stack([grid.images[name] for name in SIX])
            count = 0
            for lesion in grid.lesions:
                kind = kinds.get(lesion.segment_number)
                if kind is None:
                    raise SiteDataError(f"segment {lesion.segment_number} ({lesion.label!r}) has no class: set its "
                                        f"Segmented Property Type to one of {_CLASS_CODES}")
                if lesion_measurements(lesion.mask, grid.reference.spacing)[3] < MIN_CLASSIFIED_DIAMETER_MM:
                    continue
                patches = extract_lesion_patches(images, grid.reference.spacing, lesion.mask, grid.liver)
                lesions.append((patches.patches.astype(np.float16), int(kind), patches.size_feature, vector))
                count += 1
        except (SiteDataError, PipelineInputError) as exc:
            log_line(f"site study {folder} skipped: {exc}")
            continue
        used.append(str(folder))
        log_line(f"site study {folder}: {count} lesion(s)")
    if not lesions:
        raise SiteDataError(f"no usable labelled lesion under {data_dir} (see the messages above)")
    return lesions, used
