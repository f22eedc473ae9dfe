"""Settings, read once from the environment (and CLI flags that mirror it), then passed down.

Every name here is an environment variable of the same name in upper case; the seed's names
(`RABBITMQ_HOST`, `PORT`, ...) are honoured exactly. A bad value stops the start with one line
naming the variable and what it accepts.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Configuration of every agentcomm process (server, broker, agents, bench)."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    # The seed's names.
    rabbitmq_host: str = Field("localhost", description="RabbitMQ host name")
    rabbitmq_port: int = Field(5672, ge=1, le=65535, description="RabbitMQ port")
    host: str = Field("0.0.0.0", description="HTTP/WebSocket listen address")
    port: int = Field(8765, ge=0, le=65535, description="HTTP/WebSocket port (0: any free)")
    grpc_host: str = Field("localhost", description="gRPC listen address")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port (0: any free)")
    periodic_status_interval: float = Field(
        60.0, gt=0, description="seconds between full status refreshes and advertisements"
    )
    # Additions.
    message_bus: Literal["rabbitmq", "memory"] = Field(
        "rabbitmq", description="which message bus carries chat traffic"
    )
    rabbitmq_user: str = Field("guest", description="RabbitMQ user")
    rabbitmq_password: str = Field("guest", description="RabbitMQ password")
    rabbitmq_vhost: str = Field("/", description="RabbitMQ virtual host")
    rabbitmq_prefetch: int = Field(
        200, ge=1, le=65535, description="unacked deliveries per consumer"
    )
    rabbitmq_connect_attempts: int = Field(
        10, ge=1, description="attempts to reach RabbitMQ at start before giving up"
    )
    rabbitmq_heartbeat: int = Field(
        10,
        ge=0,
        le=600,
        description="seconds between AMQP heartbeats; a link silent for about three of them "
        "is taken for dead and reconnected (0: off)",
    )
    rabbitmq_fast_path: bool = Field(
        True,
        description="frame publishes, confirms, deliveries and acks in the bus itself (0: plain "
        "aio-pika publishes and consumers)",
    )
    consumer_concurrency: int = Field(
        32,
        ge=1,
        le=1024,
        description="bus messages a server or broker handles at once (a reply stream's order "
        "is restored by the server)",
    )
    agent_timeout: float = Field(
        30.0, gt=0, description="seconds without a sign of life before an agent is offline"
    )
    stream_grace: float = Field(
        3.0, ge=0, description="seconds a broken ReceiveCommands stream may take to be reopened"
    )
    heartbeat_interval: int = Field(
        10, ge=1, le=3600, description="seconds between agent heartbeats"
    )
    registration_timeout: float = Field(10.0, gt=0, description="seconds a socket has to register")
    max_message_bytes: int = Field(
        65536, ge=1024, le=16 * 1024 * 1024, description="largest frame accepted"
    )
    outbound_queue_frames: int = Field(
        1024, ge=16, description="frames queued for a slow frontend before it is closed (4008)"
    )
    delivery_timeout: float = Field(
        300.0,
        gt=0,
        description="seconds an offline agent may take to come back before its senders "
        "get ERROR agent_offline",
    )
    resume_window: float = Field(
        60.0, ge=0, description="seconds a disconnected frontend's session waits for a resume"
    )
    rate_limit_per_second: float = Field(
        20.0, gt=0, description="frames per second a frontend may send, sustained"
    )
    rate_limit_burst: int = Field(40, ge=1, description="frames a frontend may send in a burst")
    command_timeout: float = Field(30.0, gt=0, description="default wait for a command result")
    shutdown_timeout: float = Field(10.0, gt=0, description="seconds a graceful shutdown may take")
    allowed_origins: str = Field(
        "", description="comma-separated WebSocket/CORS origins; empty allows any"
    )
    auth_secret: str = Field(
        "", description="HS256 secret; when set, every connection must present a valid JWT"
    )
    auth_token: str = Field(
        "", description="the JWT this process presents when it connects (brokers, agents)"
    )
    grpc_tls_cert: str = Field("", description="PEM certificate file: serve gRPC over TLS")
    grpc_tls_key: str = Field("", description="PEM private key file for GRPC_TLS_CERT")
    grpc_tls_client_ca: str = Field(
        "", description="PEM CA file: require client certificates signed by it (mTLS)"
    )
    grpc_tls_ca: str = Field(
        "", description="PEM CA file clients use to verify the server (enables TLS for clients)"
    )
    grpc_tls_client_cert: str = Field("", description="PEM client certificate for mTLS")
    grpc_tls_client_key: str = Field("", description="PEM private key for GRPC_TLS_CLIENT_CERT")
    public_url: str = Field(
        "", description="address advertised to others (default: from HOST/PORT)"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="log level"
    )
    log_format: Literal["text", "json"] = Field("text", description="log line format")

    @property
    def rabbitmq_url(self) -> str:
        from urllib.parse import quote

        vhost = quote(self.rabbitmq_vhost, safe="")
        user = quote(self.rabbitmq_user, safe="")
        password = quote(self.rabbitmq_password, safe="")
        return f"amqp://{user}:{password}@{self.rabbitmq_host}:{self.rabbitmq_port}/{vhost}"

    @property
    def origins(self) -> list[str]:
        return [origin.strip() for origin in self.allowed_origins.split(",") if origin.strip()]


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
