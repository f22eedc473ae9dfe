"""How a batch of new messages is stored, decided without the database: which are stored
already, which conversation each goes to, the seqs they get, the statuses of the TEXTs their
answers answer. Both write paths (`sql.py` on PostgreSQL, `sqlite_writes.py`) carry it out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agentcomm.history.records import MessageStatus, NewMessage

log = logging.getLogger(__name__)

# (user_id, message_id) -> (seq, conversation_id) of a message stored already.
Known = dict[tuple[str, str], tuple[int, str]]


def wanted_keys(batch: Sequence[NewMessage]) -> set[tuple[str, str]]:
    """What must be looked up first: the batch's messages, and the TEXTs its answers answer."""
    wanted = {(item.user_id, item.message_id) for item in batch}
    wanted |= {(item.user_id, item.answers) for item in batch if item.answers is not None}
    return wanted


@dataclass
class BatchPlan:
    batch: Sequence[NewMessage]
    seqs: list[int | None]
    # (index in the batch, message, conversation) of each message to store, in order.
    placed: list[tuple[int, NewMessage, str]] = field(default_factory=list)
    # (index, index of its first copy): a message twice in one batch is stored once.
    copies: list[tuple[int, int]] = field(default_factory=list)
    # New status of TEXTs of this batch that an answer in it answers.
    statuses: dict[int, MessageStatus] = field(default_factory=dict)
    # (status, user_id, message_id) of TEXTs stored before that an answer in it answers.
    updates: list[tuple[str, str, str]] = field(default_factory=list)

    def counts(self) -> dict[tuple[str, str], list[float]]:
        """(user, conversation) -> the times of its new messages, in key order."""
        counts: dict[tuple[str, str], list[float]] = {}
        for _, item, conversation_id in self.placed:
            counts.setdefault((item.user_id, conversation_id), []).append(item.at)
        return dict(sorted(counts.items()))

    def rows(self, first_seqs: dict[tuple[str, str], int]) -> list[dict[str, Any]]:
        """The rows to insert, their seqs given from each conversation's first new one; fills
        in `seqs`."""
        next_seq = dict(first_seqs)
        rows: list[dict[str, Any]] = []
        for index, item, conversation_id in self.placed:
            key = (item.user_id, conversation_id)
            seq = next_seq[key]
            next_seq[key] = seq + 1
            self.seqs[index] = seq
            rows.append(
                {
                    "user_id": item.user_id,
                    "conversation_id": conversation_id,
                    "seq": seq,
                    "message_id": item.message_id,
                    "message_type": item.message_type,
                    "sender_id": item.sender_id,
                    "receiver_id": item.receiver_id,
                    "text": item.text,
                    "status": self.statuses.get(index, item.status).value,
                    "error_code": item.error_code,
                    "in_reply_to": item.answers,
                    "at": item.at,
                }
            )
        return rows

    def finish(self) -> list[int | None]:
        for index, first in self.copies:
            self.seqs[index] = self.seqs[first]
        return self.seqs


def plan_batch(batch: Sequence[NewMessage], known: Known) -> BatchPlan:
    plan = BatchPlan(batch, [None] * len(batch))
    first_copy: dict[tuple[str, str], int] = {}
    for index, item in enumerate(batch):
        key = (item.user_id, item.message_id)
        if key in known:
            plan.seqs[index] = known[key][0]
            continue
        if key in first_copy:
            plan.copies.append((index, first_copy[key]))
            continue
        conversation_id: str | None = item.conversation_id
        if item.answers is not None:
            answered = (
                MessageStatus.FAILED
                if item.status is MessageStatus.ERROR
                else MessageStatus.ANSWERED
            )
            text_key = (item.user_id, item.answers)
            if text_key in first_copy:
                plan.statuses[first_copy[text_key]] = answered
                conversation_id = batch[first_copy[text_key]].conversation_id
            elif text_key in known:
                # In the conversation of the TEXT, whatever the answer says.
                conversation_id = known[text_key][1]
                plan.updates.append((answered.value, item.user_id, item.answers))
            else:
                conversation_id = None
        if conversation_id is None:
            log.debug("No TEXT %s is stored; its answer is not either", item.answers)
            continue
        first_copy[key] = index
        plan.placed.append((index, item, conversation_id))
    return plan
