"""Benchmark: the liver-segmentation pipeline on a full-size DCE-MRI study and a full-size CT, seconds and memory.

Writes, with the liver simulator's DICOM writers, to a temporary folder:

* a DCE-MRI study of 4 phases (pre, arterial, portal, delayed) as separate
  series of 256×256×64 (1.5 × 1.5 × 3 mm), with motion between the phases;
* a portal venous CT of 512×512×100 (0.8 × 0.8 × 2.5 mm);
* a multi-phase CT: arterial and portal venous series of that size, with
  motion between them (the pipeline's multi-phase CT model).

Then, for each study, in a fresh Python process each (so one run's memory
cannot hide in another's):

* **peer**: reading every series of the study into volumes with dicom_io
  alone (what any consumer of the study pays before a model runs);
* **pipeline**: ``LiverSegmentationPipeline().run`` on the study: phase
  identification, reading, registration, the model with sliding windows,
  post-processing, SEG, SR and the overlay series.

Prints seconds and peak resident memory (``VmHWM`` of the measuring process,
which includes torch's CPU tensors; ``ru_maxrss`` would not do, since Linux
carries the parent's peak across fork and exec; on a GPU worker also torch's
peak GPU memory),
the pipeline's ratio to the peer, and whether the issue's targets (under 60 s
and under 4 GB each, on 2 CPU cores) are met. Torch uses ``--threads`` threads
(default 2: the issue's machine).

Run from the repository root::

    .venv/bin/python benchmarks/bench_liver_seg.py [--only mr|ct|ct-multiphase] [--threads 2] [--keep DIR]
        [--weights MR_MANIFEST] [--ct-weights CT_MANIFEST]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_SECONDS = 60.0
TARGET_BYTES = 4 * 1024**3
MR_SHAPE, MR_SPACING = (64, 256, 256), (3.0, 1.5, 1.5)
CT_SHAPE, CT_SPACING = (100, 512, 512), (2.5, 0.8, 0.8)
LABELS = {"mr": "MR 256x256x64 x 4 phases", "ct": "CT 512x512x100",
          "ct-multiphase": "CT 512x512x100 x 2 phases (arterial, portal)"}


def write_studies(root: Path, which: list[str], seed: int) -> dict[str, Path]:
    """The benchmark studies, written with the simulator's DICOM writers."""
    from inference.liver.phantom import simulate_liver_ct, simulate_liver_mr
    from inference.liver.phantom_dicom import (
        write_liver_ct_study,
        write_liver_dce_study,
    )
    from inference.liver.phases import CT_MULTIPHASE_PHASES

    studies = {}
    if "mr" in which:
        started = time.perf_counter()
        phantom = simulate_liver_mr(seed, shape=MR_SHAPE, spacing=MR_SPACING, n_lesions=3)
        studies["mr"] = write_liver_dce_study(phantom, root / "mr", seed=seed)
        print(f"wrote the MR study ({MR_SHAPE[2]}x{MR_SHAPE[1]}x{MR_SHAPE[0]} x 4 phases) in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        del phantom
    if "ct" in which:
        started = time.perf_counter()
        phantom = simulate_liver_ct(seed, shape=CT_SHAPE, spacing=CT_SPACING, n_lesions=3)
        studies["ct"] = write_liver_ct_study(phantom, root / "ct", seed=seed)
        print(f"wrote the CT study ({CT_SHAPE[2]}x{CT_SHAPE[1]}x{CT_SHAPE[0]}) in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        del phantom
    if "ct-multiphase" in which:
        started = time.perf_counter()
        phantom = simulate_liver_ct(seed, shape=CT_SHAPE, spacing=CT_SPACING, n_lesions=3, phases=CT_MULTIPHASE_PHASES)
        studies["ct-multiphase"] = write_liver_ct_study(phantom, root / "ct-multiphase", seed=seed)
        print(f"wrote the multi-phase CT study ({CT_SHAPE[2]}x{CT_SHAPE[1]}x{CT_SHAPE[0]} x "
              f"{len(CT_MULTIPHASE_PHASES)} phases) in {time.perf_counter() - started:.1f} s", flush=True)
    return studies


def study_input(folder: Path):  # type: ignore[no-untyped-def]
    """The study as the node would hand it over: every image series, the ground truth left out."""
    from inference.base import studies_from_files

    [study] = studies_from_files(p for p in folder.rglob("*.dcm") if "ground_truth" not in p.parts).values()
    return study


def peak_rss_bytes() -> int:
    """This process's peak resident set size (VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM (not Linux?)")


def child(mode: str, folder: Path, threads: int, options: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this (fresh) process; returns seconds and peak memory."""
    import torch

    torch.set_num_threads(threads)
    study = study_input(folder)
    extras: dict[str, Any] = {}
    started = time.perf_counter()
    if mode == "read":
        from dicom_io.reader import read_series

        voxels = 0
        for series in study.series:
            voxels += read_series(series.paths).array.size
        extras["voxels"] = voxels
    else:
        import logging

        from inference.liver.pipeline import LiverSegmentationPipeline

        class Capture(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if record.getMessage() == "liver segmented":
                    extras.update(read_register_s=record.__dict__.get("read_register_s"),
                                  lesions=record.__dict__.get("lesions"), device=record.__dict__.get("device"))

        logging.getLogger("pacsnode.liver").addHandler(Capture())
        logging.getLogger("pacsnode.liver").setLevel(logging.INFO)
        from inference.base import PipelineError

        try:
            extras["objects"] = len(LiverSegmentationPipeline().run(study, options))
        except PipelineError as exc:  # still worth its seconds and memory, reported as a failure
            extras["error"] = str(exc)
    seconds = time.perf_counter() - started
    peak = peak_rss_bytes()
    if torch.cuda.is_available():
        extras["gpu_peak_bytes"] = int(torch.cuda.max_memory_allocated())
    return {"mode": mode, "seconds": seconds, "peak_rss_bytes": peak, **extras}


def measure(mode: str, folder: Path, threads: int, options: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run([sys.executable, __file__, "--child", mode, "--study", str(folder),
                             "--threads", str(threads), "--options", json.dumps(options)],
                            capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{mode} on {folder} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _gib(value: float) -> str:
    return f"{value / 1024**3:.2f} GiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=list(LABELS), default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", type=Path, default=None, help="Write the studies here and keep them.")
    parser.add_argument("--weights", type=Path, default=None, help="MR model manifest (default: the committed one)")
    parser.add_argument("--ct-weights", type=Path, default=None, help="CT model manifest (default: the committed one)")
    parser.add_argument("--child", choices=["read", "pipeline"], help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--study", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.study, args.threads, json.loads(args.options))))
        return 0

    which = [args.only] if args.only else list(LABELS)
    options = {key: str(path) for key, path in (("weights", args.weights), ("ct_weights", args.ct_weights)) if path}
    with tempfile.TemporaryDirectory(prefix="bench-liver-") as tmp:
        root = args.keep or Path(tmp)
        studies = write_studies(root, which, args.seed)
        print(f"{os.cpu_count()} CPU(s) visible, torch threads {args.threads}", flush=True)
        failed = False
        for name, folder in studies.items():
            peer = measure("read", folder, args.threads, {})
            run = measure("pipeline", folder, args.threads, options)
            ok = run["seconds"] < TARGET_SECONDS and run["peak_rss_bytes"] < TARGET_BYTES and "error" not in run
            failed |= not ok
            print(f"{LABELS[name]}:")
            print(f"  dicom_io read (peer): {peer['seconds']:7.2f} s   peak RSS {_gib(peer['peak_rss_bytes'])}")
            print(f"  pipeline:             {run['seconds']:7.2f} s   peak RSS {_gib(run['peak_rss_bytes'])}"
                  f"   (read+identify+register {run.get('read_register_s')} s, {run.get('lesions')} lesion(s), "
                  f"{run.get('objects')} objects, device {run.get('device')})")
            if "error" in run:
                print(f"  pipeline FAILED:      {run['error']}")
            if "gpu_peak_bytes" in run:
                print(f"  GPU peak memory:      {_gib(run['gpu_peak_bytes'])}")
            print(f"  ratio pipeline/peer:  {run['seconds'] / peer['seconds']:7.1f}x time, "
                  f"{run['peak_rss_bytes'] / peer['peak_rss_bytes']:.1f}x memory")
            print(f"  target < {TARGET_SECONDS:g} s and < {_gib(TARGET_BYTES)}: {'met' if ok else 'NOT met'}",
                  flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
