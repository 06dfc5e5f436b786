"""Configuration: defaults, environment overrides, and errors that name the field."""

from pathlib import Path

import pytest

from node.config import ConfigError, load_config


def test_defaults_without_a_file():
    config = load_config(None)
    assert config.dicom.ae_title == "PACSNODE"
    assert config.dicom.port == 11112
    assert (config.http.host, config.http.port) == ("127.0.0.1", 8080)
    assert config.spool.path == Path("./pacsnode-data")
    assert config.embedded_broker
    assert config.broker_url.startswith("sqla+sqlite:///")
    assert config.study.stable_seconds == 30


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("dicom:\n  port: 104\n  ae_title: FROMFILE\n")
    monkeypatch.setenv("PACSNODE_DICOM__PORT", "11113")
    monkeypatch.setenv("PACSNODE_BROKER__URL", "redis://127.0.0.1:6379/3")
    config = load_config(path)
    assert config.dicom.port == 11113
    assert config.dicom.ae_title == "FROMFILE"
    assert config.broker_url == "redis://127.0.0.1:6379/3"
    assert not config.embedded_broker


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dicom:\n  port: 70000\n", "dicom.port"),
        ("dicom:\n  ae_title: 'THIS AE TITLE IS FAR TOO LONG'\n", "dicom.ae_title"),
        ("dicom:\n  prot: 104\n", "dicom.prot"),
        ("routes:\n  - name: r\n    pipelines: [inventory]\n    destinations: [NOWHERE]\n", "NOWHERE"),
        ("routes:\n  - name: r\n    pipelines: [inventory]\n    match: {SeriesDescription: '(unclosed'}\n",
         "routes.0.match.SeriesDescription"),
        ("dicom:\n  tls: {enabled: true}\n", "certificate"),
        ("- just\n- a list\n", "mapping"),
        ("dicom: [unclosed\n", "not valid YAML"),
        ("destinations:\n  B: {ae_title: B, host: h, port: 104, accept_results_from: [A_FAR_TOO_LONG_AE_TITLE]}\n",
         "destinations.B.accept_results_from: Value error, 'A_FAR_TOO_LONG_AE_TITLE' is not a valid AE title"),
        ("destinations:\n  B: {ae_title: B, host: h, port: 104, accept_results_from: CT_A}\n",
         "destinations.B.accept_results_from"),
        ("dicom: {allowed_calling_aes: [CT_A]}\n"
         "destinations:\n  B: {ae_title: B, host: h, port: 104, accept_results_from: [CT_AA]}\n",
         "destination 'B' accepts results from ['CT_AA'], which dicom.allowed_calling_aes does not let associate"),
        ("jobs: {heartbeat_interval_s: 10, stale_after_s: 15}\n", "stale_after_s (15) must be at least 3 x"),
        ("http: {worker_metrics_port: 0}\n", "http.worker_metrics_port"),
    ],
)
def test_bad_configuration_names_the_problem(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert expected in str(err.value)
    assert str(path) in str(err.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_config(tmp_path / "absent.yaml")


def test_example_configuration_is_valid():
    example = Path(__file__).resolve().parents[1] / "config" / "pacsnode.example.yaml"
    config = load_config(example)
    assert config.routes, "the example should show at least one route"


def test_destination_allow_list_and_worker_settings(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("dicom: {allowed_calling_aes: [CT_A, MR_A]}\n"
                    "destinations:\n  A: {ae_title: A, host: h, port: 104, accept_results_from: [' CT_A', CT_A, MR_A]}\n"
                    "  ANY: {ae_title: ANY, host: h, port: 104}\n")
    monkeypatch.setenv("PACSNODE_HTTP__WORKER_METRICS_PORT", "9101")
    config = load_config(path)
    assert config.destinations["A"].accept_results_from == ["CT_A", "MR_A"]  # stripped, duplicates dropped
    assert config.destinations["ANY"].accept_results_from == []
    assert config.http.worker_metrics_port == 9101
    assert (config.jobs.heartbeat_interval_s, config.jobs.stale_after_s) == (10, 60)
