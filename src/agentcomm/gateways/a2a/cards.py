"""Agent cards: a hub agent's registration as an A2A card, and a remote card as capabilities.

Inbound, an agent's capabilities (a string map) become its skills, one per entry; the
capability `streaming` (the SDK's streaming agents say `"true"`) becomes the card's streaming
flag. Outbound (`agentcomm a2a-bridge`) the other way: each skill of a remote card becomes a
capability named by the skill's id.
"""

from __future__ import annotations

from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    HTTPAuthSecurityScheme,
    SecurityRequirement,
    SecurityScheme,
    StringList,
)

from agentcomm import __version__
from agentcomm.protocol.models import AgentInfo

# The versions of the A2A spec the gateway answers, both on the same URL (a2a-sdk's v0.3
# compatibility translates the older methods).
PROTOCOL_VERSIONS = ("1.0", "0.3")
JSONRPC = "JSONRPC"
STREAMING_CAPABILITY = "streaming"
BEARER = "bearer"
TEXT_MODES = ["text/plain"]
_TRUE = frozenset({"1", "true", "yes", "on"})


def streams(info: AgentInfo) -> bool:
    return info.capabilities.get(STREAMING_CAPABILITY, "").strip().lower() in _TRUE


def _interfaces(url: str) -> list[AgentInterface]:
    return [
        AgentInterface(url=url, protocol_binding=JSONRPC, protocol_version=version)
        for version in PROTOCOL_VERSIONS
    ]


def _secure(card: AgentCard, auth_enabled: bool) -> AgentCard:
    if auth_enabled:
        card.security_schemes[BEARER].CopyFrom(
            SecurityScheme(
                http_auth_security_scheme=HTTPAuthSecurityScheme(
                    scheme="bearer",
                    bearer_format="JWT",
                    description="A hub token (role frontend or admin), as for the WebSocket.",
                )
            )
        )
        card.security_requirements.append(SecurityRequirement(schemes={BEARER: StringList()}))
    return card


def agent_card(info: AgentInfo, url: str, *, auth_enabled: bool) -> AgentCard:
    """The card of one hub agent, answering at `url`."""
    skills = [
        AgentSkill(id=key, name=key, description=f"{key}: {value}", tags=[key, value])
        for key, value in sorted(info.capabilities.items())
        if key != STREAMING_CAPABILITY
    ]
    if not skills:
        skills = [AgentSkill(id="chat", name="chat", description="Answers text.", tags=["chat"])]
    card = AgentCard(
        name=info.agent_name or info.agent_id,
        description=f"{info.agent_name or info.agent_id} ({info.agent_id}), an agent on an "
        f"agentcomm hub; {info.status.value} now.",
        supported_interfaces=_interfaces(url),
        version=__version__,
        capabilities=AgentCapabilities(streaming=streams(info)),
        default_input_modes=TEXT_MODES,
        default_output_modes=TEXT_MODES,
        skills=skills,
    )
    return _secure(card, auth_enabled)


def hub_card(agents: list[AgentInfo], url: str, *, auth_enabled: bool) -> AgentCard:
    """The hub's own card: sending to it lets the hub's broker choose the agent; its skills
    are the agents it holds, each with the URL of its own card in its description."""
    base = url.rstrip("/")
    skills = [
        AgentSkill(
            id=info.agent_id,
            name=info.agent_name or info.agent_id,
            description=f"{base}/{info.agent_id}/.well-known/agent-card.json",
            tags=[info.status.value, *sorted(f"{k}={v}" for k, v in info.capabilities.items())],
        )
        for info in sorted(agents, key=lambda agent: agent.agent_id)
    ]
    card = AgentCard(
        name="agentcomm hub",
        description="Every agent of this hub; a message sent here goes to the agent the hub's "
        "broker chooses. Each skill is an agent, with the address of its own card.",
        supported_interfaces=_interfaces(base),
        version=__version__,
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=TEXT_MODES,
        default_output_modes=TEXT_MODES,
        skills=skills,
    )
    return _secure(card, auth_enabled)


def capabilities_of(card: AgentCard, url: str) -> dict[str, str]:
    """The capabilities a bridged agent registers with: one per skill (its name), whether it
    streams, and where it is."""
    capabilities = {
        skill.id: (skill.name or skill.description or skill.id)[:256]
        for skill in card.skills
        if skill.id
    }
    capabilities[STREAMING_CAPABILITY] = "true" if card.capabilities.streaming else "false"
    capabilities["a2a_url"] = url
    return capabilities
