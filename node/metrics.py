"""Prometheus metrics of the node. Labels never carry patient or study identifiers.

The job metrics (``pacsnode_job_duration_seconds``, ``pacsnode_jobs_*_total``,
``pacsnode_jobs_in_progress``, ``pacsnode_worker_*``) are observed by whichever
process runs the job: ``pacsnode serve`` with its embedded worker, or a
``pacsnode worker`` (see :mod:`node.worker_metrics`), under the same names.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from node.index import Index
    from node.spool import Spool

REGISTRY = CollectorRegistry(auto_describe=True)

INSTANCES_RECEIVED = Counter(
    "pacsnode_instances_received", "Instances stored and acknowledged", registry=REGISTRY
)
INSTANCES_REJECTED = Counter(
    "pacsnode_instances_rejected",
    "C-STORE requests answered with a failure status, by reason",
    ["reason"],
    registry=REGISTRY,
)
BYTES_RECEIVED = Counter(
    "pacsnode_bytes_received", "Bytes of stored instances", registry=REGISTRY
)
ASSOCIATIONS_ACTIVE = Gauge(
    "pacsnode_associations_active", "Open DICOM associations", registry=REGISTRY
)
ASSOCIATIONS_REJECTED = Counter(
    "pacsnode_associations_rejected",
    "Association requests rejected, by reason",
    ["reason"],
    registry=REGISTRY,
)
CSTORE_DURATION = Histogram(
    "pacsnode_cstore_duration_seconds",
    "Time to store and acknowledge one instance",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=REGISTRY,
)
STUDIES_COMPLETED = Counter(
    "pacsnode_studies_completed", "Studies declared complete", registry=REGISTRY
)
JOB_DURATION = Histogram(
    "pacsnode_job_duration_seconds",
    "Run time of one job run, by pipeline and outcome (succeeded, failed, transient_error, superseded)",
    ["pipeline", "outcome"],
    buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
    registry=REGISTRY,
)
JOBS_STARTED = Counter(
    "pacsnode_jobs_started", "Job runs started (claimed by a worker), by pipeline", ["pipeline"],
    registry=REGISTRY,
)
JOBS_SUCCEEDED = Counter(
    "pacsnode_jobs_succeeded", "Job runs whose results were committed, by pipeline", ["pipeline"],
    registry=REGISTRY,
)
JOBS_FAILED = Counter(
    "pacsnode_jobs_failed", "Job runs that failed the job for good, by pipeline", ["pipeline"],
    registry=REGISTRY,
)
JOBS_RETRIED = Counter(
    "pacsnode_jobs_retried",
    "Job runs that hit a transient error and were queued again, by pipeline",
    ["pipeline"],
    registry=REGISTRY,
)
JOBS_IN_PROGRESS = Gauge(
    "pacsnode_jobs_in_progress", "Jobs running now, by pipeline", ["pipeline"],
    multiprocess_mode="livesum", registry=REGISTRY,
)
WORKER_UP = Gauge(
    "pacsnode_worker_up", "1 while a worker in this process consumes jobs",
    multiprocess_mode="livemax", registry=REGISTRY,
)
WORKER_INFO = Gauge(
    "pacsnode_worker_info", "A running worker: its name, queues, pool and pacsnode version (value 1)",
    ["worker", "queues", "pool", "version"],
    multiprocess_mode="livemax", registry=REGISTRY,
)
OUTBOX_REFUSED = Counter(
    "pacsnode_outbox_refused",
    "Result instances refused for a destination whose accept_results_from excludes the study's sender",
    ["destination"],
    registry=REGISTRY,
)

# What a `pacsnode worker` exposes: the metrics of the work done in its processes.
WORKER_FAMILIES = frozenset({
    "pacsnode_job_duration_seconds", "pacsnode_jobs_started", "pacsnode_jobs_succeeded",
    "pacsnode_jobs_failed", "pacsnode_jobs_retried", "pacsnode_jobs_in_progress",
    "pacsnode_worker_up", "pacsnode_worker_info", "pacsnode_outbox_refused",
})
END_TO_END = Histogram(
    "pacsnode_end_to_end_seconds",
    "From the last instance of a study received to the job's results sent",
    ["pipeline"],
    buckets=(1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 300, 600, 1800),
    registry=REGISTRY,
)
OUTBOX_SENT = Counter(
    "pacsnode_outbox_sent", "Result instances sent, by destination", ["destination"],
    registry=REGISTRY,
)
OUTBOX_SEND_FAILURES = Counter(
    "pacsnode_outbox_send_failures",
    "Failed send attempts, by destination",
    ["destination"],
    registry=REGISTRY,
)
UP = Gauge("pacsnode_up", "1 while the node is serving", registry=REGISTRY)


def worker_started(worker: str, queues: str, pool: str) -> None:
    """Say that a worker runs in this process (``pacsnode serve``'s embedded one or ``pacsnode worker``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("pacsnode")
    except PackageNotFoundError:
        release = "unknown"
    WORKER_INFO.labels(worker, queues, pool, release).set(1)
    WORKER_UP.set(1)


class IndexCollector(Collector):
    """Gauges read from the index and the spool at scrape time."""

    def __init__(self, index: "Index", spool: "Spool") -> None:
        self.index = index
        self.spool = spool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        jobs = GaugeMetricFamily(
            "pacsnode_jobs", "Jobs in the index, by pipeline and state", labels=["pipeline", "state"]
        )
        for (pipeline, state), count in sorted(self.index.job_counts().items()):
            jobs.add_metric([pipeline, state], count)
        yield jobs
        outbox = GaugeMetricFamily(
            "pacsnode_outbox_items",
            "Outbox items, by destination and state",
            labels=["destination", "state"],
        )
        for (dest, state), count in sorted(self.index.outbox_counts().items()):
            outbox.add_metric([dest, state], count)
        yield outbox
        free = self.spool.free_bytes()
        yield GaugeMetricFamily("pacsnode_spool_free_bytes", "Free bytes on the spool's disk", value=free)
        yield GaugeMetricFamily(
            "pacsnode_spool_accepting",
            "1 while the spool has more than the configured minimum free",
            value=1 if free >= self.spool.min_free_bytes else 0,
        )


def attach_index(index: "Index", spool: "Spool") -> IndexCollector:
    collector = IndexCollector(index, spool)
    REGISTRY.register(collector)
    return collector
