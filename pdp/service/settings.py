"""Settings, validated once at start-up and passed in (never a module global).

From the environment (prefix PDP_) and an optional `.env` file. API.md "Running it".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from pydantic import (
    AwareDatetime,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from pdp.model.callers import check_role, key_spec
from pdp.rights.egress import AllowList, EgressRefused, check_url
from pdp.rights.webhooks import Webhook

PROJECT_DIR = Path(__file__).resolve().parents[2]
DEFAULT_POLICY_DIR = PROJECT_DIR / "policies"


class Settings(BaseSettings):
    # A refused value is not echoed in the error: it may be a token or a secret.
    model_config = SettingsConfigDict(env_prefix="PDP_", env_file=".env", extra="ignore",
                                      hide_input_in_errors=True)

    database_url: str = Field(default="", description="durable fact store; '' = SQLite file")
    data_dir: Path = Field(default=Path("pdp-data"), description="where the SQLite file lives")
    redis_url: str | None = None
    api_keys: dict[str, Any] | None = None
    policy_dir: Path = DEFAULT_POLICY_DIR
    # Watch the policy files and put a changed version in force (vetted by its suites)
    # every this many seconds; 0: only on POST /v1/policy/reload.
    policy_watch_seconds: float = Field(default=0, ge=0, le=3600)

    max_body_bytes: int = 1024 * 1024
    max_batch_body_bytes: int = 4 * 1024 * 1024
    max_decision_batch: int = 1000
    # What a request may be before anything of it is parsed (pdp.http.serving, pdp.http.access):
    # the request line and headers together, the number of headers, how long the head
    # and then the body may take to arrive (slower clients get request_timeout and are cut off).
    max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    max_header_count: int = Field(default=100, ge=10, le=1000)
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=600)
    body_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    # AuthZEN search: results per page unless `page.limit` says, and how long one page may
    # examine candidates before it answers with what it has and a token to go on.
    search_default_limit: int = Field(default=100, ge=1, le=1000)
    search_page_budget_seconds: float = Field(default=0.25, gt=0, le=60)
    max_facts_batch: int = 5000
    decision_cache_size: int = 100_000
    # Decisions (and warming batches) worked out at once in worker threads: the Python
    # parts run one at a time, so more only contend with the decision log's writer.
    decision_threads: int = Field(default=2, ge=1, le=64)
    # Decisions ready before they are asked (pdp.engine.warming): worked out in the
    # background at start, after writes and after a policy reload, using at most this
    # share of one CPU; a reloaded policy is warmed for up to `warm_swap_seconds` before
    # it goes live.
    warm: bool = True
    warm_cpu_share: float = Field(default=0.5, gt=0, le=1)
    warm_swap_seconds: float = Field(default=5.0, ge=0, le=600)
    # A candidate policy in shadow: the share of live decisions it also decides, and how
    # many may wait for it (more are dropped and counted).
    shadow_sample_rate: float = Field(default=1.0, ge=0, le=1)
    shadow_queue_size: int = Field(default=10_000, ge=1, le=1_000_000)
    # Time budget of every Polar query of the live policy (oso's POLAR_TIMEOUT_MS).
    policy_query_timeout_ms: int = Field(default=5_000, ge=100, le=60_000)
    # Candidate policies (tested or in shadow) run in a sandbox process
    # (pdp.engine.policy_sandbox): its limits, and the time all of one suite run may take.
    sandbox_query_ms: int = Field(default=2_000, ge=50, le=60_000)
    sandbox_cpu_seconds: int = Field(default=300, ge=1, le=86_400)
    sandbox_memory_mb: int = Field(default=1024, ge=256, le=65_536)
    candidate_budget_seconds: float = Field(default=60.0, gt=0, le=3600)
    min_facts_wait_seconds: float = 1.0
    poll_interval_seconds: float = Field(default=0.25, gt=0, le=10)
    staleness_bound_seconds: float = Field(default=1.0, gt=0, le=3600)
    redis_prefix: str = Field(default="pdp", pattern=r"^[A-Za-z0-9_.:\-]{1,64}$")
    snapshot_interval_seconds: float = Field(default=60.0, gt=0)

    # The decision log. Turning it off breaks the law's logging duty: benchmarks only.
    audit_log: bool = True
    audit_retention_days: int = Field(default=5 * 365 + 1, ge=1)
    # Durable segments move into the indexed record chain once the writer has been idle
    # this long, or when this many records wait (then under load as well).
    audit_index_delay_seconds: float = Field(default=0.2, ge=0, le=3600)
    audit_max_pending_records: int = Field(default=200_000, ge=0)

    # Misuse detection: the anomaly rules (default: monitoring.yaml in the policy dir).
    monitoring_rules: Path | None = None

    # The life of a right (issue 3).
    max_grant_months: int = Field(default=12, ge=1, le=120)
    recertification_days: int = Field(default=90, ge=1, le=3650)
    # Notice ends the agreement no sooner than the agreement's three months (§ 9).
    notice_months: int = Field(default=3, ge=3, le=24)
    # The cut-over of the register of rights granted before the service (POST
    # /v1/grants:import): an RFC 3339 time with offset; every imported right was approved
    # and opened before it. Unset: the register is closed (register_closed).
    register_before: AwareDatetime | None = None
    webhooks: list[Webhook] = Field(default_factory=list)
    # Where webhooks may go besides public addresses (pdp.rights.egress): IP addresses, CIDR
    # networks or exact host names; loopback, private, link-local and metadata addresses
    # are refused unless listed here.
    webhook_allow_hosts: list[str] = Field(default_factory=list)
    # The URL that clients reach this service at (behind a proxy: the proxy's). The
    # discovery document and every URL the service prints are made from it, never from a
    # request's Host header. Unset: `pdp serve` uses http://<--host>:<--port> (a wildcard
    # host as the loopback address); `app_from_env` refuses to start.
    public_url: str | None = None
    # The server secret that names keys configured without a name (HMAC of the token):
    # at least 16 characters. Unset: a random key made once per deployment and kept in
    # the store (table service_secrets), the same for every replica.
    fingerprint_key: SecretStr | None = Field(default=None, min_length=16)

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: Any) -> Any:
        if isinstance(value, str | bytes):
            value = orjson.loads(value) if value.strip() else None
        return value

    @field_validator("api_keys")
    @classmethod
    def _known_roles(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        for token, spec in (value or {}).items():
            if not token:
                raise ValueError("PDP_API_KEYS: a token may not be empty")
            try:
                for role in key_spec(spec)[1]:
                    check_role(role)
            except ValueError as error:
                raise ValueError(f"PDP_API_KEYS: {error}") from None
        return value

    @field_validator("webhook_allow_hosts")
    @classmethod
    def _allow_hosts(cls, value: list[str]) -> list[str]:
        try:
            AllowList.parse(value)
        except ValueError as error:
            raise ValueError(f"PDP_WEBHOOK_ALLOW_HOSTS: {error}") from None
        return value

    @model_validator(mode="after")
    def _webhook_urls(self) -> Settings:
        """A webhook to a loopback, private, link-local or metadata address is refused at
        start unless allowed (the addresses a name resolves to: at each delivery)."""
        allow = AllowList.parse(self.webhook_allow_hosts)
        for hook in self.webhooks:
            try:
                check_url(hook.url, allow)
            except EgressRefused as error:
                raise ValueError(f"PDP_WEBHOOKS {hook.name}: {error}") from None
        return self

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        return check_public_url(value) if value else None

    def store_url(self) -> str:
        if self.database_url:
            url = self.database_url
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
            return url
        return f"sqlite:///{(self.data_dir / 'pdp.sqlite3').resolve()}"


def check_public_url(value: str) -> str:
    """PDP_PUBLIC_URL checked: an http(s) URL with a host and maybe a path, no user, no
    query, no fragment; returned without a trailing slash."""
    def refuse(problem: str) -> ValueError:
        return ValueError(f"PDP_PUBLIC_URL {value!r}: {problem} (e.g. https://pdp.example.fi)")

    try:
        parts = urlsplit(value)
        _ = parts.port  # a port that is not a number in range raises here
    except ValueError as error:
        raise refuse(str(error)) from None
    if parts.scheme not in ("http", "https"):
        raise refuse("the scheme must be http or https")
    if not parts.hostname:
        raise refuse("it names no host")
    if parts.username is not None or parts.password is not None:
        raise refuse("it may not carry a user or password")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise refuse("it may not have a query or a fragment")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise refuse("it may not contain spaces or control characters")
    return value.rstrip("/")


def public_url_for(host: str, port: int) -> str:
    """The default public URL of `pdp serve --host H --port P`: from the configured
    address, never from a request; a wildcard address means the loopback one."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"
