"""The token registry (services/kernel/principals.py) and the gRPC kit's authorisation: salted hashes, every entry
compared in constant time, tokens of 32 characters or more, the registry file read again when it changes, a
service principal limited to its calls, and every kind of handler authenticated (an unknown kind refused)."""

from __future__ import annotations

import json
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.wrappers_pb2 import StringValue
from support import long_token

from services.kernel import principals
from services.kernel.grpckit import Access, KitInterceptor
from services.kernel.principals import TokenRegistry, entry_for
from services.kernel.settings import Principal, Settings, SettingsError

OPS, FIN, SVC = long_token("ops"), long_token("fin"), long_token("svc")


def test_an_entry_is_salted_and_keeps_no_token() -> None:
    a, b = entry_for(OPS, "ana", ["ops"]), entry_for(OPS, "ana", ["ops"])
    assert a.salt != b.salt and a.hash != b.hash  # the same token, two different hashes
    assert OPS not in principals.dump_entries([a, b])
    assert principals.salted_hash(a.salt, OPS) == a.hash


def test_a_token_shorter_than_32_characters_is_neither_issued_nor_accepted() -> None:
    with pytest.raises(SettingsError, match="32"):
        entry_for("x" * 31, "ana", ["ops"])
    registry = TokenRegistry([entry_for(OPS, "ana", ["ops"])])
    assert registry.authenticate(OPS[:31]) is None
    with pytest.raises(SettingsError, match="MIEUX_TOKEN"):
        Settings(MIEUX_TOKEN="short-token")  # type: ignore[call-arg]
    assert len(principals.new_token()) >= 32


def test_every_entry_is_compared_whatever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    entries = [entry_for(OPS, "ana", ["ops"]), entry_for(FIN, "fay", ["finance"]), entry_for(SVC, "x", ["service"], [])]
    registry = TokenRegistry(entries)
    compared: list[bytes] = []
    real = principals.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(principals.hmac, "compare_digest", counting)
    p = registry.authenticate(OPS)  # the first entry's
    assert p is not None and p.name == "ana" and p.roles == {"ops"}
    assert compared == [bytes.fromhex(e.hash) for e in entries]  # no early exit on the hit
    compared.clear()
    assert registry.authenticate(long_token("nobody")) is None
    assert compared == [bytes.fromhex(e.hash) for e in entries]


def test_a_service_principal_needs_its_calls_and_may_make_only_those() -> None:
    with pytest.raises(ValueError, match="list of calls"):
        entry_for(SVC, "experts", ["service"])
    p = entry_for(SVC, "experts", ["service"], ["/a.B/Get"]).principal()
    readers = frozenset({"service", "ops"})
    assert p.may_call("/a.B/Get", readers)  # type: ignore[arg-type]
    assert not p.may_call("/a.B/List", readers)  # type: ignore[arg-type]  # not on its list
    assert not p.may_call("/a.B/Get", frozenset({"admin"}))  # on its list, but the method does not admit services
    assert not p.may_call("/a.B/Get", None)  # an unknown method
    person = Principal(name="ana", roles=frozenset({"ops"}))
    assert person.may_call("/a.B/List", readers) and not person.may_call("/a.B/List", frozenset({"admin"}))  # type: ignore[arg-type]


def test_the_file_is_private_and_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "auth-tokens.json"
    ana = entry_for(OPS, "ana", ["ops"])
    principals.write_file(path, [ana])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    registry = TokenRegistry([], path)
    assert registry.authenticate(OPS) is not None and registry.authenticate(FIN) is None
    principals.write_file(path, [ana, entry_for(FIN, "fay", ["finance"])])  # issued
    assert (p := registry.authenticate(FIN)) is not None and p.name == "fay"
    principals.write_file(path, [e for e in principals.read_file(path) if e.name != "ana"])  # revoked
    assert registry.authenticate(OPS) is None
    settings = Settings(MIEUX_AUTH_TOKENS_FILE=str(path), MIEUX_AUTH_TOKENS=json.loads(principals.dump_entries([ana])))  # type: ignore[call-arg]
    assert {p.name for p in settings.tokens().principals()} == {"ana", "fay"}
    path.write_text("{not json")  # a broken file keeps the last good entries rather than lock everybody out
    assert registry.authenticate(FIN) is not None


# --- the interceptor, on a real gRPC server of this event loop -------------------------------------------------

M = "/t.T/"


async def _echo_unary(request: StringValue, context: Any) -> StringValue:
    return request


async def _sum(requests: AsyncIterator[StringValue], context: Any) -> StringValue:
    return StringValue(value="".join([r.value async for r in requests]))


async def _echo_stream(requests: AsyncIterator[StringValue], context: Any) -> AsyncIterator[StringValue]:
    async for r in requests:
        yield r


PB = {"request_deserializer": StringValue.FromString, "response_serializer": StringValue.SerializeToString}
CLIENT = {"request_serializer": StringValue.SerializeToString, "response_deserializer": StringValue.FromString}


class _NoKind(grpc.RpcMethodHandler):
    """A handler of no kind the kit knows (every kind unset)."""

    request_streaming = response_streaming = False
    request_deserializer = response_serializer = None
    unary_unary = unary_stream = stream_unary = stream_stream = None


class _Handlers(grpc.GenericRpcHandler):
    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        return {
            M + "Unary": grpc.unary_unary_rpc_method_handler(_echo_unary, **PB),
            M + "ClientStream": grpc.stream_unary_rpc_method_handler(_sum, **PB),
            M + "Bidi": grpc.stream_stream_rpc_method_handler(_echo_stream, **PB),
            M + "Odd": _NoKind(),
        }.get(details.method)


@pytest.fixture
async def server() -> AsyncIterator[grpc.aio.Channel]:
    registry = TokenRegistry([entry_for(OPS, "ana", ["ops"]), entry_for(FIN, "fay", ["finance"])])
    ops = frozenset({"ops"})
    access = Access({M + "Unary": ops, M + "ClientStream": ops, M + "Bidi": ops, M + "Odd": ops})  # type: ignore[dict-item]
    s = grpc.aio.server(interceptors=[KitInterceptor(registry, access)])
    s.add_generic_rpc_handlers([_Handlers()])
    port = s.add_insecure_port("127.0.0.1:0")
    await s.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield ch
    finally:
        await s.stop(None)


async def _status(ch: grpc.aio.Channel, method: str, token: str | None) -> str:
    """The status of a call of `method` with `token`. A streaming call of a token that must be refused writes no
    request: the kit refuses before reading any (had it let the call through, the handler would wait for requests
    until the deadline). One that must pass writes two and checks the answer. (Writing while the server refuses
    makes grpc's client report INTERNAL for its failed write, whatever the server answered.)"""
    md = [("authorization", f"Bearer {token}")] if token else []
    if method in ("Unary", "Odd"):
        try:
            reply = await ch.unary_unary(M + method, **CLIENT)(StringValue(value="a"), metadata=md, timeout=10)
        except grpc.aio.AioRpcError as e:
            return e.code().name
        assert reply.value == "a"
        return "OK"
    kind = ch.stream_unary if method == "ClientStream" else ch.stream_stream
    call = kind(M + method, **CLIENT)(metadata=md, timeout=10)
    if token == OPS:
        for v in "ab":
            await call.write(StringValue(value=v))
        await call.done_writing()
        got = [(await call).value] if method == "ClientStream" else [r.value async for r in call]
        assert got == (["ab"] if method == "ClientStream" else ["a", "b"])
    return (await call.code()).name


@pytest.mark.parametrize("method", ["Unary", "ClientStream", "Bidi"])
async def test_every_kind_of_handler_is_authenticated(server: grpc.aio.Channel, method: str) -> None:
    assert await _status(server, method, None) == "UNAUTHENTICATED"
    assert await _status(server, method, long_token("nobody")) == "UNAUTHENTICATED"
    assert await _status(server, method, FIN) == "PERMISSION_DENIED"
    assert await _status(server, method, OPS) == "OK"


async def test_a_handler_of_an_unknown_kind_is_refused(server: grpc.aio.Channel) -> None:
    assert await _status(server, "Odd", OPS) == "UNIMPLEMENTED"


def test_an_entry_writes_its_sets_in_order_so_it_reads_back_and_writes_the_same() -> None:
    calls = [f"/mieux.x.v1.X/Call{c}" for c in "QWERTYUIOPASDFGH"]
    entry = principals.entry_for(long_token("stats"), "stats", ["service"], calls)
    written = principals.dump_entries([entry])
    assert json.loads(written)["tokens"][0]["calls"] == sorted(calls)
    assert principals.dump_entries(principals.parse_entries(json.loads(written), "test")) == written
