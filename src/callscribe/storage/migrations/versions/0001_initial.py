"""Initial schema: calls, utterances (+ full-text index), call_events, webhook outbox and attempts.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("callscribe.storage.migrations")

JSON = sa.JSON().with_variant(JSONB(), "postgresql")
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)

# SQLite: an external-content FTS5 index over utterances.text, kept in step by triggers (the update
# trigger matters: redaction rewrites text). No diacritics folding, to match PostgreSQL's 'simple'.
SQLITE_FTS = [
    "CREATE VIRTUAL TABLE utterances_fts USING fts5(text, content='utterances', content_rowid='id', "
    "tokenize='unicode61 remove_diacritics 0')",
    "CREATE TRIGGER utterances_fts_ai AFTER INSERT ON utterances BEGIN "
    "INSERT INTO utterances_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER utterances_fts_ad AFTER DELETE ON utterances BEGIN "
    "INSERT INTO utterances_fts(utterances_fts, rowid, text) VALUES ('delete', old.id, old.text); END",
    "CREATE TRIGGER utterances_fts_au AFTER UPDATE OF text ON utterances BEGIN "
    "INSERT INTO utterances_fts(utterances_fts, rowid, text) VALUES ('delete', old.id, old.text); "
    "INSERT INTO utterances_fts(rowid, text) VALUES (new.id, new.text); END",
]
PG_FTS = (
    "CREATE INDEX ix_utterances_text_fts ON utterances USING gin (to_tsvector('simple'::regconfig, text))"
)


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("call_sid", sa.String(64), primary_key=True),
        sa.Column("stream_sid", sa.String(64), nullable=False),
        sa.Column("account_sid", sa.String(64), nullable=False),
        sa.Column("custom_parameters", JSON, nullable=False),
        sa.Column("tracks", JSON, nullable=False),
        sa.Column("speakers", JSON, nullable=False),
        sa.Column("engine", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("end_reason", sa.String(64), nullable=True),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("ended_at", TS, nullable=True),
        sa.Column("duration", sa.Double(), nullable=True),
        sa.Column("counters", JSON, nullable=False),
        sa.Column("last_event_id", sa.String(32), nullable=True),
    )
    op.create_index("ix_calls_started_at", "calls", ["started_at"])
    op.create_index("ix_calls_status", "calls", ["status"])

    op.create_table(
        "utterances",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(32), nullable=False, unique=True),
        sa.Column(
            "call_sid", sa.String(64), sa.ForeignKey("calls.call_sid", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("stream_sid", sa.String(64), nullable=False),
        sa.Column("utterance_id", sa.String(64), nullable=False),
        sa.Column("track", sa.String(16), nullable=False),
        sa.Column("speaker", sa.String(64), nullable=False),
        sa.Column("start", sa.Double(), nullable=False),
        sa.Column("end", sa.Double(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("stable_text", sa.Text(), nullable=False),
        sa.Column("words", JSON, nullable=False),
        sa.Column("language", sa.String(16), nullable=True),
        sa.Column("confidence", sa.Double(), nullable=True),
        sa.Column("engine", sa.String(32), nullable=False),
        sa.Column("redactions", JSON, nullable=True),
        sa.Column("received_at", sa.Double(), nullable=False),
    )
    op.create_index("ix_utterances_call_sid_start", "utterances", ["call_sid", "start"])
    op.create_index("ix_utterances_speaker", "utterances", ["speaker"])

    op.create_table(
        "call_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(32), nullable=False, unique=True),
        sa.Column(
            "call_sid", sa.String(64), sa.ForeignKey("calls.call_sid", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("code", sa.String(64), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("at", TS, nullable=False),
    )
    op.create_index("ix_call_events_call_sid", "call_events", ["call_sid"])

    op.create_table(
        "webhook_outbox",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("event_id", sa.String(32), nullable=False),
        sa.Column(
            "call_sid", sa.String(64), sa.ForeignKey("calls.call_sid", ondelete="CASCADE"), nullable=True
        ),
        sa.Column("event_type", sa.String(32), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False, server_default=sa.func.now()),
        sa.Column("delivered_at", TS, nullable=True),
        sa.UniqueConstraint("endpoint", "event_id", name="uq_webhook_outbox_endpoint_event"),
    )
    op.create_index("ix_webhook_outbox_status_next", "webhook_outbox", ["status", "next_attempt_at"])
    op.create_index("ix_webhook_outbox_call_sid", "webhook_outbox", ["call_sid"])

    op.create_table(
        "webhook_attempts",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("outbox_id", BigId, sa.ForeignKey("webhook_outbox.id", ondelete="CASCADE"), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", TS, nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Double(), nullable=True),
    )
    op.create_index("ix_webhook_attempts_outbox_id", "webhook_attempts", ["outbox_id"])

    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(PG_FTS)
    elif dialect == "sqlite":
        try:
            op.execute(SQLITE_FTS[0])
        except sa.exc.OperationalError as exc:  # an SQLite built without FTS5: search falls back to LIKE
            log.warning("SQLite has no FTS5 (%s): transcript search will use LIKE", exc)
        else:
            for statement in SQLITE_FTS[1:]:
                op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in ("utterances_fts_ai", "utterances_fts_ad", "utterances_fts_au"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS utterances_fts")
    for table in ("webhook_attempts", "webhook_outbox", "call_events", "utterances", "calls"):
        op.drop_table(table)
