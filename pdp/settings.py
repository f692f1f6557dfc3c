"""Settings, validated once at start-up and passed in (never a module global).

From the environment (prefix PDP_) and an optional `.env` file. API.md "Running it".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_POLICY_DIR = PROJECT_DIR / "policies"

ROLES = ("pep", "facts_writer", "grant_admin", "auditor", "policy_admin", "admin")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PDP_", env_file=".env", extra="ignore")

    database_url: str = Field(default="", description="durable fact store; '' = SQLite file")
    data_dir: Path = Field(default=Path("pdp-data"), description="where the SQLite file lives")
    redis_url: str | None = None
    api_keys: dict[str, list[str]] | None = None
    policy_dir: Path = DEFAULT_POLICY_DIR

    max_body_bytes: int = 1024 * 1024
    max_batch_body_bytes: int = 4 * 1024 * 1024
    max_decision_batch: int = 1000
    max_facts_batch: int = 5000
    decision_cache_size: int = 100_000
    min_facts_wait_seconds: float = 1.0
    poll_interval_seconds: float = 0.5

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: Any) -> Any:
        if isinstance(value, str | bytes):
            value = orjson.loads(value) if value.strip() else None
        return value

    @field_validator("api_keys")
    @classmethod
    def _known_roles(cls, value: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        for token, roles in (value or {}).items():
            if not token:
                raise ValueError("PDP_API_KEYS: a token may not be empty")
            unknown = [r for r in roles if r not in ROLES]
            if unknown:
                raise ValueError(f"PDP_API_KEYS: unknown role {unknown[0]!r}; roles: {ROLES}")
        return value

    def store_url(self) -> str:
        if self.database_url:
            url = self.database_url
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
            return url
        return f"sqlite:///{(self.data_dir / 'pdp.sqlite3').resolve()}"
