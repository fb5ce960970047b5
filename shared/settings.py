"""Settings for every part of the hub, read once from environment variables.

Every variable is documented in the README. ``Settings()`` raises ``pydantic.ValidationError`` with the
variable's name when a value is malformed, and refuses development-only identities in production.
"""

from __future__ import annotations

import re
from datetime import time
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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
    # MLLP security and intake limits (docs/security.md, "MLLP listener"). TLS is on when a certificate
    # file is set (the key may be in the same file); with a CA file, clients present a certificate it
    # signed ("required") or may ("optional"). Connections over the cap are closed at once; a frame must
    # end within the total timeout of its first byte; frames being read and stored, and HTTP bodies being
    # read, hold at most max_bytes_in_flight bytes across the process (readers wait for room).
    mllp_tls_cert_file: Path | None = None
    mllp_tls_key_file: Path | None = None
    mllp_tls_ca_file: Path | None = None
    mllp_tls_client_cert: Literal["required", "optional"] = "required"
    mllp_tls_handshake_timeout_s: float = Field(default=10.0, gt=0)
    mllp_max_connections: int = Field(default=256, ge=1)
    mllp_frame_total_timeout_s: float = Field(default=120.0, gt=0)
    # A request body must arrive in full within this many seconds of the request (a slow sender cannot
    # hold a connection and its bytes in flight for ever): 408, and what came is kept.
    http_body_timeout_s: float = Field(default=120.0, gt=0)
    intake_max_bytes_in_flight: int = Field(default=64 * 1024 * 1024, ge=256 * 1024)
    # What intake accepts, checked before it acknowledges so that whatever is acknowledged can be mapped
    # within MongoDB's limits (shared/limits.py; docs/operations.md, "Limits"): segments in an HL7v2 frame,
    # repetitions of one field, Bundle entries, contained resources, and the estimated size of the
    # message's own record and of what mapping it writes (above 16 MiB needs MongoDB 4.2 or later).
    limit_segments: int = Field(default=10_000, ge=10, le=1_000_000)
    limit_field_repetitions: int = Field(default=1_000, ge=10, le=1_000_000)
    limit_bundle_entries: int = Field(default=1_000, ge=1, le=100_000)
    limit_contained_resources: int = Field(default=100, ge=0, le=100_000)
    limit_document_bytes: int = Field(default=15 * 1024 * 1024, ge=1024 * 1024, le=16 * 1024 * 1024)
    limit_transaction_bytes: int = Field(default=12 * 1024 * 1024, ge=1024 * 1024, le=64 * 1024 * 1024)
    # Inputs of at least intake_offload_bytes are read (parsed, validated, limits checked) by a pool of
    # intake_parse_pool worker processes, off the event loop every connection shares; 0 workers: all inline.
    # Their records are written alone, outside the group commits of small ones (committer.py).
    intake_parse_pool: int = Field(default=2, ge=0, le=32)
    intake_offload_bytes: int = Field(default=64 * 1024, ge=0)
    # Start the pool's workers with intake (a second or two), rather than on the first large input.
    intake_parse_pool_warm: bool = True

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

    # The development client: in development, an HTTP caller on loopback that sends no Authorization
    # header is this client (never in production); MLLP connections are attributed to it (shared/auth.py).
    dev_client_id: str = DEV_CLIENT_ID
    dev_client_ods: str = "REN"
    allow_dev_client: bool = True

    # Authentication of HTTP callers (OAuth 2.0 client credentials; docs/security.md). The hub's access
    # tokens live this long and are signed with the key in this PEM file (unset: a key generated on first
    # start and kept in MongoDB, shared by every process). A client's state (revoked or not) is read again
    # after auth_client_cache_s, so a revoked client's tokens stop working within that time. Public keys
    # fetched from JWKS URLs are kept jwks_cache_s. Tokens of an external identity provider are accepted
    # when its issuer and JWKS URL are set; the ODS code is read from the claim named by idp_ods_claim.
    token_lifetime_s: int = Field(default=300, ge=30, le=3600)
    token_signing_key_file: Path | None = None
    auth_client_cache_s: float = Field(default=5.0, ge=0, le=60)
    jwks_cache_s: float = Field(default=300.0, gt=0)
    jwks_timeout_s: float = Field(default=5.0, gt=0, le=60)
    idp_issuer: str | None = None
    idp_jwks_url: str | None = None
    idp_audience: str | None = None
    idp_ods_claim: str = "ods_code"
    # Per-client rate limit of the HTTP API: a token bucket per client id in each process (requests per
    # second, and the burst allowed above it).
    rate_limit_per_s: float = Field(default=50.0, gt=0)
    rate_limit_burst: int = Field(default=500, ge=1)
    # Refused token requests (POST /oauth2/token) per peer address, in each process: this many a minute on
    # average, bursts of up to token_refusals_burst; beyond that the address is answered 429 until its
    # bucket refills, so secrets cannot be guessed at speed. Granted requests cost nothing.
    token_refusals_per_min: float = Field(default=10.0, gt=0)
    token_refusals_burst: int = Field(default=20, ge=1)

    # Notifier (FHIR rest-hook and HL7v2 MLLP deliveries; docs/notifications.md).
    # Hosts, addresses or networks (CIDR) a callback may use although they are loopback, link-local or
    # private, comma-separated (e.g. "127.0.0.1,10.20.0.0/16,engine.trust.nhs.uk"). Empty: public only.
    notifier_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    notifier_allow_http: bool = False  # plain http:// callbacks (tests, local development)
    notifier_max_attempts: int = Field(default=12, ge=1, le=100)
    notifier_max_age_s: float = Field(default=12 * 3600.0, gt=0)
    notifier_backoff_base_s: float = Field(default=2.0, gt=0)
    notifier_backoff_max_s: float = Field(default=600.0, gt=0)
    notifier_retry_after_max_s: float = Field(default=3600.0, gt=0)
    notifier_timeout_s: float = Field(default=10.0, gt=0, le=120)
    notifier_lanes: int = Field(default=32, ge=1, le=1024)
    notifier_retention_days: int = Field(default=30, ge=1)
    # One outbox event the fan-out fails on (its focus unreadable, a filter that raises) is tried this
    # many times, ``notifier_fanout_retry_s`` x 2^(n-1) apart (at most 10 minutes), then dead-lettered.
    notifier_fanout_max_attempts: int = Field(default=5, ge=1, le=100)
    notifier_fanout_retry_s: float = Field(default=5.0, gt=0)

    # MSCC pathway: service hours (local time, every listed day; 0 = Monday) and the SLA scanner.
    service_opens: time = time(7, 30)
    service_closes: time = time(20, 0)
    service_days: Annotated[list[int], NoDecode] = Field(default_factory=lambda: [0, 1, 2, 3, 4, 5, 6])
    service_time_zone: str = "Europe/London"
    sla_at_risk_fraction: float = Field(default=0.75, gt=0, lt=1)
    sla_scan_interval_s: float = Field(default=15.0, gt=0)
    # A final report whose code (text, display or code) matches this is a whole-spine MRI report.
    pathway_mri_pattern: str = r"(?i)(\bMRI?\b|magnetic resonance).*\b(whole[- ]?)?spin(e|al)\b|\bMR\s?W?SP\b"
    # A referral or report the scanner fails on this many times is set aside (recorded in pathway_faults).
    pathway_max_attempts: int = Field(default=3, ge=1, le=100)

    # Supervision of background tasks (shared/supervision.py): a task is stalled (and /readyz 503) when
    # it completes no cycle within factor x its interval + margin; a stopped loop restarts after a backoff.
    task_stall_factor: float = Field(default=3.0, ge=1)
    task_stall_margin_s: float = Field(default=60.0, ge=0)
    task_restart_base_s: float = Field(default=1.0, gt=0)
    task_restart_max_s: float = Field(default=60.0, gt=0)
    # Claims of one message (failed attempts, or leases that expired in a worker that died) before it is
    # dead-lettered rather than handed back again.
    mapper_max_attempts: int = Field(default=5, ge=1, le=100)
    # A message dated (MSH-7, Bundle.timestamp) further ahead of the hub's clock than this is ordered by
    # its arrival time instead, with a warning: a sender's wrong clock must not make later messages stale.
    mapper_future_skew_s: float = Field(default=300.0, ge=0)
    # The mapper's claims (services/mapper/worker.py): messages per batch, and how long a claim is held
    # before another worker may take it; renewed every MSCC_LEASE_HEARTBEAT_S while the batch runs, so it
    # can be short and a killed worker's batch is taken over within seconds (docs/operations.md).
    mapper_batch_size: int = Field(default=100, ge=1, le=5000)
    mapper_lease_s: float = Field(default=10.0, gt=0)
    # A message the database could not take is tried again after base x 2^(n-1) s (with jitter), at most
    # max; an idle worker looks for new messages this often (woken sooner by nothing: it polls).
    mapper_backoff_base_s: float = Field(default=2.0, gt=0)
    mapper_backoff_max_s: float = Field(default=300.0, gt=0)
    mapper_idle_poll_s: float = Field(default=0.5, gt=0)

    # Leases, stopping and recovery (docs/operations.md). A notifier lane is leased like a mapper batch;
    # every lease held is renewed every ``lease_heartbeat_s`` while its work runs. A stopping process
    # finishes or releases what it holds within ``stop_timeout_s``. Every transaction's commit is limited
    # to ``transaction_max_commit_s``; the local mongod aborts any transaction older than
    # ``mongod_transaction_lifetime_s`` (one left open by a killed process). ``/readyz`` waits at most
    # ``readyz_timeout_s`` for the database.
    notifier_lease_s: float = Field(default=10.0, gt=0)
    # ``mscc messages reprocess`` marks a record "in progress" while it sends it through intake again,
    # leased the same way: a run killed meanwhile leaves a mark that expires, and a later run takes it.
    reprocess_lease_s: float = Field(default=10.0, gt=0)
    lease_heartbeat_s: float = Field(default=3.0, gt=0)
    stop_timeout_s: float = Field(default=8.0, gt=0)
    transaction_max_commit_s: float = Field(default=5.0, gt=0)
    mongod_transaction_lifetime_s: int = Field(default=10, ge=1)
    readyz_timeout_s: float = Field(default=0.8, gt=0, lt=1)

    # The audit trail (shared/audit_log.py): AuditEvents are deleted this many days after they were recorded
    # (default 8 years; docs/security.md says why). Every hub process applies it at start-up.
    audit_retention_days: int = Field(default=2922, ge=1, le=36525)

    # Prometheus metrics (shared/metrics.py, docs/operations.md). The HTTP process serves /metrics; a
    # process without the HTTP API (mscc mapper, mscc notifier) serves them on metrics_port when set.
    # Queue depths are read from the database at scrape time, within metrics_timeout_s.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    metrics_timeout_s: float = Field(default=0.5, gt=0, le=5)

    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "text"

    @model_validator(mode="after")
    def _heartbeat_within_leases(self) -> Settings:
        lease = min(self.mapper_lease_s, self.notifier_lease_s, self.reprocess_lease_s)
        if self.lease_heartbeat_s * 2 > lease:
            raise ValueError(
                f"MSCC_LEASE_HEARTBEAT_S ({self.lease_heartbeat_s}) must be at most half the shortest lease "
                f"(MSCC_MAPPER_LEASE_S, MSCC_NOTIFIER_LEASE_S, MSCC_REPROCESS_LEASE_S: {lease}), so a lease is "
                "renewed before it expires"
            )
        return self

    @field_validator("notifier_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _refuse_dev_identity_in_production(self) -> Settings:
        # HTTP callers in production always need a token; the development client identity remains only what
        # MLLP connections are attributed to, so the well-known default must not be that identity.
        if self.environment == "production" and self.allow_dev_client and self.dev_client_id == DEV_CLIENT_ID:
            raise ValueError(
                "MSCC_ENVIRONMENT=production with the default development client: production never admits it "
                "over HTTP (callers need a token, see docs/security.md); set MSCC_ALLOW_DEV_CLIENT=false, or "
                "MSCC_DEV_CLIENT_ID to the identity MLLP connections are recorded under"
            )
        if (self.idp_issuer is None) != (self.idp_jwks_url is None):
            raise ValueError("MSCC_IDP_ISSUER and MSCC_IDP_JWKS_URL are set together (or neither)")
        if self.environment == "production" and self.idp_jwks_url and not self.idp_jwks_url.startswith("https://"):
            raise ValueError("MSCC_IDP_JWKS_URL must be an https:// URL in production")
        return self

    @field_validator("service_days", mode="before")
    @classmethod
    def _split_days(cls, value: object) -> object:
        if isinstance(value, str):
            return [int(part) for part in value.split(",") if part.strip()]
        return value

    @field_validator("service_days")
    @classmethod
    def _weekdays(cls, days: list[int]) -> list[int]:
        if not days or any(d not in range(7) for d in days):
            raise ValueError("service days are weekday numbers 0 (Monday) to 6 (Sunday), at least one")
        return days

    @field_validator("service_time_zone")
    @classmethod
    def _zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {name!r}") from exc
        return name

    @field_validator("pathway_mri_pattern")
    @classmethod
    def _pattern(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from exc
        return pattern

    @model_validator(mode="after")
    def _mllp_tls_files(self) -> Settings:
        if self.mllp_tls_cert_file is None and (self.mllp_tls_key_file or self.mllp_tls_ca_file):
            raise ValueError(
                "MSCC_MLLP_TLS_KEY_FILE and MSCC_MLLP_TLS_CA_FILE need MSCC_MLLP_TLS_CERT_FILE (the listener's "
                "certificate): set it, or unset them for plain TCP"
            )
        return self

    @model_validator(mode="after")
    def _service_hours(self) -> Settings:
        if self.service_opens >= self.service_closes:
            raise ValueError("MSCC_SERVICE_OPENS must be before MSCC_SERVICE_CLOSES (same day)")
        return self

    @property
    def base_url(self) -> str:
        """The URL this hub's FHIR API is reached at, for Location headers and fullUrls."""
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        host = "localhost" if self.http_host in ("0.0.0.0", "127.0.0.1", "::") else self.http_host
        return f"http://{host}:{self.http_port}"
