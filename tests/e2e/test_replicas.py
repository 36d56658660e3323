"""Two replicas of every service under load: the year 2017 (with only the experts it deploys or flies)
replayed through gRPC by a client that balances its commands over both replicas of each service, while the
test SIGKILLs the replica whose relay is active and the replicas holding partitions of two consumer groups;
then every figure, every store and every read model must be what a single-replica run of the same year gave.

Two stacks of the test's own, one after the other (faultkit.Run: a DevStack with `mieux dev up`'s durability
and the services as OS processes on free ports): first one process per service, the reference; then two per
service (replicakit.ReplicaRun), each on its own gRPC and metrics ports and told both replicas' addresses,
which every client balances over (round_robin, grpckit.channel). The client is the fault test's (it retries
UNAVAILABLE, DEADLINE_EXCEEDED and ABORTED with the same command id, nothing else).

The kills, each when the replay has got to a point of the year (an event count in a store, as a fraction of
the reference's), each replica restarted after it (as a Deployment would), one after the other:

- the requests replica whose relay is active (its `mieux_relay_active` says 1; the relay lock's pg_locks row
  says the same): the other replica's relay must be active within 5 s of the kill (the measured takeover is
  reported), and the lock held by another session;
- the actions replica holding the most partitions of the policy group `mieux.actions.open_action_on_approval`
  (its `mieux_consumer_partitions`), then the carbon replica holding the most of `mieux.carbon.flight_emissions`:
  the survivor must hold all of them within 60 s (the time is reported).

At the end, with deadlines on conditions: every relay published everything and every group's lag is 0; the
stats figures, the events per type in every store and the read-model rows (and tracked events) equal the
reference's (nothing lost, nothing twice); every stored event is on its topic (extra copies, at-least-once,
are counted and reported); no dead letter, nothing parked, no projection flagged; each replica of requests,
actions, experts and logistics answered calls (carbon answers two in the year: too few to tell); every
replica SERVING (within a deadline: one rejoining its groups is not meanwhile) and none exited on its own.
The report is printed and written to `replicas-report.json` in the test's home, kept when the test fails
(or MIEUX_FAULTS_KEEP=1).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc
import pytest
import yaml
from faultkit import caught_up, dead_letters, diff, event_counts, health, needs_rebuild, parked, until
from replicakit import ReplicaFleet, ReplicaRun, topics_hold_the_stores
from test_faults import CLIENTS, SCENARIO, Acks, Client, Home, Probe, describe, kept_on_failure, measure, snapshot, use

from services.kernel.grpckit import balanced
from services.kernel.relay import lock_holder
from services.ops import catalog

# two stacks and the year twice: a few minutes on an idle 2-core machine, up to 20 when others load it
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

TAKEOVER_S = 5.0  # a standby relay is active this long after the active one was killed, at the latest
REBALANCE_S = 60.0  # a dead member's partitions are the survivor's
CATCH_UP_S = 60.0
RESTART_S = 180.0  # a killed replica SERVING again (its groups joined), on a machine others may load
# the services whose replicas answer enough calls of the year to tell: carbon answers two (the offsets)
BALANCED_SERVICES = ("requests", "actions", "experts", "logistics")
REPLAY_DEADLINE_S = 480.0


@dataclass(frozen=True)
class Kill:
    what: Literal["relay", "partitions"]
    service: str
    group: str  # "partitions": the group whose biggest holder is killed
    store: str  # killed when this store holds `fraction` of the reference's events of `event_type`
    event_type: str
    fraction: float


KILLS = (
    Kill("relay", "requests", "", "requests", "RequestApproved", 0.20),
    Kill("partitions", "actions", "mieux.actions.open_action_on_approval", "requests", "RequestApproved", 0.60),
    Kill("partitions", "carbon", "mieux.carbon.flight_emissions", "logistics", "FlightBooked", 0.30),
)


def the_year_with_fewer_experts(scenario: Path, into: Path) -> Path:
    """The year with only the experts it deploys or flies: every other phase whole (the approvals, each waiting
    for the actions policy, carry the kills), the 500-odd registrations no later entry names left out, so the
    two runs take less time. Both runs replay this file."""
    year = yaml.safe_load(scenario.read_text())
    named = {d["expert"] for d in year["deployments"]} | {f["traveller"] for f in year["flights"]}
    year["experts"] = [e for e in year["experts"] if e["key"] in named]
    out = into / scenario.name
    out.write_text(yaml.safe_dump(year, allow_unicode=True, sort_keys=False))
    return out


def progress(started: float, what: str) -> None:
    print(f"[{time.monotonic() - started:6.1f} s] {what}", flush=True)


class BalancedClient(Client):
    """The fault test's client, its calls balanced over every replica a target lists (as grpckit.channel)."""

    def channel(self, target: str) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(target, options=balanced(target), interceptors=[Acks(self)])


@pytest.fixture
def replicas_home(request: pytest.FixtureRequest) -> Iterator[Home]:
    with kept_on_failure(request, "replicas") as h:
        yield h


async def kill_the_relay(fleet: ReplicaFleet, k: Kill, dsn: str, rec: dict[str, Any]) -> None:
    """SIGKILL the replica whose relay is active; a standby's must be active within TAKEOVER_S."""
    import asyncpg

    active = await fleet.relay_active(k.service)
    rec["relay_active_before"] = active
    (victim,) = [p for p, v in active.items() if v == 1]  # exactly one active relay
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        holder = await lock_holder(conn, k.service)
        assert holder is not None, "the relay lock is not held"
        fleet.kill(victim)
        killed = time.monotonic()
        others = [p for p in fleet.replicas(k.service) if p != victim]

        async def taken_over() -> bool:
            return any([await fleet.metric(p, "mieux_relay_active", service=k.service) == 1 for p in others])

        await until(taken_over, TAKEOVER_S, f"a standby relay of {k.service} to be active")
        rec["takeover_s"] = round(time.monotonic() - killed, 3)
        now = await lock_holder(conn, k.service)
        assert now is not None and now != holder, f"the relay lock: held by {holder} before, {now} after"
    finally:
        await conn.close()
    rec["killed"] = victim


async def kill_a_partition_holder(fleet: ReplicaFleet, k: Kill, total: int, rec: dict[str, Any]) -> None:
    """SIGKILL the replica holding the most partitions of the group; the survivors must hold them all."""

    async def split() -> bool:
        rec["partitions_before"] = await fleet.partitions(k.service, k.group)
        return sum(rec["partitions_before"].values()) == total

    await until(split, REBALANCE_S, f"the partitions of {k.group} to be held")
    victim = max(rec["partitions_before"], key=lambda p: rec["partitions_before"][p])
    fleet.kill(victim)
    killed = time.monotonic()
    others = [p for p in fleet.replicas(k.service) if p != victim]

    async def taken() -> bool:
        return sum([await fleet.metric(p, "mieux_consumer_partitions", group=k.group) for p in others]) == total

    await until(taken, REBALANCE_S, f"the survivors of {k.service} to hold every partition of {k.group}")
    rec["rebalanced_s"] = round(time.monotonic() - killed, 3)
    rec["killed"] = victim


async def run_kills(
    run: ReplicaRun, reference: dict[str, dict[str, int]], replay_done: asyncio.Event, t0: float, done: list
) -> None:
    fleet = run.fleet
    assert isinstance(fleet, ReplicaFleet)
    settings = run.settings()
    groups = dict(catalog.consumer_groups())
    probe = Probe(settings.dsn())
    try:
        for k in KILLS:
            of = reference[k.store].get(k.event_type, 0)
            why = await probe.reached(k.store, k.event_type, k.fraction, of, replay_done, every=0.05)
            rec: dict[str, Any] = {"kill": f"{k.what} of {k.service}", "at_s": round(time.monotonic() - t0, 2)}
            rec["when"] = why
            done.append(rec)
            print(f"  kill {rec['kill']} at {rec['at_s']} s ({why})", flush=True)
            if k.what == "relay":
                await kill_the_relay(fleet, k, settings.dsn(), rec)
            else:
                total = settings.topic_partitions * len(groups[k.group])
                await kill_a_partition_holder(fleet, k, total, rec)
            fleet.start(rec["killed"])  # as a Deployment would
            rec["serving_again_after_s"] = round(await fleet.wait_serving(rec["killed"], RESTART_S), 2)
            if k.what == "relay":  # it comes back as a standby
                rec["relay_active_after"] = await fleet.relay_active(k.service)
            print(f"    {json.dumps(rec, default=str)}", flush=True)
    finally:
        await probe.close()


async def test_two_replicas_under_kills_give_the_single_replica_figures(
    replicas_home: Home, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.monotonic()
    root = replicas_home.path
    groups = catalog.consumer_groups()
    scenario = the_year_with_fewer_experts(SCENARIO, root)
    monkeypatch.setattr("test_faults.SCENARIO", scenario)  # what the fault test's client replays
    report: dict[str, Any] = {"scenario": f"{SCENARIO.name}, only the experts it deploys or flies"}
    failures: list[str] = []

    # --- one replica per service: the reference ---------------------------------------------------------
    single = replicas_home.run("single")
    use(single, monkeypatch)
    await single.start()
    client = BalancedClient(time.monotonic())
    for ctx in CLIENTS:
        monkeypatch.setattr(f"services.{ctx}.client.channel", client.channel)
    t0 = time.monotonic()
    progress(started, "single-replica run: services serving, replaying the year")
    first = await client.year(single.settings())
    await until(lambda: caught_up(single.settings(), groups), CATCH_UP_S, "the single-replica run to catch up")
    reference = await snapshot(single)
    report["single"] = {"replay": {**first, "seconds": round(time.monotonic() - t0, 2)}, **reference}
    assert not client.not_retried and not client.stops, f"the reference run met errors: {client.samples}"
    progress(started, "single-replica run: caught up, reference taken")
    stopping = asyncio.create_task(asyncio.to_thread(single.stop))

    # --- two replicas per service, kills under load -----------------------------------------------------
    run = ReplicaRun(root / "replicas", replicas=2)
    replicas_home.runs.append(run)
    use(run, monkeypatch)
    began = time.monotonic()
    try:
        await run.start()
    finally:
        await stopping
    progress(started, "two replicas per service serving, replaying the year")
    settings = run.settings()
    fleet = run.fleet
    assert isinstance(fleet, ReplicaFleet)
    t0 = time.monotonic()
    client = BalancedClient(t0)
    for ctx in CLIENTS:
        monkeypatch.setattr(f"services.{ctx}.client.channel", client.channel)
    replay_done = asyncio.Event()

    async def the_client() -> dict[str, Any]:
        try:
            return await client.year(settings)
        finally:
            replay_done.set()

    replaying = asyncio.create_task(the_client())
    kills: list[dict[str, Any]] = []
    try:
        await run_kills(run, reference["events"], replay_done, t0, kills)
    except Exception as e:
        failures.append(f"the kills failed: {describe(e)}")
    try:
        replay = await asyncio.wait_for(replaying, max(REPLAY_DEADLINE_S - (time.monotonic() - t0), 1))
    except Exception as e:
        replay = {"error": describe(e)}
        failures.append(f"the replay did not complete: {replay['error']}")
    replay["seconds"] = round(time.monotonic() - t0, 2)
    progress(started, f"two replicas: replay done in {replay['seconds']} s")
    if client.not_retried or client.stops:
        failures.append(f"the client met statuses it must not retry: {dict(client.not_retried)} {client.stops}")
    try:
        await until(lambda: caught_up(settings, groups), CATCH_UP_S, "every relay and consumer group")
    except TimeoutError as e:
        failures.append(str(e))

    checks: dict[str, Any] = {}

    def check(name: str, ok: bool, detail: Any) -> None:
        checks[name] = {"ok": ok, "detail": detail}
        if not ok:
            failures.append(f"{name}: {detail}")

    for k, rec in zip(KILLS, kills, strict=False):
        if k.what == "relay":
            after = rec.get("relay_active_after", {})
            check("a restarted replica's relay is a standby", sum(after.values()) == 1, after)
    got = await measure(lambda: snapshot(run))
    if isinstance(got, str):
        failures.append(f"could not read the figures and stores: {got}")
        got = {"figures": {}, "events": {}, "read_models": {}}
    d = diff(reference["figures"], got["figures"])
    check("stats figures equal the single-replica run's", not d, d or f"{len(reference['figures'])} figures equal")
    d = diff(reference["events"], got["events"])
    total = sum(sum(v.values()) for v in reference["events"].values())
    check("events per type in every store equal the single-replica run's", not d, d or f"{total} events")
    d = diff(reference["read_models"], got["read_models"])
    check("read-model rows equal the single-replica run's", not d, d or f"{len(reference['read_models'])} equal")
    topics = await measure(lambda: topics_hold_the_stores(settings))
    lost = topics if isinstance(topics, str) else {c: t for c, t in topics.items() if t["published"] != t["stored"]}
    check("every stored event is on its topic", not lost, lost or topics)
    dlq = await measure(lambda: dead_letters(settings, groups))
    check("no dead letters", not isinstance(dlq, str) and not any(dlq.values()), dlq)
    held = await measure(lambda: parked(settings))
    check("nothing parked", not isinstance(held, str) and not (held and any(held.values())), held)
    flagged = await measure(lambda: needs_rebuild(settings))
    check("no projection flagged incomplete", not flagged, flagged or "none")
    calls = {s: await measure(lambda s=s: fleet.calls(s)) for s in BALANCED_SERVICES}
    idle = {s: c for s, c in calls.items() if isinstance(c, str) or not all(c.values())}
    check("each replica answered calls", not idle, idle or calls)
    up: dict[str, bool] = {}

    async def all_serving() -> bool:  # a replica rejoining its groups after the kills is NOT_SERVING meanwhile
        up.update(await health(fleet))
        return all(up.values())

    with contextlib.suppress(TimeoutError):
        await until(all_serving, RESTART_S, "every replica SERVING")
    check("every replica SERVING", all(up.values()), {k: v for k, v in up.items() if not v} or f"all {len(up)}")
    check("no replica exited on its own", not fleet.exited(), fleet.exited() or "none")

    report["replicas"] = {
        "started_in_s": round(t0 - began, 1),
        "kills": kills,
        "replay": replay,
        "client": {"retried": dict(client.retried), "not_retried": dict(client.not_retried)},
        "checks": checks,
        "events": await measure(lambda: event_counts(settings)),
    }
    report["failures"] = failures
    report["test_s"] = round(time.monotonic() - started, 1)
    out = root / "replicas-report.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\n=== two replicas per service under kills === (report {out}, {report['test_s']} s)")
    print(f"single-replica replay {report['single']['replay']['seconds']} s; two replicas {replay['seconds']} s")
    for rec in kills:
        print(f"  {json.dumps(rec, default=str)}")
    for name, c in checks.items():
        print(f"  {'ok  ' if c['ok'] else 'FAIL'} {name}: {str(c['detail'])[:300]}")
    assert not failures, "two replicas under kills:\n- " + "\n- ".join(failures)
