"""Check a component's keyword arguments against its builder's signature before anything is built.

For ``model: {name: simple_cnn, num_clases: 10}`` this reports ``model.num_clases`` as unknown with
"did you mean 'num_classes'", and ``model.width: 'wide'`` as a wrong type, by turning the builder's
signature into a pydantic model. Arguments the framework supplies itself (``params``,
``optimizer``, ``total_steps``) are left out of what a config may set.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from deepseek.registry import Registry, RegistryError

SUPPLIED_BY_FRAMEWORK = {"self", "params", "optimizer", "total_steps"}


class ComponentError(ValueError):
    """One problem with one key of a component; ``path`` is relative to the component."""

    def __init__(
        self, path: tuple[Any, ...], message: str, value: Any = None, kind: str = "", allowed: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.path, self.message, self.value, self.kind, self.allowed = path, message, value, kind, allowed or []


def builder_fields(fn: Callable[..., Any]) -> tuple[dict[str, Any], bool]:
    """pydantic field definitions from ``fn``'s signature, and whether it accepts ``**kwargs``."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        hints = get_type_hints(target, include_extras=True)
    except Exception:  # unresolvable annotations: validate names only
        hints = {}
    fields: dict[str, Any] = {}
    var_kw = False
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
            continue
        if p.kind is p.VAR_POSITIONAL or p.name in SUPPLIED_BY_FRAMEWORK:
            continue
        annotation = hints.get(p.name, Any)
        default = ... if p.default is p.empty else p.default
        fields[p.name] = (annotation, default)
    return fields, var_kw


def validate_kwargs(registry: Registry, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Validated (and type-coerced) builder kwargs for ``registry[name]``.

    Raises :class:`ComponentError` for an unknown name, and a list of them (as
    ``ComponentErrors``) for bad arguments.
    """
    try:
        fn = registry.get(name)
    except RegistryError as exc:
        raise ComponentErrors([ComponentError(("name",), str(exc), name, "unknown_name")]) from None
    fields, var_kw = builder_fields(fn)
    for key, annotation in registry.build_options().items():  # keywords the registry's build takes for every entry
        fields.setdefault(key, (annotation, None))
    model = create_model(  # type: ignore[call-overload]
        f"{registry.kind}:{name}",
        __config__=ConfigDict(extra="allow" if var_kw else "forbid", arbitrary_types_allowed=True),
        **fields,
    )
    try:
        validated = model.model_validate(kwargs)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            nested = allowed_keys(model, loc[:-1]) if len(loc) > 1 else []  # keys of a nested section
            errors.append(ComponentError(loc, err["msg"], err.get("input"), err["type"], nested))
        raise ComponentErrors(errors, allowed=sorted(fields)) from None
    # Only what the user set: builder defaults stay the builder's.
    return {k: getattr(validated, k) for k in kwargs if k in fields} | {
        k: v for k, v in kwargs.items() if k not in fields
    }


class ComponentErrors(ValueError):
    def __init__(self, errors: list[ComponentError], allowed: list[str] | None = None) -> None:
        super().__init__("; ".join(e.message for e in errors))
        self.errors, self.allowed = errors, allowed or []


def allowed_keys(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the section at ``loc`` (walking nested pydantic models)."""
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        model = _model_in(field.annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return sorted(model.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    """The BaseModel inside ``Optional[X]`` / ``list[X]`` / ``X``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None
