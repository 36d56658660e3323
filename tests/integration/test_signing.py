"""Signed events against the real PostgreSQL and broker (DESIGN.md section 9: never "an event on a topic applied
though its producer did not sign it"): envelopes published straight onto a service's topic unsigned, forged,
doctored, signed with another service's key or an unknown one are never applied by a projection or a policy,
and `mieux parked list` shows each with its reason; a rotated key signs new events while what the old one
signed is still applied (a new consumer group, a replay, a parked retry once the consumer knows the key); a
service whose key nobody can verify does not start."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import ClassVar

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support import Child, eventually, make_envelope, mieux_cli, read_topic, signed

from services.kernel import bus
from services.kernel.db import Pool
from services.kernel.envelope import Envelope, Event, topic_for
from services.kernel.policy import Policy, PolicyRunner
from services.kernel.projection import Projection
from services.kernel.relay import Relay, request_replay
from services.kernel.runner import ProjectionRunner
from services.kernel.schemas import kernel_tables
from services.kernel.settings import Settings
from services.kernel.signing import Signed, Signer, Verifier, dev_key_file, load_public_keys, private_pem, signer_for
from services.kernel.store import EventStore, Metadata
from services.ops import parked as parked_ops

pytestmark = pytest.mark.integration


class SigningTestTicked(Event):
    source: ClassVar[str] = "test"
    n: int


class Sums(Projection):
    """Per stream, the sum of n and the versions in the order they were applied."""

    tables: ClassVar[tuple[str, ...]]

    def __init__(self, schema: str, name: str = "sums") -> None:
        self.name = f"{name}_{schema}"  # type: ignore[misc]
        self.service = schema  # type: ignore[misc]  # its tracking and parking: <schema>_projections, _parking
        self.topics = (topic_for(schema),)  # type: ignore[misc]
        self.table = f"{schema}_views.{name}"
        self.tables = (self.table,)  # type: ignore[misc]
        self.setup_sql = f"""
        CREATE SCHEMA IF NOT EXISTS {schema}_views;
        CREATE TABLE IF NOT EXISTS {self.table} (
            stream_id text PRIMARY KEY, total bigint NOT NULL, versions text NOT NULL);
        """  # type: ignore[misc]

    async def apply(self, conn: asyncpg.Connection, env: Envelope, event: Event) -> None:
        assert isinstance(event, SigningTestTicked)
        await conn.execute(
            f"INSERT INTO {self.table} AS s VALUES ($1, $2, $3) ON CONFLICT (stream_id) DO UPDATE "
            "SET total = s.total + EXCLUDED.total, versions = s.versions || ',' || EXCLUDED.versions",
            env.stream_id,
            event.n,
            str(env.stream_version),
        )

    async def model(self, pool: Pool) -> dict[str, tuple[int, str]]:
        return {r["stream_id"]: (r["total"], r["versions"]) for r in await pool.fetch(f"SELECT * FROM {self.table}")}


class Handled(Policy):
    """Records what it is given to handle."""

    name = "signing_test_handled"

    def __init__(self, topic: str) -> None:
        self.topics = (topic,)  # type: ignore[misc]
        self.handled: list[tuple[str, int]] = []

    async def handle(self, env: Envelope, event: Event, command_id: str) -> None:
        self.handled.append((env.stream_id, env.stream_version))


def ticked(stream: str, version: int, n: int) -> Envelope:
    return make_envelope("SigningTestTicked", {"n": n}, stream_id=stream, version=version)


async def send(settings: Settings, topic: str, messages: Sequence[Signed]) -> None:
    """Straight onto the topic, as anyone who can reach the broker can, in order."""
    producer = bus.producer(settings)
    await producer.start()
    try:
        for m in messages:
            await producer.send(topic, value=m.value, key=m.key, headers=m.headers)
        await producer.flush()
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def projecting(
    pool: Pool, projection: Sums, settings: Settings, group: str, verifier: Verifier | None = None
) -> AsyncIterator[ProjectionRunner]:
    async with pool.acquire() as conn:
        await projection.setup(conn)
    runner = ProjectionRunner([projection], pool, settings, group)
    runner.verifier = verifier or runner.verifier
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()


async def parked_reasons(stack_env: dict[str, str], group: str) -> list[tuple[str, str]]:
    """(stream, reason) of what `mieux parked list GROUP` shows, in order."""
    code, out = await mieux_cli(stack_env, "parked", "list", group, "--json")
    assert code == 0, out
    return [(r["stream_id"], r["reason"]) for r in map(json.loads, out.splitlines())]


async def parked_ids(pool: Pool, service: str, group: str) -> list[int]:
    parked = kernel_tables(service).parked
    return [r["id"] for r in await pool.fetch(f"SELECT id FROM {parked} WHERE consumer_group = $1", group)]


async def test_what_its_producer_did_not_sign_is_never_applied_and_is_parked_with_its_reason(
    pool, schema, stack_env
) -> None:
    settings = Settings()
    topic = topic_for(schema)
    own = signer_for(settings, schema)  # the topic's producer's key, as the stack gave it to the schema
    [genuine, later_genuine] = signed(topic, [ticked("g", 1, 1), ticked("g", 2, 2)])
    unsigned = ticked("u", 1, 10)
    [doctored] = signed(topic, [ticked("t", 1, 1)])
    [u_after] = signed(topic, [ticked("u", 2, 20)])  # a genuine event of a stream held by a forged one
    forged_as = {
        "f": Signer(schema, own.key_id, Ed25519PrivateKey.generate()),  # the producer's key id, another key
        "o": signer_for(settings, "requests"),  # a real key, of another service
        "k": Signer(schema, "rogue-1", Ed25519PrivateKey.generate()),  # a key nobody knows
    }
    forged = [
        s.seal([ticked(stream, 1, 100).model_copy(update={"source": schema})])[0] for stream, s in forged_as.items()
    ]
    messages = [
        genuine,
        Signed(b"u", unsigned.model_copy(update={"source": schema}).to_bytes(), []),
        Signed(doctored.key, doctored.value.replace(b'"n":1', b'"n":1000'), doctored.headers),
        *forged,
        u_after,
        later_genuine,
    ]
    projection = Sums(schema)
    group = f"test.{schema}.signed"
    policy = Handled(topic)
    policy_group = f"test.{schema}.signed_policy"
    policy_runner = PolicyRunner(policy, settings, policy_group, pool, service=schema)
    async with projecting(pool, projection, settings, group) as runner:
        await policy_runner.start()
        try:
            await send(settings, topic, messages)

            async def settled() -> bool:
                return (runner.applied, runner.dead, policy_runner.handled, policy_runner.dead) == (2, 6, 2, 6)

            await eventually(settled, 60, "the two genuine events applied, the rest parked")
            assert await projection.model(pool) == {"g": (3, "1,2")}
            assert policy.handled == [("g", 1), ("g", 2)]
            for consumer_group in (group, policy_group):
                reasons = await parked_reasons(stack_env, consumer_group)
                head = await pool.fetchval(
                    f"SELECT id FROM {kernel_tables(schema).parked} WHERE consumer_group = $1 AND stream_id = 'u' "
                    "ORDER BY id LIMIT 1",
                    consumer_group,
                )
                foreign = (
                    f"signed with a key of requests ({forged_as['o'].key_id}), not of {schema}, the topic's producer"
                )
                assert sorted(reasons) == sorted(  # in order within a stream; streams are on several partitions
                    [
                        ("u", "unsigned"),
                        ("t", "signature does not verify"),
                        ("f", "signature does not verify"),
                        ("o", foreign),
                        ("k", f"unknown key id rogue-1 for {schema}"),
                        ("u", f"behind parked #{head}"),  # the stream's genuine later event waits behind it
                    ]
                )
                assert [r for s, r in reasons if s == "u"] == ["unsigned", f"behind parked #{head}"]
            # what did not verify is parked without the event id it claims (it may be a real event's)
            ids = await pool.fetch(
                f"SELECT stream_id, event_id FROM {kernel_tables(schema).parked} WHERE consumer_group = $1 ORDER BY id",
                group,
            )
            assert [r["event_id"] for r in ids if r["stream_id"] != "u"] == [None] * 4
            code, out = await mieux_cli(stack_env, "parked", "retry", group)  # verified again: still refused
            assert "applied 0" in out, out
            assert await projection.model(pool) == {"g": (3, "1,2")}
            code, shown = await mieux_cli(stack_env, "parked", "show", str(head), "--group", policy_group, "--json")
            assert code == 0 and json.loads(shown)["reason"] == "unsigned", shown
        finally:
            await policy_runner.stop()


async def test_a_rotated_key_signs_new_events_and_what_the_old_one_signed_is_still_applied(
    pool, schema, stack, stack_env
) -> None:
    """The schema's relay publishes with key 1, then with key 2 (both in the verify keys): the envelopes carry
    their key id; a new consumer group applies all of them in order; a replay republishes with key 2 and
    nothing is applied twice. A consumer that does not know key 1 yet parks its events (their stream behind
    them) and, once it knows it, `mieux parked retry` applies them in order."""
    store = EventStore(pool, schema)
    await store.setup()
    topic = topic_for(schema)
    old = Settings()
    old_kid = signer_for(old, schema).key_id
    meta = Metadata(actor="tester")

    async def publish_with(settings: Settings, versions: range) -> None:
        for v in versions:
            await store.append("s1", v - 1, [SigningTestTicked(n=v)], meta)
        relay = Relay(store, settings)
        task = asyncio.create_task(relay.run())
        try:
            end = await store.last_position()

            async def published() -> bool:
                return relay.published >= end

            await eventually(published, what="the relay to publish everything")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    await publish_with(old, range(1, 4))
    new_kid = await asyncio.to_thread(stack.new_signing_key, schema)  # rotated: the old public key stays
    new = Settings()
    await publish_with(new, range(4, 6))
    on_topic = await read_topic(new, topic, lambda seen: len(seen) >= 5)
    assert [(e.stream_version, e.key_id) for e in on_topic] == [(v, old_kid if v < 4 else new_kid) for v in range(1, 6)]
    assert old_kid != new_kid

    everything = Sums(schema)
    async with projecting(pool, everything, new, f"test.{schema}.rotated") as runner:

        async def applied() -> bool:
            return runner.applied == 5

        await eventually(applied, what="the events of both keys applied")
        assert await everything.model(pool) == {"s1": (15, "1,2,3,4,5")}
        assert await request_replay(store, new, from_position=1) == "republished"  # with the current key

        async def redelivered() -> bool:
            return runner.duplicates == 5

        await eventually(redelivered, what="the republished copies dropped as duplicates")
        assert runner.applied == 5 and runner.dead == 0
    again = await read_topic(new, topic, lambda seen: len(seen) >= 10)
    assert {e.key_id for e in again[5:]} == {new_kid}

    # a consumer that was not told about the old key yet: it parks what that key signed, in order
    keys = new.verify_keys or {}
    without_old = Verifier(load_public_keys({**keys, schema: {new_kid: keys[schema][new_kid]}}))
    late = Sums(schema, "late")
    group = f"test.{schema}.late"
    async with projecting(pool, late, new, group, without_old) as runner:
        # v1-v3 (old key; not verified, so parked without their event ids), v4-v5, the copies of v1-v3 (the
        # copies of v4-v5 find their parked rows)
        async def parked() -> bool:
            return runner.dead == 8

        await eventually(parked, what="every event of s1 parked behind the first, which it cannot verify")
        reasons = await parked_reasons(stack_env, group)
        assert reasons[0] == ("s1", f"unknown key id {old_kid} for {schema}")
        assert {r for _, r in reasons[1:]} == {f"behind parked #{min(await parked_ids(pool, schema, group))}"}
        assert await late.model(pool) == {}
    async with projecting(pool, late, new, group) as runner:  # told about it (restarted with the keys)
        async with pool.acquire() as conn:
            ids = await parked_ops.request(conn, "retry", "tester", group=group, stream="s1")
            done = await parked_ops.wait_done(conn, ids, 60)
        assert [r["outcome"] for r in done] == ["applied 8"]  # 5 applied; 3 republished copies, already tracked
        assert await late.model(pool) == {"s1": (15, "1,2,3,4,5")}


async def test_a_service_whose_key_nobody_can_verify_does_not_start(stack, stack_env, tmp_path) -> None:
    key = tmp_path / "unknown.pem"
    key.write_bytes(private_pem(Ed25519PrivateKey.generate()))
    child = Child(
        ["-m", "services.requests"], {**stack_env, "MIEUX_SIGNING_KEY_FILE": str(key), "MIEUX_REQUESTS_PORT": "0"}
    )
    try:
        code = await asyncio.to_thread(child.proc.wait, 60)
    finally:
        child.stop()
    assert code != 0
    assert "which MIEUX_VERIFY_KEYS does not hold for requests" in child.output()
    assert dev_key_file(stack.home, "requests").exists()  # the stack's own key is there: this one is not it
