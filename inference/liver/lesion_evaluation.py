"""``pacsnode evaluate liver-cls``: the seed's Tables 1–4 for the lesion classifiers A–G on held-out phantoms.

Held-out cases are phantoms with seeds from 0 (training uses 10000 on), each
with one lesion (``n_lesions=1``) whose kind cycles over the seven classes;
a seed whose lesion comes out smaller than
:data:`~inference.liver.lesion_patches.MIN_CLASSIFIED_DIAMETER_MM` (or does
not fit in the liver) is skipped and the next seed gets the same kind, so
the classes are balanced. A case is a patient, as in seed 003. Patches come
from the pipeline's path: :func:`~inference.liver.lesion_patches.extract_lesion_patches`
on the aligned sequences with the truth lesion and liver masks.

* Table 1: 7-way models A (six sequences) and B (three unenhanced): per-class
  AUC with DeLong 95 % CI, sensitivity and specificity with Clopper–Pearson
  CI, and the DeLong test A vs B per class;
* Table 2: binary models C and D: the same, and DeLong C vs D;
* Table 3: 3-way models E, F, G on the malignant cases: per class, with
  DeLong E vs G, F vs G and E vs F;
* Table 4: accuracy (Clopper–Pearson CI) and Cohen's kappa with its z test per model;

and each model's confusion matrix. Research use only.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference import statistics as st
from inference.liver.lesion_classifier import (
    LesionClassifier,
    LesionModelError,
    default_manifest,
)
from inference.liver.lesion_kinds import LesionKind
from inference.liver.lesion_models import (
    CLINICAL_ENCODING_VERSION,
    CLINICAL_FEATURES,
    MODEL_SPECS,
    SIX,
    target_index,
)
from inference.liver.lesion_patches import (
    CLS_SHAPE,
    CLS_SPACING,
    MIN_CLASSIFIED_DIAMETER_MM,
    LesionPatches,
)
from inference.liver.lesion_training import (
    FIRST_TRAINING_SEED,
    MODEL_CARD,
    clinical_vector,
    phantom_lesions,
)

__all__ = ["EvaluationCases", "evaluate", "evaluation_cases", "format_tables", "main", "record_metrics",
           "write_model_card"]

DEFAULT_CASES = 140
_CACHE_VERSION = 1


@dataclass
class EvaluationCases:
    """One lesion per held-out case; case *i* owns ``patches[offsets[i]:offsets[i + 1]]`` (six sequences + mask)."""

    patches: np.ndarray
    offsets: np.ndarray
    boxes: np.ndarray
    slice_indices: np.ndarray
    kinds: np.ndarray
    diameters: np.ndarray
    clinical: np.ndarray
    seeds: np.ndarray
    skipped_seeds: np.ndarray

    def __len__(self) -> int:
        return len(self.kinds)

    def lesion(self, i: int, sequences: Sequence[str]) -> LesionPatches:
        """Case *i*'s patches with the channels of *sequences* (and the mask), as the pipeline would cut them."""
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        channels = [SIX.index(s) for s in sequences] + [len(SIX)]
        return LesionPatches(patches=self.patches[lo:hi][:, channels].astype(np.float32),
                             slice_indices=tuple(int(z) for z in self.slice_indices[lo:hi]),
                             boxes=self.boxes[lo:hi], diameter_mm=float(self.diameters[i]),
                             references=np.ones((hi - lo, len(sequences)), np.float32))


def evaluation_cases(cases: int, first_seed: int = 0, cache_dir: Path | None = None,
                     log: Callable[[str], None] = print) -> EvaluationCases:
    """Simulate (or read from the cache) *cases* held-out cases from *first_seed* on."""
    from inference.liver.phantom import simulate_liver_mr

    if cases < len(LesionKind):
        raise ValueError(f"evaluate at least {len(LesionKind)} cases, one per class (got {cases})")
    if first_seed < 0:
        raise ValueError(f"held-out seeds start at 0 (got {first_seed})")
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"liver-cls-eval-v{_CACHE_VERSION}-{first_seed}-{cases}.npz"
        if cache.is_file():
            with np.load(cache) as data:
                return EvaluationCases(**{k: data[k] for k in data.files})
    patches, boxes, slices = [], [], []
    offsets, kinds, diameters, clinical, seeds, skipped = [0], [], [], [], [], []
    seed = first_seed
    started = time.perf_counter()
    while len(kinds) < cases:
        if seed >= FIRST_TRAINING_SEED:
            raise ValueError(f"held-out seeds ran into the training range ({FIRST_TRAINING_SEED}); ask for fewer cases")
        kind = LesionKind(len(kinds) % len(LesionKind))
        phantom = simulate_liver_mr(seed, shape=CLS_SHAPE, spacing=CLS_SPACING, channels=SIX, n_lesions=1,
                                    lesion_kinds=[kind])
        found = phantom_lesions(phantom)
        if not found:
            skipped.append(seed)
        else:
            _truth, lesion = found[0]
            patches.append(lesion.patches.astype(np.float16))
            boxes.append(lesion.boxes)
            slices.append(np.asarray(lesion.slice_indices, np.int64))
            offsets.append(offsets[-1] + len(lesion.patches))
            kinds.append(int(kind))
            diameters.append(lesion.diameter_mm)
            clinical.append(clinical_vector(phantom.clinical))
            seeds.append(seed)
            if len(kinds) % 35 == 0:
                log(f"held-out cases: {len(kinds)}/{cases} ({time.perf_counter() - started:.0f} s)")
        seed += 1
    result = EvaluationCases(np.concatenate(patches), np.asarray(offsets, np.int64), np.concatenate(boxes),
                             np.concatenate(slices), np.asarray(kinds, np.int64), np.asarray(diameters, np.float64),
                             np.stack(clinical).astype(np.float32), np.asarray(seeds, np.int64),
                             np.asarray(skipped, np.int64))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(cache.name + ".partial.npz")
        np.savez(partial, **asdict(result))
        partial.replace(cache)
    return result


def _predict(classifier: LesionClassifier, data: EvaluationCases, cases: np.ndarray) -> np.ndarray:
    rows = []
    for i in cases:
        vector = data.clinical[i] if classifier.uses_clinical else None
        rows.append(classifier.classify(data.lesion(int(i), classifier.sequences), vector).probabilities)
    return np.asarray(rows)


def evaluate(manifests: Mapping[str, Path] | None = None, cases: int = DEFAULT_CASES, first_seed: int = 0,
             cache_dir: Path | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every model's report and the comparisons of Tables 1–3 as one JSON-serialisable dict.

    *manifests* maps model letters to manifests (default: the committed ones, all seven).
    """
    manifests = dict(manifests) if manifests else {x: default_manifest(x) for x in MODEL_SPECS}
    classifiers = {letter: LesionClassifier.load(path, device="cpu") for letter, path in sorted(manifests.items())}
    started = time.perf_counter()
    data = evaluation_cases(cases, first_seed, cache_dir, log)
    simulate_s = time.perf_counter() - started
    models: dict[str, Any] = {}
    probabilities: dict[str, np.ndarray] = {}
    truths: dict[str, np.ndarray] = {}
    for letter, classifier in classifiers.items():
        spec = classifier.spec
        targets = [target_index(spec, k) for k in data.kinds]
        covered = np.array([i for i, t in enumerate(targets) if t is not None], dtype=np.int64)
        truth = np.array([targets[i] for i in covered], dtype=np.int64)
        probs = _predict(classifier, data, covered)
        probabilities[letter], truths[letter] = probs, truth
        report = st.one_vs_rest_report(probs, truth, spec.classes)
        models[letter] = {"version": classifier.version, "task": spec.task, "sequences": list(spec.sequences),
                          "uses_clinical": spec.uses_clinical, "report": report}
        log(f"model {letter}: accuracy {report['accuracy']['estimate']:.3f} on {len(truth)} cases")
    comparisons = {}
    for a, b in (("A", "B"), ("C", "D"), ("E", "G"), ("F", "G"), ("F", "E")):
        if a in probabilities and b in probabilities:
            comparisons[f"{a} vs {b}"] = st.compare_auc_per_class(
                probabilities[a], probabilities[b], truths[a], MODEL_SPECS[a].classes)
    return {
        "held_out": {"first_seed": first_seed, "cases": len(data), "last_seed": int(data.seeds[-1]),
                     "skipped_seeds": len(data.skipped_seeds),
                     "skipped_because": f"lesion under {MIN_CLASSIFIED_DIAMETER_MM:g} mm or did not fit in the liver",
                     "cases_per_kind": {k.name.lower(): int((data.kinds == k).sum()) for k in LesionKind},
                     "malignant_cases": int(sum(LesionKind(int(k)).malignant for k in data.kinds)),
                     "median_diameter_mm": float(np.median(data.diameters)),
                     "simulation_seconds": round(simulate_s, 1),
                     "seconds": round(time.perf_counter() - started, 1)},
        "models": models,
        "comparisons": comparisons,
        "intended_use": "research use only; simulated data",
    }


# --------------------------------------------------------------------------- tables


def _ci(entry: Mapping[str, Any] | None, percent: bool = False) -> str:
    if entry is None or entry.get("estimate") is None:
        return "n/a"
    scale, digits, unit = (100.0, 1, "%") if percent else (1.0, 3, "")
    return f"{entry['estimate'] * scale:.{digits}f}{unit} ({entry['low'] * scale:.{digits}f}–{entry['high'] * scale:.{digits}f})"


def _class_table(report: Mapping[str, Any], models: Sequence[str], comparisons: Mapping[str, Any]) -> list[str]:
    present = [m for m in models if m in report["models"]]
    if not present:
        return ["(no model)"]
    lines = [(f"{'model':<6}{'class':<17}{'n':>4}  {'AUC (95% CI)':<22}{'sensitivity (95% CI)':<24}"
             f"{'specificity (95% CI)':<24}")]
    for letter in present:
        for entry in report["models"][letter]["report"]["per_class"]:
            lines.append(f"{letter:<6}{entry['class']:<17}{entry['n_cases']:>4}  {_ci(entry['auc']):<22}"
                         f"{_ci(entry['sensitivity'], True):<24}{_ci(entry['specificity'], True):<24}")
    for name, rows in comparisons.items():
        if name.split(" vs ")[0] in present:
            cells = ", ".join(f"{r['class']} ΔAUC {r['difference']:+.3f} p={r['p_value']:.3g}"
                              if r["p_value"] is not None else f"{r['class']} n/a" for r in rows)
            lines.append(f"DeLong {name}: {cells}")
    return lines


def format_tables(report: Mapping[str, Any]) -> str:
    """The report as the seed's Tables 1–4 plus confusion matrices, as plain text."""
    held = report["held_out"]
    lines = [(f"Liver lesion classifiers on {held['cases']} held-out phantom cases (seeds {held['first_seed']}–"
             f"{held['last_seed']}, {held['skipped_seeds']} skipped: {held['skipped_because']}); "
             "research use only, simulated data"), ""]
    comparisons = report["comparisons"]
    for title, models, keys in (("Table 1: seven-way classifiers (A six sequences, B three unenhanced)", "AB",
                                 ["A vs B"]),
                                ("Table 2: binary benign/malignant (C six, D three)", "CD", ["C vs D"]),
                                (("Table 3: malignant subtype on malignant cases (E image, F six + clinical, "
                                 "G three + clinical)"), "EFG", ["E vs G", "F vs G", "F vs E"])):
        lines += [title, "-" * len(title)]
        lines += _class_table(report, list(models), {k: comparisons[k] for k in keys if k in comparisons})
        lines.append("")
    title = "Table 4: agreement with the truth"
    lines += [title, "-" * len(title), f"{'model':<6}{'n':>4}  {'accuracy (95% CI)':<24}{'kappa':>7}{'z':>8}{'p':>10}"]
    for letter, model in sorted(report["models"].items()):
        r = model["report"]
        k = r["kappa"]
        lines.append(f"{letter:<6}{r['n_cases']:>4}  {_ci(r['accuracy'], True):<24}{k['estimate']:>7.3f}"
                     f"{k['z']:>8.2f}{k['p_value']:>10.2g}")
    lines.append("")
    for letter, model in sorted(report["models"].items()):
        r = model["report"]
        lines.append(f"confusion matrix, model {letter} (rows truth, columns predicted)")
        names = [n[:9] for n in r["class_names"]]
        lines.append(" " * 16 + " ".join(f"{n:>9}" for n in names))
        for name, row in zip(r["class_names"], r["confusion_matrix"]):
            lines.append(f"{name:<16}" + " ".join(f"{v:>9}" for v in row))
        lines.append("")
    return "\n".join(lines)


def _summary(report: Mapping[str, Any], letter: str) -> dict[str, Any]:
    r = report["models"][letter]["report"]
    return {
        "held_out_phantoms": {k: report["held_out"][k] for k in ("first_seed", "last_seed", "cases", "seconds")},
        "cases": r["n_cases"],
        "accuracy": r["accuracy"],
        "kappa": r["kappa"],
        "per_class": [{"class": e["class"], "n": e["n_cases"], "auc": e["auc"], "sensitivity": e["sensitivity"],
                       "specificity": e["specificity"]} for e in r["per_class"]],
        "confusion_matrix": r["confusion_matrix"],
    }


def record_metrics(report: Mapping[str, Any], manifests: Mapping[str, Path]) -> None:
    """Store each model's held-out figures in its manifest's ``metrics`` (the weights and sha256 do not change)."""
    for letter, path in manifests.items():
        if letter not in report["models"]:
            continue
        manifest = json.loads(Path(path).read_text())
        manifest["metrics"] = _summary(report, letter)
        Path(path).write_text(json.dumps(manifest, indent=2) + "\n")


def _timing(manifests: Mapping[str, Mapping[str, Any]]) -> str:
    """The measured stages of the training run, from the manifests (simulation, training, evaluation)."""
    first = next(iter(manifests.values()))
    simulate = float(first["training"]["data"]["simulation_seconds"])
    train = sum(float(m["training"]["training_seconds"]) for m in manifests.values())
    evaluate_s = float((first.get("metrics") or {}).get("held_out_phantoms", {}).get("seconds", 0.0))
    total = simulate + train + evaluate_s
    return (f"measured on one core: simulation {simulate:.0f} s, training {train:.0f} s, evaluation "
            f"{evaluate_s:.0f} s, {total / 60:.0f} min in all; simulation is 0 s when the patch cache is reused")


def write_model_card(out_dir: Path, report: Mapping[str, Any]) -> Path:
    """Write ``LIVER_CLS_MODEL_CARD.md`` from the manifests in *out_dir* and the evaluation *report*."""
    out_dir = Path(out_dir)
    manifests = {}
    for letter, spec in MODEL_SPECS.items():
        path = out_dir / f"{spec.version}.json"
        if path.is_file():
            manifests[letter] = json.loads(path.read_text())
    if not manifests:
        raise FileNotFoundError(f"no lesion classifier manifests in {out_dir}")
    first = next(iter(manifests.values()))
    settings, data = first["training"]["settings"], first["training"]["data"]
    lines = [
        "# Liver lesion classifiers A–G (`liver-cls-*-v1`) — model card",
        "",
        "**Research use only. Not a medical device. Trained and evaluated on simulated data only.**",
        "",
        ("Seed 003 (Zhen et al. 2020) model family: 7-way (A six sequences, B three unenhanced), benign/malignant "
        "(C six, D three), malignant subtype HCC / metastasis / other primary malignancy (E six, image only; "
        "F six + clinical; G three + clinical). Unenhanced = T2, DWI, pre-contrast T1."),
        "",
        "## Model",
        "",
        (f"`LesionNet` (inference/liver/lesion_models.py): residual 2D CNN, widths "
        f"{first['architecture']['widths']}, global average pooling, image features concatenated with "
        "log(axial diameter) and, for F and G, the encoded clinical vector "
        f"({len(CLINICAL_FEATURES)} values, `{CLINICAL_ENCODING_VERSION}`) before a two-layer head. "
        "Inception-ResNet V2 (the seed's network, ~55 M parameters at 299×299) is far too big for a CPU node "
        "and for simulated training data."),
        "",
        (f"Input: per axial slice through the lesion (slices with ≥ 30 % of its largest area), a square crop "
        f"max(1.5 × diameter + 15 mm, 30 mm) resampled to {first['patch_size']}×{first['patch_size']}, each "
        "sequence divided by the median of the surrounding liver, plus the lesion mask. Per-slice softmax "
        f"summed over slices and normalised. Lesions under {MIN_CLASSIFIED_DIAMETER_MM:g} mm axial diameter "
        "are not classified."),
        "",
        "## Data",
        "",
        f"{data['lesions']} lesions ({data['slice_patches']} slice patches) from phantoms "
        f"{data['phantom_seeds'][0]}–{data['phantom_seeds'][1]} of `simulate_liver_mr` "
        f"({'×'.join(map(str, data['shape_zyx']))} voxels, {data['spacing_zyx_mm']} mm, six sequences, "
        f"{data['lesions_per_case']}), lesions per kind: "
        + ", ".join(f"{k} {v}" for k, v in data["lesions_per_kind"].items())
        + ". Held-out evaluation seeds are 0–9999 and never used for training. No site data.",
        "",
        "## Recipe",
        "",
        (f"{first['training']['optimiser']}; {first['training']['loss']}; {first['training']['sampling']}; "
        f"augmentation: {first['training']['augmentation']}. Epochs: A–D {settings['epochs']}, E–G "
        f"{settings['malignant_epochs']} (malignant lesions only). Seed {settings['seed']}, "
        f"{settings['threads']} thread(s), torch {first['training']['torch']}."),
        "",
        f"Reproduce ({_timing(manifests)}):",
        "",
        "```",
        (f"pacsnode train liver-cls --seed {settings['seed']} --cases {settings['cases']} "
        f"--epochs {settings['epochs']} --malignant-epochs {settings['malignant_epochs']} "
        f"--evaluation-cases {settings['evaluation_cases']}"),
        f"pacsnode evaluate liver-cls --cases {report['held_out']['cases']} --seed {report['held_out']['first_seed']}",
        "```",
        "",
        "## Models",
        "",
        "| model | version | task | sequences | clinical | parameters | training lesions | sha256 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for letter, m in manifests.items():
        lines.append(f"| {letter} | {m['version']} | {m['task']} | {', '.join(m['sequences'])} | "
                     f"{'yes' if m['uses_clinical'] else 'no'} | {m['training']['parameters']} | "
                     f"{m['training']['lesions']} | `{m['weights_sha256'][:16]}…` |")
    lines += ["", "## Held-out evaluation", "", "```", format_tables(report), "```", "",
              "## Limitations", "",
              ("* Trained and evaluated on the project's simulator only: its seven lesion classes are "
              "parametric tissue models with overlapping ranges, not pathology-proven lesions; figures say "
              "how well the models learn the simulator, not how they would do on patients."),
              ("* The truth lesion and liver masks are used to cut patches here; in the pipeline they come from "
              "segmentation and registration, whose errors are not in these figures."),
              ("* Clinical data are simulated conditional on the lesion kind; models F and G learn those "
               "simulated associations. In training each clinical field is blanked to missing with probability "
               f"{settings.get('clinical_dropout', 0)} so partial clinical data still work; the evaluation "
               "gives F and G every field."),
              "* Lesions under 10 mm are not classified.",
              ""]
    path = out_dir / MODEL_CARD
    path.write_text("\n".join(lines))
    return path



def main(argv: Sequence[str] | None = None) -> int:
    """``pacsnode evaluate liver-cls``: Tables 1–4 of seed 003 for models A–G on held-out phantoms."""
    parser = argparse.ArgumentParser(prog="pacsnode evaluate liver-cls", description=main.__doc__)
    parser.add_argument("--cases", type=int, default=DEFAULT_CASES, help="held-out cases (one lesion each)")
    parser.add_argument("--seed", type=int, default=0, help="first held-out phantom seed")
    parser.add_argument("--weights", type=Path, default=None, help="folder of manifests (default: committed)")
    parser.add_argument("--models", default="ABCDEFG", help="letters of the models to evaluate")
    parser.add_argument("--cache", type=Path, default=None, help="cache the simulated held-out patches here")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pipeline", choices=["seg", "segment"], default=None,
                        help="instead of the model tables: run the whole liver-classification pipeline on held-out "
                             "DICOM studies, lesions from the site's ROI (seg) or from its own segmentation (segment)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.pipeline:
        from inference.liver.lesion_pipeline_evaluation import (
            evaluate_pipeline,
            format_pipeline_report,
        )

        if args.seed + 10 * args.cases >= FIRST_TRAINING_SEED:
            parser.exit(2, f"pacsnode evaluate liver-cls: held-out seeds must stay below {FIRST_TRAINING_SEED}\n")
        options = {"weights": {x: str(args.weights / f"{MODEL_SPECS[x].version}.json") for x in MODEL_SPECS}} \
            if args.weights else {}
        report = evaluate_pipeline(args.cases, args.seed, args.pipeline, options,
                                   log=(lambda _m: None) if args.json else print)
        print(json.dumps(report, indent=2) if args.json else format_pipeline_report(report))
        return 0
    letters = [c for c in args.models.upper() if c in MODEL_SPECS]
    manifests = {x: (args.weights / f"{MODEL_SPECS[x].version}.json" if args.weights else default_manifest(x))
                 for x in letters}
    if args.seed + args.cases >= FIRST_TRAINING_SEED:
        parser.exit(2, f"pacsnode evaluate liver-cls: held-out seeds must stay below {FIRST_TRAINING_SEED}\n")
    try:
        report = evaluate(manifests, args.cases, args.seed, args.cache,
                          log=(lambda _m: None) if args.json else print)
    except (LesionModelError, ValueError) as exc:
        parser.exit(2, f"pacsnode evaluate liver-cls: {exc}\n")
    print(json.dumps(report, indent=2) if args.json else format_tables(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
