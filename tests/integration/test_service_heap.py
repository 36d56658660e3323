"""A service process leaves its heap as started out of Python's cyclic collections (service.settle_heap):
a service started in this process freezes what the process holds by then."""

from __future__ import annotations

import gc

import pytest

from services.kernel.service import Service
from services.ops.devstack import free_port

pytestmark = pytest.mark.integration


async def test_a_started_service_has_frozen_the_heap_it_started_with(schema: str) -> None:
    port = free_port()

    class Bare(Service):
        @property
        def port(self) -> int:
            return port

    gc.unfreeze()
    svc = Bare(name=schema, grpc_services=[], access={}, registrars=lambda s: [], projections=[])
    try:
        await svc.start()
        assert gc.get_freeze_count() > 0
    finally:
        await svc.stop()
        gc.unfreeze()
