"""One settings object for every process: a TOML file plus ``FLEETKEEP_*`` environment variables.

Environment variables win over the file. The file is ``$FLEETKEEP_CONFIG`` when set, else
``<data_dir>/fleetkeep.toml`` when it exists.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fleetkeep"


def _config_file() -> Path | None:
    explicit = os.environ.get("FLEETKEEP_CONFIG")
    if explicit:
        return Path(explicit)
    data_dir = Path(os.environ.get("FLEETKEEP_DATA_DIR") or default_data_dir())
    candidate = data_dir / "fleetkeep.toml"
    return candidate if candidate.exists() else None


class Settings(BaseSettings):
    """Everything a fleetkeep process can be told. Defaults are the embedded single-box set-up."""

    model_config = SettingsConfigDict(env_prefix="FLEETKEEP_", extra="forbid")

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str = ""
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=8080, ge=1, le=65535)
    public_url: str = ""
    key_file: Path | None = None
    key_cache_seconds: float = Field(default=300.0, ge=0)  # unwrapped DEKs kept in memory
    key_rotation_days: int = Field(default=90, ge=0)  # 0 = no scheduled rotation
    key_request_timeout: float = Field(default=5.0, gt=0)  # per key connector request
    blob_store_url: str = ""
    log_level: str = "INFO"
    log_format: str = Field(default="json", pattern="^(json|text)$")
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    user_retention_days: int = Field(default=30, ge=0)
    login_max_failures: int = Field(default=5, ge=1)
    login_lockout_seconds: int = Field(default=900, ge=1)
    session_hours: int = Field(default=12, ge=1)
    activation_max_failures: int = Field(default=20, ge=1)
    activation_max_failures_per_token: int = Field(default=100, ge=1)
    activation_failure_window_seconds: int = Field(default=600, ge=1)
    device_inactive_days: int = Field(default=30, ge=1)
    job_intervals: dict[str, float] = Field(default_factory=dict)
    job_tick_seconds: float = Field(default=1.0, gt=0)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return upper

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if value and not value.startswith(("sqlite", "postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return value

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{self.data_dir / 'fleetkeep.db'}"
        if self.database_url.startswith("postgresql://"):
            self.database_url = "postgresql+psycopg://" + self.database_url[len("postgresql://") :]
        if self.key_file is None:
            self.key_file = self.data_dir / "keys" / "ekey.json"
        if not self.blob_store_url:
            self.blob_store_url = f"file://{self.data_dir / 'blobs'}"
        if not self.public_url:
            self.public_url = f"http://{self.listen_host}:{self.listen_port}"
        return self

    @property
    def resolved_key_file(self) -> Path:
        assert self.key_file is not None
        return self.key_file

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config = _config_file()
        if config is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config))
        return tuple(sources)


class SettingsError(Exception):
    """Settings could not be loaded; ``str()`` is a one-line explanation."""


def explain(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "settings"
        parts.append(f"{loc}: {item['msg']}")
    return "invalid settings: " + "; ".join(parts)


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(explain(exc)) from None
    except (OSError, ValueError) as exc:
        raise SettingsError(f"invalid settings: {exc}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
