"""Settings, read once from the environment at the entry point and passed down frozen.

Nothing below the CLI reads ``os.environ``: tests build a ``Settings`` directly. An invalid value
raises :class:`~pipeline.errors.SettingsError` with one line naming the variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline import redis_url
from pipeline.errors import SettingsError
from pipeline.fetch.allowlist import AllowList, parse_allowed_hosts
from pipeline.flows import parse_limits
from pipeline.jobs import FlowLimit

BackendName = Literal["inmemory", "durable"]


class Settings(BaseSettings):
    """Every knob, with its environment variable name upper-cased (``workers`` → ``WORKERS``)."""

    model_config = SettingsConfigDict(frozen=True, case_sensitive=False, extra="ignore")

    queue_backend: BackendName = Field("inmemory", description="inmemory or durable")
    redis_url: str = Field(
        "redis://localhost:6379/0",
        description="Redis for the durable backend: redis://, rediss://, unix://, or Sentinels as "
        "redis+sentinel://[[user]:password@]HOST:PORT[,HOST:PORT...]/SERVICE_NAME[/DB] "
        "(rediss+sentinel:// for TLS to the data nodes)",
    )
    ack_replicas: int = Field(
        0,
        ge=0,
        le=100,
        description="replicas that must confirm (WAIT) a submitted job and a job's end before "
        "they are reported; 0 = answer once the primary has it",
    )
    ack_timeout: float = Field(
        1.0,
        gt=0,
        le=5,
        description="seconds to wait for ACK_REPLICAS confirmations; fewer in time: 503 "
        "(submit, cancel) or the end is written again (worker)",
    )
    workers: int = Field(3, ge=1, le=1000, description="concurrent jobs per worker process")
    queue_maxsize: int = Field(
        10, ge=1, le=1_000_000, description="queued jobs before submit waits"
    )
    job_timeout: float = Field(30.0, gt=0, le=3600, description="seconds one fetch may take")
    max_tries: int = Field(3, ge=1, le=100, description="attempts per job, crashes included")
    host: str = Field("127.0.0.1", description="address the HTTP service binds")
    port: int = Field(8000, ge=0, le=65535, description="port the HTTP service binds; 0 = any free")
    submit_timeout: float = Field(
        5.0, ge=0, le=600, description="seconds submit waits on a full queue"
    )
    max_response_bytes: int = Field(10 * 1024 * 1024, ge=1, description="cap on a fetched body")
    result_body_bytes: int = Field(
        1024 * 1024, ge=0, description="bytes of each response body kept with the job; 0 = none"
    )
    max_request_body_bytes: int = Field(
        64 * 1024, ge=0, le=16 * 1024 * 1024, description="cap on a job's request body (bytes)"
    )
    flow_limits: str = Field(
        "", description='per-key limits, JSON: {"host:port": {"parallelism", "rate", "period_s"}}'
    )
    allow_eviction: bool = Field(
        False,
        description="start even if Redis may evict keys (maxmemory-policy other than noeviction)",
    )
    shutdown_grace: float = Field(
        10.0, ge=0, le=3600, description="seconds to finish work on SIGTERM"
    )
    heartbeat_interval: float = Field(
        1.0, gt=0, le=60, description="durable worker heartbeat period"
    )
    heartbeat_ttl: float = Field(
        3.0, gt=0, le=600, description="heartbeat lapse that marks a dead worker"
    )
    poll_delay: float = Field(
        1.0,
        gt=0,
        le=5,
        description="durable worker's longest idle wait for a job hint (a safety net: an enqueue "
        "wakes idle workers at once)",
    )
    retry_base_delay: float = Field(0.5, ge=0, le=600, description="first retry backoff, seconds")
    retry_max_delay: float = Field(
        30.0, ge=0, le=3600, description="longest retry backoff, seconds"
    )
    result_ttl: int = Field(
        86_400, ge=1, description="seconds a job record is kept (after it finishes, in memory)"
    )
    allowed_hosts: str = Field(
        "",
        description="comma-separated host, host:port or host:* entries (IPv6 in brackets) the "
        "service may fetch even when internal; only these unless one entry is * (plus any public "
        "host); empty: any public host",
    )
    allow_private_networks: bool = Field(
        False,
        description="permit loopback, private, CGNAT and link-local addresses (not metadata)",
    )
    allow_link_local: bool = Field(
        False, description="permit link-local and cloud metadata addresses (169.254/16, fe80::/10)"
    )
    api_token: SecretStr = Field(
        SecretStr(""),
        description="when set, every route but GET /healthz needs Authorization: Bearer <token>",
    )
    request_timeout: float = Field(
        10.0,
        gt=0,
        le=30,
        description="seconds a client has to send a whole request (headers and body) before it is "
        "disconnected; also closes connections that send nothing",
    )
    log_format: Literal["text", "json"] = Field(
        "text",
        description="text: one human line per event; json: one JSON object per line, with the "
        "job id, attempt, worker, and trace/span ids when tracing is on",
    )
    qc_test_hooks: bool = Field(
        False,
        description="tests only: the fetch handler exits the process (code 70) when the upstream "
        "answers with X-Test-Crash: 1, to simulate a poison job",
    )

    @field_validator("heartbeat_ttl")
    @classmethod
    def _ttl_exceeds_interval(cls, v: float, info: object) -> float:
        interval = getattr(info, "data", {}).get("heartbeat_interval", 1.0)
        if v <= interval:
            raise ValueError(f"must be greater than HEARTBEAT_INTERVAL ({interval})")
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: str) -> str:
        redis_url.check(v)  # a ValueError says what is wrong in one line
        return v

    @field_validator("flow_limits")
    @classmethod
    def _flow_limits_parse(cls, v: str) -> str:
        parse_limits(v)  # raises ValueError with a one-line reason
        return v

    @property
    def flow_limit_map(self) -> dict[str, FlowLimit]:
        """``FLOW_LIMITS`` parsed: key (or ``"*"``) → limit."""
        return parse_limits(self.flow_limits)

    @field_validator("allowed_hosts")
    @classmethod
    def _allow_list_parses(cls, v: str) -> str:
        parse_allowed_hosts(v)  # a ValueError names the bad entry
        return v

    @property
    def allow_list(self) -> AllowList:
        """``ALLOWED_HOSTS`` parsed (see ``pipeline.fetch.allowlist``)."""
        return parse_allowed_hosts(self.allowed_hosts)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read settings from ``environ`` (default: the process environment).

        Raises SettingsError with one line such as ``WORKERS='x': Input should be a valid integer``.
        """
        try:
            if environ is None:
                return cls(**overrides)  # type: ignore[arg-type]
            known = {k.lower(): v for k, v in environ.items() if k.lower() in cls.model_fields}
            return cls.model_validate({**known, **overrides})
        except ValidationError as exc:
            raise SettingsError(_one_line(exc, environ)) from None


SECRET_BEARING = ("REDIS_URL",)  # settings whose value may hold a password: shown masked


def _one_line(exc: ValidationError, environ: Mapping[str, str] | None) -> str:
    import os

    env = os.environ if environ is None else environ
    err = exc.errors()[0]
    name = str(err["loc"][0]).upper() if err["loc"] else "settings"
    value = env.get(name, env.get(name.lower(), err.get("input")))
    if name in SECRET_BEARING and isinstance(value, str):
        value = redis_url.describe(value)  # its password never reaches a log
    return f"invalid {name}={value!r}: {err['msg']}"
