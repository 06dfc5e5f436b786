"""Recovering jobs whose worker died: run again, but not forever (a poison job fails with the reason)."""

from __future__ import annotations

import json

from node.audit import AuditLog
from node.config import NodeConfig
from node.index import Index, NewJob
from node.jobs import JobDispatcher, JobSupervisor, configure_celery
from node.spool import Spool


def _running_job(index: Index, attempts: int) -> int:
    """A job whose worker died *attempts* times while running it (claimed, never finished)."""
    job_id = index.create_job(NewJob(key="k", study_uid="1.2.3", route="r", pipeline="inventory",
                                     queue="cpu", series_uids=["1.2.3.4"]))
    assert job_id is not None
    for attempt in range(attempts):
        index.set_dispatch_token(job_id, f"token-{attempt}")
        assert index.claim_job(job_id, f"token-{attempt}") is not None
    return job_id


def _supervisor(tmp_path, index: Index) -> JobSupervisor:
    configure_celery(NodeConfig(spool={"path": str(tmp_path / "spool")}))
    return JobSupervisor(index, JobDispatcher(index), stale_after_s=0.0, max_attempts=3,
                         audit=AuditLog(tmp_path / "audit.log"))


def test_a_job_whose_worker_died_is_dispatched_again(tmp_path):
    index = Index(Spool(tmp_path / "spool", fsync=False).paths.index)
    job_id = _running_job(index, attempts=2)
    assert _supervisor(tmp_path, index).tick() == 1
    job = index.job(job_id)
    assert job.state == "queued" and job.token not in ("token-0", "token-1")


def test_a_job_that_keeps_killing_its_worker_is_failed_with_the_reason(tmp_path):
    index = Index(Spool(tmp_path / "spool", fsync=False).paths.index)
    job_id = _running_job(index, attempts=3)
    supervisor = _supervisor(tmp_path, index)
    supervisor.tick()
    job = index.job(job_id)
    assert job.state == "failed"
    assert "worker was lost 3 times" in job.reason and "jobs.time_limit_s" in job.reason
    assert supervisor.tick() == 0  # and it stays failed: nothing to dispatch
    [event] = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert event["event"] == "job-failed" and event["job_id"] == job_id


def test_restart_with_an_embedded_worker_does_not_rerun_a_poison_job(tmp_path):
    index = Index(Spool(tmp_path / "spool", fsync=False).paths.index)
    poison = _running_job(index, attempts=3)
    supervisor = _supervisor(tmp_path, index)
    supervisor.recover_all()
    assert index.job(poison).state == "failed"
