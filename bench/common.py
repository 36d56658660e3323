"""What the benchmarks share: a sample event, timing windows, percentiles."""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from services.requests.events import RequestReceived

# one request as the requests service records it (about 300 bytes of JSON)
SAMPLE: dict[str, Any] = {
    "partner": "MD",
    "partner_kind": "country",
    "partner_name": "Moldova, Republic of",
    "institution": "Bureau for Migration and Asylum",
    "institution_type": "agency",
    "received_on": "2024-03-01",
    "title": "Support to the reception of asylum seekers at the border",
    "themes": ["international_protection_and_asylum", "migration_data_management"],
}


def sample_data(request_id: str, year: int = 2024) -> dict[str, Any]:
    return {"request_id": request_id, **SAMPLE, "received_on": f"{year}-03-01"}


def sample_event(request_id: str, year: int = 2024) -> RequestReceived:
    return RequestReceived(**{**sample_data(request_id), "received_on": date(year, 3, 1)})


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Window:
    """Operations completed in [start, end) count; the first `warmup` seconds do not."""

    warmup: float
    duration: float

    def open(self) -> tuple[float, float]:
        start = time.perf_counter() + self.warmup
        return start, start + self.duration


async def drive_tasks(clients: int, op: Callable[[int], Awaitable[object]], window: Window) -> float:
    """`clients` asyncio tasks calling `op(client)` back to back: operations per second over the window."""
    start, end = window.open()
    counts = [0] * clients

    async def client(i: int) -> None:
        while True:
            await op(i)
            now = time.perf_counter()
            if now >= end:
                return
            if now >= start:
                counts[i] += 1

    await asyncio.gather(*(client(i) for i in range(clients)))
    return sum(counts) / window.duration


def drive_threads(clients: int, op: Callable[[int], object], window: Window) -> float:
    """`clients` threads calling `op(client)` back to back: operations per second over the window."""
    start, end = window.open()
    counts = [0] * clients

    def client(i: int) -> None:
        while True:
            op(i)
            now = time.perf_counter()
            if now >= end:
                return
            if now >= start:
                counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / window.duration


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = min(max(math.ceil(p / 100 * len(ordered)), 1), len(ordered))
    return ordered[rank - 1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
