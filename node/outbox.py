"""The outbox: results already in the spool, sent to each destination until they arrive.

Items are rows in the index, so retries survive restarts. A failed attempt is
retried with exponential backoff; after ``max_attempts`` the item is a dead
letter, visible in ``pacsnode status`` and the metrics, until ``pacsnode
resend`` queues it again. Items are unique per (destination, SOP Instance
UID), so nothing is sent twice to a destination that already has it.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from node import metrics
from node.audit import AuditLog
from node.config import DestinationConfig, OutboxConfig
from node.index import Index, OutboxItem
from node.sender import DicomSender, SendError

log = logging.getLogger("pacsnode.outbox")


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
