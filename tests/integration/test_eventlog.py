"""EventLog.ReadAll's client (eventlog.ReadAllSource) against the kernel's server in this process, on the test
stack's PostgreSQL: what a rebuild reads must come from the service it asked."""

from __future__ import annotations

import uuid
from datetime import date

import pytest

from services.kernel import eventlog
from services.kernel.db import Pool
from services.kernel.grpckit import READERS, Access, GrpcServer
from services.kernel.settings import Settings
from services.kernel.store import EventStore, Metadata
from services.ops.devstack import DevStack, free_port
from services.requests.events import RequestWithdrawn

pytestmark = pytest.mark.integration


async def test_a_source_refuses_events_of_another_service(stack: DevStack, pool: Pool, monkeypatch) -> None:
    """A server that answers for `requests` with another service's events (a wrong address) fails the read,
    rather than have a rebuild apply them; the same server named right is read."""
    settings = Settings()
    store = EventStore(pool, "requests")
    await store.setup()
    withdrawn = RequestWithdrawn(request_id="x", reason="r", withdrawn_on=date(2024, 1, 2))
    await store.append(f"req-{uuid.uuid4()}", 0, [withdrawn], Metadata(actor="test"))
    for served_as, fails in (("experts", True), ("requests", False)):
        store.service = served_as  # the source the server names on every event it sends
        port = free_port()
        server = GrpcServer(settings, port, [eventlog.register(store, settings)], [eventlog.SERVICE_NAME],
                            Access({eventlog.READ_ALL: READERS}))  # fmt: skip
        await server.start()
        try:
            monkeypatch.setenv("MIEUX_REQUESTS_ADDR", f"127.0.0.1:{port}")
            source = eventlog.read_all_source("requests", settings, "ops")
            if fails:
                with pytest.raises(ValueError, match="another source"):
                    [e async for e in source()]
            else:
                events = [e async for e in source()]
                assert events and {e.source for e in events} == {"requests"}
        finally:
            await server.stop(grace=1.0)
