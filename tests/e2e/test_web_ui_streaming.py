"""A long streamed answer in a real browser: painted once per frame, not once per token.

The typist (at 1 ms a word) streams an answer of about 2,000 words through a real `agentcomm
dev`; the page counts the REPLY_CHUNKs its socket received, how many times the reply's text
changed in the page, and the long tasks (PerformanceObserver) of its main thread.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from agentcomm.sdk.demo_agents import typist_answer
from tests.e2e.conftest import DevServer
from tests.e2e.test_web_ui import expect_answered, open_chat, send

pytestmark = pytest.mark.browser

WORDS = 2000
# Generous: the answer takes a few seconds at 1 ms a word, and the machine may be busy.
STREAM_TIMEOUT_MS = 120_000

# Installed before the page's own scripts: counts the chunks the page's sockets receive, and
# keeps every long task of the main thread from the start.
INSTRUMENT_JS = """
(() => {
  window.__chunks = 0;
  window.__longTasks = [];
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', (event) => {
        const text = typeof event.data === 'string' ? event.data : '';
        if (text.includes('"REPLY_CHUNK"')) window.__chunks++;
      });
    }
  };
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) window.__longTasks.push(entry.duration);
  }).observe({ type: 'longtask', buffered: true });
})();
"""

# Counts the turns in which a streaming reply's text changed (each one a layout of it).
COUNT_PAINTS_JS = """
() => {
  window.__paints = 0;
  const log = document.querySelector('[data-testid="message-log"]');
  new MutationObserver((records) => {
    const touched = records.some((r) => {
      const node = r.target.nodeType === Node.TEXT_NODE ? r.target.parentElement : r.target;
      return node?.closest?.('[data-streaming="true"] .bubble');
    });
    if (touched) window.__paints++;
  }).observe(log, { subtree: true, childList: true, characterData: true });
}
"""


def set_typist_pace(server: DevServer, ms: int) -> None:
    body = json.dumps({"type": "pace", "content": str(ms), "parameters": {}, "timeout_s": 10})
    request = urllib.request.Request(
        f"{server.url}api/agents/typist/commands",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=15) as response:
        assert response.status == 200


@pytest.fixture
def fast_typist(shared_dev: DevServer) -> Iterator[DevServer]:
    set_typist_pace(shared_dev, 1)
    try:
        yield shared_dev
    finally:
        set_typist_pace(shared_dev, 50)  # the demo's own pace, for the tests after this one


def test_a_long_streamed_answer_is_painted_per_frame_not_per_token(
    page: Page, fast_typist: DevServer
) -> None:
    page.add_init_script(INSTRUMENT_JS)
    open_chat(page, fast_typist)
    page.evaluate(COUNT_PAINTS_JS)
    text = " ".join(f"w{i}" for i in range(WORDS))
    message = send(page, text, receiver="typist")

    reply = expect_answered(message, timeout=STREAM_TIMEOUT_MS)
    expect(reply.locator(".bubble")).to_have_text(typist_answer(text))

    chunks = page.evaluate("window.__chunks")
    paints = page.evaluate("window.__paints")
    long_tasks = page.evaluate("window.__longTasks")
    print(f"chunks {chunks}, paints while streaming {paints}, long tasks {long_tasks}")
    assert chunks >= WORDS, f"the answer did not stream word by word: {chunks} chunks"
    # Chunks arriving within one frame are painted together: far fewer paints than chunks.
    assert paints * 2 <= chunks, f"{paints} paints for {chunks} chunks: painted per token"
    # No freeze: not one task of the page near a second, even on a busy machine.
    assert max(long_tasks, default=0) < 1000, f"long tasks: {long_tasks}"
