"""Clinical data per accession: validation with units and ranges, the index store, HTTP and CLI."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from inference.liver.lesion_kinds import LesionKind
from inference.liver.phantom_clinical import sample_clinical
from node.audit import AuditLog
from node.clinical import FIELDS, ClinicalData, ClinicalDataError, ClinicalStore
from node.index import Index
from tests.node_harness import PACSNODE, NodeProcess

TOKEN = "s3cret-token"


# -- validation -------------------------------------------------------------------


def test_the_simulator_draws_exactly_the_model_fields_and_they_validate() -> None:
    rng = np.random.default_rng(3)
    for kind in LesionKind:
        drawn = sample_clinical(rng, [kind], cirrhosis=kind is LesionKind.HCC)
        assert tuple(drawn) == FIELDS
        assert ClinicalData.parse(drawn).given() == pytest.approx(drawn)


def test_plain_values_are_taken_in_the_unit_their_name_carries() -> None:
    data = ClinicalData.parse({"albumin_g_l": 35, "bilirubin_umol_l": 12.5, "sex": "M", "ascites": False})
    assert data.albumin_g_l == 35.0 and data.bilirubin_umol_l == 12.5
    assert data.sex == "M" and data.ascites is False
    assert data.afp_ng_ml is None and set(data.given()) == {"albumin_g_l", "bilirubin_umol_l", "sex", "ascites"}


@pytest.mark.parametrize(("key", "value", "unit", "field", "expected"), [
    ("albumin", 3.5, "g/dL", "albumin_g_l", 35.0),
    ("bilirubin", 1.2, "mg/dL", "bilirubin_umol_l", 20.52),
    ("afp", 10, "IU/mL", "afp_ng_ml", 12.1),
    ("bilirubin_umol_l", 40, "µmol/L", "bilirubin_umol_l", 40.0),
    ("cea", 3, "ug/l", "cea_ng_ml", 3.0),
])
def test_explicitly_supported_units_are_converted(key: str, value: float, unit: str, field: str,
                                                  expected: float) -> None:
    data = ClinicalData.parse({key: {"value": value, "unit": unit}})
    assert getattr(data, field) == pytest.approx(expected)


@pytest.mark.parametrize(("payload", "must_name"), [
    ({"albumin_g_l": 3.5}, ["albumin_g_l", "3.5", "5–70 g/l", "g/dl"]),  # g/dl sent as g/l
    ({"bilirubin_umol_l": 1500}, ["bilirubin_umol_l", "1500", "0–1000 µmol/l"]),
    ({"prothrombin_time_s": 2}, ["prothrombin_time_s", "2", "5–150 s"]),
    ({"age_years": 130}, ["age_years", "130", "0–120 years"]),
    ({"afp_ng_ml": -1}, ["afp_ng_ml", "-1", "0–1000000 ng/ml"]),
    ({"afp_ng_ml": "12"}, ["afp_ng_ml", "'12'", "not a number"]),
    ({"albumin": {"value": 0.3, "unit": "g/dL"}}, ["albumin", "0.3 g/dL", "3 g/l", "5–70 g/l"]),
    ({"albumin": {"value": 35, "unit": "mmol/l"}}, ["albumin", "35", "mmol/l", "not supported", "g/dl"]),
    ({"psa_ng_ml": {"value": 2, "unit": "IU/ml"}}, ["psa_ng_ml", "IU/ml", "not supported", "ng/ml"]),
    ({"albumin": 35}, ["albumin", "35", "no unit", "albumin_g_l"]),
    ({"sex": "female"}, ["sex", "female", "'F', 'M', 'O'"]),
    ({"ascites": "yes"}, ["ascites", "yes", "true or false"]),
    ({"cirrhosis": {"value": 1, "unit": "g/l"}}, ["cirrhosis", "takes no unit"]),
    ({"weight_kg": 80}, ["weight_kg", "unknown", "albumin_g_l"]),
    ({"albumin": {"value": 3.5, "unit": "g/dl"}, "albumin_g_l": 35}, ["albumin_g_l", "twice"]),
    ({}, ["no clinical data field", "age_years"]),
])
def test_refusals_name_the_field_the_value_and_what_is_allowed(payload: dict[str, Any],
                                                                must_name: list[str]) -> None:
    with pytest.raises(ClinicalDataError) as info:
        ClinicalData.parse(payload)
    for part in must_name:
        assert part in str(info.value), (part, str(info.value))


def test_a_list_or_text_is_not_clinical_data() -> None:
    for payload in ([1, 2], "afp=3", None):
        with pytest.raises(ClinicalDataError, match="mapping of field names"):
            ClinicalData.parse(payload)


# -- store ----------------------------------------------------------------------


def test_store_round_trip_replacement_delete_and_audit_without_values(tmp_path: Path) -> None:
    audit_path = tmp_path / "audit.log"
    store = ClinicalStore(Index(tmp_path / "index.sqlite"), AuditLog(audit_path))
    assert store.get("ACC1") is None
    first = store.put("ACC1", ClinicalData.parse({"afp_ng_ml": 4321.5, "cirrhosis": True}), source="test")
    time.sleep(0.01)
    # Another process opening the same index sees it (the CLI and the node share it).
    reread = ClinicalStore(Index(tmp_path / "index.sqlite")).get("ACC1")
    assert reread is not None and reread.data == first.data and reread.source == "test"

    second = store.put("ACC1", ClinicalData.parse({"albumin_g_l": 31.7}), source="again")
    got = store.get("ACC1")
    assert got is not None
    assert got.data.given() == {"albumin_g_l": 31.7}  # replaced, not merged
    assert got.source == "again" and got.received_at == second.received_at > first.received_at
    assert store.get("ACC2") is None

    events = [json.loads(line) for line in audit_path.read_text().splitlines()]
    received = [e for e in events if e["event"] == "clinical-data-received"]
    assert [e["fields"] for e in received] == [["afp_ng_ml", "cirrhosis"], ["albumin_g_l"]]
    assert [e["accession_number"] for e in received] == ["ACC1", "ACC1"]
    assert [e["replaced"] for e in received] == [False, True]
    assert "4321.5" not in audit_path.read_text() and "31.7" not in audit_path.read_text()

    assert store.delete("ACC1") is True and store.get("ACC1") is None
    assert store.delete("ACC1") is False


def test_accession_numbers_must_be_dicom_accession_numbers(tmp_path: Path) -> None:
    store = ClinicalStore(Index(tmp_path / "index.sqlite"))
    data = ClinicalData.parse({"sex": "F"})
    for bad in ("", "A" * 17, "AC\\C", "ACC\n1"):
        with pytest.raises(ClinicalDataError, match="AccessionNumber"):
            store.put(bad, data)


# -- HTTP and CLI against a real node ---------------------------------------------------


def _request(node: NodeProcess, method: str, accession: str, body: Any = None,
             token: str | None = TOKEN) -> tuple[int, dict[str, Any]]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(f"http://127.0.0.1:{node.http_port}/clinical/{accession}", data=data,
                                 method=method, headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    proc = NodeProcess(tmp_path_factory.mktemp("clinical-node"), http={"token": TOKEN}).start()
    yield proc
    proc.stop()


def test_http_put_and_get_with_the_token(node: NodeProcess) -> None:
    values = {"afp": {"value": 100, "unit": "IU/ml"}, "albumin_g_l": 28.4, "other_cancer_history": False}
    code, body = _request(node, "PUT", "HTTP001", values)
    assert code == 200, body
    assert body["data"] == {"afp_ng_ml": 121.0, "albumin_g_l": 28.4, "other_cancer_history": False}
    code, body = _request(node, "GET", "HTTP001")
    assert code == 200 and body["data"]["afp_ng_ml"] == 121.0 and body["source"].startswith("http:")

    code, body = _request(node, "PUT", "HTTP001", {"ca19_9_u_ml": 55.0})
    assert code == 200
    assert _request(node, "GET", "HTTP001")[1]["data"] == {"ca19_9_u_ml": 55.0}

    # The audit trail names accession and fields; the node log and the audit trail hold no values.
    audit = (node.workdir / "spool" / "audit.log").read_text()
    lines = [json.loads(x) for x in audit.splitlines() if "clinical-data-received" in x]
    assert [x["fields"] for x in lines if x["accession_number"] == "HTTP001"] == [
        ["afp_ng_ml", "albumin_g_l", "other_cancer_history"], ["ca19_9_u_ml"]]
    for text in (audit, node.log()):
        assert "28.4" not in text and "121.0" not in text and "55.0" not in text


def test_http_refusals(node: NodeProcess) -> None:
    assert _request(node, "PUT", "HTTP002", {"afp_ng_ml": 3.0}, token=None)[0] == 401
    assert _request(node, "PUT", "HTTP002", {"afp_ng_ml": 3.0}, token="wrong")[0] == 401
    assert _request(node, "GET", "HTTP001", token=None)[0] == 401

    code, body = _request(node, "PUT", "HTTP002", {"bilirubin": {"value": 2, "unit": "g/l"}})
    assert code == 400 and "bilirubin" in body["error"] and "mg/dl" in body["error"]
    code, body = _request(node, "PUT", "HTTP002", b"{not json")
    assert code == 400 and "not JSON" in body["error"]
    code, body = _request(node, "GET", "NOSUCHACC")
    assert code == 404 and "NOSUCHACC" in body["error"]
    assert _request(node, "GET", "HTTP002")[0] == 404  # nothing refused was stored


def test_http_refuses_clinical_data_when_no_token_is_configured(tmp_path: Path) -> None:
    proc = NodeProcess(tmp_path).start()
    try:
        code, body = _request(proc, "PUT", "ANON1", {"afp_ng_ml": 3.0}, token=None)
        assert code == 403 and "http.token" in body["error"] and "anonymously" in body["error"]
        assert _request(proc, "GET", "ANON1", token=None)[0] == 403
    finally:
        proc.stop()


def _cli(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PACSNODE, "clinical", *args, "--config", str(node.config_path)],
                          capture_output=True, text=True, timeout=120)


def test_cli_put_show_delete(node: NodeProcess, tmp_path: Path) -> None:
    yaml_file = tmp_path / "clinical.yaml"
    yaml_file.write_text(yaml.safe_dump({"age_years": 61, "sex": "M", "cirrhosis": True,
                                         "bilirubin": {"value": 2.0, "unit": "mg/dL"}}))
    done = _cli(node, "put", "CLI001", str(yaml_file))
    assert done.returncode == 0, done.stderr
    shown = _cli(node, "show", "CLI001")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["data"] == {"age_years": 61.0, "sex": "M", "cirrhosis": True,
                                                "bilirubin_umol_l": 34.2}
    # What the CLI wrote, the running node serves.
    assert _request(node, "GET", "CLI001")[1]["data"]["bilirubin_umol_l"] == 34.2

    json_file = tmp_path / "bad.json"
    json_file.write_text(json.dumps({"albumin_g_l": 3.4}))
    refused = _cli(node, "put", "CLI001", str(json_file))
    assert refused.returncode != 0 and "albumin_g_l" in refused.stderr and "5–70 g/l" in refused.stderr
    assert json.loads(_cli(node, "show", "CLI001").stdout)["data"]["sex"] == "M"  # unchanged

    assert _cli(node, "delete", "CLI001").returncode == 0
    gone = _cli(node, "show", "CLI001")
    assert gone.returncode != 0 and "no clinical data" in gone.stderr
    assert _cli(node, "delete", "CLI001").returncode != 0
