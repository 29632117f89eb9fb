"""What every part of the recipe schema shares: the frozen, key-checked base model and the bounded scalars."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# Upper bounds keep absurd values (a 2**70 seed, 10**12 epochs) from failing hours into a run.
PositiveInt = Annotated[int, Field(gt=0, le=1_000_000)]
Epochs = Annotated[int, Field(ge=0, le=100_000)]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
