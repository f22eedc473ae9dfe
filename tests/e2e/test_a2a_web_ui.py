"""An outside A2A agent (written with a2a-sdk) reached from the web UI through
`agentcomm a2a-bridge`: real processes (`agentcomm dev`, the remote agent, the bridge) and
a real browser."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import AgentcommProcess, DevServer, dev_server
from tests.e2e.test_web_ui import agent_row, expect_answered, open_chat, send

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def remote_url(tmp_path: Path) -> Iterator[str]:
    """A streaming A2A agent in a process of its own; its URL."""
    log = (tmp_path / "remote.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.a2a_remote", "stream"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log,
        env=os.environ | {"PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().decode().strip()
        assert url.startswith("http://"), f"the remote agent did not start: {url!r}"
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def test_a_bridged_a2a_agent_streams_its_answer_into_the_page(
    page: Page, tmp_path: Path, processes: list[AgentcommProcess], remote_url: str
) -> None:
    dev: DevServer = dev_server(tmp_path)
    processes.append(dev)
    dev.start()
    dev.wait_ready()
    bridge = AgentcommProcess(
        name="a2a-bridge",
        args=[
            "a2a-bridge",
            remote_url,
            "--name",
            "outside",
            "--transport",
            "grpc",
            "--grpc-host",
            "127.0.0.1",
            "--grpc-port",
            str(dev.grpc_port),
            "--message-bus",
            "memory",
        ],
        log_path=tmp_path / "bridge.log",
    )
    processes.append(bridge)
    bridge.start()

    open_chat(page, dev, "echo", "typist", "outside")
    expect(agent_row(page, "outside").get_by_test_id("agent-name")).to_have_text("outside")
    reply = expect_answered(send(page, "over the bridge", receiver="outside"))
    expect(reply).to_contain_text("<over><the><bridge>")
