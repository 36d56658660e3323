"""The TLS and Kafka security settings, without a server: a half configuration fails at once naming the
settings; the kit's client and server credentials follow them; Kafka's client arguments (aiokafka and the
policies' faust) carry TLS and SCRAM; the certificate authority (services/ops/certs.py) signs what it says,
and private files are private from the start; `mieux dev up --tls` writes its material and settings."""

from __future__ import annotations

import json
import ssl
import stat
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from services.kernel import bus
from services.kernel.grpckit import channel_credentials, server_credentials
from services.kernel.settings import Settings, SettingsError
from services.ops import certs
from services.ops.cli import main as mieux_main
from services.ops.devstack import TLS_FILES, DevStack

ENV = [
    "MIEUX_TLS_CERT_FILE",
    "MIEUX_TLS_KEY_FILE",
    "MIEUX_TLS_CA_FILE",
    "MIEUX_TLS_CLIENT_AUTH",
    "MIEUX_KAFKA_SECURITY_PROTOCOL",
    "MIEUX_KAFKA_USERNAME",
    "MIEUX_KAFKA_PASSWORD",
    "MIEUX_KAFKA_CA_FILE",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MIEUX_HOME", str(tmp_path / "no-stack"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca = certs.new_ca("unit CA")
    leaf = certs.issue(ca, "requests", dns=["requests", "mieux-requests"], ips=["127.0.0.1"])
    out = {"ca": folder / "ca.crt", "crt": folder / "leaf.crt", "key": folder / "leaf.key"}
    certs.write_public(out["ca"], ca.cert_pem)
    certs.write_public(out["crt"], leaf.cert_pem)
    certs.write_private(out["key"], leaf.key_pem)
    return out


# --- half configurations fail at once ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"MIEUX_TLS_CERT_FILE": "a.crt"}, "MIEUX_TLS_KEY_FILE"),
        ({"MIEUX_TLS_KEY_FILE": "a.key"}, "MIEUX_TLS_CERT_FILE"),
        ({"MIEUX_TLS_CERT_FILE": "a.crt", "MIEUX_TLS_KEY_FILE": "a.key"}, "MIEUX_TLS_CA_FILE"),
        ({"MIEUX_TLS_CLIENT_AUTH": "true"}, "MIEUX_TLS_CLIENT_AUTH"),
        ({"MIEUX_TLS_CLIENT_AUTH": "true", "MIEUX_TLS_CA_FILE": "ca.crt"}, "MIEUX_TLS_CLIENT_AUTH"),
        ({"MIEUX_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "MIEUX_KAFKA_USERNAME"),
        ({"MIEUX_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "MIEUX_KAFKA_USERNAME": "u"}, "MIEUX_KAFKA_PASSWORD"),
        ({"MIEUX_KAFKA_USERNAME": "u", "MIEUX_KAFKA_PASSWORD": "p"}, "SASL_SSL"),
        ({"MIEUX_KAFKA_CA_FILE": "ca.crt"}, "MIEUX_KAFKA_CA_FILE"),
    ],
)
def test_a_half_configuration_fails_naming_the_settings(
    monkeypatch: pytest.MonkeyPatch, given: dict[str, str], named: str
) -> None:
    for k, v in given.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError, match=named):
        Settings()


def test_whole_configurations_are_accepted(monkeypatch: pytest.MonkeyPatch, pki: dict[str, Path]) -> None:
    assert Settings().tls_ca_file is None  # nothing: plaintext, the dev stack's default
    monkeypatch.setenv("MIEUX_TLS_CA_FILE", str(pki["ca"]))  # a client (the CLI) without a certificate
    assert Settings().tls_ca_file == pki["ca"]
    monkeypatch.setenv("MIEUX_TLS_CERT_FILE", str(pki["crt"]))
    monkeypatch.setenv("MIEUX_TLS_KEY_FILE", str(pki["key"]))
    monkeypatch.setenv("MIEUX_TLS_CLIENT_AUTH", "true")
    assert Settings().tls_client_auth
    monkeypatch.setenv("MIEUX_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("MIEUX_KAFKA_USERNAME", "mieux-requests")
    monkeypatch.setenv("MIEUX_KAFKA_PASSWORD", "secret")
    s = Settings()
    assert "secret" not in repr(s)  # a SecretStr: never in a log line that prints the settings


def test_exposure_defaults_are_closed() -> None:
    s = Settings()
    assert s.grpc_reflection is False
    assert s.metrics_host == "127.0.0.1"
    assert s.grpc_health_port is None
    assert s.kafka_security_protocol == "PLAINTEXT"


# --- the kit's credentials ------------------------------------------------------------------------------------


def test_credentials_follow_the_settings(pki: dict[str, Path]) -> None:
    plain = Settings()
    assert server_credentials(plain) is None and channel_credentials(plain) is None
    client = Settings(MIEUX_TLS_CA_FILE=pki["ca"])  # type: ignore[call-arg]
    assert isinstance(channel_credentials(client), grpc.ChannelCredentials)
    with pytest.raises(SettingsError, match="needs its certificate and key"):
        server_credentials(client)  # a server given only a CA would serve plaintext: refused
    full = Settings(MIEUX_TLS_CA_FILE=pki["ca"], MIEUX_TLS_CERT_FILE=pki["crt"], MIEUX_TLS_KEY_FILE=pki["key"])  # type: ignore[call-arg]
    assert isinstance(server_credentials(full), grpc.ServerCredentials)
    assert channel_credentials(full) is channel_credentials(full)  # made once per set of files


def test_an_unreadable_file_is_named(pki: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    s = Settings(MIEUX_TLS_CA_FILE=pki["ca"], MIEUX_TLS_CERT_FILE=pki["crt"], MIEUX_TLS_KEY_FILE=missing)  # type: ignore[call-arg]
    with pytest.raises(SettingsError, match="MIEUX_TLS_KEY_FILE"):
        server_credentials(s)


# --- Kafka ----------------------------------------------------------------------------------------------------


def test_kafka_plaintext_adds_nothing() -> None:
    assert Settings().kafka_security() == {}
    assert bus.faust_credentials(Settings()) is None


async def test_kafka_sasl_ssl_reaches_every_client(monkeypatch: pytest.MonkeyPatch, pki: dict[str, Path]) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka-1:9093")
    monkeypatch.setenv("MIEUX_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("MIEUX_KAFKA_USERNAME", "mieux-carbon")
    monkeypatch.setenv("MIEUX_KAFKA_PASSWORD", "pw")
    monkeypatch.setenv("MIEUX_KAFKA_CA_FILE", str(pki["ca"]))
    s = Settings()
    sec = s.kafka_security()
    assert sec["security_protocol"] == "SASL_SSL" and sec["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (sec["sasl_plain_username"], sec["sasl_plain_password"]) == ("mieux-carbon", "pw")
    context = sec["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    # aiokafka's clients take them (nothing connects until start)
    producer = bus.producer(s)
    assert producer.client._security_protocol == "SASL_SSL"
    assert producer.client._sasl_mechanism == "SCRAM-SHA-512"
    consumer = bus.consumer(s, "mieux.carbon.events", group_id="mieux.carbon.projections")
    assert consumer._client._security_protocol == "SASL_SSL"
    admin = bus.AIOKafkaAdminClient(bootstrap_servers=s.bootstrap(), **sec)  # as ensure_topics makes it
    assert admin._client._security_protocol == "SASL_SSL"
    creds = bus.faust_credentials(s)
    assert creds.protocol.value == "SASL_SSL" and creds.mechanism.value == "SCRAM-SHA-512"
    assert creds.username == "mieux-carbon"


def test_kafka_ssl_alone(monkeypatch: pytest.MonkeyPatch, pki: dict[str, Path]) -> None:
    monkeypatch.setenv("MIEUX_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("MIEUX_KAFKA_CA_FILE", str(pki["ca"]))
    sec = Settings().kafka_security()
    assert sec["security_protocol"] == "SSL" and "sasl_mechanism" not in sec
    assert bus.faust_credentials(Settings()).protocol.value == "SSL"


def test_a_missing_kafka_ca_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MIEUX_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("MIEUX_KAFKA_CA_FILE", str(tmp_path / "nope.crt"))
    with pytest.raises(SettingsError, match="MIEUX_KAFKA_CA_FILE"):
        Settings().kafka_security()


# --- the certificate authority ------------------------------------------------------------------------------


def test_a_leaf_is_signed_by_its_ca_for_its_names() -> None:
    ca = certs.new_ca("CA")
    leaf = certs.issue(ca, "mieux-actions", dns=["actions", "mieux-actions"], ips=["127.0.0.1"])
    cert = leaf.cert
    cert.verify_directly_issued_by(ca.cert)  # raises if not
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["actions", "mieux-actions"]
    assert [str(i) for i in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.not_valid_after_utc <= ca.cert.not_valid_after_utc
    assert b"BEGIN PRIVATE KEY" in leaf.key_pem  # PKCS#8, unencrypted: gRPC, PostgreSQL and Kafka read it
    client = certs.issue(ca, "ops", server=False)
    eku = client.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(ca.cert.public_key(), ec.EllipticCurvePublicKey)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_files_are_private_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    path.write_text("old")
    path.chmod(0o644)  # a file left world-readable by something else
    assert certs.write_private(path, "new")
    assert path.read_text() == "new" and mode(path) == 0o600  # a new file renamed over it, never the old mode
    assert not certs.write_private(path, "again", replace=False)
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]  # no temporary file left behind


# --- `mieux dev up --tls` ---------------------------------------------------------------------------------------


def test_the_dev_stack_with_tls_writes_its_material_and_settings(tmp_path: Path) -> None:
    stack = DevStack(tmp_path)
    stack.state = {"tls": True}
    settings = stack._tls_settings()
    assert sorted(p.name for p in stack.tls_dir.iterdir()) == sorted(TLS_FILES)
    assert mode(stack.tls_dir) == 0o700
    for name in TLS_FILES:
        assert mode(stack.tls_dir / name) == (0o600 if name.endswith(".key") else 0o644), name
    s = Settings.model_validate(settings)
    assert s.tls_client_auth and s.tls_cert_file == stack.tls_dir / "server.crt"
    ca = x509.load_pem_x509_certificate((stack.tls_dir / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((stack.tls_dir / "server.crt").read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert "127.0.0.1" in [str(i) for i in sans.get_values_for_type(x509.IPAddress)]
    again = stack._tls_settings()  # kept across restarts: the same files, not a new CA
    assert again == settings
    assert (stack.tls_dir / "ca.crt").read_bytes() == ca.public_bytes(serialization.Encoding.PEM)
    stack.state = {"tls": False}
    assert stack._tls_settings() == {}
    json.dumps(settings)  # what stack.json holds


def test_mieux_dev_takes_tls_and_no_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool | None] = []

    def fake_up(self: DevStack, tls: bool | None = None) -> dict:
        seen.append(tls)
        return {"database_url": "x", "pg_pid": 1, "kafka_bootstrap_servers": "y", "kafka_pid": 2, "tls": bool(tls)}

    monkeypatch.setattr(DevStack, "up", fake_up)
    for argv in (["dev", "up"], ["dev", "up", "--tls"], ["dev", "up", "--no-tls"]):
        assert mieux_main(argv) == 0
    assert seen == [None, True, False]
