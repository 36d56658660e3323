"""Errors a command or query can end with; the gRPC kit maps each to its status code."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from services.kernel.faults import Unavailable
from services.kernel.store import CommandReused, ConcurrencyError

__all__ = [
    "CommandReused",
    "ConcurrencyError",
    "FieldViolation",
    "InvalidArgument",
    "NotFound",
    "RuleBroken",
    "Unavailable",
    "from_validation_error",
]


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class InvalidArgument(Exception):
    """Malformed input (INVALID_ARGUMENT), naming the offending fields."""

    def __init__(self, *violations: FieldViolation) -> None:
        self.violations = violations
        super().__init__("; ".join(f"{v.field}: {v.description}" for v in violations))


class RuleBroken(Exception):
    """A business rule refuses the command (FAILED_PRECONDITION); the message says the rule in words."""


class NotFound(Exception):
    """No such aggregate (NOT_FOUND)."""


def from_validation_error(e: ValidationError) -> InvalidArgument:
    return InvalidArgument(
        *(FieldViolation(".".join(str(p) for p in err["loc"]) or "request", err["msg"]) for err in e.errors())
    )
