"""``ds.jit``: ``torch.compile`` with an eager fallback and an autotuned choice.

::

    @ds.jit                                  # a function
    def gelu_mlp(x, w1, w2): ...

    model = ds.jit(model, mode="max-autotune")  # a module, compiled in place; returns it
    model = ds.jit(model, autotune=True)        # keep whichever of eager/compiled is faster

What ds adds to ``torch.compile``:

- A module is compiled in place (its ``forward``), so its ``state_dict`` keys do not change
  (``torch.compile(module)`` prefixes them with ``_orig_mod.``). ``unjit(module)`` undoes it.
- ``fallback=True``: when compilation fails (no C++ compiler for inductor, an unsupported op)
  the call runs eagerly with one warning, and later calls stay eager. An error that eager raises
  too is the caller's and is raised as is.
- ``autotune=True``: the first call compiles, then times eager and compiled on those same inputs
  (the median of ``repeats`` runs each; forward and backward for a module in training mode with
  gradients on) and keeps the faster; compiled must win by 5% to be kept. A module's buffers,
  gradients and the RNG are restored after timing, so training is not disturbed. This matters:
  on CPUs, compilation costs tens of seconds and often does not pay off (see
  ``benchmarks/jit.py``). ``jit_report(fn_or_module)`` returns what was measured.
- A function that builds modules inside (document 000's ``ds.nn.Linear(768)(x)``) is refused
  at decoration with a message: such modules get new random weights on every call.
"""

from __future__ import annotations

import ast
import copy
import functools
import inspect
import logging
import statistics
import textwrap
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

log = logging.getLogger("deepseek.jit")
_MARGIN = 0.95  # compiled must take under 95% of eager's time to be chosen


class JitError(TypeError):
    """A function ``ds.jit`` refuses to compile (it creates modules inside)."""


def jit(
    target: Any = None,
    /,
    *,
    mode: str | None = None,
    fullgraph: bool = False,
    dynamic: bool | None = None,
    backend: str | Callable[..., Any] = "inductor",
    options: dict[str, Any] | None = None,
    fallback: bool = True,
    autotune: bool = False,
    repeats: int = 5,
) -> Any:
    """Compile a function (returns a callable) or a module (in place; returns the module).

    ``@ds.jit`` and ``@ds.jit(mode=...)`` both work. ``mode``, ``fullgraph``, ``dynamic``,
    ``backend`` and ``options`` go to ``torch.compile``.
    """
    settings = dict(mode=mode, fullgraph=fullgraph, dynamic=dynamic, backend=backend, options=options)
    behaviour = dict(fallback=fallback, autotune=autotune, repeats=repeats)
    if target is None:
        return functools.partial(jit, **settings, **behaviour)
    if isinstance(target, nn.Module):
        if not isinstance(target.__dict__.get("forward"), JitFunction):
            target.forward = JitFunction(target.forward, settings, module=target, **behaviour)
        return target
    if not callable(target):
        raise TypeError(f"ds.jit compiles functions and nn.Modules, not {type(target).__name__}")
    _refuse_module_construction(target)
    return JitFunction(target, settings, **behaviour)


def unjit(module: nn.Module) -> nn.Module:
    """Undo ``ds.jit(module)``: the module's own ``forward`` runs again."""
    if isinstance(module.__dict__.get("forward"), JitFunction):
        del module.forward
    return module


def jit_report(target: Any) -> dict[str, Any]:
    """What the first call decided: ``choice`` (compiled/eager), ``compile_s``, timings, ``error``."""
    fn = target.__dict__.get("forward") if isinstance(target, nn.Module) else target
    if not isinstance(fn, JitFunction):
        raise TypeError("not compiled with ds.jit")
    return dict(fn.report)


class JitFunction:
    """A callable that compiles ``fn`` lazily and decides, on its first call, what runs from then on."""

    def __init__(
        self,
        fn: Callable[..., Any],
        settings: dict[str, Any],
        *,
        module: nn.Module | None = None,
        fallback: bool = True,
        autotune: bool = False,
        repeats: int = 5,
    ) -> None:
        functools.update_wrapper(self, fn)
        self.fn, self.settings, self.module = fn, settings, module
        self.fallback, self.autotune, self.repeats = fallback, autotune, repeats
        self.compiled = torch.compile(fn, **{k: v for k, v in settings.items() if v is not None})
        self.choice: str | None = None  # "compiled" | "eager" after the first call
        self.report: dict[str, Any] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.choice == "compiled":
            return self.compiled(*args, **kwargs)
        if self.choice == "eager":
            return self.fn(*args, **kwargs)
        return self._first_call(args, kwargs)

    def _first_call(self, args: tuple, kwargs: dict) -> Any:
        start = time.perf_counter()
        try:
            if self.autotune:  # compile and time first, with every side effect undone, then run for real
                with _restored(self.module):
                    backward = self.module is not None and self.module.training and torch.is_grad_enabled()
                    self.report = {"compile_s": round(_time_once(self.compiled, args, kwargs, backward), 3)}
                    self._tune(args, kwargs, backward)
            else:
                out = self.compiled(*args, **kwargs)
                self.report = {"choice": "compiled", "compile_s": round(time.perf_counter() - start, 3)}
        except Exception as err:  # noqa: BLE001 - any compiler failure; eager decides whose error it is
            if not self.fallback:
                raise
            out = self.fn(*args, **kwargs)  # an error here is the caller's: it propagates
            self.choice = "eager"
            root: BaseException = err
            while (inner := getattr(root, "inner_exception", None) or root.__cause__) is not None:
                root = inner  # dynamo wraps the backend's own error
            self.report = {"choice": "eager", "error": f"{type(root).__name__}: {root}".strip().splitlines()[0]}
            warnings.warn(
                f"ds.jit: torch.compile failed for {self._name()} ({self.report['error']}); running eagerly. "
                "Pass fallback=False to raise instead.",
                RuntimeWarning,
                stacklevel=3,
            )
            return out
        self.choice = self.report["choice"]
        if self.autotune:
            out = self(*args, **kwargs)
        return out

    def _tune(self, args: tuple, kwargs: dict, backward: bool) -> None:
        eager = _median_time(self.fn, args, kwargs, self.repeats, backward)
        compiled = _median_time(self.compiled, args, kwargs, self.repeats, backward)
        choice = "compiled" if compiled < _MARGIN * eager else "eager"
        self.report.update(
            choice=choice,
            measured="forward+backward" if backward else "forward",
            eager_ms=round(eager * 1e3, 4),
            compiled_ms=round(compiled * 1e3, 4),
            speedup=round(eager / compiled, 3),
        )
        log.info("ds.jit autotune for %s: %s", self._name(), self.report)

    def _name(self) -> str:
        if self.module is not None:
            return f"{type(self.module).__name__}.forward"
        return getattr(self.fn, "__qualname__", repr(self.fn))

    # A compiled function cannot be copied or pickled; copies (EMA, deepcopy, pickle) compile afresh.
    def __deepcopy__(self, memo: dict[int, Any]) -> JitFunction:
        module = copy.deepcopy(self.module, memo) if self.module is not None else None
        return _rebuild(self.fn, self.settings, module, self._behaviour())

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.fn if self.module is None else None, self.settings, self.module, self._behaviour()))

    def _behaviour(self) -> dict[str, Any]:
        return {"fallback": self.fallback, "autotune": self.autotune, "repeats": self.repeats}


def _rebuild(fn: Any, settings: dict[str, Any], module: Any, behaviour: dict[str, Any]) -> JitFunction:
    if module is not None:  # bind the class's forward to the (new) module
        fn = type(module).forward.__get__(module)
    return JitFunction(fn, settings, module=module, **behaviour)


def _time_once(fn: Callable[..., Any], args: tuple, kwargs: dict, backward: bool) -> float:
    """Seconds for one call (and a backward through its first output when ``backward``)."""
    _sync()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    if backward:
        first = out[0] if isinstance(out, (tuple, list)) else out
        if isinstance(first, torch.Tensor) and first.requires_grad:
            first.float().sum().backward()
    _sync()
    return time.perf_counter() - start


def _median_time(fn: Callable[..., Any], args: tuple, kwargs: dict, repeats: int, backward: bool) -> float:
    _time_once(fn, args, kwargs, backward)  # warm-up (caches, allocator)
    return statistics.median(_time_once(fn, args, kwargs, backward) for _ in range(repeats))


class _restored:
    """Put back a module's buffers and gradients and the RNG state after timing runs."""

    def __init__(self, module: nn.Module | None) -> None:
        self.module = module

    def __enter__(self) -> None:
        self.rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        if self.module is not None:
            self.buffers = [(b, b.detach().clone()) for b in self.module.buffers()]
            self.grads = [(p, p.grad) for p in self.module.parameters()]
            for p, _ in self.grads:
                p.grad = None if p.grad is None else p.grad.clone()

    def __exit__(self, *exc: Any) -> None:
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        if self.module is not None:
            with torch.no_grad():
                for b, saved in self.buffers:
                    b.copy_(saved)
            for p, grad in self.grads:
                p.grad = grad


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _refuse_module_construction(fn: Callable[..., Any]) -> None:
    """Raise :class:`JitError` if ``fn``'s source calls an ``nn`` module class (``ds.nn.Linear(...)``)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):  # no source (REPL, builtins): nothing to check
        return
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        parts = _dotted(node.func)
        cls = getattr(nn, parts[-1], None) if len(parts) >= 2 and parts[-2] == "nn" else None
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            name = getattr(fn, "__qualname__", "the function")
            raise JitError(
                f"ds.jit: {name}() creates {'.'.join(parts)} inside the function to compile (line "
                f"{node.lineno} of its source). A module built there gets new random weights on every call "
                "and is never trained. Create modules outside the compiled function (e.g. in an nn.Module's "
                "__init__) and call them inside, or compile the module: ds.jit(module)."
            )


def _dotted(node: ast.AST) -> list[str]:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return parts[::-1]
