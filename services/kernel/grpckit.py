"""The gRPC kit: a `grpc.aio` server with health checking, reflection, graceful shutdown, and one
interceptor that authenticates, sets correlation ids and maps errors to status codes.

Auth: `authorization: Bearer <token>`; tokens are stored hashed (sha256) in settings and map to a
principal with roles. Each RPC names the roles that may call it; health and reflection are open (probes).
The principal is recorded as `actor` on every event a command appends.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from pydantic import ValidationError

from services.kernel.errors import (
    CommandReused,
    ConcurrencyError,
    InvalidArgument,
    NotFound,
    RuleBroken,
    Unavailable,
    from_validation_error,
)
from services.kernel.settings import Principal, Role, Settings, hash_token

log = logging.getLogger(__name__)

principal_var: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("principal", default=None)
correlation_var: contextvars.ContextVar[str] = contextvars.ContextVar("correlation_id", default="")

OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
COMMANDERS: frozenset[Role] = frozenset({"service", "ops", "admin"})
READERS: frozenset[Role] = frozenset({"service", "ops", "finance", "admin"})


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


def status_for(e: BaseException) -> status_pb2.Status | None:
    if isinstance(e, ValidationError):
        e = from_validation_error(e)
    if isinstance(e, InvalidArgument):
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in e.violations
            ]
        )
        return _status(grpc.StatusCode.INVALID_ARGUMENT, str(e), [bad])
    for kind, code in (
        (RuleBroken, grpc.StatusCode.FAILED_PRECONDITION),
        (NotFound, grpc.StatusCode.NOT_FOUND),
        (CommandReused, grpc.StatusCode.ALREADY_EXISTS),
        (ConcurrencyError, grpc.StatusCode.ABORTED),
        (Unavailable, grpc.StatusCode.UNAVAILABLE),
    ):
        if isinstance(e, kind):
            return _status(code, str(e))
    return None


@dataclass
class Access:
    """Which roles may call each RPC, by full method name (`/pkg.Service/Method`)."""

    rules: Mapping[str, frozenset[Role]]

    def roles_for(self, method: str) -> frozenset[Role] | None:
        return self.rules.get(method)


class KitInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: Mapping[str, Principal], access: Access) -> None:
        self.tokens = dict(tokens)
        self.access = access

    def _authenticate(
        self, method: str, metadata: Mapping[str, str]
    ) -> tuple[Principal | None, status_pb2.Status | None]:
        if method.startswith(OPEN_PREFIXES):
            return None, None
        auth = metadata.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return None, _status(grpc.StatusCode.UNAUTHENTICATED, "missing bearer token")
        principal = self.tokens.get(hash_token(auth[7:].strip()))
        if principal is None:
            return None, _status(grpc.StatusCode.UNAUTHENTICATED, "unknown token")
        allowed = self.access.roles_for(method)
        if allowed is None or not (principal.roles & allowed):
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
        correlation_id = metadata.get("x-correlation-id") or str(uuid.uuid4())

        async def prepare(context: grpc.aio.ServicerContext) -> None:
            principal_var.set(principal)
            correlation_var.set(correlation_id)
            with contextlib.suppress(Exception):
                context.set_trailing_metadata((("x-correlation-id", correlation_id),))
            if refusal is not None:
                await context.abort_with_status(rpc_status.to_status(refusal))

        async def fail(e: Exception, context: grpc.aio.ServicerContext) -> None:
            st = status_for(e)
            if st is None:
                raise e
            await context.abort_with_status(rpc_status.to_status(st))

        if handler.unary_unary:
            inner_uu = handler.unary_unary

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await prepare(context)
                try:
                    return await inner_uu(request, context)
                except Exception as e:
                    await fail(e, context)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            inner_us = handler.unary_stream

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                await prepare(context)
                try:
                    async for item in inner_us(request, context):
                        yield item
                except Exception as e:
                    await fail(e, context)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, handler.request_deserializer, handler.response_serializer
            )
        return handler


Registrar = Callable[[grpc.aio.Server], None]


class GrpcServer:
    """A service's gRPC server: its servicers plus health and reflection, on one port."""

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
            options=[("grpc.so_reuseport", 0)],
        )
        for register in registrars:
            register(self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = list(service_names)
        reflection.enable_server_reflection(
            [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server
        )
        self.port = self.server.add_insecure_port(f"{settings.grpc_host}:{port}")

    async def start(self) -> None:
        await self.server.start()
        for name in ["", *self.service_names]:
            await self._set(name, health_pb2.HealthCheckResponse.SERVING)

    async def _set(self, name: str, status: int) -> None:
        r = self.health.set(name, status)
        if asyncio.iscoroutine(r):
            await r

    async def stop(self, grace: float = 5.0) -> None:
        for name in ["", *self.service_names]:
            await self._set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace)


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


def channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target)


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
