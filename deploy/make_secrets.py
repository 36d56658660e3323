"""Generate the deploy's secrets: bearer tokens, database and Kafka passwords, and the TLS material.

    .venv/bin/python deploy/make_secrets.py        # after `make install`: needs the `cryptography` package

What it writes (all git-ignored; every private file is created with mode 0600, folders 0700):

- `deploy/.env`, read by `docker compose` (interpolation of compose.yaml): the PostgreSQL superuser's
  password, one PostgreSQL password per service role and for `ops` (PG_PASSWORD_<ROLE>), one Kafka SCRAM
  password per Kafka user (KAFKA_PASSWORD_<USER>: admin, ops, each service), the tokens' hashes
  (MIEUX_AUTH_TOKENS) and each principal's token (MIEUX_TOKEN_<NAME>);
- `deploy/tls/`: a CA (`ca.crt`, `ca.key`) and a key and certificate it signs for each service and `ops`
  (server and client: gRPC with mutual TLS; their names in compose and Kubernetes, localhost and
  127.0.0.1), each Kafka broker of compose (`kafka-1` ... `kafka-3`) and compose's PostgreSQL (`postgres`);
- `deploy/signing/<service>.pem`: each service's Ed25519 key, with which it signs the events it publishes
  (services/kernel/signing.py); their public keys are MIEUX_VERIFY_KEYS (in `.env` and `mieux-tokens`);
- `deploy/people/people.json`: the registry of people's own tokens (salted hashes; empty at first), which
  `mieux tokens issue|revoke` write (MIEUX_AUTH_TOKENS_FILE=deploy/people/people.json); compose's tls-init copies
  it to each service, Kubernetes mounts it from the Secret `mieux-people`;
- `deploy/personal-data/<service>.key`: the master key of each service that keeps personal data (experts,
  logistics), base64 of 32 random bytes, which wraps each person's data key (services/kernel/personal.py,
  MIEUX_PERSONAL_DATA_KEY_FILE). Losing it loses every name that service holds: back it up, apart from the
  database. With --force a new one is made and the old one kept beside it as `<service>-<its id>.retired`:
  put that into MIEUX_PERSONAL_DATA_PREVIOUS_KEYS before the service restarts (personal.py's rotation);
- `deploy/kubernetes/secrets/mieux-secrets.yaml`, for `kubectl apply --server-side -f`: the Secret
  `mieux-tokens`, a Secret `mieux-pg-<role>` per database role (`username`, `password`, and `uri`: the
  DATABASE_URL, TLS with `sslmode=verify-full` against CloudNativePG's CA), and a `kubernetes.io/tls`
  Secret `mieux-tls-<name>` per service and `ops` (left out with --cert-manager, which then makes them:
  kubernetes/cert-manager/), a Secret `mieux-signing-<service>` per service (`signing.pem`), a Secret
  `mieux-personal-data-<service>` per service that keeps personal data (`personal-data.key`); `mieux-tokens`
  also holds `verify-keys`. Strimzi's User Operator makes the Kafka passwords (Secret `mieux-<name>`).

Each service gets a token of its own (role `service`, principal named after the service, so the events a
call causes record which service acted, allowed only the calls its flows make: services/ops/catalog.py), and
people get `ops`, `finance` and `admin` tokens (people's own are issued with `mieux tokens issue` into the
registry file MIEUX_AUTH_TOKENS_FILE, deploy/README.md). The services only ever see a salted sha256 of a token
(`MIEUX_AUTH_TOKENS`, services/kernel/principals.py). What exists is kept unless --force (a new token
or CA would lock out every client holding the old one); what is missing is added, from the values already
there.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import secrets
import sys
from pathlib import Path
from urllib.parse import quote

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent

# the contexts, as in services/kernel/settings.py SERVICE_PORTS (the unit tests check they agree)
SERVICES = ("requests", "actions", "experts", "logistics", "carbon", "stats")
PEOPLE = ("ops", "finance", "admin")
# the services that keep personal data and refuse to start without a master key (services/kernel/personal.py:
# their __main__ builds MasterKeys.from_settings; the unit tests check they agree)
PERSONAL_DATA = ("experts", "logistics")
# database roles: one per service (owns the schemas it creates), and `ops` (member of every service role)
DB_ROLES = (*SERVICES, "ops")
# Kafka SCRAM users of compose: admin (a super user: topics and ACLs), ops, each service
KAFKA_USERS = ("admin", "ops", *SERVICES)
BROKERS = ("kafka-1", "kafka-2", "kafka-3")
# certificates: each service and ops (gRPC), compose's brokers and PostgreSQL
TLS_NAMES = (*SERVICES, "ops", *BROKERS, "postgres")

# where the deploys mount what these files hold (compose.yaml, kubernetes/*.yaml)
COMPOSE_CA = "/etc/mieux/tls/ca.crt"
KUBERNETES_PG_CA = "/etc/mieux/pg-ca/ca.crt"  # CloudNativePG's CA (Secret mieux-pg-ca)
KUBERNETES_PG_HOST = "mieux-pg-rw"  # CloudNativePG's read-write Service of the Cluster mieux-pg


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def generate() -> dict[str, str]:
    """principal -> token: one per service and one per people role."""
    return {name: f"mieux-{name}-{secrets.token_urlsafe(24)}" for name in (*SERVICES, *PEOPLE)}


def auth_tokens(tokens: dict[str, str], old: str | None = None) -> dict[str, object]:
    """What MIEUX_AUTH_TOKENS holds (services/kernel/principals.py): one salted entry per token, a service's with
    its allow-list of calls (services/ops/catalog.py). An entry of `old` still right for its token (the same
    hash, name, roles and calls) is kept as it is, so that running this again changes nothing."""
    from services.kernel.principals import entry_for, parse_entries, salted_hash
    from services.ops import catalog

    calls = catalog.calls()
    try:
        kept = {e.id: e for e in parse_entries(json.loads(old), "MIEUX_AUTH_TOKENS")} if old else {}
    except (ValueError, RuntimeError):  # the unsalted table of an older version: every entry is made again
        kept = {}
    entries = []
    for name, token in tokens.items():
        roles = ["service"] if name in SERVICES else [name]
        wanted = entry_for(token, name, roles, calls[name] if name in SERVICES else None, token_id=name)  # type: ignore[arg-type]
        was = kept.get(name)
        same = was is not None and (was.name, was.roles, was.calls) == (wanted.name, wanted.roles, wanted.calls)
        entries.append(was if same and salted_hash(was.salt, token) == was.hash else wanted)  # type: ignore[union-attr]
    return {"tokens": [e.model_dump(mode="json") for e in entries]}


def kafka_user(name: str) -> str:
    """The Kafka principal of a service or of ops (`User:mieux-<name>`), as its KafkaUser is named."""
    return "admin" if name == "admin" else f"mieux-{name}"


def password() -> str:
    return secrets.token_urlsafe(24)  # [A-Za-z0-9_-]: safe in a URL, a .env line and a SCRAM argument


def fresh_values() -> dict[str, str]:
    """Every value .env holds, newly generated."""
    tokens = generate()
    values = {"POSTGRES_PASSWORD": password()}
    values |= {f"PG_PASSWORD_{role.upper()}": password() for role in DB_ROLES}
    values |= {f"KAFKA_PASSWORD_{user.upper()}": password() for user in KAFKA_USERS}
    values["MIEUX_AUTH_TOKENS"] = json.dumps(auth_tokens(tokens), separators=(",", ":"))
    values |= {f"MIEUX_TOKEN_{name.upper()}": token for name, token in tokens.items()}
    return values


def tokens_of(values: dict[str, str]) -> dict[str, str]:
    return {name: values[f"MIEUX_TOKEN_{name.upper()}"] for name in (*SERVICES, *PEOPLE)}


def read_env(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            out[key.strip()] = value[1:-1] if value[:1] == value[-1:] == "'" else value
    return out


def compose_env(values: dict[str, str]) -> str:
    """deploy/.env: single quotes keep the JSON literal for compose."""
    return "".join(f"{k}='{v}'\n" for k, v in values.items())


def database_url(role: str, secret: str, host: str, ca: str, db: str = "mieux") -> str:
    """A service's DATABASE_URL: its own role, TLS with the server's name checked against `ca`."""
    return (
        f"postgresql://{role}:{quote(secret, safe='')}@{host}:5432/{db}"
        f"?sslmode=verify-full&sslrootcert={quote(ca, safe='/')}"
    )


def tls_names(name: str, namespace: str) -> tuple[list[str], list[str], bool]:
    """(DNS names, IP addresses, is a server) of a certificate: a service answers to its compose name and its
    Kubernetes Service's names (and on loopback, for a CLI in its container or on the compose host); ops is
    a client only; the brokers and PostgreSQL answer to their compose names."""
    if name in SERVICES:
        k8s = f"mieux-{name}"
        dns = [name, k8s, f"{k8s}.{namespace}", f"{k8s}.{namespace}.svc", f"{k8s}.{namespace}.svc.cluster.local"]
        return [*dns, "localhost"], ["127.0.0.1"], True
    if name == "ops":
        return [], [], False
    return [name], [], True


def make_pki(folder: Path, namespace: str, force: bool) -> dict[str, tuple[bytes, bytes]]:
    """The CA and every certificate of TLS_NAMES under `folder` (kept when there, unless force); returns
    name -> (key PEM, certificate PEM), with the CA's under "ca"."""
    from services.ops import certs

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_crt, ca_key = folder / "ca.crt", folder / "ca.key"
    if force or not (ca_crt.exists() and ca_key.exists()):
        ca = certs.new_ca("MIEUX CA")
        certs.write_private(ca_key, ca.key_pem)
        certs.write_public(ca_crt, ca.cert_pem)
        force = True  # a new CA: every certificate is issued again
    ca = certs.Issued(ca_key.read_bytes(), ca_crt.read_bytes())
    out = {"ca": (ca.key_pem, ca.cert_pem)}
    for name in TLS_NAMES:
        crt, key = folder / f"{name}.crt", folder / f"{name}.key"
        if force or not (crt.exists() and key.exists()):
            dns, ips, server = tls_names(name, namespace)
            leaf = certs.issue(ca, name, dns=dns, ips=ips, server=server, client=True)
            certs.write_private(key, leaf.key_pem)
            certs.write_public(crt, leaf.cert_pem)
        out[name] = (key.read_bytes(), crt.read_bytes())
    return out


def make_signing_keys(folder: Path, force: bool) -> dict[str, tuple[bytes, dict[str, str]]]:
    """Each service's Ed25519 signing key under `folder` (kept when there, unless force): service ->
    (private key PEM, {key id: public key}), as MIEUX_SIGNING_KEY_FILE and MIEUX_VERIFY_KEYS hold them."""
    from cryptography.hazmat.primitives import serialization

    from services.kernel import signing
    from services.ops import certs

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    out = {}
    for svc in SERVICES:
        path = folder / f"{svc}.pem"
        if force or not path.exists():
            certs.write_private(path, signing.private_pem(signing.new_key()[0]))
        pem = path.read_bytes()
        public = serialization.load_pem_private_key(pem, password=None).public_key()
        out[svc] = (pem, {signing.key_id_of(public): signing.public_text(public)})  # type: ignore[arg-type]
    return out


def make_personal_data_keys(folder: Path, force: bool) -> dict[str, str]:
    """The master key of each service of PERSONAL_DATA under `folder` (kept when there, unless force): service ->
    base64 of 32 random bytes, as MIEUX_PERSONAL_DATA_KEY_FILE holds it. A key replaced (force) is kept as
    `<service>-<master key id>.retired`, never overwritten: the data keys wrapped under it open with it alone."""
    from services.kernel.personal import master_key_id
    from services.ops import certs

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    out = {}
    for svc in PERSONAL_DATA:
        path = folder / f"{svc}.key"
        if path.exists() and force:
            old = path.read_text()
            try:
                kid = master_key_id(base64.b64decode(old.strip(), validate=True))
            except ValueError:  # not base64 (the service could not have started with it): named by its digest
                kid = sha256(old)[:16]
            retired = folder / f"{svc}-{kid}.retired"
            if certs.write_private(retired, old, replace=False):
                print(
                    f"{svc}: a new personal-data master key; the old one is {retired}: put it in "
                    f"MIEUX_PERSONAL_DATA_PREVIOUS_KEYS before {svc} restarts, or every name it holds is lost",
                    file=sys.stderr,
                )
        if force or not path.exists():
            certs.write_private(path, base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
        out[svc] = path.read_text()
    return out


def make_people(folder: Path) -> str:
    """The registry of people's own tokens, `people/people.json` (MIEUX_AUTH_TOKENS_FILE): made empty when
    missing, never replaced (`mieux tokens issue|revoke` write it); its text, for the Secret mieux-people."""
    from services.kernel import principals

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / "people.json"
    if not path.exists():
        principals.write_file(path, [])
    return path.read_text()


def secret(name: str, data: dict[str, str], kind: str = "Opaque") -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "mieux"}},
        "type": kind,
        "stringData": data,
    }


def kubernetes_secrets(
    values: dict[str, str],
    pki: dict[str, tuple[bytes, bytes]] | None,
    signing: dict[str, tuple[bytes, dict]],
    personal: dict[str, str],
    people: str = '{"tokens": []}',
) -> list[dict]:
    """The Secrets the manifests read, besides those the operators make (Strimzi's Kafka passwords and CAs,
    CloudNativePG's CA): JSON documents, which are YAML."""
    tokens = tokens_of(values)
    shared = {"auth-tokens": values["MIEUX_AUTH_TOKENS"], "verify-keys": values["MIEUX_VERIFY_KEYS"]}
    docs = [secret("mieux-tokens", shared | {f"{name}-token": tok for name, tok in tokens.items()})]
    docs.append(secret("mieux-people", {"people.json": people}))  # mounted: MIEUX_AUTH_TOKENS_FILE
    docs += [secret(f"mieux-signing-{svc}", {"signing.pem": pem.decode()}) for svc, (pem, _) in signing.items()]
    docs += [secret(f"mieux-personal-data-{svc}", {"personal-data.key": key}) for svc, key in personal.items()]
    for role in DB_ROLES:
        pw = values[f"PG_PASSWORD_{role.upper()}"]
        uri = database_url(role, pw, KUBERNETES_PG_HOST, KUBERNETES_PG_CA)
        data = {"username": role, "password": pw, "uri": uri}
        docs.append(secret(f"mieux-pg-{role}", data, "kubernetes.io/basic-auth"))
    if pki is not None:
        ca = pki["ca"][1].decode()
        for name in (*SERVICES, "ops"):
            key, crt = pki[name]
            data = {"tls.crt": crt.decode(), "tls.key": key.decode(), "ca.crt": ca}
            docs.append(secret(f"mieux-tls-{name}", data, "kubernetes.io/tls"))
    return docs


def write(path: Path, text: str, force: bool) -> bool:
    from services.ops.certs import write_private

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return write_private(path, text, replace=force)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEPLOY, help="the deploy folder (default: this script's)")
    p.add_argument("--force", action="store_true", help="replace everything: every token, password, key and the CA")
    p.add_argument("--namespace", default="mieux", help="the Kubernetes namespace, in the services' certificates")
    p.add_argument("--cert-manager", action="store_true", help="Kubernetes' TLS Secrets come from cert-manager")
    args = p.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        import cryptography  # noqa: F401
    except ImportError:
        print(
            "make_secrets.py needs the `cryptography` package for the TLS material: run it with the project's "
            "virtualenv (`make install`, then `.venv/bin/python deploy/make_secrets.py`)",
            file=sys.stderr,
        )
        return 2

    env_path = args.out / ".env"
    kept = {} if args.force or not env_path.exists() else read_env(env_path)
    values = {**fresh_values(), **kept}
    # the salted hashes of the tokens kept (and of any added): what the services accept
    registry = auth_tokens(tokens_of(values), kept.get("MIEUX_AUTH_TOKENS"))
    values["MIEUX_AUTH_TOKENS"] = json.dumps(registry, separators=(",", ":"))
    pki = make_pki(args.out / "tls", args.namespace, args.force)
    print(f"TLS material in {args.out / 'tls'}")
    signing = make_signing_keys(args.out / "signing", args.force)
    print(f"signing keys in {args.out / 'signing'}")
    personal = make_personal_data_keys(args.out / "personal-data", args.force)
    print(f"personal-data master keys in {args.out / 'personal-data'} (back them up, apart from the database)")
    people = make_people(args.out / "people")
    print(f"people's tokens in {args.out / 'people' / 'people.json'} (`mieux tokens issue`, deploy/README.md)")
    values["MIEUX_VERIFY_KEYS"] = json.dumps({svc: keys for svc, (_, keys) in signing.items()}, separators=(",", ":"))
    added = sorted(k for k in values if kept.get(k) != values[k]) if kept else []

    docs = kubernetes_secrets(values, None if args.cert_manager else pki, signing, personal, people)
    outputs = (
        (env_path, compose_env(values)),
        (
            args.out / "kubernetes" / "secrets" / "mieux-secrets.yaml",
            "---\n".join(json.dumps(d, indent=2) + "\n" for d in docs),
        ),
    )
    for path, text in outputs:
        replace = args.force or bool(added) or not path.exists()
        wrote = write(path, text, replace)
        print(("wrote " if wrote else "kept (use --force to replace) ") + str(path))
    if added:
        print(f"added to (or changed in) what was kept: {', '.join(added)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
