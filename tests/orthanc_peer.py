"""A real Orthanc PACS for tests: started with its own ports and storage, queried over REST."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from tests.node_harness import free_port, wait_for_port

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


class OrthancPeer:
    """An Orthanc process (AE title ``ORTHANC``) that accepts any storage from any AE."""

    def __init__(self, workdir: Path, dicom_port: int | None = None, aet: str = "ORTHANC") -> None:
        if not Path(ORTHANC).exists():
            raise RuntimeError("Orthanc is not installed (apt-get install orthanc; see .ci/run)")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.dicom_port = dicom_port or free_port()
        self.http_port = free_port()
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        config = {
            "Name": "pacsnode-test-orthanc",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "StorageCompression": False,
            "DicomAet": aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "UnknownSopClassAccepted": True,
            "Plugins": [],
            "DicomModalities": {},
        }
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(config))
        self.log_path = self.workdir / "orthanc.log"
        self._proc = subprocess.Popen(
            [ORTHANC, str(config_path)],
            stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        try:
            wait_for_port(self.http_port, timeout=30)
            wait_for_port(self.dicom_port, timeout=30)
            self._wait_ready()
        except Exception:
            self.stop()
            raise RuntimeError(f"Orthanc did not start:\n{self.log_path.read_text(errors='replace')[-3000:]}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.get_json("/system")
                return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("Orthanc REST API did not answer")

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.http_url + path, timeout=30) as response:
            return response.read()

    def get_json(self, path: str):  # type: ignore[no-untyped-def]
        return json.loads(self.get(path))

    def instances(self) -> list[str]:
        """Orthanc's ids of every stored instance."""
        return list(self.get_json("/instances"))

    def download(self, instance_id: str) -> bytes:
        """The instance's file exactly as Orthanc stored it."""
        return self.get(f"/instances/{instance_id}/file")

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> "OrthancPeer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
