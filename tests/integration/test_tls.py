"""gRPC over TLS, through the real requests service run as a child process against the test stack: a service
with a certificate answers a client that trusts its CA (the kit's `channel()`), and refuses a plaintext
client and a client that trusts another CA; with mutual TLS it also refuses a client without a certificate
or with one of another CA. Its plaintext health port answers health alone (what Kubernetes probes), its
reflection is off unless set, its metrics listen on MIEUX_METRICS_HOST only, and a half TLS configuration
stops it at start with the setting named."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2_grpc
from mieux.requests.v1 import requests_pb2, requests_pb2_grpc
from support import ServiceProcess

from services.kernel.grpckit import call_metadata, channel
from services.kernel.settings import Settings
from services.ops import certs
from services.ops.devstack import free_port

pytestmark = pytest.mark.integration

RPC_TIMEOUT = 10.0
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


# --- certificates: ours (the service's CA) and another CA's -------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca, other_ca = certs.new_ca("test CA"), certs.new_ca("another CA")
    made = {
        "server": certs.issue(ca, "requests", dns=["localhost"], ips=["127.0.0.1"]),
        "client": certs.issue(ca, "ops", server=False),
        "stranger": certs.issue(other_ca, "ops", server=False),
    }
    files = {"ca": folder / "ca.crt", "other_ca": folder / "other-ca.crt"}
    certs.write_public(files["ca"], ca.cert_pem)
    certs.write_public(files["other_ca"], other_ca.cert_pem)
    for name, issued in made.items():
        files[f"{name}.crt"], files[f"{name}.key"] = folder / f"{name}.crt", folder / f"{name}.key"
        certs.write_public(files[f"{name}.crt"], issued.cert_pem)
        certs.write_private(files[f"{name}.key"], issued.key_pem)
    return files


def client_settings(ca: Path, cert: Path | None = None, key: Path | None = None) -> Settings:
    """What a client process (a service calling another, the CLI) reads: a CA, and its certificate if any."""
    given: dict[str, object] = {"MIEUX_TLS_CA_FILE": ca}
    if cert is not None:
        given |= {"MIEUX_TLS_CERT_FILE": cert, "MIEUX_TLS_KEY_FILE": key}
    return Settings(**given)  # type: ignore[arg-type]


class TlsService(ServiceProcess):
    """The requests service serving TLS on `port`, waited for on its plaintext health port (as Kubernetes'
    probes and compose's health check ask it)."""

    def __init__(self, env: dict[str, str], port: int, health_port: int) -> None:
        self.health_port = health_port
        super().__init__("requests", env, port)

    @property
    def target(self) -> str:  # where wait_serving asks: the plaintext health port
        return f"127.0.0.1:{self.health_port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def tls_service(stack_env: dict[str, str], pki: dict[str, Path], **extra: str) -> AsyncIterator[TlsService]:
    port, health_port = free_port(), free_port()
    env = {
        **stack_env,
        "MIEUX_REQUESTS_PORT": str(port),
        "MIEUX_LOG_LEVEL": "WARNING",
        "MIEUX_GRPC_HEALTH_PORT": str(health_port),
        "MIEUX_TLS_CERT_FILE": str(pki["server.crt"]),
        "MIEUX_TLS_KEY_FILE": str(pki["server.key"]),
        "MIEUX_TLS_CA_FILE": str(pki["ca"]),
        **extra,
    }
    svc = TlsService(env, port, health_port)
    try:
        await asyncio.to_thread(svc.wait_serving, START_TIMEOUT)
        yield svc
    finally:
        code = await asyncio.to_thread(svc.stop, STOP_TIMEOUT)
        assert code == 0, f"requests exited with {code}:\n{svc.output()[-4000:]}"


async def health(ch: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT)
    return reply.status


async def refused(ch: grpc.aio.Channel) -> grpc.StatusCode:
    async with ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health(ch)
    return info.value.code()


def secure(address: str, ca: Path, cert: Path | None = None, key: Path | None = None) -> grpc.aio.Channel:
    """A channel built by hand (not the kit's), for the clients the kit would never make."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    return grpc.aio.secure_channel(address, credentials)


# --- TLS, without client certificates -------------------------------------------------------------------

METRICS_HOST = "127.0.0.2"  # on Linux the whole of 127.0.0.0/8 is loopback: a second address to tell apart


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
async def service(stack_env: dict[str, str], pki: dict[str, Path], metrics_port: int) -> AsyncIterator[TlsService]:
    async with tls_service(
        stack_env,
        pki,
        MIEUX_GRPC_REFLECTION="false",
        MIEUX_METRICS_PORT=str(metrics_port),
        MIEUX_METRICS_HOST=METRICS_HOST,
    ) as svc:
        yield svc


async def test_a_client_that_trusts_the_ca_is_answered(
    service: TlsService, pki: dict[str, Path], tokens: dict[str, str]
) -> None:
    """The kit's own client channel, as a service or the CLI makes it from its settings."""
    async with channel(service.address, client_settings(pki["ca"])) as ch:
        assert await health(ch) == health_pb2.HealthCheckResponse.SERVING
        reply = await requests_pb2_grpc.RequestsStub(ch).GetRequestsPerYear(
            requests_pb2.GetRequestsPerYearQuery(), metadata=call_metadata(tokens["ops"]), timeout=RPC_TIMEOUT
        )
        assert reply is not None
    # and a client that presents a certificate too (harmless when the server does not ask for one)
    settings = client_settings(pki["ca"], pki["client.crt"], pki["client.key"])
    async with channel(service.address, settings) as ch:
        assert await health(ch) == health_pb2.HealthCheckResponse.SERVING


async def test_a_list_of_replicas_is_answered_over_tls(service: TlsService, pki: dict[str, Path]) -> None:
    """The target `mieux up --replicas` gives (one address per replica, balanced): the certificate is checked
    against the first address's name, and a replica that is down (nothing on its port) is skipped."""
    target = f"ipv4:{service.address},127.0.0.1:{free_port()}"
    async with channel(target, client_settings(pki["ca"])) as ch:
        for _ in range(4):  # round_robin: more calls than addresses
            assert await health(ch) == health_pb2.HealthCheckResponse.SERVING


async def test_a_plaintext_client_is_refused(service: TlsService) -> None:
    assert await refused(grpc.aio.insecure_channel(service.address)) == grpc.StatusCode.UNAVAILABLE


async def test_a_client_that_trusts_another_ca_is_refused(service: TlsService, pki: dict[str, Path]) -> None:
    assert await refused(secure(service.address, pki["other_ca"])) == grpc.StatusCode.UNAVAILABLE
    # the kit's channel with that CA refuses the service's certificate just the same
    assert await refused(channel(service.address, client_settings(pki["other_ca"]))) == grpc.StatusCode.UNAVAILABLE


async def test_the_plaintext_health_port_answers_health_alone(service: TlsService, tokens: dict[str, str]) -> None:
    async with grpc.aio.insecure_channel(service.target) as ch:
        assert await health(ch) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await requests_pb2_grpc.RequestsStub(ch).GetRequestsPerYear(
                requests_pb2.GetRequestsPerYearQuery(), metadata=call_metadata(tokens["ops"]), timeout=RPC_TIMEOUT
            )
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_reflection_is_off_when_the_setting_says_so(service: TlsService, pki: dict[str, Path]) -> None:
    async with channel(service.address, client_settings(pki["ca"])) as ch:
        # No request message is sent: a message in flight when the server answers UNIMPLEMENTED makes the
        # client's own send fail first ("Internal error from Core"), a race of the client, not of the server.
        # With reflection on, this call ends OK with no answer, so the assertion below still fails.
        call = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(iter([]), timeout=RPC_TIMEOUT)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return int(reply.status)


async def test_metrics_listen_on_the_metrics_host_only(service: TlsService, metrics_port: int) -> None:
    assert await asyncio.to_thread(get, f"http://{METRICS_HOST}:{metrics_port}/metrics") == 200
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(get, f"http://127.0.0.1:{metrics_port}/metrics")


# --- mutual TLS ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def mutual(stack_env: dict[str, str], pki: dict[str, Path]) -> AsyncIterator[TlsService]:
    async with tls_service(stack_env, pki, MIEUX_TLS_CLIENT_AUTH="true") as svc:
        yield svc


async def test_mutual_tls_answers_a_client_with_a_certificate_of_the_ca(
    mutual: TlsService, pki: dict[str, Path], tokens: dict[str, str]
) -> None:
    settings = client_settings(pki["ca"], pki["client.crt"], pki["client.key"])
    async with channel(mutual.address, settings) as ch:
        reply = await requests_pb2_grpc.RequestsStub(ch).GetRequestsPerYear(
            requests_pb2.GetRequestsPerYearQuery(), metadata=call_metadata(tokens["ops"]), timeout=RPC_TIMEOUT
        )
        assert reply is not None
    # the service's own certificate is a client certificate too: what one service presents to another
    settings = client_settings(pki["ca"], pki["server.crt"], pki["server.key"])
    async with channel(mutual.address, settings) as ch:
        assert await health(ch) == health_pb2.HealthCheckResponse.SERVING


async def test_mutual_tls_refuses_a_client_without_a_certificate(mutual: TlsService, pki: dict[str, Path]) -> None:
    assert await refused(channel(mutual.address, client_settings(pki["ca"]))) == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_refuses_a_certificate_of_another_ca(mutual: TlsService, pki: dict[str, Path]) -> None:
    ch = secure(mutual.address, pki["ca"], pki["stranger.crt"], pki["stranger.key"])
    assert await refused(ch) == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_refuses_a_plaintext_client(mutual: TlsService) -> None:
    assert await refused(grpc.aio.insecure_channel(mutual.address)) == grpc.StatusCode.UNAVAILABLE


# --- half configured: stopped at start ---------------------------------------------------------------------


def test_a_half_tls_configuration_stops_the_service_at_start(stack_env: dict[str, str], pki: dict[str, Path]) -> None:
    env = {**stack_env, "MIEUX_REQUESTS_PORT": str(free_port()), "MIEUX_TLS_CERT_FILE": str(pki["server.crt"])}
    env.pop("MIEUX_TLS_KEY_FILE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "services.requests"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert "MIEUX_TLS_CERT_FILE and MIEUX_TLS_KEY_FILE go together" in proc.stderr, proc.stderr[-2000:]
