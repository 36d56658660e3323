"""Forgetting a person by crypto-shredding, end to end (DESIGN.md sections 9 and 11): the six services as OS
processes logging at INFO, driven through gRPC and the `mieux` CLI.

tests/e2e/scenario_forget.yaml registers, deploys, evaluates and books flights for two experts and two team
members (names no other test uses) in 2051. One expert and one team member are then forgotten with the CLI
(`--as admin`). Then a dump of every PostgreSQL schema (pg_dump), every topic from the beginning (dead letters
included: a copy of each forgotten person's first event, with a schema version no reader knows, is parked and
dead-lettered on purpose), the parked events, every read model, the services' logs, and every read model after
`mieux projections rebuild --all` hold neither forgotten name (nor the forgotten member's role) in clear; and
someone holding all of that *and the master key* opens every sealed value found there to the names of the people
kept, never to those forgotten. Queries say "(forgotten)" for them and still name the others. The year's
figures (`mieux stats year 2051 --json`: the year at a glance, the results, the experts' origin) are the same
after forgetting and after the rebuild."""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition
from support import ServiceProcess, eventually, mieux_cli, publish, start_service

from services.experts.client import ExpertsClient
from services.kernel import bus
from services.kernel.envelope import Envelope, topic_for
from services.kernel.personal import MasterKeys
from services.kernel.schemas import kernel_tables
from services.kernel.settings import Settings
from services.logistics.client import LogisticsClient
from services.ops import catalog
from services.ops.demo import caught_up
from services.ops.devstack import DevStack, _pg_bin, free_port
from services.ops.scenario_replay import replay

pytestmark = pytest.mark.e2e
FILE = Path(__file__).with_name("scenario_forget.yaml")
FORGOTTEN = ("Philippa", "Thistlewood", "Marchbank", "Zebulon", "Quillfeather", "Zeppelin")  # names and a role
KEPT = ("Augustin Vellacourt", "Ottoline Brackenbury", "Knowledge Management Officer")
SEALED = re.compile(r"enc:v1:[A-Za-z0-9._-]+:[0-9a-f]{12}:[A-Za-z0-9_-]+")
YEAR = 2051


@pytest.fixture(scope="module")
def services(stack_env: dict[str, str]) -> Iterator[tuple[dict[str, ServiceProcess], dict[str, str]]]:
    """The six services, logging at INFO (a deployment's level); yields them and the environment of a CLI."""
    names = catalog.CONTEXTS
    ports = {n: free_port() for n in names}
    addrs = {f"MIEUX_{n.upper()}_ADDR": f"127.0.0.1:{p}" for n, p in ports.items()}
    started: dict[str, ServiceProcess] = {}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in addrs.items():
            mp.setenv(k, v)
        try:
            for n in names:
                started[n] = start_service(n, {**stack_env, **addrs}, ports[n], MIEUX_LOG_LEVEL="INFO")
            yield started, {**stack_env, **addrs}
        finally:
            for svc in started.values():
                svc.stop()


def leaked(text: str) -> list[str]:
    """The forgotten people's names (and role) found in `text`, whatever the case."""
    low = text.lower()
    return [n for n in FORGOTTEN if n.lower() in low]


async def settled(settings: Settings) -> None:
    groups = catalog.consumer_groups()
    await eventually(lambda: caught_up(settings, groups), 120, "every relay and consumer group at lag 0")


async def figures(env: dict[str, str]) -> dict:
    # the figures, not how fast they come: a whole suite on two cores may keep a query longer than the 10 s default
    code, out = await mieux_cli({**env, "MIEUX_GRPC_DEADLINE_S": "60"}, "stats", "year", str(YEAR), "--json")
    assert code == 0, out
    return json.loads(out)


def pg_dump(stack: DevStack) -> str:
    out = subprocess.run(
        [_pg_bin("pg_dump"), "-h", "127.0.0.1", "-p", str(stack.state["pg_port"]), "-U", "postgres", "mieux"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "PGPASSFILE": str(stack.passfile)},  # the superuser's password
    )
    assert "CREATE TABLE experts.events" in out.stdout and "experts_parking.parked" in out.stdout
    return out.stdout


async def every_topic(settings: Settings) -> dict[str, str]:
    """Every message of every topic on the broker (keys, values and headers), read from the beginning."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap(), **settings.kafka_security())
    await admin.start()
    try:
        topics = sorted(t for t in await admin.list_topics() if not t.startswith("__"))
    finally:
        await admin.close()
    out: dict[str, str] = {}
    for topic in topics:
        ends = {tp: end for tp, end in (await bus.end_offsets(settings, topic)).items() if end}
        out[topic] = await _messages(settings, ends) if ends else ""
    return out


async def _messages(settings: Settings, ends: dict[TopicPartition, int]) -> str:
    """Every message of these partitions up to their ends: key, value and headers as text."""
    c = bus.consumer(settings, group_id=None)
    await c.start()
    try:
        c.assign(list(ends))
        await c.seek_to_beginning(*ends)
        parts: list[str] = []
        left = dict(ends)
        while left:
            for tp, msgs in (await c.getmany(*left, timeout_ms=500)).items():
                for m in msgs:
                    headers = " ".join(f"{k}={(v or b'').decode(errors='replace')}" for k, v in m.headers)
                    value = (m.value or b"").decode(errors="replace")
                    parts.append(f"{(m.key or b'').decode(errors='replace')} {value} {headers}")
                    if m.offset + 1 >= ends[tp]:
                        left.pop(tp, None)
        return "\n".join(parts)
    finally:
        await c.stop()


async def read_models(pool) -> str:  # type: ignore[no-untyped-def]
    tables = sorted({t for _, p in catalog.projections().values() for t in p.tables})
    return "\n".join([f"{t}: {[tuple(r) for r in await pool.fetch(f'SELECT * FROM {t}')]}" for t in tables])


async def opened_with_the_master_key(pool, texts: list[str]) -> set[str]:  # type: ignore[no-untyped-def]
    """What someone holding all of `texts`, the keys' tables and the master key reads: every sealed value found,
    opened where its person's key is still there."""
    masters = MasterKeys.from_settings(Settings(), "a reader of the dumps")
    keys = {}
    for schema in ("experts", "logistics"):
        for r in await pool.fetch(f"SELECT * FROM {schema}.subject_keys WHERE wrapped_key IS NOT NULL"):
            keys[r["subject_id"]] = masters.unwrap(
                schema, r["subject_id"], r["key_id"], r["master_key_id"], bytes(r["wrapped_key"])
            )
    found = {v for text in texts for v in SEALED.findall(text)}
    assert found, "no sealed value found: the search looks at the wrong data"
    return {keys[v[7:].rsplit(":", 2)[0]].reveal(v) for v in found if v[7:].rsplit(":", 2)[0] in keys}


async def poison_copies(settings: Settings, pool, expert: str, member: str) -> list[str]:  # type: ignore[no-untyped-def]
    """A copy of each forgotten person's first event with a schema version no reader knows, published as its
    producer publishes (signed): every consumer group of its topic parks it and dead-letters it. The member's
    copy goes on a stream of its own (the team's stream is every member's). Returns the copies' event ids."""
    rows = {
        "experts": await pool.fetchrow(
            "SELECT * FROM experts.events WHERE stream_id = $1 AND event_type = 'ExpertRegistered'", expert
        ),
        "logistics": await pool.fetchrow(
            "SELECT * FROM logistics.events WHERE event_type = 'TeamMemberJoined' AND data->>'member_id' = $1", member
        ),
    }
    ids = []
    for source, r in rows.items():
        env = Envelope(
            event_id=uuid.uuid4(),
            event_type=r["event_type"],
            schema_version=99,
            source=source,
            stream_id=r["stream_id"] if source == "experts" else f"team-copy-{member}",
            stream_version=r["stream_version"],
            position=r["position"],
            occurred_at=r["occurred_at"],
            recorded_at=r["recorded_at"],
            correlation_id="forgetting-test",
            causation_id="",
            actor="test",
            data=json.loads(r["data"]) if isinstance(r["data"], str) else r["data"],
        )
        await publish(settings, topic_for(source), [env])
        ids.append(str(env.event_id))
    return ids


async def test_a_forgotten_persons_name_is_nowhere_and_the_figures_stay(services, stack, pool) -> None:  # type: ignore[no-untyped-def]
    procs, env = services
    settings = Settings()
    first = await replay(FILE, settings, progress=False)
    expert, kept_expert = first.ids["ex-forget-p"], first.ids["ex-forget-a"]
    member, kept_member = "tm-forget-z", "tm-forget-o"

    async def emissions_of_every_flight() -> bool:
        n = await pool.fetchval(
            "SELECT count(DISTINCT stream_id) FROM carbon.events WHERE stream_id = ANY($1::text[])",
            [f"emissions-{first.ids[k]}" for k in ("fl1", "fl2", "fl3", "fl4")],
        )
        return n == 4

    await eventually(emissions_of_every_flight, 120, "the carbon service to calculate every flight's emissions")
    await settled(settings)
    before = await figures(env)
    assert before["experts_deployed"] >= 2 and before["air_miles_per_team_member"] != "0", before
    async with ExpertsClient.connect(settings) as ex, LogisticsClient.connect(settings) as lo:
        assert (await ex.get(expert)).name == "Philippa Thistlewood-Marchbank"
        assert (await lo.get_team_member(member)).role == "Chief Zeppelin Liaison"

    # forgotten with the CLI, as an admin does it
    for args in (
        ("experts", "forget", expert, "--reason", "erasure request of 2052-01-10", "--on", "2052-01-10"),
        ("logistics", "forget", member, "--reason", "retention period over", "--on", "2052-01-11"),
    ):
        code, out = await mieux_cli(env, *args, "--as", "admin")
        assert code == 0 and "forgotten" in out, out
    code, out = await mieux_cli(env, "experts", "forget", kept_expert, "--reason", "r", "--as", "ops")
    assert code != 0 and "PERMISSION_DENIED" in out, out
    await settled(settings)
    assert await figures(env) == before

    # dead letters and parked events holding what the forgotten people's events hold
    copies = await poison_copies(settings, pool, expert, member)

    async def parked_everywhere() -> bool:
        groups = [
            r
            for service in ("experts", "logistics", "stats")  # each parks in its own schema
            for r in await pool.fetch(
                f"SELECT DISTINCT consumer_group FROM {kernel_tables(service).parked} WHERE event_id = ANY($1::uuid[])",
                copies,
            )
        ]
        return {r["consumer_group"] for r in groups} >= {
            "mieux.experts.projections",
            "mieux.logistics.projections",
            "mieux.stats.projections",
        }

    await eventually(parked_everywhere, 120, "the copies parked by every group of their topics")
    await settled(settings)

    # queries: forgotten, or still named
    async with ExpertsClient.connect(settings) as ex, LogisticsClient.connect(settings) as lo:
        gone, kept = await ex.get(expert), await ex.get(kept_expert)
        assert (gone.name, gone.forgotten, gone.forgotten_on.iso) == ("(forgotten)", True, "2052-01-10")
        assert (gone.gender, gone.nationality, len(gone.deployments)) == ("female", "IE", 1)
        assert (kept.name, kept.forgotten) == ("Augustin Vellacourt", False)
        team = {m.member_id: m for m in (await lo.list_team(year=YEAR, page_size=500)).members}
        assert (team[member].name, team[member].role, team[member].forgotten) == ("(forgotten)", "(forgotten)", True)
        assert (team[kept_member].name, team[kept_member].forgotten) == ("Ottoline Brackenbury", False)
    code, out = await mieux_cli(env, "experts", "list")
    assert code == 0 and "(forgotten)" in out and not leaked(out)

    # everywhere the data is: the store, every topic and dead letter, parked events, read models, the logs
    dump, topics, models = pg_dump(stack), await every_topic(settings), await read_models(pool)
    assert any(t.endswith(".dlq") and copies[0] in text for t, text in topics.items())
    assert expert in dump and expert in topics[topic_for("experts")]  # the search looks at the right data
    # a copy of the database alone names nobody, forgotten or kept: every name is sealed under its person's key
    assert [name for name in KEPT if name in dump] == []
    parked = str(
        [
            tuple(r)
            for service in ("experts", "logistics", "stats")
            for r in await pool.fetch(f"SELECT * FROM {kernel_tables(service).parked}")
        ]
    )
    logs = {name: p.output() for name, p in procs.items()}
    places = {"pg_dump": dump, "parked": parked, "read models": models, **topics, **logs}
    assert {where: leaked(text) for where, text in places.items() if leaked(text)} == {}
    opened = await opened_with_the_master_key(pool, list(places.values()))
    assert not [n for n in opened if leaked(n)], "a forgotten name opened with the master key"
    assert set(KEPT) <= opened  # the people kept are still readable by the service

    # a full rebuild: the placeholder, not the names; the same figures
    code, out = await mieux_cli(env, "projections", "rebuild", "--all")
    assert code == 0 and "rebuilt" in out, out
    models = await read_models(pool)
    assert not leaked(models) and not leaked(pg_dump(stack))
    async with ExpertsClient.connect(settings) as ex, LogisticsClient.connect(settings) as lo:
        assert (await ex.get(expert)).name == "(forgotten)"
        assert (await lo.get_team_member(member)).name == "(forgotten)"
        assert (await lo.get_team_member(kept_member)).name == "Ottoline Brackenbury"
    await settled(settings)
    assert await figures(env) == before
    assert not {n: leaked(p.output()) for n, p in procs.items() if leaked(p.output())}
