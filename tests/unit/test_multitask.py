"""Double-texting: the policy a TEXT asks for, and the conversations with an answer running."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcomm.core.clock import ManualClock
from agentcomm.core.routing.multitask import ConversationGate
from agentcomm.core.sessions import FrontendSessions
from agentcomm.protocol.errors import ProtocolError
from agentcomm.protocol.models import Envelope
from agentcomm.protocol.rules import Multitask, multitask_policy
from agentcomm.protocol.vocabulary import ErrorCode, MessageType


def text(metadata: dict[str, object] | None = None, conversation: str | None = "c") -> Envelope:
    return Envelope(
        message_type=MessageType.TEXT,
        text_payload="hi",
        conversation_id=conversation,
        metadata=metadata,
    )


def test_allow_is_the_default_and_reject_is_read() -> None:
    assert multitask_policy(text()) is Multitask.ALLOW
    assert multitask_policy(text({"other": 1})) is Multitask.ALLOW
    assert multitask_policy(text({"multitask": "reject"})) is Multitask.REJECT
    assert multitask_policy(text({"multitask": "allow"})) is Multitask.ALLOW


@given(st.one_of(st.text(max_size=20), st.integers(), st.booleans(), st.lists(st.integers())))
def test_any_other_value_is_refused_with_a_sentence(value: object) -> None:
    if value in ("allow", "reject"):
        return
    with pytest.raises(ProtocolError) as caught:
        multitask_policy(text({"multitask": value}))
    assert caught.value.code is ErrorCode.INVALID_MESSAGE
    assert "multitask" in caught.value.text


class Link:
    def send_frame(self, frame: bytes) -> None:
        pass

    def send_frames(self, source: object) -> None:
        pass


def test_a_conversation_is_busy_until_its_answer_or_the_timeout() -> None:
    clock = ManualClock()
    sessions = FrontendSessions(clock, resume_window=60.0)
    phone, _ = sessions.register(Link(), "phone", {}, user_id="ann")
    laptop, _ = sessions.register(Link(), "laptop", {}, user_id="ann")
    gate = ConversationGate(clock, sessions, hold_for=10.0)
    key = gate.key(phone.frontend_id, text())
    assert gate.key(laptop.frontend_id, text()) == key  # one user, one conversation
    assert gate.key(phone.frontend_id, text(conversation=None)) == ("ann", "default")
    assert not gate.busy(key)
    gate.start(key, phone.frontend_id, "m-1")
    assert gate.busy(key)
    gate.finished(laptop.frontend_id, "m-1")  # another frontend's message of that id
    assert gate.busy(key)
    gate.finished(phone.frontend_id, "m-1")
    assert not gate.busy(key)
    gate.start(key, phone.frontend_id, "m-2")
    clock.advance(10.0)
    assert not gate.busy(key)  # an answer that never came lets go
