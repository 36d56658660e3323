"""Settings of the carbon method (environment): the 8% distance uplift is off by default, radiative
forcing on; both are recorded with every result."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CarbonSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", env_prefix="", populate_by_name=False)

    # sources disagree whether the DESNZ factors already include the 8% uplift (DESIGN.md section 7)
    distance_uplift: bool = Field(default=False, alias="MIEUX_CARBON_DISTANCE_UPLIFT")
    radiative_forcing: bool = Field(default=True, alias="MIEUX_CARBON_RADIATIVE_FORCING")
