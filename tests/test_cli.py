"""The administrator's commands against real peers (dcmtk storescp, a running node)."""

from __future__ import annotations

import subprocess
import time

import pytest
from pydicom import dcmread

from tests.dicom_validate import assert_valid_dicom
from tests.node_harness import (
    DCMTK_ENV,
    PACSNODE,
    NodeProcess,
    free_port,
    wait_for_port,
    write_mr_series,
)


def _pacsnode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PACSNODE, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture()
def storescp(tmp_path):
    port = free_port()
    out = tmp_path / "received"
    out.mkdir()
    proc = subprocess.Popen(["storescp", "-aet", "DEST", "-od", str(out), str(port)], env=DCMTK_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port)
    yield port, out
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.e2e
def test_echo_and_send_to_a_real_peer(storescp, tmp_path):
    port, out = storescp
    result = _pacsnode("echo", f"DEST@127.0.0.1:{port}")
    assert result.returncode == 0 and "C-ECHO succeeded" in result.stdout
    files = write_mr_series(tmp_path / "in", count=3)
    result = _pacsnode("send", str(tmp_path / "in"), "--to", f"DEST@127.0.0.1:{port}")
    assert result.returncode == 0, result.stderr
    assert "sent 3 of 3" in result.stdout
    received = {dcmread(p).SOPInstanceUID for p in out.iterdir()}
    assert received == {dcmread(p).SOPInstanceUID for p in files}


@pytest.mark.e2e
def test_echo_to_a_dead_peer_says_so():
    port = free_port()
    result = _pacsnode("echo", f"NOBODY@127.0.0.1:{port}")
    assert result.returncode != 0
    assert f"NOBODY@127.0.0.1:{port}" in result.stderr
    bad = _pacsnode("echo", "not-a-peer")
    assert bad.returncode != 0 and "AE@HOST:PORT" in bad.stderr


def test_routes_dry_run_lists_what_would_run(tmp_path):
    study = tmp_path / "study"
    write_mr_series(study, count=3, series_number=1, series_description="ep2d_perf", temporal_positions=3)
    write_mr_series(study, count=2, series_number=2, series_description="t2_tse")
    node = NodeProcess(tmp_path / "n", routes=[
        {"name": "perfusion", "match": {"Modality": "MR", "SeriesDescription": "perf", "min_temporal_positions": 3},
         "pipelines": ["inventory"]},
        {"name": "ct-only", "match": {"Modality": "CT"}, "pipelines": ["inventory"]},
    ])
    result = node.cli("routes", "--dry-run", str(study))
    assert result.returncode == 0, result.stderr
    assert "route 'perfusion': pipeline inventory on 1 series" in result.stdout
    assert "ct-only" not in result.stdout
    assert "3 temporal positions" in result.stdout


def test_run_a_pipeline_offline(tmp_path):
    files = write_mr_series(tmp_path / "in", count=4)
    result = _pacsnode("run", "inventory", str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    [sr_path] = list((tmp_path / "out").iterdir())
    sr = dcmread(sr_path)
    assert sr.Modality == "SR"
    assert_valid_dicom(sr_path)
    assert sr.StudyInstanceUID == dcmread(files[0]).StudyInstanceUID
    unknown = _pacsnode("run", "nope", str(tmp_path / "in"), "--out", str(tmp_path / "out2"))
    assert unknown.returncode != 0 and "no pipeline named 'nope'" in unknown.stderr


def test_bad_config_stops_the_node_with_the_field_named(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("dicom:\n  port: -4\n")
    result = _pacsnode("serve", "--config", str(config))
    assert result.returncode != 0
    assert "dicom.port" in result.stderr


@pytest.mark.e2e
def test_metrics_and_token_protected_health(tmp_path):
    import json
    import urllib.error
    import urllib.request

    node = NodeProcess(tmp_path / "n", http={"token": "s3cret"})
    node.start()
    try:
        base = f"http://127.0.0.1:{node.http_port}"
        metrics = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        for name in ("pacsnode_up 1.0", "pacsnode_spool_free_bytes", "pacsnode_associations_active"):
            assert name in metrics
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/healthz", timeout=5)
        assert err.value.code == 401
        request = urllib.request.Request(base + "/healthz", headers={"Authorization": "Bearer s3cret"})
        report = json.loads(urllib.request.urlopen(request, timeout=5).read())
        assert report["status"] == "ok"
        assert set(report["checks"]) == {"broker", "index", "spool"}
        assert "s3cret" not in node.log()
    finally:
        node.stop()


def test_retention_removes_finished_studies(tmp_path):
    from node.config import NodeConfig
    from node.service import Node

    config = NodeConfig(spool={"path": str(tmp_path / "spool"), "retention_days": 1, "min_free_mb": 1},
                        dicom={"port": free_port()}, http={"enabled": False})
    node = Node(config)
    files = write_mr_series(tmp_path / "in", count=2)
    ds = dcmread(files[0])
    for f in files:
        node.spool.write_durably(node.spool.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                                          dcmread(f).SOPInstanceUID), f.read_bytes())
    from node.service import reindex_spool

    reindex_spool(node.spool, node.index)
    old = time.time() - 3 * 86400
    with node.index.transaction() as db:
        db.execute("UPDATE studies SET state='complete', last_received_at=?", (old,))
    assert node.apply_retention() == 1
    assert node.index.studies() == []
    assert not node.spool.study_dir(ds.StudyInstanceUID).exists()
