"""Settings shared by every service, read from the environment (pydantic-settings).

`DATABASE_URL` and `KAFKA_BOOTSTRAP_SERVERS` point at external servers. When they are unset, the
services use the dev stack started by `mieux dev up`, whose addresses and hashed tokens are in
`$MIEUX_HOME/stack.json` (default `.mieux/`). With neither, start-up fails with a clear message.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

Role = Literal["service", "ops", "finance", "admin"]


class Principal(BaseModel):
    name: str
    roles: frozenset[Role]


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


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
    # sha256(token) -> principal. JSON in MIEUX_AUTH_TOKENS; the dev stack writes its own.
    auth_tokens: dict[str, Principal] | None = Field(default=None, alias="MIEUX_AUTH_TOKENS")
    # the bearer token this process presents when it calls another service or is a CLI
    token: str | None = Field(default=None, alias="MIEUX_TOKEN")

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
    grpc_host: str = Field(default="127.0.0.1", alias="MIEUX_GRPC_HOST")
    grpc_deadline_s: float = Field(default=10.0, alias="MIEUX_GRPC_DEADLINE_S")
    # Prometheus metrics (metrics.py) on this port of grpc_host; off when unset
    metrics_port: int | None = Field(default=None, alias="MIEUX_METRICS_PORT")

    @cached_property
    def stack(self) -> dict:
        path = self.mieux_home / "stack.json"
        if path.exists():
            return json.loads(path.read_text())
        return {}

    def dsn(self) -> str:
        url = self.database_url or self.stack.get("database_url")
        if not url:
            raise SettingsError("no database: set DATABASE_URL or start the dev stack with `mieux dev up`")
        return url

    def bootstrap(self) -> str:
        servers = self.kafka_bootstrap_servers or self.stack.get("kafka_bootstrap_servers")
        if not servers:
            raise SettingsError("no broker: set KAFKA_BOOTSTRAP_SERVERS or start the dev stack with `mieux dev up`")
        return servers

    def tokens(self) -> dict[str, Principal]:
        if self.auth_tokens is not None:
            return self.auth_tokens
        raw = self.stack.get("auth_tokens")
        if not raw:
            raise SettingsError("no tokens: set MIEUX_AUTH_TOKENS or start the dev stack")
        return {h: Principal.model_validate(p) for h, p in raw.items()}

    def client_token(self, role: Role = "ops") -> str:
        """The token a CLI or service client presents: MIEUX_TOKEN, else the dev stack's for `role`."""
        if self.token:
            return self.token
        path = self.mieux_home / "tokens.json"
        if path.exists():
            return json.loads(path.read_text())[role]
        raise SettingsError("no client token: set MIEUX_TOKEN or start the dev stack")


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
