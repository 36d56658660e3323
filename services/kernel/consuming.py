"""What every consumer (the projection runner, a policy runner) shares: retrying passing faults, telling its
own cancellation from a client library's, and saying whether it consumes (DESIGN.md section 11).

- `Retrying`: a passing fault (faults.is_transient: connection lost, SQLSTATE classes 08, 40, 53, 55, 57, a
  broker away) is retried with backoff (0.2 s doubling, capped at 5 s) for as long as it lasts; it is never
  parked. `mieux_consumer_retrying{group}` is 1 meanwhile, `mieux_consumer_retries_total{group,kind}`
  counts the attempts.
- `quietly`: stopping a client library (aiokafka's consumer or producer, faust) may raise anything,
  CancelledError included (aiokafka's fetcher raises it when it is stopped during a broker pause): that is
  logged and never passed on, except this task's own cancellation.
- `ConsumerHealth`: a consumer is up while its loop runs and has not been failing (crashed and restarting,
  or retrying) for longer than `down_after_s`; the service's gRPC health follows it (service.py), and so
  does `mieux_consumer_up{group}`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from services.kernel import metrics
from services.kernel.faults import describe, is_transient

log = logging.getLogger(__name__)

T = TypeVar("T")

BACKOFF_FIRST_S = 0.2
BACKOFF_CAP_S = 5.0  # a passing fault is retried at least this often, for as long as it lasts
DOWN_AFTER_S = 5.0  # a consumer failing (or not running) for longer than this is down


def own_cancellation() -> bool:
    """Whether the running task has been asked to stop (Task.cancel), as opposed to a CancelledError that a
    library raised from inside (aiokafka's fetcher does, when it is stopped while the broker is paused)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def quietly(what: str, stopping: Awaitable[object]) -> None:
    """Await a client library's stop or close: whatever it raises is logged and not passed on, CancelledError
    included, except the running task's own cancellation."""
    try:
        await stopping
    except asyncio.CancelledError:
        if own_cancellation():
            raise
        log.warning("%s raised CancelledError while stopping (from inside the library, not a stop): ignored", what)
    except Exception as e:
        log.warning("%s failed while stopping: %s", what, describe(e))


class ConsumerHealth:
    """Whether one consumer group of this process consumes: `up`, exported as mieux_consumer_up{group}."""

    def __init__(self, group: str, down_after_s: float = DOWN_AFTER_S) -> None:
        self.group = group
        self.down_after_s = down_after_s
        self.running = False  # its loop runs (between its start and its end)
        self.failing = False  # it retries a failure, or its loop ended and starts again
        self.ended = False  # its supervisor ended: only at shutdown
        self.unwell_since: float | None = time.monotonic()  # since when it has not been running and well
        self._up = metrics.CONSUMER_UP.labels(group)
        self._retrying = metrics.CONSUMER_RETRYING.labels(group)

    def _changed(self) -> None:
        if self.running and not self.failing:
            self.unwell_since = None
        elif self.unwell_since is None:
            self.unwell_since = time.monotonic()

    def started(self) -> None:
        self.running = True
        self._changed()

    def stopped(self) -> None:
        self.running = False
        self._changed()

    def fail(self) -> None:
        """A failure (a passing fault retried, the loop ended): down once it lasts longer than down_after_s."""
        self.failing = True
        self._retrying.set(1)
        self._changed()

    def ok(self) -> None:
        """A turn of the loop that did its work."""
        if self.failing:
            self.failing = False
            self._retrying.set(0)
            self._changed()

    @property
    def up(self) -> bool:
        unwell = self.unwell_since
        up = not self.ended and (unwell is None or time.monotonic() - unwell < self.down_after_s)
        self._up.set(1 if up else 0)
        return up


class Retrying:
    """Retries an operation while it fails with a passing fault, with capped backoff, for as long as it lasts;
    any other error is raised at once."""

    def __init__(self, group: str, health: ConsumerHealth) -> None:
        self.group = group
        self.health = health
        self.retries = 0
        self._counted = metrics.CONSUMER_RETRIES.labels(group, "transient")

    async def __call__(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        backoff = BACKOFF_FIRST_S
        while True:
            try:
                result = await op()
            except Exception as e:
                if not is_transient(e):
                    raise
                backoff = await self.pause(what, e, backoff)
                continue
            self.health.ok()
            return result

    async def pause(self, what: str, error: BaseException, backoff: float) -> float:
        """Count and log one retry of a passing fault, wait `backoff`; returns the next backoff."""
        self.retries += 1
        self._counted.inc()
        self.health.fail()
        log.warning(
            "%s: %s failed with %s, a passing fault: retrying in %.1fs", self.group, what, describe(error), backoff
        )
        await asyncio.sleep(backoff)
        return min(backoff * 2, BACKOFF_CAP_S)
