"""The base of every command: what may be asked of a context, validated at the edge (pydantic)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def payload_hash(payload: Any) -> str:
    """The hash of a command's payload (JSON with sorted keys) that a retry is compared with."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class Command(BaseModel):
    """A command names itself with a client-chosen `command_id`: the same id again answers with the first
    result and appends nothing; the same id with another payload is refused (CommandReused)."""

    model_config = ConfigDict(frozen=True, str_strip_whitespace=True, extra="forbid")
    command_id: str = Field(min_length=1, max_length=200)

    def digest(self) -> str:
        """The hash a retry is compared with: the whole command, its id included."""
        return payload_hash(self.model_dump(mode="json"))
