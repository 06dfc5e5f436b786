"""Faults a hospital deployment meets: a node killed mid-association, a broker restarted, TLS peers."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest
from pydicom import dcmread

from tests.node_harness import (
    DCMTK_ENV,
    PACSNODE,
    NodeProcess,
    free_port,
    make_pki,
    wait_for_port,
    wait_until,
    write_mr_series,
)
from tests.ops_peers import RedisServer, StoreSCP, WorkerProcess
from tests.orthanc_peer import OrthancPeer

pytestmark = pytest.mark.e2e

ROUTE = {"name": "inventory-mr", "level": "study", "match": {"Modality": "MR"},
         "pipelines": ["inventory"], "destinations": ["DEST"]}


def test_kill9_during_an_association_keeps_every_acknowledged_instance(tmp_path):
    node = NodeProcess(tmp_path / "node", study={"stable_seconds": 300})
    node.start()
    files = write_mr_series(tmp_path / "in", count=300, size=128)
    sender = subprocess.Popen(
        ["storescu", "-v", "-aec", "PACSNODE", "127.0.0.1", str(node.dicom_port), *map(str, files)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=DCMTK_ENV)
    acknowledged = 0
    assert sender.stdout is not None
    for line in sender.stdout:
        if "Received Store Response (Success)" in line:
            acknowledged += 1
            if acknowledged == 40:
                node.kill9()
                break
    output = sender.stdout.read()
    acknowledged += output.count("Received Store Response (Success)")
    sender.wait(timeout=60)
    assert 40 <= acknowledged < 300
    node.start()
    try:
        # Every instance the sender was told is stored is in the index (and readable) after restart.
        [study] = node.status()["studies"]
        assert study["instances"] >= acknowledged
        stored = list((node.workdir / "spool" / "studies").rglob("*.dcm"))
        assert len(stored) == study["instances"]
        for path in stored:
            dcmread(path).pixel_array  # noqa: B018 - a partial file would fail here
        assert not list((node.workdir / "spool" / "incoming").iterdir())
        # The sender retries the whole series: the node ends with all of it, once.
        assert node.storescu(*files).returncode == 0
        assert node.status()["studies"][0]["instances"] == 300
    finally:
        node.stop()


@pytest.mark.redis
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_broker_restart_during_work_jobs_resume(tmp_path):
    """A Redis without persistence loses its queue on restart; the supervisor re-dispatches."""
    port = free_port()

    def start_redis() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(port)
        return proc

    redis_proc = start_redis()
    orthanc = OrthancPeer(tmp_path / "orthanc")
    node = NodeProcess(tmp_path / "node",
                       broker={"url": f"redis://127.0.0.1:{port}/0", "embedded_worker": False},
                       destinations={"DEST": {"ae_title": "ORTHANC", "host": "127.0.0.1",
                                              "port": orthanc.dicom_port}},
                       routes=[ROUTE])
    node.start()
    worker = None
    try:
        # Redis goes away before the study completes: the job cannot be dispatched.
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        assert node.storescu(*write_mr_series(tmp_path / "in", count=3)).returncode == 0
        wait_until(lambda: node.status()["studies"] and node.status()["studies"][0]["jobs"],
                   timeout=30, what="the job to be created")
        wait_until(lambda: '"broker unreachable' in node.log(), timeout=30, what="the dispatch failure")
        redis_proc = start_redis()
        worker = subprocess.Popen(
            [PACSNODE, "worker", "--config", str(node.config_path), "--pool", "solo"],
            stdout=open(tmp_path / "worker.log", "wb"), stderr=subprocess.STDOUT)
        wait_until(lambda: orthanc.instances(), timeout=90, what="results after Redis came back")
        [study] = node.status()["studies"]
        assert [j["state"] for j in study["jobs"]] == ["succeeded"]
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=30)
        node.stop()
        orthanc.stop()
        redis_proc.terminate()


def test_results_are_sent_to_a_tls_destination(tmp_path):
    pki = make_pki(tmp_path / "pki", ("node", "pacs"))
    port = free_port()
    received = tmp_path / "received"
    received.mkdir()
    storescp = subprocess.Popen(
        ["storescp", "-aet", "TLSPACS", "+tls", pki["pacs.key"], pki["pacs.pem"], "+cf", pki["ca.pem"],
         "-od", str(received), str(port)], env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    node = NodeProcess(tmp_path / "node", destinations={"DEST": {
        "ae_title": "TLSPACS", "host": "127.0.0.1", "port": port, "tls": {
            "enabled": True, "certificate": pki["node.pem"], "private_key": pki["node.key"],
            "ca_certificates": pki["ca.pem"]}}}, routes=[ROUTE])
    node.start()
    try:
        assert node.storescu(*write_mr_series(tmp_path / "in", count=2)).returncode == 0
        [sr] = wait_until(lambda: list(received.iterdir()), timeout=60, what="the SR over TLS")
        assert dcmread(sr).Modality == "SR"
        assert node.status()["outbox"] == [{"destination": "DEST", "state": "sent", "count": 1}]
    finally:
        node.stop()
        storescp.terminate()


@pytest.mark.redis
@pytest.mark.parametrize("victim", ["process-group", "pool-child"])
def test_kill9_of_a_separate_worker_during_a_job_runs_it_again_and_sends_once(tmp_path, victim):
    """Redis mode, kill -9 mid-job of the whole worker (main process and pool child: a new worker
    is started) or of the pool child alone (as the OOM killer does: the worker forks a new child).
    The job runs again, the PACS gets its results exactly once, and the index says succeeded."""
    redis_server = RedisServer()
    pacs = StoreSCP(tmp_path / "pacs")
    node = NodeProcess(tmp_path / "node", broker={"url": redis_server.url, "embedded_worker": False},
                       jobs={"heartbeat_interval_s": 0.5, "stale_after_s": 3},
                       destinations={"DEST": pacs.destination()},
                       routes=[dict(ROUTE, options={"hold_s": 5})])
    workers: list[WorkerProcess] = []
    try:
        node.start()
        workers.append(WorkerProcess(node.config_path, tmp_path / "worker1.log", "--concurrency", "1"))
        assert node.storescu(*write_mr_series(tmp_path / "in", count=3)).returncode == 0
        wait_until(lambda: '"job started"' in workers[0].log(), timeout=60, what="the job to start in the worker")
        if victim == "process-group":
            workers[0].kill9()
        else:
            [child] = subprocess.run(["pgrep", "-P", str(workers[0].proc.pid)], capture_output=True,
                                     text=True, check=True).stdout.split()
            os.kill(int(child), signal.SIGKILL)
        [job] = node.status()["studies"][0]["jobs"]
        assert job["state"] == "running" and job["attempts"] == 1 and not pacs.received()

        if victim == "process-group":
            workers.append(WorkerProcess(node.config_path, tmp_path / "worker2.log", "--concurrency", "1"))
        wait_until(pacs.received, timeout=60, what="the results of the second run")
        wait_until(lambda: node.status()["outbox"] == [{"destination": "DEST", "state": "sent", "count": 1}],
                   timeout=30, what="the outbox to record the send")
        time.sleep(3)  # room for a wrong second send (a redelivered message, a second run)
        [sr] = pacs.received()
        assert dcmread(sr).Modality == "SR"
        [job] = node.status()["studies"][0]["jobs"]
        assert job["state"] == "succeeded" and job["attempts"] == 2 and job["outputs"] == 1
        if victim == "process-group":
            assert '"job succeeded"' in workers[1].log() and '"job succeeded"' not in workers[0].log()
        # The node's supervisor saw the job's heartbeat stop and dispatched it again.
        assert "worker of a running job went silent" in node.log()
    finally:
        for worker in workers:
            worker.stop()
        node.stop()
        pacs.stop()
        redis_server.stop()
