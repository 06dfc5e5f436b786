"""Jobs: claim tokens make every delivery idempotent; results and outbox rows commit together."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom import dcmread

from inference.base import Pipeline, StudyInput, TransientPipelineError
from inference.inventory import StudyInventoryPipeline
from inference.registry import register_pipeline
from node.clinical import ClinicalData, ClinicalStore
from node.config import NodeConfig
from node.index import Index, NewJob
from node.jobs import (
    EmbeddedWorker,
    JobDispatcher,
    JobRunner,
    JobSupervisor,
    _Context,
    configure_celery,
)
from node.service import reindex_spool
from node.spool import Spool
from tests.node_harness import wait_until, write_mr_series


@pytest.fixture()
def study(tmp_path):
    spool = Spool(tmp_path / "spool", fsync=False)
    index = Index(spool.paths.index)
    staging = tmp_path / "staging"
    paths = write_mr_series(staging, count=3)
    ds = dcmread(paths[0])
    for p in paths:  # place the files as the listener would, then index them as after a crash
        target = spool.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, dcmread(p).SOPInstanceUID)
        spool.write_durably(target, p.read_bytes())
    assert reindex_spool(spool, index) == 3
    return spool, index, str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def _job(index: Index, study_uid: str, series_uid: str, pipeline: str = "inventory") -> int:
    job_id = index.create_job(NewJob(key=f"{study_uid}|r|{pipeline}", study_uid=study_uid, route="r",
                                     pipeline=pipeline, queue="cpu", series_uids=[series_uid],
                                     destinations=["A", "B"], last_instance_at=time.time()))
    assert job_id is not None
    return job_id


def test_same_key_creates_one_job(study):
    _, index, study_uid, series_uid = study
    _job(index, study_uid, series_uid)
    assert index.create_job(NewJob(key=f"{study_uid}|r|inventory", study_uid=study_uid, route="r",
                                   pipeline="inventory", queue="cpu", series_uids=[series_uid])) is None
    assert len(index.jobs(study_uid=study_uid)) == 1


def test_only_the_current_token_runs_the_job(study):
    spool, index, study_uid, series_uid = study
    job_id = _job(index, study_uid, series_uid)
    index.set_dispatch_token(job_id, "old")
    index.set_dispatch_token(job_id, "new")
    runner = JobRunner(index, spool)
    assert runner.run(job_id, "old") is None          # a stale delivery
    outcome = runner.run(job_id, "new")
    assert outcome is not None and outcome.state == "succeeded" and outcome.outputs == 1
    assert runner.run(job_id, "new") is None          # a duplicate delivery of the same message
    job = index.job(job_id)
    assert job.state == "succeeded" and job.attempts == 1
    items = index.outbox_items()
    assert sorted(i.destination for i in items) == ["A", "B"]
    sr = dcmread(items[0].path)
    assert sr.Modality == "SR" and sr.StudyInstanceUID == study_uid
    assert sr.SOPInstanceUID == items[0].sop_instance_uid == items[1].sop_instance_uid


def test_results_are_discarded_when_another_run_took_over(study):
    _, index, study_uid, series_uid = study
    job_id = _job(index, study_uid, series_uid)
    index.set_dispatch_token(job_id, "first")
    assert index.claim_job(job_id, "first") is not None
    # The supervisor decides the first worker is dead and dispatches again.
    index.set_dispatch_token(job_id, "second")
    assert not index.complete_job(job_id, "first", [("1.2.3", "1.2.840.10008.5.1.4.1.1.88.33", "/x")], ["A"])
    assert index.outbox_items() == []
    assert index.claim_job(job_id, "second") is not None


def test_bad_input_fails_the_job_with_the_reason(study):
    spool, index, study_uid, series_uid = study
    job_id = _job(index, study_uid, "1.2.3.404")
    index.set_dispatch_token(job_id, "t")
    outcome = JobRunner(index, spool).run(job_id, "t")
    assert outcome.state == "failed"
    assert "series 1.2.3.404" in index.job(job_id).reason
    job_id = _job(index, study_uid, series_uid, pipeline="no-such-pipeline")
    index.set_dispatch_token(job_id, "t")
    JobRunner(index, spool).run(job_id, "t")
    assert "no pipeline named 'no-such-pipeline'" in index.job(job_id).reason


def test_supervisor_redispatches_a_silent_running_job(study, tmp_path):
    _, index, study_uid, series_uid = study
    configure_celery(NodeConfig(spool={"path": str(tmp_path / "spool")}))
    job_id = _job(index, study_uid, series_uid)
    dispatcher = JobDispatcher(index)
    assert dispatcher.dispatch(index.job(job_id))
    first = index.job(job_id).token
    assert index.claim_job(job_id, first) is not None
    supervisor = JobSupervisor(index, dispatcher, stale_after_s=0.0)
    assert supervisor.tick() == 1
    job = index.job(job_id)
    assert job.state == "queued" and job.token != first


def test_embedded_worker_runs_dispatched_jobs(study, tmp_path):
    spool, index, study_uid, series_uid = study
    config = NodeConfig(spool={"path": str(tmp_path / "spool")})
    app = configure_celery(config)
    _Context.use(config, JobRunner(index, spool))
    worker = EmbeddedWorker(app)
    worker.start()
    try:
        job_id = _job(index, study_uid, series_uid)
        assert JobDispatcher(index).dispatch(index.job(job_id))
        job = wait_until(lambda: index.job(job_id).state == "succeeded" and index.job(job_id),
                         timeout=30, what="the embedded worker to finish the job")
        assert job.output_count == 1
    finally:
        worker.stop()


class _FlakyPipeline(Pipeline):
    """Fails transiently on its first run, then succeeds (counts runs in a file)."""

    name = "test-flaky"
    counter: Path

    def run(self, study: StudyInput, options):  # type: ignore[no-untyped-def]
        runs = int(self.counter.read_text()) if self.counter.exists() else 0
        self.counter.write_text(str(runs + 1))
        if runs == 0:
            raise TransientPipelineError("GPU briefly unavailable")
        return StudyInventoryPipeline().run(study, options)


def test_transient_failure_is_retried_with_backoff(study, tmp_path):
    spool, index, study_uid, series_uid = study
    _FlakyPipeline.counter = tmp_path / "runs"
    register_pipeline(_FlakyPipeline)
    config = NodeConfig(spool={"path": str(tmp_path / "spool")}, jobs={"max_retries": 2})
    app = configure_celery(config)
    _Context.use(config, JobRunner(index, spool))
    worker = EmbeddedWorker(app)
    worker.start()
    try:
        job_id = _job(index, study_uid, series_uid, pipeline="test-flaky")
        assert JobDispatcher(index).dispatch(index.job(job_id))
        job = wait_until(lambda: index.job(job_id).state == "succeeded" and index.job(job_id),
                         timeout=30, what="the retried job to succeed")
        assert job.attempts == 2
        assert (tmp_path / "runs").read_text() == "2"
    finally:
        worker.stop()


def test_a_job_sees_the_clinical_data_of_its_accession_number(study):
    spool, index, study_uid, series_uid = study
    runner = JobRunner(index, spool)
    job = index.job(_job(index, study_uid, series_uid))
    accession = str(dcmread(index.series_instances(series_uid)[0]).AccessionNumber)
    assert runner.study_input(job).extra == {}  # nothing stored yet: image-only pipelines answer
    ClinicalStore(index).put(accession, ClinicalData.parse({"age_years": 61, "afp_ng_ml": 850}))
    assert runner.study_input(job).extra == {"clinical": {"age_years": 61, "afp_ng_ml": 850.0}}
    ClinicalStore(index).put("OTHER-ACC", ClinicalData.parse({"cirrhosis": True}))
    assert runner.study_input(job).extra["clinical"] == {"age_years": 61, "afp_ng_ml": 850.0}
