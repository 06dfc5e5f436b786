"""Per-destination allow-lists: a study's results go only to destinations that accept its sender.

Two hospitals share one node. A misconfigured route sends every MR study's
results to both PACS; ``accept_results_from`` keeps hospital A's results out
of hospital B's PACS and the other way round, and says so.
"""

from __future__ import annotations

import json
import time

import pytest
from pydicom import dcmread

from node.config import NodeConfig
from node.index import Index, InstanceRecord, NewJob
from node.outbox import Outbox
from node.spool import Spool
from tests.node_harness import NodeProcess, free_port, wait_until, write_mr_series
from tests.ops_peers import StoreSCP, sample, scrape

MISCONFIGURED_ROUTE = {"name": "inventory-everywhere", "level": "study", "match": {"Modality": "MR"},
                       "pipelines": ["inventory"], "destinations": ["HOSP_A_PACS", "HOSP_B_PACS"]}


@pytest.mark.e2e
def test_results_reach_only_the_destinations_that_accept_the_sender(tmp_path):
    pacs_a = StoreSCP(tmp_path / "pacs_a", aet="PACS_A")
    pacs_b = StoreSCP(tmp_path / "pacs_b", aet="PACS_B")
    node = NodeProcess(
        tmp_path / "node",
        dicom={"allowed_calling_aes": ["CT_A", "MR_A", "MR_B"]},
        destinations={"HOSP_A_PACS": pacs_a.destination(accept_results_from=["CT_A", "MR_A"]),
                      "HOSP_B_PACS": pacs_b.destination(accept_results_from=["MR_B"])},
        routes=[MISCONFIGURED_ROUTE])
    try:
        node.start()
        study_a = write_mr_series(tmp_path / "from_a", count=2)
        study_b = write_mr_series(tmp_path / "from_b", count=3)
        assert node.storescu(*study_a, calling_ae="MR_A").returncode == 0
        assert node.storescu(*study_b, calling_ae="MR_B").returncode == 0
        uid_a, uid_b = (str(dcmread(s[0]).StudyInstanceUID) for s in (study_a, study_b))

        wait_until(lambda: pacs_a.received() and pacs_b.received(), timeout=90, what="results at both PACS")
        wait_until(lambda: len(node.status()["refused"]) == 2, timeout=30, what="both refusals recorded")
        time.sleep(2)  # a wrong send would have happened by now (outbox checks every 0.2 s)
        [sr_a], [sr_b] = pacs_a.received(), pacs_b.received()
        assert dcmread(sr_a).StudyInstanceUID == uid_a
        assert dcmread(sr_b).StudyInstanceUID == uid_b

        status = node.status()
        assert {(r["destination"], r["state"], r["count"]) for r in status["outbox"]} == {
            ("HOSP_A_PACS", "sent", 1), ("HOSP_A_PACS", "refused", 1),
            ("HOSP_B_PACS", "sent", 1), ("HOSP_B_PACS", "refused", 1)}
        reasons = {r["destination"]: r["reason"] for r in status["refused"]}
        assert "['MR_B']" in reasons["HOSP_A_PACS"] and "accept_results_from" in reasons["HOSP_A_PACS"]
        assert "['MR_A']" in reasons["HOSP_B_PACS"]
        assert all(j["state"] == "succeeded" for s in status["studies"] for j in s["jobs"])
        assert "refused" in node.cli("status").stdout

        metrics = scrape(node.http_port)
        assert sample(metrics, "pacsnode_outbox_refused_total", destination="HOSP_A_PACS") == 1
        assert sample(metrics, "pacsnode_outbox_refused_total", destination="HOSP_B_PACS") == 1
        assert sample(metrics, "pacsnode_outbox_items", destination="HOSP_B_PACS", state="refused") == 1

        audit = [json.loads(line) for line in (node.workdir / "spool" / "audit.log").read_text().splitlines()]
        refused = {(e["destination"], e["study_uid"]) for e in audit if e["event"] == "results-refused"}
        assert refused == {("HOSP_A_PACS", uid_b), ("HOSP_B_PACS", uid_a)}
        warnings = [json.loads(line) for line in node.log().splitlines() if "results refused" in line]
        assert {w["destination"] for w in warnings} == {"HOSP_A_PACS", "HOSP_B_PACS"}
        assert all(w["level"] == "warning" for w in warnings)
    finally:
        node.stop()
        pacs_a.stop()
        pacs_b.stop()


def test_outbox_refuses_items_queued_before_the_allow_list_changed(tmp_path):
    """Results queued while a destination accepted anyone are not sent once it no longer does."""
    spool = Spool(tmp_path / "spool", fsync=False)
    index = Index(spool.paths.index)
    for i, ae in enumerate(("CT_A", "MR_B")):
        index.add_instance(InstanceRecord(f"1.2.3.{i}.1", "1.2.840.10008.5.1.4.1.1.4", f"1.2.3.{i}", f"1.2.{i}",
                                          str(tmp_path / f"{i}.dcm"), 10, modality="MR", calling_ae=ae))
    result = tmp_path / "result.dcm"
    write_mr_series(tmp_path / "results", count=1)[0].rename(result)
    for i in range(2):
        job_id = index.create_job(NewJob(key=f"k{i}", study_uid=f"1.2.{i}", route="r", pipeline="inventory",
                                         queue="cpu", series_uids=[f"1.2.3.{i}"], destinations=["HOSP_A_PACS"]))
        index.set_dispatch_token(job_id, "t")
        index.claim_job(job_id, "t")
        assert index.complete_job(job_id, "t", [(f"9.9.{i}", "1.2.840.10008.5.1.4.1.1.4", str(result))],
                                  ["HOSP_A_PACS"])
    pacs = StoreSCP(tmp_path / "pacs")
    try:
        config = NodeConfig(destinations={"HOSP_A_PACS": pacs.destination(accept_results_from=["CT_A"])})
        outbox = Outbox(index, config.destinations, config.outbox, "PACSNODE")
        assert outbox.process_due() == 1
        assert len(wait_until(pacs.received, timeout=10, what="the accepted result")) == 1
        states = {i.sop_instance_uid: (i.state, i.last_error) for i in index.outbox_items()}
        assert states["9.9.0"] == ("sent", None)
        assert states["9.9.1"][0] == "refused" and "['MR_B']" in states["9.9.1"][1]
        assert outbox.process_due() == 0  # refused items are never due again
    finally:
        pacs.stop()


def test_unknown_sender_is_refused_when_a_list_is_set(tmp_path):
    from node.outbox import DestinationPolicy

    config = NodeConfig(destinations={
        "OPEN": {"ae_title": "OPEN", "host": "127.0.0.1", "port": free_port()},
        "STRICT": {"ae_title": "STRICT", "host": "127.0.0.1", "port": free_port(), "accept_results_from": ["CT_A"]},
    })
    policy = DestinationPolicy(config.destinations)
    assert policy.split(["OPEN", "STRICT"], {"CT_A"}) == (["OPEN", "STRICT"], [])
    allowed, [refusal] = policy.split(["OPEN", "STRICT"], {"CT_A", None})
    assert allowed == ["OPEN"] and refusal.destination == "STRICT" and "(unknown)" in refusal.reason
    allowed, [refusal] = policy.split(["OPEN", "STRICT"], set())
    assert allowed == ["OPEN"] and "sender is unknown" in refusal.reason
