"""Benchmark: writing a BINARY SEG over a 200-slice series against a plain pydicom write of the slices.

Builds a synthetic single-frame MR series in memory (default 200 slices of
128x128) with a liver-like blob, then times, in the same run and alternating
order:

* reference: ``save_as`` of the 200 source slices with plain pydicom (what
  any node pays just to write the images once);
* ``SegmentationWriter.write``: one segment (the liver), empty frames kept;
* the same plus ``save_as`` of the SEG;
* ``SegmentationWriter.write`` with the liver and ``--lesions`` per-lesion
  segments (creation slows down with many segments; default 20).

Prints best and median seconds and each one's ratio to the reference.

Run from the repository root::

    .venv/bin/python benchmarks/bench_dicom_io_seg.py [--slices 200 --size 128 --lesions 20 --repeat 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dicom_io.identity import AlgorithmInfo
from dicom_io.seg import SegmentationWriter, SegmentSpec, liver_segment, tumour_segment


def source_series(slices: int, size: int) -> list[Dataset]:
    """Single-frame axial MR slices in slice order, 1 mm pixels, 1.5 mm apart."""
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    pixels = (np.arange(size * size, dtype=np.uint16).reshape(size, size) % 1024).tobytes()
    images = []
    for z in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.SOPClassUID = MRImageStorage
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Bench^Mark", "BENCH", "", "O"
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = study, "20240131", "120000", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.Modality = series, 1, "MR"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference, ""
        ds.InstanceNumber = z + 1
        ds.ImagePositionPatient = [-size / 2, -size / 2, 1.5 * z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 1.5
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", size, size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = pixels
        images.append(ds)
    return images


def liver_blob(slices: int, size: int) -> np.ndarray:
    """An ellipsoid covering the middle 60% of the slices and about a third of each slice."""
    z, y, x = np.ogrid[0:slices, 0:size, 0:size]
    return (((z - slices / 2) / (0.3 * slices)) ** 2 + ((y - size / 2) / (0.3 * size)) ** 2
            + ((x - size / 2) / (0.35 * size)) ** 2) <= 1


def lesion_masks(slices: int, size: int, count: int, seed: int = 3) -> dict[SegmentSpec, np.ndarray]:
    liver = liver_blob(slices, size)
    masks: dict[SegmentSpec, np.ndarray] = {liver_segment(): liver}
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[0:slices, 0:size, 0:size]
    for number in range(1, count + 1):
        cz, cy, cx = rng.uniform(0.3, 0.7) * slices, rng.uniform(0.3, 0.7) * size, rng.uniform(0.3, 0.7) * size
        radius = rng.uniform(3, 8)
        masks[tumour_segment(number)] = liver & (((z - cz) * 1.5) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= radius ** 2)
    return masks


def seconds(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--lesions", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    images = source_series(args.slices, args.size)
    liver = {liver_segment(): liver_blob(args.slices, args.size)}
    lesions = lesion_masks(args.slices, args.size, args.lesions)
    algorithm = AlgorithmInfo("bench-liver", "1.0")
    writer = SegmentationWriter()

    def write_sources() -> None:
        for ds in images:
            ds.save_as(io.BytesIO(), enforce_file_format=True)

    def build_seg() -> object:
        return writer.write(images, liver, algorithm, 300, "Liver (benchmark)")

    def build_and_save_seg() -> None:
        buffer = io.BytesIO()
        build_seg().save_as(buffer, enforce_file_format=True)  # type: ignore[attr-defined]

    def build_lesion_seg() -> object:
        return writer.write(images, lesions, algorithm, 301, "Liver lesions (benchmark)")

    cases: list[tuple[str, Callable[[], object]]] = [
        (f"reference: pydicom save_as of {args.slices} source slices", write_sources),
        ("SegmentationWriter.write, 1 segment", build_seg),
        ("SegmentationWriter.write + save_as, 1 segment", build_and_save_seg),
        (f"SegmentationWriter.write, 1 + {args.lesions} segments", build_lesion_seg),
    ]
    # Warm imports and caches once, then alternate: every round runs each case once.
    for _, function in cases:
        function()
    rounds: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(args.repeat):
        for name, function in cases:
            rounds[name].append(seconds(function))

    seg = build_seg()
    frames = int(seg.NumberOfFrames)  # type: ignore[attr-defined]
    lesion_frames = int(build_lesion_seg().NumberOfFrames)  # type: ignore[attr-defined]
    print(f"source: {args.slices} slices of {args.size}x{args.size}; SEG frames: {frames} (1 segment), "
          f"{lesion_frames} (1 + {args.lesions} segments); best and median of {args.repeat}")
    reference = min(rounds[cases[0][0]])
    for name, _ in cases:
        best, median = min(rounds[name]), statistics.median(rounds[name])
        print(f"  {name:<58} best {best:7.3f} s  median {median:7.3f} s  ratio {best / reference:6.2f}x")


if __name__ == "__main__":
    main()
