"""`mieux carbon report`: the footprint of a year and its offset ledger (finance token), as tables or CSV."""

from __future__ import annotations

import argparse

from services.kernel import cli
from services.kernel.settings import Settings


async def carbon_cmd(args: argparse.Namespace) -> None:
    """The footprint of a year and the offset ledger against it, read with the finance token."""
    import csv

    from mieux.carbon.v1 import carbon_pb2

    from services.carbon.client import CarbonClient

    async with CarbonClient.connect(Settings(), role="finance") as c:
        md = {"metadata": c._md(), "timeout": c.deadline}
        fp = await c.stub.GetFootprint(carbon_pb2.GetFootprintQuery(year=args.year), **md)
        ledger = await c.stub.GetOffsetLedger(carbon_pb2.GetOffsetLedgerQuery(year=args.year), **md)
    cli.table(
        f"Footprint {args.year}: {fp.kg_co2e} kg CO2e",
        ["traveller", "action", "region", "flights", "km", "miles", "kg CO2e"],
        [
            [
                r.traveller_kind,
                r.action_code or "-",
                r.region or "-",
                r.flights,
                r.distance_km,
                r.distance_miles,
                r.kg_co2e,
            ]
            for r in fp.rows
        ],
    )
    cost = ", ".join(f"{m.amount} {m.currency}" for m in ledger.cost) or "-"
    cli.table(
        f"Offset ledger {args.year}",
        ["VERs purchased", "VERs retired against the year", "balance at year end", "cost", "footprint kg", "coverage"],
        [
            [
                ledger.vers_purchased,
                ledger.vers_retired,
                ledger.balance,
                cost,
                ledger.footprint_kg_co2e,
                ledger.coverage or "-",
            ]
        ],
    )
    cli.table(
        "Lots purchased",
        ["lot", "registry", "project", "vintage", "VERs", "unit price", "total"],
        [
            [
                x.lot_id,
                x.registry,
                x.project,
                x.vintage_year,
                x.quantity,
                f"{x.unit_price.amount} {x.unit_price.currency}",
                f"{x.total_cost.amount} {x.total_cost.currency}",
            ]
            for x in ledger.lots
        ],
    )
    if args.csv:
        with open(args.csv, "w", newline="") as f:  # noqa: ASYNC230 - a small file at the end
            w = csv.writer(f)
            w.writerow(
                [
                    "section",
                    "year",
                    "traveller_kind",
                    "action_code",
                    "region",
                    "lot_id",
                    "registry",
                    "project",
                    "vintage",
                    "quantity",
                    "kg_co2e",
                    "amount",
                    "currency",
                ]
            )
            for r in fp.rows:
                w.writerow(
                    [
                        "footprint",
                        args.year,
                        r.traveller_kind,
                        r.action_code,
                        r.region,
                        "",
                        "",
                        "",
                        "",
                        r.flights,
                        r.kg_co2e,
                        "",
                        "",
                    ]
                )
            for x in ledger.lots:
                w.writerow(
                    [
                        "lot_purchased",
                        args.year,
                        "",
                        "",
                        "",
                        x.lot_id,
                        x.registry,
                        x.project,
                        x.vintage_year,
                        x.quantity,
                        "",
                        x.total_cost.amount,
                        x.total_cost.currency,
                    ]
                )
            for m in ledger.cost:
                w.writerow(
                    ["cost", args.year, "", "", "", "", "", "", "", ledger.vers_purchased, "", m.amount, m.currency]
                )
            w.writerow(
                [
                    "retired_against_year",
                    args.year,
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    ledger.vers_retired,
                    ledger.footprint_kg_co2e,
                    "",
                    "",
                ]
            )
            w.writerow(["coverage", args.year, "", "", "", "", "", "", "", "", "", ledger.coverage, ""])
        cli.console.print(f"CSV written to {args.csv}")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `mieux carbon ...` to the `mieux` command."""
    cb = sub.add_parser("carbon", help="carbon accounting for finance")
    cbs = cb.add_subparsers(dest="action", required=True)
    rep = cbs.add_parser("report", help="the footprint of a year and its offset ledger (finance token)")
    rep.add_argument("--year", type=int, required=True)
    rep.add_argument("--csv", help="also write them to this CSV file (decimals as text, currency stated)")
    cb.set_defaults(fn=cli.run(carbon_cmd))
