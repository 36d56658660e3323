"""The faust transport the policy runner uses: faust's aiokafka transport with a configurable fetch wait.

faust hard-codes a 1.5 s fetch wait in its worker consumer, and Tansu answers a waiting fetch only after
about half of it (DESIGN.md section 8), which would hold every event for 750 ms. `PolicyApp` carries the
wait its consumers use; the transport is registered as the `mieux://` broker scheme when this module is
imported (faust finds a transport by its URL scheme, as a "module:attribute" name).
"""

from __future__ import annotations

from typing import Any

import faust
from faust.transport import drivers
from faust.transport.drivers import aiokafka as fa

SCHEME = "mieux"


class PolicyApp(faust.App):
    """A faust app whose consumers wait at most `fetch_max_wait_ms` for data in a fetch."""

    def __init__(self, id: str, fetch_max_wait_ms: int, **options: Any) -> None:
        super().__init__(id, **options)
        self.fetch_max_wait_ms = fetch_max_wait_ms


class ConsumerThread(fa.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        c = super()._create_worker_consumer(transport)
        c._fetch_max_wait_ms = getattr(self.app, "fetch_max_wait_ms", c._fetch_max_wait_ms)
        return c


class Consumer(fa.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(fa.Transport):
    Consumer = Consumer


drivers.TRANSPORTS.aliases[SCHEME] = f"{__name__}:Transport"
