"""The tables, as SQLAlchemy Core sees them; the migrations in `migrations/versions/` make
them (a change here is a new migration there, never an edit of an old one)."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# One row per (user, conversation): its seq counter and when it was last written. Kept when
# retention removes all its messages (first_seq > last_seq), so that an offset asked for later
# is answered "unrecoverable" rather than "no such conversation".
conversations = sa.Table(
    "conversations",
    metadata,
    sa.Column("user_id", sa.String(128), primary_key=True),
    sa.Column("conversation_id", sa.String(128), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("first_seq", sa.Integer, nullable=False),
    sa.Column("last_seq", sa.Integer, nullable=False),
    sa.Index("ix_conversations_user_updated", "user_id", "updated_at"),
    sa.Index("ix_conversations_updated", "updated_at"),
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("user_id", sa.String(128), primary_key=True),
    sa.Column("conversation_id", sa.String(128), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("message_id", sa.String(128), nullable=False),
    sa.Column("message_type", sa.String(32), nullable=False),
    sa.Column("sender_id", sa.String(128), nullable=False),
    sa.Column("receiver_id", sa.String(128), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("error_code", sa.String(64), nullable=True),
    sa.Column("in_reply_to", sa.String(128), nullable=True),
    sa.Column("at", sa.Float, nullable=False),
    # A message is stored once: a redelivered copy finds its row and keeps its seq.
    sa.UniqueConstraint("user_id", "message_id", name="uq_messages_user_message"),
    sa.Index("ix_messages_at", "at"),
)
