"""``pacsnode serve``: the listener, study assembler, job supervisor, outbox and HTTP in one process.

Data path: received instance → spool + index (listener) → study complete →
routed → job (assembler) → Celery worker runs the pipeline → results in the
spool + outbox rows (job runner) → sent to PACS (outbox).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from kombu import Connection
from pydicom import dcmread

from node import metrics
from node.assembler import StudyAssembler
from node.audit import AuditLog
from node.clinical import ClinicalStore
from node.config import NodeConfig
from node.http import NodeHttpServer
from node.index import Index
from node.jobs import (
    EmbeddedWorker,
    JobDispatcher,
    JobRunner,
    JobSupervisor,
    _Context,
    configure_celery,
)
from node.listener import StorageListener, instance_record
from node.outbox import REFUSED, DestinationPolicy, Outbox
from node.routing import Router
from node.spool import Spool

log = logging.getLogger("pacsnode.node")


def reindex_spool(spool: Spool, index: Index) -> int:
    """Index files a crash left in the spool unindexed; returns how many were added."""
    spool.clean_incoming()
    known = index.indexed_paths()
    added = 0
    for path in spool.iter_instance_files():
        if str(path) in known:
            continue
        try:
            ds = dcmread(path, stop_before_pixels=True)
            record = instance_record(ds, str(path), path.stat().st_size, None)
            if index.add_instance(record, received_at=path.stat().st_mtime):
                added += 1
        except Exception as exc:
            log.error("unreadable file in spool left alone", extra={"file": path.name, "error": str(exc)})
    if added:
        log.info("re-indexed files found in the spool after restart", extra={"instances": added})
    return added


class _Loop:
    """Calls *work* every *interval* seconds on its own thread until stopped."""

    def __init__(self, name: str, interval: float, work: Callable[[], object]) -> None:
        self.name, self.interval, self.work = name, interval, work
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.work()
            except Exception:
                log.exception("background task failed; continuing", extra={"task": self.name})
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class Node:
    """One running pacsnode."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.spool = Spool(
            config.spool.path, fsync=config.spool.fsync, min_free_bytes=config.spool.min_free_mb * 1024 * 1024
        )
        self.index = Index(self.spool.paths.index)
        self.audit = AuditLog(config.logging.audit_log or self.spool.root / "audit.log")
        self.celery = configure_celery(config)
        self.dispatcher = JobDispatcher(self.index)
        self.supervisor = JobSupervisor(
            self.index, self.dispatcher, stale_after_s=config.jobs.stale_after_s,
            max_attempts=config.jobs.max_retries + 1, audit=self.audit)
        self.assembler = StudyAssembler(
            self.index, Router(config.routes, config.pipelines), self.dispatcher, config.study.stable_seconds
        )
        self.outbox = Outbox(self.index, config.destinations, config.outbox, config.dicom.ae_title, self.audit)
        self.listener = StorageListener(config.dicom, self.spool, self.index, self.audit)
        self.http: NodeHttpServer | None = None
        self.worker: EmbeddedWorker | None = None
        self._loops: list[_Loop] = []
        self._health_cache: tuple[float, dict[str, Any]] | None = None
        self._last_supervision = 0.0

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        reindex_spool(self.spool, self.index)
        self._collector = metrics.attach_index(self.index, self.spool)
        self.listener.start()
        if self.config.http.enabled:
            self.http = NodeHttpServer(
                self.config.http.host, self.config.http.port, self.config.http.token,
                self.health, self.status_report, clinical=ClinicalStore(self.index, self.audit),
            )
            self.http.start()
        if self.config.broker.embedded_worker:
            _Context.use(self.config, JobRunner(
                self.index, self.spool, self.audit, DestinationPolicy(self.config.destinations),
                heartbeat_interval_s=self.config.jobs.heartbeat_interval_s))
            self.worker = EmbeddedWorker(self.celery, self.config.broker.worker_concurrency)
            self.worker.start()
            # The only worker was in this process: whatever was unfinished needs dispatching again.
            self.supervisor.recover_all()
        self._loops = [
            _Loop("assembler", self.config.study.check_interval_s, self._assemble),
            _Loop("outbox", self.config.outbox.check_interval_s, self.outbox.process_due),
        ]
        if self.config.spool.retention_days:
            self._loops.append(_Loop("retention", 3600, self.apply_retention))
        for loop in self._loops:
            loop.start()
        metrics.UP.set(1)
        log.info("node started", extra={
            "ae_title": self.config.dicom.ae_title, "dicom_port": self.listener.port,
            "http_port": self.http.port if self.http else None,
            "broker": "embedded" if self.config.embedded_broker else "external",
            "routes": len(self.config.routes)})

    def _assemble(self) -> None:
        self.assembler.tick()
        now = time.monotonic()
        if now - self._last_supervision >= 5:
            self._last_supervision = now
            self.supervisor.tick()

    def stop(self) -> None:
        metrics.UP.set(0)
        self.listener.stop()
        for loop in self._loops:
            loop.stop()
        if self.worker is not None:
            self.worker.stop()
        if self.http is not None:
            self.http.stop()
        metrics.REGISTRY.unregister(self._collector)
        log.info("node stopped")

    def run_forever(self) -> None:
        """Serve until SIGTERM or SIGINT."""
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        self.start()
        try:
            stop.wait()
        finally:
            self.stop()

    # -- housekeeping ------------------------------------------------------------

    def apply_retention(self) -> int:
        """Delete finished studies (and their results) older than the retention period."""
        days = self.config.spool.retention_days
        if not days:
            return 0
        removed = 0
        for study_uid in self.index.finished_studies_before(time.time() - days * 86400):
            for job_id in self.index.forget_study(study_uid):
                self.spool.remove_result(job_id)
            self.spool.remove_study(study_uid)
            self.audit.record("study-deleted", study_uid=study_uid, reason="retention")
            removed += 1
        if removed:
            log.info("retention removed finished studies", extra={"studies": removed})
        return removed

    # -- reports -------------------------------------------------------------------

    def _broker_check(self) -> tuple[bool, str]:
        try:
            with Connection(self.config.broker_url, connect_timeout=2) as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            return True, "ok"
        except Exception as exc:
            return False, f"{type(exc).__name__}: {exc}"

    def health(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._health_cache and now - self._health_cache[0] < 2:
            return self._health_cache[1]
        broker_ok, broker_msg = self._broker_check()
        index_ok, index_msg = self.index.healthy()
        free = self.spool.free_bytes()
        spool_ok = free >= self.spool.min_free_bytes
        spool_msg = (f"{free // (1024 * 1024)} MiB free" if spool_ok else
                     f"only {free // (1024 * 1024)} MiB free; refusing new instances")
        report = {
            "status": "ok" if (broker_ok and index_ok and spool_ok) else "degraded",
            "checks": {
                "broker": {"ok": broker_ok, "detail": broker_msg},
                "index": {"ok": index_ok, "detail": index_msg},
                "spool": {"ok": spool_ok, "detail": spool_msg, "free_bytes": free},
            },
        }
        self._health_cache = (now, report)
        return report

    def status_report(self) -> dict[str, Any]:
        return status_report(self.index)


def status_report(index: Index, limit: int = 100) -> dict[str, Any]:
    """Studies with their jobs, outbox counts, dead letters and refused results (``pacsnode status``)."""
    studies = []
    for study in index.studies(limit):
        jobs = index.jobs(study_uid=study.study_uid)
        studies.append({
            "study_uid": study.study_uid,
            "state": study.state,
            "instances": study.instance_count,
            "last_received_at": study.last_received_at,
            "jobs": [{"id": j.id, "route": j.route, "pipeline": j.pipeline, "state": j.state,
                      "attempts": j.attempts, "reason": j.reason, "outputs": j.output_count}
                     for j in jobs],
        })
    outbox = [{"destination": d, "state": s, "count": c} for (d, s), c in sorted(index.outbox_counts().items())]
    dead = [{"id": i.id, "destination": i.destination, "attempts": i.attempts, "error": i.last_error}
            for i in index.outbox_items("dead")[:limit]]
    refused = [{"id": i.id, "job_id": i.job_id, "destination": i.destination, "reason": i.last_error}
               for i in index.outbox_items(REFUSED)[:limit]]
    return {"studies": studies, "outbox": outbox, "dead_letters": dead, "refused": refused}
