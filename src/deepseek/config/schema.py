"""The typed run configuration (pydantic v2): one section per stage.

Components (model, data, optim, scheduler, loss, metrics, callbacks) are chosen by ``name``; their
other keys are the builder's keyword arguments and are checked against its signature by
:mod:`deepseek.config.components`. Every other section rejects unknown keys.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

Precision = Literal["auto", "fp32", "bf16-mixed", "fp16-mixed", "progressive"]
NonFinite = Literal["stop", "skip", "ignore"]


def _betas_ok(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(isinstance(b, (int, float)) and 0.0 <= b < 1.0 for b in value)


def _at_least_zero(value: Any) -> bool:
    return not isinstance(value, (int, float)) or value >= 0


# Optimizer arguments torch checks only when the optimizer is built: checked with the config instead.
OPTIMIZER_ARG_BOUNDS: dict[str, tuple[Any, str]] = {
    "betas": (_betas_ok, "each beta must be in [0, 1)"),
    "eps": (_at_least_zero, "must be >= 0"),
    "momentum": (_at_least_zero, "must be >= 0"),
    "weight_decay": (_at_least_zero, "must be >= 0"),
}


def check_device(value: str) -> str:
    """``auto``, ``cpu`` or an accelerator this machine has (``cuda``, ``cuda:1``, ``mps``); else ValueError."""
    import torch

    allowed = "allowed: auto, cpu, or an available accelerator such as cuda or cuda:0"
    if value == "auto":
        return value
    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError):
        raise ValueError(f"not a device; {allowed}") from None
    if dev.type == "mps":
        available = torch.backends.mps.is_available()
    else:
        available = dev.type == "cpu" or getattr(getattr(torch, dev.type, None), "is_available", lambda: False)()
    if not available:
        raise ValueError(f"that device is not available on this machine; {allowed}")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class Component(BaseModel):
    """``{name: <registered name or import path>, **builder_kwargs}``."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1)

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class DataSection(Component):
    """The dataset by name plus loader settings; other keys go to the dataset builder.

    ``transforms`` run on each training sample's input in the loader's workers, seeded per sample.
    """

    batch_size: PositiveInt = 64
    val_batch_size: Optional[PositiveInt] = None
    num_workers: NonNegativeInt = 0
    shuffle: bool = True
    drop_last: bool = False
    preprocess: list[Any] = []  # run on every split's inputs (e.g. Tokenize, TruncatePad)
    transforms: list[Any] = []  # training augmentations after preprocess: names or {type: Name, params: {...}}


class EarlyStoppingSection(Strict):
    monitor: str = "val/loss"
    mode: Literal["min", "max"] = "min"
    patience: PositiveInt = 3
    min_delta: float = Field(default=0.0, ge=0.0)


class TrainSection(Strict):
    max_epochs: Optional[PositiveInt] = 10
    max_steps: Optional[PositiveInt] = None
    precision: Precision = "auto"
    compile: Literal[False, True, "auto"] = False  # auto: keep compiled only where it measured faster
    accumulate_grad_batches: PositiveInt = 1
    grad_clip_norm: Optional[PositiveFloat] = None
    ema_decay: Optional[float] = Field(default=None, gt=0.0, lt=1.0)
    gradient_checkpointing: bool = False  # for models with gradient_checkpointing_enable()
    val_every_steps: Optional[PositiveInt] = None
    val_every_epochs: Optional[PositiveInt] = 1
    early_stopping: Optional[EarlyStoppingSection] = None
    loss: Component = Component(name="cross_entropy")
    metrics: list[Component] = [Component(name="accuracy")]
    device: str = "auto"
    seed: int = 0
    deterministic: bool = False
    on_nonfinite: NonFinite = "stop"  # a nan/inf loss: stop the run, skip that optimizer step, or train on
    # How the model is distributed: auto (ddp on several ranks, else single_device), ddp, single_device, or a
    # class by import path; other keys are its arguments (e.g. ddp's find_unused_parameters).
    strategy: Component = Component(name="auto")

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        return check_device(value)

    @model_validator(mode="after")
    def _needs_a_stop(self) -> TrainSection:
        if self.max_epochs is None and self.max_steps is None:
            raise ValueError("set train.max_epochs or train.max_steps (both are null)")
        return self


class CheckpointSection(Strict):
    every_steps: Optional[PositiveInt] = None
    every_minutes: Optional[PositiveFloat] = 30.0
    keep_last: PositiveInt = 3
    monitor: str = "val/loss"
    mode: Literal["min", "max"] = "min"
    save_best: bool = True


class LoggingSection(Strict):
    every_steps: PositiveInt = 50
    tensorboard: bool = True
    progress: Literal["auto", "bar", "plain", "off"] = "auto"
    # Where records and the summary go: jsonl, tensorboard, console or a class by import path
    # ({name: my_mod:Recorder, **kwargs}). null: jsonl, tensorboard (unless tensorboard: false), console.
    sinks: Optional[list[Component]] = None

    def sink_specs(self) -> list[Component] | None:
        """The sinks to build, ``tensorboard`` applied: false removes it, true (when set) adds it; None: defaults."""
        if self.sinks is None:
            return None
        is_tb = [s.name.lower() in ("tensorboard", "tb") for s in self.sinks]
        if not self.tensorboard:
            return [s for s, tb in zip(self.sinks, is_tb) if not tb]
        if "tensorboard" in self.model_fields_set and not any(is_tb):
            return [*self.sinks, Component(name="tensorboard")]
        return list(self.sinks)

    @field_validator("progress", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML 1.1 reads a bare `off` as false


class Config(Strict):
    """A whole run: ``deepseek train CONFIG`` builds everything from this."""

    model: Component
    data: DataSection
    optim: Component = Component(name="adamw")
    scheduler: Optional[Component] = None
    train: TrainSection = TrainSection()
    checkpoint: CheckpointSection = CheckpointSection()
    logging: LoggingSection = LoggingSection()
    callbacks: list[Component] = []

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-safe dict of the resolved config (defaults filled in)."""
        return self.model_dump(mode="json")
