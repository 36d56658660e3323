"""The published language every context shares (regions, themes, activity types, expert backgrounds),
loaded from `data/reference.yaml` with its source named there."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml


@cache
def _data() -> dict[str, Any]:
    return yaml.safe_load((Path(__file__).parent / "data" / "reference.yaml").read_text())


def regions() -> dict[str, str]:
    """region code -> name."""
    return {code: r["name"] for code, r in _data()["regions"].items()}


def region_of(partner: str) -> str | None:
    """The region code of a partner (ISO alpha-2 country code or regional organisation code)."""
    for code, r in _data()["regions"].items():
        if partner in r["partners"]:
            return code
    return None


def themes() -> dict[str, str]:
    return dict(_data()["themes"])


def activity_types() -> dict[str, str]:
    return dict(_data()["activity_types"])


def expert_backgrounds() -> dict[str, str]:
    return dict(_data()["expert_backgrounds"])


def genders() -> tuple[str, ...]:
    return tuple(_data()["genders"])
