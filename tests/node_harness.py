"""Test harness for the node: a small study writer, free ports, and `pacsnode serve` as a real process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

REPO = Path(__file__).resolve().parents[1]
PACSNODE = str(Path(sys.executable).with_name("pacsnode"))
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.2, what: str = "condition") -> Any:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def write_mr_series(
    folder: Path,
    count: int = 4,
    study_uid: str | None = None,
    series_description: str = "t2_tse_axial",
    modality: str = "MR",
    size: int = 32,
    series_number: int = 1,
    temporal_positions: int | None = None,
) -> list[Path]:
    """Write a small single-frame MR series (valid enough for PACS and dciodvfy-checked pipelines)."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame_of_ref = generate_uid()
    rng = np.random.default_rng(series_number)
    paths = []
    for i in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        sop_uid = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_of_ref
        ds.PatientName = "Phantom^Test"
        ds.PatientID = "PHANTOM-001"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.StudyDate = "20261123"
        ds.StudyTime = "101500"
        ds.AccessionNumber = "ACC001"
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.Modality = modality
        ds.SeriesNumber = series_number
        ds.SeriesDescription = series_description
        ds.InstanceNumber = i + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.EchoTime = 30
        ds.RepetitionTime = 1500
        ds.MagneticFieldStrength = 1.5
        ds.ImagePositionPatient = [0, 0, float(i * 5)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1, 1]
        ds.SliceThickness = 5
        ds.PositionReferenceIndicator = ""
        if temporal_positions:
            ds.NumberOfTemporalPositions = temporal_positions
            ds.TemporalPositionIdentifier = i % temporal_positions + 1
        ds.Rows = ds.Columns = size
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = rng.integers(0, 4000, (size, size), dtype=np.uint16).tobytes()
        path = folder / f"{series_number:03d}_{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def make_pki(folder: Path, names: tuple[str, ...]) -> dict[str, str]:
    """A throwaway CA and one certificate per name, signed by it (PEM paths by file name)."""
    folder.mkdir(parents=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=pacsnode test CA")
    for name in names:
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2")
    return {p.name: str(p) for p in folder.iterdir()}


class NodeProcess:
    """`pacsnode serve` as a subprocess with its own spool, ports and config."""

    def __init__(self, workdir: Path, **overrides: Any) -> None:
        self.workdir = workdir
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.config: dict[str, Any] = {
            "dicom": {"port": self.dicom_port, "ae_title": "PACSNODE"},
            "http": {"port": self.http_port},
            "spool": {"path": str(workdir / "spool"), "min_free_mb": 1},
            "study": {"stable_seconds": 1, "check_interval_s": 0.2},
            "outbox": {"initial_backoff_s": 0.5, "max_backoff_s": 2, "check_interval_s": 0.2},
            "logging": {"json": True, "level": "INFO"},
        }
        for section, values in overrides.items():
            if isinstance(values, dict) and isinstance(self.config.get(section), dict):
                self.config[section].update(values)
            else:
                self.config[section] = values
        self.config_path = workdir / "pacsnode.yaml"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "node.log"

    def write_config(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config))

    def start(self, env: dict[str, str] | None = None) -> "NodeProcess":
        self.write_config()
        seen = len(self.log())
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [PACSNODE, "serve", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=self.workdir,
        )
        try:
            # Not a TCP probe of the DICOM port: it would hold an association slot until timeout.
            wait_until(lambda: "node started" in self.log()[seen:], timeout=30, interval=0.05, what="start-up")
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"node did not start:\n{self.log()}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        self.write_config()
        return subprocess.run(
            [PACSNODE, *args, "--config", str(self.config_path)] if args and args[0] in _CONFIG_COMMANDS
            else [PACSNODE, *args],
            capture_output=True, text=True, check=check, timeout=120,
        )

    def status(self) -> dict[str, Any]:
        import json

        return json.loads(self.cli("status", "--json").stdout)

    def storescu(self, *paths: Path, calling_ae: str = "STORESCU", called_ae: str = "PACSNODE",
                 extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["storescu", "-aet", calling_ae, "-aec", called_ae, *extra, "127.0.0.1",
             str(self.dicom_port), *map(str, paths)],
            capture_output=True, text=True, env=DCMTK_ENV, timeout=120,
        )


_CONFIG_COMMANDS = {"status", "resend", "routes", "serve", "worker"}
