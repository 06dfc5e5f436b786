"""End-to-end accuracy of the ``liver-classification`` pipeline on held-out six-sequence phantom studies.

The model tables (:mod:`inference.liver.lesion_evaluation`) cut patches with
the truth masks on truth-aligned sequences. Here each held-out case is written
as DICOM (as ``pacsnode synth liver-lesions`` does), handed to the pipeline
as the node would hand it over, and the seven-class answer in the SR for the
case's lesion is compared with the truth. Two ways in:

* ``seg``: the truth SEG travels with the study as the site's ROI
  (registration, patches, models and the SR are in the figure);
* ``segment``: no SEG, the pipeline finds the lesion with the
  liver-segmentation model first (segmentation errors are in the figure too;
  a lesion the model misses, or finds under 10 mm, counts as "missed").

The SR's lesion is matched to the truth lesion by overlap of its SEG segment
on the portal grid. Research use only; simulated data.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_io.reader import read_series
from dicom_io.seg_reader import read_segmentation
from inference.base import PipelineError, StudyInput, studies_from_files
from inference.liver.lesion_kinds import LESION_CLASS_QUESTION, LesionKind, kind_of
from inference.liver.lesion_patches import MIN_CLASSIFIED_DIAMETER_MM
from inference.statistics import accuracy, confusion_matrix

#: Column of the confusion matrix for a truth lesion without an answer in the SR.
MISSED = len(LesionKind)


def _study(folder: Path, with_seg: bool) -> StudyInput:
    paths = [p for p in folder.rglob("*.dcm") if "ground_truth" not in p.parts]
    if with_seg:
        paths.append(folder / "ground_truth" / "truth-seg.dcm")
    [study] = studies_from_files(paths).values()
    return study


def _top_class(group: hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations) -> LesionKind:
    """The seven-class answer of an SR lesion group with the highest probability."""
    answers = {(e.name.value, e.value.value): e.value for e in group.get_qualitative_evaluations()}
    best: tuple[float, LesionKind] | None = None
    for measurement in group.get_measurements(name=codes.DCM.Probability):
        for modifier in measurement[0].ContentSequence:
            if modifier.RelationshipType != "HAS CONCEPT MOD" or modifier.ValueType != "CODE":
                continue
            key = (modifier.ConceptNameCodeSequence[0].CodeValue, modifier.ConceptCodeSequence[0].CodeValue)
            if key[0] == LESION_CLASS_QUESTION.value and (best is None or float(measurement.value) > best[0]):
                best = (float(measurement.value), kind_of(answers[key]))
    if best is None:
        raise ValueError("an SR lesion group without seven-class probabilities")
    return best[1]


def answer_for_lesion(outputs: list[Dataset], seg: Dataset, portal_paths: list[Path],
                      truth_mask: np.ndarray) -> int:
    """The class the pipeline's SR gives the lesion that overlaps *truth_mask* most, or :data:`MISSED`."""
    [sr] = [ds for ds in outputs if ds.Modality == "SR"]
    groups = hd.sr.ComprehensiveSR.from_dataset(sr).content.get_volumetric_roi_measurement_groups()
    if not groups:
        return MISSED
    placed = read_segmentation(seg, read_series(portal_paths), threshold=0.5)
    overlaps = []
    for group in groups:
        [number] = group.referenced_segment.referenced_segment_numbers
        overlaps.append(int(np.count_nonzero(placed.masks[int(number)] & truth_mask)))
    best = int(np.argmax(overlaps))
    return int(_top_class(groups[best])) if overlaps[best] > 0 else MISSED


def evaluate_pipeline(cases: int, first_seed: int = 0, lesions: str = "seg", options: dict[str, Any] | None = None,
                      log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the pipeline on *cases* held-out studies (kinds cycling, one lesion ≥ 10 mm each); the report."""
    import json

    from inference.liver.classification import LiverClassificationPipeline
    from inference.liver.phantom_dicom import write_liver_lesion_study

    if lesions not in ("seg", "segment"):
        raise ValueError(f"lesions must be seg or segment, not {lesions!r}")
    truth_kinds, answers, seconds, seeds = [], [], [], []
    seed = first_seed
    with tempfile.TemporaryDirectory(prefix="liver-cls-pipeline-") as tmp:
        for i in range(cases):
            kind = LesionKind(i % len(LesionKind))
            while True:  # the next seed whose single lesion is big enough to classify
                folder = write_liver_lesion_study(Path(tmp) / f"s{seed}", seed, lesion_kinds=[kind])
                truth = json.loads((folder / "ground_truth" / "truth.json").read_text())
                seed += 1
                if truth["lesions"] and truth["lesions"][0]["longest_axial_diameter_mm"] >= MIN_CLASSIFIED_DIAMETER_MM:
                    break
                shutil.rmtree(folder)
            labels = np.load(folder / "ground_truth" / "labels.npz")["lesion_labels"]
            portal = sorted((folder / truth["series"]["portal"]["folder"]).glob("*.dcm"))
            started = time.perf_counter()
            try:
                outputs = list(LiverClassificationPipeline().run(_study(folder, lesions == "seg"),
                                                                 {**(options or {}), "lesions": lesions}))
            except PipelineError as exc:
                log(f"case {i + 1} (seed {seed - 1}): the pipeline failed: {exc}")
                outputs = []
            seconds.append(time.perf_counter() - started)
            if outputs:
                seg = (next(ds for ds in outputs if ds.Modality == "SEG") if lesions == "segment"
                       else folder / "ground_truth" / "truth-seg.dcm")
                answer = answer_for_lesion(outputs, seg, portal, labels == truth["lesions"][0]["index"])
            else:
                answer = MISSED
            truth_kinds.append(int(kind))
            answers.append(answer)
            seeds.append(seed - 1)
            shutil.rmtree(folder)
            log(f"case {i + 1}/{cases} (seed {seed - 1}): {kind.name.lower()} -> "
                f"{'missed' if answer == MISSED else LesionKind(answer).name.lower()} ({seconds[-1]:.1f} s)")
    correct = accuracy(np.asarray(answers), np.asarray(truth_kinds))
    matrix = confusion_matrix(np.asarray(answers), np.asarray(truth_kinds), MISSED + 1)[:MISSED]
    return {"lesions": lesions, "cases": cases, "seeds": seeds,
            "accuracy": {"value": correct.estimate, "low": correct.low, "high": correct.high},
            "missed": int(sum(a == MISSED for a in answers)),
            "confusion": {"rows_truth": [k.name.lower() for k in LesionKind],
                          "columns_predicted": [k.name.lower() for k in LesionKind] + ["missed"],
                          "counts": matrix.tolist()},
            "seconds_per_case": float(np.mean(seconds))}


def format_pipeline_report(report: dict[str, Any]) -> str:
    """The report as text: accuracy with its CI and the confusion matrix."""
    acc = report["accuracy"]
    way = "the site's ROI (truth SEG)" if report["lesions"] == "seg" else "the pipeline's own segmentation"
    title = (f"liver-classification pipeline on {report['cases']} held-out studies, lesions from {way} "
             "(research use only, simulated data)")
    summary = (f"seven-class accuracy {100 * acc['value']:.1f}% (95% CI {100 * acc['low']:.1f}–"
               f"{100 * acc['high']:.1f}), lesions missed {report['missed']}, {report['seconds_per_case']:.1f} s per study")
    lines = [title, summary, "confusion matrix (rows truth, columns the SR's answer)",
             " " * 16 + "".join(f"{c[:9]:>10}" for c in report["confusion"]["columns_predicted"])]
    for name, row in zip(report["confusion"]["rows_truth"], report["confusion"]["counts"], strict=True):
        lines.append(f"{name:16}" + "".join(f"{v:>10}" for v in row))
    return "\n".join(lines)
