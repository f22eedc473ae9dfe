"""The A2A task book: hub frames in, task states and events out (no I/O)."""

from __future__ import annotations

import asyncio
from typing import Any

from a2a.types import Message, Part, Role, TaskArtifactUpdateEvent, TaskState

from agentcomm.gateways.a2a import tasks
from agentcomm.gateways.a2a.tasks import TaskBook, TaskRecord


def record(task_id: str = "t1", owner: str = "alice") -> TaskRecord:
    request = Message(message_id="m", role=Role.ROLE_USER, parts=[Part(text="hi")])
    return TaskRecord(
        task_id=task_id, context_id="c1", agent_id="echo", owner=owner, request=request
    )


def echo(status: str, **fields: Any) -> dict[str, Any]:
    return {"message_type": "TEXT", "message_id": "t1", "routing_status": status, **fields}


def answer(kind: str, **fields: Any) -> dict[str, Any]:
    return {"message_type": kind, "in_reply_to_message_id": "t1", **fields}


def test_a_reply_completes_the_task_with_its_text_as_the_artifact() -> None:
    book = TaskBook()
    task = record()
    book.open(task)
    book.frame(echo("pending"))
    assert task.state == TaskState.TASK_STATE_SUBMITTED
    book.frame(echo("routed"))
    assert task.state == TaskState.TASK_STATE_WORKING
    book.frame(answer("REPLY", text_payload="echo: hi"))
    snapshot = task.snapshot()
    assert snapshot.status.state == TaskState.TASK_STATE_COMPLETED
    assert snapshot.artifacts[0].parts[0].text == "echo: hi"
    assert not snapshot.history
    assert task.snapshot(history_length=5).history[0].parts[0].text == "hi"
    assert task.done.is_set()
    assert book.under_way() == 0
    assert book.get("t1", "alice") is task


def test_another_callers_task_is_not_found() -> None:
    book = TaskBook()
    book.open(record())
    assert book.get("t1", "bob") is None
    assert book.get("t1", "alice") is not None


def test_errors_fail_the_task_with_their_code_and_cancelled_cancels_it() -> None:
    book = TaskBook()
    failed = record("t1")
    book.open(failed)
    book.frame(echo("error", error_code="no_agent_available", routing_status_message="none"))
    book.frame(answer("ERROR", error_code="no_agent_available", text_payload="No agent."))
    snapshot = failed.snapshot()
    assert snapshot.status.state == TaskState.TASK_STATE_FAILED
    assert snapshot.metadata["error_code"] == "no_agent_available"
    assert snapshot.status.message.parts[0].text == "No agent."
    assert snapshot.status.message.metadata["error_code"] == "no_agent_available"

    cancelled = record("t2")
    book.open(cancelled)
    book.frame({"message_type": "ERROR", "in_reply_to_message_id": "t2", "error_code": "cancelled"})
    assert cancelled.state == TaskState.TASK_STATE_CANCELED


def test_frames_after_the_end_and_presence_change_nothing() -> None:
    book = TaskBook()
    task = record()
    book.open(task)
    book.frame(answer("REPLY", text_payload="first"))
    book.frame(answer("REPLY_CHUNK", seq=0, text_delta="late"))
    book.frame(answer("ERROR", error_code="internal"))
    book.frame({"message_type": "AGENT_STATUS_UPDATE", "agents": []})
    assert task.state == TaskState.TASK_STATE_COMPLETED
    assert task.snapshot().artifacts[0].parts[0].text == "first"


def test_finished_tasks_are_kept_up_to_a_bound() -> None:
    book = TaskBook(kept=2)
    for number in range(3):
        task = record(f"t{number}")
        book.open(task)
        book.frame({"message_type": "REPLY", "in_reply_to_message_id": f"t{number}"})
    assert book.get("t0", "alice") is None
    assert book.get("t2", "alice") is not None


async def test_a_stream_sees_each_chunk_in_order_then_the_end() -> None:
    book = TaskBook()
    task = record()
    book.open(task)
    events = task.events()
    first = await anext(events)
    assert first.status.state == TaskState.TASK_STATE_SUBMITTED  # type: ignore[union-attr]
    book.frame(echo("delivered"))
    for seq, delta in enumerate(["a", "b", "c"]):
        book.frame(answer("REPLY_CHUNK", seq=seq, text_delta=delta))
    book.frame(answer("REPLY", text_payload="abc"))
    rest = [event async for event in events]
    pieces = [
        (e.artifact.parts[0].text, e.append) for e in rest if isinstance(e, TaskArtifactUpdateEvent)
    ]
    assert pieces == [("a", False), ("b", True), ("c", True)]
    assert rest[0].status.state == TaskState.TASK_STATE_WORKING  # type: ignore[union-attr]
    assert rest[-1].status.state == TaskState.TASK_STATE_COMPLETED  # type: ignore[union-attr]


async def test_a_reader_that_falls_behind_gets_the_task_as_it_is_and_its_stream_ends(
    monkeypatch: Any,
) -> None:
    monkeypatch.setattr(tasks, "EVENTS_BEHIND", 3)
    book = TaskBook()
    task = record()
    book.open(task)
    events = task.events()
    await anext(events)
    for seq in range(10):
        book.frame(answer("REPLY_CHUNK", seq=seq, text_delta=str(seq)))
    async with asyncio.timeout(1):
        rest = [event async for event in events]
    assert len(rest) == 1
    assert rest[0].artifacts[0].parts[0].text == "0123456789"  # type: ignore[union-attr]
