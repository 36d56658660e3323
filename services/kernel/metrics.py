"""Prometheus metrics of a service process, served at http://<MIEUX_METRICS_HOST>:<MIEUX_METRICS_PORT>/metrics
(off when the port is unset; the host is loopback unless set). What the ops team alerts on: a projection's
lag, dead letters, and the relay's progress.

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
    """Serve /metrics on `host` (MIEUX_METRICS_HOST: one address, never every one unless it says 0.0.0.0)
    from a daemon thread; returns the function that stops it."""
    server, thread = start_http_server(port, addr=host)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return stop


RELAY_STUCK = Gauge(
    "mieux_relay_stuck_seconds",
    "How long the active relay has been unable to publish (the broker away or refusing the batch, the WAL not "
    "flushed, a writer that does not end, ...), once that is longer than a few seconds (the relay then logs an "
    "ERROR saying why); 0 while it publishes or has nothing to publish",
    ["service"],
)

# consumers (consuming.py) and their parked events (parking.py)
CONSUMER_UP = Gauge(
    "mieux_consumer_up",
    "1 while the consumer group's loop in this process consumes; 0 once it has not been running, or has been "
    "failing (a passing fault retried, a crash being restarted), for longer than a few seconds: the service's "
    "gRPC health is then NOT_SERVING",
    ["group"],
)
# gRPC: the calls this process answered, by method (health and reflection not counted): with several replicas,
# how the clients spread their calls over them
GRPC_CALLS = Counter("mieux_grpc_calls", "gRPC calls this process answered, by full method name", ["method"])
CONSUMER_PARTITIONS = Gauge(
    "mieux_consumer_partitions",
    "Partitions of the consumer group's topics this process holds now: the group's replicas split them",
    ["group"],
)
CONSUMER_RETRYING = Gauge(
    "mieux_consumer_retrying",
    "1 while the consumer group is retrying a failure (a passing fault: database or broker away, deadlock, lock "
    "timeout, cancelled statement; or a policy's non-final error), else 0",
    ["group"],
)
CONSUMER_RETRIES = Counter(
    "mieux_consumer_retries",
    "Retries of the consumer group, by kind: transient (a passing fault, retried for as long as it lasts) or "
    "error (a policy's non-final error, retried a bounded number of times and then parked)",
    ["group", "kind"],
)
PARKED = Gauge(
    "mieux_parked_events",
    "Events parked for a consumer (a projection or a policy) of the group, from PostgreSQL (the same on every "
    "instance of the service): those it could never apply and those of their streams waiting behind them",
    ["group", "consumer"],
)
