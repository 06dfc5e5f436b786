"""Prometheus metrics of the node. Labels never carry patient or study identifiers."""

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
    "Pipeline run time per job",
    ["pipeline"],
    buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
    registry=REGISTRY,
)
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
