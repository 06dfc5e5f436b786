"""Prometheus for real: Debian's prometheus scrapes the node and its API returns pacsnode's series."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request

import pytest
import yaml

from tests.node_harness import NodeProcess, free_port, wait_for_port, wait_until, write_mr_series

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed (see .ci/run)"),
]


def _query(base: str, expr: str) -> list[dict]:
    url = f"{base}/api/v1/query?query={urllib.parse.quote(expr)}"
    reply = json.loads(urllib.request.urlopen(url, timeout=5).read())
    assert reply["status"] == "success"
    return reply["data"]["result"]


def test_prometheus_scrapes_the_node(tmp_path):
    node = NodeProcess(tmp_path / "node")
    node.start()
    prom_port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "pacsnode", "metrics_path": "/metrics",
                            "static_configs": [{"targets": [f"127.0.0.1:{node.http_port}"]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=open(tmp_path / "prometheus.log", "wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{prom_port}"
    try:
        wait_for_port(prom_port, timeout=30)
        assert node.storescu(*write_mr_series(tmp_path / "in", count=5)).returncode == 0
        wait_until(lambda: _query(base, 'up{job="pacsnode"}') and
                   _query(base, 'up{job="pacsnode"}')[0]["value"][1] == "1",
                   timeout=60, what="Prometheus to scrape the node")
        received = wait_until(lambda: [r for r in _query(base, "pacsnode_instances_received_total")
                                       if r["value"][1] == "5"], timeout=30, what="the instance count in Prometheus")
        assert received[0]["metric"]["job"] == "pacsnode"
        names = {r["metric"]["__name__"] for r in _query(base, '{__name__=~"pacsnode_.+"}')}
        for expected in ("pacsnode_up", "pacsnode_spool_free_bytes", "pacsnode_cstore_duration_seconds_bucket",
                         "pacsnode_bytes_received_total", "pacsnode_associations_active"):
            assert expected in names
        # No patient identifiers anywhere in the scraped series.
        assert "PHANTOM" not in json.dumps(_query(base, '{__name__=~"pacsnode_.+"}'))
    finally:
        prom.terminate()
        prom.wait(timeout=30)
        node.stop()
