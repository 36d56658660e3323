"""The deploy files (deploy/) kept true against the code, without a Docker engine or a cluster.

Every YAML parses; the Kubernetes manifests validate against the Kubernetes JSON schemas (the pinned
`kubernetes-validate` package) and the operators' resources carry their CRDs' required fields; every
environment variable the deploy files set is one the code reads, and every setting without a default is
set; ports, addresses, topic names and partitions match the code's.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from concurrent import futures
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

import services
from services.carbon.settings import CarbonSettings
from services.kernel.bus import DLQ_PARTITIONS, dlq_topic
from services.kernel.envelope import topic_for
from services.kernel.policy import Policy
from services.kernel.projection import Projection
from services.kernel.runner import projection_group
from services.kernel.settings import SERVICE_PORTS, Settings, hash_token
from services.ops import catalog

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"

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


@cache
def settings_without_default() -> frozenset[str]:
    """Settings a deploy must set: required fields and those whose default (None) means "ask the dev
    stack's stack.json", which no deploy has."""
    out = set()
    for model in (Settings, CarbonSettings):
        for alias, f in _aliases(model).items():
            if f.is_required() or f.default is None:
                out.add(alias)
    return frozenset(out)


def test_the_code_facts_are_found() -> None:
    """The collectors above see what they must (else every check below would pass vacuously)."""
    read = settings_read()
    assert {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "MIEUX_AUTH_TOKENS", "MIEUX_TOKEN"} <= read
    assert {"MIEUX_LOG_LEVEL", "MIEUX_HOME", "MIEUX_CARBON_RADIATIVE_FORCING", "MIEUX_ACTIONS_ADDR"} <= read
    assert settings_without_default() >= {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "MIEUX_AUTH_TOKENS"}
    assert "MIEUX_TOPIC_PARTITIONS" not in settings_without_default()


@cache
def consumer_groups() -> dict[str, list[str]]:
    """service -> the consumer groups its process runs (mieux.<service>.projections for all its projections,
    mieux.<service>.<policy> for each policy), read from the Service each `python -m services.<service>` builds."""
    return {svc: [g for g, _ in built.consumer_groups()] for svc, built in catalog.services().items()}


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


def check_env(env: dict[str, Any], where: str) -> None:
    """Every variable is one the code reads; every setting without a default is set; the values parse as
    the services parse them (pydantic-settings from the environment)."""
    unknown = set(env) - settings_read()
    assert not unknown, f"{where} sets variables no code reads: {sorted(unknown)}"
    missing = settings_without_default() - set(env)
    assert not missing, f"{where} leaves settings without a default unset: {sorted(missing)}"
    literal = {k: str(v) for k, v in env.items() if not isinstance(v, dict)}  # not the Secret references
    with pytest.MonkeyPatch.context() as mp:
        for name in settings_read():
            mp.delenv(name, raising=False)
        for name, value in literal.items():
            mp.setenv(name, value)
        settings = Settings()  # a value a setting cannot parse (e.g. "ture") fails here
        CarbonSettings()
    assert settings.grpc_host == "0.0.0.0", f"{where}: a container must listen on every interface"
    assert settings.kafka_idempotent_producer, f"{where}: Apache Kafka has the idempotent producer"


COMPOSE_VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::\?[^}]*|:-([^}]*))?\}")


def interpolate(value: Any, variables: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:?message} and ${VAR:-default}, from `variables` (deploy/.env)."""

    def sub(m: re.Match[str]) -> str:
        if m.group(1) in variables:
            return variables[m.group(1)]
        assert m.group(2) is not None, f"${{{m.group(1)}}} is neither in deploy/.env nor defaulted"
        return m.group(2)

    return COMPOSE_VAR.sub(sub, str(value))


@pytest.fixture
def dot_env(tmp_path: Path) -> dict[str, str]:
    """What make_secrets.py writes into deploy/.env, for compose's interpolation."""
    assert make_secrets().main(["--out", str(tmp_path)]) == 0
    return dotenv(tmp_path / ".env")


# --- every YAML parses ---------------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    files = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert files
    return files


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


def test_compose_runs_every_service_with_its_port_and_health_check() -> None:
    svcs = compose_services()
    assert set(svcs) == set(SERVICE_PORTS)
    for name, spec in svcs.items():
        port = SERVICE_PORTS[name]
        assert spec["command"] == ["python", "-m", f"services.{name}"]
        assert [p.rsplit(":", 1)[1] for p in spec["ports"]] == [str(port)]
        assert spec["healthcheck"]["test"][-1] == str(port)
        assert spec["healthcheck"]["test"][:-1] == ["CMD", "python", healthcheck_path()]
        deps = spec["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["kafka-topics"]["condition"] == "service_completed_successfully"
        assert set(deps) <= set(compose()["services"]), deps


def test_compose_env_is_what_the_settings_read(dot_env: dict[str, str]) -> None:
    services_ = compose()["services"]
    for name, spec in [*compose_services().items(), ("ops", services_["ops"])]:
        raw = spec["environment"]
        env = {k: interpolate(v, dot_env) for k, v in raw.items()}
        check_env(env, f"compose service {name}")
        for svc, port in SERVICE_PORTS.items():
            host, p = env[f"MIEUX_{svc.upper()}_ADDR"].rsplit(":", 1)
            assert host in compose_services() and compose_services()[host]["command"][-1] == f"services.{svc}"
            assert int(p) == port
        for server in env["KAFKA_BOOTSTRAP_SERVERS"].split(","):
            host, p = server.rsplit(":", 1)
            advertised = services_[host]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
            assert advertised.endswith(f"//{host}:{p}"), advertised
        url = urlsplit(env["DATABASE_URL"])
        pg = {k: interpolate(v, dot_env) for k, v in services_[url.hostname]["environment"].items()}
        assert url.scheme in ("postgresql", "postgres")
        assert (url.username, url.path.lstrip("/")) == (pg["POSTGRES_USER"], pg["POSTGRES_DB"])
        assert url.password == pg["POSTGRES_PASSWORD"]
        # each service presents a token of its own, which authenticates as that service
        principal = Settings.model_validate({"MIEUX_AUTH_TOKENS": json.loads(env["MIEUX_AUTH_TOKENS"])}).tokens()[
            hash_token(env["MIEUX_TOKEN"])
        ]
        assert principal.name == name and principal.roles == frozenset({"ops" if name == "ops" else "service"})


def test_compose_kafka_is_kraft_with_three_brokers_rf3_min_isr2() -> None:
    services_ = compose()["services"]
    brokers = {n: s for n, s in services_.items() if "KAFKA_NODE_ID" in s.get("environment", {})}
    assert len(brokers) == 3
    for name, spec in brokers.items():
        env = spec["environment"]
        assert spec["image"].startswith("apache/kafka:")
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
        voters = dict(v.split("@") for v in env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(","))
        assert {str(s["environment"]["KAFKA_NODE_ID"]) for s in brokers.values()} == set(voters)
        assert voters[str(env["KAFKA_NODE_ID"])].split(":")[0] == name
        assert int(env["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == len(brokers)
        assert int(env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == len(brokers)
        assert int(env["KAFKA_MIN_INSYNC_REPLICAS"]) == 2
        assert str(env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]).lower() == "false"
        assert "healthcheck" in spec


def test_compose_creates_every_topic_of_the_catalogue() -> None:
    step = compose()["services"]["kafka-topics"]
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
    script = "\n".join(step["command"])
    for needed in (
        "$$EVENT_TOPICS",
        "$$DLQ_TOPICS",
        '"$$MIEUX_TOPIC_PARTITIONS"',
        '"$$DLQ_PARTITIONS"',
        '"$$MIEUX_TOPIC_REPLICATION"',
        "retention.ms=-1",
        "--if-not-exists",
    ):
        assert needed in script, needed
    brokers = {n for n, s in compose()["services"].items() if "KAFKA_NODE_ID" in s.get("environment", {})}
    assert {d for d, c in step["depends_on"].items() if c["condition"] == "service_healthy"} == brokers


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


def test_make_secrets_tokens_authenticate_as_their_principals(tmp_path: Path) -> None:
    ms = make_secrets()
    assert set(ms.SERVICES) == set(SERVICE_PORTS)
    assert ms.main(["--out", str(tmp_path)]) == 0
    env = dotenv(tmp_path / ".env")
    principals = Settings.model_validate({"MIEUX_AUTH_TOKENS": json.loads(env["MIEUX_AUTH_TOKENS"])}).tokens()
    for svc in SERVICE_PORTS:
        p = principals[hash_token(env[f"MIEUX_TOKEN_{svc.upper()}"])]
        assert (p.name, p.roles) == (svc, frozenset({"service"}))
    for role in ("ops", "finance", "admin"):
        assert principals[hash_token(env[f"MIEUX_TOKEN_{role.upper()}"])].roles == frozenset({role})
    assert len(principals) == len(SERVICE_PORTS) + 3
    kube = dotenv(tmp_path / "kubernetes" / "mieux-tokens.env")
    assert kube["auth-tokens"] == env["MIEUX_AUTH_TOKENS"]
    assert all(kube[f"{svc}-token"] == env[f"MIEUX_TOKEN_{svc.upper()}"] for svc in SERVICE_PORTS)
    # a second run keeps the tokens (clients hold them); --force rotates them
    ms.main(["--out", str(tmp_path)])
    assert dotenv(tmp_path / ".env") == env
    ms.main(["--out", str(tmp_path), "--force"])
    assert dotenv(tmp_path / ".env")["MIEUX_TOKEN_OPS"] != env["MIEUX_TOKEN_OPS"]


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
    froms = [line.split()[1] for line in lines if line.startswith("FROM")]
    assert len(froms) >= 2 and all(f == "python:3.11-slim" for f in froms)
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
    assert exposed == set(SERVICE_PORTS.values())
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
# CloudNativePG postgresql.cnpg.io/v1 Cluster: spec.instances (>= 1); storage: size or pvcTemplate.
CRD_REQUIRED: dict[tuple[str, str], tuple[str, ...]] = {
    ("kafka.strimzi.io/v1beta2", "Kafka"): ("spec.kafka.listeners",),
    ("kafka.strimzi.io/v1beta2", "KafkaNodePool"): ("spec.replicas", "spec.storage.type", "spec.roles"),
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"): ("metadata.labels",),
    ("postgresql.cnpg.io/v1", "Cluster"): ("spec.instances", "spec.storage"),
}
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def check_crd(r: dict[str, Any]) -> None:
    for path in CRD_REQUIRED[(r["apiVersion"], r["kind"])]:
        _get(r, path)
    spec = r.get("spec", {})
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
            assert r["metadata"]["labels"]["strimzi.io/cluster"] in {k["metadata"]["name"] for k in resources("Kafka")}
        case "KafkaTopic":
            assert r["metadata"]["labels"]["strimzi.io/cluster"] in {k["metadata"]["name"] for k in resources("Kafka")}
            assert spec.get("partitions", 1) >= 1 and spec.get("replicas", 1) >= 1
        case "Cluster":
            assert isinstance(spec["instances"], int) and spec["instances"] >= 1
            assert "size" in spec["storage"] or "pvcTemplate" in spec["storage"]


def test_kubernetes_manifests_validate() -> None:
    import kubernetes_validate as kv  # dev dependency (pyproject.toml): ships the schemas, works offline
    from kubernetes_validate import utils

    versions = [utils.latest_version() if v == "latest" else v for v in K8S_VERSIONS]
    checked = set()
    for name, r in manifests():
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
    assert set(CRD_REQUIRED) <= checked, "a Kafka, a node pool, topics and a PostgreSQL cluster"


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


def container_env(dep: dict[str, Any]) -> dict[str, Any]:
    """The environment of a Deployment's container: its ConfigMaps (envFrom) and its env entries."""
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    env: dict[str, Any] = {}
    for src in container.get("envFrom", []):
        env.update(one("ConfigMap", src["configMapRef"]["name"])["data"])
    for e in container.get("env", []):
        assert e["name"] not in env, f"{e['name']} set twice"
        env[e["name"]] = e.get("value", {"valueFrom": e.get("valueFrom")})
    return env


def test_kubernetes_runs_every_service_with_probes_resources_and_non_root() -> None:
    deployments = {d["spec"]["template"]["spec"]["containers"][0]["command"][-1]: d for d in resources("Deployment")}
    assert set(deployments) == {f"services.{svc}" for svc in SERVICE_PORTS}
    for svc, port in SERVICE_PORTS.items():
        dep = deployments[f"services.{svc}"]
        pod = dep["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["command"] == ["python", "-m", f"services.{svc}"]
        metrics_port = int(container_env(dep)["MIEUX_METRICS_PORT"])
        assert [p["containerPort"] for p in c["ports"]] == [port, metrics_port]
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(metrics_port) and annotations["prometheus.io/scrape"] == "true"
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert c[probe]["grpc"]["port"] == port, (svc, probe)
        assert c["resources"]["requests"] and c["resources"]["limits"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        # a read-only root: MIEUX_HOME (the policies' faust data) must be a mounted volume
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert container_env(dep)["MIEUX_HOME"] in mounts
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
        matching = [s for s in resources("Service") if s["spec"]["selector"].items() <= labels.items()]
        assert len(matching) == 1, svc
        (sport,) = matching[0]["spec"]["ports"]
        assert sport["port"] == port and sport["targetPort"] in (port, c["ports"][0].get("name"))


def test_kubernetes_env_is_what_the_settings_read() -> None:
    tokens_keys = set(dotenv_text(make_secrets().kubernetes_env(make_secrets().generate())))
    (pg,) = resources("Cluster")
    (kafka,) = resources("Kafka")
    plain = next(li for li in kafka["spec"]["kafka"]["listeners"] if not li["tls"])
    for dep in resources("Deployment"):
        svc = dep["spec"]["template"]["spec"]["containers"][0]["command"][-1].removeprefix("services.")
        env = container_env(dep)
        check_env(env, f"Deployment {dep['metadata']['name']}")
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == f"{kafka['metadata']['name']}-kafka-bootstrap:{plain['port']}"
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
        # CloudNativePG writes <cluster>-app with the key `uri`
        assert refs["DATABASE_URL"] == {"name": f"{pg['metadata']['name']}-app", "key": "uri"}
        assert refs["MIEUX_TOKEN"] == {"name": "mieux-tokens", "key": f"{svc}-token"}
        assert refs["MIEUX_AUTH_TOKENS"]["name"] == "mieux-tokens"
        assert {r["key"] for r in refs.values() if r["name"] == "mieux-tokens"} <= tokens_keys


def dotenv_text(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


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
    missing = sorted(n for n in names if n not in guide)
    assert not missing, missing
    for needed in ("MIEUX_<SERVICE>_ADDR", "MIEUX_<SERVICE>_PORT", "make_secrets.py", "kubectl apply -k"):
        assert needed in guide, needed
