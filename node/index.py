"""The index: an embedded SQLite database of studies, series, instances, jobs and the outbox.

It lives in the spool, survives restarts, and is shared by the listener, the
job runner and the outbox (several processes may open it; SQLite serialises
writers). Received files are on disk before they are indexed, and
:meth:`Index.missing_files` lets start-up re-index anything a crash left out.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    state TEXT NOT NULL DEFAULT 'receiving',
    first_received_at REAL NOT NULL,
    last_received_at REAL NOT NULL,
    completed_at REAL,
    completions INTEGER NOT NULL DEFAULT 0,
    instance_count INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS studies_state ON studies(state, last_received_at);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    modality TEXT,
    series_description TEXT,
    series_number INTEGER,
    body_part TEXT,
    image_type TEXT,
    temporal_positions INTEGER,
    calling_ae TEXT,
    instance_count INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS series_study ON series(study_uid);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    temporal_position INTEGER,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    study_uid TEXT NOT NULL,
    route TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    queue TEXT NOT NULL,
    series_uids TEXT NOT NULL,
    options TEXT NOT NULL,
    destinations TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    token TEXT,
    created_at REAL NOT NULL,
    dispatched_at REAL,
    started_at REAL,
    heartbeat_at REAL,
    finished_at REAL,
    last_instance_at REAL,
    output_count INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs(study_uid);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER,
    destination TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    created_at REAL NOT NULL,
    sent_at REAL,
    UNIQUE (destination, sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(state, next_attempt_at);
CREATE TABLE IF NOT EXISTS clinical_data (
    accession_number TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    source TEXT,
    received_at REAL NOT NULL
);
"""

JOB_STATES = ("queued", "running", "succeeded", "failed")
OUTBOX_STATES = ("pending", "sent", "dead", "refused")


class IndexDatabaseError(Exception):
    """The index could not be read or written."""


@dataclass(frozen=True)
class InstanceRecord:
    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    study_uid: str
    path: str
    size: int
    modality: str | None = None
    series_description: str | None = None
    series_number: int | None = None
    body_part: str | None = None
    image_type: str | None = None
    temporal_positions: int | None = None
    temporal_position: int | None = None
    calling_ae: str | None = None


@dataclass(frozen=True)
class SeriesRecord:
    series_uid: str
    study_uid: str
    modality: str | None
    series_description: str | None
    series_number: int | None
    body_part: str | None
    image_type: str | None
    temporal_positions: int
    calling_ae: str | None
    instance_count: int


@dataclass(frozen=True)
class StudyRecord:
    study_uid: str
    state: str
    first_received_at: float
    last_received_at: float
    completed_at: float | None
    completions: int
    instance_count: int
    bytes: int


@dataclass(frozen=True)
class JobRecord:
    id: int
    key: str
    study_uid: str
    route: str
    pipeline: str
    queue: str
    series_uids: list[str]
    options: dict[str, Any]
    destinations: list[str]
    state: str
    attempts: int
    reason: str | None
    token: str | None
    created_at: float
    dispatched_at: float | None
    started_at: float | None
    heartbeat_at: float | None
    finished_at: float | None
    last_instance_at: float | None
    output_count: int | None


@dataclass(frozen=True)
class OutboxItem:
    id: int
    job_id: int | None
    destination: str
    sop_instance_uid: str
    sop_class_uid: str
    path: str
    state: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    created_at: float
    sent_at: float | None


@dataclass
class NewJob:
    key: str
    study_uid: str
    route: str
    pipeline: str
    queue: str
    series_uids: list[str]
    options: dict[str, Any] = field(default_factory=dict)
    destinations: list[str] = field(default_factory=list)
    last_instance_at: float | None = None


def _job(row: sqlite3.Row) -> JobRecord:
    data = dict(row)
    for name in ("series_uids", "options", "destinations"):
        data[name] = json.loads(data[name])
    return JobRecord(**data)


class Index:
    """Thread-safe access to the node's SQLite index."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                self.path, timeout=30, check_same_thread=False, isolation_level=None
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            # Files are fsynced before indexing and the index can be rebuilt from
            # the spool, so NORMAL (no fsync per commit) is safe and much faster.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        except sqlite3.Error as exc:
            raise IndexDatabaseError(f"cannot open the index at {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write transaction (``BEGIN IMMEDIATE`` … ``COMMIT``)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise IndexDatabaseError(f"index at {self.path} is not writable: {exc}") from exc
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                try:
                    self._db.execute("COMMIT")
                except sqlite3.Error as exc:
                    self._db.execute("ROLLBACK")
                    raise IndexDatabaseError(f"cannot commit to the index: {exc}") from exc

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise IndexDatabaseError(f"cannot read the index: {exc}") from exc

    def healthy(self) -> tuple[bool, str]:
        try:
            self._query("SELECT 1")
            return True, "ok"
        except IndexDatabaseError as exc:
            return False, str(exc)

    # -- instances ---------------------------------------------------------

    def add_instance(self, rec: InstanceRecord, received_at: float | None = None) -> bool:
        """Index a stored instance; returns False if it was already indexed.

        A new instance re-opens a completed study (state back to 'receiving').
        """
        now = received_at if received_at is not None else time.time()
        try:
            with self.transaction() as db:
                cur = db.execute(
                    "INSERT OR IGNORE INTO instances(sop_instance_uid, sop_class_uid, series_uid,"
                    " study_uid, temporal_position, path, size, received_at)"
                    " VALUES (?,?,?,?,?,?,?,?)",
                    (
                        rec.sop_instance_uid,
                        rec.sop_class_uid,
                        rec.series_uid,
                        rec.study_uid,
                        rec.temporal_position,
                        rec.path,
                        rec.size,
                        now,
                    ),
                )
                if cur.rowcount == 0:
                    return False
                db.execute(
                    "INSERT INTO series(series_uid, study_uid, modality, series_description,"
                    " series_number, body_part, image_type, temporal_positions, calling_ae,"
                    " instance_count) VALUES (?,?,?,?,?,?,?,?,?,1)"
                    " ON CONFLICT(series_uid) DO UPDATE SET instance_count = instance_count + 1,"
                    " temporal_positions = max(coalesce(temporal_positions, 0),"
                    " coalesce(excluded.temporal_positions, 0))",
                    (
                        rec.series_uid,
                        rec.study_uid,
                        rec.modality,
                        rec.series_description,
                        rec.series_number,
                        rec.body_part,
                        rec.image_type,
                        rec.temporal_positions,
                        rec.calling_ae,
                    ),
                )
                db.execute(
                    "INSERT INTO studies(study_uid, state, first_received_at, last_received_at,"
                    " instance_count, bytes) VALUES (?, 'receiving', ?, ?, 1, ?)"
                    " ON CONFLICT(study_uid) DO UPDATE SET state = 'receiving',"
                    " last_received_at = max(last_received_at, excluded.last_received_at),"
                    " instance_count = instance_count + 1, bytes = bytes + excluded.bytes",
                    (rec.study_uid, now, now, rec.size),
                )
                return True
        except sqlite3.Error as exc:
            raise IndexDatabaseError(f"cannot index instance: {exc}") from exc

    def indexed_paths(self) -> set[str]:
        return {row[0] for row in self._query("SELECT path FROM instances")}

    def series_instances(self, series_uid: str) -> list[str]:
        rows = self._query(
            "SELECT path FROM instances WHERE series_uid = ? ORDER BY path", (series_uid,)
        )
        return [row[0] for row in rows]

    def distinct_temporal_positions(self, series_uid: str) -> int:
        row = self._query(
            "SELECT count(DISTINCT temporal_position) FROM instances WHERE series_uid = ?",
            (series_uid,),
        )
        return int(row[0][0])

    # -- studies and series ------------------------------------------------

    def study(self, study_uid: str) -> StudyRecord | None:
        rows = self._query("SELECT * FROM studies WHERE study_uid = ?", (study_uid,))
        return StudyRecord(**dict(rows[0])) if rows else None

    def studies(self, limit: int = 1000) -> list[StudyRecord]:
        rows = self._query(
            "SELECT * FROM studies ORDER BY last_received_at DESC LIMIT ?", (limit,)
        )
        return [StudyRecord(**dict(r)) for r in rows]

    def series_of(self, study_uid: str) -> list[SeriesRecord]:
        rows = self._query(
            "SELECT * FROM series WHERE study_uid = ? ORDER BY series_number, series_uid",
            (study_uid,),
        )
        out = []
        for row in rows:
            data = dict(row)
            declared = data.get("temporal_positions") or 0
            counted = self.distinct_temporal_positions(data["series_uid"])
            data["temporal_positions"] = max(declared, counted, 1)
            out.append(SeriesRecord(**data))
        return out

    def studies_stable_since(self, cutoff: float) -> list[tuple[str, float]]:
        """(study, last arrival) for studies still receiving with nothing since *cutoff*."""
        rows = self._query(
            "SELECT study_uid, last_received_at FROM studies"
            " WHERE state = 'receiving' AND last_received_at <= ?",
            (cutoff,),
        )
        return [(r[0], r[1]) for r in rows]

    def mark_study_complete(self, study_uid: str, last_received_at: float) -> bool:
        """Complete the study if nothing arrived since *last_received_at*; True if it did."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE studies SET state = 'complete', completed_at = ?,"
                " completions = completions + 1"
                " WHERE study_uid = ? AND state = 'receiving' AND last_received_at <= ?",
                (time.time(), study_uid, last_received_at),
            )
            return cur.rowcount == 1

    def finished_studies_before(self, cutoff: float) -> list[str]:
        """Complete studies older than *cutoff* with no job or outbox work left."""
        rows = self._query(
            "SELECT s.study_uid FROM studies s WHERE s.state = 'complete'"
            " AND s.last_received_at <= ? AND NOT EXISTS (SELECT 1 FROM jobs j"
            " WHERE j.study_uid = s.study_uid AND j.state IN ('queued','running'))"
            " AND NOT EXISTS (SELECT 1 FROM outbox o JOIN jobs j ON o.job_id = j.id"
            " WHERE j.study_uid = s.study_uid AND o.state = 'pending')",
            (cutoff,),
        )
        return [r[0] for r in rows]

    def forget_study(self, study_uid: str) -> list[int]:
        """Remove a study and its jobs and outbox rows; returns the removed job ids."""
        with self.transaction() as db:
            job_ids = [
                r[0] for r in db.execute("SELECT id FROM jobs WHERE study_uid = ?", (study_uid,))
            ]
            db.executemany("DELETE FROM outbox WHERE job_id = ?", [(j,) for j in job_ids])
            db.execute("DELETE FROM jobs WHERE study_uid = ?", (study_uid,))
            db.execute("DELETE FROM instances WHERE study_uid = ?", (study_uid,))
            db.execute("DELETE FROM series WHERE study_uid = ?", (study_uid,))
            db.execute("DELETE FROM studies WHERE study_uid = ?", (study_uid,))
            return job_ids

    # -- jobs ----------------------------------------------------------------

    def job_keys_for_study(self, study_uid: str) -> set[str]:
        rows = self._query("SELECT key FROM jobs WHERE study_uid = ?", (study_uid,))
        return {r[0] for r in rows}

    def create_job(self, job: NewJob) -> int | None:
        """Insert a queued job; returns its id, or None when its key already exists."""
        with self.transaction() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO jobs(key, study_uid, route, pipeline, queue, series_uids,"
                " options, destinations, state, created_at, last_instance_at)"
                " VALUES (?,?,?,?,?,?,?,?, 'queued', ?, ?)",
                (
                    job.key,
                    job.study_uid,
                    job.route,
                    job.pipeline,
                    job.queue,
                    json.dumps(job.series_uids),
                    json.dumps(job.options, sort_keys=True),
                    json.dumps(job.destinations),
                    time.time(),
                    job.last_instance_at,
                ),
            )
            return cur.lastrowid if cur.rowcount == 1 else None

    def job(self, job_id: int) -> JobRecord | None:
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def jobs(self, study_uid: str | None = None, state: str | None = None) -> list[JobRecord]:
        sql = "SELECT * FROM jobs WHERE 1=1"
        params: list[Any] = []
        if study_uid is not None:
            sql += " AND study_uid = ?"
            params.append(study_uid)
        if state is not None:
            sql += " AND state = ?"
            params.append(state)
        return [_job(r) for r in self._query(sql + " ORDER BY id", params)]

    def set_dispatch_token(self, job_id: int, token: str) -> None:
        """Record the token of the newest dispatch; older deliveries will be ignored."""
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET token = ?, dispatched_at = ?, state = 'queued'"
                " WHERE id = ? AND state IN ('queued', 'running')",
                (token, time.time(), job_id),
            )

    def clear_dispatch(self, job_id: int) -> None:
        """Forget a dispatch that never reached the broker, so the supervisor retries soon."""
        with self.transaction() as db:
            db.execute("UPDATE jobs SET dispatched_at = NULL WHERE id = ?", (job_id,))

    def claim_job(self, job_id: int, token: str) -> JobRecord | None:
        """Mark the job running for the holder of *token*; None if it is not theirs to run."""
        now = time.time()
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = ?,"
                " heartbeat_at = ?, reason = NULL WHERE id = ? AND token = ? AND state = 'queued'",
                (now, now, job_id, token),
            )
            if cur.rowcount != 1:
                return None
            return _job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def heartbeat(self, job_id: int, token: str) -> bool:
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND token = ? AND state = 'running'",
                (time.time(), job_id, token),
            )
            return cur.rowcount == 1

    def requeue_job(self, job_id: int, token: str, reason: str) -> None:
        """Give a running job back to the queue (a transient failure; Celery will retry)."""
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET state = 'queued', reason = ? WHERE id = ? AND token = ?",
                (reason, job_id, token),
            )

    def fail_job(self, job_id: int, token: str | None, reason: str) -> bool:
        with self.transaction() as db:
            sql = "UPDATE jobs SET state = 'failed', reason = ?, finished_at = ? WHERE id = ?"
            params: list[Any] = [reason, time.time(), job_id]
            if token is not None:
                sql += " AND token = ?"
                params.append(token)
            return db.execute(sql, params).rowcount == 1

    def complete_job(
        self,
        job_id: int,
        token: str,
        outputs: list[tuple[str, str, str]],
        destinations: list[str],
        refused: Mapping[str, str] | None = None,
    ) -> bool:
        """Atomically mark the job succeeded and queue its outputs for each destination.

        *outputs* holds (sop_instance_uid, sop_class_uid, path). *refused* maps
        destinations that do not accept this study's results to the reason;
        their items are recorded in state ``refused`` (never sent) in the same
        transaction. Returns False (and changes nothing) if another run owns the job now.
        """
        now = time.time()
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE jobs SET state = 'succeeded', finished_at = ?, output_count = ?,"
                " reason = NULL WHERE id = ? AND token = ? AND state = 'running'",
                (now, len(outputs), job_id, token),
            )
            if cur.rowcount != 1:
                return False
            db.executemany(
                "INSERT OR IGNORE INTO outbox(job_id, destination, sop_instance_uid,"
                " sop_class_uid, path, next_attempt_at, created_at) VALUES (?,?,?,?,?,?,?)",
                [
                    (job_id, dest, sop, cls, path, now, now)
                    for dest in destinations
                    for (sop, cls, path) in outputs
                ],
            )
            db.executemany(
                "INSERT OR IGNORE INTO outbox(job_id, destination, sop_instance_uid, sop_class_uid, path,"
                " state, last_error, next_attempt_at, created_at) VALUES (?,?,?,?,?,'refused',?,?,?)",
                [
                    (job_id, dest, sop, cls, path, reason, now, now)
                    for dest, reason in (refused or {}).items()
                    for (sop, cls, path) in outputs
                ],
            )
            return True

    def refuse_outbox_item(self, item_id: int, reason: str) -> None:
        """Mark a queued item ``refused``: its destination no longer accepts it; it is never sent."""
        with self.transaction() as db:
            db.execute("UPDATE outbox SET state = 'refused', last_error = ? WHERE id = ?", (reason, item_id))

    def jobs_to_redispatch(self, queued_before: float, heartbeat_before: float) -> list[JobRecord]:
        """Queued jobs not picked up in time, and running jobs whose worker went silent."""
        rows = self._query(
            "SELECT * FROM jobs WHERE (state = 'queued' AND coalesce(dispatched_at, 0) <= ?)"
            " OR (state = 'running' AND coalesce(heartbeat_at, 0) <= ?) ORDER BY id",
            (queued_before, heartbeat_before),
        )
        return [_job(r) for r in rows]

    def retry_job(self, job_id: int) -> bool:
        """Put a failed job back in the queue (an administrator's decision)."""
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE jobs SET state = 'queued', reason = NULL, dispatched_at = NULL,"
                " finished_at = NULL WHERE id = ? AND state = 'failed'",
                (job_id,),
            )
            return cur.rowcount == 1

    def job_counts(self) -> dict[tuple[str, str], int]:
        rows = self._query("SELECT pipeline, state, count(*) FROM jobs GROUP BY pipeline, state")
        return {(r[0], r[1]): r[2] for r in rows}

    # -- outbox --------------------------------------------------------------

    def due_outbox(self, now: float, limit: int = 500) -> list[OutboxItem]:
        rows = self._query(
            "SELECT * FROM outbox WHERE state = 'pending' AND next_attempt_at <= ?"
            " ORDER BY destination, id LIMIT ?",
            (now, limit),
        )
        return [OutboxItem(**dict(r)) for r in rows]

    def outbox_items(self, state: str | None = None) -> list[OutboxItem]:
        if state is None:
            rows = self._query("SELECT * FROM outbox ORDER BY id")
        else:
            rows = self._query("SELECT * FROM outbox WHERE state = ? ORDER BY id", (state,))
        return [OutboxItem(**dict(r)) for r in rows]

    def mark_sent(self, item_id: int) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE outbox SET state = 'sent', sent_at = ?, last_error = NULL,"
                " attempts = attempts + 1 WHERE id = ?",
                (time.time(), item_id),
            )

    def mark_send_failed(
        self, item_id: int, error: str, next_attempt_at: float, dead: bool
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ?,"
                " state = ? WHERE id = ?",
                (error, next_attempt_at, "dead" if dead else "pending", item_id),
            )

    def resend(self, destination: str | None = None, include_sent: bool = False) -> int:
        """Re-queue dead (and optionally sent) items for immediate sending."""
        states = ("dead", "sent") if include_sent else ("dead",)
        sql = (
            "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?,"
            f" last_error = NULL WHERE state IN ({','.join('?' * len(states))})"
        )
        params: list[Any] = [time.time(), *states]
        if destination is not None:
            sql += " AND destination = ?"
            params.append(destination)
        with self.transaction() as db:
            return db.execute(sql, params).rowcount

    def job_outbox_pending(self, job_id: int) -> int:
        rows = self._query(
            "SELECT count(*) FROM outbox WHERE job_id = ? AND state = 'pending'", (job_id,)
        )
        return int(rows[0][0])

    def outbox_counts(self) -> dict[tuple[str, str], int]:
        rows = self._query(
            "SELECT destination, state, count(*) FROM outbox GROUP BY destination, state"
        )
        return {(r[0], r[1]): r[2] for r in rows}

    # -- clinical data (node.clinical validates; this only stores) -----------

    def put_clinical_data(self, accession_number: str, data_json: str, source: str | None,
                          received_at: float) -> bool:
        """Store the clinical data of an accession, replacing any earlier; True if it replaced some."""
        with self.transaction() as db:
            existed = db.execute(
                "SELECT 1 FROM clinical_data WHERE accession_number = ?", (accession_number,)
            ).fetchone() is not None
            db.execute(
                "INSERT INTO clinical_data(accession_number, data, source, received_at) VALUES (?,?,?,?)"
                " ON CONFLICT(accession_number) DO UPDATE SET data = excluded.data,"
                " source = excluded.source, received_at = excluded.received_at",
                (accession_number, data_json, source, received_at),
            )
            return existed

    def clinical_data(self, accession_number: str) -> tuple[str, str | None, float] | None:
        """(data as JSON, source, received_at) of an accession, or None."""
        rows = self._query(
            "SELECT data, source, received_at FROM clinical_data WHERE accession_number = ?",
            (accession_number,),
        )
        return (rows[0][0], rows[0][1], rows[0][2]) if rows else None

    def delete_clinical_data(self, accession_number: str) -> bool:
        with self.transaction() as db:
            cur = db.execute("DELETE FROM clinical_data WHERE accession_number = ?", (accession_number,))
            return cur.rowcount == 1
