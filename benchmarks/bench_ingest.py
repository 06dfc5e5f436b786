"""Ingest benchmark: instances per second into pacsnode versus into Orthanc, same machine, same run.

dcmtk's storescu (TCP_NODELAY=1, one association) sends N MR instances of
256x256 16-bit to each peer in turn; the median of --repeat runs is reported,
with the ratio pacsnode / Orthanc and pacsnode's peak resident memory.

    .venv/bin/python benchmarks/bench_ingest.py                  # 1,000 instances, 3 repeats
    .venv/bin/python benchmarks/bench_ingest.py --instances 10000 --repeat 1 --no-orthanc   # memory check
    .venv/bin/python benchmarks/bench_ingest.py --no-fsync       # like-for-like with Orthanc, which does not fsync
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.node_harness import PACSNODE, free_port, wait_until  # noqa: E402
from tests.orthanc_peer import OrthancPeer  # noqa: E402

ENV = {**os.environ, "TCP_NODELAY": "1"}


def write_instances(folder: Path, count: int, size: int = 256) -> None:
    """One MR study/series of *count* size x size 16-bit single-frame instances."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
    for i in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        sop = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.StudyDate, ds.StudyTime = "Bench^Mark", "BENCH1", "20261123", "120000"
        ds.AccessionNumber, ds.StudyID, ds.ReferringPhysicianName = "BENCH", "1", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = "MR", 1, i + 1, "bench"
        ds.ImagePositionPatient = [0, 0, float(i)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1, 1], 1
        ds.Rows = ds.Columns = size
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = pixels
        ds.save_as(folder / f"{i:05d}.dcm", enforce_file_format=True)


def send(folder: Path, port: int, called: str) -> float:
    started = time.perf_counter()
    subprocess.run(["storescu", "-aec", called, "+sd", "127.0.0.1", str(port), str(folder)],
                   check=True, env=ENV, capture_output=True)
    return time.perf_counter() - started


class PeakRss:
    """Samples VmRSS of a process and its children; keeps the peak (KiB)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_kib = pid, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        pids, frontier = [self.pid], [self.pid]
        while frontier:
            pid = frontier.pop()
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            pids += [int(c) for c in children]
            frontier += [int(c) for c in children]
        return pids

    def _rss(self) -> int:
        total = 0
        for pid in self._tree():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak_kib = max(self.peak_kib, self._rss())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_kib


def run_pacsnode(folder: Path, workdir: Path, fsync: bool) -> tuple[float, int, int]:
    """(seconds, indexed instances, peak RSS KiB) for one send into a fresh pacsnode."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    port, http_port = free_port(), free_port()
    config = {"dicom": {"port": port}, "http": {"port": http_port},
              "spool": {"path": str(workdir / "spool"), "min_free_mb": 100, "fsync": fsync},
              "study": {"stable_seconds": 3600}, "logging": {"level": "WARNING"}}
    (workdir / "c.yaml").write_text(yaml.safe_dump(config))
    log = open(workdir / "node.log", "wb")
    proc = subprocess.Popen([PACSNODE, "serve", "--config", str(workdir / "c.yaml")], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _listening(http_port), timeout=30, what="pacsnode to start")
        time.sleep(0.5)
        rss = PeakRss(proc.pid)
        seconds = send(folder, port, "PACSNODE")
        peak = rss.stop()
        status = subprocess.run([PACSNODE, "status", "--json", "--config", str(workdir / "c.yaml")],
                                capture_output=True, text=True, check=True).stdout
        import json

        indexed = sum(s["instances"] for s in json.loads(status)["studies"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return seconds, indexed, peak


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-orthanc", action="store_true", help="Measure pacsnode only (memory check).")
    parser.add_argument("--no-fsync", action="store_true", help="Turn pacsnode's per-file fsync off.")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="pacsnode-bench-") as tmp:
        tmp_path = Path(tmp)
        data = tmp_path / "data"
        write_instances(data, args.instances)
        print(f"{args.instances} MR instances 256x256 16-bit, storescu with TCP_NODELAY=1, one association")
        orthanc_times, node_times, peaks = [], [], []
        for round_ in range(args.repeat):
            if not args.no_orthanc:
                peer = OrthancPeer(tmp_path / f"orthanc{round_}")
                try:
                    orthanc_times.append(send(data, peer.dicom_port, "ORTHANC"))
                    stored = len(peer.instances())
                finally:
                    peer.stop()
                    shutil.rmtree(tmp_path / f"orthanc{round_}", ignore_errors=True)
                assert stored == args.instances, f"Orthanc stored {stored}"
            seconds, indexed, peak = run_pacsnode(data, tmp_path / "node", fsync=not args.no_fsync)
            assert indexed == args.instances, f"pacsnode indexed {indexed}"
            node_times.append(seconds)
            peaks.append(peak)
            line = f"round {round_ + 1}: pacsnode {args.instances / seconds:6.1f}/s"
            if orthanc_times:
                line += f"   Orthanc {args.instances / orthanc_times[-1]:6.1f}/s"
            print(line, flush=True)
        node_rate = args.instances / statistics.median(node_times)
        print(f"pacsnode median: {node_rate:.1f} instances/s (fsync {'off' if args.no_fsync else 'on'}),"
              f" peak RSS {max(peaks) / 1024:.0f} MiB")
        if orthanc_times:
            orthanc_rate = args.instances / statistics.median(orthanc_times)
            print(f"Orthanc median:  {orthanc_rate:.1f} instances/s")
            print(f"ratio pacsnode / Orthanc: {node_rate / orthanc_rate:.2f}")


if __name__ == "__main__":
    main()
