"""The dev stack's tokens: one per person role (`dev-ops`, `dev-finance`, `dev-admin`) and one per service (its
principal named after it, allowed only its calls: catalog.calls()), kept in `tokens.json` (what the CLI, the
services and the tests present), and the token registry the services check them against, `auth-tokens.json`
(salted hashes only; `mieux tokens issue` adds people to it). Both are private (0600) from their creation."""

from __future__ import annotations

import json
from pathlib import Path

from services.kernel import principals
from services.kernel.files import write_private
from services.kernel.principals import MIN_TOKEN_LENGTH, TokenEntry

PEOPLE = ("ops", "finance", "admin")
TOKENS_FILE = "tokens.json"
REGISTRY_FILE = "auth-tokens.json"


def stack_entry_id(who: str) -> str:
    """The registry id of a dev stack's own token (a person role or a service): rewritten at every `up`."""
    return f"dev-{who}"


def ensure(home: Path) -> Path:
    """Make the missing tokens (a token shorter than MIN_TOKEN_LENGTH, from an older stack, is made again), and
    write the registry: the stack's own entries afresh (the services' calls may have changed), the people's
    tokens issued with `mieux tokens` kept. Returns the registry's path."""
    from services.ops import catalog

    calls = catalog.calls()
    path = home / TOKENS_FILE
    old = json.loads(path.read_text()) if path.exists() else {}
    tokens = {
        who: tok if isinstance(tok := old.get(who), str) and len(tok) >= MIN_TOKEN_LENGTH else principals.new_token()
        for who in (*PEOPLE, *calls)
    }
    if tokens != old:
        write_private(path, json.dumps(tokens, indent=2))
    registry = home / REGISTRY_FILE
    own = {stack_entry_id(who) for who in tokens}
    entries: list[TokenEntry] = [
        principals.entry_for(tokens[r], f"dev-{r}", [r], token_id=stack_entry_id(r))  # type: ignore[list-item]
        for r in PEOPLE
    ]
    entries += [principals.entry_for(tokens[s], s, ["service"], calls[s], token_id=stack_entry_id(s)) for s in calls]
    with principals.locked(registry):  # `mieux tokens issue` may be writing it too
        kept = [e for e in (principals.read_file(registry) if registry.exists() else []) if e.id not in own]
        principals.write_file(registry, [*entries, *kept])
    return registry
