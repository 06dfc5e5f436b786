"""Benchmark: the liver-classification pipeline on a full six-sequence MR study with three lesions.

Writes, with the liver simulator's DICOM writers, a study of six series
(T2, DWI b800, T1 pre-contrast, arterial, portal venous, delayed) of
256×256×36 (1.5 × 1.5 × 6 mm) with three lesions, motion between the
breath-holds, and the ground-truth SEG (the site's radiologist ROI). Then, in
a fresh Python process each:

* **peer**: reading every series of the study into volumes with dicom_io
  alone (what any consumer of the study pays before a model runs);
* **with SEG**: ``LiverClassificationPipeline().run`` on the study with the
  lesion SEG (sequence identification, reading, registration of five
  sequences onto the SEG's series, models A, C and E, saliency, SR and key
  images);
* **segmenting**: the same study without the SEG, so the pipeline first
  finds the lesions with the liver-segmentation model (``lesions: segment``).

Prints seconds and peak resident memory (VmHWM), ratios to the peer, and
whether the issue's target (three lesions classified in under 20 s on 2 CPU
cores) is met by the run with the SEG. Torch uses ``--threads`` threads
(default 2: the issue's machine).

Run from the repository root::

    .venv/bin/python benchmarks/bench_liver_cls.py [--threads 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_liver_seg import peak_rss_bytes, study_input

TARGET_SECONDS = 20.0
SHAPE, SPACING = (36, 256, 256), (6.0, 1.5, 1.5)
#: Three lesions of different classes, large enough to be classified.
KINDS = (4, 1, 5)  # HCC, haemangioma, metastasis


def _lesion_text(lesion: dict[str, Any]) -> str:
    return f"{lesion['kind']} {lesion['longest_axial_diameter_mm']:.0f} mm"


def write_study(root: Path, seed: int) -> tuple[Path, Path]:
    """The study with its lesion SEG as a series, and the same study without it."""
    from inference.liver.phantom_dicom import write_liver_lesion_study

    started = time.perf_counter()
    with_seg = write_liver_lesion_study(root / "with-seg", seed, lesion_kinds=list(KINDS), shape=SHAPE,
                                        spacing=SPACING)
    truth = with_seg / "ground_truth"
    without = root / "without-seg"
    shutil.copytree(with_seg, without, ignore=shutil.ignore_patterns("ground_truth"))
    (with_seg / "99_lesion_seg").mkdir()
    shutil.copy(truth / "truth-seg.dcm", with_seg / "99_lesion_seg" / "seg.dcm")
    lesions = json.loads((truth / "truth.json").read_text())["lesions"]
    print(f"wrote the six-sequence study ({SHAPE[2]}x{SHAPE[1]}x{SHAPE[0]}, {len(lesions)} lesions: "
          f"{', '.join(_lesion_text(x) for x in lesions)}) in "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    return with_seg, without


def child(mode: str, folder: Path, threads: int) -> dict[str, Any]:
    """One measurement in this (fresh) process; returns seconds and peak memory."""
    import logging

    import torch

    torch.set_num_threads(threads)
    study = study_input(folder)
    extras: dict[str, Any] = {}
    started = time.perf_counter()
    if mode == "read":
        from dicom_io.reader import read_series

        extras["voxels"] = sum(read_series(s.paths, skip_non_images=True).array.size
                               for s in study.series if (s.modality or "") != "SEG")
    else:
        from inference.base import PipelineError
        from inference.liver.classification import LiverClassificationPipeline

        class Capture(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if record.getMessage() == "liver lesions classified":
                    extras.update(lesions=record.__dict__.get("lesions"))

        logging.getLogger("pacsnode.liver").addHandler(Capture())
        logging.getLogger("pacsnode.liver").setLevel(logging.INFO)
        options = {"lesions": "segment"} if mode == "segmenting" else {"lesions": "seg"}
        try:
            extras["objects"] = len(LiverClassificationPipeline().run(study, options))
        except PipelineError as exc:
            extras["error"] = str(exc)
    return {"mode": mode, "seconds": time.perf_counter() - started, "peak_rss_bytes": peak_rss_bytes(), **extras}


def measure(mode: str, folder: Path, threads: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run([sys.executable, __file__, "--child", mode, "--study", str(folder),
                             "--threads", str(threads)], capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{mode} on {folder} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep", type=Path, default=None, help="Write the study here and keep it.")
    parser.add_argument("--child", choices=["read", "with-seg", "segmenting"], help=argparse.SUPPRESS)
    parser.add_argument("--study", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.study, args.threads)))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-liver-cls-") as tmp:
        root = args.keep or Path(tmp)
        with_seg, without = write_study(root, args.seed)
        print(f"{os.cpu_count()} CPU(s) visible, torch threads {args.threads}", flush=True)
        peer = measure("read", without, args.threads)
        runs = {"with-seg": measure("with-seg", with_seg, args.threads),
                "segmenting": measure("segmenting", without, args.threads)}
        print(f"  dicom_io read (peer): {peer['seconds']:7.2f} s   peak RSS {peer['peak_rss_bytes'] / 1024**3:.2f} GiB")
        for name, run in runs.items():
            print(f"  pipeline, {name:10s}: {run['seconds']:7.2f} s   peak RSS {run['peak_rss_bytes'] / 1024**3:.2f} GiB"
                  f"   ({run.get('lesions')} lesion(s) classified, {run.get('objects')} objects; "
                  f"{run['seconds'] / peer['seconds']:.1f}x the peer's time)")
            if "error" in run:
                print(f"  FAILED: {run['error']}")
        target = runs["with-seg"]
        ok = target["seconds"] < TARGET_SECONDS and target.get("lesions") == len(KINDS) and "error" not in target
        print(f"  target: {len(KINDS)} lesions classified in < {TARGET_SECONDS:g} s (with SEG): "
              f"{'met' if ok else 'NOT met'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
