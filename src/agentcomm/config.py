"""Settings, read once from the environment (and CLI flags that mirror it), then passed down.

Every name here is an environment variable of the same name in upper case; the seed's names
(`RABBITMQ_HOST`, `PORT`, ...) are honoured exactly. A bad value stops the start with one line
naming the variable and what it accepts.

Settings are one validated model, read as flat attributes (`settings.grpc_port`) everywhere.
Each field also names the group it belongs to (`Annotated[int, SettingsGroup.HUB]`): the part
of the system it configures. A command offers flags only for the groups it reads (see
`agentcomm.cli`); the environment applies to every field in every process, so processes that
share one environment each take what they need from it.
"""

from __future__ import annotations

import ipaddress
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsGroup(Enum):
    """The part of the system a setting configures (its `key`), and a line that says so."""

    HUB = ("hub", "the gRPC address: the server listens on it, brokers and agents dial it")
    BUS = ("bus", "which message bus carries chat traffic, and how to reach RabbitMQ")
    SERVER = ("server", "the server's HTTP/WebSocket listener, its sessions and its deadlines")
    LIMITS = ("limits", "what one frontend or agent may cost the server")
    AGENT_LINK = (
        "agent_link",
        "what the server and its agents both apply: the largest message, the heartbeat pace",
    )
    ROUTING = (
        "routing",
        "what the server and the brokers both apply: when an agent counts as gone, how many "
        "bus messages are handled at once",
    )
    LIFECYCLE = ("lifecycle", "how long a graceful stop may take")
    AUTH = ("auth", "the secret that signs and checks tokens")
    AUTH_CLIENT = ("auth_client", "the token this process presents to the server")
    TLS_SERVER = ("tls_server", "gRPC over TLS, the server's side")
    TLS_CLIENT = ("tls_client", "gRPC over TLS, the side of brokers and agents")
    LOGGING = ("logging", "what this process logs, and how")
    A2A_REMOTE = ("a2a_remote", "how a2a-bridge reaches the outside A2A agent it puts on the hub")

    def __init__(self, key: str, summary: str) -> None:
        self.key = key
        self.summary = summary


class Settings(BaseSettings):
    """Configuration of every agentcomm process (server, broker, agents, bench), group by group.

    The seed's names: RABBITMQ_HOST, RABBITMQ_PORT, HOST, PORT, GRPC_HOST, GRPC_PORT and
    PERIODIC_STATUS_INTERVAL; the rest are additions.
    """

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    grpc_host: Annotated[str, SettingsGroup.HUB] = Field(
        "localhost",
        description="gRPC address the server listens on and brokers and agents dial (a "
        "wildcard is dialled as loopback)",
    )
    grpc_port: Annotated[int, SettingsGroup.HUB] = Field(
        50051, ge=0, le=65535, description="gRPC port (0: any free)"
    )

    message_bus: Annotated[Literal["rabbitmq", "memory"], SettingsGroup.BUS] = Field(
        "rabbitmq", description="which message bus carries chat traffic"
    )
    rabbitmq_host: Annotated[str, SettingsGroup.BUS] = Field(
        "localhost", description="RabbitMQ host name"
    )
    rabbitmq_port: Annotated[int, SettingsGroup.BUS] = Field(
        5672, ge=1, le=65535, description="RabbitMQ port"
    )
    rabbitmq_user: Annotated[str, SettingsGroup.BUS] = Field("guest", description="RabbitMQ user")
    rabbitmq_password: Annotated[str, SettingsGroup.BUS] = Field(
        "guest", description="RabbitMQ password"
    )
    rabbitmq_vhost: Annotated[str, SettingsGroup.BUS] = Field(
        "/", description="RabbitMQ virtual host"
    )
    rabbitmq_prefetch: Annotated[int, SettingsGroup.BUS] = Field(
        200, ge=1, le=65535, description="unacked deliveries per consumer"
    )
    rabbitmq_connect_attempts: Annotated[int, SettingsGroup.BUS] = Field(
        10, ge=1, description="attempts to reach RabbitMQ at start before giving up"
    )
    rabbitmq_heartbeat: Annotated[int, SettingsGroup.BUS] = Field(
        10,
        ge=0,
        le=600,
        description="seconds between AMQP heartbeats; a link silent for about three of them "
        "is taken for dead and reconnected (0: off)",
    )
    rabbitmq_fast_path: Annotated[bool, SettingsGroup.BUS] = Field(
        True,
        description="frame publishes, confirms, deliveries and acks in the bus itself (0: plain "
        "aio-pika publishes and consumers)",
    )
    rabbitmq_hosts: Annotated[str, SettingsGroup.BUS] = Field(
        "",
        description="comma-separated host:port of a RabbitMQ cluster's nodes, tried in turn at "
        "start and on every reconnect; empty: RABBITMQ_HOST and RABBITMQ_PORT",
    )
    rabbitmq_queue_type: Annotated[Literal["classic", "quorum"], SettingsGroup.BUS] = Field(
        "classic",
        description="the type of the durable queues the bus declares ('quorum' to replicate them "
        "over a RabbitMQ cluster; switching needs the queues deleted or a new vhost)",
    )

    host: Annotated[str, SettingsGroup.SERVER] = Field(
        "0.0.0.0", description="HTTP/WebSocket listen address"
    )
    port: Annotated[int, SettingsGroup.SERVER] = Field(
        8765, ge=0, le=65535, description="HTTP/WebSocket port (0: any free)"
    )
    public_url: Annotated[str, SettingsGroup.SERVER] = Field(
        "", description="address advertised to others (default: from HOST/PORT)"
    )
    allowed_origins: Annotated[str, SettingsGroup.SERVER] = Field(
        "", description="comma-separated WebSocket/CORS origins; empty allows any"
    )
    periodic_status_interval: Annotated[float, SettingsGroup.SERVER] = Field(
        60.0, gt=0, description="seconds between full status refreshes and advertisements"
    )
    stream_grace: Annotated[float, SettingsGroup.SERVER] = Field(
        3.0, ge=0, description="seconds a broken ReceiveCommands stream may take to be reopened"
    )
    registration_timeout: Annotated[float, SettingsGroup.SERVER] = Field(
        10.0, gt=0, description="seconds a socket has to register"
    )
    delivery_timeout: Annotated[float, SettingsGroup.SERVER] = Field(
        300.0,
        gt=0,
        description="seconds an offline agent may take to come back before its senders "
        "get ERROR agent_offline",
    )
    answer_timeout: Annotated[float, SettingsGroup.SERVER] = Field(
        600.0,
        gt=0,
        description="seconds an accepted TEXT may go without any answer (not even a chunk) "
        "before its sender gets ERROR answer_timeout",
    )
    resume_window: Annotated[float, SettingsGroup.SERVER] = Field(
        60.0, ge=0, description="seconds a disconnected frontend's session waits for a resume"
    )
    command_timeout: Annotated[float, SettingsGroup.SERVER] = Field(
        30.0, gt=0, description="default wait for a command result"
    )
    http_body_bytes: Annotated[int, SettingsGroup.SERVER] = Field(
        1024 * 1024,
        ge=64 * 1024,
        description="largest HTTP request body accepted (413 past it, before it is read whole)",
    )
    http_request_timeout: Annotated[float, SettingsGroup.SERVER] = Field(
        10.0,
        gt=0,
        description="seconds an HTTP request's headers, and then its body, may take to arrive",
    )
    metrics_public: Annotated[bool, SettingsGroup.SERVER] = Field(
        False, description="serve /metrics without a token when AUTH_SECRET is set"
    )
    offline_agent_retention: Annotated[float, SettingsGroup.SERVER] = Field(
        3600.0, gt=0, description="seconds an offline agent stays listed before it is forgotten"
    )
    offline_agents_kept: Annotated[int, SettingsGroup.SERVER] = Field(
        1000,
        ge=0,
        description="offline agents listed at most; beyond it the longest offline are forgotten",
    )
    history_url: Annotated[str, SettingsGroup.SERVER] = Field(
        "",
        description="where conversations are kept: empty (SQLite in DATA_DIR), none (off), "
        "sqlite:///path or postgresql://user@host/db",
    )
    data_dir: Annotated[str, SettingsGroup.SERVER] = Field(
        "data", description="directory of the hub's own files (the default history database)"
    )
    history_retention_days: Annotated[float, SettingsGroup.SERVER] = Field(
        0.0, ge=0, description="days messages are kept in history (0: for ever)"
    )
    history_queue: Annotated[int, SettingsGroup.SERVER] = Field(
        10_000,
        ge=1,
        description="messages waiting to be written to history at most; past it (a slow or "
        "down database) they are not stored",
    )

    rate_limit_per_second: Annotated[float, SettingsGroup.LIMITS] = Field(
        20.0, gt=0, description="frames per second a frontend may send, sustained"
    )
    rate_limit_burst: Annotated[int, SettingsGroup.LIMITS] = Field(
        40, ge=1, description="frames a frontend may send in a burst"
    )
    outbound_queue_frames: Annotated[int, SettingsGroup.LIMITS] = Field(
        1024, ge=16, description="frames queued for a slow frontend before it is closed (4008)"
    )
    outbound_queue_bytes: Annotated[int, SettingsGroup.LIMITS] = Field(
        1024 * 1024,
        ge=64 * 1024,
        description="bytes queued for a slow frontend before it is closed (4008); half of it "
        "bounds what waits for a disconnected frontend's resume",
    )
    outbound_total_bytes: Annotated[int, SettingsGroup.LIMITS] = Field(
        256 * 1024 * 1024,
        ge=1024 * 1024,
        description="bytes queued for all frontends together; past it the sockets holding the "
        "most are closed (4008)",
    )
    stream_reorder_bytes: Annotated[int, SettingsGroup.LIMITS] = Field(
        1024 * 1024,
        ge=64 * 1024,
        description="bytes of one streamed reply held for a missing chunk; past it the reply "
        "is given up (ERROR stream_incomplete)",
    )
    stream_reorder_agent_bytes: Annotated[int, SettingsGroup.LIMITS] = Field(
        8 * 1024 * 1024,
        ge=64 * 1024,
        description="bytes of one agent's streamed replies held for missing chunks, in all",
    )
    stream_reorder_total_bytes: Annotated[int, SettingsGroup.LIMITS] = Field(
        64 * 1024 * 1024,
        ge=64 * 1024,
        description="bytes of all streamed replies held for missing chunks, in all",
    )
    stream_reorder_timeout: Annotated[float, SettingsGroup.LIMITS] = Field(
        30.0,
        gt=0,
        description="seconds chunks wait for a missing one before the reply is given up",
    )

    max_message_bytes: Annotated[int, SettingsGroup.AGENT_LINK] = Field(
        65536, ge=1024, le=16 * 1024 * 1024, description="largest frame accepted"
    )
    heartbeat_interval: Annotated[int, SettingsGroup.AGENT_LINK] = Field(
        10, ge=1, le=3600, description="seconds between agent heartbeats"
    )

    agent_timeout: Annotated[float, SettingsGroup.ROUTING] = Field(
        30.0, gt=0, description="seconds without a sign of life before an agent is offline"
    )
    consumer_concurrency: Annotated[int, SettingsGroup.ROUTING] = Field(
        32,
        ge=1,
        le=1024,
        description="bus messages a server or broker handles at once (a reply stream's order "
        "is restored by the server)",
    )

    shutdown_timeout: Annotated[float, SettingsGroup.LIFECYCLE] = Field(
        10.0, gt=0, description="seconds a graceful shutdown may take"
    )

    auth_secret: Annotated[str, SettingsGroup.AUTH] = Field(
        "", description="HS256 secret; when set, every connection must present a valid JWT"
    )
    auth_token: Annotated[str, SettingsGroup.AUTH_CLIENT] = Field(
        "", description="the JWT this process presents when it connects (brokers, agents)"
    )

    a2a_remote_token: Annotated[str, SettingsGroup.A2A_REMOTE] = Field(
        "",
        description="bearer token a2a-bridge presents to the remote A2A agent (never taken "
        "from a message)",
    )
    a2a_remote_check_interval: Annotated[float, SettingsGroup.A2A_REMOTE] = Field(
        10.0, gt=0, description="seconds between a2a-bridge's checks that the remote agent is up"
    )

    grpc_tls_cert: Annotated[str, SettingsGroup.TLS_SERVER] = Field(
        "", description="PEM certificate file: serve gRPC over TLS"
    )
    grpc_tls_key: Annotated[str, SettingsGroup.TLS_SERVER] = Field(
        "", description="PEM private key file for GRPC_TLS_CERT"
    )
    grpc_tls_client_ca: Annotated[str, SettingsGroup.TLS_SERVER] = Field(
        "", description="PEM CA file: require client certificates signed by it (mTLS)"
    )
    grpc_tls_ca: Annotated[str, SettingsGroup.TLS_CLIENT] = Field(
        "", description="PEM CA file clients use to verify the server (enables TLS for clients)"
    )
    grpc_tls_client_cert: Annotated[str, SettingsGroup.TLS_CLIENT] = Field(
        "", description="PEM client certificate for mTLS"
    )
    grpc_tls_client_key: Annotated[str, SettingsGroup.TLS_CLIENT] = Field(
        "", description="PEM private key for GRPC_TLS_CLIENT_CERT"
    )

    log_level: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], SettingsGroup.LOGGING
    ] = Field("INFO", description="log level")
    log_format: Annotated[Literal["text", "json"], SettingsGroup.LOGGING] = Field(
        "text", description="log line format"
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level_in_any_case(cls, value: object) -> object:
        # LOG_LEVEL=debug means what DEBUG does; refusing it only teaches a spelling.
        return value.strip().upper() if isinstance(value, str) else value

    @property
    def rabbitmq_url(self) -> str:
        from urllib.parse import quote

        vhost = quote(self.rabbitmq_vhost, safe="")
        user = quote(self.rabbitmq_user, safe="")
        password = quote(self.rabbitmq_password, safe="")
        return f"amqp://{user}:{password}@{self.rabbitmq_host}:{self.rabbitmq_port}/{vhost}"

    @field_validator("history_url")
    @classmethod
    def _history_url_form(cls, value: str) -> str:
        from agentcomm.history.urls import check_history_url

        return check_history_url(value)

    @field_validator("rabbitmq_hosts")
    @classmethod
    def _hosts_are_addresses(cls, value: str) -> str:
        parse_hosts(value, default_port=5672)
        return value

    @property
    def rabbitmq_nodes(self) -> list[tuple[str, int]]:
        """(host, port) of each RabbitMQ node the bus may connect to, in RABBITMQ_HOSTS' order;
        RABBITMQ_HOST and RABBITMQ_PORT when it is empty."""
        nodes = parse_hosts(self.rabbitmq_hosts, default_port=self.rabbitmq_port)
        return nodes or [(self.rabbitmq_host, self.rabbitmq_port)]

    @property
    def origins(self) -> list[str]:
        return [origin.strip() for origin in self.allowed_origins.split(",") if origin.strip()]


def parse_hosts(text: str, *, default_port: int) -> list[tuple[str, int]]:
    """(host, port) of each `host:port` (or `host`, or `[ipv6]:port`) of a comma-separated
    list; raises ValueError naming the entry that is not an address."""
    nodes = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        host, port = entry, str(default_port)
        if entry.startswith("["):
            host, _, rest = entry[1:].partition("]")
            if rest:
                port = rest.removeprefix(":") if rest.startswith(":") else "?"
        elif entry.count(":") == 1:
            host, port = entry.split(":")
        elif ":" in entry and not _is_ip_address(entry):
            raise ValueError(
                f"{entry!r} is not host:port (an IPv6 address with a port: [::1]:5672)"
            )
        if not host or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
            raise ValueError(f"{entry!r} is not host:port")
        if any(character.isspace() or character in "/@?#[]" for character in host):
            raise ValueError(f"{entry!r} is not host:port")
        nodes.append((host, int(port)))
    return nodes


def _is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def group_of(name: str) -> SettingsGroup:
    """The group the field `name` declares in its annotation."""
    groups = [
        item for item in Settings.model_fields[name].metadata if isinstance(item, SettingsGroup)
    ]
    if len(groups) != 1:
        raise LookupError(f"Setting {name!r} must declare exactly one group, not {len(groups)}.")
    return groups[0]


def fields_in(group: SettingsGroup) -> tuple[str, ...]:
    """The names of the fields in `group`, in the model's order."""
    return tuple(name for name in Settings.model_fields if group_of(name) is group)


_SECRET_SETTINGS = frozenset({"RABBITMQ_PASSWORD", "AUTH_SECRET", "AUTH_TOKEN"})


class SettingsError(Exception):
    """A setting has a value it does not accept; the message is one line per variable."""


def load_settings(**overrides: Any) -> Settings:
    """Environment first, then explicit overrides (CLI flags). Raises SettingsError."""
    try:
        return Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as exc:
        raise SettingsError(describe_settings_error(exc)) from None


def describe_settings_error(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        name = str(error["loc"][0]).upper() if error["loc"] else "SETTINGS"
        field = Settings.model_fields.get(name.lower())
        accepts = f" ({field.description})" if field and field.description else ""
        given = "<hidden>" if name in _SECRET_SETTINGS else error.get("input")
        lines.append(f"{name}: {error['msg']}{accepts}; got {given!r}")
    return "\n".join(lines)
