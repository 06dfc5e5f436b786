"""Pipeline jobs on Celery: dispatching, running, and recovering them.

The index, not the broker, is the record of work. Each job row carries a
dispatch token; a delivered task runs only if it can claim the job with the
token it carries, and a job's results are committed (and queued for sending)
only while that claim still holds. So a redelivered, duplicated or stale
message never runs a job twice, and a lost message (a broker restarted
without persistence, a worker killed) is made good by :class:`JobSupervisor`
dispatching again.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from celery import Celery, signals
from kombu import Queue
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian

from inference.base import (
    PipelineError,
    PipelineInputError,
    SeriesInput,
    StudyInput,
    TransientPipelineError,
)
from inference.registry import UnknownPipelineError, available_pipelines, get_pipeline
from node import metrics
from node.audit import AuditLog
from node.clinical import ClinicalDataError, ClinicalStore
from node.config import NodeConfig
from node.index import Index, JobRecord
from node.outbox import DestinationPolicy, report_refusals
from node.spool import Spool, uid_to_filename

log = logging.getLogger("pacsnode.jobs")

QUEUES = {"cpu": "pacsnode.cpu", "gpu": "pacsnode.gpu"}
HEARTBEAT_INTERVAL_S = 10.0

celery_app = Celery("pacsnode", set_as_current=False)


def configure_celery(config: NodeConfig) -> Celery:
    """Point the module's Celery app at the configured broker."""
    transport_options: dict[str, object] = {}
    if not config.embedded_broker:
        # An unacknowledged task comes back after this long; the supervisor's
        # heartbeat check usually re-dispatches much sooner.
        transport_options["visibility_timeout"] = int(config.jobs.time_limit_s + 300)
    if celery_app._pool is not None:
        # Re-pointing an app that already connected (tests, reloads): drop the old pools.
        celery_app._pool.force_close_all()
        celery_app._pool = None
        celery_app.amqp._producer_pool = None
    celery_app.conf.update(
        broker_url=config.broker_url,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        result_backend=None,
        worker_prefetch_multiplier=1,
        task_default_queue=QUEUES["cpu"],
        task_queues=[Queue(q) for q in QUEUES.values()],
        task_time_limit=config.jobs.time_limit_s,
        task_soft_time_limit=max(1.0, config.jobs.time_limit_s - 30),
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    _Context.config = config
    return celery_app


class _Context:
    """Per-process resources for tasks, opened lazily (after a prefork worker forks)."""

    config: NodeConfig | None = None
    pid: int | None = None
    runner: "JobRunner | None" = None

    @classmethod
    def get_runner(cls) -> "JobRunner":
        if cls.config is None:
            raise RuntimeError("configure_celery() was not called in this process")
        if cls.runner is None or cls.pid != os.getpid():
            spool = Spool(cls.config.spool.path, fsync=cls.config.spool.fsync)
            index = Index(spool.paths.index)
            audit = AuditLog(cls.config.logging.audit_log or spool.root / "audit.log")
            cls.runner = JobRunner(index, spool, audit, DestinationPolicy(cls.config.destinations),
                                   heartbeat_interval_s=cls.config.jobs.heartbeat_interval_s)
            cls.pid = os.getpid()
        return cls.runner

    @classmethod
    def use(cls, config: NodeConfig, runner: "JobRunner") -> None:
        """Share the node's own index and spool with an in-process worker."""
        cls.config = config
        cls.runner = runner
        cls.pid = os.getpid()


@celery_app.task(name="pacsnode.run_job", acks_late=True, reject_on_worker_lost=True)
def run_job_task(job_id: int, token: str) -> None:
    """Run one pipeline job (a Celery task: arguments are ids, never datasets)."""
    runner = _Context.get_runner()
    config = _Context.config
    assert config is not None
    try:
        runner.run(job_id, token)
    except TransientPipelineError as exc:
        # Retries are counted in the index (attempts), so they survive restarts.
        job = runner.index.job(job_id)
        if job is None:
            return
        if job.attempts > config.jobs.max_retries:
            runner.index.fail_job(job_id, token, f"gave up after {job.attempts} attempts: {exc}")
            metrics.JOBS_FAILED.labels(job.pipeline).inc()
            return
        metrics.JOBS_RETRIED.labels(job.pipeline).inc()
        backoff = min(config.jobs.retry_backoff_max_s, 2.0 ** job.attempts)
        JobDispatcher(runner.index).dispatch(job, new_token=False, countdown=backoff)


@signals.worker_init.connect
def _import_pipelines_before_forking(sender: object = None, **_: object) -> None:
    """Import every pipeline in a prefork worker's main process, before the pool forks.

    The pool's children inherit the imported modules. Otherwise each fresh
    child spent its first job's first seconds importing torch and the like,
    and during such C-level imports the job's heartbeat thread cannot run: a
    live job could look lost to the supervisor and be run a second time.
    """
    if str(getattr(sender, "pool_cls", "")) != "prefork":
        return
    try:
        names = sorted(available_pipelines())
    except Exception:  # a broken plugin fails its own jobs with the reason; the worker still starts
        log.warning("importing the pipelines before forking failed", exc_info=True)
        return
    log.info("pipelines imported before forking the pool", extra={"pipelines": names})


class _Heartbeat:
    """Refreshes a running job's heartbeat so the supervisor knows its worker is alive."""

    def __init__(self, index: Index, job_id: int, token: str, interval_s: float = HEARTBEAT_INTERVAL_S) -> None:
        self._index, self._job_id, self._token = index, job_id, token
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._index.heartbeat(self._job_id, self._token)
            except Exception:  # the next beat will try again
                log.warning("heartbeat failed", extra={"job_id": self._job_id})

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def encode_dataset(ds: Dataset) -> bytes:
    """Encode a pipeline output in the DICOM file format, strictly."""
    if not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
        from pydicom.dataset import FileMetaDataset

        meta = getattr(ds, "file_meta", None) or FileMetaDataset()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass
class JobOutcome:
    state: str
    reason: str | None = None
    outputs: int = 0


class JobRunner:
    """Runs one claimed job: pipeline → result files in the spool → outbox entries.

    Destinations whose ``accept_results_from`` excludes the study's sender are
    refused here, when the results are queued: they get no outbox entry to send.
    """

    def __init__(self, index: Index, spool: Spool, audit: AuditLog | None = None,
                 policy: DestinationPolicy | None = None, *,
                 heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S) -> None:
        self.index = index
        self.spool = spool
        self.audit = audit
        self.policy = policy or DestinationPolicy({})
        self.heartbeat_interval_s = heartbeat_interval_s

    def study_input(self, job: JobRecord) -> StudyInput:
        known = {s.series_uid: s for s in self.index.series_of(job.study_uid)}
        series = []
        for uid in job.series_uids:
            record = known.get(uid)
            if record is None:
                raise PipelineInputError(f"series {uid} of the job is no longer in the index")
            paths = tuple(Path(p) for p in self.index.series_instances(uid))
            series.append(
                SeriesInput(uid, record.modality, record.series_description, record.series_number, paths)
            )
        return StudyInput(job.study_uid, tuple(series), extra=self._clinical_extra(series))

    def _clinical_extra(self, series: Sequence[SeriesInput]) -> dict[str, object]:
        """``{"clinical": {...}}`` when the clinical store holds data for the study's AccessionNumber.

        Read when the job runs, so data that arrived after the images but
        before the job started is used; pipelines that take none ignore it.
        """
        first = next((s.paths[0] for s in series if s.paths), None)
        if first is None:
            return {}
        try:
            accession = str(dcmread(first, stop_before_pixels=True, specific_tags=["AccessionNumber"])
                            .get("AccessionNumber", "") or "").strip()
        except (InvalidDicomError, OSError, ValueError):
            return {}
        if not accession:
            return {}
        try:
            record = ClinicalStore(self.index).get(accession)
        except ClinicalDataError:  # not a usable accession number: there can be no data for it
            return {}
        return {"clinical": record.data.given()} if record is not None else {}

    def run(self, job_id: int, token: str) -> JobOutcome | None:
        """Claim and run the job; None when this delivery is not the job's current one."""
        job = self.index.claim_job(job_id, token)
        if job is None:
            log.info("stale or duplicate job delivery ignored", extra={"job_id": job_id})
            return None
        log.info("job started", extra={"job_id": job.id, "pipeline": job.pipeline, "attempt": job.attempts})
        if self.audit:
            self.audit.job("job-started", job.id, job.pipeline, job.study_uid, attempt=job.attempts)
        metrics.JOBS_STARTED.labels(job.pipeline).inc()
        in_progress = metrics.JOBS_IN_PROGRESS.labels(job.pipeline)
        in_progress.inc()
        started = time.perf_counter()
        try:
            return self._run_claimed(job, token, started)
        finally:
            in_progress.dec()

    def _run_claimed(self, job: JobRecord, token: str, started: float) -> JobOutcome | None:
        try:
            with _Heartbeat(self.index, job.id, token, self.heartbeat_interval_s):
                pipeline = get_pipeline(job.pipeline)
                outputs = list(pipeline.run(self.study_input(job), job.options))
                stored = self._store_outputs(job, token, outputs)
        except TransientPipelineError as exc:
            self.index.requeue_job(job.id, token, f"transient: {exc}")
            self._observe(job, "transient_error", started)
            log.warning("job hit a transient error; it will be retried",
                        extra={"job_id": job.id, "reason": str(exc)})
            raise
        except (PipelineInputError, UnknownPipelineError) as exc:
            return self._fail(job, token, str(exc), started)
        except PipelineError as exc:
            return self._fail(job, token, str(exc), started)
        except Exception as exc:
            log.exception("pipeline crashed", extra={"job_id": job.id, "pipeline": job.pipeline})
            return self._fail(job, token, f"{type(exc).__name__}: {exc}", started)
        senders = {s.calling_ae for s in self.index.series_of(job.study_uid)}
        destinations, refusals = self.policy.split(job.destinations, senders)
        if not self.index.complete_job(job.id, token, stored, destinations,
                                       refused={r.destination: r.reason for r in refusals}):
            self._observe(job, "superseded", started)
            log.warning("job was taken over by another run; its results are discarded",
                        extra={"job_id": job.id})
            return None
        duration = self._observe(job, "succeeded", started)
        metrics.JOBS_SUCCEEDED.labels(job.pipeline).inc()
        log.info("job succeeded", extra={"job_id": job.id, "pipeline": job.pipeline,
                                         "outputs": len(stored), "seconds": round(duration, 3)})
        if self.audit:
            self.audit.job("job-succeeded", job.id, job.pipeline, job.study_uid,
                           outputs=len(stored), destinations=destinations)
        if refusals and stored:
            report_refusals(job, refusals, len(stored), self.audit)
        return JobOutcome("succeeded", outputs=len(stored))

    @staticmethod
    def _observe(job: JobRecord, outcome: str, started: float) -> float:
        duration = time.perf_counter() - started
        metrics.JOB_DURATION.labels(job.pipeline, outcome).observe(duration)
        return duration

    def _fail(self, job: JobRecord, token: str, reason: str, started: float) -> JobOutcome:
        self._observe(job, "failed", started)
        metrics.JOBS_FAILED.labels(job.pipeline).inc()
        self.index.fail_job(job.id, token, reason)
        log.warning("job failed", extra={"job_id": job.id, "pipeline": job.pipeline, "reason": reason})
        if self.audit:
            self.audit.job("job-failed", job.id, job.pipeline, job.study_uid, reason=reason)
        return JobOutcome("failed", reason=reason)

    def _store_outputs(
        self, job: JobRecord, token: str, outputs: Sequence[Dataset]
    ) -> list[tuple[str, str, str]]:
        if not outputs:
            return []
        folder = self.spool.result_dir(job.id) / token[:12]
        stored = []
        for ds in outputs:
            sop_uid = str(ds.get("SOPInstanceUID", ""))
            sop_class = str(ds.get("SOPClassUID", ""))
            if not sop_uid or not sop_class:
                raise PipelineError(f"pipeline {job.pipeline} returned an object without SOP UIDs")
            path = folder / f"{uid_to_filename(sop_uid)}.dcm"
            self.spool.write_durably(path, encode_dataset(ds))
            stored.append((sop_uid, sop_class, str(path)))
        return stored


class JobDispatcher:
    """Publishes jobs to the broker, recording the dispatch in the index first."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def dispatch(self, job: JobRecord, new_token: bool = True, countdown: float | None = None) -> bool:
        """Send the job to its queue (after *countdown* seconds); False when the broker is unreachable.

        A job whose dispatch failed stays queued and the supervisor tries again.
        """
        token = job.token if (job.token and not new_token) else uuid.uuid4().hex
        self.index.set_dispatch_token(job.id, token)
        try:
            run_job_task.apply_async(
                args=(job.id, token),
                queue=QUEUES.get(job.queue, QUEUES["cpu"]),
                countdown=countdown,
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
            )
        except Exception as exc:  # kombu raises transport-specific errors
            log.warning("broker unreachable; job stays queued and will be dispatched again",
                        extra={"job_id": job.id, "error": f"{type(exc).__name__}: {exc}"})
            self.index.clear_dispatch(job.id)
            return False
        return True


class JobSupervisor:
    """Re-dispatches jobs whose message or worker was lost.

    A job whose worker went silent *max_attempts* times (killed by the hard
    time limit, the OOM killer, a crash in native code) is failed instead of
    being run again forever: a poison job must not occupy the workers for good.
    """

    def __init__(self, index: Index, dispatcher: JobDispatcher, *,
                 redispatch_after_s: float = 600, stale_after_s: float = 6 * HEARTBEAT_INTERVAL_S,
                 max_attempts: int = 4, audit: AuditLog | None = None) -> None:
        self.index = index
        self.dispatcher = dispatcher
        self.redispatch_after_s = redispatch_after_s
        self.stale_after_s = stale_after_s
        self.max_attempts = max_attempts
        self.audit = audit

    def recover_all(self) -> int:
        """At start-up with an in-process worker: every unfinished job needs a new dispatch."""
        jobs = self.index.jobs(state="queued") + self.index.jobs(state="running")
        for job in jobs:
            if job.state == "running" and job.attempts >= self.max_attempts:
                self._give_up(job)
                continue
            self.dispatcher.dispatch(job, new_token=True)
        if jobs:
            log.info("unfinished jobs dispatched again after restart", extra={"jobs": len(jobs)})
        return len(jobs)

    def tick(self) -> int:
        now = time.time()
        jobs = self.index.jobs_to_redispatch(
            queued_before=now - self.redispatch_after_s, heartbeat_before=now - self.stale_after_s
        )
        for job in jobs:
            if job.state == "running" and job.attempts >= self.max_attempts:
                self._give_up(job)
                continue
            # A queued job keeps its token (whichever copy arrives first runs it);
            # a running job whose worker went silent gets a new one.
            if job.state == "running":
                log.warning("worker of a running job went silent; dispatching the job again",
                            extra={"job_id": job.id, "pipeline": job.pipeline, "attempt": job.attempts})
            self.dispatcher.dispatch(job, new_token=job.state == "running")
        return len(jobs)

    def _give_up(self, job: JobRecord) -> None:
        reason = (f"its worker was lost {job.attempts} times while running it (killed, out of memory, "
                  f"or over jobs.time_limit_s); not run again")
        if self.index.fail_job(job.id, job.token, reason):
            metrics.JOBS_FAILED.labels(job.pipeline).inc()
            log.error("job failed: its worker keeps dying", extra={"job_id": job.id, "pipeline": job.pipeline,
                                                                   "attempts": job.attempts})
            if self.audit:
                self.audit.job("job-failed", job.id, job.pipeline, job.study_uid, reason=reason)


class EmbeddedWorker:
    """A Celery worker running in threads inside ``pacsnode serve``."""

    def __init__(self, app: Celery, concurrency: int = 1) -> None:
        self.hostname = f"pacsnode-embedded@{os.uname().nodename}"
        self._controller = app.WorkController(
            pool_cls="threads",
            concurrency=concurrency,
            queues=list(QUEUES.values()),
            hostname=self.hostname,
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            loglevel="WARNING",
        )
        self._thread = threading.Thread(target=self._controller.start, name="embedded-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()
        metrics.worker_started(self.hostname, ",".join(QUEUES), "threads")

    def stop(self) -> None:
        metrics.WORKER_UP.set(0)
        try:
            self._controller.stop(in_sighandler=False)
        except Exception:
            log.warning("embedded worker did not stop cleanly", exc_info=True)
        self._thread.join(timeout=10)
