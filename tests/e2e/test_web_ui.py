"""The chat page in a real browser against a real `agentcomm dev` process.

Elements are found by their `data-testid` (docs/web-ui.md); every wait has a deadline.
"""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Locator, Page, WebSocketRoute, expect

from agentcomm.sdk.demo_agents import typist_answer
from tests.e2e.conftest import (
    UI_TIMEOUT_MS,
    AgentcommProcess,
    DevServer,
    dev_server,
)

pytestmark = pytest.mark.browser

# A restarted hub is found again by the page's backoff (0.25 s doubling), which may be
# waiting up to 16 s when the restart takes a few seconds.
RECONNECT_TIMEOUT_MS = 40_000

XSS_PAYLOAD = "<script>window.__pwned=1</script><b>bold</b>"

# Records every reply's (reply-to, streaming, text length) whenever the message log changes,
# so the growth of a streamed reply is seen chunk by chunk rather than by luck of polling.
RECORD_REPLIES_JS = """
() => {
  window.__replySamples = [];
  const log = document.querySelector('[data-testid="message-log"]');
  new MutationObserver(() => {
    for (const r of log.querySelectorAll('[data-testid="reply"]')) {
      window.__replySamples.push([r.dataset.replyTo, r.dataset.streaming, r.textContent.length]);
    }
  }).observe(log, { subtree: true, childList: true, characterData: true, attributes: true });
}
"""


# ---- helpers -------------------------------------------------------------------------------


def open_chat(page: Page, server: DevServer, *agents: str) -> None:
    """Opens the page and waits until it is online and `agents` are listed online."""
    page.goto(server.url)
    expect(page.get_by_test_id("connection-state")).to_have_attribute("data-state", "online")
    for agent_id in agents or ("echo", "typist"):
        expect(agent_row(page, agent_id)).to_have_attribute("data-status", "online")


def agent_row(page: Page, agent_id: str) -> Locator:
    return page.locator(f'[data-testid="agent-row"][data-agent-id="{agent_id}"]')


def send(page: Page, text: str, receiver: str = "") -> Locator:
    """Sends `text` to `receiver` ("" = any agent); returns the new message element."""
    page.get_by_test_id("receiver-select").select_option(value=receiver)
    messages = page.get_by_test_id("message")
    before = messages.count()
    page.get_by_test_id("composer-input").fill(text)
    page.get_by_test_id("send-button").click()
    expect(messages).to_have_count(before + 1)
    message = messages.nth(before)
    expect(message).to_contain_text(text)
    return message


def message_id(message: Locator) -> str:
    value = message.get_attribute("data-message-id")
    assert value, "a message without data-message-id"
    return value


def expect_answered(message: Locator, timeout: float = UI_TIMEOUT_MS) -> Locator:
    """Waits for the message to be answered; returns its (only) reply."""
    expect(message).to_have_attribute("data-state", "answered", timeout=timeout)
    reply = message.get_by_test_id("reply")
    expect(reply).to_have_count(1)
    expect(reply).to_have_attribute("data-reply-to", message_id(message))
    expect(reply).to_have_attribute("data-streaming", "false")
    return reply


def post_command(server: DevServer, agent_id: str, command: str) -> dict[str, Any]:
    body = json.dumps({"type": command, "content": "", "parameters": {}, "timeout_s": 10})
    request = urllib.request.Request(
        f"{server.url}api/agents/{agent_id}/commands",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=15) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


# ---- scenarios on one shared stack ---------------------------------------------------------


def test_page_lists_the_demo_agents_online(page: Page, shared_dev: DevServer) -> None:
    open_chat(page, shared_dev)
    expect(page.get_by_test_id("agent-count")).to_have_text("3")
    expect(agent_row(page, "echo").get_by_test_id("agent-name")).to_have_text("echo")
    expect(agent_row(page, "typist").get_by_test_id("agent-status")).to_have_text(
        re.compile(r"^online")
    )
    expect(page.get_by_test_id("agent-list")).not_to_have_class(re.compile(r"\bstale\b"))
    options = page.get_by_test_id("receiver-select").locator("option")
    expect(options).to_have_count(4)
    assert options.evaluate_all("os => os.map(o => o.value)") == ["", "echo", "planner", "typist"]
    expect(page.get_by_test_id("empty-state")).to_be_visible()


def test_any_agent_answers_under_the_message(page: Page, shared_dev: DevServer) -> None:
    open_chat(page, shared_dev)
    message = send(page, "hello, anyone there?")
    reply = expect_answered(message)
    expect(reply).to_contain_text(re.compile(r"echo: hello, anyone there\?|You wrote 4 words"))
    expect(message.get_by_test_id("message-status")).to_have_text(re.compile(r"^Answered by "))
    expect(message.get_by_test_id("stop-button")).to_be_hidden()
    expect(page.get_by_test_id("empty-state")).to_have_count(0)


def test_an_answer_lost_with_the_connection_comes_again(page: Page, shared_dev: DevServer) -> None:
    """The hub writes a REPLY, and the connection breaks before the page reads it: the page,
    resuming its session, sends the unanswered message again with the same id, and the hub
    answers it once more, so the message ends answered, once."""
    lost: list[str] = []

    def route(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        if lost:  # later connections pass through untouched
            return

        def from_server(message: str | bytes) -> None:
            frame = json.loads(message)
            if not lost and frame.get("message_type") == "REPLY":
                lost.append(frame["in_reply_to_message_id"])
                ws.close(code=1001, reason="the line went down")
                server.close()
                return
            ws.send(message)

        server.on_message(from_server)
        ws.on_message(server.send)

    page.route_web_socket(re.compile(r"/ws$"), route)
    open_chat(page, shared_dev)
    message = send(page, "are you still there?", receiver="echo")
    expect_answered(message, timeout=RECONNECT_TIMEOUT_MS)
    assert lost == [message_id(message)]
    expect(message.get_by_test_id("reply")).to_contain_text("echo: are you still there?")


def test_named_agent_streams_a_growing_reply(page: Page, shared_dev: DevServer) -> None:
    open_chat(page, shared_dev)
    page.evaluate(RECORD_REPLIES_JS)
    text = " ".join(f"word{i}" for i in range(20))
    message = send(page, text, receiver="typist")
    identifier = message_id(message)

    reply = expect_answered(message)
    expect(reply).to_contain_text(typist_answer(text))
    expect(message.get_by_test_id("message-status")).to_have_text("Answered by typist")

    samples: list[list[Any]] = page.evaluate("window.__replySamples")
    ours = [(streaming, length) for to, streaming, length in samples if to == identifier]
    streamed = [length for streaming, length in ours if streaming == "true"]
    assert len(set(streamed)) >= 3, f"the reply did not grow chunk by chunk: {ours}"
    assert streamed == sorted(streamed), f"the streamed reply shrank: {ours}"
    final = [length for streaming, length in ours if streaming == "false"]
    assert final, f"the reply never became final: {ours}"
    assert final[-1] >= streamed[-1]


def test_stop_ends_a_streamed_reply(page: Page, shared_dev: DevServer) -> None:
    open_chat(page, shared_dev)
    # About 70 words at the typist's pace: several seconds of streaming to stop.
    text = " ".join(f"w{i}" for i in range(60))
    message = send(page, text, receiver="typist")
    reply = message.get_by_test_id("reply")
    expect(reply).to_have_attribute("data-streaming", "true")
    stop = message.get_by_test_id("stop-button")
    expect(stop).to_be_visible()
    stop.click()

    expect(message).to_have_attribute("data-state", "cancelled")
    expect(message.get_by_test_id("message-status")).to_have_text("Stopped")
    expect(stop).to_be_hidden()
    expect(reply).to_have_attribute("data-streaming", "false")
    kept = reply.text_content() or ""
    assert len(kept) < len(typist_answer(text)), "the reply ran to its end despite Stop"
    # The typist is free again afterwards.
    expect_answered(send(page, "again", receiver="typist"))


def test_pause_and_resume_an_agent(page: Page, shared_dev: DevServer) -> None:
    open_chat(page, shared_dev)
    row = agent_row(page, "echo")
    try:
        row.get_by_test_id("agent-pause").click()
        expect(row).to_have_attribute("data-status", "paused")
        result = row.get_by_test_id("agent-action-result")
        expect(result).to_have_attribute("data-ok", "true")
        expect(result).to_have_text("Paused")
        expect(row.get_by_test_id("agent-status")).to_have_text(re.compile(r"^paused"))
        expect(row.get_by_test_id("agent-pause")).to_be_hidden()
        expect(page.get_by_test_id("receiver-select").locator('option[value="echo"]')).to_have_text(
            "echo (paused)"
        )

        row.get_by_test_id("agent-resume").click()
        expect(row).to_have_attribute("data-status", "online")
        expect(row.get_by_test_id("agent-resume")).to_be_hidden()
        expect(row.get_by_test_id("agent-pause")).to_be_visible()
    finally:
        post_command(shared_dev, "echo", "resume")  # leave the shared stack as it was
    expect_answered(send(page, "still there?", receiver="echo"))


def test_the_planners_inner_calls_are_shown_collapsed_under_its_reply(
    page: Page, shared_dev: DevServer
) -> None:
    open_chat(page, shared_dev, "echo", "typist", "planner")
    reply = expect_answered(send(page, "plan it", receiver="planner"))
    expect(reply).to_contain_text("echo: plan it")
    calls = reply.get_by_test_id("inner-calls")
    expect(calls).to_have_count(1)
    expect(calls).not_to_have_attribute("open", "")
    expect(calls.locator("summary")).to_have_text("2 inner calls")
    rows = calls.get_by_test_id("inner-call")
    expect(rows).to_have_count(2)
    expect(rows.filter(has_text="echo")).to_contain_text("→ echo: plan it")
    calls.locator("summary").click()
    expect(rows.first).to_be_visible()


def test_reply_with_html_is_shown_as_text(page: Page, shared_dev: DevServer) -> None:
    open_chat(page, shared_dev)
    message = send(page, XSS_PAYLOAD, receiver="echo")
    reply = expect_answered(message)

    assert f"echo: {XSS_PAYLOAD}" in (reply.text_content() or "")
    assert page.evaluate("typeof window.__pwned") == "undefined"
    log = page.get_by_test_id("message-log")
    expect(log.locator("b")).to_have_count(0)
    expect(log.locator("script")).to_have_count(0)
    expect(message).to_contain_text(XSS_PAYLOAD)


def test_a_message_in_its_agents_hands_shows_delivered(page: Page, shared_dev: DevServer) -> None:
    """The hub echoes `delivered` once the message is in the agent's queue; with the answer
    kept from the page, the message stays there and says so."""

    def route(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def from_server(message: str | bytes) -> None:
            if json.loads(message).get("message_type") not in ("REPLY", "REPLY_CHUNK"):
                ws.send(message)

        server.on_message(from_server)
        ws.on_message(server.send)

    page.route_web_socket(re.compile(r"/ws$"), route)
    open_chat(page, shared_dev)
    message = send(page, "hold on", receiver="echo")
    expect(message).to_have_attribute("data-state", "delivered")
    expect(message.get_by_test_id("message-status")).to_have_text("Delivered to echo")


def test_a_refused_message_shows_the_reason_its_echo_gives(
    page: Page, shared_dev: DevServer
) -> None:
    """An `error` echo says why in `routing_status_message` (a broker's refusal keeps the
    broker's sentence there): the page shows it, even before any ERROR frame. The hub's
    frames for this one message are played by the test."""
    sentence = "No other online agents available to handle the message."

    def route(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def from_page(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("text_payload") != "refuse me":
                server.send(message)
                return
            refused = {
                "error_code": "no_agent_available",
                "routing_status_message": sentence,
            }
            ws.send(json.dumps({**frame, "routing_status": "pending"}))
            ws.send(json.dumps({**frame, "routing_status": "error", **refused}))

        server.on_message(ws.send)
        ws.on_message(from_page)

    page.route_web_socket(re.compile(r"/ws$"), route)
    open_chat(page, shared_dev)
    message = send(page, "refuse me")
    expect(message).to_have_attribute("data-state", "error")
    expect(message.get_by_test_id("message-status")).to_have_text(f"Failed: {sentence}")
    expect(message.get_by_test_id("retry-button")).to_be_visible()


# ---- scenarios with their own processes ----------------------------------------------------


def test_agent_goes_offline_and_comes_back(
    page: Page, tmp_path: Path, processes: list[AgentcommProcess]
) -> None:
    dev = dev_server(
        tmp_path, "--agent-timeout", "3", "--stream-grace", "1", "--heartbeat-interval", "1"
    )
    processes.append(dev)
    dev.start()
    dev.wait_ready()
    extra = AgentcommProcess(
        name="extra-agent",
        args=[
            "agent",
            "echo",
            "--name",
            "extra",
            "--id",
            "extra",
            "--transport",
            "grpc",
            "--grpc-host",
            "127.0.0.1",
            "--grpc-port",
            str(dev.grpc_port),
            "--message-bus",
            "memory",
        ],
        log_path=tmp_path / "extra-agent.log",
    )
    processes.append(extra)
    extra.start()

    open_chat(page, dev, "echo", "typist", "extra")
    row = agent_row(page, "extra")
    expect(page.get_by_test_id("agent-count")).to_have_text("4")
    expect_answered(send(page, "are you the extra one?", receiver="extra"))

    extra.stop(signal.SIGKILL)
    expect(row).to_have_attribute("data-status", "offline")
    expect(row.get_by_test_id("agent-pause")).to_be_disabled()
    expect(row.get_by_test_id("agent-command")).to_be_disabled()
    expect(page.get_by_test_id("agent-count")).to_have_text("3")
    # The chosen receiver stays selected, marked offline.
    expect(page.get_by_test_id("receiver-select").locator('option[value="extra"]')).to_have_text(
        "extra (offline)"
    )

    extra.start()
    expect(row).to_have_attribute("data-status", "online")
    expect(row.get_by_test_id("agent-pause")).to_be_enabled()
    expect(page.get_by_test_id("agent-count")).to_have_text("4")
    expect_answered(send(page, "welcome back", receiver="extra"))


def test_page_reconnects_after_a_server_restart(
    page: Page, tmp_path: Path, processes: list[AgentcommProcess]
) -> None:
    first = dev_server(tmp_path, name="dev-1")
    processes.append(first)
    first.start()
    first.wait_ready()
    open_chat(page, first)
    expect_answered(send(page, "before the restart", receiver="echo"))

    assert first.stop(signal.SIGTERM) == 0, first.output()[-4000:]
    assert "Traceback" not in first.output(), first.output()[-4000:]
    pill = page.get_by_test_id("connection-state")
    expect(pill).to_have_attribute("data-state", re.compile(r"^(reconnecting|offline)$"))
    expect(page.get_by_test_id("agent-list")).to_have_class(re.compile(r"\bstale\b"))
    # Typed while the hub is away: kept in the outbox and sent once the page is back.
    waiting = send(page, "written while the hub was down", receiver="echo")
    expect(waiting).to_have_attribute("data-state", "queued")
    expect(page.get_by_test_id("outbox-count")).to_have_attribute("data-count", "1")

    second = dev_server(
        tmp_path, http_port=first.http_port, grpc_port=first.grpc_port, name="dev-2"
    )
    processes.append(second)
    second.start()
    second.wait_ready()

    expect(pill).to_have_attribute("data-state", "online", timeout=RECONNECT_TIMEOUT_MS)
    expect(page.get_by_test_id("agent-list")).not_to_have_class(re.compile(r"\bstale\b"))
    expect(agent_row(page, "echo")).to_have_attribute("data-status", "online")
    # The outbox is flushed, with the same message id, as soon as the page registers. That can
    # be before the new stack's demo agents have registered, in which case the hub refuses the
    # message (agent_offline); either way it must end visibly, never stay queued or vanish.
    expect(page.get_by_test_id("outbox-count")).to_have_attribute("data-count", "0")
    expect(waiting).to_have_attribute("data-state", re.compile(r"^(answered|error)$"))
    if waiting.get_attribute("data-state") == "error":
        expect(waiting.get_by_test_id("message-status")).to_have_text(re.compile(r"^Failed: "))
        waiting.get_by_test_id("retry-button").click()
        expect_answered(page.get_by_test_id("message").last)
    else:
        expect_answered(waiting)
    expect_answered(send(page, "after the restart", receiver="echo"))


def test_a_new_tab_lists_the_users_conversations(page: Page, shared_dev: DevServer) -> None:
    open_chat(page, shared_dev, "echo")
    expect_answered(send(page, "remember me", "echo"))
    conversation = page.get_by_test_id("conversation-tab").first.get_attribute(
        "data-conversation-id"
    )
    user = page.evaluate("localStorage.getItem('agentcomm.user')")
    assert conversation
    assert user

    def kept() -> bool:
        url = f"{shared_dev.url}api/conversations/{conversation}/messages?user_id={user}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return len(json.loads(response.read())["messages"]) == 2
        except OSError:
            return False

    # The hub writes history off the chat path: the question and its answer are there soon.
    for _ in range(100):
        if kept():
            break
        page.wait_for_timeout(100)
    assert kept(), "the conversation was not kept"
    # A new tab of the same browser (local storage, so the same user; a session of its own).
    second = page.context.new_page()
    open_chat(second, shared_dev, "echo")
    tab = second.locator(f'[data-testid="conversation-tab"][data-conversation-id="{conversation}"]')
    expect(tab).to_have_count(1)
    tab.click()
    message = second.get_by_test_id("message").filter(has_text="remember me")
    expect(message).to_have_count(1)
    expect(message).to_have_attribute("data-state", "answered")
    expect(message.get_by_test_id("reply")).to_contain_text("echo: remember me")


def test_a_second_tab_of_the_user_follows_the_conversation_live(
    page: Page, shared_dev: DevServer
) -> None:
    # Two tabs of one browser: one user (local storage), two sessions.
    second = page.context.new_page()
    open_chat(second, shared_dev, "echo")
    open_chat(page, shared_dev, "echo")
    expect_answered(send(page, "seen on both", "echo"))
    conversation = page.get_by_test_id("conversation-tab").first.get_attribute(
        "data-conversation-id"
    )
    tab = second.locator(f'[data-testid="conversation-tab"][data-conversation-id="{conversation}"]')
    expect(tab).to_have_count(1)
    tab.click()
    message = second.get_by_test_id("message").filter(has_text="seen on both")
    expect(message).to_have_count(1)
    expect(message).to_have_attribute("data-state", "answered")
    expect(message.get_by_test_id("reply")).to_contain_text("echo: seen on both")
