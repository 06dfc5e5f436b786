"""Benchmark: dicom_io.read_dynamic_series against a plain pydicom loop over the same files.

Writes a synthetic 4D MR series (default 20 slices x 50 time points of
128x128, i.e. 1,000 single-frame files) to a temporary directory, then times,
in the same run and alternating order:

* ``dcmread`` only (the floor: parsing every file),
* ``dcmread`` + ``pixel_array`` + ``np.stack`` (what any reader must do),
* ``read_dynamic_series`` (that, plus sorting, validation, timing and rescale).

Run from the repository root::

    .venv/bin/python benchmarks/bench_dicom_io_read.py [--slices 20 --times 50 --size 128 --repeat 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom import dcmread

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_io.reader import read_dynamic_series  # noqa: E402
from tests.dicom_factories import make_mr_series  # noqa: E402


def plain_dcmread(paths: list[Path]) -> int:
    return len([dcmread(p) for p in paths])


def plain_dcmread_pixels(paths: list[Path]) -> np.ndarray:
    return np.stack([dcmread(p).pixel_array for p in paths])


def dicom_io_read(paths: list[Path]) -> np.ndarray:
    return read_dynamic_series(paths).array


def best_of(function: Callable[[list[Path]], object], paths: list[Path], repeat: int) -> tuple[float, float]:
    timings = []
    for _ in range(repeat):
        start = time.perf_counter()
        function(paths)
        timings.append(time.perf_counter() - start)
    return min(timings), statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--times", type=int, default=50)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pacsnode-bench-") as tmp:
        start = time.perf_counter()
        paths = make_mr_series(Path(tmp), (args.slices, args.size, args.size), n_times=args.times,
                               timing="temporal_position", shuffle_seed=1)
        random.Random(2).shuffle(paths)
        print(f"wrote {len(paths)} files ({args.times} times x {args.slices} slices of {args.size}x{args.size}) "
              f"in {time.perf_counter() - start:.2f} s")

        # Warm the page cache and imports once, then alternate so neither side gets a cold start.
        plain_dcmread_pixels(paths)
        dicom_io_read(paths)
        results = {}
        for name, function in (("pydicom dcmread loop", plain_dcmread),
                               ("pydicom dcmread + pixel_array + stack", plain_dcmread_pixels),
                               ("dicom_io.read_dynamic_series", dicom_io_read)):
            results[name] = best_of(function, paths, args.repeat)
        for name, (best, median) in results.items():
            print(f"{name:40s} best {best:6.3f} s   median {median:6.3f} s")
        reader = results["dicom_io.read_dynamic_series"][0]
        print(f"ratio reader / (dcmread + pixel_array + stack): {reader / results['pydicom dcmread + pixel_array + stack'][0]:.2f}")
        print(f"ratio reader / dcmread only:                    {reader / results['pydicom dcmread loop'][0]:.2f}")


if __name__ == "__main__":
    main()
