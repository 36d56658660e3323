"""Small helpers for the contexts' `mieux <context> ...` commands (each context's cli.py)."""

from __future__ import annotations

import argparse
import asyncio
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def with_command_id(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--command-id", help="reuse to retry safely (default: a fresh one)")
    return p


def command_id(args: argparse.Namespace) -> str:
    """The `--command-id` given, or a fresh one (printed with the answer, so that a retry can reuse it)."""
    return getattr(args, "command_id", None) or f"cli-{uuid.uuid4()}"


def ack(what: str, answer: Any, cid: str) -> None:
    note = " (already done: this command id was seen before)" if answer.duplicate else ""
    console.print(f"{what} [bold]{answer.stream_id}[/] v{answer.last_version}{note}  [dim]command id {cid}[/]")


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(*columns, title=title)
    for r in rows:
        t.add_row(*[str(x) for x in r])
    console.print(t)


def run(fn: Callable[[argparse.Namespace], Coroutine[Any, Any, Any]]) -> Callable[[argparse.Namespace], int]:
    """An async command as an argparse `fn`."""

    def go(args: argparse.Namespace) -> int:
        asyncio.run(fn(args))
        return 0

    return go
