"""The routing decision for one message taken from broker_input_queue. No I/O.

`Router.decide` turns an envelope and the current agent table into a `Decision`: the envelope
to publish on server_input_queue (routed, or an ERROR for the sender), or nothing at all when
there is no one to tell. `Router.commit` records the decision in the ledger once its output
was published, so that a publish that fails and is retried is not counted twice.

Rules (PROTOCOL §4):
- frontends (ids starting with `web_`) send TEXT and CANCEL; with no receiver (empty or
  "server", any case) a TEXT gets an agent chosen by `strategies.choose_agent` and a CANCEL goes
  to the agent this broker gave the TEXT it names;
- a message naming an agent goes to it while it is online, else ERROR agent_offline;
- agents' messages go to the frontend or agent they name, never to an agent when a frontend is
  named; with no receiver they are refused (unknown_receiver), except an agent's TEXT, which
  gets an agent chosen like a frontend's (never one waiting in its chain of calls), and its
  CANCEL, which goes where the TEXT went; an agent's TEXT that would close a cycle of calls
  is refused (`rules.call_refusal`);
- nothing is routed back to its sender, and a message that crossed more than MAX_HOPS hops
  ends in ERROR hop_limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from agentcomm.broker import strategies
from agentcomm.broker.ledger import RoutingLedger
from agentcomm.protocol.calls import CallContext
from agentcomm.protocol.errors import ProtocolError
from agentcomm.protocol.ids import is_frontend_id
from agentcomm.protocol.models import AgentInfo, Envelope
from agentcomm.protocol.rules import (
    call_refusal,
    check_frontend_chat_type,
    check_frontend_receiver,
    error_envelope,
    receiver_of,
    sender_of,
)
from agentcomm.protocol.vocabulary import (
    CHAT_TYPES,
    FINAL_ANSWER_TYPES,
    MAX_HOPS,
    ErrorCode,
    MessageType,
    RoutingStatus,
)

_STALE_NOTE = (
    " The broker has lost contact with the server, so its list of agents may be out of date."
)


class Outcome(StrEnum):
    ROUTED = "routed"
    ERROR = "error"
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one message: publish `output` (unless dropped), then commit."""

    outcome: Outcome
    source: Envelope
    # The ERROR to publish when the outcome is ERROR.
    error: Envelope | None
    # Why this outcome; `note` makes the log line of it.
    why: str
    # Routed: the receiver the source goes to, stamped by `routed_envelope` (or, on the bus,
    # by `stamping.routed_body`, which spares re-encoding the whole message).
    routed_to: str | None = None
    # The TEXT was handed to this agent: counts towards its load, pins the conversation.
    assigned_to: str | None = None
    # The message id of the TEXT this final REPLY/ERROR answers.
    answers: str | None = None

    @property
    def output(self) -> Envelope | None:
        """The envelope to publish on server_input_queue; None when the message is dropped."""
        if self.routed_to is not None:
            return routed_envelope(self.source, self.routed_to)
        return self.error

    @property
    def note(self) -> str:
        """One line for the log: where it went, or why not. Built only when asked for."""
        if self.routed_to is not None:
            return f"to {self.routed_to} ({self.why})"
        return self.why


def routed_envelope(source: Envelope, receiver_id: str) -> Envelope:
    """The source as routed: receiver set, status `routed`, one hop more; the rest as it was."""
    return source.model_copy(
        update={
            "receiver_id": receiver_id,
            "routing_status": RoutingStatus.ROUTED,
            "hops": source.hops + 1,
        }
    )


class Router:
    """Decides where each message goes; keeps what it learns in a `RoutingLedger`."""

    def __init__(self, broker_id: str, ledger: RoutingLedger | None = None) -> None:
        self.broker_id = broker_id
        self.ledger = ledger or RoutingLedger()

    def decide(
        self, envelope: Envelope, agents: Mapping[str, AgentInfo], *, stale: bool = False
    ) -> Decision:
        sender = sender_of(envelope)
        if sender is None:
            return self._drop(envelope, "it names no sender to route for or to answer")
        answers = self._answered_text(envelope, sender)
        if envelope.message_type not in CHAT_TYPES:
            return self._error(
                envelope,
                ErrorCode.UNSUPPORTED_TYPE,
                f"The broker routes chat messages only, not {envelope.message_type.value}.",
            )
        if envelope.hops > MAX_HOPS:
            if envelope.message_type is MessageType.ERROR:
                # Answering a looping error with another error would feed the loop.
                return self._drop(envelope, f"an ERROR crossed {envelope.hops} hops")
            return self._error(
                envelope,
                ErrorCode.HOP_LIMIT,
                f"The message crossed more than {MAX_HOPS} hops and was dropped; "
                "it is probably going round in a loop.",
                answers=answers,
            )
        if is_frontend_id(sender):
            return self._from_frontend(envelope, sender, agents, stale)
        return self._from_agent(envelope, sender, agents, stale, answers)

    def commit(self, decision: Decision) -> None:
        """Records a decision; idempotent, so a redelivered message is counted once."""
        if decision.assigned_to is not None:
            self.ledger.assign(
                decision.source.message_id,
                decision.assigned_to,
                decision.source.conversation_id,
            )
        if decision.answers is not None:
            self.ledger.answered(decision.answers)

    def agent_went_offline(self, agent_id: str) -> None:
        self.ledger.forget_agent(agent_id)

    # -- frontends --------------------------------------------------------------------------

    def _from_frontend(
        self, envelope: Envelope, sender: str, agents: Mapping[str, AgentInfo], stale: bool
    ) -> Decision:
        receiver = receiver_of(envelope)
        try:
            check_frontend_chat_type(envelope)
            if receiver != sender:
                check_frontend_receiver(receiver, envelope.message_id)
        except ProtocolError as exc:
            return self._error(envelope, exc.code, exc.text)
        if receiver is None:
            if envelope.message_type is MessageType.CANCEL:
                return self._cancel_without_receiver(envelope, agents, stale)
            return self._choose(envelope, sender, agents, stale)
        if receiver == sender:
            return self._to_self(envelope)
        return self._to_named_agent(envelope, receiver, agents, stale)

    def _choose(
        self, envelope: Envelope, sender: str, agents: Mapping[str, AgentInfo], stale: bool
    ) -> Decision:
        try:
            required = strategies.parse_requirements(envelope.metadata)
        except strategies.RequirementsError as exc:
            return self._error(envelope, ErrorCode.INVALID_MESSAGE, str(exc))
        choice = strategies.choose_agent(
            agents.values(),
            sender_id=sender,
            required=required,
            previous_agent_id=self.ledger.agent_for_conversation(envelope.conversation_id),
            unanswered=self.ledger.unanswered,
            last_pick=self.ledger.last_pick,
        )
        if isinstance(choice, strategies.NoneAvailable):
            text = choice.text + (_STALE_NOTE if stale else "")
            return self._error(envelope, ErrorCode.NO_AGENT_AVAILABLE, text)
        return self._route(envelope, choice.agent.agent_id, choice.reason, assign=True)

    def _cancel_without_receiver(
        self, envelope: Envelope, agents: Mapping[str, AgentInfo], stale: bool
    ) -> Decision:
        target = envelope.in_reply_to_message_id
        agent_id = self.ledger.agent_for_message(target) if target else None
        if agent_id is None:
            return self._error(
                envelope,
                ErrorCode.UNKNOWN_RECEIVER,
                "Nothing to cancel: this broker has no unanswered message "
                f"{target!r} on record (it may be answered already).",
            )
        return self._to_named_agent(envelope, agent_id, agents, stale)

    # -- agents -----------------------------------------------------------------------------

    def _from_agent(
        self,
        envelope: Envelope,
        sender: str,
        agents: Mapping[str, AgentInfo],
        stale: bool,
        answers: str | None,
    ) -> Decision:
        receiver = receiver_of(envelope)
        if envelope.message_type is MessageType.TEXT:
            call = CallContext.from_metadata(envelope.metadata)
            chain = call.chain if call is not None else (sender,)
            refusal = call_refusal(sender, receiver, chain)
            if refusal is not None:
                return self._error(envelope, *refusal)
            if receiver is None:
                # Asked by capability: chosen like a frontend's TEXT, among the agents not
                # waiting in the chain (one of those would close a cycle).
                waiting = set(chain)
                candidates = {k: a for k, a in agents.items() if k not in waiting}
                return self._choose(envelope, sender, candidates, stale)
        if receiver is None and envelope.message_type is MessageType.CANCEL:
            return self._cancel_without_receiver(envelope, agents, stale)
        if receiver is None:
            return self._error(
                envelope,
                ErrorCode.UNKNOWN_RECEIVER,
                f"A {envelope.message_type.value} from an agent must name its receiver_id: "
                "the frontend or agent it is for.",
                answers=answers,
            )
        if receiver == sender:
            return self._to_self(envelope, answers)
        if is_frontend_id(receiver):
            # Whatever the type, a message for a frontend goes to that frontend and nowhere else.
            return self._route(envelope, receiver, "to its frontend", answers=answers)
        return self._to_named_agent(envelope, receiver, agents, stale, answers)

    # -- shared -----------------------------------------------------------------------------

    def _to_named_agent(
        self,
        envelope: Envelope,
        agent_id: str,
        agents: Mapping[str, AgentInfo],
        stale: bool,
        answers: str | None = None,
    ) -> Decision:
        agent = agents.get(agent_id)
        if agent is None or not strategies.is_online(agent):
            state = "is not registered" if agent is None else "is offline"
            return self._error(
                envelope,
                ErrorCode.AGENT_OFFLINE,
                f"Agent {agent_id!r} {state}; the message was not delivered."
                + (_STALE_NOTE if stale else ""),
                answers=answers,
            )
        assign = envelope.message_type is MessageType.TEXT
        return self._route(envelope, agent_id, "named receiver", assign=assign, answers=answers)

    def _to_self(self, envelope: Envelope, answers: str | None = None) -> Decision:
        return self._error(
            envelope,
            ErrorCode.UNKNOWN_RECEIVER,
            "A message cannot be addressed to its own sender.",
            answers=answers,
        )

    def _answered_text(self, envelope: Envelope, sender: str) -> str | None:
        """The TEXT this message closes, when it is its agent's final answer to one."""
        target = envelope.in_reply_to_message_id
        if envelope.message_type not in FINAL_ANSWER_TYPES or not target:
            return None
        if is_frontend_id(sender) or self.ledger.agent_for_message(target) != sender:
            return None
        return target

    def _route(
        self,
        envelope: Envelope,
        receiver_id: str,
        why: str,
        *,
        assign: bool = False,
        answers: str | None = None,
    ) -> Decision:
        # The routed envelope itself is made only when it is asked for (see Decision.output).
        return Decision(
            Outcome.ROUTED,
            envelope,
            None,
            why,
            routed_to=receiver_id,
            assigned_to=receiver_id if assign else None,
            answers=answers,
        )

    def _error(
        self,
        envelope: Envelope,
        code: ErrorCode,
        text: str,
        *,
        answers: str | None = None,
    ) -> Decision:
        error = error_envelope(
            sender_id=self.broker_id,
            receiver_id=sender_of(envelope),
            code=code,
            text=text,
            in_reply_to=envelope.message_id,
            conversation_id=envelope.conversation_id,
            client_id=envelope.client_id,
            server_id=envelope.server_id,
            hops=envelope.hops + 1,
        )
        return Decision(Outcome.ERROR, envelope, error, f"{code.value}: {text}", answers=answers)

    def _drop(self, envelope: Envelope, why: str) -> Decision:
        return Decision(Outcome.DROP, envelope, None, f"dropped: {why}")


def reject_undecodable(
    data: Mapping[str, Any], code: ErrorCode, text: str, broker_id: str
) -> Envelope | None:
    """An ERROR for a bus message that is JSON but not a valid envelope, if it has a sender.

    Only fields that pass the envelope's own validation are carried over; when even the
    sender is unusable there is no one to tell, and None is returned.
    """

    def text_field(key: str) -> str | None:
        value = data.get(key)
        return value if isinstance(value, str) and 0 < len(value) <= 128 else None

    receiver = text_field("sender_id") or text_field("_client_id")
    if receiver is None:
        return None
    try:
        return error_envelope(
            sender_id=broker_id,
            receiver_id=receiver,
            code=code,
            text=text,
            in_reply_to=text_field("message_id"),
            conversation_id=text_field("conversation_id"),
            client_id=text_field("_client_id"),
            server_id=text_field("_server_id"),
        )
    except ValidationError:
        return None
