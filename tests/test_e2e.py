"""The whole path with real peers: dcmtk storescu → pacsnode → pipeline → Orthanc.

Covers the embedded broker and Redis with separate workers, a crash in the
middle of a study, a destination that is down, dead letters and resending,
and late instances re-opening a study.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest
import redis
from pydicom import dcmread

from tests.node_harness import (
    PACSNODE,
    NodeProcess,
    free_port,
    wait_until,
    write_mr_series,
)
from tests.orthanc_peer import OrthancPeer

pytestmark = pytest.mark.e2e

ROUTE = {"name": "inventory-mr", "level": "study", "match": {"Modality": "MR"},
         "pipelines": ["inventory"], "destinations": ["ORTHANC"]}


def _destination(port: int) -> dict:
    return {"ORTHANC": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": port, "timeout_s": 5}}


@pytest.fixture()
def orthanc(tmp_path):
    peer = OrthancPeer(tmp_path / "orthanc")
    yield peer
    peer.stop()


def _orthanc_srs(orthanc: OrthancPeer) -> list:
    found = []
    for instance_id in orthanc.instances():
        ds = dcmread(__import__("io").BytesIO(orthanc.download(instance_id)))
        if ds.Modality == "SR":
            found.append(ds)
    return found


def _inventory_count(sr) -> int:
    """Instances listed in an inventory SR (the sum of its per-series counts)."""
    total = 0
    for item in sr.ContentSequence:
        for sub in getattr(item, "ContentSequence", []):
            if sub.ValueType == "NUM":
                total += int(float(sub.MeasuredValueSequence[0].NumericValue))
    return total


def _metric(node: NodeProcess, prefix: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(prefix))


def test_study_reaches_pacs_as_results_in_embedded_mode(tmp_path, orthanc):
    node = NodeProcess(tmp_path / "node", destinations=_destination(orthanc.dicom_port), routes=[ROUTE])
    node.start()
    try:
        study_uid = "1.2.826.0.1.3680043.8.498.1001"
        files = write_mr_series(tmp_path / "in", count=5, study_uid=study_uid, series_number=1)
        files += write_mr_series(tmp_path / "in", count=3, study_uid=study_uid, series_number=2,
                                 series_description="dwi_b800")
        assert node.storescu(*files).returncode == 0
        [sr] = wait_until(lambda: _orthanc_srs(orthanc), timeout=60, what="the inventory SR in Orthanc")
        assert sr.StudyInstanceUID == study_uid
        assert sr.PatientID == "PHANTOM-001"
        assert _inventory_count(sr) == 8
        status = node.status()
        [study] = status["studies"]
        assert [j["state"] for j in study["jobs"]] == ["succeeded"]
        assert status["outbox"] == [{"destination": "ORTHANC", "state": "sent", "count": 1}]
        wait_until(lambda: _metric(node, "pacsnode_end_to_end_seconds_count") == 1, timeout=10,
                   what="the end-to-end latency to be recorded")
        audit = [json.loads(line) for line in (node.workdir / "spool" / "audit.log").read_text().splitlines()]
        assert [e["event"] for e in audit] == ["study-received", "job-started", "job-succeeded", "results-sent"]
        assert "PHANTOM" not in node.log()  # no patient identifiers in the logs
    finally:
        node.stop()


def test_crash_in_the_middle_of_a_study_loses_nothing(tmp_path, orthanc):
    node = NodeProcess(tmp_path / "node", destinations=_destination(orthanc.dicom_port), routes=[ROUTE],
                       study={"stable_seconds": 3})
    node.start()
    study_uid = "1.2.826.0.1.3680043.8.498.1002"
    files = write_mr_series(tmp_path / "in", count=10, study_uid=study_uid)
    assert node.storescu(*files[:5]).returncode == 0
    node.kill9()
    node.start()
    try:
        assert node.storescu(*files[5:]).returncode == 0
        [sr] = wait_until(lambda: _orthanc_srs(orthanc), timeout=60, what="the SR after restart")
        assert _inventory_count(sr) == 10
        [study] = node.status()["studies"]
        assert study["instances"] == 10 and len(study["jobs"]) == 1
    finally:
        node.stop()


def test_killed_during_a_job_the_job_runs_again_and_results_go_once(tmp_path, orthanc):
    # A slow job (the pipeline holds for 4 s): the node is killed while it runs.
    node = NodeProcess(tmp_path / "node", destinations=_destination(orthanc.dicom_port),
                       routes=[dict(ROUTE, options={"hold_s": 4})])
    node.start()
    files = write_mr_series(tmp_path / "in", count=3)
    assert node.storescu(*files).returncode == 0
    wait_until(lambda: any(j["state"] == "running" for s in node.status()["studies"] for j in s["jobs"]),
               timeout=30, what="the job to start")
    node.kill9()
    node.start()
    try:
        wait_until(lambda: _orthanc_srs(orthanc), timeout=60, what="results after the restart")
        [study] = node.status()["studies"]
        [job] = study["jobs"]
        assert job["state"] == "succeeded" and job["attempts"] == 2
        assert len(_orthanc_srs(orthanc)) == 1
    finally:
        node.stop()


def test_destination_down_then_back_gets_the_results(tmp_path):
    port = free_port()
    node = NodeProcess(tmp_path / "node", destinations=_destination(port), routes=[ROUTE])
    node.start()
    try:
        assert node.storescu(*write_mr_series(tmp_path / "in", count=2)).returncode == 0
        wait_until(lambda: _metric(node, 'pacsnode_outbox_send_failures_total{destination="ORTHANC"}') >= 2,
                   timeout=30, what="failed send attempts")
        assert node.status()["outbox"][0]["state"] == "pending"
        peer = OrthancPeer(tmp_path / "orthanc", dicom_port=port)
        try:
            [sr] = wait_until(lambda: _orthanc_srs(peer), timeout=60, what="results once Orthanc is up")
            assert _inventory_count(sr) == 2
            assert node.status()["outbox"] == [{"destination": "ORTHANC", "state": "sent", "count": 1}]
        finally:
            peer.stop()
    finally:
        node.stop()


def test_permanent_failure_ends_in_dead_letter_and_resend_requeues(tmp_path):
    node = NodeProcess(tmp_path / "node", destinations=_destination(free_port()), routes=[ROUTE],
                       outbox={"max_attempts": 2, "initial_backoff_s": 0.2, "check_interval_s": 0.2})
    node.start()
    try:
        assert node.storescu(*write_mr_series(tmp_path / "in", count=1)).returncode == 0
        wait_until(lambda: node.status()["dead_letters"], timeout=30, what="a dead letter")
        assert _metric(node, 'pacsnode_outbox_items{destination="ORTHANC",state="dead"}') == 1
        text = node.cli("status").stdout
        assert "dead letter" in text and "ORTHANC" in text
        assert "1 outbox item(s) queued" in node.cli("resend").stdout
        assert node.status()["outbox"][0]["state"] in ("pending", "dead")
    finally:
        node.stop()


def test_late_instance_reopens_the_study_without_duplicating_work(tmp_path, orthanc):
    rerun = dict(ROUTE, name="rerun", rerun_on_update=True)
    node = NodeProcess(tmp_path / "node", destinations=_destination(orthanc.dicom_port), routes=[ROUTE, rerun])
    node.start()
    try:
        study_uid = "1.2.826.0.1.3680043.8.498.1003"
        files = write_mr_series(tmp_path / "in", count=4, study_uid=study_uid)
        assert node.storescu(*files[:3]).returncode == 0
        wait_until(lambda: len(_orthanc_srs(orthanc)) == 2, timeout=60, what="first results")
        assert node.storescu(files[3]).returncode == 0
        wait_until(lambda: len(_orthanc_srs(orthanc)) == 3, timeout=60, what="the re-run's results")
        [study] = node.status()["studies"]
        routes = sorted(j["route"] for j in study["jobs"])
        assert routes == ["inventory-mr", "rerun", "rerun"]
        counts = sorted(_inventory_count(sr) for sr in _orthanc_srs(orthanc))
        assert counts == [3, 3, 4]
    finally:
        node.stop()


@pytest.mark.redis
def test_redis_broker_with_separate_worker_processes(tmp_path, orthanc):
    client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail("Redis must run on 127.0.0.1:6379 for this test (see .ci/run)")
    db = 9
    redis.Redis(host="127.0.0.1", port=6379, db=db).flushdb()
    broker = {"url": f"redis://127.0.0.1:6379/{db}", "embedded_worker": False}
    node = NodeProcess(tmp_path / "node", destinations=_destination(orthanc.dicom_port), routes=[ROUTE],
                       broker=broker)
    node.start()
    worker = subprocess.Popen([PACSNODE, "worker", "--config", str(node.config_path), "--queues", "cpu",
                               "--concurrency", "1"], stdout=open(tmp_path / "worker.log", "wb"),
                              stderr=subprocess.STDOUT)
    try:
        assert node.storescu(*write_mr_series(tmp_path / "in", count=4)).returncode == 0
        [sr] = wait_until(lambda: _orthanc_srs(orthanc), timeout=90, what="results via the Redis worker")
        assert _inventory_count(sr) == 4
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/healthz").read())
        assert health["checks"]["broker"]["ok"] is True
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        node.stop()
