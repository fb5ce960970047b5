"""Settings for every part of the hub, read once from environment variables.

Every variable is documented in the README. ``Settings()`` raises ``pydantic.ValidationError`` with the
variable's name when a value is malformed, and refuses development-only identities in production.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_CLIENT_ID = "dev-client"


def _default_state_dir() -> Path:
    return Path.home() / ".local" / "state" / "mscc"


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "mscc"


class Settings(BaseSettings):
    """The hub's configuration. Names are the environment variables, upper-cased, prefixed ``MSCC_``."""

    model_config = SettingsConfigDict(env_prefix="MSCC_", extra="ignore")

    environment: Literal["development", "production"] = "development"

    # MongoDB. MONGODB_URI (no prefix) replaces the local mongod the hub otherwise starts itself.
    mongodb_uri: str | None = Field(default=None, validation_alias="MONGODB_URI")
    db_name: str = "mscc"
    state_dir: Path = Field(default_factory=_default_state_dir)
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    mongod_cache_gb: float = 0.25

    # Listeners.
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    mllp_host: str = "127.0.0.1"
    mllp_port: int = Field(default=2575, ge=0, le=65535)
    public_base_url: str | None = None

    # MLLP limits.
    mllp_max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=7 * 1024 * 1024)
    mllp_idle_timeout_s: float = Field(default=600.0, gt=0)
    mllp_frame_timeout_s: float = Field(default=30.0, gt=0)
    mllp_max_in_flight: int = Field(default=64, ge=1)

    # HL7v2 decoding and acceptance.
    hl7_default_charset: str = "utf-8"
    hl7_fallback_charset: str = "cp1252"
    senders_file: Path | None = None
    mapping_file: Path | None = None
    receiving_application: str = "MSCC-HUB"
    receiving_facility: str = "REN"

    # Group commit of inbound messages.
    commit_max_batch: int = Field(default=256, ge=1, le=5000)
    commit_max_concurrent: int = Field(default=2, ge=1, le=16)

    # Caller identity: until authentication lands every caller is this configured development client.
    dev_client_id: str = DEV_CLIENT_ID
    dev_client_ods: str = "REN"
    allow_dev_client: bool = True

    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "text"

    @model_validator(mode="after")
    def _refuse_dev_identity_in_production(self) -> Settings:
        if self.environment == "production" and self.allow_dev_client and self.dev_client_id == DEV_CLIENT_ID:
            raise ValueError(
                "MSCC_ENVIRONMENT=production with the default development client: set MSCC_DEV_CLIENT_ID to "
                "the client this deployment trusts, or MSCC_ALLOW_DEV_CLIENT=false once authentication is on"
            )
        return self

    @property
    def base_url(self) -> str:
        """The URL this hub's FHIR API is reached at, for Location headers and fullUrls."""
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        host = "localhost" if self.http_host in ("0.0.0.0", "127.0.0.1", "::") else self.http_host
        return f"http://{host}:{self.http_port}"
