"""`mieux`: the command line for people (ops, finance, developers)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import json
import sys
from datetime import UTC, datetime, timedelta

from rich.console import Console
from rich.markup import escape

from services.kernel.settings import Settings
from services.ops import catalog, import_cli, projections_cli, report_cli, tokens_cli, up
from services.ops.tokens_cli import refuse_unless_admin

console = Console()


# --- dev stack -------------------------------------------------------------------------------------


def cmd_dev(args: argparse.Namespace) -> int:
    from services.ops.devstack import DevStack

    s = DevStack(Settings().mieux_home)
    if args.action == "up":
        st = s.up(tls=args.tls)
        console.print(f"PostgreSQL  [green]{st['database_url']}[/] (pid {st['pg_pid']})")
        console.print(f"Broker      [green]{st['kafka_bootstrap_servers']}[/] (Tansu, pid {st['kafka_pid']})")
        if st.get("tls"):
            t = s.tls_dir
            console.print(
                f"gRPC        [green]mutual TLS[/] (CA {t}/ca.crt); e.g. grpcurl -cacert {t}/ca.crt "
                f"-cert {t}/client.crt -key {t}/client.key 127.0.0.1:50051 list",
                highlight=False,
            )
        else:
            console.print("gRPC        plaintext on loopback (`mieux dev up --tls` for mutual TLS)")
        console.print(f"State and tokens in {s.home}/ ; stop with `mieux dev down`")
    elif args.action == "down":
        s.down()
        console.print("dev stack stopped")
    else:
        for name, ok in s.status().items():
            console.print(f"{name:12} {'[green]running[/]' if ok else '[red]stopped[/]'}")
    return 0


# --- events ----------------------------------------------------------------------------------------


def cmd_events_schema(args: argparse.Namespace) -> int:
    from services.kernel.envelope import Envelope, registry

    catalog.load_events()
    out = {"envelope": Envelope.model_json_schema(), "events": registry.catalogue()}
    print(json.dumps(out, indent=2, default=str))
    return 0


def parse_since(text: str) -> datetime:
    """An ISO time, or a duration back from now: 30s, 15m, 2h, 1d."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    if text[-1:] in units and text[:-1].isdigit():
        return datetime.now(UTC) - timedelta(**{units[text[-1]]: int(text[:-1])})
    t = datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def print_headers(headers: dict[str, str]) -> None:
    for k, v in headers.items():
        console.print(f"    [yellow]{escape(k)}[/]: {escape(v)}", highlight=False)


async def _tail(args: argparse.Namespace) -> int:
    from aiokafka.structs import TopicPartition

    from services.kernel import bus
    from services.kernel.envelope import DecodeError, parse_message
    from services.kernel.settings import SettingsError
    from services.kernel.signing import HEADER, Verifier, owner_of, signature_of

    settings = Settings()
    verifier = None  # an events topic: whether each message's signature verifies is shown (signing.py)
    if owner_of(args.topic) is not None:
        with contextlib.suppress(SettingsError):
            verifier = Verifier.from_settings(settings)
    c = bus.consumer(settings, group_id=None, enable_auto_commit=False)
    await c.start()
    try:
        parts = c.partitions_for_topic(args.topic)
        if not parts:
            await c._client.force_metadata_update()
            parts = c.partitions_for_topic(args.topic) or set()
        if not parts:
            console.print(f"[red]no topic {args.topic}[/]")
            return 2
        tps = [TopicPartition(args.topic, p) for p in sorted(parts)]
        c.assign(tps)
        since_ms = int(parse_since(args.since).timestamp() * 1000) if args.since else None
        ends = await bus.end_offsets(
            settings, args.topic
        )  # as fetch responses give them (Tansu's ListOffsets counts batches)
        if args.from_beginning or since_ms is not None:
            # Tansu answers offsets_for_times near a partition's end, so --since reads from the
            # beginning and filters on each record's timestamp
            await c.seek_to_beginning(*tps)
        else:
            for tp, end in ends.items():
                c.seek(tp, end)

        async def at_end() -> bool:
            return all([await c.position(tp) >= ends.get(tp, 0) for tp in tps])

        seen = 0
        while args.limit is None or seen < args.limit:
            if args.exit_at_end and await at_end():
                return 0
            batches = await c.getmany(timeout_ms=1000)
            for msgs in batches.values():
                for m in msgs:
                    if since_ms is not None and m.timestamp < since_ms:
                        continue
                    # a dead letter's headers say why (reason) and where it came from (origin, projection)
                    headers = {k: (v or b"").decode(errors="replace") for k, v in m.headers or () if k != HEADER}
                    try:
                        env = parse_message(m.value)
                    except DecodeError as e:
                        if args.json:
                            bad = {"undecodable": str(e), "partition": m.partition, "offset": m.offset}
                            print(json.dumps({**bad, **({"headers": headers} if headers else {})}), flush=True)
                        else:
                            console.print(f"[red]p{m.partition}@{m.offset} undecodable: {escape(str(e))}[/]")
                            print_headers(headers)
                        continue
                    if args.type and env.event_type not in args.type:
                        continue
                    if args.stream and env.stream_id != args.stream:
                        continue
                    seen += 1
                    signature = None
                    if verifier is not None:
                        why = verifier.check(args.topic, m.value, env, signature_of(m.headers))
                        signature = why or f"verified (key {env.key_id})"
                    if args.json:
                        line = env.model_dump_json()
                        extra = {"signature": signature} if signature else {}
                        extra.update({"headers": headers} if headers else {})
                        print(line if not extra else json.dumps({**json.loads(line), **extra}), flush=True)
                    else:
                        console.print(
                            f"[dim]{env.recorded_at:%Y-%m-%d %H:%M:%S}[/] p{m.partition}@{m.offset} "
                            f"[bold]{escape(env.event_type)}[/] {escape(env.stream_id)} v{env.stream_version} "
                            f"by {escape(env.actor)} {escape(json.dumps(env.data)[:160])}",
                            highlight=False,
                        )
                        if signature:
                            colour = "green" if signature.startswith("verified") else "red"
                            console.print(f"    [{colour}]signature: {escape(signature)}[/]", highlight=False)
                        print_headers(headers)
                    if args.limit is not None and seen >= args.limit:
                        return 0
        return 0
    finally:
        await c.stop()


def cmd_events_tail(args: argparse.Namespace) -> int:
    catalog.load_events()
    try:
        return asyncio.run(_tail(args))
    except KeyboardInterrupt:
        return 0


# --- parked events -----------------------------------------------------------------------------------


def cmd_parked(args: argparse.Namespace) -> int:
    from services.ops import parked  # each service's parked events (<service>_parking)

    if args.action in ("retry", "drop") and (why := refuse_unless_admin(Settings(), f"parked {args.action}")):
        console.print(f"[red]{escape(why)}[/]")
        return 2
    return parked.cmd_parked(args)


def cmd_scenario_replay(args: argparse.Namespace) -> int:
    from services.ops.scenario_replay import ScenarioError, replay

    try:
        result = asyncio.run(replay(args.file, Settings(), progress=not args.no_progress, console=console))
    except ScenarioError as e:
        console.print(f"[red]scenario {args.file}[/]: {e}")
        return 1
    console.print(
        f"{args.file}: {result.commands} commands in {result.seconds:.1f} s, {result.appended} appended, "
        f"{result.duplicates} answered with their first result (sent before)"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from services.ops.demo import run_demo

    return asyncio.run(run_demo(console))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mieux", description="MIEUX back office")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("dev", help="the embedded dev stack (PostgreSQL + Tansu) in the background")
    d.add_argument("action", choices=["up", "down", "status"])
    d.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="up: gRPC with mutual TLS (a CA and certificates under the stack's tls/), or --no-tls for "
        "plaintext; neither keeps the stack's last choice",
    )
    d.set_defaults(fn=cmd_dev)

    e = sub.add_parser("events", help="the event catalogue and the streams")
    esub = e.add_subparsers(dest="events_command", required=True)
    es = esub.add_parser("schema", help="print the JSON Schema catalogue of every event")
    es.set_defaults(fn=cmd_events_schema)
    et = esub.add_parser("tail", help="follow a topic")
    et.add_argument("topic")
    g = et.add_mutually_exclusive_group()
    g.add_argument("--from-beginning", action="store_true")
    g.add_argument("--since", help="ISO time or a duration back from now (30s, 15m, 2h, 1d)")
    et.add_argument("--type", action="append", help="only these event types (repeatable)")
    et.add_argument("--stream", help="only this stream id")
    et.add_argument("--json", action="store_true", help="one envelope per line, as JSON")
    et.add_argument("--limit", type=int, help="stop after this many events")
    et.add_argument("--exit-at-end", action="store_true", help="stop at the topic's end as it was at start")
    et.set_defaults(fn=cmd_events_tail)

    projections_cli.register(sub)  # mieux replay, mieux projections lag|rebuild

    pk = sub.add_parser("parked", help="events a consumer could never apply, kept in order: list, show, retry, drop")
    pks = pk.add_subparsers(dest="action", required=True)
    pkl = pks.add_parser("list", help="parked events: id, group, consumer, stream, event type, reason, since")
    pkl.add_argument("group", nargs="?", help="only this consumer group, e.g. mieux.requests.projections")
    pkl.add_argument("--all", action="store_true", help="also those retried or dropped since")
    pkl.add_argument("--json", action="store_true", help="one row per line, as JSON")
    pkw = pks.add_parser("show", help="a parked event: its envelope and why it is parked")
    pkw.add_argument("id", type=int)
    pkw.add_argument("--json", action="store_true")
    # each service numbers its parked events: the group tells two services' rows of one id apart
    pkw.add_argument("--group", help="the row's consumer group, when two services hold that id")
    pkr = pks.add_parser("retry", help="apply a group's parked events again, in order, once the cause is fixed")
    pkr.add_argument("group", help="the consumer group, e.g. mieux.requests.projections")
    pkr.add_argument("--stream", help="only this stream's parked events")
    pkd = pks.add_parser("drop", help="drop a parked event (its stream's later ones are then retried)")
    pkd.add_argument("target", help="a parked event's id, or a consumer group with --stream (all of that stream's)")
    pkd.add_argument("--stream", help="with a group: drop every parked event of this stream")
    pkd.add_argument("--group", help="with an id: its consumer group, when two services hold that id")
    pkd.add_argument("--reason", required=True, help="why (recorded with who)")
    for cmd in (pkr, pkd):
        cmd.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the consumers (default 60)")
    for cmd in (pkl, pkw, pkr, pkd):
        cmd.set_defaults(fn=cmd_parked)

    for ctx in catalog.CONTEXTS:  # a context without verbs of its own has no cli.py
        if importlib.util.find_spec(f"services.{ctx}.cli") is not None:
            importlib.import_module(f"services.{ctx}.cli").register(sub)
    sc = sub.add_parser("scenario", help="years of operations as data, replayed through the gRPC APIs")
    ss = sc.add_subparsers(dest="scenario_command", required=True)
    rp = ss.add_parser("replay", help="send a scenario file's commands to the running services (safe to repeat)")
    rp.add_argument("file", help="e.g. scenarios/2017.yaml")
    rp.add_argument("--no-progress", action="store_true", help="no progress bar")
    rp.set_defaults(fn=cmd_scenario_replay)

    report_cli.register(sub)  # mieux report, mieux export iati
    import_cli.register(sub)  # mieux import
    tokens_cli.register(sub)  # mieux tokens issue|revoke|list
    up.register(sub)  # mieux up [--replicas N]

    dm = sub.add_parser("demo", help="run the product end to end on the embedded stack and print what it measured")
    dm.set_defaults(fn=cmd_demo)

    args = p.parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except Exception as e:  # a person reads this: one clear line, not a traceback
        import grpc

        from services.kernel.grpckit import field_violations
        from services.kernel.settings import SettingsError

        if isinstance(e, SettingsError):
            console.print(f"[red]{e}[/]")
            return 2
        if isinstance(e, grpc.aio.AioRpcError):
            console.print(f"[red]{e.code().name}[/]: {e.details()}")
            for f, why in field_violations(e):
                console.print(f"  [bold]{f}[/]: {why}")
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
