"""Reactions of the carbon service to the logistics service's flights.

FlightBooked -> FlightEmissionsCalculated; FlightChanged -> FlightEmissionsReversed of what was recorded,
then FlightEmissionsCalculated for the new itinerary; FlightCancelled -> FlightEmissionsReversed of exactly
what was recorded. The command id derives from the event id, so a redelivered event changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from services.carbon import handlers
from services.carbon.commands import CalculateFlightEmissions, RecalculateFlightEmissions, ReverseFlightEmissions
from services.carbon.settings import CarbonSettings
from services.kernel.command import Command
from services.kernel.envelope import Envelope, Event, topic_for
from services.kernel.errors import from_validation_error
from services.kernel.policy import Policy
from services.kernel.store import EventStore
from services.logistics.events import FlightBooked, FlightCancelled, FlightChanged


def _legs(e: FlightBooked | FlightChanged) -> list[dict[str, Any]]:
    return [s.model_dump() for s in e.segments]


def command_for(env: Envelope, event: Event, command_id: str, settings: CarbonSettings) -> Command | None:
    """The command an event of the logistics service becomes (None: not ours to react to)."""
    try:
        if isinstance(event, FlightBooked):
            return CalculateFlightEmissions(
                command_id=command_id,
                booking_id=event.booking_id,
                traveller_id=event.traveller_id,
                traveller_kind=event.traveller_kind,
                action_code=event.action_code,
                activity_id=event.activity_id,
                segments=_legs(event),  # type: ignore[arg-type]
                cabin_class=event.cabin_class,
                on=event.booked_on,
                radiative_forcing=settings.radiative_forcing,
                distance_uplift=settings.distance_uplift,
            )
        if isinstance(event, FlightChanged):
            return RecalculateFlightEmissions(
                command_id=command_id,
                booking_id=event.booking_id,
                traveller_id=event.traveller_id,
                traveller_kind=event.traveller_kind,
                segments=_legs(event),  # type: ignore[arg-type]
                cabin_class=event.cabin_class,
                on=event.changed_on,
                radiative_forcing=settings.radiative_forcing,
                distance_uplift=settings.distance_uplift,
            )
        if isinstance(event, FlightCancelled):
            return ReverseFlightEmissions(
                command_id=command_id,
                booking_id=event.booking_id,
                traveller_id=event.traveller_id,
                on=event.cancelled_on,
            )
    except ValidationError as e:  # e.g. an airport the reference data does not know: refused, not retried
        raise from_validation_error(e) from None
    return None


class FlightEmissionsPolicy(Policy):
    name = "flight_emissions"
    topics = (topic_for("logistics"),)

    def __init__(self, store: Callable[[], EventStore | None], settings: CarbonSettings | None = None) -> None:
        self._store = store
        self.settings = settings or CarbonSettings()

    async def handle(self, env: Envelope, event: Event, command_id: str) -> None:
        cmd = command_for(env, event, command_id, self.settings)
        if cmd is None:
            return
        store = self._store()
        if store is None:
            raise RuntimeError("the event store is not open yet")
        cause = str(env.event_id)
        if isinstance(cmd, CalculateFlightEmissions):
            await handlers.calculate_flight_emissions(store, cmd, cause)
        elif isinstance(cmd, RecalculateFlightEmissions):
            await handlers.recalculate_flight_emissions(store, cmd, cause)
        elif isinstance(cmd, ReverseFlightEmissions):
            await handlers.reverse_flight_emissions(store, cmd, cause)
