"""The expert pool kept by day (StatsExperts, projections.py): each expert adds +1 the day registered and
-1 the day deactivated, so the pool at the end of a year is a sum over at most a row a day, not a count of
every expert registered since the beginning (queries.py)."""

from __future__ import annotations

from datetime import date

import asyncpg

# the changes by day; a day whose changes sum to 0 has no row, so the table is a function of the experts'
# rows (a rebuild gives the same rows). When new beside experts already there (this table deployed over an
# existing model), it is filled from them once.
POOL_DDL = """
    CREATE TABLE IF NOT EXISTS {s}.expert_pool_days (
        day    date NOT NULL,
        change integer NOT NULL,
        PRIMARY KEY (day) INCLUDE (change)
    );
    INSERT INTO {s}.expert_pool_days
    SELECT day, sum(change) FROM (
        SELECT registered_on AS day, 1 AS change FROM {s}.experts WHERE registered_on IS NOT NULL
        UNION ALL
        SELECT greatest(registered_on, deactivated_on), -1 FROM {s}.experts
        WHERE registered_on IS NOT NULL AND deactivated_on IS NOT NULL
    ) c
    WHERE NOT EXISTS (SELECT 1 FROM {s}.expert_pool_days)
    GROUP BY day HAVING sum(change) <> 0;
"""


def pool_changes(registered_on: date | None, deactivated_on: date | None) -> dict[date, int]:
    """An expert's changes to the pool by day: +1 the day registered, -1 the day deactivated (if registered;
    a deactivation before the registration ends it that day). The pool at the end of a day is the sum of
    every change on or before it: the experts registered by then and not deactivated by then."""
    if registered_on is None:
        return {}
    changes = {registered_on: 1}
    if deactivated_on is not None:
        gone = max(registered_on, deactivated_on)
        changes[gone] = changes.get(gone, 0) - 1
    return {day: n for day, n in changes.items() if n}


async def pool_moved(
    conn: asyncpg.Connection, table: str, before: asyncpg.Record | None, after: asyncpg.Record | None
) -> None:
    """Move `table` (expert_pool_days) by the change of one expert's (registered_on, deactivated_on) from
    `before` to `after` (None: no row): it stays the sum of every expert's pool_changes whatever order the
    events come in, and an event applied again changes nothing."""
    moved = pool_changes(after["registered_on"], after["deactivated_on"]) if after else {}
    for day, n in (pool_changes(before["registered_on"], before["deactivated_on"]) if before else {}).items():
        moved[day] = moved.get(day, 0) - n
    moved = {day: n for day, n in moved.items() if n}
    if moved:
        await conn.execute(
            f"""MERGE INTO {table} p
            USING (SELECT unnest($1::date[]) AS day, unnest($2::integer[]) AS change) m ON p.day = m.day
            WHEN MATCHED AND p.change + m.change = 0 THEN DELETE
            WHEN MATCHED THEN UPDATE SET change = p.change + m.change
            WHEN NOT MATCHED THEN INSERT VALUES (m.day, m.change)""",
            list(moved),
            list(moved.values()),
        )
