"""Which failures pass: faults that a retry will outlive (DESIGN.md section 11).

A passing fault is retried with backoff for as long as it lasts, never parked as poison, and a caller of
a command hears UNAVAILABLE (safe to retry with the same command id). It is: a lost or refused database
connection (or one asyncpg left in a broken protocol state when it was lost), a pool that had no connection
to lend in time, a PostgreSQL error of SQLSTATE class 08 (connection), 40 (serialization failure, deadlock),
53 (insufficient resources), 55 (lock not available, object in use), 57 (operator intervention: cancelled
statement, shutdown, cannot connect now), a Kafka broker that is away or timed out, and a collaborator
service that answered UNAVAILABLE or did not answer in time. Anything else is a decision (a refusal) or a bug.
"""

from __future__ import annotations

import asyncio

import asyncpg
from aiokafka import errors as kafka_errors

TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "55", "57")


class Unavailable(Exception):
    """A collaborator service did not answer (UNAVAILABLE): nothing stored; retry with the same command id."""


class PoolTimeout(Exception):
    """No pooled connection was free within the deadline (`MIEUX_DB_ACQUIRE_TIMEOUT_S`)."""


def sqlstate(e: BaseException) -> str:
    return str(getattr(e, "sqlstate", "") or "")


def is_transient(e: BaseException) -> bool:
    """A fault that a retry will outlive (see the module's docstring)."""
    if isinstance(e, Unavailable | PoolTimeout | asyncpg.PostgresConnectionError | asyncpg.InterfaceError):
        return True
    if isinstance(e, asyncpg.exceptions.InternalClientError):  # protocol state broken by a lost connection
        return True
    if isinstance(e, asyncpg.PostgresError):
        return sqlstate(e)[:2] in TRANSIENT_SQLSTATE_CLASSES
    if isinstance(e, OSError | TimeoutError | asyncio.TimeoutError):  # refused, reset, unreachable
        return True
    if isinstance(e, kafka_errors.KafkaError):
        return bool(getattr(e, "retriable", False)) or isinstance(
            e, kafka_errors.KafkaConnectionError | kafka_errors.KafkaTimeoutError | kafka_errors.KafkaUnavailableError
        )
    try:
        import grpc

        if isinstance(e, grpc.aio.AioRpcError):
            return e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    except ImportError:  # pragma: no cover
        pass
    return False


def describe(e: BaseException) -> str:
    """An exception as a reason that may be stored or shown to another party: its kind (and SQLSTATE),
    never its text, which may quote the data it failed on."""
    state = sqlstate(e)
    return f"{type(e).__name__} (SQLSTATE {state})" if state else type(e).__name__
