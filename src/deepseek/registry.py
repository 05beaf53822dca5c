"""One registry mechanism for every kind of component (timm-style ``@register``).

Models, datasets, transforms, optimizers, schedulers, callbacks, metrics and losses each get a
:class:`Registry`. A component is looked up by its registered name (case-insensitive) or, for the
user's own code, by an import path such as ``my_pkg.nets:Net`` or ``my_pkg.nets.Net``.

An import path is checked before anything it names is called: the standard library and built-in modules
never provide components (``os:system`` is refused before ``os`` is looked at), and the object must be a
class or a Python function of the registry's kind (an ``nn.Module`` subclass or a builder for models; a
builder's result is checked after the call). Importing a module runs its top-level code, so code named by
a directory the user did not write is refused outright inside :func:`refusing_import_paths`.

This module imports nothing heavy so that every layer may use it (base classes are named, not imported).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def singular(kind: str) -> str:
    """``losses`` -> ``loss``, ``models`` -> ``model``: the kind as an error message names one entry."""
    if kind.endswith("ies"):  # strategies -> strategy
        return kind[:-3] + "y"
    return kind[:-2] if kind.endswith("sses") else kind.removesuffix("s")


class RegistryError(LookupError):
    """An unknown name or an import path that does not resolve; the message lists what exists."""


class Registry:
    """Maps names to builders (functions or classes) of one component kind.

    >>> models = Registry("models")
    >>> @models.register("tiny", aliases=("t",))
    ... def tiny(width: int = 4): ...
    >>> models.get("TINY") is tiny
    True
    """

    def __init__(self, kind: str, base: str | None = None, result: str | None = None) -> None:
        """``base``: the class (``torch.nn:Module``) an imported class must subclass; ``result``: the class an
        imported function's result must be an instance of, or ``"callable"`` (then a plain class whose
        instances are callable is accepted too, as losses are). Named, so torch loads late."""
        self.kind = kind
        self.base, self.result = base, result
        self._entries: dict[str, Callable[..., Any]] = {}
        self._aliases: dict[str, str] = {}
        self._info: dict[str, dict[str, Any]] = {}
        self._display: dict[str, str] = {}
        self._build_options: dict[str, tuple[Any, Callable[[str, Any, Any], Any]]] = {}

    def register(self, name: str | None = None, *, aliases: tuple[str, ...] = (), **info: Any) -> Callable[[F], F]:
        """Decorator registering ``fn`` under ``name`` (default: its ``__name__``)."""

        def decorator(fn: F) -> F:
            key = (name or fn.__name__).lower()
            if key in self._entries or key in self._aliases:
                raise RegistryError(f"{self.kind}: '{key}' is already registered")
            self._entries[key] = fn
            self._info[key] = dict(info)
            self._display[key] = name or fn.__name__
            for alias in aliases:
                self._aliases[alias.lower()] = key
            return fn

        return decorator

    def canonical(self, name: str) -> str:
        """The registered key for ``name`` or an alias of it; raises with suggestions."""
        key = name.lower()
        if key in self._entries:
            return key
        if key in self._aliases:
            return self._aliases[key]
        raise RegistryError(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        known = sorted(self._entries) + sorted(self._aliases)
        close = difflib.get_close_matches(name.lower(), known, n=3, cutoff=0.6)
        shown = [self._display.get(c, c) for c in close]
        hint = f" did you mean {', '.join(repr(c) for c in shown)}?" if close else ""
        listed = ", ".join(sorted(self._display[k] for k in self._entries)) or "(none)"
        return (
            f"unknown {singular(self.kind)} '{name}';{hint}"
            f" registered: {listed}; or give an import path such as 'my_pkg.module:Name'"
        )

    def get(self, name: str) -> Callable[..., Any]:
        """The builder for a registered name, or the class or function of this kind an import path names."""
        if is_import_path(name) and name.lower() not in self._entries:
            return self._check_kind(name, import_object(name))
        return self._entries[self.canonical(name)]

    def _check_kind(self, path: str, obj: Any) -> Callable[..., Any]:
        """``obj`` if it is a class or Python function this registry can build with, else a RegistryError."""
        what = f"a {singular(self.kind)} import path must name a class or a function that builds one"
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            got = "a module" if inspect.ismodule(obj) else f"a {type(obj).__name__} object"
            raise RegistryError(f"'{path}' is {got}, not a class or function; {what}")
        if _is_standard_library(getattr(obj, "__module__", None) or ""):  # reached through another module
            raise RegistryError(f"'{path}': standard-library and built-in modules cannot provide components")
        if inspect.isclass(obj) and self.base is not None and not issubclass(obj, _named_class(self.base)):
            if self.result != "callable":
                raise RegistryError(f"'{path}' is not a subclass of {_dotted(self.base)}; {what}")
            if not _defines_call(obj):  # a plain class serves where its instances are what is called (a loss)
                raise RegistryError(f"'{path}' is not a subclass of {_dotted(self.base)} nor a class whose "
                                    f"instances are callable (one with __call__); {what}")  # fmt: skip
        return obj

    def add_build_option(self, key: str, apply: Callable[[str, Any, Any], Any], annotation: Any = Any) -> None:
        """A keyword every entry's :meth:`build` accepts (``pretrained=`` for models): it is taken out of the
        builder's arguments and, unless None, ``apply(name, built, value)`` returns what ``build`` gives.
        ``annotation`` is the value's type, for checking configs; a builder with its own ``key`` keeps it."""
        self._build_options[key] = (annotation, apply)

    def build_options(self) -> dict[str, Any]:
        """The extra build keywords and their types (see :meth:`add_build_option`)."""
        return {key: annotation for key, (annotation, _) in self._build_options.items()}

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        builder = self.get(name)
        options = {k: kwargs.pop(k) for k in list(kwargs) if k in self._build_options and not _takes(builder, k)}
        built = builder(*args, **kwargs)
        if inspect.isfunction(builder) and is_import_path(name) and name.lower() not in self._entries:
            self._check_result(name, built)
        for key, value in options.items():
            if value is not None:
                built = self._build_options[key][1](name, built, value)
        return built

    def _check_result(self, path: str, built: Any) -> None:
        """What an imported builder function returned must be of this registry's kind."""
        if self.result is None:
            return
        ok = callable(built) if self.result == "callable" else isinstance(built, _named_class(self.result))
        if not ok:
            wanted = "callable" if self.result == "callable" else _dotted(self.result)
            raise RegistryError(f"'{path}' returned a {type(built).__name__}, not a {wanted}; a {singular(self.kind)} "
                                f"builder must return one")  # fmt: skip

    def info(self, name: str) -> dict[str, Any]:
        return dict(self._info.get(self.canonical(name), {}))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def display_name(self, name: str) -> str:
        """The name as registered (``RandomRotation``); lookups ignore case."""
        return self._display[self.canonical(name)]

    def aliases_of(self, name: str) -> list[str]:
        key = self.canonical(name)
        return sorted(a for a, k in self._aliases.items() if k == key)

    def summary(self, name: str) -> str:
        """The first line of the builder's docstring."""
        doc = inspect.getdoc(self.get(name)) or ""
        return doc.splitlines()[0] if doc else ""

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = name.lower()
        return key in self._entries or key in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"


def _defines_call(cls: type) -> bool:
    """Whether instances of ``cls`` are callable: a class of its MRO (not ``object``) defines ``__call__``
    (``hasattr(cls, "__call__")`` is always true: it finds the metaclass's)."""
    return any("__call__" in vars(klass) for klass in cls.__mro__ if klass is not object)


def _takes(fn: Callable[..., Any], key: str) -> bool:
    """Whether ``fn`` declares a parameter named ``key`` itself."""
    try:
        return key in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


def is_import_path(name: str) -> bool:
    """``pkg.mod:Attr`` or ``pkg.mod.Attr`` (a dotted name is never a registered key)."""
    return ":" in name or "." in name


# Why import paths are refused right now (None: they are allowed); set by refusing_import_paths.
_REFUSAL: ContextVar[str | None] = ContextVar("deepseek_import_path_refusal", default=None)


@contextmanager
def refusing_import_paths(reason: str) -> Iterator[None]:
    """Inside, resolving any import path raises ``'<path>' is an import path; <reason>`` before anything is
    imported; registered names still work. For configs found in a directory the user did not write:
    ``reason`` says how to allow it (``code named by a model directory runs only with --trust-code``)."""
    token = _REFUSAL.set(reason)
    try:
        yield
    finally:
        _REFUSAL.reset(token)


def _is_standard_library(module_name: str) -> bool:
    top = module_name.partition(".")[0]
    return top in sys.stdlib_module_names or top in sys.builtin_module_names


def import_object(path: str) -> Any:
    """Import ``pkg.mod:Attr`` (or ``pkg.mod.Attr``) and return the attribute.

    Refused before anything is imported: inside :func:`refusing_import_paths`, a standard-library or
    built-in module, and dunder attributes (``Net.__init__.__globals__`` reaches anything).
    """
    if (reason := _REFUSAL.get()) is not None:
        raise RegistryError(f"'{path}' is an import path; {reason}")
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise RegistryError(f"'{path}' is not an import path of the form 'pkg.module:Name'")
    if _is_standard_library(module_name):
        raise RegistryError(f"'{path}': standard-library and built-in modules cannot provide components")
    if dunder := next((part for part in attr.split(".") if part.startswith("__")), None):
        raise RegistryError(f"'{path}': the attribute '{dunder}' is not allowed in an import path")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistryError(f"cannot import module '{module_name}' of '{path}': {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise RegistryError(f"module '{module_name}' has no attribute '{attr}' (from '{path}')")
        obj = getattr(obj, part)
    return obj


def _named_class(path: str) -> type:
    """The framework's own base class named by ``path`` (``torch.nn:Module``), imported when first needed."""
    module_name, _, attr = path.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def _dotted(path: str) -> str:
    return path.replace(":", ".")


MODULE, SCHEDULER = "torch.nn:Module", "torch.optim.lr_scheduler:LRScheduler"
models = Registry("models", base=MODULE, result=MODULE)
datasets = Registry("datasets", base="torch.utils.data:Dataset")
transforms = Registry("transforms")
optimizers = Registry("optimizers", base="torch.optim:Optimizer", result="torch.optim:Optimizer")
schedulers = Registry("schedulers", base=SCHEDULER, result=SCHEDULER)
callbacks = Registry("callbacks")
metrics = Registry("metrics")
losses = Registry("losses", base=MODULE, result="callable")

REGISTRIES: dict[str, Registry] = {
    r.kind: r for r in (models, datasets, transforms, optimizers, schedulers, callbacks, metrics, losses)
}

register_model = models.register
register_dataset = datasets.register
register_transform = transforms.register
register_optimizer = optimizers.register
register_scheduler = schedulers.register
register_callback = callbacks.register
register_metric = metrics.register
register_loss = losses.register

# How a model is distributed (deepseek.train.strategy): plain classes, no base class. Not in REGISTRIES,
# whose kinds are the config sections `deepseek list` shows.
strategies = Registry("strategies")
register_strategy = strategies.register

# Log sinks (``logging.sinks``): not in REGISTRIES, so ``deepseek list`` and its kinds stay as they were.
sinks = Registry("sinks")
register_sink = sinks.register
