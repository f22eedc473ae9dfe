"""Settings (PROTOCOL §8): the seed's variable names and defaults, and one clear line per bad
value. The command line's behaviour on a bad value is in tests/integration/test_server_process.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentcomm.config import (
    Settings,
    SettingsError,
    SettingsGroup,
    fields_in,
    group_of,
    load_settings,
    parse_hosts,
)

# Every variable a test might inherit from the shell that runs it.
VARIABLES = [name.upper() for name in Settings.model_fields]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def test_defaults_are_the_documented_ones() -> None:
    settings = Settings()
    assert settings.rabbitmq_host == "localhost"
    assert settings.rabbitmq_port == 5672
    assert settings.host == "0.0.0.0"
    assert settings.port == 8765
    assert settings.grpc_host == "localhost"
    assert settings.grpc_port == 50051
    assert settings.periodic_status_interval == 60
    assert settings.message_bus == "rabbitmq"
    assert settings.rabbitmq_user == "guest"
    assert settings.rabbitmq_password == "guest"
    assert settings.rabbitmq_vhost == "/"
    assert settings.agent_timeout == 30
    assert settings.heartbeat_interval == 10
    assert settings.registration_timeout == 10
    assert settings.max_message_bytes == 65536
    assert settings.log_format == "text"


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("RABBITMQ_HOST", "mq.internal", "rabbitmq_host", "mq.internal"),
        ("RABBITMQ_PORT", "5673", "rabbitmq_port", 5673),
        ("HOST", "127.0.0.1", "host", "127.0.0.1"),
        ("PORT", "9000", "port", 9000),
        ("GRPC_HOST", "0.0.0.0", "grpc_host", "0.0.0.0"),
        ("GRPC_PORT", "50052", "grpc_port", 50052),
        ("PERIODIC_STATUS_INTERVAL", "5", "periodic_status_interval", 5.0),
        ("MESSAGE_BUS", "memory", "message_bus", "memory"),
        ("RABBITMQ_VHOST", "team-a", "rabbitmq_vhost", "team-a"),
        ("AGENT_TIMEOUT", "1.5", "agent_timeout", 1.5),
        ("HEARTBEAT_INTERVAL", "3", "heartbeat_interval", 3),
        ("REGISTRATION_TIMEOUT", "2", "registration_timeout", 2.0),
        ("MAX_MESSAGE_BYTES", "1048576", "max_message_bytes", 1048576),
        ("LOG_LEVEL", "DEBUG", "log_level", "DEBUG"),
        ("LOG_FORMAT", "json", "log_format", "json"),
        ("port", "9001", "port", 9001),
    ],
)
def test_environment_variables_are_honoured(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str, expected: object
) -> None:
    monkeypatch.setenv(variable, value)
    assert getattr(load_settings(), field) == expected


def test_explicit_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9000")
    assert load_settings(port="9100").port == 9100
    assert load_settings(port=None).port == 9000


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("PORT", "-1"),
        ("GRPC_PORT", "x"),
        ("RABBITMQ_PORT", "0"),
        ("MESSAGE_BUS", "kafka"),
        ("AGENT_TIMEOUT", "0"),
        ("AGENT_TIMEOUT", "soon"),
        ("HEARTBEAT_INTERVAL", "0"),
        ("REGISTRATION_TIMEOUT", "-5"),
        ("PERIODIC_STATUS_INTERVAL", "0"),
        ("MAX_MESSAGE_BYTES", "10"),
        ("LOG_LEVEL", "LOUD"),
        ("LOG_FORMAT", "xml"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as refused:
        load_settings()
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{variable}: ")
    assert repr(value) in message


def test_several_bad_values_are_one_line_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "abc")
    monkeypatch.setenv("MESSAGE_BUS", "kafka")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    lines = str(refused.value).splitlines()
    assert sorted(line.split(":")[0] for line in lines) == ["MESSAGE_BUS", "PORT"]


def test_the_message_says_what_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESSAGE_BUS", "kafka")
    with pytest.raises(SettingsError) as refused:
        load_settings()
    assert "'rabbitmq'" in str(refused.value)
    assert "'memory'" in str(refused.value)


def test_rabbitmq_url_quotes_each_part() -> None:
    settings = Settings(
        rabbitmq_user="us er",
        rabbitmq_password="p@ss/word",
        rabbitmq_host="mq",
        rabbitmq_port=5673,
        rabbitmq_vhost="/",
    )
    assert settings.rabbitmq_url == "amqp://us%20er:p%40ss%2Fword@mq:5673/%2F"
    assert Settings(rabbitmq_vhost="team-a").rabbitmq_url.endswith("/team-a")


def test_origins_are_a_comma_separated_allow_list() -> None:
    assert Settings().origins == []
    assert Settings(allowed_origins=" http://a.example , ,https://b.example").origins == [
        "http://a.example",
        "https://b.example",
    ]


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.port = 1


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_every_setting_declares_exactly_one_group(name: str) -> None:
    metadata = Settings.model_fields[name].metadata
    assert [item for item in metadata if isinstance(item, SettingsGroup)] == [group_of(name)]


def test_the_groups_partition_the_settings() -> None:
    grouped = [name for group in SettingsGroup for name in fields_in(group)]
    assert sorted(grouped) == sorted(Settings.model_fields)
    assert all(fields_in(group) for group in SettingsGroup), "a group without settings"
    assert len({group.key for group in SettingsGroup}) == len(SettingsGroup)


def test_rabbitmq_hosts_name_the_cluster_nodes_in_order() -> None:
    settings = load_settings(rabbitmq_hosts=" mq1:5673, mq2 ,[::1]:5674,", rabbitmq_port="5680")
    assert settings.rabbitmq_nodes == [("mq1", 5673), ("mq2", 5680), ("::1", 5674)]
    # Empty: the one node RABBITMQ_HOST and RABBITMQ_PORT name, as before.
    assert load_settings(rabbitmq_host="mq", rabbitmq_port="5681").rabbitmq_nodes == [("mq", 5681)]


@pytest.mark.parametrize("bad", ["mq:", "mq:port", ":5672", "mq:0", "mq:70000", "a:1:2", "m q:1"])
def test_a_bad_rabbitmq_hosts_entry_is_one_line_naming_it(bad: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(rabbitmq_hosts=f"ok:5672,{bad}")
    message = str(refused.value)
    assert message.startswith("RABBITMQ_HOSTS: ")
    assert f"{bad!r} is not host:port" in message
    assert "\n" not in message


_HOST = st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True)


@given(st.lists(st.tuples(_HOST, st.integers(1, 65535)), max_size=5))
def test_rabbitmq_hosts_read_back_what_was_written(nodes: list[tuple[str, int]]) -> None:
    text = ",".join(f"{host}:{port}" for host, port in nodes)
    assert parse_hosts(text, default_port=5672) == nodes


@given(st.text(max_size=60))
def test_any_rabbitmq_hosts_text_is_addresses_or_a_value_error(text: str) -> None:
    try:
        nodes = parse_hosts(text, default_port=5672)
    except ValueError:
        return
    assert all(host and 1 <= port <= 65535 for host, port in nodes)
