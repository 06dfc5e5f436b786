"""Worker metrics: a `pacsnode worker` (prefork pool) serves the job metrics of all its processes,
under the same names as `pacsnode serve` with its embedded worker."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest

from node.metrics import WORKER_FAMILIES
from tests.node_harness import REPO, NodeProcess, free_port, wait_for_port, wait_until, write_mr_series
from tests.ops_peers import RedisServer, StoreSCP, WorkerProcess, sample, scrape

ROUTE = {"name": "inventory-mr", "level": "study", "match": {"Modality": "MR"},
         "pipelines": ["inventory"], "destinations": ["PACS"]}

# Runs in a fresh interpreter: multiprocess mode must be chosen before prometheus_client is imported.
_FORKED_PROCESSES = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from node import worker_metrics
    directory = worker_metrics.prepare_multiprocess_dir(0, Path(sys.argv[1]))
    from node import metrics
    metrics.worker_started("w@host", "cpu", "prefork")
    children = []
    for seconds, finish in ((1.5, True), (7.0, False)):
        pid = os.fork()
        if pid == 0:                                        # a pool child running one job
            metrics.JOBS_STARTED.labels("inventory").inc()
            metrics.JOBS_IN_PROGRESS.labels("inventory").inc()
            metrics.JOB_DURATION.labels("inventory", "succeeded").observe(seconds)
            if finish:
                metrics.JOBS_IN_PROGRESS.labels("inventory").dec()
            os._exit(0)                                     # the second child dies mid-job
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    from prometheus_client import generate_latest
    body = generate_latest(worker_metrics.worker_registry(directory)).decode()
    print(json.dumps({"body": body, "files": sorted(os.listdir(directory))}))
""")


def _families(samples: dict[str, float]) -> set[str]:
    """Metric family names of a scrape (counter and histogram suffixes removed)."""
    return {re.sub(r"_(total|bucket|count|sum)$", "", key.partition("{")[0]) for key in samples}


def test_worker_registry_sums_pool_processes_and_forgets_dead_ones(tmp_path):
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_99999999.db").write_bytes(b"junk from a previous worker")
    result = subprocess.run([sys.executable, "-c", _FORKED_PROCESSES, str(directory)], cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=True)
    report = json.loads(result.stdout)
    samples = {}
    for line in report["body"].splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    # Both children's observations, added up by the main process.
    assert sample(samples, "pacsnode_job_duration_seconds_count", pipeline="inventory", outcome="succeeded") == 2
    assert sample(samples, "pacsnode_job_duration_seconds_sum", pipeline="inventory") == pytest.approx(8.5)
    assert sample(samples, "pacsnode_job_duration_seconds_bucket", pipeline="inventory", le="2.5") == 1
    assert sample(samples, "pacsnode_jobs_started_total", pipeline="inventory") == 2
    # The child that died mid-job no longer counts as running one.
    assert sample(samples, "pacsnode_jobs_in_progress", pipeline="inventory") == 0
    assert not [f for f in report["files"] if f.startswith("gauge_livesum_")]
    assert sample(samples, "pacsnode_worker_up") == 1
    assert sample(samples, "pacsnode_worker_info", worker="w@host", queues="cpu", pool="prefork") == 1
    # The directory was emptied at start; the listener's metrics are not the worker's to report.
    assert "counter_99999999.db" not in report["files"]
    names = {key.partition("{")[0] for key in samples}
    assert not [n for n in names if n.startswith(("pacsnode_up", "pacsnode_instances", "pacsnode_cstore"))]


def test_preparing_after_prometheus_client_was_imported_is_refused(tmp_path):
    script = ("import prometheus_client\nfrom pathlib import Path\nfrom node import worker_metrics\n"
              "try:\n    worker_metrics.prepare_multiprocess_dir(1, Path(r'%s'))\n"
              "except worker_metrics.WorkerMetricsError as exc:\n    print('refused:', exc)\n" % (tmp_path / "m"))
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                            timeout=60, check=True, env={"PATH": "/usr/bin:/bin"})
    assert result.stdout.startswith("refused: prometheus_client was imported before")


def test_a_second_worker_cannot_take_a_live_workers_metrics_directory(tmp_path):
    script = ("import sys, time\nfrom pathlib import Path\nfrom node import worker_metrics\n"
              "worker_metrics.prepare_multiprocess_dir(1, Path(sys.argv[1]))\n"
              "print('ready', flush=True)\ntime.sleep(30)\n")
    first = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "m")], cwd=REPO,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "ready"
        (tmp_path / "m" / "counter_1.db").write_bytes(b"the live worker's")
        second = subprocess.run([sys.executable, "-c", script, str(tmp_path / "m")], cwd=REPO,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode != 0 and "another worker on this host uses" in second.stderr
        assert (tmp_path / "m" / "counter_1.db").exists()  # left alone
    finally:
        first.kill()
        first.wait()
    # Once the first is gone its lock is released: a restarted worker takes over and starts clean.
    restarted = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "m")], cwd=REPO,
                                 stdout=subprocess.PIPE, text=True)
    try:
        assert restarted.stdout.readline().strip() == "ready"
        assert not (tmp_path / "m" / "counter_1.db").exists()
    finally:
        restarted.kill()
        restarted.wait()


@pytest.mark.e2e
@pytest.mark.redis
def test_separate_prefork_worker_and_embedded_worker_expose_the_same_job_metrics(tmp_path):
    redis_server = RedisServer()
    pacs = StoreSCP(tmp_path / "pacs")
    try:
        worker_families = _scale_out_worker_metrics(tmp_path, redis_server, pacs)
        _embedded_worker_metrics(tmp_path, pacs, worker_families)
    finally:
        pacs.stop()
        redis_server.stop()


def _scale_out_worker_metrics(tmp_path, redis_server: RedisServer, pacs: StoreSCP) -> set[str]:
    """Two jobs through a prefork worker with two children; its scrape, checked; its metric families."""
    node = NodeProcess(tmp_path / "node", broker={"url": redis_server.url, "embedded_worker": False},
                       destinations={"PACS": pacs.destination()}, routes=[ROUTE])
    metrics_port = free_port()
    worker = None
    try:
        node.start()
        worker = WorkerProcess(node.config_path, tmp_path / "worker.log", "--concurrency", "2",
                               "--metrics-port", str(metrics_port))
        wait_for_port(metrics_port, timeout=60)
        before = scrape(metrics_port)
        assert sample(before, "pacsnode_worker_up") == 1
        assert sample(before, "pacsnode_job_duration_seconds_count", pipeline="inventory") == 0
        for study in range(2):
            assert node.storescu(*write_mr_series(tmp_path / f"in{study}", count=2)).returncode == 0
        wait_until(lambda: len(pacs.received()) == 2, timeout=90, what="both studies' results")
        after = scrape(metrics_port)
        assert sample(after, "pacsnode_job_duration_seconds_count", pipeline="inventory", outcome="succeeded") == 2
        assert sample(after, "pacsnode_jobs_started_total", pipeline="inventory") == 2
        assert sample(after, "pacsnode_jobs_succeeded_total", pipeline="inventory") == 2
        assert sample(after, "pacsnode_jobs_failed_total") == 0
        assert sample(after, "pacsnode_jobs_in_progress", pipeline="inventory") == 0
        assert sample(after, "pacsnode_worker_info", pool="prefork", queues="cpu,gpu") == 1
        worker_families = _families(after)
        assert worker_families <= WORKER_FAMILIES  # the job metrics only: no pacsnode_up of a non-listener
        assert {"pacsnode_job_duration_seconds", "pacsnode_jobs_started", "pacsnode_jobs_succeeded",
                "pacsnode_jobs_in_progress", "pacsnode_worker_up", "pacsnode_worker_info"} <= worker_families
        # The listener's /metrics has no job runs in this layout: they are the workers'.
        assert sample(scrape(node.http_port), "pacsnode_job_duration_seconds_count") == 0
        return worker_families
    finally:
        if worker is not None:
            worker.stop()
        node.stop()


def _embedded_worker_metrics(tmp_path, pacs: StoreSCP, worker_families: set[str]) -> None:
    """The same job metrics, by the same names, from `pacsnode serve` with its embedded worker."""
    embedded = NodeProcess(tmp_path / "embedded", destinations={"PACS": pacs.destination()}, routes=[ROUTE])
    try:
        embedded.start()
        assert embedded.storescu(*write_mr_series(tmp_path / "in-embedded", count=2)).returncode == 0
        wait_until(lambda: len(pacs.received()) == 3, timeout=90, what="the embedded worker's results")
        served = scrape(embedded.http_port)
        assert sample(served, "pacsnode_job_duration_seconds_count", pipeline="inventory", outcome="succeeded") == 1
        assert worker_families <= _families(served)
        assert sample(served, "pacsnode_worker_up") == 1
    finally:
        embedded.stop()
