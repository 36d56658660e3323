"""Bar charts as inline SVG: one `<rect class="mark">` per data point, carrying its label and its value as the
API gave it (`data-label`, `data-value`), with a `<title>` and a `<desc>` listing every value (the text
alternative; the page puts a table of the same numbers beside each chart).

The geometry is presentation only: a bar's length is its value over the chart's largest, and the value printed
beside it is the API's text, formatted (thousands separators), never a figure computed here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from html import escape

from markupsafe import Markup

WIDTH = 700
BAR = 22  # a horizontal bar's thickness
GAP = 8
LABEL_W = 290  # room for a horizontal bar's label
HEIGHT = 220  # a vertical chart's plot height
PALETTE = ("#1f4e79", "#2e75b6", "#9dc3e6", "#c55a11", "#f4b183", "#548235", "#a9d18e", "#7f6000")


@dataclass(frozen=True)
class Point:
    label: str
    value: str | int  # as the API gave it: a count, or a decimal string
    key: str = ""  # the API's key of the point (a region code, a year, a month), for tests and links


def number(value: str | int) -> Decimal:
    try:
        return Decimal(str(value or 0))
    except InvalidOperation:
        return Decimal(0)


def fmt(value: str | int) -> str:
    """A figure as a person reads it: thousands separators, the API's decimals kept ("202277.925" ->
    "202,277.925"); empty stays empty."""
    text = str(value)
    if text == "":
        return ""
    sign, digits = ("-", text[1:]) if text.startswith("-") else ("", text)
    whole, dot, frac = digits.partition(".")
    if not whole.isdigit():
        return text
    return f"{sign}{int(whole):,}{dot}{frac}"


def _scale(points: Sequence[Point]) -> Decimal:
    return max((number(p.value) for p in points), default=Decimal(0)) or Decimal(1)


def _head(chart_id: str, title: str, points: Sequence[Point], unit: str, width: int, height: int) -> list[str]:
    desc = "; ".join(f"{p.label}: {fmt(p.value)}{unit}" for p in points) or "no data"
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="bars" id="{escape(chart_id)}" role="img" '
        f'viewBox="0 0 {width} {height}" width="100%" preserveAspectRatio="xMinYMin meet" '
        f'aria-labelledby="{escape(chart_id)}-t {escape(chart_id)}-d">',
        f'<title id="{escape(chart_id)}-t">{escape(title)}</title>',
        f'<desc id="{escape(chart_id)}-d">{escape(desc)}</desc>',
    ]


def _mark(p: Point, i: int, x: float, y: float, w: float, h: float) -> str:
    return (
        f'<rect class="mark" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" '
        f'fill="{PALETTE[i % len(PALETTE)] if i >= 0 else PALETTE[0]}" data-key="{escape(p.key or p.label)}" '
        f'data-label="{escape(p.label)}" data-value="{escape(str(p.value))}"/>'
    )


def hbars(chart_id: str, title: str, points: Sequence[Point], unit: str = "", colour_each: bool = False) -> Markup:
    """Horizontal bars, one per point, labelled on the left, each value printed at its bar's end."""
    top = max(_scale(points), Decimal(0))
    plot = WIDTH - LABEL_W - 90
    height = max(len(points), 1) * (BAR + GAP) + GAP
    out = _head(chart_id, title, points, unit, WIDTH, height)
    for i, p in enumerate(points):
        y = GAP + i * (BAR + GAP)
        w = float(number(p.value) / top) * plot if top else 0.0
        out.append(
            f'<text class="label" x="{LABEL_W - 8}" y="{y + BAR * 0.7:.1f}" text-anchor="end">{escape(p.label)}</text>'
        )
        out.append(_mark(p, i if colour_each else -1, LABEL_W, y, max(w, 0.0), BAR))
        out.append(
            f'<text class="value" x="{LABEL_W + max(w, 0.0) + 6:.1f}" y="{y + BAR * 0.7:.1f}">'
            f"{escape(fmt(p.value))}{escape(unit)}</text>"
        )
    out.append("</svg>")
    return Markup("\n".join(out))


def vbars(chart_id: str, title: str, points: Sequence[Point], unit: str = "") -> Markup:
    """Vertical bars (a series: years, months), one per point, labelled below, each value printed above it."""
    top = _scale(points)
    n = max(len(points), 1)
    step = (WIDTH - 20) / n
    width = min(step * 0.7, 60)
    base = HEIGHT + 20
    out = _head(chart_id, title, points, unit, WIDTH, base + 24)
    out.append(f'<line class="axis" x1="10" y1="{base}" x2="{WIDTH - 10}" y2="{base}"/>')
    longest = max((len(fmt(p.value)) for p in points), default=0)
    small = ' font-size="9"' if longest * 6.5 > step else ""  # values as long as a bar's room: smaller
    for i, p in enumerate(points):
        h = float(number(p.value) / top) * HEIGHT if top else 0.0
        x = 10 + i * step + (step - width) / 2
        out.append(_mark(p, -1, x, base - max(h, 0.0), width, max(h, 0.0)))
        out.append(
            f'<text class="value" x="{x + width / 2:.1f}" y="{base - max(h, 0.0) - 4:.1f}" text-anchor="middle"'
            f"{small}>"
            f"{escape(fmt(p.value))}</text>"
        )
        out.append(
            f'<text class="label" x="{x + width / 2:.1f}" y="{base + 16}" text-anchor="middle">{escape(p.label)}</text>'
        )
    out.append("</svg>")
    return Markup("\n".join(out))
