"""Moved to :mod:`deepseek.components` (below data and models, which validate their own arguments);
this name keeps working for code that imports it from here."""

from deepseek.components import (  # noqa: F401
    SUPPLIED_BY_FRAMEWORK,
    ComponentError,
    ComponentErrors,
    allowed_keys,
    builder_fields,
    validate_kwargs,
)
