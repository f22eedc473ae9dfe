"""Frontend sessions: registration, resume with a token, the backlog while away, expiry."""

from __future__ import annotations

import re

import pytest

from agentcomm.core.clock import ManualClock
from agentcomm.core.sessions import RESUME_BUFFER_FRAMES, FrontendSessions

WINDOW = 60.0


class Link:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def send_frame(self, frame: bytes) -> None:
        self.frames.append(frame)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sessions(clock: ManualClock) -> FrontendSessions:
    return FrontendSessions(clock, resume_window=WINDOW)


def test_register_opens_a_session_with_a_fresh_id_and_token(sessions: FrontendSessions) -> None:
    first, resumed = sessions.register(Link(), "Alice", {"stream": True})
    second, _ = sessions.register(Link(), "Bob", {})
    assert resumed is False
    assert re.fullmatch(r"web_[0-9a-f]{32}", first.frontend_id)
    assert first.frontend_id != second.frontend_id
    assert first.resume_token != second.resume_token
    assert len(first.resume_token) >= 24
    assert first.wants_stream is True
    assert second.wants_stream is False
    assert sessions.live_count() == 2


def test_a_chosen_frontend_id_without_token_is_not_honoured(sessions: FrontendSessions) -> None:
    session, resumed = sessions.register(Link(), "Eve", {}, frontend_id="web_chosen")
    assert resumed is False
    assert session.frontend_id != "web_chosen"


def test_send_reaches_only_its_session(sessions: FrontendSessions) -> None:
    alice_link, bob_link = Link(), Link()
    alice, _ = sessions.register(alice_link, "Alice", {})
    sessions.register(bob_link, "Bob", {})
    assert sessions.send(alice.frontend_id, b"for alice") is True
    assert alice_link.frames == [b"for alice"]
    assert bob_link.frames == []


def test_send_to_an_unknown_session_is_false(sessions: FrontendSessions) -> None:
    assert sessions.send("web_nobody", b"x") is False


def test_broadcast_goes_to_live_sockets_only(sessions: FrontendSessions) -> None:
    live, gone = Link(), Link()
    sessions.register(live, "Live", {})
    away, _ = sessions.register(gone, "Away", {})
    sessions.detach(away.frontend_id, gone)
    sessions.broadcast(b"presence")
    assert live.frames == [b"presence"]
    assert gone.frames == []
    assert len(away.backlog) == 0  # presence is not kept for a resume


def test_resume_with_the_token_delivers_the_backlog_in_order(
    sessions: FrontendSessions, clock: ManualClock
) -> None:
    old_link = Link()
    session, _ = sessions.register(old_link, "Alice", {})
    sessions.detach(session.frontend_id, old_link)
    assert sessions.live_count() == 0
    assert sessions.send(session.frontend_id, b"one") is True
    assert sessions.send(session.frontend_id, b"two") is True
    clock.advance(WINDOW / 2)
    new_link = Link()
    resumed, was_resumed = sessions.register(
        new_link,
        "Alice again",
        {"stream": True},
        frontend_id=session.frontend_id,
        resume_token=session.resume_token,
    )
    assert was_resumed is True
    assert resumed is session
    assert resumed.frontend_name == "Alice again"
    assert resumed.wants_stream is True
    assert sessions.flush_backlog(resumed) == 2
    assert new_link.frames == [b"one", b"two"]
    assert old_link.frames == []
    assert sessions.flush_backlog(resumed) == 0


def test_resume_with_a_wrong_token_opens_a_new_session(sessions: FrontendSessions) -> None:
    link = Link()
    session, _ = sessions.register(link, "Alice", {})
    sessions.detach(session.frontend_id, link)
    other, resumed = sessions.register(
        Link(), "Mallory", {}, frontend_id=session.frontend_id, resume_token="guess"
    )
    assert resumed is False
    assert other.frontend_id != session.frontend_id
    # The real owner can still come back.
    _, resumed = sessions.register(
        Link(), "Alice", {}, frontend_id=session.frontend_id, resume_token=session.resume_token
    )
    assert resumed is True


def test_detach_by_a_stale_link_does_not_detach_the_new_one(sessions: FrontendSessions) -> None:
    old_link, new_link = Link(), Link()
    session, _ = sessions.register(old_link, "Alice", {})
    sessions.register(
        new_link, "Alice", {}, frontend_id=session.frontend_id, resume_token=session.resume_token
    )
    sessions.detach(session.frontend_id, old_link)  # the old socket finally closes
    assert session.link is new_link
    sessions.send(session.frontend_id, b"still live")
    assert new_link.frames == [b"still live"]


def test_detached_sessions_expire_after_the_resume_window(
    sessions: FrontendSessions, clock: ManualClock
) -> None:
    link = Link()
    session, _ = sessions.register(link, "Alice", {})
    live, _ = sessions.register(Link(), "Bob", {})
    sessions.detach(session.frontend_id, link)
    clock.advance(WINDOW)
    assert sessions.expire() == []
    clock.advance(0.01)
    assert sessions.expire() == [session.frontend_id]
    assert sessions.get(session.frontend_id) is None
    assert sessions.send(session.frontend_id, b"late") is False
    _, resumed = sessions.register(
        Link(), "Alice", {}, frontend_id=session.frontend_id, resume_token=session.resume_token
    )
    assert resumed is False
    assert sessions.get(live.frontend_id) is not None


def test_backlog_is_bounded_and_keeps_the_newest(sessions: FrontendSessions) -> None:
    link = Link()
    session, _ = sessions.register(link, "Alice", {})
    sessions.detach(session.frontend_id, link)
    for index in range(RESUME_BUFFER_FRAMES + 5):
        sessions.send(session.frontend_id, str(index).encode())
    assert len(session.backlog) == RESUME_BUFFER_FRAMES
    assert session.backlog[0] == b"5"
    assert session.backlog[-1] == str(RESUME_BUFFER_FRAMES + 4).encode()


def test_live_links(sessions: FrontendSessions) -> None:
    a, b = Link(), Link()
    first, _ = sessions.register(a, "A", {})
    sessions.register(b, "B", {})
    sessions.detach(first.frontend_id, a)
    assert sessions.live_links() == [b]


def test_backlog_is_bounded_in_bytes_and_keeps_the_newest(clock: ManualClock) -> None:
    sessions = FrontendSessions(clock, resume_window=60, backlog_bytes=10_000)
    link = Link()
    session, _ = sessions.register(link, "a", {})
    sessions.detach(session.frontend_id, link)
    for index in range(10):
        sessions.send(session.frontend_id, str(index).encode() * 1500)
    # 1,500 bytes each: six fit in 10,000.
    assert [frame[:1] for frame in session.backlog] == [b"4", b"5", b"6", b"7", b"8", b"9"]
    resumed, was_resumed = sessions.register(
        Link(), "a", {}, frontend_id=session.frontend_id, resume_token=session.resume_token
    )
    assert was_resumed
    assert sessions.flush_backlog(resumed) == 6
    assert len(resumed.backlog) == 0


def test_the_sessions_of_a_user_that_follow_it_are_its_siblings(
    sessions: FrontendSessions, clock: ManualClock
) -> None:
    follow = {"user_frames": True}
    phone, _ = sessions.register(Link(), "phone", follow, user_id="ann")
    laptop, _ = sessions.register(Link(), "laptop", follow, user_id="ann")
    quiet, _ = sessions.register(Link(), "old tab", {}, user_id="ann")
    other, _ = sessions.register(Link(), "bob", follow, user_id="bob")
    anonymous, _ = sessions.register(Link(), "nobody", follow)
    assert sessions.siblings(phone.frontend_id) == [laptop.frontend_id]
    assert sorted(sessions.siblings(quiet.frontend_id)) == sorted(
        [phone.frontend_id, laptop.frontend_id]
    )
    assert sessions.siblings(other.frontend_id) == []
    assert sessions.siblings(anonymous.frontend_id) == []
    assert anonymous.user == anonymous.frontend_id  # a frontend naming no user is its own
    # A session that expired follows no more.
    laptop_link = laptop.link
    assert laptop_link is not None
    sessions.detach(laptop.frontend_id, laptop_link)
    clock.advance(WINDOW + 1)
    sessions.expire()
    assert sessions.siblings(phone.frontend_id) == []
