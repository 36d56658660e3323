"""What the product is made of: its contexts (one per service, in the kernel's list of services and their
ports), and what each service runs, read from the `Service` its `__main__.build()` makes: the one list of
its projections and policies."""

from __future__ import annotations

import importlib
import importlib.util

from services.kernel.projection import Projection
from services.kernel.service import Service
from services.kernel.settings import SERVICE_PORTS

CONTEXTS = tuple(SERVICE_PORTS)


def load_events() -> None:
    """Import every context's events.py (stats, a read side, has none), filling the registry."""
    for ctx in CONTEXTS:
        if importlib.util.find_spec(f"services.{ctx}.events") is not None:
            importlib.import_module(f"services.{ctx}.events")


def service(ctx: str) -> Service:
    """The service a context runs, as `python -m services.<ctx>` builds it (nothing is started)."""
    return importlib.import_module(f"services.{ctx}.__main__").build()


def services() -> dict[str, Service]:
    return {ctx: service(ctx) for ctx in CONTEXTS}


def calls() -> dict[str, tuple[str, ...]]:
    """service -> the calls it makes of the others (its `Service.calls`): each service principal's allow-list."""
    return {ctx: tuple(svc.calls) for ctx, svc in services().items()}


def projections() -> dict[str, tuple[str, Projection]]:
    """projection name -> (owning service, an instance as its service's `build()` makes it)."""
    return {p.name: (ctx, p) for ctx, svc in services().items() for p in svc.projections}


def consumer_groups() -> list[tuple[str, tuple[str, ...]]]:
    """Every consumer group with its topics, as the services run them."""
    return [g for svc in services().values() for g in svc.consumer_groups()]
