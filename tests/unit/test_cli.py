"""The command line: each command offers flags for the settings it reads, and only those."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentcomm.cli import (
    COMMAND_GROUPS,
    SETTINGS_DEST,
    build_command_line,
    flag_of,
    parse_arguments,
)
from agentcomm.config import Settings, SettingsGroup, fields_in

# What each command needs besides settings to parse at all.
REQUIRED = {
    "serve": [],
    "broker": [],
    "agent": ["echo"],
    "dev": [],
    "token": ["--role", "admin", "--sub", "ops"],
    "bench": ["roundtrip"],
    "a2a-bridge": ["http://localhost:9999"],
}

# Checked by hand against the code (grep `settings.` and the functions named): a change to
# what agents or brokers read should change these lists and the groups in agentcomm/cli.py.
# Both create their bus with bus/factory.py:create_bus, which reads the whole bus group
# (RABBITMQ_FAST_PATH included: the switch between the bus's framings; RABBITMQ_HOSTS: the nodes
# it connects to; RABBITMQ_QUEUE_TYPE: the type of the queues it declares).
BUS_FIELDS = {
    "message_bus",
    "rabbitmq_host",
    "rabbitmq_port",
    "rabbitmq_user",
    "rabbitmq_password",
    "rabbitmq_vhost",
    "rabbitmq_prefetch",
    "rabbitmq_connect_attempts",
    "rabbitmq_heartbeat",
    "rabbitmq_fast_path",
    "rabbitmq_hosts",
    "rabbitmq_queue_type",
}
CLIENT_FIELDS = {
    "grpc_host",  # sdk/agent.py grpc_target; broker/runner.py
    "grpc_port",
    "auth_token",  # sdk/agent.py Agent.__init__; broker/runner.py
    "grpc_tls_ca",  # grpc_channel.py ClientTls.from_settings, called by both
    "grpc_tls_client_cert",
    "grpc_tls_client_key",
    "shutdown_timeout",  # sdk/runtime.py stop; broker/runner.py stop_timeout
    "log_level",  # logging_setup.configure_logging, for every command
    "log_format",
}
AGENT_FIELDS = BUS_FIELDS | CLIENT_FIELDS | {"max_message_bytes", "heartbeat_interval"}
BROKER_FIELDS = BUS_FIELDS | CLIENT_FIELDS | {"consumer_concurrency", "agent_timeout"}


def settings_fields(command: str) -> set[str]:
    args = parse_arguments([command, *REQUIRED[command]])
    return {key.removeprefix(SETTINGS_DEST) for key in vars(args) if key.startswith(SETTINGS_DEST)}


def help_of(command: str) -> str:
    return build_command_line().commands[command].format_help()


def test_every_command_declares_its_groups() -> None:
    assert set(COMMAND_GROUPS) == set(REQUIRED)
    assert set(build_command_line().commands) == set(REQUIRED)


@pytest.mark.parametrize("command", list(REQUIRED))
def test_a_commands_flags_are_exactly_its_groups_fields(command: str) -> None:
    expected = {name for group in COMMAND_GROUPS[command] for name in fields_in(group)}
    assert settings_fields(command) == expected


def test_agent_help_lists_what_an_agent_reads() -> None:
    text = help_of("agent")
    for flag in ("--grpc-port", "--auth-token", "--grpc-tls-ca", "--rabbitmq-host"):
        assert flag in text
    for flag in ("--rate-limit-per-second", "--resume-window", "--grpc-tls-key", "--port "):
        assert flag not in text


def test_settings_appear_in_one_titled_section_per_group() -> None:
    text = help_of("broker")
    titles = [line for line in text.splitlines() if line.endswith(" settings:")]
    assert titles == [
        f"{group.key} settings:" for group in SettingsGroup if group in COMMAND_GROUPS["broker"]
    ]


def test_agent_and_broker_read_what_their_code_reads() -> None:
    assert settings_fields("agent") == AGENT_FIELDS
    assert settings_fields("broker") == BROKER_FIELDS


def test_the_a2a_bridge_reads_what_an_agent_reads_and_how_to_reach_the_remote() -> None:
    remote = {"a2a_remote_token", "a2a_remote_check_interval"}
    assert settings_fields("a2a-bridge") == AGENT_FIELDS | remote


def test_token_takes_the_secret_and_the_log_settings() -> None:
    assert settings_fields("token") == {"auth_secret", "log_level", "log_format"}


def test_dev_takes_what_serve_takes_and_its_agents_tls() -> None:
    client_tls = {"grpc_tls_ca", "grpc_tls_client_cert", "grpc_tls_client_key"}
    assert settings_fields("dev") == settings_fields("serve") | client_tls
    assert "auth_token" not in settings_fields("serve") | settings_fields("dev")


@pytest.mark.parametrize("command", list(REQUIRED))
def test_a_flag_of_another_command_is_refused(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = sorted(set(Settings.model_fields) - settings_fields(command))
    for name in foreign:
        with pytest.raises(SystemExit) as refused:
            parse_arguments([command, *REQUIRED[command], flag_of(name), "1"])
        assert refused.value.code == 2
        error = capsys.readouterr().err
        assert f"unrecognized arguments: {flag_of(name)} 1" in error
        assert f"{flag_of(name)} is a setting of " in error
        assert f"'{command}' does not read it" in error


def test_the_refusal_names_the_commands_that_read_the_setting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse_arguments(["agent", "echo", "--rate-limit-per-second=5"])
    error = capsys.readouterr().err
    assert error.splitlines()[-1] == (
        "--rate-limit-per-second is a setting of serve, dev; 'agent' does not read it"
    )
    assert "usage: agentcomm agent" in error


def test_an_unknown_flag_is_refused_as_before(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_arguments(["serve", "--no-such-flag"])
    assert (
        "agentcomm serve: error: unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    )


def test_the_environment_still_reaches_every_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from agentcomm.cli import _settings_from

    monkeypatch.setenv("RATE_LIMIT_PER_SECOND", "7")
    settings = _settings_from(parse_arguments(["agent", "echo", "--grpc-port", "50099"]))
    assert settings.rate_limit_per_second == 7
    assert settings.grpc_port == 50099


def test_the_operations_guide_lists_each_commands_groups_and_each_groups_settings() -> None:
    guide = Path(__file__).parents[2] / "docs" / "operations.md"
    section = guide.read_text().split("## Settings of each command", 1)[1].split("\n## ", 1)[0]
    # The first two cells of each row of its two tables: command -> groups, group -> settings.
    listed = {
        cells[0].strip("` ").removeprefix("agentcomm "): cells[1].strip()
        for cells in (line.strip("|").split("|") for line in section.splitlines())
        if cells[0].startswith(" `")
    }
    for command, groups in COMMAND_GROUPS.items():
        keys = [group.key for group in SettingsGroup if group in groups]
        assert listed[command] == ", ".join(f"`{key}`" for key in keys), command
    for group in SettingsGroup:
        names = [name.upper() for name in fields_in(group)]
        assert listed[group.key] == ", ".join(f"`{name}`" for name in names), group.key


def test_dev_runs_on_the_in_process_bus_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agentcomm.cli import _settings_from

    monkeypatch.delenv("MESSAGE_BUS", raising=False)
    assert _settings_from(parse_arguments(["dev"])).message_bus == "memory"
    assert _settings_from(parse_arguments(["serve"])).message_bus == "rabbitmq"
    flagged = parse_arguments(["dev", "--message-bus", "rabbitmq"])
    assert _settings_from(flagged).message_bus == "rabbitmq"
    monkeypatch.setenv("MESSAGE_BUS", "rabbitmq")
    assert _settings_from(parse_arguments(["dev"])).message_bus == "rabbitmq"


@pytest.mark.parametrize("command", list(REQUIRED))
def test_every_settings_flag_says_its_default(command: str) -> None:
    text = " ".join(help_of(command).split())
    for name in settings_fields(command):
        description = Settings.model_fields[name].description
        assert description is not None
        assert f"{' '.join(description.split())} (default: " in text, name


def test_log_levels_are_read_in_any_case() -> None:
    assert Settings(log_level="debug").log_level == "DEBUG"  # type: ignore[arg-type]
    assert Settings(log_level=" Warning ").log_level == "WARNING"  # type: ignore[arg-type]
