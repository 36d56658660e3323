"""Settings shared by every service, read from the environment (pydantic-settings).

`DATABASE_URL` and `KAFKA_BOOTSTRAP_SERVERS` point at external servers. When they are unset, the
services use the dev stack started by `mieux dev up`, whose addresses and token registry file are in
`$MIEUX_HOME/stack.json` (default `.mieux/`). With neither, start-up fails with a clear message.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

if TYPE_CHECKING:
    from services.kernel.principals import TokenRegistry

Role = Literal["service", "ops", "finance", "admin"]


class Principal(BaseModel):
    """Who calls: a person (roles ops, finance, admin) or a service (role `service` and the full names of the
    calls its flows make: `calls`, its allow-list). `calls` None: whatever the roles admit."""

    model_config = ConfigDict(frozen=True)  # one per registry entry, shared by every call it authenticates

    name: str
    roles: frozenset[Role]
    calls: frozenset[str] | None = None

    def may_call(self, method: str, allowed: frozenset[Role] | None) -> bool:
        """Whether this principal may call `method`, which admits the roles `allowed` (None: an unknown method)."""
        if allowed is None or not (self.roles & allowed):
            return False
        return self.calls is None or method in self.calls


class SettingsError(RuntimeError):
    pass


# Tansu's quirks (DESIGN.md section 8, and the README's "Tansu's quirks"): a waiting fetch returns after
# about half of fetch_max_wait whatever arrives; a group join completes after about half the session
# timeout; its in-memory engine spends time proportional to a partition's length on every fetch that
# returns data, so dev-stack topics have 16 shorter partitions. The dev stack writes these into
# stack.json; the defaults below are for Apache Kafka.
TANSU_SETTINGS = {
    "MIEUX_TOPIC_PARTITIONS": 16,
    "MIEUX_KAFKA_FETCH_MAX_WAIT_MS": 10,
    "MIEUX_KAFKA_SESSION_TIMEOUT_MS": 2000,
    "MIEUX_KAFKA_HEARTBEAT_INTERVAL_MS": 500,
}


class StackFileSource(PydanticBaseSettingsSource):
    """Settings the dev stack wrote into $MIEUX_HOME/stack.json: below the environment, above defaults."""

    def get_field_value(self, field, field_name):  # type: ignore[no-untyped-def]  # pragma: no cover
        return None, field_name, False

    def __init__(self, settings_cls, home: str | None = None):  # type: ignore[no-untyped-def]
        super().__init__(settings_cls)
        self.home = home

    def __call__(self) -> dict:
        home = Path(self.home or os.environ.get("MIEUX_HOME", ".mieux"))
        path = home / "stack.json"
        if not path.exists():
            return {}
        return dict(json.loads(path.read_text()).get("settings", {}))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", env_prefix="", populate_by_name=False)

    @classmethod
    def settings_customise_sources(  # type: ignore[override]
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        home = getattr(init_settings, "init_kwargs", {}).get("MIEUX_HOME")
        return (init_settings, env_settings, StackFileSource(settings_cls, home), file_secret_settings)

    mieux_home: Path = Field(default=Path(".mieux"), alias="MIEUX_HOME")
    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    kafka_bootstrap_servers: str | None = Field(default=None, alias="KAFKA_BOOTSTRAP_SERVERS")
    # the token registry (principals.py): salted entries as JSON inline, and/or in a file read again when it
    # changes (issued and revoked person tokens); the dev stack names its auth-tokens.json in stack.json
    auth_tokens: dict[str, Any] | list[Any] | None = Field(default=None, alias="MIEUX_AUTH_TOKENS")
    auth_tokens_file: Path | None = Field(default=None, alias="MIEUX_AUTH_TOKENS_FILE")
    # the bearer token this process presents when it calls another service or is a CLI (32 characters or more)
    token: SecretStr | None = Field(default=None, alias="MIEUX_TOKEN")

    topic_partitions: int = Field(default=4, alias="MIEUX_TOPIC_PARTITIONS")
    topic_replication: int = Field(default=1, alias="MIEUX_TOPIC_REPLICATION")
    # Tansu has no idempotent producer; turn on against Apache Kafka.
    kafka_idempotent_producer: bool = Field(default=False, alias="MIEUX_KAFKA_IDEMPOTENT_PRODUCER")
    # Tansu: a waiting fetch returns after about half of this, whatever arrives meanwhile.
    kafka_fetch_max_wait_ms: int = Field(default=100, alias="MIEUX_KAFKA_FETCH_MAX_WAIT_MS")
    # Tansu: a group join completes after about half the session timeout.
    kafka_session_timeout_ms: int = Field(default=10000, alias="MIEUX_KAFKA_SESSION_TIMEOUT_MS")
    kafka_heartbeat_interval_ms: int = Field(default=3000, alias="MIEUX_KAFKA_HEARTBEAT_INTERVAL_MS")
    kafka_request_timeout_ms: int = Field(default=5000, alias="MIEUX_KAFKA_REQUEST_TIMEOUT_MS")

    relay_batch_size: int = Field(default=2000, alias="MIEUX_RELAY_BATCH_SIZE")
    relay_poll_interval_s: float = Field(default=0.05, alias="MIEUX_RELAY_POLL_INTERVAL_S")
    projection_batch_size: int = Field(default=2000, alias="MIEUX_PROJECTION_BATCH_SIZE")
    # EventLog.ReadAll sends pages of up to this many events, and closes a page once its events' data reach
    # the bytes (a page is one gRPC message: clients receive 4 MiB at most by default)
    read_all_page_size: int = Field(default=1000, ge=1, alias="MIEUX_READ_ALL_PAGE_SIZE")
    read_all_page_bytes: int = Field(default=1024 * 1024, ge=1, alias="MIEUX_READ_ALL_PAGE_BYTES")
    grpc_host: str = Field(default="127.0.0.1", alias="MIEUX_GRPC_HOST")
    grpc_deadline_s: float = Field(default=10.0, alias="MIEUX_GRPC_DEADLINE_S")
    # explicit limits of every gRPC server: a larger request is RESOURCE_EXHAUSTED before any handler runs;
    # past the concurrency limit a call is refused at once (RESOURCE_EXHAUSTED) rather than queued
    grpc_max_receive_bytes: int = Field(default=4 * 1024 * 1024, alias="MIEUX_GRPC_MAX_RECEIVE_BYTES")
    grpc_max_send_bytes: int = Field(default=16 * 1024 * 1024, alias="MIEUX_GRPC_MAX_SEND_BYTES")
    grpc_max_concurrent_rpcs: int = Field(default=200, alias="MIEUX_GRPC_MAX_CONCURRENT_RPCS")
    # a policy's non-final error (not a passing fault, not a refusal): attempts before the event is parked,
    # and the longest wait between two of them (the wait doubles from 0.2 s)
    policy_max_attempts: int = Field(default=10, alias="MIEUX_POLICY_MAX_ATTEMPTS")
    policy_max_backoff_s: float = Field(default=60.0, alias="MIEUX_POLICY_MAX_BACKOFF_S")
    # how long a call waits for a pooled database connection before it answers UNAVAILABLE
    db_acquire_timeout_s: float = Field(default=5.0, alias="MIEUX_DB_ACQUIRE_TIMEOUT_S")
    # Prometheus metrics (metrics.py) on this port of metrics_host; off when unset
    metrics_port: int | None = Field(default=None, alias="MIEUX_METRICS_PORT")
    metrics_host: str = Field(default="127.0.0.1", alias="MIEUX_METRICS_HOST")
    # the stats service's HTTP server (the annual report page, GET /reports/YEAR) on this port of grpc_host, with
    # the gRPC TLS certificate when there is one; 0: off (`mieux up` serves it on 8056)
    stats_http_port: int = Field(default=0, ge=0, le=65535, alias="MIEUX_STATS_HTTP_PORT")
    # the IATI organisation identifier of the reporting organisation (ICMPD) in `mieux export iati`: the default
    # is a placeholder (no identifier of ICMPD was found in the IATI and DAC codelists), to be set
    iati_reporting_org_ref: str = Field(default="XI-PLACEHOLDER-ICMPD", alias="MIEUX_IATI_REPORTING_ORG_REF")
    # gRPC server reflection (grpcurl list/describe): on in the dev stack (stack.json), off elsewhere
    grpc_reflection: bool = Field(default=False, alias="MIEUX_GRPC_REFLECTION")
    # a second, plaintext port of grpc_host serving only grpc.health.v1.Health (Kubernetes' gRPC probes and
    # compose's health check cannot speak TLS); off when unset
    grpc_health_port: int | None = Field(default=None, alias="MIEUX_GRPC_HEALTH_PORT")
    # TLS of gRPC (grpckit), PEM files. A server with a certificate and its key serves TLS only; every client
    # (service to service, the CLI) uses TLS when a CA is set, trusts that CA alone, and presents its own
    # certificate when it has one. MIEUX_TLS_CLIENT_AUTH: servers require a client certificate of that CA.
    tls_cert_file: Path | None = Field(default=None, alias="MIEUX_TLS_CERT_FILE")
    tls_key_file: Path | None = Field(default=None, alias="MIEUX_TLS_KEY_FILE")
    tls_ca_file: Path | None = Field(default=None, alias="MIEUX_TLS_CA_FILE")
    tls_client_auth: bool = Field(default=False, alias="MIEUX_TLS_CLIENT_AUTH")
    # Kafka over TLS (SSL), or TLS with SASL SCRAM (SASL_SSL); PLAINTEXT for the dev stack's Tansu
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_SSL"] = Field(
        default="PLAINTEXT", alias="MIEUX_KAFKA_SECURITY_PROTOCOL"
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256"] = Field(
        default="SCRAM-SHA-512", alias="MIEUX_KAFKA_SASL_MECHANISM"
    )
    kafka_username: str | None = Field(default=None, alias="MIEUX_KAFKA_USERNAME")
    kafka_password: SecretStr | None = Field(default=None, alias="MIEUX_KAFKA_PASSWORD")
    # the CA the brokers' certificates are checked against (unset: the system's CAs)
    kafka_ca_file: Path | None = Field(default=None, alias="MIEUX_KAFKA_CA_FILE")
    # signed events (signing.py): this service's Ed25519 private key, PKCS#8 PEM inline or in a file (unset: the
    # dev stack's signing/<service>.pem), its key id (unset: derived from the public key), and the public keys
    # of every producer, JSON {service: {key id: base64 raw public key or PEM}} (old key ids stay, for rotation)
    signing_key: SecretStr | None = Field(default=None, alias="MIEUX_SIGNING_KEY")
    signing_key_file: Path | None = Field(default=None, alias="MIEUX_SIGNING_KEY_FILE")
    signing_key_id: str | None = Field(default=None, alias="MIEUX_SIGNING_KEY_ID")
    verify_keys: dict[str, dict[str, str]] | None = Field(default=None, alias="MIEUX_VERIFY_KEYS")
    # personal data (personal.py): the master key wrapping each person's data key, base64 of 32 bytes, inline or in
    # a file (the dev stack's personal-data.key); the experts and logistics services refuse to start without one.
    # Rotation: the old keys, comma-separated, until every data key is rewrapped under the new one
    personal_data_key: SecretStr | None = Field(default=None, alias="MIEUX_PERSONAL_DATA_KEY")
    personal_data_key_file: Path | None = Field(default=None, alias="MIEUX_PERSONAL_DATA_KEY_FILE")
    personal_data_previous_keys: SecretStr | None = Field(default=None, alias="MIEUX_PERSONAL_DATA_PREVIOUS_KEYS")

    @model_validator(mode="after")
    def _security_is_whole(self) -> Settings:
        """Fail at start, naming the settings, when TLS or Kafka authentication is half configured."""
        problems = []
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            problems.append("MIEUX_TLS_CERT_FILE and MIEUX_TLS_KEY_FILE go together: set both or neither")
        if self.tls_cert_file is not None and self.tls_ca_file is None:
            problems.append(
                "MIEUX_TLS_CERT_FILE is set but MIEUX_TLS_CA_FILE is not: the CA the other side's certificate "
                "is checked against"
            )
        if self.tls_client_auth and (self.tls_ca_file is None or self.tls_cert_file is None):
            problems.append(
                "MIEUX_TLS_CLIENT_AUTH (mutual TLS) needs MIEUX_TLS_CA_FILE, MIEUX_TLS_CERT_FILE and MIEUX_TLS_KEY_FILE"
            )
        sasl = self.kafka_security_protocol == "SASL_SSL"
        if sasl and (not self.kafka_username or self.kafka_password is None):
            problems.append(
                "MIEUX_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs MIEUX_KAFKA_USERNAME and MIEUX_KAFKA_PASSWORD"
            )
        if not sasl and (self.kafka_username or self.kafka_password is not None):
            problems.append(
                "MIEUX_KAFKA_USERNAME and MIEUX_KAFKA_PASSWORD are set but MIEUX_KAFKA_SECURITY_PROTOCOL is not "
                "SASL_SSL"
            )
        if self.kafka_security_protocol == "PLAINTEXT" and self.kafka_ca_file is not None:
            problems.append("MIEUX_KAFKA_CA_FILE is set but MIEUX_KAFKA_SECURITY_PROTOCOL is PLAINTEXT")
        if self.token is not None and len(self.token.get_secret_value()) < 32:
            problems.append("MIEUX_TOKEN is shorter than 32 characters: no token that short is accepted")
        if problems:
            raise SettingsError("; ".join(problems))
        return self

    @cached_property
    def stack(self) -> dict:
        path = self.mieux_home / "stack.json"
        if path.exists():
            return json.loads(path.read_text())
        return {}

    def dsn(self, service: str | None = None) -> str:
        """The database URL: DATABASE_URL; else the dev stack's, as `service`'s own role when the stack has one
        for it (a service's process), else as the stack's superuser (the CLI, tests' own schemas)."""
        own = self.stack.get("service_database_urls", {}).get(service) if service else None
        url = self.database_url or own or self.stack.get("database_url")
        if not url:
            raise SettingsError("no database: set DATABASE_URL or start the dev stack with `mieux dev up`")
        return url

    def bootstrap(self) -> str:
        servers = self.kafka_bootstrap_servers or self.stack.get("kafka_bootstrap_servers")
        if not servers:
            raise SettingsError("no broker: set KAFKA_BOOTSTRAP_SERVERS or start the dev stack with `mieux dev up`")
        return servers

    @cached_property
    def _registry(self) -> Any:
        from services.kernel.principals import TokenRegistry, parse_entries

        if self.auth_tokens is None and self.auth_tokens_file is None:
            raise SettingsError("no tokens: set MIEUX_AUTH_TOKENS or MIEUX_AUTH_TOKENS_FILE, or start the dev stack")
        fixed = parse_entries(self.auth_tokens, "MIEUX_AUTH_TOKENS") if self.auth_tokens is not None else []
        return TokenRegistry(fixed, self.auth_tokens_file)

    def tokens(self) -> TokenRegistry:
        """The token registry of this process (one per Settings; its file is re-read when it changes)."""
        return self._registry

    def kafka_security(self) -> dict[str, Any]:
        """The aiokafka client arguments of MIEUX_KAFKA_SECURITY_PROTOCOL (none for PLAINTEXT)."""
        if self.kafka_security_protocol == "PLAINTEXT":
            return {}
        import ssl

        cafile = str(self.kafka_ca_file) if self.kafka_ca_file else None
        try:
            context = ssl.create_default_context(cafile=cafile)
        except OSError as e:
            raise SettingsError(f"MIEUX_KAFKA_CA_FILE {cafile}: {e}") from e
        out: dict[str, Any] = {"security_protocol": self.kafka_security_protocol, "ssl_context": context}
        if self.kafka_security_protocol == "SASL_SSL":
            assert self.kafka_password is not None
            out.update(
                sasl_mechanism=self.kafka_sasl_mechanism,
                sasl_plain_username=self.kafka_username,
                sasl_plain_password=self.kafka_password.get_secret_value(),
            )
        return out

    def client_token(self, who: str = "ops") -> str:
        """The token a CLI or service client presents: MIEUX_TOKEN, else the dev stack's token of `who`: a
        person's role (`ops`, `finance`, `admin`) for the CLI, or the calling service's own name (`experts`)."""
        if self.token is not None:
            return self.token.get_secret_value()
        path = self.mieux_home / "tokens.json"
        if path.exists():
            tokens = json.loads(path.read_text())
            if who in tokens:
                return str(tokens[who])
        raise SettingsError(f"no client token: set MIEUX_TOKEN or start the dev stack (which has one for {who!r})")


SERVICE_PORTS: dict[str, int] = {
    "requests": 50051,
    "actions": 50052,
    "experts": 50053,
    "logistics": 50054,
    "carbon": 50055,
    "stats": 50056,
}


def service_port(service: str) -> int:
    return int(os.environ.get(f"MIEUX_{service.upper()}_PORT", SERVICE_PORTS[service]))


def service_address(service: str) -> str:
    """Where a service's gRPC server is: MIEUX_<SERVICE>_ADDR, else loopback on its port."""
    return os.environ.get(f"MIEUX_{service.upper()}_ADDR", f"127.0.0.1:{service_port(service)}")


def load() -> Settings:
    return Settings()
