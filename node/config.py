"""The node's configuration: one YAML file, validated, with environment overrides.

Every setting has a default, so ``pacsnode serve`` runs with no file at all.
Environment variables named ``PACSNODE_<SECTION>__<FIELD>`` override the file,
for example ``PACSNODE_DICOM__PORT=104`` or ``PACSNODE_BROKER__URL=redis://host:6379/0``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

AE_TITLE_PATTERN = r"^[\x20-\x5b\x5d-\x7e]{1,16}$"  # DICOM AE VR: no backslash, no control chars


class ConfigError(Exception):
    """The configuration file or environment holds a value the node cannot use."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_ae_title(value: str) -> str:
    stripped = value.strip()
    if not re.match(AE_TITLE_PATTERN, stripped):
        raise ValueError(
            f"{value!r} is not a valid AE title (1-16 printable characters, no backslash)"
        )
    return stripped


class TLSConfig(_Section):
    """TLS for a DICOM connection (listener or destination)."""

    enabled: bool = False
    certificate: Path | None = None
    private_key: Path | None = None
    ca_certificates: Path | None = None
    require_peer_certificate: bool = True

    @model_validator(mode="after")
    def _files_when_enabled(self) -> "TLSConfig":
        if self.enabled:
            for name in ("certificate", "private_key"):
                if getattr(self, name) is None:
                    raise ValueError(f"TLS is enabled but '{name}' is not set")
            if self.require_peer_certificate and self.ca_certificates is None:
                raise ValueError(
                    "TLS requires peer certificates but 'ca_certificates' is not set"
                )
        return self


class DicomConfig(_Section):
    """The DICOM listener (C-STORE and C-ECHO SCP)."""

    ae_title: str = "PACSNODE"
    host: str = "0.0.0.0"
    port: int = Field(11112, ge=1, le=65535)
    allowed_calling_aes: list[str] = Field(
        default_factory=list,
        description="Calling AE titles allowed to associate; empty allows any.",
    )
    check_called_ae: bool = True
    max_associations: int = Field(16, ge=1)
    max_pdu_size: int = Field(0, ge=0, description="0 means unlimited")
    network_timeout_s: float = Field(60, gt=0)
    acse_timeout_s: float = Field(30, gt=0)
    dimse_timeout_s: float = Field(60, gt=0)
    tls: TLSConfig = Field(default_factory=TLSConfig)

    _ae = field_validator("ae_title")(_check_ae_title)

    @field_validator("allowed_calling_aes")
    @classmethod
    def _check_allowed(cls, values: list[str]) -> list[str]:
        return [_check_ae_title(v) for v in values]


class SpoolConfig(_Section):
    """Where received instances, results and the index live."""

    path: Path = Path("./pacsnode-data")
    min_free_mb: int = Field(
        1024, ge=0, description="Refuse new instances when less disk than this is free."
    )
    fsync: bool = Field(True, description="fsync each received file before acknowledging it")
    retention_days: float | None = Field(
        None, gt=0, description="Delete finished studies older than this; None keeps them."
    )


class StudyConfig(_Section):
    """When a study counts as complete."""

    stable_seconds: float = Field(30, gt=0)
    check_interval_s: float = Field(1.0, gt=0)


class HttpConfig(_Section):
    """The HTTP endpoint for /metrics and /healthz."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    token: str | None = Field(
        None, description="Bearer token required by every endpoint except /metrics."
    )
    worker_metrics_port: int | None = Field(
        None, ge=1, le=65535,
        description="Port of /metrics in each `pacsnode worker` (on http.host); None: workers expose none.",
    )


class BrokerConfig(_Section):
    """The Celery broker. No URL means the embedded SQLite broker in the spool."""

    url: str | None = None
    embedded_worker: bool = Field(
        True, description="Run a worker inside 'pacsnode serve' (consumes every queue)."
    )
    worker_concurrency: int = Field(1, ge=1)


class JobsConfig(_Section):
    """How pipeline jobs are run."""

    time_limit_s: float = Field(1800, gt=0)
    max_retries: int = Field(3, ge=0)
    retry_backoff_max_s: float = Field(600, gt=0)
    heartbeat_interval_s: float = Field(
        10, gt=0, description="How often a running job tells the index its worker is alive."
    )
    stale_after_s: float = Field(
        60, gt=0,
        description="A running job silent this long lost its worker (killed, host gone) and is run again.",
    )

    @model_validator(mode="after")
    def _stale_after_heartbeats(self) -> "JobsConfig":
        if self.stale_after_s < 3 * self.heartbeat_interval_s:
            raise ValueError(
                f"stale_after_s ({self.stale_after_s:g}) must be at least 3 x heartbeat_interval_s "
                f"({self.heartbeat_interval_s:g}), or a busy but healthy worker's job would be run twice"
            )
        return self


class DestinationConfig(_Section):
    """A DICOM peer that results are sent to (C-STORE SCU)."""

    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae_title: str | None = None
    tls: TLSConfig = Field(default_factory=TLSConfig)
    timeout_s: float = Field(30, gt=0)
    accept_results_from: list[str] = Field(
        default_factory=list,
        description=(
            "Calling AE titles whose studies' results may be sent here; empty allows any. "
            "Results of a study from any other sender are refused, whatever the routes say."
        ),
    )

    _ae = field_validator("ae_title")(_check_ae_title)

    @field_validator("accept_results_from")
    @classmethod
    def _check_accepted(cls, values: list[str]) -> list[str]:
        return list(dict.fromkeys(_check_ae_title(v) for v in values))


class OutboxConfig(_Section):
    """Retry policy for sending results."""

    max_attempts: int = Field(10, ge=1)
    initial_backoff_s: float = Field(5, gt=0)
    max_backoff_s: float = Field(3600, gt=0)
    check_interval_s: float = Field(1.0, gt=0)


class MatchConfig(_Section):
    """Conditions a series must meet for a route to fire. Unset fields match anything."""

    Modality: str | list[str] | None = None
    SeriesDescription: str | None = Field(None, description="Regular expression (search)")
    BodyPartExamined: str | list[str] | None = None
    ImageType: str | None = Field(None, description="A value ImageType must contain")
    calling_ae_title: str | list[str] | None = None
    min_temporal_positions: int | None = Field(None, ge=1)
    min_instances: int | None = Field(None, ge=1)

    @field_validator("SeriesDescription")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value


class RouteConfig(_Section):
    """A routing rule: which studies go to which pipelines and where results go."""

    name: str
    level: Literal["series", "study"] = "series"
    match: MatchConfig = Field(default_factory=MatchConfig)
    pipelines: list[str] = Field(min_length=1)
    destinations: list[str] = Field(default_factory=list)
    options: dict[str, Any] = Field(default_factory=dict)
    rerun_on_update: bool = Field(
        False, description="Run again when late instances re-open a finished study."
    )


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = Field(True, alias="json")
    audit_log: Path | None = Field(None, description="JSON-lines audit trail; default spool/audit.log")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class NodeConfig(BaseSettings):
    """The whole configuration of one pacsnode."""

    model_config = SettingsConfigDict(
        env_prefix="PACSNODE_", env_nested_delimiter="__", extra="forbid"
    )

    dicom: DicomConfig = Field(default_factory=DicomConfig)
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    study: StudyConfig = Field(default_factory=StudyConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    jobs: JobsConfig = Field(default_factory=JobsConfig)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    destinations: dict[str, DestinationConfig] = Field(default_factory=dict)
    routes: list[RouteConfig] = Field(default_factory=list)
    pipelines: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per-pipeline default options"
    )
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment wins over the file, so operators can override one value.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _routes_name_known_destinations(self) -> "NodeConfig":
        names = set()
        for route in self.routes:
            if route.name in names:
                raise ValueError(f"route name {route.name!r} is used twice")
            names.add(route.name)
            for dest in route.destinations:
                if dest not in self.destinations:
                    raise ValueError(
                        f"route {route.name!r} sends to destination {dest!r}, "
                        f"which is not defined under 'destinations' "
                        f"(defined: {sorted(self.destinations) or 'none'})"
                    )
        return self

    @model_validator(mode="after")
    def _accepted_senders_can_associate(self) -> "NodeConfig":
        """A destination's allow-list naming an AE the listener refuses is a typo, not a policy."""
        allowed = set(self.dicom.allowed_calling_aes)
        if not allowed:
            return self
        for name, dest in self.destinations.items():
            unknown = [ae for ae in dest.accept_results_from if ae not in allowed]
            if unknown:
                raise ValueError(
                    f"destination {name!r} accepts results from {unknown}, which "
                    f"dicom.allowed_calling_aes does not let associate (allowed: {sorted(allowed)})"
                )
        return self

    @property
    def broker_url(self) -> str:
        """The Celery broker URL; the embedded SQLite broker when none is set."""
        if self.broker.url:
            return self.broker.url
        return f"sqla+sqlite:///{(self.spool.path / 'broker.sqlite').resolve()}"

    @property
    def embedded_broker(self) -> bool:
        return not self.broker.url


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


def load_config(path: Path | str | None = None) -> NodeConfig:
    """Read and validate the YAML file at *path* (or defaults), then apply the environment."""
    raw: dict[str, Any] = {}
    source = "defaults and environment"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"configuration file {path} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"configuration file {path} must hold a mapping at the top level")
        raw = loaded
    try:
        return NodeConfig(**raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from exc
