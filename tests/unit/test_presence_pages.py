"""The agent list read a page at a time: what frontends get on registration, on request and
periodically, however many agents there are."""

from __future__ import annotations

import json
from typing import Any

from agentcomm.core.clock import ManualClock
from agentcomm.core.presence import AgentRegistry
from agentcomm.core.presence_views import take_page
from agentcomm.core.sessions import FrameSource, FrontendSessions
from agentcomm.server.presence_feed import PAGE_REUSE_SECONDS, PresenceFeed

PAGE_BYTES = 2000


class Link:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.sources: list[FrameSource] = []

    def send_frame(self, frame: bytes) -> None:
        self.frames.append(frame)

    def send_frames(self, source: FrameSource) -> None:
        self.sources.append(source)


def read_all(source: FrameSource) -> list[dict[str, Any]]:
    pages = []
    while (frame := source.next_frame()) is not None:
        pages.append(json.loads(frame))
    return pages


def make_feed(agents: int) -> tuple[ManualClock, AgentRegistry, FrontendSessions, PresenceFeed]:
    clock = ManualClock()
    registry = AgentRegistry(clock, agent_timeout=30, stream_grace=3)
    sessions = FrontendSessions(clock, resume_window=60)
    feed = PresenceFeed(registry, sessions, clock, page_bytes=PAGE_BYTES)
    for index in range(agents):
        registry.register(f"agent-{index:03}", "A", "s", capabilities={"k": "v" * 100})
    return clock, registry, sessions, feed


def test_take_page_fills_up_to_the_bound_and_always_takes_one() -> None:
    assert take_page(iter([3, 3, 3]), lambda n: n, 7) == ([3, 3], True)
    assert take_page(iter([9, 1]), lambda n: n, 7) == ([9], True)
    assert take_page(iter([1, 2]), lambda n: n, 7) == ([1, 2], False)
    assert take_page(iter([]), lambda n: n, 7) == ([], False)


def test_the_list_comes_in_pages_the_first_full_the_last_without_more() -> None:
    _, _, _, feed = make_feed(40)
    pages = read_all(feed.listing())
    assert len(pages) > 3
    assert [page["is_full_update"] for page in pages] == [True] + [False] * (len(pages) - 1)
    assert [page.get("more_pages") for page in pages] == [True] * (len(pages) - 1) + [None]
    ids = [agent["agent_id"] for page in pages for agent in page["agents"]]
    assert ids == [f"agent-{index:03}" for index in range(40)]
    one_agent = max(len(json.dumps(agent)) for agent in pages[0]["agents"])
    for page in pages:
        assert len(json.dumps(page["agents"])) <= PAGE_BYTES + one_agent


def test_an_empty_registry_is_one_full_page() -> None:
    _, _, _, feed = make_feed(0)
    assert [(page["agents"], page["is_full_update"]) for page in read_all(feed.listing())] == [
        ([], True)
    ]


def test_pages_are_encoded_once_until_presence_changes_or_they_age() -> None:
    clock, registry, _, feed = make_feed(40)
    first = feed.page(None)
    assert feed.page(None) is first
    registry.unregister("agent-000")
    changed = feed.page(None)
    assert changed is not first
    assert json.loads(changed[0])["agents"][0]["is_online"] is False
    clock.advance(PAGE_REUSE_SECONDS + 0.1)
    assert feed.page(None) is not changed


def test_pages_read_later_show_the_agents_as_they_are_then() -> None:
    _, registry, _, feed = make_feed(40)
    listing = feed.listing()
    first = json.loads(listing.next_frame() or b"")
    registry.unregister("agent-039")  # on a later page
    rest = read_all(listing)
    last = rest[-1]["agents"][-1]
    assert first["is_full_update"] is True
    assert (last["agent_id"], last["is_online"]) == ("agent-039", False)


def test_a_delta_too_large_for_a_page_becomes_the_list() -> None:
    _, registry, sessions, _ = make_feed(0)
    link = Link()
    sessions.register(link, "f", {})
    registry.register("small", "S", "s")
    assert len(link.frames) == 1
    assert link.sources == []
    registry.register("huge", "H", "s", capabilities={f"k{i}": "v" * 1000 for i in range(8)})
    assert len(link.frames) == 1
    pages = read_all(link.sources[0])
    assert {agent["agent_id"] for page in pages for agent in page["agents"]} == {"small", "huge"}


async def test_the_periodic_refresh_gives_every_live_socket_its_own_listing() -> None:
    _, _, sessions, feed = make_feed(10)
    links = [Link(), Link()]
    for link in links:
        sessions.register(link, "f", {})
    await feed.broadcast_full()
    assert [len(link.sources) for link in links] == [1, 1]
    assert links[0].sources[0] is not links[1].sources[0]
