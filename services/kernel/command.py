"""The base of every command: what may be asked of a context, validated at the edge (pydantic)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from services.kernel.store import payload_hash


class Command(BaseModel):
    """A command names itself with a client-chosen `command_id`: the same id again answers with the first
    result and appends nothing; the same id with another payload is refused (CommandReused)."""

    model_config = ConfigDict(frozen=True, str_strip_whitespace=True, extra="forbid")
    command_id: str = Field(min_length=1, max_length=200)

    def digest(self) -> str:
        """The hash a retry is compared with: the whole command, its id included."""
        return payload_hash(self.model_dump(mode="json"))
