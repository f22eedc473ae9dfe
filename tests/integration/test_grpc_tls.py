"""gRPC over TLS, and mTLS when the server names a client CA; certificates made per test run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from agentcomm.generated import agent_registration_service_pb2 as reg_pb
from agentcomm.generated import agent_registration_service_pb2_grpc as reg_grpc
from agentcomm.grpc_channel import ClientTls, open_channel
from agentcomm.server.testing import running_hub, test_settings

TIMEOUT = 10.0


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _signed(cwd: Path, name: str, subject: str, extensions: str) -> None:
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        subject,
        cwd=cwd,
    )
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        f"{name}.pem",
        "-days",
        "2",
        "-extfile",
        f"{name}.ext",
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make test certificates")
    folder = tmp_path_factory.mktemp("certs")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=agentcomm test CA",
        cwd=folder,
    )
    _signed(
        folder,
        "server",
        "/CN=localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    _signed(folder, "client", "/CN=agent-tls", "extendedKeyUsage=clientAuth\n")
    return folder


async def _register(target: str, tls: ClientTls | None) -> str:
    async with open_channel(target, tls=tls) as channel:
        stub = reg_grpc.AgentRegistrationServiceStub(channel)
        response = await stub.RegisterAgent(
            reg_pb.AgentRegistrationRequest(agent_id="agent-tls"), timeout=TIMEOUT
        )
        return response.server_assigned_id


async def test_tls_server_is_reached_with_its_ca_only(certs: Path) -> None:
    settings = test_settings(
        grpc_tls_cert=str(certs / "server.pem"), grpc_tls_key=str(certs / "server.key")
    )
    async with running_hub(settings) as hub:
        ca = (certs / "ca.pem").read_bytes()
        assert await _register(hub.grpc_target, ClientTls(root_certificates=ca)) == "agent-tls"
        with pytest.raises(grpc.aio.AioRpcError) as plain:
            await _register(hub.grpc_target, None)
        assert plain.value.code() is grpc.StatusCode.UNAVAILABLE


async def test_mtls_server_requires_a_client_certificate(certs: Path) -> None:
    settings = test_settings(
        grpc_tls_cert=str(certs / "server.pem"),
        grpc_tls_key=str(certs / "server.key"),
        grpc_tls_client_ca=str(certs / "ca.pem"),
    )
    async with running_hub(settings) as hub:
        ca = (certs / "ca.pem").read_bytes()
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await _register(hub.grpc_target, ClientTls(root_certificates=ca))
        assert anonymous.value.code() is grpc.StatusCode.UNAVAILABLE
        client = ClientTls.from_settings(
            test_settings(
                grpc_tls_ca=str(certs / "ca.pem"),
                grpc_tls_client_cert=str(certs / "client.pem"),
                grpc_tls_client_key=str(certs / "client.key"),
            )
        )
        assert client is not None
        assert await _register(hub.grpc_target, client) == "agent-tls"
