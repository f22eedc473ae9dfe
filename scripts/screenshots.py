"""Takes the README screenshots of the web UI: `python scripts/screenshots.py`.

Starts `agentcomm dev` on free ports, chats with the demo agents in Debian's Chromium
(through Playwright) and writes docs/screenshots/chat.png (1280x800), agents.png (the agents
panel) and narrow.png (390x844), then stops the stack.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "docs" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 15_000
START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def agentcomm_command() -> list[str]:
    script = Path(sys.executable).with_name("agentcomm")
    return [str(script)] if script.exists() else [sys.executable, "-m", "agentcomm"]


def http_json(url: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        headers={"Content-Type": "application/json"},
        method="POST" if data else "GET",
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


class DevStack:
    """`agentcomm dev` as a subprocess on free ports."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.grpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [
            *agentcomm_command(),
            "dev",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--grpc-host",
            "127.0.0.1",
            "--grpc-port",
            str(self.grpc_port),
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=os.environ | {"PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"agentcomm dev exited:\n{self.log_path.read_text()}")
            try:
                status, _ = http_json(f"{self.url}readyz")
                _, agents = http_json(f"{self.url}api/agents")
                online = {a["agent_id"] for a in agents or [] if a.get("status") == "online"}
                if status == 200 and {"echo", "typist"} <= online:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"agentcomm dev not ready in {START_TIMEOUT} s")

    def command(self, agent_id: str, command: str, **parameters: str) -> None:
        status, result = http_json(
            f"{self.url}api/agents/{agent_id}/commands",
            {"type": command, "content": "", "parameters": parameters, "timeout_s": 10},
        )
        if status != 200 or not (result or {}).get("success"):
            raise RuntimeError(f"{command} for {agent_id} failed: {status} {result}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def send(page: Page, text: str, receiver: str) -> Locator:
    page.get_by_test_id("receiver-select").select_option(value=receiver)
    messages = page.get_by_test_id("message")
    before = messages.count()
    page.get_by_test_id("composer-input").fill(text)
    page.get_by_test_id("send-button").click()
    expect(messages).to_have_count(before + 1)
    return messages.nth(before)


def open_chat(page: Page, url: str) -> None:
    page.goto(url)
    expect(page.get_by_test_id("connection-state")).to_have_attribute("data-state", "online")
    for agent_id in ("echo", "typist"):
        row = page.locator(f'[data-testid="agent-row"][data-agent-id="{agent_id}"]')
        expect(row).to_have_attribute("data-status", "online")


def wait_mid_stream(message: Locator, min_chars: int) -> None:
    """Waits until the streamed reply of `message` shows at least `min_chars` characters."""
    reply = message.get_by_test_id("reply")
    expect(reply).to_have_attribute("data-streaming", "true")
    message.page.wait_for_function(
        "([el, n]) => el.textContent.length >= n",
        arg=[reply.element_handle(), min_chars],
        timeout=TIMEOUT_MS,
    )


def take(out: Path, stack: DevStack, chromium: Browser) -> list[Path]:
    written: list[Path] = []

    # Wide: a chat with echo, then typist caught in the middle of a streamed reply.
    wide = chromium.new_context(
        viewport={"width": 1280, "height": 800}, device_scale_factor=1, color_scheme="light"
    )
    wide.set_default_timeout(TIMEOUT_MS)
    page = wide.new_page()
    open_chat(page, stack.url)
    answered = send(page, "Hello echo! Are you there?", "echo")
    expect(answered).to_have_attribute("data-state", "answered")
    answered = send(page, "What does the hub do?", "")
    expect(answered).to_have_attribute("data-state", "answered")
    stack.command("typist", "pace", ms="250")  # slow enough to be seen mid-stream
    streaming = send(page, "Please stream a short answer so we can watch it arrive", "typist")
    wait_mid_stream(streaming, 60)
    page.mouse.move(0, 0)
    page.screenshot(path=out / "chat.png")
    written.append(out / "chat.png")
    expect(streaming).to_have_attribute("data-state", "answered", timeout=40_000)

    # The agents panel, with echo paused from its card to show the operator actions.
    echo = page.locator('[data-testid="agent-row"][data-agent-id="echo"]')
    echo.get_by_test_id("agent-pause").click()
    expect(echo).to_have_attribute("data-status", "paused")
    expect(echo.get_by_test_id("agent-action-result")).to_have_attribute("data-ok", "true")
    page.mouse.move(0, 0)
    panel = page.locator("#sidebar").bounding_box()
    agents = page.get_by_test_id("agent-list").bounding_box()
    if panel is None or agents is None:
        raise RuntimeError("the agents panel is not on screen")
    height = agents["y"] + agents["height"] + 16 - panel["y"]
    page.screenshot(
        path=out / "agents.png",
        clip={"x": panel["x"], "y": panel["y"], "width": panel["width"], "height": height},
    )
    written.append(out / "agents.png")
    echo.get_by_test_id("agent-resume").click()
    expect(echo).to_have_attribute("data-status", "online")
    wide.close()

    # Narrow: a phone-sized window.
    narrow = chromium.new_context(
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        color_scheme="light",
    )
    narrow.set_default_timeout(TIMEOUT_MS)
    page = narrow.new_page()
    open_chat(page, stack.url)
    answered = send(page, "Hi echo, from a phone", "echo")
    expect(answered).to_have_attribute("data-state", "answered")
    stack.command("typist", "pace", ms="120")
    typed = send(page, "Type something for the small screen", "typist")
    expect(typed).to_have_attribute("data-state", "answered", timeout=40_000)
    page.get_by_test_id("composer-input").fill("Nice!")
    page.screenshot(path=out / "narrow.png")
    written.append(out / "narrow.png")
    narrow.close()
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the PNGs go")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium executable")
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        stack = DevStack(Path(tmp) / "dev.log")
        try:
            stack.start()
            with sync_playwright() as playwright:
                chromium = playwright.chromium.launch(
                    executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS
                )
                try:
                    written = take(out, stack, chromium)
                finally:
                    chromium.close()
        finally:
            stack.stop()
    for path in written:
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
