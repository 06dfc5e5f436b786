"""Prometheus metrics of a ``pacsnode worker``: one /metrics for the worker and all its pool processes.

Celery's prefork pool runs each job in a child process, so the job metrics
live in several processes. prometheus_client's multiprocess mode keeps every
process's values in memory-mapped files in one directory; the worker's main
process serves them, summed, on its own port. Multiprocess mode is chosen when
prometheus_client is first imported, so :func:`prepare_multiprocess_dir` must
run before anything imports :mod:`node.metrics` (the worker command calls it
first). The directory is per worker (by port) and emptied at start, so a
restarted worker does not report its previous life's counts twice.

Only the job and worker metrics (:data:`node.metrics.WORKER_FAMILIES`) are
exposed: the listener's metrics come from ``pacsnode serve``, and a worker
reporting ``pacsnode_up 0`` would page someone.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from node.http import MetricsHttpServer

log = logging.getLogger("pacsnode.worker")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_held_locks: list[int] = []  # the directory's lock is held for the life of the worker
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w+?_(\d+)\.db$")


class WorkerMetricsError(Exception):
    """The worker's metrics endpoint cannot be set up as configured."""


def default_multiprocess_dir(port: int) -> Path:
    """``$TMPDIR/pacsnode-worker-metrics-<port>``: one per worker on a host (ports are unique)."""
    return Path(tempfile.gettempdir()) / f"pacsnode-worker-metrics-{port}"


def prepare_multiprocess_dir(port: int, directory: Path | None = None) -> Path:
    """Empty (or create) the worker's metrics directory and put prometheus_client in multiprocess mode.

    *directory* defaults to ``$PROMETHEUS_MULTIPROC_DIR`` when the operator set
    it, else :func:`default_multiprocess_dir`.
    """
    if "prometheus_client" in sys.modules and MULTIPROC_ENV not in os.environ:
        raise WorkerMetricsError(
            "prometheus_client was imported before the worker's metrics directory was set up; "
            "prepare_multiprocess_dir() must run first"
        )
    chosen = Path(directory or os.environ.get(MULTIPROC_ENV) or default_multiprocess_dir(port))
    _lock_for_this_worker(chosen)
    try:
        if chosen.exists():
            shutil.rmtree(chosen)
        chosen.mkdir(parents=True, mode=0o700)
    except OSError as exc:
        raise WorkerMetricsError(f"cannot prepare the worker metrics directory {chosen}: {exc}") from exc
    os.environ[MULTIPROC_ENV] = str(chosen)
    return chosen


def _lock_for_this_worker(directory: Path) -> None:
    """Hold ``<directory>.lock``, so a second worker given the same port cannot empty a live worker's files."""
    lock_path = directory.with_name(directory.name + ".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise WorkerMetricsError(f"cannot create the worker metrics lock {lock_path}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise WorkerMetricsError(
            f"another worker on this host uses the metrics directory {directory} "
            "(same metrics port?): give each worker its own --metrics-port"
        ) from None
    _held_locks.append(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class WorkerCollector:
    """The job and worker metrics of every process that wrote to *directory*, aggregated.

    Before each collection, live-gauge files of processes that are gone
    (a pool child killed by a time limit or by ``kill -9``) are removed, so
    ``pacsnode_jobs_in_progress`` does not count jobs of dead processes.
    Counters and histograms of dead processes stay: they are history.
    """

    def __init__(self, directory: Path) -> None:
        from prometheus_client import multiprocess

        self.directory = directory
        self._multiprocess = multiprocess
        self._inner = multiprocess.MultiProcessCollector(None, path=str(directory))

    def reap_dead_processes(self) -> list[int]:
        dead = set()
        for entry in os.listdir(self.directory):
            match = _LIVE_GAUGE_FILE.match(entry)
            if match and not _pid_alive(int(match.group(1))):
                dead.add(int(match.group(1)))
        for pid in dead:
            self._multiprocess.mark_process_dead(pid, str(self.directory))
        return sorted(dead)

    def collect(self) -> Iterator["Metric"]:
        from node.metrics import WORKER_FAMILIES

        self.reap_dead_processes()
        for family in self._inner.collect():
            if family.name in WORKER_FAMILIES:
                yield family


def worker_registry(directory: Path) -> "CollectorRegistry":
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(directory))  # type: ignore[arg-type]
    return registry


def start_worker_metrics(host: str, port: int, worker: str, queues: str, pool: str) -> "MetricsHttpServer":
    """Serve the worker's /metrics on *host*:*port* (after :func:`prepare_multiprocess_dir`)."""
    from node import metrics
    from node.http import MetricsHttpServer

    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        raise WorkerMetricsError("prepare_multiprocess_dir() was not called in this worker")
    metrics.worker_started(worker, queues, pool)
    try:
        server = MetricsHttpServer(host, port, worker_registry(Path(directory)))
    except OSError as exc:
        raise WorkerMetricsError(f"cannot serve worker metrics on {host}:{port}: {exc.strerror or exc}") from exc
    server.start()
    log.info("worker metrics served", extra={"host": host, "port": server.port, "directory": directory})
    return server
