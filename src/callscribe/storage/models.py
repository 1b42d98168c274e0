"""The storage schema as SQLAlchemy 2 declarative models (the Alembic migrations mirror these).

Portable across SQLite and PostgreSQL: JSON is JSONB on PostgreSQL, datetimes are timezone-aware
(UTC) on both, and full-text search has a backend-specific index created by the migration (SQLite
FTS5 table ``utterances_fts``, PostgreSQL GIN index on ``to_tsvector('simple', text)``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# JSONB on PostgreSQL: indexable and compact; plain JSON text on SQLite.
JSONType = sa.JSON().with_variant(JSONB(), "postgresql")
# A BIGINT key on PostgreSQL; INTEGER on SQLite so the column is the rowid (FTS5 content_rowid needs it).
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on every backend.

    SQLite has no time zone type: values are stored as naive UTC and marked UTC again on the way out.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: dict[Any, Any] = {  # noqa: RUF012 - SQLAlchemy reads it at class creation
        datetime: UTCDateTime(),
        dict[str, Any]: JSONType,
        list[Any]: JSONType,
    }


class Call(Base):
    """One Twilio call (one Media Stream); ``status`` is ``live`` until its CallEnded is stored."""

    __tablename__ = "calls"

    call_sid: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    stream_sid: Mapped[str] = mapped_column(sa.String(64), default="")
    account_sid: Mapped[str] = mapped_column(sa.String(64), default="")
    custom_parameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    tracks: Mapped[list[Any]] = mapped_column(default=list)
    speakers: Mapped[dict[str, Any]] = mapped_column(default=dict)
    engine: Mapped[str] = mapped_column(sa.String(32), default="")
    status: Mapped[str] = mapped_column(sa.String(16), default="live")  # live | ended
    end_reason: Mapped[str | None] = mapped_column(sa.String(64))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]
    duration: Mapped[float | None] = mapped_column(sa.Double)  # seconds of audio
    counters: Mapped[dict[str, Any]] = mapped_column(default=dict)  # frames, gaps, malformed…
    notes: Mapped[dict[str, Any] | None] = mapped_column(JSONType)  # end-of-call notes (0002)
    last_event_id: Mapped[str | None] = mapped_column(sa.String(32))

    __table_args__ = (
        sa.Index("ix_calls_started_at", "started_at"),
        sa.Index("ix_calls_status", "status"),
    )


class Utterance(Base):
    """A final transcript of one utterance (partials are never stored). Enough to rebuild the event."""

    __tablename__ = "utterances"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(sa.String(32), unique=True)  # the feed resume key
    call_sid: Mapped[str] = mapped_column(sa.ForeignKey("calls.call_sid", ondelete="CASCADE"))
    stream_sid: Mapped[str] = mapped_column(sa.String(64), default="")
    utterance_id: Mapped[str] = mapped_column(sa.String(64))
    track: Mapped[str] = mapped_column(sa.String(16))
    speaker: Mapped[str] = mapped_column(sa.String(64))
    start: Mapped[float] = mapped_column(sa.Double)  # seconds on the call's audio clock
    end: Mapped[float] = mapped_column(sa.Double)
    text: Mapped[str] = mapped_column(sa.Text)
    stable_text: Mapped[str] = mapped_column(sa.Text, default="")
    words: Mapped[list[Any]] = mapped_column(default=list)  # [{word, start, end, confidence}]
    language: Mapped[str | None] = mapped_column(sa.String(16))
    confidence: Mapped[float | None] = mapped_column(sa.Double)
    engine: Mapped[str] = mapped_column(sa.String(32), default="")
    redactions: Mapped[list[Any] | None] = mapped_column(JSONType)  # redaction marks, added later
    received_at: Mapped[float] = mapped_column(sa.Double)  # time.time() of the event, kept exact

    __table_args__ = (
        # leads with call_sid: serves the FK cascade and "utterances of a call, by time"
        sa.Index("ix_utterances_call_sid_start", "call_sid", "start"),
        sa.Index("ix_utterances_speaker", "speaker"),
    )


class CallEvent(Base):
    """Something that happened to a call besides speech: ``call.error`` now, ``trigger`` later."""

    __tablename__ = "call_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(sa.String(32), unique=True)
    call_sid: Mapped[str] = mapped_column(sa.ForeignKey("calls.call_sid", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(sa.String(32))
    code: Mapped[str | None] = mapped_column(sa.String(64))
    message: Mapped[str | None] = mapped_column(sa.Text)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookOutbox(Base):
    """One event to deliver to one endpoint (transactional outbox: written with the batch)."""

    __tablename__ = "webhook_outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    endpoint: Mapped[str] = mapped_column(sa.Text)
    event_id: Mapped[str] = mapped_column(sa.String(32))
    call_sid: Mapped[str | None] = mapped_column(
        sa.ForeignKey("calls.call_sid", ondelete="CASCADE"), index=True
    )
    event_type: Mapped[str] = mapped_column(sa.String(32))
    body: Mapped[str] = mapped_column(sa.Text)  # the JSON body, exactly as signed and sent
    status: Mapped[str] = mapped_column(
        sa.String(16), default="pending", server_default="pending"
    )  # pending | delivered | dead
    attempts: Mapped[int] = mapped_column(default=0, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=sa.func.now())
    last_error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, server_default=sa.func.now())
    delivered_at: Mapped[datetime | None]

    __table_args__ = (
        sa.UniqueConstraint("endpoint", "event_id", name="uq_webhook_outbox_endpoint_event"),
        sa.Index("ix_webhook_outbox_status_next", "status", "next_attempt_at"),
    )


class WebhookAttempt(Base):
    """One delivery attempt of an outbox row (the delivery log)."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    outbox_id: Mapped[int] = mapped_column(
        BigId, sa.ForeignKey("webhook_outbox.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int]
    at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None]
    error: Mapped[str | None] = mapped_column(sa.Text)
    duration_ms: Mapped[float | None] = mapped_column(sa.Double)


calls = Call.__table__
utterances = Utterance.__table__
call_events = CallEvent.__table__
