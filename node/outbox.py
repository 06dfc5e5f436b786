"""The outbox: results already in the spool, sent to each destination until they arrive.

Items are rows in the index, so retries survive restarts. A failed attempt is
retried with exponential backoff; after ``max_attempts`` the item is a dead
letter, visible in ``pacsnode status`` and the metrics, until ``pacsnode
resend`` queues it again. Items are unique per (destination, SOP Instance
UID), so nothing is sent twice to a destination that already has it.

A destination may accept results only of studies sent by certain calling AE
titles (``accept_results_from``). :class:`DestinationPolicy` decides; results
it refuses are recorded as ``refused`` items (in ``pacsnode status``, the
metrics and the audit trail) and never sent, even if a route names the
destination by mistake. The outbox checks again before sending, in case the
configuration changed after the results were queued.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from node import metrics
from node.audit import AuditLog
from node.config import DestinationConfig, OutboxConfig
from node.index import Index, JobRecord, OutboxItem
from node.sender import DicomSender, SendError

log = logging.getLogger("pacsnode.outbox")

REFUSED = "refused"  # outbox state of results a destination does not accept


@dataclass(frozen=True)
class Refusal:
    """A destination that may not receive a study's results, and why (for the administrator)."""

    destination: str
    reason: str


class DestinationPolicy:
    """Which destinations may receive the results of a study, by the calling AE titles that sent it."""

    def __init__(self, destinations: dict[str, DestinationConfig]) -> None:
        self.destinations = destinations

    def refusal(self, name: str, senders: Collection[str | None]) -> Refusal | None:
        """Why *name* may not receive results of a study sent by *senders*; None if it may."""
        destination = self.destinations.get(name)
        if destination is None or not destination.accept_results_from:
            return None
        accepted = set(destination.accept_results_from)
        if not senders:
            return Refusal(name, "the study's sender is unknown; destination accepts results "
                                 f"from {sorted(accepted)} only")
        unknown = sorted(s or "(unknown)" for s in senders if s not in accepted)
        if unknown:
            return Refusal(name, f"study sent by {unknown}; destination {name!r} accepts results from "
                                 f"{sorted(accepted)} only (destinations.{name}.accept_results_from)")
        return None

    def split(self, names: Sequence[str], senders: Collection[str | None]) -> tuple[list[str], list[Refusal]]:
        """(destinations that may receive the results, refusals for the others)."""
        allowed, refused = [], []
        for name in names:
            refusal = self.refusal(name, senders)
            if refusal is None:
                allowed.append(name)
            else:
                refused.append(refusal)
        return allowed, refused


def _refused(destination: str, instances: int, reason: str, job: JobRecord | None,
             audit: AuditLog | None) -> None:
    metrics.OUTBOX_REFUSED.labels(destination).inc(instances)
    log.warning("results refused for a destination that does not accept this study's sender",
                extra={"destination": destination, "instances": instances, "reason": reason,
                       "job_id": job.id if job else None})
    if audit:
        audit.record("results-refused", destination=destination, instances=instances, reason=reason,
                     job_id=job.id if job else None, study_uid=job.study_uid if job else None)


def report_refusals(job: JobRecord, refusals: Sequence[Refusal], instances: int,
                    audit: AuditLog | None = None) -> None:
    """Log, count and audit results refused for destinations (the index already holds them as ``refused``)."""
    for refusal in refusals:
        _refused(refusal.destination, instances, refusal.reason, job, audit)


class Outbox:
    """Sends due outbox items, one association per destination per round."""

    def __init__(
        self,
        index: Index,
        destinations: dict[str, DestinationConfig],
        config: OutboxConfig,
        calling_ae_title: str,
        audit: AuditLog | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.index = index
        self.destinations = destinations
        self.config = config
        self.calling_ae_title = calling_ae_title
        self.audit = audit
        self.clock = clock
        self.policy = DestinationPolicy(destinations)

    def backoff(self, attempts: int) -> float:
        """Seconds to wait after the *attempts*-th failure."""
        return min(self.config.max_backoff_s, self.config.initial_backoff_s * 2 ** max(0, attempts - 1))

    def process_due(self) -> int:
        """Try every due item once; returns how many were sent."""
        due = self.index.due_outbox(self.clock())
        by_destination: dict[str, list[OutboxItem]] = defaultdict(list)
        for item in due:
            by_destination[item.destination].append(item)
        sent = 0
        for name, items in by_destination.items():
            sent += self._send_to(name, items)
        return sent

    def _send_to(self, name: str, items: list[OutboxItem]) -> int:
        destination = self.destinations.get(name)
        if destination is None:
            for item in items:
                self._failed(item, f"destination {name!r} is no longer configured", final=True)
            return 0
        sender = DicomSender(destination, self.calling_ae_title)
        missing = [i for i in items if not Path(i.path).exists()]
        for item in missing:
            self._failed(item, f"result file {item.path} is missing from the spool", final=True)
        items = [i for i in items if i not in missing]
        items = self._drop_refused(name, items)
        if not items:
            return 0
        try:
            results = sender.send([Path(i.path) for i in items])
        except SendError as exc:
            for item in items:
                self._failed(item, str(exc))
            log.warning("destination unreachable; will retry",
                        extra={"destination": name, "items": len(items), "error": str(exc)})
            return 0
        by_path = {str(r.path): r for r in results}
        sent = 0
        jobs_touched: set[int] = set()
        for item in items:
            result = by_path.get(item.path)
            if result is not None and result.ok:
                self.index.mark_sent(item.id)
                metrics.OUTBOX_SENT.labels(name).inc()
                sent += 1
                if item.job_id is not None:
                    jobs_touched.add(item.job_id)
            else:
                self._failed(item, result.error if result else "not sent")
        if sent:
            log.info("results sent", extra={"destination": name, "instances": sent})
        for job_id in jobs_touched:
            self._maybe_finish_job(job_id, name, sent)
        return sent

    def _drop_refused(self, name: str, items: list[OutboxItem]) -> list[OutboxItem]:
        """Refuse items queued before the destination's allow-list changed; keep the others."""
        if not self.destinations[name].accept_results_from:
            return items
        keep = []
        verdicts: dict[int | None, tuple[JobRecord | None, Refusal | None]] = {}
        for item in items:
            if item.job_id not in verdicts:
                job = self.index.job(item.job_id) if item.job_id is not None else None
                senders = {s.calling_ae for s in self.index.series_of(job.study_uid)} if job else set()
                verdicts[item.job_id] = (job, self.policy.refusal(name, senders))
            job, refusal = verdicts[item.job_id]
            if refusal is None:
                keep.append(item)
                continue
            self.index.refuse_outbox_item(item.id, refusal.reason)
            _refused(name, 1, refusal.reason, job, self.audit)
        return keep

    def _maybe_finish_job(self, job_id: int, destination: str, count: int) -> None:
        job = self.index.job(job_id)
        if job is None:
            return
        if self.audit:
            self.audit.sent(destination, count, job.study_uid, job_id)
        if self.index.job_outbox_pending(job_id) == 0 and job.last_instance_at:
            metrics.END_TO_END.labels(job.pipeline).observe(self.clock() - job.last_instance_at)

    def _failed(self, item: OutboxItem, error: str, final: bool = False) -> None:
        attempts = item.attempts + 1
        dead = final or attempts >= self.config.max_attempts
        self.index.mark_send_failed(item.id, error, self.clock() + self.backoff(attempts), dead)
        metrics.OUTBOX_SEND_FAILURES.labels(item.destination).inc()
        if dead:
            log.error("result moved to dead letters",
                      extra={"destination": item.destination, "attempts": attempts, "error": error})
