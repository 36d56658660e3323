"""The rebuild beside the live model (kernel/bluegreen.py), without a database: how a projection's statements
are pointed at its shadow tables, which projections can be, and `mieux projections rebuild`'s refusal of a
name it does not know."""

from __future__ import annotations

import re

import pytest

from services.kernel.bluegreen import Shadow
from services.kernel.projection import Projection
from services.ops import catalog
from services.ops.cli import main


def projection(name: str, tables: tuple[str, ...]) -> Projection:
    class P(Projection):
        service = "t"
        topics = ("mieux.t.events",)
        setup_sql = ""

    P.name, P.tables = name, tables
    return P()


def test_only_the_projections_tables_and_the_tracking_table_are_pointed_at_the_shadow() -> None:
    s = Shadow(projection("counts", ("views.counts", "views.totals")))
    sql = (
        "INSERT INTO views.counts VALUES ($1) ON CONFLICT (id) DO UPDATE SET n = counts.n + 1; "
        'SELECT * FROM views.counts_old, views.totals t, other.counts, xviews.counts, "views".counts; '
        "INSERT INTO t_projections.tracking SELECT 1; CREATE INDEX IF NOT EXISTS totals_by ON views.totals (n)"
    )
    assert s.sql(sql) == (
        "INSERT INTO mieux_next_counts.counts VALUES ($1) ON CONFLICT (id) DO UPDATE SET n = counts.n + 1; "
        'SELECT * FROM views.counts_old, mieux_next_counts.totals t, other.counts, xviews.counts, "views".counts; '
        "INSERT INTO mieux_next_counts._tracking SELECT 1; "
        "CREATE INDEX IF NOT EXISTS totals_by ON mieux_next_counts.totals (n)"
    )


def test_tables_of_one_name_in_two_schemas_or_unqualified_cannot_be_rebuilt_beside() -> None:
    with pytest.raises(ValueError, match="distinct names"):
        Shadow(projection("p", ("a.rows", "b.rows")))
    with pytest.raises(ValueError, match="schema-qualified"):
        Shadow(projection("p", ("rows",)))


@pytest.mark.parametrize("name", sorted(catalog.projections()))
def test_every_projection_the_services_run_can_be_rebuilt_beside(name: str) -> None:
    _, p = catalog.projections()[name]
    s = Shadow(p)
    ddl = s.sql(p.setup_sql)
    for live in p.tables:  # the table's name alone: `experts_views.deployments_expert` (an index) is another name
        left = re.search(rf'(?<![\w$."]){re.escape(live)}(?![\w$"])', ddl)
        assert left is None, f"{live} is left in {name}'s DDL"


def test_rebuilding_a_projection_nobody_runs_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["projections", "rebuild", "no_such_projection"]) == 2
    assert "unknown projection(s): no_such_projection" in capsys.readouterr().out
