"""What only the RabbitMQ bus has: a network to lose, AMQP properties, connection start-up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aio_pika
import pytest

from agentcomm.bus.base import BusError, BusUnavailable, Delivery, QueueOptions, Unroutable
from agentcomm.bus.factory import create_bus
from agentcomm.bus.memory import InMemoryBus
from agentcomm.bus.rabbitmq import RabbitMQBus
from agentcomm.bus.rabbitmq.queues import QueueType
from agentcomm.config import Settings, load_settings
from tests.conftest import free_port
from tests.contract.conftest import WAIT, Collector, amqp_url, bounded, holds_for, wait_until
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.rabbitmq


async def rabbitmqctl(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        "-q",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    except TimeoutError:
        process.kill()
        await asyncio.wait_for(process.wait(), 10)
        raise
    assert process.returncode == 0, stderr.decode()
    return stdout.decode()


@asynccontextmanager
async def broker_unreachable(vhost: str) -> AsyncIterator[None]:
    """Cuts every connection to `vhost` and keeps new ones out until the block ends.

    Closing the connections alone would let the bus reconnect at once; without permissions on
    the vhost the reconnection attempts fail, so the outage lasts as long as the block.
    """
    await rabbitmqctl("clear_permissions", "-p", vhost, "guest")
    try:
        await rabbitmqctl("close_all_connections", "-p", vhost, "test")
        yield
    finally:
        await rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")


@pytest.fixture(params=[pytest.param(True, id="fast-path"), pytest.param(False, id="plain")])
async def bus(rabbitmq_vhost: str, request: pytest.FixtureRequest) -> AsyncIterator[RabbitMQBus]:
    """The bus on its own AMQP framing, and on plain aio-pika (RABBITMQ_FAST_PATH=0)."""
    bus = RabbitMQBus(
        amqp_url(rabbitmq_vhost),
        connect_attempts=2,
        name="agentcomm-test",
        fast_path=request.param,
    )
    await asyncio.wait_for(bus.connect(), WAIT)
    try:
        yield bus
    finally:
        await asyncio.wait_for(bus.close(), WAIT)


@pytest.fixture
async def raw_channel(rabbitmq_vhost: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A plain aio-pika channel on the test's vhost, to look at what the bus did."""
    connection = await asyncio.wait_for(aio_pika.connect(amqp_url(rabbitmq_vhost)), WAIT)
    try:
        yield await asyncio.wait_for(connection.channel(), WAIT)
    finally:
        await asyncio.wait_for(connection.close(), WAIT)


@bounded
async def test_unreachable_port_fails_after_the_configured_attempts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()  # nothing listens there
    bus = RabbitMQBus(f"amqp://guest:guest@127.0.0.1:{port}/some_vhost", connect_attempts=2)

    with (
        caplog.at_level(logging.WARNING, logger="agentcomm.bus.rabbitmq"),
        pytest.raises(BusUnavailable, match=f"127.0.0.1:{port}/some_vhost after 2 attempts"),
    ):
        await asyncio.wait_for(bus.connect(), WAIT)

    attempts = [r.getMessage() for r in caplog.records if r.name == "agentcomm.bus.rabbitmq"]
    assert len(attempts) == 2, attempts
    assert all(f"127.0.0.1:{port}/some_vhost" in line for line in attempts)
    assert "attempt 1 of 2" in attempts[0]
    assert "attempt 2 of 2" in attempts[1]
    assert not bus.is_connected


@pytest.mark.usefixtures("rabbitmq_available")
@bounded
async def test_unknown_vhost_is_a_clear_refusal() -> None:
    bus = RabbitMQBus(amqp_url("agentcomm_no_such_vhost"), connect_attempts=1)

    with pytest.raises(BusUnavailable, match="vhost does not exist or is not permitted"):
        await asyncio.wait_for(bus.connect(), WAIT)


@bounded
async def test_messages_and_queues_carry_the_agreed_amqp_properties(
    bus: RabbitMQBus, raw_channel: aio_pika.abc.AbstractChannel, rabbitmq_vhost: str
) -> None:
    await bus.declare_queue("work.dead")
    await bus.declare_queue(
        "work",
        QueueOptions(message_ttl_ms=60_000, dead_letter_queue="work.dead", expires_ms=600_000),
    )
    await bus.publish("work", b'{"a": 1}', message_id="props-1")

    queue = await asyncio.wait_for(raw_channel.declare_queue("work", passive=True), WAIT)
    message = await asyncio.wait_for(queue.get(no_ack=True), WAIT)

    assert message.body == b'{"a": 1}'
    assert message.message_id == "props-1"
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    listing = await rabbitmqctl(
        "list_queues", "-p", rabbitmq_vhost, "name", "durable", "arguments", "--no-table-headers"
    )
    [work_line] = [line for line in listing.splitlines() if line.startswith("work\t")]
    assert "\ttrue\t" in work_line
    for argument in (
        "x-message-ttl",
        "60000",
        "x-dead-letter-exchange",
        "x-dead-letter-routing-key",
        "work.dead",
        "x-expires",
        "600000",
    ):
        assert argument in work_line


@bounded
async def test_quorum_queues_take_the_same_options_and_are_quorum(rabbitmq_vhost: str) -> None:
    bus = RabbitMQBus(amqp_url(rabbitmq_vhost), connect_attempts=2, queue_type="quorum")
    await asyncio.wait_for(bus.connect(), WAIT)
    try:
        await bus.declare_queue("work.dead")
        await bus.declare_queue(
            "work",
            QueueOptions(message_ttl_ms=60_000, dead_letter_queue="work.dead", expires_ms=600_000),
        )
        got = Collector()
        await bus.consume("work", got.handle)
        await bus.publish("work", b"{}", message_id="on-quorum")
        assert (await got.wait_for(1))[0].message_id == "on-quorum"
    finally:
        await asyncio.wait_for(bus.close(), WAIT)
    listing = await rabbitmqctl(
        "list_queues", "-p", rabbitmq_vhost, "name", "type", "arguments", "--no-table-headers"
    )
    types = {line.split("\t")[0]: line.split("\t")[1] for line in listing.splitlines()}
    assert types == {"work": "quorum", "work.dead": "quorum"}


@pytest.mark.parametrize(("first", "then"), [("classic", "quorum"), ("quorum", "classic")])
@bounded
async def test_a_queue_of_the_other_type_is_refused_in_one_sentence_naming_the_setting(
    rabbitmq_vhost: str, first: QueueType, then: QueueType
) -> None:
    older = RabbitMQBus(amqp_url(rabbitmq_vhost), connect_attempts=2, queue_type=first)
    newer = RabbitMQBus(amqp_url(rabbitmq_vhost), connect_attempts=2, queue_type=then)
    await asyncio.wait_for(older.connect(), WAIT)
    await asyncio.wait_for(newer.connect(), WAIT)
    try:
        await older.declare_queue("broker_input_queue")

        with pytest.raises(BusError) as refused:
            await newer.declare_queue("broker_input_queue")

        assert str(refused.value) == (
            f"Queue 'broker_input_queue' is a {first} queue but RABBITMQ_QUEUE_TYPE={then} asks "
            "for another type: a queue keeps its type, so delete it or use a new vhost to "
            f"switch, or set RABBITMQ_QUEUE_TYPE={first}."
        )
        # The refusal leaves the bus usable.
        await newer.declare_queue("other")
        await newer.publish("broker_input_queue", b"{}", message_id="still-works")
    finally:
        await asyncio.wait_for(newer.close(), WAIT)
        await asyncio.wait_for(older.close(), WAIT)


async def _listed(command: str, vhost: str, *columns: str) -> list[list[str]]:
    listing = await rabbitmqctl(command, "-p", vhost, *columns, "--no-table-headers")
    return [line.split("\t") for line in listing.splitlines() if line.strip()]


@bounded
async def test_broadcasts_go_through_a_fanout_exchange_to_a_classic_queue_per_listener(
    rabbitmq_vhost: str, raw_channel: aio_pika.abc.AbstractChannel
) -> None:
    # Quorum asked for the bus's queues: a listener's queue is exclusive, so classic all the same.
    bus = RabbitMQBus(amqp_url(rabbitmq_vhost), connect_attempts=2, queue_type="quorum")
    await asyncio.wait_for(bus.connect(), WAIT)
    try:
        got = Collector()
        subscription = await bus.listen("presence", got.handle)
        watcher = await asyncio.wait_for(raw_channel.declare_queue(exclusive=True), WAIT)
        await asyncio.wait_for(watcher.bind("agentcomm.presence"), WAIT)
        await bus.broadcast("presence", b'{"a": 1}', message_id="seen")
        await got.wait_for(1)
        message = await asyncio.wait_for(watcher.get(no_ack=True), WAIT)
        assert message.body == b'{"a": 1}'
        assert message.message_id == "seen"
        assert message.delivery_mode == aio_pika.DeliveryMode.NOT_PERSISTENT

        exchanges = await _listed("list_exchanges", rabbitmq_vhost, "name", "type", "durable")
        assert ["agentcomm.presence", "fanout", "true"] in exchanges
        columns = ("name", "type", "durable", "exclusive", "auto_delete")
        [listener] = [
            row
            for row in await _listed("list_queues", rabbitmq_vhost, *columns)
            if row[0].startswith("agentcomm.presence.listener.")
        ]
        assert listener[1:] == ["classic", "false", "true", "true"]

        await asyncio.wait_for(subscription.cancel(), WAIT)
        names = [row[0] for row in await _listed("list_queues", rabbitmq_vhost, "name")]
        assert listener[0] not in names
    finally:
        await asyncio.wait_for(bus.close(), WAIT)


@bounded
async def test_a_failing_reconnect_callback_is_logged_and_the_others_still_run(
    bus: RabbitMQBus, rabbitmq_vhost: str, caplog: pytest.LogCaptureFixture
) -> None:
    told: list[str] = []

    def failing() -> None:
        raise RuntimeError("the owner's callback failed")

    bus.on_reconnect(failing)
    bus.on_reconnect(lambda: told.append("second"))
    with caplog.at_level(logging.INFO, logger="agentcomm.bus.rabbitmq"):
        await rabbitmqctl("close_all_connections", "-p", rabbitmq_vhost, "test")
        await wait_until(lambda: told == ["second"], timeout=30, what="the second callback")
    messages = [r.getMessage() for r in caplog.records if r.name == "agentcomm.bus.rabbitmq"]
    assert "A callback on reconnecting to RabbitMQ failed" in messages
    assert any(message.startswith("Reconnected to RabbitMQ at") for message in messages)


@pytest.mark.parametrize("fast_path", [pytest.param(True, id="fast-path"), False])
@bounded
async def test_with_several_hosts_the_bus_moves_to_the_next_node_when_its_node_goes(
    rabbitmq_vhost: str, fast_path: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # Two proxies to the one RabbitMQ stand for two nodes of a cluster; the first address
    # has nothing listening, like a node that is down at start.
    caplog.set_level(logging.INFO, logger="agentcomm.bus.rabbitmq")
    down = free_port()
    async with TcpProxy("127.0.0.1", 5672) as first, TcpProxy("127.0.0.1", 5672) as second:
        ports = [down, first.port, second.port]
        bus = RabbitMQBus(
            amqp_url(rabbitmq_vhost),
            connect_attempts=1,
            fast_path=fast_path,
            hosts=[("127.0.0.1", port) for port in ports],
        )
        await asyncio.wait_for(bus.connect(), WAIT)
        try:
            assert (first.open_connections, second.open_connections) == (1, 0)
            reconnected = asyncio.Event()
            bus.on_reconnect(reconnected.set)
            await bus.declare_queue("work")
            got, heard = Collector(), Collector()
            await bus.consume("work", got.handle)
            await bus.listen("presence", heard.handle)

            await first.close()  # the node the bus is on goes away
            await asyncio.wait_for(reconnected.wait(), 30)

            assert second.open_connections == 1
            await bus.publish("work", b"{}", message_id="after", timeout=WAIT)
            await bus.broadcast("presence", b"{}", message_id="heard", timeout=WAIT)
            assert (await got.wait_for(1))[0].message_id == "after"
            assert (await heard.wait_for(1))[0].message_id == "heard"
        finally:
            await asyncio.wait_for(bus.close(), WAIT)
    messages = [r.getMessage() for r in caplog.records if r.name == "agentcomm.bus.rabbitmq"]
    where = [m for m in messages if m.startswith(("Connected to", "Reconnected to"))]
    assert where == [
        f"Connected to RabbitMQ at 127.0.0.1:{ports[1]}/{rabbitmq_vhost}",
        f"Reconnected to RabbitMQ at 127.0.0.1:{ports[2]}/{rabbitmq_vhost}",
    ]


@pytest.mark.parametrize("fast_path", [pytest.param(True, id="fast-path"), False])
@bounded
async def test_one_host_given_is_where_the_bus_connects_whatever_the_url_says(
    rabbitmq_vhost: str, fast_path: bool
) -> None:
    async with TcpProxy("127.0.0.1", 5672) as node:
        bus = RabbitMQBus(
            f"amqp://guest:guest@127.0.0.1:{free_port()}/{rabbitmq_vhost}",
            connect_attempts=1,
            fast_path=fast_path,
            hosts=[("127.0.0.1", node.port)],
        )
        await asyncio.wait_for(bus.connect(), WAIT)
        try:
            assert node.open_connections == 1
        finally:
            await asyncio.wait_for(bus.close(), WAIT)


@bounded
async def test_with_no_host_up_the_start_fails_naming_every_address(rabbitmq_vhost: str) -> None:
    ports = [free_port(), free_port()]
    bus = RabbitMQBus(
        amqp_url(rabbitmq_vhost),
        connect_attempts=1,
        hosts=[("127.0.0.1", port) for port in ports],
    )
    with pytest.raises(BusUnavailable) as refused:
        await asyncio.wait_for(bus.connect(), WAIT)
    message = str(refused.value)
    assert message.startswith(
        f"Cannot reach RabbitMQ at 127.0.0.1:{ports[0]}, 127.0.0.1:{ports[1]} "
        f"(vhost {rabbitmq_vhost}) after 1 attempt: No RabbitMQ node took the connection"
    )
    assert "RABBITMQ_HOSTS, RABBITMQ_VHOST and the credentials" in message


@bounded
async def test_publishing_during_an_outage_fails_in_time_and_consumers_come_back(
    bus: RabbitMQBus, rabbitmq_vhost: str
) -> None:
    await bus.declare_queue("work")
    got = Collector()
    await bus.consume("work", got.handle)
    await bus.publish("work", b"{}", message_id="before")
    await got.wait_for(1)

    async with broker_unreachable(rabbitmq_vhost):
        await wait_until(lambda: not bus.is_connected, what="the bus to notice the outage")
        with pytest.raises(BusUnavailable, match="not reachable"):
            # The outer bound only guards the test; the bus must give up after 0.5 s itself.
            await asyncio.wait_for(
                bus.publish("work", b"{}", message_id="during", timeout=0.5), WAIT
            )

    await wait_until(lambda: bus.is_connected, timeout=30, what="the reconnection")
    await bus.publish("work", b"{}", message_id="after", timeout=WAIT)

    await got.wait_for(2, timeout=30)
    assert got.ids == ["before", "after"]


@bounded
async def test_broadcasting_during_an_outage_fails_in_time_like_publishing(
    bus: RabbitMQBus, rabbitmq_vhost: str
) -> None:
    await bus.broadcast("presence", b"{}", message_id="declares-the-exchange")

    async with broker_unreachable(rabbitmq_vhost):
        await wait_until(lambda: not bus.is_connected, what="the bus to notice the outage")
        # A topic whose exchange is known, and one whose exchange is still to declare.
        for topic in ("presence", "hubs"):
            with pytest.raises(BusUnavailable, match=topic):
                await asyncio.wait_for(
                    bus.broadcast(topic, b"{}", message_id="during", timeout=0.5), WAIT
                )

    await wait_until(lambda: bus.is_connected, timeout=30, what="the reconnection")
    await bus.broadcast("hubs", b"{}", message_id="after", timeout=WAIT)


@bounded
async def test_a_handler_cut_off_by_an_outage_gets_its_message_again(
    bus: RabbitMQBus, rabbitmq_vhost: str
) -> None:
    await bus.declare_queue("work")
    await bus.publish("work", b"{}", message_id="job")
    started = asyncio.Event()
    release = asyncio.Event()
    deliveries: list[Delivery] = []

    async def handler(delivery: Delivery) -> None:
        deliveries.append(delivery)
        if len(deliveries) == 1:
            started.set()
            await release.wait()

    await bus.consume("work", handler)
    await asyncio.wait_for(started.wait(), WAIT)
    async with broker_unreachable(rabbitmq_vhost):
        await wait_until(lambda: not bus.is_connected, what="the bus to notice the outage")
        release.set()  # finishes after the connection died: its ack cannot reach RabbitMQ

    await wait_until(lambda: len(deliveries) >= 2, timeout=30, what="the redelivery")
    assert deliveries[1].message_id == "job"
    assert deliveries[1].redelivered
    # Charged an attempt before it was handled again: the counted copy comes back once more,
    # a duplicate by its message_id, and then nothing.
    await wait_until(lambda: len(deliveries) == 3, what="the counted copy")
    assert deliveries[2].message_id == "job"
    assert deliveries[2].attempt == 2
    assert await holds_for(lambda: len(deliveries) == 3, 0.3)


@bounded
async def test_concurrent_publishers_share_one_channel(
    bus: RabbitMQBus, rabbitmq_vhost: str
) -> None:
    await bus.declare_queue("work")
    got = Collector()
    await bus.consume("work", got.handle, prefetch=500, concurrency=8)
    ids = [f"m{i}" for i in range(500)]

    await asyncio.wait_for(
        asyncio.gather(*(bus.publish("work", b"{}", message_id=i) for i in ids)), WAIT
    )

    await got.wait_for(len(ids))
    assert sorted(got.ids, key=str) == sorted(ids)
    # Publishing, declaring, and one consumer: three channels, however many publishers.
    # (list_connections shows every vhost's connections, and other tests run alongside.)
    listing = await rabbitmqctl("list_connections", "vhost", "channels", "--no-table-headers")
    ours = [
        line.split()[-1] for line in listing.splitlines() if line.split()[:1] == [rabbitmq_vhost]
    ]
    assert ours == ["3"]


@bounded
async def test_concurrent_publishes_with_one_message_id_keep_their_own_outcome(
    bus: RabbitMQBus, raw_channel: aio_pika.abc.AbstractChannel
) -> None:
    await bus.declare_queue("work")

    for _ in range(20):
        lost, stored = await asyncio.wait_for(
            asyncio.gather(
                bus.publish("nowhere", b"{}", message_id="same"),
                bus.publish("work", b"{}", message_id="same"),
                return_exceptions=True,
            ),
            WAIT,
        )
        assert isinstance(lost, Unroutable)
        assert stored is None

    queue = await asyncio.wait_for(raw_channel.declare_queue("work", passive=True), WAIT)
    assert queue.declaration_result.message_count == 20


@bounded
async def test_a_queue_declared_elsewhere_dead_letters_through_its_own_arguments(
    bus: RabbitMQBus, rabbitmq_vhost: str
) -> None:
    await bus.declare_queue("work.dead")
    await bus.declare_queue("work", QueueOptions(dead_letter_queue="work.dead"))
    # Another process that consumes without declaring: it does not know the queue's options.
    consumer = RabbitMQBus(amqp_url(rabbitmq_vhost), connect_attempts=2, name="other-process")
    await asyncio.wait_for(consumer.connect(), WAIT)
    try:
        attempts: list[int] = []

        async def failing(delivery: Delivery) -> None:
            attempts.append(delivery.attempt)
            raise RuntimeError("cannot handle it")

        await consumer.consume("work", failing, max_deliveries=2)
        dead = Collector()
        await bus.consume("work.dead", dead.handle)
        await bus.publish("work", b"{}", message_id="poison")

        [dead_letter] = await dead.wait_for(1)
        assert dead_letter.message_id == "poison"
        assert attempts == [1, 2]
    finally:
        await asyncio.wait_for(consumer.close(), WAIT)


@bounded
async def test_closing_during_an_outage_does_not_hang(
    bus: RabbitMQBus, rabbitmq_vhost: str
) -> None:
    await bus.declare_queue("work")
    await bus.consume("work", Collector().handle)

    async with broker_unreachable(rabbitmq_vhost):
        await wait_until(lambda: not bus.is_connected, what="the bus to notice the outage")
        await asyncio.wait_for(bus.close(), WAIT)

    assert not bus.is_connected


def test_factory_builds_the_bus_the_settings_name() -> None:
    assert isinstance(create_bus(Settings(message_bus="memory")), InMemoryBus)
    assert isinstance(create_bus(Settings(message_bus="rabbitmq")), RabbitMQBus)


@bounded
async def test_factory_never_falls_back_to_the_memory_bus() -> None:
    settings = Settings(
        message_bus="rabbitmq",
        rabbitmq_host="127.0.0.1",
        rabbitmq_port=free_port(),
        rabbitmq_connect_attempts=1,
    )
    bus = create_bus(settings)

    assert isinstance(bus, RabbitMQBus)
    with pytest.raises(BusUnavailable):
        await asyncio.wait_for(bus.connect(), WAIT)


@bounded
async def test_fast_path_off_runs_on_aio_pikas_own_connection_and_channels(
    rabbitmq_env: dict[str, str],
) -> None:
    # RABBITMQ_FAST_PATH=0 is the way out when an aio-pika or aiormq release breaks the
    # subclasses the fast path is built on: none of them may be in use then.
    settings = load_settings(**rabbitmq_env, rabbitmq_fast_path="0")
    bus = create_bus(settings, name="agentcomm-plain-test")
    assert isinstance(bus, RabbitMQBus)
    await asyncio.wait_for(bus.connect(), WAIT)
    try:
        await bus.declare_queue("work")
        got = Collector()
        subscription = await bus.consume("work", got.handle)
        await bus.publish("work", b"{}", message_id="plain")
        assert (await got.wait_for(1))[0].message_id == "plain"
        connection = bus._connection
        assert type(connection) is aio_pika.RobustConnection
        assert type(subscription.channel) is aio_pika.RobustChannel
        assert type(subscription._queue) is aio_pika.RobustQueue
    finally:
        await asyncio.wait_for(bus.close(), WAIT)


@bounded
async def test_factory_bus_connects_with_the_settings(rabbitmq_env: dict[str, str]) -> None:
    bus = create_bus(load_settings(**rabbitmq_env), name="agentcomm-factory-test")
    await asyncio.wait_for(bus.connect(), WAIT)
    try:
        await bus.declare_queue("work")
        await bus.publish("work", b"{}", message_id="via-factory")
    finally:
        await asyncio.wait_for(bus.close(), WAIT)


async def test_publishes_into_a_link_that_stopped_reading_wait_and_are_never_sent(
    rabbitmq_vhost: str, raw_channel: aio_pika.abc.AbstractChannel
) -> None:
    """Back-pressure: while RabbitMQ reads nothing (an alarm, a stalled link), publishes wait
    for the link instead of piling up in memory, and one that timed out waiting is never sent
    later (so a client's re-send cannot store it twice)."""
    body = b"x" * (512 * 1024)
    total = 60  # 30 MiB: far more than the kernel's socket buffers hold on the way
    async with TcpProxy("127.0.0.1", 5672) as proxy:
        bus = RabbitMQBus(
            f"amqp://guest:guest@127.0.0.1:{proxy.port}/{rabbitmq_vhost}",
            connect_attempts=2,
            name="agentcomm-test",
        )
        await asyncio.wait_for(bus.connect(), WAIT)
        try:
            await bus.declare_queue("stalled")
            proxy.blackhole()
            outcomes: list[str] = []

            async def publish(number: int) -> None:
                try:
                    await bus.publish("stalled", body, message_id=f"m{number}", timeout=2.0)
                    outcomes.append("stored")
                except BusUnavailable:
                    outcomes.append("unavailable")

            publishes = []
            for number in range(total):
                # One at a time, each in turns of its own, as requests arrive at a server.
                publishes.append(asyncio.create_task(publish(number)))
                await asyncio.sleep(0.01)
            await asyncio.wait_for(asyncio.gather(*publishes), WAIT)
            assert outcomes == ["unavailable"] * total

            writer = bus._connection.transport_factory.writer  # type: ignore[union-attr]
            assert writer is not None
            held = writer.transport.get_write_buffer_size()
            proxy.passthrough()
            assert held < 4 * 1024 * 1024, f"{held} bytes piled up in the transport"
            # Behind whatever was still on its way, so once it is confirmed all of that is in.
            await bus.publish("stalled", b"{}", message_id="after", timeout=30)
        finally:
            proxy.passthrough()
            await asyncio.wait_for(bus.close(), WAIT)
    queue = await raw_channel.declare_queue("stalled", passive=True)
    arrived = (queue.declaration_result.message_count or 0) - 1
    # Only what was in the socket buffers when the link stopped arrives late; the publishes
    # that waited for the link were never sent.
    assert arrived < total // 2, f"{arrived} of {total} timed-out publishes were stored"


@bounded
async def test_a_busy_link_stays_up_across_heartbeat_intervals(
    rabbitmq_vhost: str, caplog: pytest.LogCaptureFixture
) -> None:
    # While traffic flows RabbitMQ sends no heartbeats, and the bus's fast path takes every
    # frame it does send (deliveries, confirms); aiormq, which takes a link that shows it no
    # frame for (heartbeat + 1) * 3 s for dead, must still hear enough to keep it.
    caplog.set_level(logging.INFO)
    bus = RabbitMQBus(amqp_url(rabbitmq_vhost), connect_attempts=2, heartbeat=1)
    await asyncio.wait_for(bus.connect(), WAIT)
    try:
        await bus.declare_queue("busy")
        got = Collector()
        await bus.consume("busy", got.handle)
        loop = asyncio.get_running_loop()
        until = loop.time() + 9.0
        sent = 0
        while loop.time() < until:
            await asyncio.wait_for(bus.publish("busy", b"{}", message_id=f"m{sent}"), WAIT)
            sent += 1
            await asyncio.sleep(0.01)
        await got.wait_for(sent)
        assert got.ids == [f"m{n}" for n in range(sent)]
        assert bus.is_connected
        assert "stuck" not in caplog.text
        assert "Reconnecting after" not in caplog.text
    finally:
        await asyncio.wait_for(bus.close(), WAIT)
