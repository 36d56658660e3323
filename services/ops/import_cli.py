"""`mieux import FILE` and `mieux export events SERVICE --out FILE`: a service's events moved as they are stored.

mieux export events requests --out requests.jsonl [--after N]
    the service's events in position order, as far as the relay could publish them now (committed, flushed),
    one JSON object per line (importing.EventRow.to_line): the envelope's fields, `source`, the position
    it had, the command columns, `data` as stored (personal fields sealed)
mieux import requests.jsonl [--service NAME] [--batch N]
    appends the file's events to the service's store (the `source` of its lines, or NAME), batch after batch
    at COPY speed (importing.py): a batch is stored whole or not at all, with every invariant of an append;
    the relay then publishes them as any other. A refused batch names its line; the batches before it stay.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from services.kernel.db import create_pool
from services.kernel.importing import EventRow, ImportRefused, export
from services.kernel.settings import Settings
from services.kernel.store import EventStore

console = Console()
SERVICE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")  # a service's name is its schema's: an SQL identifier
BATCH = 10_000


class BadFile(Exception):
    """A line that is not an exported event, or of another service."""


def batches(path: Path, size: int) -> Iterator[tuple[int, str, list[EventRow], int]]:
    """(first line number, the lines' source, events, bytes read so far) per batch of at least `size` events
    (more when a command's events would be cut in two: a command is imported whole)."""
    service: str | None = None
    batch: list[EventRow] = []
    start, read = 1, 0
    needs: dict[str, int] = {}  # stream -> the last version an open command of it still needs
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            read += len(raw)
            if not raw.strip():
                continue
            try:
                source, e = EventRow.from_line(raw.decode())
            except (KeyError, ValueError, TypeError) as exc:
                raise BadFile(f"line {n}: not an exported event ({type(exc).__name__}: {exc})") from None
            if service is None:
                service = source
            elif source != service:
                raise BadFile(f"line {n}: an event of {source}, not of {service}")
            if not batch:
                start = n
            batch.append(e)
            if e.command_id is not None and (e.command_events or 1) > 1:
                needs[e.stream_id] = e.stream_version + (e.command_events or 1) - 1
            elif needs.get(e.stream_id) == e.stream_version:
                del needs[e.stream_id]
            if len(batch) >= size and not needs:
                yield start, service, batch, read
                batch = []
    if batch:
        yield start, service or "", batch, read


async def import_file(path: Path, service: str | None, size: int, progress: bool, file_bytes: int) -> int:
    """The file's events into the store of `service` (default: the lines' source), batch by batch."""
    bar = Progress(
        TextColumn("[bold]import"), BarColumn(), DownloadColumn(), TimeElapsedColumn(), console=console,
        disable=not progress,
    )  # fmt: skip
    task = bar.add_task("import", total=file_bytes)
    pool = await create_pool(Settings().dsn(), min_size=1, max_size=2)
    count, last, store, started = 0, None, None, time.perf_counter()
    try:
        async with contextlib.AsyncExitStack() as stack:
            stack.enter_context(bar)
            for start, source, events, read in batches(path, size):
                if store is None:
                    name = service or source
                    if not SERVICE_NAME.fullmatch(name):
                        raise BadFile(f"{name!r} is not a service's name")
                    store = EventStore(pool, name)
                    await store.setup()
                    importer = await stack.enter_async_context(store.importer())
                try:
                    result = await importer.import_batch(events)
                except ImportRefused as e:
                    console.print(f"[red]✗ line {start + e.index}[/]: {e}")
                    if count:
                        console.print(f"the {count:,} events of the lines before line {start} were imported")
                    return 1
                count, last = count + result.count, result.last_position
                bar.update(task, completed=read)
    except BadFile as e:
        console.print(f"[red]✗ {path}: {e}[/]" + (f" ({count:,} events imported before it)" if count else ""))
        return 1
    finally:
        await pool.close()
    seconds = time.perf_counter() - started
    where = f"into {store.service}, up to position {last}" if store is not None else "(the file is empty)"
    console.print(f"[green]✓[/] imported {count:,} events {where} in {seconds:.1f} s ({count / seconds:,.0f}/s)")
    return 0


async def export_file(service: str, out: Path, after: int, progress: bool) -> int:
    if not SERVICE_NAME.fullmatch(service):
        console.print(f"[red]✗ {service!r} is not a service's name[/]")
        return 1
    pool = await create_pool(Settings().dsn(), min_size=1, max_size=1)
    try:
        store = EventStore(pool, service)
        total = max(await store.last_position() - after, 0)
        bar = Progress(
            TextColumn("[bold]export"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console,
            disable=not progress,
        )  # fmt: skip
        task = bar.add_task("export", total=total)
        count = 0
        with bar, out.open("w") as f:
            async for position, e in export(store, after):
                f.write(e.to_line(service, position) + "\n")
                count += 1
                if count % 1000 == 0:
                    bar.update(task, completed=position - after)
            bar.update(task, completed=total)
    finally:
        await pool.close()
    console.print(f"[green]✓[/] wrote {out}: {count:,} events of {service}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `mieux import` (`mieux export events` is added to `mieux export` by report_cli)."""
    i = sub.add_parser("import", help="append a file of exported events to a service's store, at COPY speed")
    i.add_argument("file", type=Path, help="JSON lines, as `mieux export events` writes them")
    i.add_argument("--service", help="the store to import into (default: the `source` of the file's lines)")
    i.add_argument("--batch", type=int, default=BATCH, help=f"events per transaction (default {BATCH:,})")
    i.add_argument("--no-progress", action="store_true", help="no progress bar")
    i.set_defaults(fn=cmd_import)


def cmd_import(a: argparse.Namespace) -> int:
    if not a.file.is_file():
        console.print(f"[red]✗ {a.file}: no such file[/]")
        return 1
    return asyncio.run(import_file(a.file, a.service, max(a.batch, 1), not a.no_progress, a.file.stat().st_size))


def register_export(es: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `mieux export events` to `mieux export`."""
    e = es.add_parser("events", help="a service's stored events as JSON lines (for `mieux import`)")
    e.add_argument("service")
    e.add_argument("--out", type=Path, required=True, help="the file to write")
    e.add_argument("--after", type=int, default=0, help="only the events after this position")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(fn=lambda a: asyncio.run(export_file(a.service, a.out, a.after, not a.no_progress)))
