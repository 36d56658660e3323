"""The gRPC kit: a `grpc.aio` server with health checking, reflection, graceful shutdown, and one
interceptor that authenticates, sets correlation ids and maps errors to status codes.

Auth: `authorization: Bearer <token>`, checked against the token registry (principals.py: salted hashes,
compared in constant time, reloaded when its file changes) for every kind of handler (unary and streaming; an
unknown kind is refused). Each RPC names the roles that may call it; a service principal may also call only the
methods of its allow-list. Health and reflection are open (probes). The principal's name (a person, a service)
is recorded as `actor` on every event a command appends.

TLS: a server with MIEUX_TLS_CERT_FILE and MIEUX_TLS_KEY_FILE serves TLS only (with MIEUX_TLS_CLIENT_AUTH it
also requires a client certificate of MIEUX_TLS_CA_FILE); `channel()` uses TLS whenever MIEUX_TLS_CA_FILE is
set, trusts that CA alone and presents this process's certificate when it has one. Without them (the dev
stack on loopback) both are plaintext. Reflection is served only with MIEUX_GRPC_REFLECTION; health also on
the plaintext MIEUX_GRPC_HEALTH_PORT when set (probes that cannot speak TLS).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import re
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from pydantic import ValidationError

from services.kernel import metrics
from services.kernel.errors import (
    CommandReused,
    ConcurrencyError,
    FieldViolation,
    InvalidArgument,
    NotFound,
    RuleBroken,
    Unavailable,
    from_validation_error,
)
from services.kernel.faults import is_transient
from services.kernel.limits import check_message
from services.kernel.principals import TokenRegistry
from services.kernel.settings import Principal, Role, Settings, SettingsError
from services.kernel.store import EventTooLarge

log = logging.getLogger(__name__)

principal_var: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)
correlation_var: contextvars.ContextVar[str] = contextvars.ContextVar("correlation_id", default="")

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# Who may call what (DESIGN.md section 11). admin is ops and more; finance reads figures, ledgers and reports
# only (never a command, the raw event log or a query answering with people's data).
COMMANDERS: frozenset[Role] = frozenset({"service", "ops", "admin"})
READERS: frozenset[Role] = frozenset({"service", "ops", "admin"})  # queries of records (people's data among them)
FIGURES: frozenset[Role] = READERS | {"finance"}  # aggregate figures, ledgers, reports
ADMINS: frozenset[Role] = frozenset({"admin"})  # forgetting a person, replaying and redriving events


def current_actor() -> str:
    p = principal_var.get()
    return p.name if p else "anonymous"


def _status(code: grpc.StatusCode, message: str, details: Iterable[Any] = ()) -> status_pb2.Status:
    packed = []
    for d in details:
        a = any_pb2.Any()
        a.Pack(d)
        packed.append(a)
    return status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=packed)


MAX_MESSAGE = 1000  # characters of a status message or a field violation's description (trailers stay small)
MAX_VIOLATIONS = 20


def _short(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def status_for(e: BaseException, correlation_id: str = "") -> status_pb2.Status:
    """The status a failure answers with: never UNKNOWN, never an unexpected exception's text."""
    if isinstance(e, ValidationError):
        e = from_validation_error(e)
    if isinstance(e, EventTooLarge):
        e = InvalidArgument(FieldViolation(e.field, str(e)))
    if isinstance(e, InvalidArgument):
        violations = e.violations[:MAX_VIOLATIONS]
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=_short(v.field), description=_short(v.description))
                for v in violations
            ]
        )
        return _status(grpc.StatusCode.INVALID_ARGUMENT, _short(str(InvalidArgument(*violations))), [bad])
    for kind, code in (
        (RuleBroken, grpc.StatusCode.FAILED_PRECONDITION),
        (NotFound, grpc.StatusCode.NOT_FOUND),
        (CommandReused, grpc.StatusCode.ALREADY_EXISTS),
        (ConcurrencyError, grpc.StatusCode.ABORTED),
        (Unavailable, grpc.StatusCode.UNAVAILABLE),
    ):
        if isinstance(e, kind):
            return _status(code, _short(str(e)))
    if is_transient(e):
        log.warning("unavailable (%s), correlation id %s", type(e).__name__, correlation_id)
        return _status(
            grpc.StatusCode.UNAVAILABLE,
            f"a store or collaborator is unavailable ({type(e).__name__}); retry with the same command id "
            f"(correlation id {correlation_id})",
        )
    log.error("internal error, correlation id %s", correlation_id, exc_info=e)
    return _status(grpc.StatusCode.INTERNAL, f"internal error (correlation id {correlation_id})")


CORRELATION_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def correlation_id_of(given: str | None) -> str:
    """The caller's correlation id if it is at most 64 characters of [A-Za-z0-9._-], else a fresh one."""
    return given if given and CORRELATION_ID.match(given) else str(uuid.uuid4())


@dataclass(frozen=True)
class Undecodable:
    """What a request that could not be parsed as its message type (e.g. invalid UTF-8) becomes."""

    error: str


def tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A request deserializer that hands an unparsable request to the handler as Undecodable (answered
    INVALID_ARGUMENT) instead of failing inside gRPC."""
    if deserialize is None:
        return None

    def parse(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception as e:
            return Undecodable(type(e).__name__)

    return parse


@dataclass
class Access:
    """Which roles may call each RPC, by full method name (`/pkg.Service/Method`)."""

    rules: Mapping[str, frozenset[Role]]

    def roles_for(self, method: str) -> frozenset[Role] | None:
        return self.rules.get(method)


class KitInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: TokenRegistry, access: Access) -> None:
        self.tokens = tokens
        self.access = access

    def _authenticate(
        self, method: str, metadata: Mapping[str, str]
    ) -> tuple[Principal | None, status_pb2.Status | None]:
        if method.startswith(OPEN_PREFIXES):
            return None, None
        auth = metadata.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return None, _status(grpc.StatusCode.UNAUTHENTICATED, "missing bearer token")
        principal = self.tokens.authenticate(auth[7:].strip())
        if principal is None:
            return None, _status(grpc.StatusCode.UNAUTHENTICATED, "unknown token")
        if not principal.may_call(method, self.access.roles_for(method)):
            return principal, _status(
                grpc.StatusCode.PERMISSION_DENIED, f"{principal.name} may not call {method.rsplit('/', 1)[-1]}"
            )
        return principal, None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        metadata = {k: v for k, v in (details.invocation_metadata or ()) if isinstance(v, str)}
        principal, refusal = self._authenticate(details.method, metadata)
        if not details.method.startswith(OPEN_PREFIXES):
            metrics.GRPC_CALLS.labels(details.method).inc()
        correlation_id = correlation_id_of(metadata.get("x-correlation-id"))

        async def prepare(request: Any, context: grpc.aio.ServicerContext) -> None:
            principal_var.set(principal)
            correlation_var.set(correlation_id)
            with contextlib.suppress(Exception):
                context.set_trailing_metadata((("x-correlation-id", correlation_id),))
            if refusal is not None:
                await context.abort_with_status(rpc_status.to_status(refusal))
            if request is None:  # a stream of requests: checked one by one (_checked)
                return
            if isinstance(request, Undecodable):
                raise InvalidArgument(FieldViolation("request", "not a valid message of this method's request type"))
            check_message(request)

        async def fail(e: Exception, context: grpc.aio.ServicerContext) -> None:
            if isinstance(e, grpc.aio.AbortError):  # a handler's own abort, already with its status
                raise e
            await context.abort_with_status(rpc_status.to_status(status_for(e, correlation_id)))

        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    await prepare(request, context)
                    return await inner_uu(request, context)
                except Exception as e:
                    await fail(e, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, tolerant(handler.request_deserializer), handler.response_serializer
            )
        if handler.unary_stream:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    await prepare(request, context)
                    async for item in inner_us(request, context):
                        yield item
                except Exception as e:
                    await fail(e, context)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, tolerant(handler.request_deserializer), handler.response_serializer
            )
        # client- and bidi-streaming: authenticated before the first request is read (none is served today)
        if handler.stream_unary:
            inner_su = handler.stream_unary

            async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
                try:
                    await prepare(None, context)
                    return await inner_su(_checked(requests), context)
                except Exception as e:
                    await fail(e, context)

            return grpc.stream_unary_rpc_method_handler(
                stream_unary, tolerant(handler.request_deserializer), handler.response_serializer
            )
        if handler.stream_stream:
            inner_ss = handler.stream_stream

            async def stream_stream(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                try:
                    await prepare(None, context)
                    async for item in inner_ss(_checked(requests), context):
                        yield item
                except Exception as e:
                    await fail(e, context)

            return grpc.stream_stream_rpc_method_handler(
                stream_stream, tolerant(handler.request_deserializer), handler.response_serializer
            )

        # a handler of a kind this kit does not know: refused rather than served unchecked
        async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this kind of method is not served")

        return grpc.unary_unary_rpc_method_handler(refuse)


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A stream of requests, each checked as a unary request is (decodable, within the limits)."""
    async for request in requests:
        if isinstance(request, Undecodable):
            raise InvalidArgument(FieldViolation("request", "not a valid message of this method's request type"))
        check_message(request)
        yield request


Registrar = Callable[[grpc.aio.Server], None]


# The health of the process alone (its event loop answers), for a liveness probe: SERVING from start to stop
# whatever its consumers do. The overall health ("") and each service's say NOT_SERVING while a consumer is
# down (readiness): a database outage takes a pod out of the load balancer without restarting it.
LIVENESS = "liveness"


# --- TLS ---------------------------------------------------------------------------------------------


def _pem(setting: str, path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise SettingsError(f"{setting}={path}: cannot read it ({e.strerror or e})") from e


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """A server's TLS: its certificate and key, and with MIEUX_TLS_CLIENT_AUTH the CA a client's certificate
    must be signed by. None (plaintext) when no certificate is set; a CA without one is a half configuration."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        if settings.tls_ca_file is not None or settings.tls_client_auth:
            raise SettingsError(
                "MIEUX_TLS_CA_FILE is set but MIEUX_TLS_CERT_FILE and MIEUX_TLS_KEY_FILE are not: a gRPC server "
                "needs its certificate and key to serve TLS"
            )
        return None
    cert = _pem("MIEUX_TLS_CERT_FILE", settings.tls_cert_file)
    key = _pem("MIEUX_TLS_KEY_FILE", settings.tls_key_file)
    ca = _pem("MIEUX_TLS_CA_FILE", settings.tls_ca_file) if settings.tls_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=ca if settings.tls_client_auth else None,
        require_client_auth=settings.tls_client_auth,
    )


def _stamp(path: Path | None) -> tuple[str, int] | None:
    if path is None:
        return None
    try:
        return str(path), Path(path).stat().st_mtime_ns
    except OSError:
        return str(path), -1


@functools.lru_cache(maxsize=16)
def _channel_credentials(
    ca: tuple[str, int], cert: tuple[str, int] | None, key: tuple[str, int] | None
) -> grpc.ChannelCredentials:
    """Made once per set of files (and again when one of them changes: the stamps carry their mtimes)."""
    return grpc.ssl_channel_credentials(
        root_certificates=_pem("MIEUX_TLS_CA_FILE", Path(ca[0])),
        private_key=_pem("MIEUX_TLS_KEY_FILE", Path(key[0])) if key else None,
        certificate_chain=_pem("MIEUX_TLS_CERT_FILE", Path(cert[0])) if cert else None,
    )


def channel_credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """A client's TLS: trust MIEUX_TLS_CA_FILE alone, present this process's certificate when it has one
    (mutual TLS). None (plaintext) when no CA is set."""
    if settings.tls_ca_file is None:
        return None
    ca = _stamp(settings.tls_ca_file)
    assert ca is not None
    return _channel_credentials(ca, _stamp(settings.tls_cert_file), _stamp(settings.tls_key_file))


class GrpcServer:
    """A service's gRPC server: its servicers plus health (and reflection when on), on one port; TLS when
    the settings give a certificate; health alone also on the plaintext health port when set."""

    def __init__(
        self,
        settings: Settings,
        port: int,
        registrars: Iterable[Registrar],
        service_names: Iterable[str],
        access: Access,
    ) -> None:
        self.settings = settings
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        self.server = grpc.aio.server(
            interceptors=[KitInterceptor(settings.tokens(), access)],
            options=[
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", settings.grpc_max_receive_bytes),
                ("grpc.max_send_message_length", settings.grpc_max_send_bytes),
            ],
            maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs,
        )
        for register in registrars:
            register(self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = list(service_names)
        if settings.grpc_reflection:
            reflection.enable_server_reflection(
                [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
            )
        credentials = server_credentials(settings)
        address = f"{settings.grpc_host}:{port}"
        if credentials is None:
            self.port = self.server.add_insecure_port(address)
        else:
            self.port = self.server.add_secure_port(address, credentials)
        # the same health servicer on a plaintext port of its own: what it says, and nothing else
        self.health_server: grpc.aio.Server | None = None
        self.health_port: int | None = None
        if settings.grpc_health_port is not None:
            self.health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)], maximum_concurrent_rpcs=16)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            self.health_port = self.health_server.add_insecure_port(f"{settings.grpc_host}:{settings.grpc_health_port}")

    async def start(self) -> None:
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
        for name in ["", LIVENESS, *self.service_names]:
            await self._set(name, health_pb2.HealthCheckResponse.SERVING)

    async def _set(self, name: str, status: int) -> None:
        r = self.health.set(name, status)
        if asyncio.iscoroutine(r):
            await r

    async def stop(self, grace: float = 5.0) -> None:
        for name in ["", LIVENESS, *self.service_names]:
            await self._set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace)
        if self.health_server is not None:
            await self.health_server.stop(None)


async def run_until_signalled(start: Callable[[], Awaitable[None]], stop: Callable[[], Awaitable[None]]) -> None:
    """Start, then wait for SIGTERM or SIGINT, then stop gracefully."""
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await start()
    try:
        await done.wait()
    finally:
        await stop()


# --- clients ---------------------------------------------------------------------------------------


# Every replica a target resolves to gets calls in turn (round_robin), not the first one alone (pick_first):
# "ipv4:127.0.0.1:50051,127.0.0.1:50151" (`mieux up --replicas 2`), or a DNS name with one address per
# replica (compose's service name, a Kubernetes headless Service). A replica that is down is skipped, and
# tried again within RECONNECT_MAX_MS once it is back (gRPC's default backoff grows to 120 s: a restarted
# replica would get no call for minutes).
RECONNECT_MAX_MS = 2000
BALANCED: tuple[tuple[str, str | int], ...] = (
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", RECONNECT_MAX_MS),
)


def channel(target: str, settings: Settings | None = None) -> grpc.aio.Channel:
    """A client channel to `target`, balanced over every address it lists or resolves to (BALANCED): TLS when
    MIEUX_TLS_CA_FILE is set (`channel_credentials`), else plaintext (the dev stack on loopback). `settings`
    default to this process's (the environment, then stack.json)."""
    credentials = channel_credentials(settings if settings is not None else Settings())
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=balanced(target))
    return grpc.aio.secure_channel(target, credentials, options=balanced(target))


def balanced(target: str) -> tuple[tuple[str, str | int], ...]:
    """The channel options of `target` (BALANCED); a list of addresses is named (authority, the name TLS checks
    the servers' certificates against) after its first address, as one address would be."""
    scheme, _, rest = target.partition(":")
    if scheme in ("ipv4", "ipv6") and "," in rest:
        return (*BALANCED, ("grpc.default_authority", rest.split(",", 1)[0]))
    return BALANCED


def call_metadata(token: str | None, correlation_id: str | None = None) -> tuple[tuple[str, str], ...]:
    md: list[tuple[str, str]] = []
    if token:
        md.append(("authorization", f"Bearer {token}"))
    md.append(("x-correlation-id", correlation_id or correlation_var.get() or str(uuid.uuid4())))
    return tuple(md)


def field_violations(e: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """The BadRequest field violations carried by an INVALID_ARGUMENT error."""
    out: list[tuple[str, str]] = []
    raw = dict(e.trailing_metadata() or ()).get("grpc-status-details-bin")
    if not raw:
        return out
    st = status_pb2.Status.FromString(raw)
    for d in st.details:
        if d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            d.Unpack(bad)
            out.extend((v.field, v.description) for v in bad.field_violations)
    return out
