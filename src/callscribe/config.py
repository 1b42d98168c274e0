"""Settings, from the environment and a ``.env`` file (pydantic-settings).

Variable names are unprefixed on purpose: the Gladia blog's ``.env`` (``GLADIA_API_KEY``) and
``HTTP_PORT`` just work, and Gladia's own SDK reads ``GLADIA_API_URL``/``GLADIA_REGION``.
"""

from __future__ import annotations

from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import AnyUrl, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from callscribe.events import Track
from callscribe.server.auth import SecuritySettings


class EngineChoice(StrEnum):
    AUTO = "auto"  # gladia when GLADIA_API_KEY is set, otherwise local
    LOCAL = "local"
    GLADIA = "gladia"


class Settings(SecuritySettings, BaseSettings):
    """Everything callscribe can be told. ``callscribe config`` prints the effective values."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        hide_input_in_errors=True,
    )

    # --- HTTP server
    http_host: str = Field("127.0.0.1", description="Interface to listen on (0.0.0.0 in containers).")
    http_port: int = Field(5000, ge=1, le=65535, description="Port to listen on (the Gladia blog's 5000).")
    public_url: AnyUrl | None = Field(
        None,
        description="The https base URL Twilio reaches (e.g. an ngrok URL). Used to build the "
        "<Stream url> and to check X-Twilio-Signature. Unset: taken from each request's Host.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = Field(
        "text", description="'json': one JSON object per line, with call_sid/stream_sid (containers)."
    )
    workers: int = Field(1, ge=1, description="Worker processes for `callscribe serve` (gunicorn + uvicorn).")

    # --- Limits (every one has a default; 0 never means 'unlimited')
    max_calls: int = Field(200, ge=1, description="Concurrent Media Streams per worker; the next is refused.")
    over_capacity: Literal["refuse", "no-stream"] = Field(
        "no-stream",
        description="Voice webhook at MAX_CALLS: 'no-stream' answers TwiML without <Stream> (the call "
        "goes on untranscribed), 'refuse' answers <Reject reason=busy>.",
    )
    idle_timeout: float = Field(30.0, gt=0, description="No media for this many seconds ends the stream (s).")
    max_call_duration: float = Field(4 * 3600.0, gt=0, description="Longest stream before it is ended (s).")
    ws_max_message_bytes: int = Field(
        65_536, ge=1024, description="Largest WebSocket message accepted (a 20 ms media frame is ~400 B)."
    )
    engine_buffer_seconds: float = Field(
        120.0,
        gt=0,
        description="Audio per track held while an engine is down or behind (s); beyond it, audio is "
        "dropped and counted (local: the oldest; Gladia: the newest, as it resumes from its last ack).",
    )
    drain_deadline: float = Field(
        25.0, gt=0, description="On SIGTERM, open calls may go on this long before they are finished (s)."
    )

    # --- Observability
    metrics_enabled: bool = Field(True, description="Serve Prometheus /metrics.")
    otel_enabled: bool | None = Field(
        None, description="OpenTelemetry traces; default on when OTEL_EXPORTER_OTLP_ENDPOINT is set."
    )
    otel_service_name: str = "callscribe"

    # --- Twilio
    twilio_auth_token: SecretStr | None = Field(
        None, description="Account auth token: when set, X-Twilio-Signature is required."
    )
    stream_track: Literal["inbound_track", "outbound_track", "both_tracks"] = "both_tracks"
    stream_name: str = "callscribe"
    stream_parameters: dict[str, str] = Field(
        default_factory=dict,
        description='JSON object of <Parameter>s added to the <Stream>, e.g. {"tenant":"acme"}',
    )
    stream_status_callback: AnyUrl | None = None
    twiml_continue: str = Field(
        "pause:3600",
        description="What the call does after <Start><Stream>: 'pause:SECONDS', 'dial:NUMBER' or "
        "'redirect:URL' (without one the call would hang up at once).",
    )
    speaker_inbound: str = Field("caller", description="Label of the inbound track's speaker.")
    speaker_outbound: str = Field("agent", description="Label of the outbound track's speaker.")

    # --- Engine choice
    engine: EngineChoice = EngineChoice.AUTO
    drain_timeout: float = Field(
        8.0, gt=0, description="Seconds to wait for the last finals after a stream stops."
    )

    # --- Gladia live v2
    gladia_api_key: SecretStr | None = None
    gladia_api_url: str = Field("https://api.gladia.io", pattern=r"^(https?|wss?)://")
    gladia_region: Literal["us-west", "eu-west"] | None = None
    gladia_model: str = "solaria-1"
    gladia_languages: list[str] = Field(default_factory=lambda: ["en"])
    gladia_endpointing: float = Field(0.3, ge=0.01, le=10)
    gladia_max_duration_without_endpointing: float = Field(15, ge=5, le=60)
    gladia_chunk_ms: int = Field(100, ge=20, le=1000, description="Audio sent to Gladia per message.")
    gladia_partials: bool = True

    # --- Embedded engine
    local_model: str = Field(
        "tiny.en",
        description="'tiny.en' (packaged, default), 'base' or 'small' (packaged multilingual), "
        "or a path to a CTranslate2 Whisper model directory.",
    )
    local_language: str = Field("en", description="Language for multilingual models.")
    local_compute_type: str = "int8"
    local_workers: int = Field(0, ge=0, description="Decode threads; 0 = one per core.")
    local_max_calls: int = Field(6, ge=1, description="Two-track calls admitted at once.")
    local_over_capacity: Literal["refuse", "gladia"] = Field(
        "refuse", description="What to do with a call beyond LOCAL_MAX_CALLS."
    )
    local_partial_interval: float = Field(0.5, gt=0, description="Seconds of new speech between partials.")
    local_endpoint_silence: float = Field(0.5, gt=0, description="Silence that ends an utterance (s).")
    local_max_utterance: float = Field(15.0, gt=1, description="Longest utterance before a forced cut (s).")
    local_final_beam: int = Field(5, ge=1, le=10)

    # --- Storage, delivery, fan-out
    database_url: str = Field(
        "sqlite+aiosqlite:///callscribe.db",
        description="SQLAlchemy async URL: a SQLite file by default, postgresql+asyncpg://… for PostgreSQL.",
    )
    retention_days: int = Field(0, ge=0, description="Delete calls older than this many days (0 = keep).")
    store_buffer_max: int = Field(
        10_000, ge=100, description="Events held in memory while the store is down."
    )
    webhook_urls: list[str] = Field(default_factory=list, description="JSON list of webhook endpoints.")
    webhook_secret: SecretStr | None = Field(None, description="HMAC-SHA256 key that signs webhook bodies.")
    webhook_events: list[str] = Field(
        default_factory=lambda: ["call.started", "transcript.final", "trigger.fired", "call.ended"],
        description="Event types sent to webhooks (transcript.partial is also available).",
    )
    webhook_max_attempts: int = Field(8, ge=1, description="Attempts before a delivery is dead-lettered.")
    redis_url: str | None = Field(None, description="redis://… to fan live events out across instances.")
    redis_channel: str = Field("callscribe:events", description="Redis pub/sub channel of live events.")

    # --- Real-time intelligence
    redact: bool = Field(True, description="Mask PCI/PII before any sink, log or feed sees text.")
    redact_entities: list[Literal["card", "cvv", "expiry", "ssn", "phone", "email"]] = Field(
        default_factory=lambda: ["card", "cvv", "expiry", "ssn", "phone", "email"],
        description="Entities masked (JSON list).",
    )
    redact_card_mask: str = Field("[card ending {last4}]", description="Mask of a card number.")
    redact_hold_seconds: float = Field(
        2.5, ge=0, description="How long a final that ends in a possible card prefix waits for the next final."
    )
    triggers_path: str | None = Field(None, description="TOML or YAML file of phrase triggers (hot-reloaded).")
    notes_llm_url: str | None = Field(None, description="OpenAI-compatible base URL for a written summary.")
    notes_llm_model: str = "gpt-4o-mini"
    notes_llm_api_key: SecretStr | None = None

    # --- Sinks
    sinks: list[Literal["console", "jsonl"]] = Field(default_factory=lambda: ["console"])
    jsonl_path: str = Field("-", description="Where the jsonl sink writes ('-' = stdout).")

    @field_validator("twiml_continue")
    @classmethod
    def _check_continue(cls, value: str) -> str:
        kind, _, arg = value.partition(":")
        if kind not in {"pause", "dial", "redirect"} or not arg:
            raise ValueError("expected 'pause:SECONDS', 'dial:NUMBER' or 'redirect:URL'")
        if kind == "pause" and not arg.isdigit():
            raise ValueError("pause needs whole seconds, e.g. 'pause:3600'")
        return value

    @cached_property
    def resolved_engine(self) -> EngineChoice:
        if self.engine is EngineChoice.AUTO:
            return EngineChoice.GLADIA if self.gladia_api_key else EngineChoice.LOCAL
        return self.engine

    @property
    def speakers(self) -> dict[Track, str]:
        return {Track.INBOUND: self.speaker_inbound, Track.OUTBOUND: self.speaker_outbound}

    def masked(self) -> dict[str, Any]:
        """The effective settings, secrets masked, for ``callscribe config``."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                secret = value.get_secret_value()
                value = f"{secret[:2]}…{secret[-2:]} (set)" if len(secret) > 8 else "*** (set)"
            elif value is not None and not isinstance(value, (int, float, bool, str, list, dict)):
                value = str(value)
            out[name.upper()] = value
        out["ENGINE (resolved)"] = str(self.resolved_engine)
        return out


class ConfigError(Exception):
    """Bad configuration, with one line that names the variable."""


def load_settings(env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    """Settings from the environment (and ``env_file``); raises :class:`ConfigError` with one clear line."""
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ".".join(str(p) for p in err.get("loc", ())) or "?"
        value = err.get("input")
        shown = (
            ""
            if isinstance(value, dict) or any(s in name for s in ("key", "token", "secret"))
            else f" (got {value!r})"
        )
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise ConfigError(f"{name.upper()}: {err['msg']}{shown}{more}") from None
