"""What every section model shares: frozen, no unknown keys, and errors keyed by their own key."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

Positive = Annotated[float, Field(gt=0)]
"""A number above zero."""


class Section(BaseModel):
    """A ``[table]`` of the config: frozen, and an unknown key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def field_errors(model: str, problems: list[tuple[str, object, str]]) -> ValidationError:
    """A section validator's ``(key, value, message)`` problems, each keyed by its own key.

    A ``ValueError`` raised by a model validator is reported against the whole section with
    the section's input as its value, and that input holds the section's secrets.
    """
    return ValidationError.from_exception_data(
        model,
        [
            InitErrorDetails(
                type=PydanticCustomError("value_error", "{reason}", {"reason": message}),
                loc=(key,),
                input=value,
            )
            for key, value, message in problems
        ],
    )
