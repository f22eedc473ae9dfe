"""Operator commands for any agent of the cluster, from any hub.

A command for an agent registered with this hub goes to its command stream here
(`core.commands.CommandCenter`). One for an agent that another hub holds is asked of that hub
on its hub queue (HUB_COMMAND), which runs it and sends the outcome back on this hub's queue
(HUB_COMMAND_RESULT); the caller cannot tell the difference, refusals included.
"""

from __future__ import annotations

import asyncio
import logging

from agentcomm.bus.base import Bus, BusError, Delivery
from agentcomm.core.cluster_presence import ClusterPresence
from agentcomm.core.commands import CommandCenter, CommandOutcome
from agentcomm.core.errors import AgentOffline, CommandTimedOut, HubError, UnknownAgent
from agentcomm.protocol.cluster import HubCommand, HubCommandResult
from agentcomm.protocol.codec import (
    encode_for_bus,
    message_type_of,
    parse_json_object,
    validate_model,
)
from agentcomm.protocol.errors import ProtocolError
from agentcomm.protocol.ids import server_tag
from agentcomm.protocol.queues import hub_queue
from agentcomm.protocol.vocabulary import MessageType

log = logging.getLogger(__name__)

# Beyond the command's own timeout, for the two trips over the bus.
_BUS_MARGIN_SECONDS = 5.0


class ClusterCommands:
    def __init__(
        self, center: CommandCenter, cluster: ClusterPresence, bus: Bus, own_tag: str
    ) -> None:
        self._center = center
        self._cluster = cluster
        self._bus = bus
        self._own_tag = own_tag
        # message_id of a HUB_COMMAND this hub sent -> who waits for its result.
        self._waiting: dict[str, asyncio.Future[HubCommandResult]] = {}

    async def execute(
        self,
        agent_id: str,
        command_type: str,
        content: str,
        parameters: dict[str, str],
        *,
        timeout: float,
    ) -> CommandOutcome:
        """Runs a command on the agent wherever it is registered; raises UnknownAgent,
        AgentOffline or CommandTimedOut as the local command center does."""
        peer = self._cluster.peer_holding(agent_id)
        if peer is None:
            return await self._center.execute(
                agent_id, command_type, content, parameters, timeout=timeout
            )
        request = HubCommand(
            reply_to=self._own_tag,
            agent_id=agent_id,
            type=command_type,
            content=content,
            parameters=parameters,
            timeout=timeout,
        )
        answered = asyncio.get_running_loop().create_future()
        self._waiting[request.message_id] = answered
        try:
            await self._bus.publish(
                hub_queue(server_tag(peer)),
                encode_for_bus(request),
                message_id=request.message_id,
            )
            async with asyncio.timeout(timeout + _BUS_MARGIN_SECONDS):
                result = await answered
        except TimeoutError:
            raise CommandTimedOut(agent_id, request.message_id, timeout) from None
        except BusError as exc:
            raise AgentOffline(
                agent_id, f"is on hub {peer}, which cannot be reached ({exc})"
            ) from exc
        finally:
            self._waiting.pop(request.message_id, None)
        return _outcome(agent_id, request, result)

    async def on_hub_message(self, delivery: Delivery) -> None:
        """A peer's request or answer on this hub's queue; malformed ones are logged and
        dropped (they would fail the same way again)."""
        try:
            data = parse_json_object(delivery.body)
            kind = message_type_of(data)
            if kind is MessageType.HUB_COMMAND:
                await self._run_for_peer(validate_model(HubCommand, data))
            elif kind is MessageType.HUB_COMMAND_RESULT:
                result = validate_model(HubCommandResult, data)
                waiting = self._waiting.get(result.in_reply_to)
                if waiting is not None and not waiting.done():
                    waiting.set_result(result)
            else:
                log.warning("Ignoring %s on this hub's queue", kind.value)
        except ProtocolError as exc:
            log.warning(
                "Dropping a malformed message %s from a peer hub: %s", delivery.message_id, exc.text
            )

    async def _run_for_peer(self, request: HubCommand) -> None:
        result = HubCommandResult(in_reply_to=request.message_id)
        try:
            outcome = await self._center.execute(
                request.agent_id,
                request.type,
                request.content,
                request.parameters,
                timeout=request.timeout,
            )
        except UnknownAgent as exc:
            result.refusal, result.refusal_text = "unknown_agent", str(exc)
        except AgentOffline as exc:
            result.refusal, result.refusal_text = "agent_offline", str(exc)
        except CommandTimedOut as exc:
            result.refusal, result.refusal_text = "timeout", str(exc)
        except HubError as exc:
            result.refusal, result.refusal_text = "agent_offline", str(exc)
        else:
            result.command_id = outcome.command_id
            result.success = outcome.success
            result.output = outcome.output
            result.error_message = outcome.error_message
            result.exit_code = outcome.exit_code
            result.execution_time_ms = outcome.execution_time_ms
        await self._bus.publish(
            hub_queue(request.reply_to),
            encode_for_bus(result),
            message_id=result.message_id,
            mandatory=False,
        )


def _outcome(agent_id: str, request: HubCommand, result: HubCommandResult) -> CommandOutcome:
    if result.refusal == "unknown_agent":
        raise UnknownAgent(agent_id)
    if result.refusal == "agent_offline":
        raise AgentOffline(agent_id)
    if result.refusal == "timeout":
        raise CommandTimedOut(agent_id, result.command_id or request.message_id, request.timeout)
    return CommandOutcome(
        command_id=result.command_id,
        agent_id=agent_id,
        success=result.success,
        output=result.output,
        error_message=result.error_message,
        exit_code=result.exit_code,
        execution_time_ms=result.execution_time_ms,
    )
