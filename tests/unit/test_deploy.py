"""The deploy files (deploy/) kept true against the code, without a Docker engine or a cluster.

Every YAML parses; the Kubernetes manifests validate against the Kubernetes JSON schemas (the pinned
`kubernetes-validate` package) and the operators' resources carry their CRDs' required fields; every
environment variable the deploy files set is one the code reads, and every setting without a default is
set; ports, addresses, topic names and partitions match the code's.

And what keeps them safe: TLS on every connection (gRPC with mutual TLS, Kafka with TLS and SCRAM, PostgreSQL
with sslmode=verify-full), reflection off, metrics on a set address, one database role and one Kafka user per
service whose ACLs are what its consumer groups need (derived from the services, services.ops.catalog),
NetworkPolicies admitting only the callers each service has (derived from the code that calls another
service), PodDisruptionBudgets, compose's containers limited, read-only and without capabilities, private
secrets files, the personal-data master key given to the services that keep personal data alone (each its
own), and images pinned by digest or marked as not yet.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import json
import re
import shutil
import stat
import subprocess
import tomllib
from collections.abc import Iterator
from concurrent import futures
from functools import cache
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest
import yaml
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import services
from services.carbon.settings import CarbonSettings
from services.kernel.bus import DLQ_PARTITIONS, dlq_topic
from services.kernel.envelope import topic_for
from services.kernel.policy import Policy
from services.kernel.projection import Projection
from services.kernel.runner import projection_group
from services.kernel.settings import SERVICE_PORTS, Settings
from services.ops import catalog

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
CERT_MANAGER = K8S / "cert-manager"

# Kubernetes versions the built-in resources must validate against: the oldest we support (native gRPC
# probes are GA since 1.27) and the newest the pinned schemas know.
K8S_VERSIONS = ("1.29", "latest")

# Set by the Dockerfile for the interpreter and pip, not for the application.
RUNTIME_ENV = {
    "PATH",
    "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE",
    "PIP_NO_CACHE_DIR",
    "PIP_DISABLE_PIP_VERSION_CHECK",
}


# --- what the code says --------------------------------------------------------------------------------


def _aliases(model: type) -> dict[str, Any]:
    return {f.alias: f for f in model.model_fields.values() if f.alias}


@cache
def settings_read() -> frozenset[str]:
    """Every environment variable the code reads: the settings' aliases, MIEUX_<SERVICE>_PORT/ADDR, and
    the names read straight from os.environ anywhere in services/."""
    names = set(_aliases(Settings)) | set(_aliases(CarbonSettings))
    for svc in SERVICE_PORTS:
        names |= {f"MIEUX_{svc.upper()}_PORT", f"MIEUX_{svc.upper()}_ADDR"}
    pattern = re.compile(r"""os\.environ(?:\.get\(|\[)\s*["']([A-Z][A-Z0-9_]*)["']""")
    for path in (ROOT / "services").rglob("*.py"):
        names |= set(pattern.findall(path.read_text()))
    return frozenset(names)


# Settings a deploy may leave unset although their default is None: an alternative to another that is set
# (the signing key or the personal-data master key inline, when its file is given), derived (the key id, from
# the public key) or needed only during a rotation (the previous master keys); and the files of keys some
# processes have not: the signing key's, which the ops CLI, signing nothing, has not, and the personal-data
# master key's, which only the services that keep personal data (experts, logistics) have.
OPTIONAL_IN_A_DEPLOY = {
    "MIEUX_SIGNING_KEY",
    "MIEUX_SIGNING_KEY_ID",
    "MIEUX_PERSONAL_DATA_KEY",
    "MIEUX_PERSONAL_DATA_PREVIOUS_KEYS",
}
SIGNERS_ONLY = {"MIEUX_SIGNING_KEY_FILE"}
PERSONAL_DATA_ONLY = {"MIEUX_PERSONAL_DATA_KEY_FILE"}
# every setting of the personal-data master key (services/kernel/personal.py): no other process may have one
PERSONAL_DATA_SETTINGS = {
    "MIEUX_PERSONAL_DATA_KEY",
    "MIEUX_PERSONAL_DATA_KEY_FILE",
    "MIEUX_PERSONAL_DATA_PREVIOUS_KEYS",
}


@cache
def settings_without_default() -> frozenset[str]:
    """Settings a deploy must set: required fields and those whose default is None, which means "ask the dev
    stack's stack.json" (no deploy has one) or "off" (TLS, the health and metrics ports, the Kafka user):
    a deploy decides each."""
    out = set()
    for model in (Settings, CarbonSettings):
        for alias, f in _aliases(model).items():
            if f.is_required() or f.default is None:
                out.add(alias)
    return frozenset(out - OPTIONAL_IN_A_DEPLOY)


@cache
def keeps_personal_data() -> frozenset[str]:
    """The services that keep personal data: their code builds the master keys (`MasterKeys.from_settings`,
    services/kernel/personal.py), so they refuse to start without one."""
    return frozenset(
        svc
        for svc in SERVICE_PORTS
        if any("MasterKeys.from_settings(" in p.read_text() for p in (ROOT / "services" / svc).rglob("*.py"))
    )


def test_the_code_facts_are_found() -> None:
    """The collectors above see what they must (else every check below would pass vacuously)."""
    read = settings_read()
    assert {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "MIEUX_AUTH_TOKENS", "MIEUX_TOKEN"} <= read
    assert {"MIEUX_LOG_LEVEL", "MIEUX_HOME", "MIEUX_CARBON_RADIATIVE_FORCING", "MIEUX_ACTIONS_ADDR"} <= read
    assert settings_without_default() >= {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "MIEUX_AUTH_TOKENS"}
    assert settings_without_default() >= {"MIEUX_TLS_CERT_FILE", "MIEUX_TLS_CA_FILE", "MIEUX_KAFKA_PASSWORD"}
    assert "MIEUX_TOPIC_PARTITIONS" not in settings_without_default()
    # the names and roles of experts and of team members are sealed under a key of each person's
    assert keeps_personal_data() == {"experts", "logistics"}
    assert {a for a in _aliases(Settings) if a.startswith("MIEUX_PERSONAL_DATA_")} == PERSONAL_DATA_SETTINGS
    assert PERSONAL_DATA_ONLY <= settings_without_default() and PERSONAL_DATA_SETTINGS <= settings_read()
    assert set(make_secrets().PERSONAL_DATA) == keeps_personal_data()
    # experts asks actions before a deployment, logistics asks experts about a traveller; stats builds the report
    # page from actions, logistics and carbon
    assert callers() == {
        "actions": {"experts", "stats"},
        "experts": {"logistics"},
        "logistics": {"stats"},
        "carbon": {"stats"},
    }


@cache
def consumer_groups() -> dict[str, list[str]]:
    """service -> the consumer groups its process runs (mieux.<service>.projections for all its projections,
    mieux.<service>.<policy> for each policy), read from the Service each `python -m services.<service>` builds."""
    return {svc: [g for g, _ in built.consumer_groups()] for svc, built in catalog.services().items()}


@cache
def consumed_topics() -> dict[str, set[str]]:
    """service -> the topics its consumer groups read."""
    return {svc: {t for _, ts in built.consumer_groups() for t in ts} for svc, built in catalog.services().items()}


def written_topics(svc: str) -> set[str]:
    """What a service publishes: its own event topic (the relay) and its groups' dead letters."""
    return {topic_for(svc)} | {dlq_topic(g) for g in consumer_groups()[svc]}


@cache
def callers() -> dict[str, set[str]]:
    """service -> the services whose code calls it: `service_address("<it>")` in a context's modules other
    than its CLI clients (client.py, cli.py: the ops CLI's, run from the ops pod)."""
    out: dict[str, set[str]] = {}
    pattern = re.compile(r"""service_address\(\s*["']([a-z]+)["']\s*\)""")
    for caller in SERVICE_PORTS:
        for path in (ROOT / "services" / caller).glob("*.py"):
            if path.name in ("client.py", "cli.py"):
                continue
            for callee in pattern.findall(path.read_text()):
                if callee != caller:
                    out.setdefault(callee, set()).add(caller)
    return out


def declared(module: str, base: type) -> set[str]:
    """The names of the classes of `base` a context's module declares (none if it has no such module)."""
    if importlib.util.find_spec(module) is None:
        return set()
    mod = importlib.import_module(module)
    return {
        obj.name
        for obj in vars(mod).values()
        if isinstance(obj, type) and issubclass(obj, base) and obj.__module__ == mod.__name__ and hasattr(obj, "name")
    }


def test_every_declared_projection_and_policy_runs_in_its_service() -> None:
    """Each service runs every projection its context's projections.py declares, on one consumer group, and
    each policy of its policies.py on a group of its own: nothing is declared and left out of the service."""
    for svc, built in catalog.services().items():
        projections = declared(f"services.{svc}.projections", Projection)
        assert {p.name for p in built.projections} == projections, svc
        policies = declared(f"services.{svc}.policies", Policy)
        assert {p.name for p in built.policies} == policies, svc
        expected = ([projection_group(svc)] if projections else []) + sorted(f"mieux.{svc}.{p}" for p in policies)
        assert sorted(consumer_groups()[svc]) == sorted(expected), svc
    assert set(catalog.CONTEXTS) == set(SERVICE_PORTS)


def event_topics() -> set[str]:
    return {topic_for(svc) for svc in SERVICE_PORTS}


def dlq_topics() -> set[str]:
    return {dlq_topic(g) for gs in consumer_groups().values() for g in gs}


def dlq_partitions() -> int:
    """The partitions the runners give a dead-letter topic they create (bus.ensure_dlq)."""
    return DLQ_PARTITIONS


def check_env(env: dict[str, Any], where: str, signs: bool = True, personal: bool = False) -> Settings:
    """Every variable is one the code reads; every setting without a default is set (the signing key's file
    by the services that sign, `signs`; the personal-data master key's file by those that keep personal data,
    `personal`, and by no other); the values parse as the services parse them (pydantic-settings from the
    environment, which also refuses a half TLS or Kafka configuration); and the exposure is closed: TLS with
    mutual authentication, Kafka over TLS with SCRAM, PostgreSQL with sslmode=verify-full, no reflection,
    metrics on an address set on purpose."""
    unknown = set(env) - settings_read()
    assert not unknown, f"{where} sets variables no code reads: {sorted(unknown)}"
    exempt = (set() if signs else SIGNERS_ONLY) | (set() if personal else PERSONAL_DATA_ONLY)
    missing = settings_without_default() - set(env) - exempt
    assert not missing, f"{where} leaves settings without a default unset: {sorted(missing)}"
    master = sorted(set(env) & PERSONAL_DATA_SETTINGS)
    assert personal or not master, f"{where} keeps no personal data, yet it is given a master key: {master}"
    # a Secret reference stands for a value of the right form (the checks of the Secrets are below)
    forms = {"MIEUX_AUTH_TOKENS": "{}", "MIEUX_VERIFY_KEYS": "{}", "MIEUX_TOKEN": "t" * 43}  # a token: 32 or more
    given = {k: forms.get(k, "from-a-secret") if isinstance(v, dict) else str(v) for k, v in env.items()}
    with pytest.MonkeyPatch.context() as mp:
        for name in settings_read():
            mp.delenv(name, raising=False)
        for name, value in given.items():
            mp.setenv(name, value)
        settings = Settings()  # a value a setting cannot parse (e.g. "ture"), or half TLS, fails here
        CarbonSettings()
    assert settings.grpc_host == "0.0.0.0", f"{where}: a container must listen on every interface"
    assert settings.kafka_idempotent_producer, f"{where}: Apache Kafka has the idempotent producer"
    assert settings.tls_cert_file and settings.tls_key_file and settings.tls_ca_file, f"{where}: gRPC TLS"
    assert settings.tls_client_auth, f"{where}: mutual TLS"
    assert settings.grpc_reflection is False and "MIEUX_GRPC_REFLECTION" in env, f"{where}: reflection off"
    assert "MIEUX_METRICS_HOST" in env, f"{where}: metrics bound to an address set on purpose"
    assert settings.grpc_health_port not in (None, *SERVICE_PORTS.values()), where
    assert settings.kafka_security_protocol == "SASL_SSL", f"{where}: Kafka over TLS with SCRAM"
    assert settings.kafka_sasl_mechanism.startswith("SCRAM-") and settings.kafka_ca_file, where
    return settings


def check_database_url(url: str, role: str, where: str) -> dict[str, str]:
    """A service's own role, TLS with the server's name checked (verify-full) against a CA file."""
    parts = urlsplit(url)
    assert parts.scheme in ("postgresql", "postgres"), where
    assert parts.username == role, f"{where}: the database role is {parts.username}, not {role}"
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    assert query.get("sslmode") == "verify-full", f"{where}: sslmode={query.get('sslmode')}"
    assert query.get("sslrootcert", "").startswith("/"), f"{where}: the CA the server is checked against"
    return query


COMPOSE_VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::\?[^}]*|:-([^}]*))?\}")


def interpolate(value: Any, variables: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:?message} and ${VAR:-default}, from `variables` (deploy/.env)."""

    def sub(m: re.Match[str]) -> str:
        if m.group(1) in variables:
            return variables[m.group(1)]
        assert m.group(2) is not None, f"${{{m.group(1)}}} is neither in deploy/.env nor defaulted"
        return m.group(2)

    return COMPOSE_VAR.sub(sub, str(value))


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What make_secrets.py writes, into a deploy folder of its own."""
    out = tmp_path_factory.mktemp("deploy")
    assert make_secrets().main(["--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def dot_env(made: Path) -> dict[str, str]:
    """What make_secrets.py writes into deploy/.env, for compose's interpolation."""
    return dotenv(made / ".env")


# --- every YAML parses ---------------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert files
    return [f for f in files if "secrets" not in f.relative_to(DEPLOY).parts]  # make_secrets.py's output


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs)


# --- compose -------------------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def compose_services() -> dict[str, dict[str, Any]]:
    """The compose services that run a context: `python -m services.<context>`."""
    out = {}
    for name, spec in compose()["services"].items():
        cmd = spec.get("command") or []
        if cmd[:2] == ["python", "-m"]:
            out[name] = spec
    return out


def compose_mieux() -> dict[str, dict[str, Any]]:
    """The six services and the ops CLI container: what reads the settings."""
    return {**compose_services(), "ops": compose()["services"]["ops"]}


def brokers() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose()["services"].items() if "NODE_ID" in s.get("environment", {})}


def test_compose_runs_every_service_with_its_port_and_health_check() -> None:
    svcs = compose_services()
    assert set(svcs) == set(SERVICE_PORTS)
    for name, spec in svcs.items():
        port = SERVICE_PORTS[name]
        assert spec["command"] == ["python", "-m", f"services.{name}"]
        # two replicas, and no fixed host port (two replicas would both want it); clients find every replica
        # under the service's name (gRPC's round_robin over the addresses it resolves to)
        assert spec["deploy"]["replicas"] == 2, name
        assert "ports" not in spec and "container_name" not in spec, name
        assert spec["environment"][f"MIEUX_{name.upper()}_ADDR"] == f"{name}:{port}"
        # the health check asks the plaintext health port (its gRPC port speaks TLS only)
        assert spec["healthcheck"]["test"][-1] == spec["environment"]["MIEUX_GRPC_HEALTH_PORT"]
        assert spec["healthcheck"]["test"][:-1] == ["CMD", "python", healthcheck_path()]
        deps = spec["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["kafka-setup"]["condition"] == "service_completed_successfully"
        assert deps["tls-init"]["condition"] == "service_completed_successfully"
        assert set(deps) <= set(compose()["services"]), deps


def test_compose_env_is_what_the_settings_read(dot_env: dict[str, str], made: Path) -> None:
    services_ = compose()["services"]
    pg = {k: interpolate(v, dot_env) for k, v in services_["postgres"]["environment"].items()}
    scram = dict(
        pair.split("=", 1) for pair in interpolate(brokers()["kafka-1"]["environment"]["SCRAM_USERS"], dot_env).split()
    )
    for name, spec in compose_mieux().items():
        env = {k: interpolate(v, dot_env) for k, v in spec["environment"].items()}
        settings = check_env(
            env, f"compose service {name}", signs=name != "ops", personal=name in keeps_personal_data()
        )
        for svc, port in SERVICE_PORTS.items():
            host, p = env[f"MIEUX_{svc.upper()}_ADDR"].rsplit(":", 1)
            assert host in compose_services() and compose_services()[host]["command"][-1] == f"services.{svc}"
            assert int(p) == port
        for server in env["KAFKA_BOOTSTRAP_SERVERS"].split(","):
            host, p = server.rsplit(":", 1)
            assert host in brokers() and p == "9093", "the brokers' CLIENT listener (TLS, SCRAM)"
        # its own database role, created by the database's first start with the password it presents
        url = urlsplit(env["DATABASE_URL"])
        query = check_database_url(env["DATABASE_URL"], name, f"compose service {name}")
        assert url.hostname == "postgres" and url.path.lstrip("/") == pg["POSTGRES_DB"]
        assert url.password == dot_env[f"PG_PASSWORD_{name.upper()}"] == pg[f"PG_PASSWORD_{name.upper()}"]
        assert name in pg["SERVICE_ROLES"].split() or name == "ops"
        assert query["sslrootcert"] == str(settings.tls_ca_file)  # the CA in its TLS volume signed postgres's
        # its own Kafka user, created by the brokers with the password it presents
        assert env["MIEUX_KAFKA_USERNAME"] == f"mieux-{name}"
        assert scram[env["MIEUX_KAFKA_USERNAME"]] == env["MIEUX_KAFKA_PASSWORD"]
        # each service presents a token of its own, which authenticates as that service
        # the .env's registry alone (not a dev stack's registry file the session may have running)
        registry = Settings.model_validate(
            {"MIEUX_AUTH_TOKENS": json.loads(env["MIEUX_AUTH_TOKENS"]), "MIEUX_AUTH_TOKENS_FILE": None}
        ).tokens()
        principal = registry.authenticate(env["MIEUX_TOKEN"])
        assert (
            principal is not None
            and principal.name == name
            and principal.roles == frozenset({"ops" if name == "ops" else "service"})
        )
        if name != "ops":  # its signing key (tls-init puts deploy/signing/<name>.pem there), which the keys verify
            assert env["MIEUX_SIGNING_KEY_FILE"] == str(
                PurePosixPath(env["MIEUX_TLS_CERT_FILE"]).parent / "signing.pem"
            )
            assert_signs(made / "signing" / f"{name}.pem", env["MIEUX_VERIFY_KEYS"], name)
        if name in keeps_personal_data():  # its master key (tls-init puts deploy/personal-data/<name>.key there)
            assert env["MIEUX_PERSONAL_DATA_KEY_FILE"] == str(
                PurePosixPath(env["MIEUX_TLS_CERT_FILE"]).parent / "personal-data.key"
            )
            master_key(made / "personal-data" / f"{name}.key", name)
    assert set(pg["SERVICE_ROLES"].split()) == set(SERVICE_PORTS)


def assert_signs(key_file: Path, verify_keys: str, service: str) -> None:
    """The service starts with this key (signing.signer_for refuses one the verify keys do not hold)."""
    from services.kernel.signing import signer_for

    settings = Settings(MIEUX_SIGNING_KEY_FILE=key_file, MIEUX_VERIFY_KEYS=json.loads(verify_keys))  # type: ignore[call-arg]
    assert signer_for(settings, service).service == service
    assert set(json.loads(verify_keys)) == set(SERVICE_PORTS)


def master_key(key_file: Path, service: str) -> bytes:
    """The master key the service starts with from this file (personal.MasterKeys.from_settings refuses one
    that is not base64 of 32 bytes), with no other master key setting around."""
    from services.kernel.personal import MasterKeys

    with pytest.MonkeyPatch.context() as mp:
        for name in PERSONAL_DATA_SETTINGS:
            mp.delenv(name, raising=False)
        settings = Settings(MIEUX_PERSONAL_DATA_KEY_FILE=key_file)  # type: ignore[call-arg]
        assert settings.personal_data_key is None and settings.personal_data_previous_keys is None
        masters = MasterKeys.from_settings(settings, service)
    assert masters.previous == ()
    return masters.current


def tls_volume(spec: dict[str, Any], folder: str) -> str:
    """The named volume a compose service mounts (read-only) at `folder`."""
    for v in spec["volumes"]:
        source, target, *mode = v.split(":")
        if target == folder:
            assert mode == ["ro"], v
            return source
    raise AssertionError(f"nothing mounted at {folder}: {spec['volumes']}")


def test_compose_gives_each_container_its_own_tls_files(made: Path) -> None:
    """tls-init copies each name's certificate and key (from deploy/tls/, make_secrets.py's) into a volume
    of its own, owned by the user the container runs as; each container mounts its volume alone."""
    init = compose()["services"]["tls-init"]
    script = "\n".join(init["command"])
    outs = {t.split(":")[1].removeprefix("/out/"): t.split(":")[0] for t in init["volumes"] if ":/out/" in t}
    assert "./tls:/in:ro" in init["volumes"] and init.get("network_mode") == "none"
    for name, spec in compose_mieux().items():
        folder = str(PurePosixPath(spec["environment"]["MIEUX_TLS_CERT_FILE"]).parent)
        assert {spec["environment"][k] for k in ("MIEUX_TLS_CERT_FILE", "MIEUX_TLS_KEY_FILE", "MIEUX_TLS_CA_FILE")} == {
            f"{folder}/tls.crt",
            f"{folder}/tls.key",
            f"{folder}/ca.crt",
        }
        assert tls_volume(spec, folder) == outs[name] == f"tls-{name}"
        assert (made / "tls" / f"{name}.crt").exists()
    assert re.search(r"for s in ([a-z ]+); do put \"\$\$s\" 10001", script).group(1).split() == [*SERVICE_PORTS, "ops"]
    for b in brokers():
        assert tls_volume(compose()["services"][b], "/etc/kafka/tls") == outs[b] == f"tls-{b}"
        assert (made / "tls" / f"{b}.crt").exists()
    assert tls_volume(compose()["services"]["postgres"], "/etc/mieux/tls") == outs["postgres"]
    assert "put postgres 999" in script and 'kafka-1 kafka-2 kafka-3; do put "$$b" 1000' in script
    assert "./signing:/in-signing:ro" in init["volumes"]
    loop = re.search(r"for s in ([a-z ]+); do  # each service's signing key", script)
    assert loop and loop.group(1).split() == list(SERVICE_PORTS)
    assert 'install -m 0400 -o 10001 -g 10001 "/in-signing/$$s.pem" "/out/$$s/signing.pem"' in script
    # people's own tokens (salted hashes): into every service's volume and ops's, where MIEUX_AUTH_TOKENS_FILE is
    assert "./people:/in-people:ro" in init["volumes"]
    loop = re.search(r"for s in ([a-z ]+); do  # people's tokens", script)
    assert loop and loop.group(1).split() == [*SERVICE_PORTS, "ops"]
    assert 'install -m 0400 -o 10001 -g 10001 /in-people/people.json "/out/$$s/people.json"' in script
    assert json.loads((made / "people" / "people.json").read_text()) == {"tokens": []}
    assert mode(made / "people" / "people.json") == 0o600
    people = kubernetes_secrets(made)["mieux-people"]["stringData"]["people.json"]
    assert json.loads(people) == {"tokens": []}
    # the personal-data master key: into the volume of each service that keeps personal data, and no other's
    assert "./personal-data:/in-personal-data:ro" in init["volumes"]
    loop = re.search(r"for s in ([a-z ]+); do  # the master key of each service that keeps personal data", script)
    assert loop and loop.group(1).split() == [s for s in SERVICE_PORTS if s in keeps_personal_data()]
    install = 'install -m 0400 -o 10001 -g 10001 "/in-personal-data/$$s.key" "/out/$$s/personal-data.key"'
    assert install in script and script.count("/in-personal-data/") == 1
    for name in keeps_personal_data():
        assert (made / "personal-data" / f"{name}.key").exists()
    assert 'install -m 0400 -o "$$2" -g "$$2" "/in/$$1.key"' in script  # keys: their owner alone


def test_compose_containers_are_limited_read_only_and_without_capabilities() -> None:
    for name, spec in compose()["services"].items():
        assert spec.get("read_only") is True, f"{name}: a read-only root filesystem"
        assert spec.get("cap_drop") == ["ALL"], f"{name}: every capability dropped"
        assert set(spec.get("cap_add", [])) <= ({"CHOWN", "DAC_OVERRIDE", "FOWNER"} if name == "tls-init" else set())
        assert "no-new-privileges:true" in spec.get("security_opt", []), name
        limits = spec.get("deploy", {}).get("resources", {}).get("limits", {})
        assert float(limits.get("cpus", 0)) > 0 and limits.get("memory"), f"{name}: CPU and memory limits"
        assert spec.get("user") != "root" and not spec.get("privileged"), name


def server_properties() -> dict[str, str]:
    """The broker configuration deploy/kafka/start.sh writes (its heredoc)."""
    text = (DEPLOY / "kafka" / "start.sh").read_text()
    body = text.split('cat > "$conf/server.properties" <<EOF\n', 1)[1].split("\nEOF\n", 1)[0]
    props = {}
    for line in body.splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            props[key] = value.replace("\\$", "$")
    return props


def test_compose_kafka_is_kraft_with_three_brokers_rf3_min_isr2() -> None:
    props = server_properties()
    assert len(brokers()) == 3
    voters = dict(v.split("@") for v in brokers()["kafka-1"]["environment"]["CONTROLLER_QUORUM_VOTERS"].split(","))
    for name, spec in brokers().items():
        env = spec["environment"]
        assert spec["image"].startswith("apache/kafka:")
        assert spec["entrypoint"] == ["/bin/bash", "/opt/mieux/kafka/start.sh"]
        assert "./kafka/start.sh:/opt/mieux/kafka/start.sh:ro" in spec["volumes"]
        assert voters[str(env["NODE_ID"])].split(":")[0] == name == spec["hostname"]
        assert env["CONTROLLER_QUORUM_VOTERS"] == brokers()["kafka-1"]["environment"]["CONTROLLER_QUORUM_VOTERS"]
        assert "healthcheck" in spec
    assert set(props["process.roles"].split(",")) == {"broker", "controller"}
    assert props["controller.quorum.voters"] == "${CONTROLLER_QUORUM_VOTERS}" and props["node.id"] == "${NODE_ID}"
    assert int(props["default.replication.factor"]) == len(brokers())
    assert int(props["offsets.topic.replication.factor"]) == len(brokers())
    assert int(props["min.insync.replicas"]) == 2
    assert props["auto.create.topics.enable"] == "false"


def test_compose_kafka_speaks_tls_on_every_listener_with_scram_and_acls(dot_env: dict[str, str]) -> None:
    props = server_properties()
    protocols = dict(p.split(":") for p in props["listener.security.protocol.map"].split(","))
    listeners = {li.split("://")[0] for li in props["listeners"].split(",")}
    assert set(protocols) == listeners == {"BROKER", "CLIENT", "CONTROLLER"}
    assert protocols == {"BROKER": "SSL", "CLIENT": "SASL_SSL", "CONTROLLER": "SSL"}, "no PLAINTEXT listener"
    assert props["ssl.client.auth"] == "required", "brokers and controllers: mutual TLS"
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert "ScramLoginModule" in props["listener.name.client.scram-sha-512.sasl.jaas.config"]
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert set(props["super.users"].split(";")) == {*(f"User:{b}" for b in brokers()), "User:admin"}
    assert props["ssl.keystore.type"] == props["ssl.truststore.type"] == "PEM"
    assert props["advertised.listeners"] == "BROKER://${host}:9092,CLIENT://${host}:9093"
    script = (DEPLOY / "kafka" / "start.sh").read_text()
    assert '--add-scram "SCRAM-SHA-512=[name=${name},password=${password}]"' in script
    assert "umask 077" in script  # its key store and the admin's client file: private
    users = [
        p.split("=", 1)[0] for p in interpolate(brokers()["kafka-1"]["environment"]["SCRAM_USERS"], dot_env).split()
    ]
    assert sorted(users) == sorted(["admin", "mieux-ops", *(f"mieux-{s}" for s in SERVICE_PORTS)])
    for spec in brokers().values():
        assert spec["environment"]["SCRAM_USERS"] == brokers()["kafka-1"]["environment"]["SCRAM_USERS"]


def test_compose_creates_every_topic_of_the_catalogue() -> None:
    step = compose()["services"]["kafka-setup"]
    env = step["environment"]
    assert set(env["EVENT_TOPICS"].split()) == event_topics()
    assert set(env["DLQ_TOPICS"].split()) == dlq_topics()
    assert len(env["EVENT_TOPICS"].split()) == len(event_topics())
    assert len(env["DLQ_TOPICS"].split()) == len(dlq_topics())
    assert int(env["DLQ_PARTITIONS"]) == dlq_partitions()
    assert int(env["MIN_INSYNC_REPLICAS"]) == 2 < int(env["MIEUX_TOPIC_REPLICATION"])
    for name, spec in compose_services().items():  # the services create a missing topic the same way
        for key in ("MIEUX_TOPIC_PARTITIONS", "MIEUX_TOPIC_REPLICATION"):
            assert spec["environment"][key] == env[key], (name, key)
    assert step["entrypoint"] == ["/bin/bash", "/opt/mieux/kafka/setup.sh"]
    script = (DEPLOY / "kafka" / "setup.sh").read_text()
    for needed in (
        "$EVENT_TOPICS",
        "$DLQ_TOPICS",
        '"$MIEUX_TOPIC_PARTITIONS"',
        '"$DLQ_PARTITIONS"',
        '"$MIEUX_TOPIC_REPLICATION"',
        "retention.ms=-1",
        "--if-not-exists",
        '--command-config "$cfg"',
        "security.protocol=SASL_SSL",
    ):
        assert needed in script, needed
    assert {d for d, c in step["depends_on"].items() if c["condition"] == "service_healthy"} == set(brokers())


def compose_acls() -> dict[str, dict[str, set[str]]]:
    """user -> kind (write, read, group, prefix-topics, prefix-groups) -> names, from kafka-setup's ACLS."""
    out: dict[str, dict[str, set[str]]] = {}
    for line in compose()["services"]["kafka-setup"]["environment"]["ACLS"].splitlines():
        if line.strip():
            user, *specs = line.split()
            assert user not in out, f"{user} twice"
            out[user] = {k: set(v.split(",")) for k, v in (s.split("=", 1) for s in specs)}
    return out


def test_compose_kafka_users_may_do_what_their_service_needs_and_no_more() -> None:
    acls = compose_acls()
    assert set(acls) == {f"mieux-{s}" for s in SERVICE_PORTS} | {"mieux-ops"}
    for svc in SERVICE_PORTS:
        given = acls[f"mieux-{svc}"]
        assert set(given) <= {"write", "read", "group"}, f"{svc}: no prefix or wildcard"
        assert given["write"] == written_topics(svc), svc
        assert given.get("read", set()) == consumed_topics()[svc], svc
        assert given.get("group", set()) == set(consumer_groups()[svc]), svc
    assert acls["mieux-ops"] == {"prefix-topics": {"mieux."}, "prefix-groups": {"mieux."}}
    script = (DEPLOY / "kafka" / "setup.sh").read_text()
    for kind in ("write)", "read)", "group)", "prefix-topics)", "prefix-groups)"):
        assert kind in script, kind


def test_compose_postgres_takes_tls_only_with_one_role_per_service(dot_env: dict[str, str]) -> None:
    spec = compose()["services"]["postgres"]
    args = dict(a.split("=", 1) for a in spec["command"][1:] if "=" in a)
    assert args["ssl"] == "on" and args["ssl_cert_file"].startswith("/etc/mieux/tls/")
    assert args["password_encryption"] == "scram-sha-256"
    assert args["hba_file"] == "/etc/mieux/postgres/pg_hba.conf"
    assert "./postgres/pg_hba.conf:/etc/mieux/postgres/pg_hba.conf:ro" in spec["volumes"]
    rules = [line.split() for line in (DEPLOY / "postgres" / "pg_hba.conf").read_text().splitlines()]
    rules = [r for r in rules if r and not r[0].startswith("#")]
    assert [r[0] for r in rules] == ["local", "hostssl"], "from the network: TLS only"
    assert rules[1][-1] == "scram-sha-256"
    assert "./postgres/init-roles.sh:/docker-entrypoint-initdb.d/10-roles.sh:ro" in spec["volumes"]
    script = (DEPLOY / "postgres" / "init-roles.sh").read_text()
    for needed in (
        "for role in $SERVICE_ROLES $ops_role; do",
        "CREATE ROLE :\"role\" LOGIN PASSWORD :'password';",
        'GRANT CREATE ON DATABASE :"db" TO :"role";',
        'GRANT :"role" TO :"ops";',
        "REVOKE ALL ON SCHEMA public FROM PUBLIC;",
        'REVOKE ALL ON DATABASE :"db" FROM PUBLIC;',
    ):
        assert needed in script, needed
    assert "SUPERUSER" not in script.upper().replace("POSTGRES_USER", "") and "GRANT ALL" not in script.upper()
    assert spec.get("user") == "999:999"  # the key is its own (tls-init gives it uid 999)


def test_compose_secrets_are_what_make_secrets_writes(dot_env: dict[str, str]) -> None:
    text = (DEPLOY / "compose.yaml").read_text()
    required = {m.group(1) for m in COMPOSE_VAR.finditer(text) if m.group(2) is None}
    assert required and required <= set(dot_env), sorted(required - set(dot_env))


# --- make_secrets.py -----------------------------------------------------------------------------------


def make_secrets() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_make_secrets", DEPLOY / "make_secrets.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def dotenv(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        out[key] = value[1:-1] if value[:1] == value[-1:] == "'" else value
    return out


def kubernetes_secrets(made: Path) -> dict[str, dict[str, Any]]:
    docs = yaml.safe_load_all((made / "kubernetes" / "secrets" / "mieux-secrets.yaml").read_text())
    return {d["metadata"]["name"]: d for d in docs if d}


def test_make_secrets_tokens_authenticate_as_their_principals(tmp_path: Path) -> None:
    ms = make_secrets()
    assert set(ms.SERVICES) == set(SERVICE_PORTS)
    assert ms.main(["--out", str(tmp_path)]) == 0
    env = dotenv(tmp_path / ".env")
    # the .env's registry alone (not a dev stack's registry file the session may have running)
    registry = Settings.model_validate(
        {"MIEUX_AUTH_TOKENS": json.loads(env["MIEUX_AUTH_TOKENS"]), "MIEUX_AUTH_TOKENS_FILE": None}
    ).tokens()
    calls = catalog.calls()
    for svc in SERVICE_PORTS:  # each service: its own principal, allowed only the calls of its flows
        p = registry.authenticate(env[f"MIEUX_TOKEN_{svc.upper()}"])
        assert p is not None and (p.name, p.roles, p.calls) == (svc, frozenset({"service"}), frozenset(calls[svc]))
    for role in ("ops", "finance", "admin"):
        p = registry.authenticate(env[f"MIEUX_TOKEN_{role.upper()}"])
        assert p is not None and (p.roles, p.calls) == (frozenset({role}), None)
    assert len(registry.entries()) == len(SERVICE_PORTS) + 3
    assert all(len(env[f"MIEUX_TOKEN_{n.upper()}"]) >= 32 for n in (*SERVICE_PORTS, "ops", "finance", "admin"))
    assert env["MIEUX_TOKEN_OPS"] not in env["MIEUX_AUTH_TOKENS"]  # salted hashes only
    tokens = kubernetes_secrets(tmp_path)["mieux-tokens"]["stringData"]
    assert tokens["auth-tokens"] == env["MIEUX_AUTH_TOKENS"]
    assert all(tokens[f"{svc}-token"] == env[f"MIEUX_TOKEN_{svc.upper()}"] for svc in SERVICE_PORTS)
    # a second run keeps everything (clients hold the tokens, the CA signed the certificates); --force rotates
    ca = (tmp_path / "tls" / "ca.crt").read_bytes()
    ms.main(["--out", str(tmp_path)])
    assert dotenv(tmp_path / ".env") == env and (tmp_path / "tls" / "ca.crt").read_bytes() == ca
    ms.main(["--out", str(tmp_path), "--force"])
    assert dotenv(tmp_path / ".env")["MIEUX_TOKEN_OPS"] != env["MIEUX_TOKEN_OPS"]
    assert (tmp_path / "tls" / "ca.crt").read_bytes() != ca


def test_make_secrets_adds_what_an_older_env_lacks_and_keeps_the_rest(tmp_path: Path) -> None:
    """An .env of the version before (a PostgreSQL password and tokens, their unsalted hashes) keeps its tokens,
    now with salted entries; the roles' and Kafka users' passwords are added."""
    ms = make_secrets()
    tokens = ms.generate()
    unsalted = {ms.sha256(t): {"name": n, "roles": ["service" if n in ms.SERVICES else n]} for n, t in tokens.items()}
    old = {"POSTGRES_PASSWORD": "kept", "MIEUX_AUTH_TOKENS": json.dumps(unsalted)}
    old |= {f"MIEUX_TOKEN_{n.upper()}": t for n, t in tokens.items()}
    (tmp_path / ".env").write_text("".join(f"{k}='{v}'\n" for k, v in old.items()))
    assert ms.main(["--out", str(tmp_path)]) == 0
    env = dotenv(tmp_path / ".env")
    assert env["POSTGRES_PASSWORD"] == "kept" and env["MIEUX_TOKEN_OPS"] == tokens["ops"]
    # the .env's registry alone (not a dev stack's registry file the session may have running)
    registry = Settings.model_validate(
        {"MIEUX_AUTH_TOKENS": json.loads(env["MIEUX_AUTH_TOKENS"]), "MIEUX_AUTH_TOKENS_FILE": None}
    ).tokens()
    assert {n: getattr(registry.authenticate(t), "name", None) for n, t in tokens.items()} == {n: n for n in tokens}
    assert {f"PG_PASSWORD_{r.upper()}" for r in [*SERVICE_PORTS, "ops"]} <= set(env)
    assert {f"KAFKA_PASSWORD_{u.upper()}" for u in [*SERVICE_PORTS, "ops", "admin"]} <= set(env)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_make_secrets_files_are_private(made: Path) -> None:
    assert mode(made / ".env") == 0o600
    assert mode(made / "tls") == 0o700 and mode(made / "kubernetes" / "secrets") == 0o700
    assert mode(made / "signing") == 0o700 and mode(made / "personal-data") == 0o700
    assert mode(made / "kubernetes" / "secrets" / "mieux-secrets.yaml") == 0o600
    keys = [*(made / "tls").glob("*.key"), *(made / "signing").glob("*.pem"), *(made / "personal-data").iterdir()]
    assert len([k for k in keys if k.parent.name == "personal-data"]) == len(keeps_personal_data())
    for key in keys:
        assert mode(key) == 0o600, key
    source = (DEPLOY / "make_secrets.py").read_text()
    assert ".chmod(0o600)" not in source, "created private, not narrowed after writing"


def test_make_secrets_certificates_are_signed_for_the_names_clients_use(made: Path) -> None:
    ms = make_secrets()
    assert set(ms.TLS_NAMES) == {*SERVICE_PORTS, "ops", *brokers(), "postgres"}
    ca = x509.load_pem_x509_certificate((made / "tls" / "ca.crt").read_bytes())
    k8s, compose_env = one("ConfigMap", "mieux-config")["data"], compose_services()["requests"]["environment"]
    for name in ms.TLS_NAMES:
        cert = x509.load_pem_x509_certificate((made / "tls" / f"{name}.crt").read_bytes())
        cert.verify_directly_issued_by(ca)
        if name == "ops":  # a client alone
            continue
        dns = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        )
        if name in SERVICE_PORTS:  # the hosts its callers dial, in compose and in Kubernetes
            hosts = {env[f"MIEUX_{name.upper()}_ADDR"].rsplit(":", 1)[0] for env in (k8s, compose_env)}
            assert hosts | {"localhost"} <= set(dns), name
        else:
            assert dns == [name]  # a broker's or postgres's compose name


def test_make_secrets_kubernetes_secrets_are_what_the_manifests_read(made: Path) -> None:
    secrets_ = kubernetes_secrets(made)
    for name, s in secrets_.items():
        assert s["apiVersion"] == "v1" and s["kind"] == "Secret", name
    for role in [*SERVICE_PORTS, "ops"]:
        pg = secrets_[f"mieux-pg-{role}"]
        assert pg["type"] == "kubernetes.io/basic-auth" and pg["stringData"]["username"] == role
        url = pg["stringData"]["uri"]
        check_database_url(url, role, f"Secret mieux-pg-{role}")
        assert urlsplit(url).password == pg["stringData"]["password"]
        tls = secrets_[f"mieux-tls-{role}"]
        assert tls["type"] == "kubernetes.io/tls" and set(tls["stringData"]) == {"tls.crt", "tls.key", "ca.crt"}
    without = make_secrets()
    out = made.parent / "with-cert-manager"
    assert without.main(["--out", str(out), "--cert-manager"]) == 0
    assert not [n for n in kubernetes_secrets(out) if n.startswith("mieux-tls-")]
    # a master key per service that keeps personal data, and for no other
    masters = {n: s for n, s in secrets_.items() if n.startswith("mieux-personal-data-")}
    assert set(masters) == {f"mieux-personal-data-{svc}" for svc in keeps_personal_data()}
    for s in masters.values():
        assert s["type"] == "Opaque" and set(s["stringData"]) == {"personal-data.key"}


def test_make_secrets_keeps_the_personal_data_master_keys_and_retires_a_replaced_one(tmp_path: Path) -> None:
    """One master key per service that keeps personal data, kept by a second run (losing it loses every name);
    --force makes a new one and keeps the old beside it, named by its id, for MIEUX_PERSONAL_DATA_PREVIOUS_KEYS."""
    from services.kernel.personal import master_key_id

    ms = make_secrets()
    folder = tmp_path / "personal-data"
    assert ms.main(["--out", str(tmp_path)]) == 0
    keys = {svc: master_key(folder / f"{svc}.key", svc) for svc in keeps_personal_data()}
    assert len(set(keys.values())) == len(keys), "each service a master key of its own"
    assert {p.name for p in folder.iterdir()} == {f"{svc}.key" for svc in keys}
    assert ms.main(["--out", str(tmp_path)]) == 0
    assert {svc: master_key(folder / f"{svc}.key", svc) for svc in keys} == keys
    assert ms.main(["--out", str(tmp_path), "--force"]) == 0
    for svc, old in keys.items():
        assert master_key(folder / f"{svc}.key", svc) != old
        retired = folder / f"{svc}-{master_key_id(old)}.retired"
        assert mode(retired) == 0o600 and master_key(retired, svc) == old
        secret_ = kubernetes_secrets(tmp_path)[f"mieux-personal-data-{svc}"]["stringData"]["personal-data.key"]
        assert secret_ == (folder / f"{svc}.key").read_text()


# --- Dockerfile ----------------------------------------------------------------------------------------


def dockerfile() -> list[str]:
    """Instructions, continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def healthcheck_path() -> str:
    copies = [line.split()[-1] for line in dockerfile() if line.startswith("COPY") and "healthcheck.py" in line]
    assert len(copies) == 1
    return copies[0]


def test_dockerfile_is_multi_stage_slim_non_root_and_generates_grpc_code() -> None:
    lines = dockerfile()
    args = dict(line.split()[1].split("=", 1) for line in lines if line.startswith("ARG") and "=" in line)
    froms = [line.split()[1] for line in lines if line.startswith("FROM")]
    assert len(froms) >= 2 and all(f == "${PYTHON_IMAGE}" for f in froms)
    assert args["PYTHON_IMAGE"].split("@")[0] == "python:3.11-slim"
    final = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM")) :]
    users = [line.split()[1] for line in final if line.startswith("USER")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert any(re.search(r"pip install \.(\s|$)", line) for line in lines)
    protoc = next(line for line in lines if "grpc_tools.protoc" in line)
    for flag in ("-Iproto", "--python_out=", "--grpc_python_out=", "--pyi_out=", "find proto -name '*.proto'"):
        assert flag in protoc, flag
    # the gRPC code goes where services/__init__.py looks for it: `gen` beside the package folder
    assert services._GEN == Path(services.__file__).resolve().parent.parent / "gen"
    assert 'pathlib.Path(services.__file__).resolve().parent.parent / "gen"' in protoc
    exposed = {int(p) for line in final if line.startswith("EXPOSE") for p in line.split()[1:]}
    assert set(SERVICE_PORTS.values()) <= exposed
    env_names = set()
    for line in lines:
        if line.startswith("ENV"):
            env_names |= set(re.findall(r"([A-Z_][A-Z0-9_]*)=", line))
    assert env_names - RUNTIME_ENV <= settings_read(), sorted(env_names - RUNTIME_ENV - settings_read())
    assert "MIEUX_GRPC_HOST" in env_names and "MIEUX_HOME" in env_names
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text()
    for copied in [line.split()[1] for line in lines if line.startswith("COPY") and "--from" not in line]:
        assert f"!{copied.rstrip('/')}" in ignore or f"!{copied.rstrip('/')}/**" in ignore, copied


def test_pip_install_ships_every_data_file_the_services_read() -> None:
    """`pip install .` in the image: setuptools packs only .py files unless package-data names the rest."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text()).get("tool", {}).get("setuptools", {})
    package_data: dict[str, list[str]] = cfg.get("package-data", {})
    data = [
        p
        for p in (ROOT / "services").rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    ]
    assert data
    missing = []
    for path in data:
        package_dir = next(d for d in path.parents if (d / "__init__.py").exists())
        package = ".".join(package_dir.relative_to(ROOT).parts)
        rel = path.relative_to(package_dir).as_posix()
        patterns = [*package_data.get("*", []), *package_data.get(package, [])]
        if not any(fnmatch.fnmatch(rel, pat) for pat in patterns):
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"


def test_the_health_check_script_asks_grpc_health() -> None:
    spec = importlib.util.spec_from_file_location("deploy_healthcheck", DEPLOY / "healthcheck.py")
    assert spec and spec.loader
    hc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hc)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert hc.main([str(port)]) == 0
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert hc.main([str(port)]) == 1
    finally:
        server.stop(None).wait()
    assert hc.main([str(port)]) == 1  # nothing listening
    assert hc.main([]) == 2


# --- images: pinned by digest, or marked ---------------------------------------------------------------

DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
UNPINNED = re.compile(r"UNPINNED-DIGEST: (\S+)")


def image_references() -> dict[str, set[str]]:
    """file -> the images it names: compose's `image:`, the Dockerfile's base (its ARG's default), the
    kustomization's `images:` (what the Deployments run)."""
    out: dict[str, set[str]] = {}
    for spec in compose()["services"].values():
        out.setdefault("compose.yaml", set()).add(interpolate(spec["image"], {}))
    args = dict(line.split()[1].split("=", 1) for line in dockerfile() if line.startswith("ARG") and "=" in line)
    out["Dockerfile"] = {args["PYTHON_IMAGE"]}
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for image in kust["images"]:
        ref = image.get("newName", image["name"])
        ref += f"@{image['digest']}" if "digest" in image else f":{image.get('newTag', 'latest')}"
        out.setdefault("kubernetes/kustomization.yaml", set()).add(ref)
    return out


def unpinned() -> dict[str, set[str]]:
    """file -> its images without a digest, each of which it must mark `UNPINNED-DIGEST: <image>`."""
    return {f: {i for i in refs if not DIGEST.search(i)} for f, refs in image_references().items()}


def test_every_image_is_pinned_by_digest_or_marked_unpinned() -> None:
    """A digest never invented: an image whose digest could not be verified stays a tag, marked where it
    is named (`UNPINNED-DIGEST: <image>`), and the test below lists them until they are pinned."""
    names = {re.sub(r"@sha256:.*", "", i) for i in image_references()["compose.yaml"]}
    assert names >= {"apache/kafka:3.9.1", "postgres:17", "mieux:latest"}
    for f, images in unpinned().items():
        marked = set(UNPINNED.findall((DEPLOY / f).read_text()))
        assert images <= marked, f"{f}: images neither pinned by digest nor marked: {sorted(images - marked)}"
        assert marked <= images, f"{f}: marked unpinned but pinned or gone: {sorted(marked - images)}"


OWN_IMAGE = "mieux:latest"  # our build of deploy/Dockerfile: it has a digest only once you push it


def test_every_image_we_do_not_build_is_pinned_by_digest() -> None:
    left = {f: sorted(i - {OWN_IMAGE}) for f, i in unpinned().items() if i - {OWN_IMAGE}}
    assert not left, f"not pinned by digest: {left}"


# --- Kubernetes ----------------------------------------------------------------------------------------


@cache
def manifests() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file, resource) for every resource the kustomization lists."""
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    out = []
    for name in kust["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc:
                out.append((name, doc))
    return tuple(out)


@cache
def cert_manager() -> tuple[dict[str, Any], ...]:
    return tuple(d for p in sorted(CERT_MANAGER.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d)


def resources(kind: str) -> Iterator[dict[str, Any]]:
    return (r for _, r in manifests() if r["kind"] == kind)


def one(kind: str, name: str) -> dict[str, Any]:
    found = [r for r in resources(kind) if r["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kust["resources"]) == sorted(on_disk)
    assert kust["kind"] == "Kustomization"
    for svc in SERVICE_PORTS:
        assert f"{svc}.yaml" in kust["resources"], "one manifest per service"


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        assert isinstance(obj, dict) and part in obj, path
        obj = obj[part]
    return obj


# Required fields, from the CRDs (openAPIV3Schema `required`) and the operators' documentation.
# Strimzi kafka.strimzi.io/v1beta2 (0.45+):
#   Kafka: spec.kafka; spec.kafka.listeners; each listener name, port, type, tls
#   KafkaNodePool: spec.replicas, spec.storage, spec.roles; storage.type; each jbod volume type (and id:
#     "mandatory for jbod"; size: "mandatory when type=persistent-claim")
#   KafkaTopic: no required spec field; the topic operator only reconciles a topic labelled
#     strimzi.io/cluster=<Kafka name>, and metadata.name must be a Kubernetes name (else spec.topicName)
#   KafkaUser: no required spec field; the user operator only reconciles a user labelled
#     strimzi.io/cluster=<Kafka name>; authentication.type; authorization.type and acls[].resource.type,
#     acls[].operations (or the deprecated operation); resource.name unless type cluster
# CloudNativePG postgresql.cnpg.io/v1 Cluster: spec.instances (>= 1); storage: size or pvcTemplate;
#   managed.roles[].name; postInitApplicationSQL a list of strings.
# cert-manager cert-manager.io/v1: Certificate spec.secretName, spec.issuerRef.name; Issuer: one of its
#   issuer kinds (selfSigned, ca.secretName, ...).
CRD_REQUIRED: dict[tuple[str, str], tuple[str, ...]] = {
    ("kafka.strimzi.io/v1beta2", "Kafka"): ("spec.kafka.listeners",),
    ("kafka.strimzi.io/v1beta2", "KafkaNodePool"): ("spec.replicas", "spec.storage.type", "spec.roles"),
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"): ("metadata.labels",),
    ("kafka.strimzi.io/v1beta2", "KafkaUser"): ("metadata.labels", "spec.authentication.type"),
    ("postgresql.cnpg.io/v1", "Cluster"): ("spec.instances", "spec.storage"),
    ("cert-manager.io/v1", "Certificate"): ("spec.secretName", "spec.issuerRef.name"),
    ("cert-manager.io/v1", "Issuer"): ("spec",),
}
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
KAFKA_OPERATIONS = {
    "Read", "Write", "Create", "Delete", "Alter", "Describe", "ClusterAction", "AlterConfigs", "DescribeConfigs",
    "IdempotentWrite", "All",
}  # fmt: skip


def check_crd(r: dict[str, Any]) -> None:
    for path in CRD_REQUIRED[(r["apiVersion"], r["kind"])]:
        _get(r, path)
    spec = r.get("spec", {})
    kafkas = {k["metadata"]["name"] for k in resources("Kafka")}
    match r["kind"]:
        case "Kafka":
            assert spec["kafka"]["listeners"]
            for listener in spec["kafka"]["listeners"]:
                assert {"name", "port", "type", "tls"} <= set(listener), listener
        case "KafkaNodePool":
            assert set(spec["roles"]) <= {"broker", "controller"} and spec["roles"]
            assert spec["storage"]["type"] in ("ephemeral", "persistent-claim", "jbod")
            for vol in spec["storage"].get("volumes", []):
                assert "type" in vol and "id" in vol, vol
                assert vol["type"] != "persistent-claim" or "size" in vol, vol
            assert r["metadata"]["labels"]["strimzi.io/cluster"] in kafkas
        case "KafkaTopic":
            assert r["metadata"]["labels"]["strimzi.io/cluster"] in kafkas
            assert spec.get("partitions", 1) >= 1 and spec.get("replicas", 1) >= 1
        case "KafkaUser":
            assert r["metadata"]["labels"]["strimzi.io/cluster"] in kafkas
            assert spec["authentication"]["type"] in ("tls", "tls-external", "scram-sha-512")
            authz = spec.get("authorization")
            if authz:
                assert authz["type"] == "simple"
                for acl in authz["acls"]:
                    res = acl["resource"]
                    assert res["type"] in ("topic", "group", "cluster", "transactionalId"), acl
                    assert res["type"] == "cluster" or res["name"], acl
                    assert res.get("patternType", "literal") in ("literal", "prefix"), acl
                    assert set(acl["operations"]) <= KAFKA_OPERATIONS and acl["operations"], acl
        case "Cluster":
            assert isinstance(spec["instances"], int) and spec["instances"] >= 1
            assert "size" in spec["storage"] or "pvcTemplate" in spec["storage"]
            for role in spec.get("managed", {}).get("roles", []):
                assert role["name"] and role.get("ensure", "present") in ("present", "absent"), role
            sql = spec.get("bootstrap", {}).get("initdb", {}).get("postInitApplicationSQL", [])
            assert all(isinstance(s, str) for s in sql)
        case "Certificate":
            assert r["spec"]["issuerRef"].get("kind", "Issuer") in ("Issuer", "ClusterIssuer")
        case "Issuer":
            assert {"selfSigned", "ca", "acme", "vault", "venafi"} & set(spec), spec


def test_kubernetes_manifests_validate() -> None:
    import kubernetes_validate as kv  # dev dependency (pyproject.toml): ships the schemas, works offline
    from kubernetes_validate import utils

    versions = [utils.latest_version() if v == "latest" else v for v in K8S_VERSIONS]
    checked = set()
    for name, r in [*manifests(), *(("cert-manager", r) for r in cert_manager())]:
        assert DNS_SUBDOMAIN.match(r["metadata"]["name"]) and len(r["metadata"]["name"]) <= 253, r["metadata"]
        key = (r["apiVersion"], r["kind"])
        if key in CRD_REQUIRED:
            check_crd(r)
        else:
            for v in versions:
                try:
                    kv.validate(r, v, strict=True)
                except kv.ValidationError as e:
                    path = ".".join(str(p) for p in e.path)
                    pytest.fail(f"{name}: {r['kind']}/{r['metadata']['name']} on Kubernetes {v}: {path}: {e.message}")
        checked.add(key)
    assert set(CRD_REQUIRED) <= checked, "Kafka, node pool, topics, users, PostgreSQL, cert-manager"
    assert {"NetworkPolicy", "PodDisruptionBudget"} <= {k for _, k in checked}


def test_kubernetes_validation_catches_a_wrong_manifest() -> None:
    """The schemas are really applied (strict: an unknown field fails too)."""
    import kubernetes_validate as kv

    dep = next(resources("Deployment"))
    bad = yaml.safe_load(yaml.safe_dump(dep))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 1
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, "1.29", strict=True)
    bad_topic = yaml.safe_load(yaml.safe_dump(next(resources("KafkaTopic"))))
    del bad_topic["metadata"]["labels"]
    with pytest.raises(AssertionError):
        check_crd(bad_topic)
    bad_user = yaml.safe_load(yaml.safe_dump(next(resources("KafkaUser"))))
    bad_user["spec"]["authorization"]["acls"][0]["operations"] = ["Wirte"]
    with pytest.raises(AssertionError):
        check_crd(bad_user)


def container_env(dep: dict[str, Any]) -> dict[str, Any]:
    """The environment of a Deployment's container: its ConfigMaps (envFrom) and its env entries."""
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    env: dict[str, Any] = {}
    for src in container.get("envFrom", []):
        for k, v in one("ConfigMap", src["configMapRef"]["name"])["data"].items():
            assert k not in env, f"{k} set twice"
            env[k] = v
    for e in container.get("env", []):
        assert e["name"] not in env, f"{e['name']} set twice"
        env[e["name"]] = e.get("value", {"valueFrom": e.get("valueFrom")})
    return env


def mounted_secret(dep: dict[str, Any], path: str) -> tuple[str, str]:
    """(Secret name, key) of the file at `path` in a Deployment's container (a Secret volume)."""
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    folder, file = str(PurePosixPath(path).parent), PurePosixPath(path).name
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == folder]
    assert mount.get("readOnly") is True, mount
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    secret = volume["secret"]
    items = {i["path"]: i["key"] for i in secret.get("items", [])}
    assert not items or file in items, (path, items)
    return secret["secretName"], items.get(file, file)


def deployments() -> dict[str, dict[str, Any]]:
    """name (a service, or ops) -> its Deployment."""
    out = {}
    for d in resources("Deployment"):
        cmd = d["spec"]["template"]["spec"]["containers"][0]["command"]
        out[cmd[-1].removeprefix("services.") if cmd[:2] == ["python", "-m"] else "ops"] = d
    return out


def test_kubernetes_runs_every_service_with_probes_resources_and_non_root() -> None:
    assert set(deployments()) == {*SERVICE_PORTS, "ops"}
    for svc, port in SERVICE_PORTS.items():
        dep = deployments()[svc]
        pod = dep["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        env = container_env(dep)
        assert c["command"] == ["python", "-m", f"services.{svc}"]
        metrics_port, health_port = int(env["MIEUX_METRICS_PORT"]), int(env["MIEUX_GRPC_HEALTH_PORT"])
        assert [p["containerPort"] for p in c["ports"]] == [port, health_port, metrics_port]
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(metrics_port) and annotations["prometheus.io/scrape"] == "true"
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            # the kubelet's gRPC probes cannot speak TLS: they ask the plaintext health port
            assert c[probe]["grpc"]["port"] == health_port, (svc, probe)
        assert c["livenessProbe"]["grpc"]["service"] == "liveness"
        assert c["resources"]["requests"] and c["resources"]["limits"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        # a read-only root: MIEUX_HOME (the policies' faust data) must be a mounted volume
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert env["MIEUX_HOME"] in mounts
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
        matching = [s for s in resources("Service") if s["spec"]["selector"].items() <= labels.items()]
        assert len(matching) == 1, svc
        (sport,) = matching[0]["spec"]["ports"]  # the gRPC port alone: health and metrics are the pod's
        # two replicas behind a headless Service: clients resolve every pod and balance calls over them
        assert dep["spec"]["replicas"] == 2 and matching[0]["spec"].get("clusterIP") == "None", svc
        assert sport["port"] == port and sport["targetPort"] in (port, c["ports"][0].get("name"))


def test_kubernetes_env_is_what_the_settings_read(made: Path) -> None:
    secrets_ = kubernetes_secrets(made)
    (pg,) = resources("Cluster")
    (kafka,) = resources("Kafka")
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    users = {u["metadata"]["name"] for u in resources("KafkaUser")}
    for name, dep in deployments().items():
        env = container_env(dep)
        settings = check_env(
            env, f"Deployment {dep['metadata']['name']}", signs=name != "ops", personal=name in keeps_personal_data()
        )
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == f"{kafka['metadata']['name']}-kafka-bootstrap:{listener['port']}"
        for other, port in SERVICE_PORTS.items():
            host, p = env[f"MIEUX_{other.upper()}_ADDR"].rsplit(":", 1)
            service = one("Service", host)
            target = next(
                d
                for d in resources("Deployment")
                if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
            )
            assert target["spec"]["template"]["spec"]["containers"][0]["command"][-1] == f"services.{other}"
            assert int(p) == port == service["spec"]["ports"][0]["port"]
        refs = {k: v["valueFrom"]["secretKeyRef"] for k, v in env.items() if isinstance(v, dict)}
        # its own database role (make_secrets.py's Secret, the role CloudNativePG manages from it)
        assert refs["DATABASE_URL"] == {"name": f"mieux-pg-{name}", "key": "uri"}
        uri = secrets_[f"mieux-pg-{name}"]["stringData"]["uri"]
        query = check_database_url(uri, name, f"Secret mieux-pg-{name}")
        assert urlsplit(uri).hostname == f"{pg['metadata']['name']}-rw"
        assert mounted_secret(dep, query["sslrootcert"]) == (f"{pg['metadata']['name']}-ca", "ca.crt")
        # its own Kafka user: the KafkaUser's name, the password in the Secret Strimzi names after it
        assert env["MIEUX_KAFKA_USERNAME"] in users and env["MIEUX_KAFKA_USERNAME"] == f"mieux-{name}"
        assert refs["MIEUX_KAFKA_PASSWORD"] == {"name": env["MIEUX_KAFKA_USERNAME"], "key": "password"}
        assert mounted_secret(dep, str(settings.kafka_ca_file)) == (
            f"{kafka['metadata']['name']}-cluster-ca-cert",
            "ca.crt",
        )
        # its own certificate (make_secrets.py's or cert-manager's Secret)
        for path, key in (
            (settings.tls_cert_file, "tls.crt"),
            (settings.tls_key_file, "tls.key"),
            (settings.tls_ca_file, "ca.crt"),
        ):
            assert mounted_secret(dep, str(path)) == (f"mieux-tls-{name}", key)
            assert key in secrets_[f"mieux-tls-{name}"]["stringData"]
        assert refs["MIEUX_TOKEN"] == {"name": "mieux-tokens", "key": f"{name}-token"}
        assert refs["MIEUX_VERIFY_KEYS"] == {"name": "mieux-tokens", "key": "verify-keys"}
        if name != "ops":  # its signing key, mounted from its Secret, which the keys verify
            assert mounted_secret(dep, env["MIEUX_SIGNING_KEY_FILE"]) == (f"mieux-signing-{name}", "signing.pem")
            pem = made / "key.pem"
            pem.write_text(secrets_[f"mieux-signing-{name}"]["stringData"]["signing.pem"])
            assert_signs(pem, secrets_["mieux-tokens"]["stringData"]["verify-keys"], name)
        # the personal-data master key: its own Secret, mounted by the services that keep personal data alone
        mounted = {v["secret"]["secretName"] for v in dep["spec"]["template"]["spec"]["volumes"] if "secret" in v}
        master_secrets = {s for s in mounted if s.startswith("mieux-personal-data-")}
        if name in keeps_personal_data():
            assert master_secrets == {f"mieux-personal-data-{name}"}, name
            assert mounted_secret(dep, env["MIEUX_PERSONAL_DATA_KEY_FILE"]) == (
                f"mieux-personal-data-{name}",
                "personal-data.key",
            )
            key = made / f"{name}-personal-data.key"
            key.write_text(secrets_[f"mieux-personal-data-{name}"]["stringData"]["personal-data.key"])
            # the same key as compose's (make_secrets.py writes both from deploy/personal-data/)
            assert master_key(key, name) == master_key(made / "personal-data" / f"{name}.key", name)
        else:
            assert not master_secrets, f"{name} keeps no personal data, yet it mounts {sorted(master_secrets)}"
        assert refs["MIEUX_AUTH_TOKENS"]["name"] == "mieux-tokens"
        tokens_keys = set(secrets_["mieux-tokens"]["stringData"])
        assert {r["key"] for r in refs.values() if r["name"] == "mieux-tokens"} <= tokens_keys


def test_kubernetes_topics_are_the_catalogue() -> None:
    (config,) = [c for c in resources("ConfigMap") if "MIEUX_TOPIC_PARTITIONS" in c["data"]]
    (pool,) = resources("KafkaNodePool")
    (kafka,) = resources("Kafka")
    topics = {t["spec"].get("topicName", t["metadata"]["name"]): t for t in resources("KafkaTopic")}
    assert len(topics) == len(list(resources("KafkaTopic")))
    assert set(topics) == event_topics() | dlq_topics()
    replication = int(config["data"]["MIEUX_TOPIC_REPLICATION"])
    assert replication == pool["spec"]["replicas"] == kafka["spec"]["kafka"]["config"]["default.replication.factor"]
    assert kafka["spec"]["kafka"]["config"]["min.insync.replicas"] == 2
    for name, t in topics.items():
        want = int(config["data"]["MIEUX_TOPIC_PARTITIONS"]) if name in event_topics() else dlq_partitions()
        assert t["spec"]["partitions"] == want, name
        assert t["spec"]["replicas"] == replication, name
        assert t["spec"]["config"]["min.insync.replicas"] == 2, name
        if name in event_topics():
            assert t["spec"]["config"]["retention.ms"] == -1, name


def test_kubernetes_kafka_takes_tls_and_scram_only_with_acls() -> None:
    (kafka,) = resources("Kafka")
    for listener in kafka["spec"]["kafka"]["listeners"]:
        assert listener["tls"] is True, f"listener {listener['name']}: TLS"
        assert listener["authentication"]["type"] == "scram-sha-512", listener
        assert listener["networkPolicyPeers"], f"listener {listener['name']}: only the mieux pods"
    assert kafka["spec"]["kafka"]["authorization"]["type"] == "simple"
    assert "userOperator" in kafka["spec"]["entityOperator"], "the KafkaUsers need the User Operator"


def acls(user: dict[str, Any]) -> dict[tuple[str, str, str], set[str]]:
    """(resource type, name, pattern type) -> operations."""
    out: dict[tuple[str, str, str], set[str]] = {}
    for acl in user["spec"]["authorization"]["acls"]:
        res = acl["resource"]
        out.setdefault((res["type"], res["name"], res.get("patternType", "literal")), set()).update(acl["operations"])
    return out


def test_kubernetes_one_kafka_user_per_service_writes_its_topic_and_reads_only_what_it_consumes() -> None:
    users = {u["metadata"]["name"]: u for u in resources("KafkaUser")}
    assert set(users) == {f"mieux-{s}" for s in SERVICE_PORTS} | {"mieux-ops"}
    for svc in SERVICE_PORTS:
        user = users[f"mieux-{svc}"]
        assert user["spec"]["authentication"]["type"] == "scram-sha-512"
        given = acls(user)
        assert {p for _, _, p in given} == {"literal"}, f"{svc}: no prefix ACL"
        assert {kind for kind, _, _ in given} <= {"topic", "group"}, svc
        writes = {name for (kind, name, _), ops in given.items() if kind == "topic" and "Write" in ops}
        reads = {name for (kind, name, _), ops in given.items() if kind == "topic" and "Read" in ops}
        groups = {name for (kind, name, _), ops in given.items() if kind == "group"}
        assert writes == written_topics(svc), svc
        assert reads == consumed_topics()[svc], svc
        assert groups == set(consumer_groups()[svc]), svc
        for (kind, name, _), ops in given.items():
            assert ops <= {"Describe", "Read", "Write"}, (svc, name, ops)
            assert "Describe" in ops, (svc, name)  # to see it at all
            assert kind == "topic" or ops == {"Describe", "Read"}, (svc, name)
    ops_acls = acls(users["mieux-ops"])
    assert set(ops_acls) == {("topic", "mieux.", "prefix"), ("group", "mieux.", "prefix")}


def test_kubernetes_postgres_takes_tls_only_with_one_role_per_service() -> None:
    (pg,) = resources("Cluster")
    spec = pg["spec"]
    assert "hostnossl all all all reject" in spec["postgresql"]["pg_hba"], "TLS only"
    roles = {r["name"]: r for r in spec["managed"]["roles"]}
    assert set(roles) == {*SERVICE_PORTS, "ops"}
    for name, role in roles.items():
        assert role["login"] is True and role.get("ensure", "present") == "present"
        assert role["passwordSecret"] == {"name": f"mieux-pg-{name}"}
        assert not any(role.get(k) for k in ("superuser", "createdb", "createrole", "replication", "bypassrls"))
    assert set(roles["ops"]["inRoles"]) == set(SERVICE_PORTS)
    assert not any(roles[s].get("inRoles") for s in SERVICE_PORTS), "a service is a member of no other role"
    sql = " ; ".join(spec["bootstrap"]["initdb"]["postInitApplicationSQL"])
    database = spec["bootstrap"]["initdb"]["database"]
    for name in [*SERVICE_PORTS, "ops"]:
        assert f"CREATE ROLE {name} NOLOGIN" in sql, name
    (grant,) = [s for s in spec["bootstrap"]["initdb"]["postInitApplicationSQL"] if "CREATE ON DATABASE" in s]
    assert grant == f"GRANT CONNECT, CREATE ON DATABASE {database} TO {', '.join(SERVICE_PORTS)}"
    assert f"REVOKE ALL ON DATABASE {database} FROM PUBLIC" in sql and "REVOKE ALL ON SCHEMA public FROM PUBLIC" in sql
    assert "GRANT ALL" not in sql.upper() and "SUPERUSER" not in sql.upper()


def policies() -> dict[str, dict[str, Any]]:
    """name (a service, or ops) -> the NetworkPolicy selecting its pods."""
    out = {}
    for name, dep in deployments().items():
        selector = dep["spec"]["selector"]["matchLabels"]
        found = [p for p in resources("NetworkPolicy") if p["spec"]["podSelector"].get("matchLabels") == selector]
        assert len(found) == 1, name
        out[name] = found[0]
    return out


def pod_names(peers: list[dict[str, Any]]) -> set[str]:
    """The services (or ops) whose pods a rule's peers select by their name label."""
    out = set()
    for peer in peers:
        assert set(peer) == {"podSelector"}, f"a peer of this namespace's pods only: {peer}"
        out.add(peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"].removeprefix("mieux-"))
    return out


def test_kubernetes_network_policies_admit_only_the_callers_each_service_has() -> None:
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    (kafka,) = resources("Kafka")
    (pg,) = resources("Cluster")
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    for name, policy in policies().items():
        spec = policy["spec"]
        assert set(spec["policyTypes"]) == {"Ingress", "Egress"}, name
        env = container_env(deployments()[name])
        for rule in spec.get("ingress", []):
            assert rule.get("from") and len(rule.get("ports", [])) == 1, f"{name}: an ingress rule open to all"
        ingress = {r["ports"][0]["port"]: r["from"] for r in spec.get("ingress", [])}
        if name == "ops":
            assert spec["ingress"] == [], "nothing calls the ops pod"
        else:
            port, metrics = SERVICE_PORTS[name], int(env["MIEUX_METRICS_PORT"])
            assert set(ingress) == {port, metrics}, name
            assert pod_names(ingress[port]) == callers().get(name, set()) | {"ops"}, name
            assert ingress[metrics] == [monitoring], name
        # egress: DNS, Kafka's TLS listener, PostgreSQL, and the services it calls (ops: every one)
        egress = spec["egress"]
        for rule in egress:
            assert rule.get("to") and rule.get("ports"), f"{name}: an egress rule open to all"
        ports = {p["port"] for r in egress for p in r["ports"]}
        callees = set(SERVICE_PORTS) if name == "ops" else {c for c, cs in callers().items() if name in cs}
        assert ports == {53, listener["port"], 5432} | {SERVICE_PORTS[c] for c in callees}, name
        for rule in egress:
            (port,) = {p["port"] for p in rule["ports"]}
            labels = rule["to"][0].get("podSelector", {}).get("matchLabels", {})
            if port == listener["port"]:
                assert labels == {"strimzi.io/cluster": kafka["metadata"]["name"], "strimzi.io/kind": "Kafka"}
            elif port == 5432:
                assert labels == {"cnpg.io/cluster": pg["metadata"]["name"]}
            elif port != 53:
                assert pod_names(rule["to"]) == {next(c for c in callees if SERVICE_PORTS[c] == port)}


def test_kubernetes_every_service_has_a_disruption_budget() -> None:
    budgets = list(resources("PodDisruptionBudget"))
    for svc in SERVICE_PORTS:
        dep = deployments()[svc]
        (budget,) = [b for b in budgets if b["spec"]["selector"] == dep["spec"]["selector"]]
        assert 1 <= budget["spec"]["minAvailable"] < dep["spec"]["replicas"], svc
    assert len(budgets) == len(SERVICE_PORTS)


def test_cert_manager_makes_the_secrets_the_deployments_mount() -> None:
    """The alternative to make_secrets.py's TLS Secrets: one Certificate per mounted Secret, issued by a CA
    Issuer, for the names the clients dial."""
    certificates = {c["spec"]["secretName"]: c for c in cert_manager() if c["kind"] == "Certificate"}
    issuers = {i["metadata"]["name"]: i for i in cert_manager() if i["kind"] == "Issuer"}
    config = one("ConfigMap", "mieux-config")["data"]
    for name, dep in deployments().items():
        secret_name, _ = mounted_secret(dep, config["MIEUX_TLS_CERT_FILE"])
        cert = certificates[secret_name]
        assert "client auth" in cert["spec"]["usages"], name
        assert cert["spec"]["privateKey"]["encoding"] == "PKCS8", name
        issuer = issuers[cert["spec"]["issuerRef"]["name"]]
        assert certificates[issuer["spec"]["ca"]["secretName"]]["spec"]["isCA"] is True
        if name in SERVICE_PORTS:
            host = config[f"MIEUX_{name.upper()}_ADDR"].rsplit(":", 1)[0]
            assert host in cert["spec"]["dnsNames"] and "server auth" in cert["spec"]["usages"], name


def test_kustomize_builds() -> None:
    """`kubectl kustomize` (offline) accepts the kustomization, where kubectl is installed."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert len(built) == len(manifests())


# --- the guide -----------------------------------------------------------------------------------------


def test_the_deploy_guide_documents_every_setting() -> None:
    guide = (DEPLOY / "README.md").read_text()
    names = set(_aliases(Settings)) | set(_aliases(CarbonSettings)) | {"MIEUX_LOG_LEVEL"}
    missing = sorted(n for n in names if f"`{n}`" not in guide)
    assert not missing, missing
    for needed in ("MIEUX_<SERVICE>_ADDR", "MIEUX_<SERVICE>_PORT", "make_secrets.py", "kubectl apply -k"):
        assert needed in guide, needed
