"""A service's Prometheus metrics, scraped over HTTP while it works: projections' lag and outcomes, the
relay's position and that it is the active one, the partitions its group holds and the calls it answered."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from support import eventually, scrape, start_service

from services.kernel.runner import projection_group
from services.kernel.settings import Settings
from services.ops.devstack import free_port
from services.requests.client import RequestsClient

pytestmark = pytest.mark.e2e
GROUP = projection_group("requests")
SUBMIT = "/mieux.requests.v1.Requests/SubmitRequest"


def sample(metrics: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float | None:
    return metrics.get((name, frozenset(labels.items())))


async def test_a_service_serves_its_projections_lag_and_outcomes_and_its_relay_position(stack_env, monkeypatch) -> None:
    grpc_port, metrics_port = free_port(), free_port()
    svc = await asyncio.to_thread(start_service, "requests", stack_env, grpc_port, MIEUX_METRICS_PORT=str(metrics_port))
    try:
        monkeypatch.setenv("MIEUX_REQUESTS_ADDR", f"127.0.0.1:{grpc_port}")
        applied_before = sample(
            await scrape(metrics_port), "mieux_projection_events_total", group=GROUP, outcome="applied"
        )
        positions = []
        async with RequestsClient.connect(Settings()) as client:
            for i in range(3):
                ack = await client.submit(
                    command_id=str(uuid.uuid4()),
                    partner="MD",
                    institution="Bureau for Migration and Asylum",
                    institution_type="agency",
                    received_on="2024-03-01",
                    title=f"metrics {i}",
                )
                positions.append(int(ack.position))

        async def reported() -> bool:
            m = await scrape(metrics_port)
            applied = sample(m, "mieux_projection_events_total", group=GROUP, outcome="applied")
            lags = [
                sample(m, "mieux_projection_lag_events", group=GROUP, projection=p)
                for p in ("requests_per_year", "request_register")
            ]
            published = sample(m, "mieux_relay_published_position", service="requests") or 0
            return (
                published >= max(positions)
                and sample(m, "mieux_relay_readable_position", service="requests") == published
                and applied is not None
                and applied >= (applied_before or 0) + 6  # three events, two projections
                and lags == [0, 0]
                # alone, it holds the relay lock and every partition of its group's topic
                and sample(m, "mieux_relay_active", service="requests") == 1
                and sample(m, "mieux_consumer_partitions", group=GROUP) == Settings().topic_partitions
                and (sample(m, "mieux_grpc_calls_total", method=SUBMIT) or 0) >= 3
            )

        await eventually(reported, what="the metrics to show the three commands published and applied")
    finally:
        svc.stop()
