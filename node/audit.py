"""The audit trail: JSON lines of who sent which study when, which job ran, what went where.

In the spirit of IHE ATNA, for shipping to a SIEM. Study Instance UIDs are
recorded (they are needed to trace a study); patient names and IDs never are.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any


class AuditLog:
    """Appends audit events to a JSON-lines file, one line per event."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Instance arrivals are summarised per study and association, not per file.
        self._seen: set[tuple[str, str]] = set()

    def record(self, event: str, **fields: Any) -> None:
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "event": event, **fields}
        line = json.dumps(entry, sort_keys=True) + "\n"
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line.encode("utf-8"))
            finally:
                os.close(fd)

    def instance_received(self, calling_ae: str, study_uid: str, sop_class_uid: str) -> None:
        key = (calling_ae, study_uid)
        if key in self._seen:
            return
        if len(self._seen) > 10_000:
            self._seen.clear()
        self._seen.add(key)
        self.record("study-received", calling_ae=calling_ae, study_uid=study_uid,
                    first_sop_class=sop_class_uid)

    def job(self, event: str, job_id: int, pipeline: str, study_uid: str, **fields: Any) -> None:
        self.record(event, job_id=job_id, pipeline=pipeline, study_uid=study_uid, **fields)

    def sent(self, destination: str, count: int, study_uid: str | None, job_id: int | None) -> None:
        self.record("results-sent", destination=destination, instances=count,
                    study_uid=study_uid, job_id=job_id)
