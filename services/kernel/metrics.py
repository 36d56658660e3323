"""Prometheus metrics of a service process, served at http://<MIEUX_GRPC_HOST>:<MIEUX_METRICS_PORT>/metrics
(off when the port is unset). What the ops team alerts on: a projection's lag, dead letters, and the
relay's progress.

Each process reports what it consumes: with several instances of a service, a group's lag is the sum over
them (Kafka gives each partition to one member)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, start_http_server

PROJECTION_LAG = Gauge(
    "mieux_projection_lag_events",
    "Events on the bus that the projection has not applied yet, over the partitions this process consumes",
    ["group", "projection"],
)
PROJECTION_EVENTS = Counter(
    "mieux_projection_events",
    "(projection, event) pairs the projections of a group handled, by outcome: applied, duplicate (dropped "
    "by the tracking table), skipped (unknown event type), dead (sent to the group's DLQ)",
    ["group", "outcome"],
)
RELAY_ACTIVE = Gauge(
    "mieux_relay_active",
    "1 while this process's relay holds the service's relay lock and publishes, else 0 (a standby); the "
    "relay's positions below are those of the active one",
    ["service"],
)
RELAY_POSITION = Gauge(
    "mieux_relay_published_position",
    "The store position up to which the active relay has published the service's events",
    ["service"],
)
RELAY_READABLE = Gauge(
    "mieux_relay_readable_position",
    "The store's high-water mark as the active relay last read it, or its published position when nothing "
    "was left to read: this minus mieux_relay_published_position is what waits to be published",
    ["service"],
)


def serve(host: str, port: int) -> Callable[[], None]:
    """Serve /metrics from a daemon thread; returns the function that stops it."""
    server, thread = start_http_server(port, addr=host)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop
