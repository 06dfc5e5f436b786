"""Ingest benchmark: instances per second into pacsnode versus into Orthanc, same machine, same run.

One MR study/series of N single-frame 256x256 16-bit instances (explicit VR
little endian, a realistic MR header) is written once; dcmtk's storescu
(TCP_NODELAY=1, one association, `+sd +r`) then sends the folder to each peer
in turn, a fresh peer for every round. Reported: the median instances/s of
--repeat rounds for each peer, the ratio pacsnode / Orthanc, and the peak
resident memory of each peer's process tree. Each round checks that every
instance was stored (Orthanc's REST API, `pacsnode status --json`).

    .venv/bin/python benchmarks/bench_ingest.py                          # 1,000 instances, 3 rounds
    .venv/bin/python benchmarks/bench_ingest.py --instances 10000 --rss-only --repeat 1   # memory check
    .venv/bin/python benchmarks/bench_ingest.py --no-fsync               # like-for-like: Orthanc does not fsync

pacsnode runs as `pacsnode serve --config <temp>` (spool in a temp dir,
stable_seconds large so no study completes, no routes, free ports), exactly as
an operator starts it, embedded broker and worker included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
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
from tests.node_harness import PACSNODE, free_port, wait_for_port  # noqa: E402
from tests.orthanc_peer import OrthancPeer  # noqa: E402

# DCMTK waits ~40 ms per message for delayed ACKs without TCP_NODELAY.
ENV = {**os.environ, "TCP_NODELAY": "1"}
SIZE = 256


# -- data ------------------------------------------------------------------------


def write_instances(folder: Path, count: int, size: int = SIZE) -> int:
    """One MR study/series of *count* size x size 16-bit instances; returns the bytes written."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    # A phantom-like image: a disc of tissue values over background noise, 12 bits stored.
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.4 * size) ** 2
    base = np.where(disc, 1800, 40).astype(np.uint16)
    pixels = (base + rng.integers(0, 60, (size, size), dtype=np.uint16)).tobytes()
    total = 0
    for i in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        sop = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20261123"
        ds.StudyTime, ds.SeriesTime = "120000", "120100"
        ds.AcquisitionTime = ds.ContentTime = f"1201{i % 60:02d}.{i:06d}"[:13]
        ds.AccessionNumber, ds.Modality, ds.Manufacturer = "BENCH0001", "MR", "pacsnode-bench"
        ds.InstitutionName, ds.ReferringPhysicianName = "Benchmark Hospital", ""
        ds.StationName, ds.StudyDescription = "MRBENCH", "MR BRAIN W/O CONTRAST"
        ds.SeriesDescription, ds.ManufacturerModelName = "t2_tse_tra", "Bench 3T"
        ds.PatientName, ds.PatientID = "Bench^Mark", "BENCH1"
        ds.PatientBirthDate, ds.PatientSex, ds.PatientAge, ds.PatientWeight = "19700101", "O", "056Y", 70
        ds.BodyPartExamined = "BRAIN"
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", ["SK", "SP", "OSP"], "PFP"
        ds.MRAcquisitionType, ds.SequenceName = "2D", "*tse2d1_15"
        ds.SliceThickness, ds.RepetitionTime, ds.EchoTime = 1.0, 6000.0, 95.0
        ds.NumberOfAverages, ds.ImagingFrequency, ds.ImagedNucleus = 1, 123.2, "1H"
        ds.EchoNumbers, ds.MagneticFieldStrength, ds.SpacingBetweenSlices = 1, 3.0, 1.0
        ds.EchoTrainLength, ds.PercentSampling, ds.PercentPhaseFieldOfView = 15, 100, 100
        ds.PixelBandwidth, ds.SoftwareVersions, ds.ProtocolName = 190, "bench", "t2_tse_tra"
        ds.FlipAngle, ds.PatientPosition = 150, "HFS"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.StudyID, ds.SeriesNumber, ds.AcquisitionNumber, ds.InstanceNumber = "1", 3, 1, i + 1
        ds.ImagePositionPatient = [-128.0, -128.0, float(i) - count / 2]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame, ""
        ds.SliceLocation = float(i) - count / 2
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = size
        ds.PixelSpacing = [1.0, 1.0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.WindowCenter, ds.WindowWidth = 900, 1800
        ds.PixelData = pixels
        path = folder / f"MR{i:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return total


def warm_page_cache(folder: Path) -> None:
    """Read every file once so that neither peer pays for the first read from disk."""
    for path in folder.iterdir():
        path.read_bytes()


def storescu(folder: Path, port: int, called_ae: str) -> float:
    """Wall seconds for one storescu association sending the whole folder."""
    started = time.perf_counter()
    result = subprocess.run(
        ["storescu", "-aet", "BENCHSCU", "-aec", called_ae, "+sd", "+r", "127.0.0.1", str(port), str(folder)],
        env=ENV, capture_output=True, text=True, check=False,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"storescu to {called_ae} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return seconds


# -- memory ----------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                found += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    return found


def _status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeMemory:
    """Samples a process tree every 50 ms.

    peak_rss_kib: the largest sum of VmRSS seen at one instant (what the machine
    had to hold). hwm_kib: the sum over every process seen of its own VmHWM
    (the kernel's per-process peak, so short spikes between samples count too;
    an upper bound, as the processes' peaks need not coincide).
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss_kib = 0
        self._hwm: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _tree(self) -> list[int]:
        pids, frontier = [], [self.pid]
        while frontier:
            pid = frontier.pop()
            pids.append(pid)
            frontier += _children(pid)
        return pids

    def sample(self) -> None:
        rss = 0
        for pid in self._tree():
            rss += _status_kib(pid, "VmRSS")
            hwm = _status_kib(pid, "VmHWM")
            if hwm:
                self._hwm[pid] = max(self._hwm.get(pid, 0), hwm)
        self.peak_rss_kib = max(self.peak_rss_kib, rss)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.sample()

    def stop(self) -> tuple[int, int]:
        """(peak simultaneous RSS, sum of VmHWM), KiB. Call while the processes still run."""
        self._stop.set()
        self._thread.join()
        self.sample()
        return self.peak_rss_kib, sum(self._hwm.values())


# -- peers -----------------------------------------------------------------------


class Round:
    def __init__(self, seconds: float, stored: int, peak_rss_kib: int, hwm_kib: int) -> None:
        self.seconds, self.stored, self.peak_rss_kib, self.hwm_kib = seconds, stored, peak_rss_kib, hwm_kib


def run_orthanc(folder: Path, workdir: Path) -> Round:
    """One send into a fresh Orthanc (temp storage and index, AE ORTHANC, any caller may store)."""
    shutil.rmtree(workdir, ignore_errors=True)
    peer = OrthancPeer(workdir)  # config: DicomAlwaysAllowStore, DicomCheckCalledAet false, no auth, no compression
    try:
        memory = TreeMemory(peer._proc.pid)
        seconds = storescu(folder, peer.dicom_port, peer.aet)
        peak, hwm = memory.stop()
        stored = len(peer.instances())
    finally:
        peer.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return Round(seconds, stored, peak, hwm)


def _http_ok(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def run_pacsnode(folder: Path, workdir: Path, fsync: bool) -> Round:
    """One send into a fresh `pacsnode serve` (temp spool, no routes, free ports)."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    port, http_port = free_port(), free_port()
    config = {
        "dicom": {"port": port, "host": "127.0.0.1"},
        "http": {"port": http_port},
        "spool": {"path": str(workdir / "spool"), "min_free_mb": 100, "fsync": fsync},
        "study": {"stable_seconds": 3600},  # nothing completes, nothing is routed during the run
        "routes": [],
        "logging": {"level": "WARNING"},
    }
    config_path = workdir / "pacsnode.yaml"
    config_path.write_text(yaml.safe_dump(config))
    with open(workdir / "node.log", "wb") as log:
        proc = subprocess.Popen([PACSNODE, "serve", "--config", str(config_path)],
                                stdout=log, stderr=subprocess.STDOUT, env=ENV)
    try:
        try:
            wait_for_port(http_port, timeout=60)
            wait_for_port(port, timeout=30)
        except TimeoutError:
            raise RuntimeError("pacsnode did not start:\n"
                               + (workdir / "node.log").read_text(errors="replace")[-3000:]) from None
        time.sleep(0.5)  # let start-up work (re-index, worker boot) settle
        memory = TreeMemory(proc.pid)
        seconds = storescu(folder, port, "PACSNODE")
        peak, hwm = memory.stop()
        status = subprocess.run([PACSNODE, "status", "--json", "--limit", "10", "--config", str(config_path)],
                                capture_output=True, text=True, check=True).stdout
        stored = sum(s["instances"] for s in json.loads(status)["studies"])
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir / "spool", ignore_errors=True)
    return Round(seconds, stored, peak, hwm)


# -- main ------------------------------------------------------------------------


def _mib(kib: int) -> str:
    return f"{kib / 1024:.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=1000, help="instances in the study (default 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per peer; the median is reported (default 3)")
    parser.add_argument("--rss-only", "--no-orthanc", dest="rss_only", action="store_true",
                        help="pacsnode only: the memory check (e.g. --instances 10000 --rss-only)")
    parser.add_argument("--no-fsync", action="store_true", help="turn pacsnode's per-file fsync off")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (data and logs)")
    args = parser.parse_args(argv)

    for tool in ("storescu",) + (() if args.rss_only else ("Orthanc",)):
        if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists()):
            parser.error(f"{tool} is not installed (apt-get install dcmtk orthanc)")
    if not Path(PACSNODE).exists():
        parser.error(f"{PACSNODE} not found: run with the project's .venv/bin/python after `make install`")

    tmp = Path(tempfile.mkdtemp(prefix="pacsnode-bench-"))
    try:
        data = tmp / "data"
        t0 = time.perf_counter()
        size = write_instances(data, args.instances)
        warm_page_cache(data)
        print(f"{args.instances} MR instances {SIZE}x{SIZE} 16-bit, {size / 2**20:.0f} MiB, written in "
              f"{time.perf_counter() - t0:.1f} s; storescu +sd +r, one association, TCP_NODELAY=1; "
              f"{args.repeat} round(s); {os.cpu_count()} CPU(s)", flush=True)
        orthanc: list[Round] = []
        node: list[Round] = []
        for i in range(args.repeat):
            # Alternate who goes first, so neither peer always gets the cooler machine.
            order = ["pacsnode", "orthanc"] if i % 2 else ["orthanc", "pacsnode"]
            line = f"round {i + 1}:"
            for peer in order:
                if peer == "orthanc" and not args.rss_only:
                    r = run_orthanc(data, tmp / "orthanc")
                    if r.stored != args.instances:
                        raise SystemExit(f"Orthanc stored {r.stored} of {args.instances}")
                    orthanc.append(r)
                    line += f"  Orthanc {args.instances / r.seconds:7.1f}/s ({_mib(r.peak_rss_kib)})"
                elif peer == "pacsnode":
                    r = run_pacsnode(data, tmp / "node", fsync=not args.no_fsync)
                    if r.stored != args.instances:
                        raise SystemExit(f"pacsnode indexed {r.stored} of {args.instances}")
                    node.append(r)
                    line += f"  pacsnode {args.instances / r.seconds:7.1f}/s ({_mib(r.peak_rss_kib)})"
            print(line, flush=True)

        node_rate = args.instances / statistics.median(r.seconds for r in node)
        print(f"pacsnode median: {node_rate:.1f} instances/s (fsync {'off' if args.no_fsync else 'on'}); "
              f"peak RSS {_mib(max(r.peak_rss_kib for r in node))} "
              f"(sum of VmHWM over its process tree: {_mib(max(r.hwm_kib for r in node))})")
        if orthanc:
            orthanc_rate = args.instances / statistics.median(r.seconds for r in orthanc)
            print(f"Orthanc median:  {orthanc_rate:.1f} instances/s; peak RSS "
                  f"{_mib(max(r.peak_rss_kib for r in orthanc))}")
            print(f"ratio pacsnode / Orthanc: {node_rate / orthanc_rate:.2f}")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
