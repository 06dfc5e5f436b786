"""Peers for the operations tests: a private Redis, a dcmtk storescp "PACS", `pacsnode worker` processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.node_harness import DCMTK_ENV, PACSNODE, free_port, wait_for_port


def require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (see .ci/run)")


class RedisServer:
    """A redis-server of the test's own on a free port, so parallel runs never share queues."""

    def __init__(self) -> None:
        require("redis-server")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)


class StoreSCP:
    """dcmtk storescp as the destination PACS: every received object is one file in ``folder``."""

    def __init__(self, folder: Path, aet: str = "PACS") -> None:
        require("storescp")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.port = free_port()
        self._proc = subprocess.Popen(["storescp", "-aet", aet, "-od", str(folder), str(self.port)],
                                      env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def destination(self, **extra: object) -> dict:
        return {"ae_title": self.aet, "host": "127.0.0.1", "port": self.port, "timeout_s": 5, **extra}

    def received(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)


class WorkerProcess:
    """`pacsnode worker` in its own process group (the main process and its pool children)."""

    def __init__(self, config_path: Path, log_path: Path, *args: str) -> None:
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [PACSNODE, "worker", "--config", str(config_path), *args],
            stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, start_new_session=True)

    def kill9(self) -> None:
        """SIGKILL to the whole process group, as the OOM killer or a pulled power cord would."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def scrape(port: int) -> dict[str, float]:
    """One /metrics scrape as {'name{labels}': value} (sample lines only)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def sample(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of the samples of *name* whose labels include *labels*."""
    total = 0.0
    for key, value in samples.items():
        metric, _, rest = key.partition("{")
        if metric == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total
