"""The typed run configuration (pydantic v2): one section per stage.

Components (model, data, optim, scheduler, loss, metrics, callbacks) are chosen by ``name``; their
other keys are the builder's keyword arguments and are checked against its signature by
:mod:`deepseek.config.components`. Every other section rejects unknown keys.
"""

from __future__ import annotations

from pathlib import Path
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

from deepseek.config.comm import CommSection
from deepseek.config.observe import ProfileSection, StatsSection
from deepseek.config.parallel_rules import model_parallel_problem
from deepseek.config.streaming import StreamingSection

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
    name: str = Field(
        min_length=1,
        description="A registered name or an import path (`my_pkg.module:Class`); a bare string means `{name: ...}`.",
    )

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class DataSection(Component):
    """The dataset by name plus loader settings; other keys go to the dataset builder.

    ``transforms`` run on each training sample's input in the loader's workers, seeded per sample. With
    ``shards`` the splits are read from a shard set written by ``deepseek data shard`` instead of built from
    ``name`` (which stays the dataset's name, used for the run's record).
    """

    batch_size: PositiveInt = Field(default=64, description="Training samples per batch on each process (rank).")
    val_batch_size: Optional[PositiveInt] = Field(
        default=None, description="Validation samples per batch on each process; null: the same as batch_size."
    )
    num_workers: NonNegativeInt = Field(
        default=0, description="DataLoader worker processes per rank; 0 loads in the training process itself."
    )
    shuffle: bool = Field(
        default=True, description="Reshuffle the training samples every epoch, seeded by train.seed (never validation)."
    )
    drop_last: bool = Field(default=False, description="Drop each epoch's last, incomplete training batch.")
    preprocess: list[Any] = Field(
        default=[],
        description="Transforms run on every split's inputs and at prediction/serving time (e.g. Tokenize, "
        "TruncatePad): names or {type: Name, params: {...}}.",
    )
    transforms: list[Any] = Field(
        default=[],
        description="Training-only augmentations run after preprocess, seeded per sample: names or "
        "{type: Name, params: {...}}.",
    )
    shards: Optional[str] = Field(
        default=None,
        description="A shard directory or fsspec URL (s3://, gs://, https://, file://) written by `deepseek data "
        "shard`: its splits are streamed instead of building data.name's; null: build data.name's splits.",
    )
    streaming: StreamingSection = Field(
        default=StreamingSection(), description="How data.shards is read: cache, shuffle window, prefetch, corrupt shards."
    )

    @field_validator("shards")
    @classmethod
    def _a_shard_set(cls, value: Optional[str]) -> Optional[str]:
        allowed = "allowed: a directory written by `deepseek data shard` or an fsspec URL such as s3://bucket/prefix"
        if value is None or "://" in value:
            return value
        where = Path(value).expanduser()
        if not where.is_dir():
            raise ValueError(f"no such directory; {allowed}")
        if not ((where / "index.json").is_file() or (where / "splits.json").is_file()):
            raise ValueError(f"holds neither index.json nor splits.json; {allowed}")
        return value


class EarlyStoppingSection(Strict):
    monitor: str = Field(
        default="val/loss", description="The validation value watched: `val/loss` or `val/<metric name>`."
    )
    mode: Literal["min", "max"] = Field(default="min", description="min: lower is better; max: higher is better.")
    patience: PositiveInt = Field(
        default=3, description="Validations in a row without improvement after which training stops."
    )
    min_delta: float = Field(
        default=0.0, ge=0.0, description="How much the value must beat the best so far to count as an improvement."
    )


class TrainSection(Strict):
    max_epochs: Optional[PositiveInt] = Field(
        default=10, description="Stop after this many epochs; null: no epoch limit (then max_steps must be set)."
    )
    max_steps: Optional[PositiveInt] = Field(
        default=None, description="Stop after this many optimizer steps; null: no step limit. With both, the first reached."
    )
    precision: Precision = Field(
        default="auto",
        description="auto (bf16-mixed on GPUs with bf16, else fp16-mixed; fp32 on CPU), fp32, bf16-mixed, fp16-mixed "
        "(with a loss scaler), or progressive (fp16 per module, unstable modules promoted to fp32).",
    )
    compile: Literal[False, True, "auto"] = Field(
        default=False,
        description="Compile the model's forward with torch.compile (eager if compiling fails); auto: keep compiled "
        "only where it measured faster.",
    )
    accumulate_grad_batches: PositiveInt = Field(
        default=1, description="Batches whose gradients add up to one optimizer step (gradient accumulation)."
    )
    grad_clip_norm: Optional[PositiveFloat] = Field(
        default=None, description="Clip the gradients' total norm to this before each optimizer step; null: no clipping."
    )
    ema_decay: Optional[float] = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="Keep an exponential moving average of the weights with this decay, used for validation and "
        "the final weights; null: no EMA.",
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description="Recompute activations in the backward pass to save memory; only for models with "
        "gradient_checkpointing_enable().",
    )
    val_every_steps: Optional[PositiveInt] = Field(
        default=None, description="Also validate every this many optimizer steps; null: only as val_every_epochs says."
    )
    val_every_epochs: Optional[PositiveInt] = Field(
        default=1, description="Validate at the end of every this many epochs; null: not at epoch ends."
    )
    early_stopping: Optional[EarlyStoppingSection] = Field(
        default=None, description="Stop training when a validation value stops improving; null: off."
    )
    loss: Component = Field(
        default=Component(name="cross_entropy"), description="The loss function (a registered loss) and its arguments."
    )
    metrics: list[Component] = Field(
        default=[Component(name="accuracy")], description="Metrics computed at each validation, logged as `val/<name>`."
    )
    device: str = Field(
        default="auto",
        description="auto (this process's GPU when CUDA is present, else cpu), cpu, or an available accelerator "
        "(cuda, cuda:1, mps); under torchrun each rank takes `cuda:<LOCAL_RANK>`.",
    )
    seed: int = Field(
        default=0, description="Seeds Python, NumPy and torch, the data shuffling and the per-sample augmentations."
    )
    deterministic: bool = Field(
        default=False,
        description="Ask torch for deterministic algorithms (warning where there is none) and turn off cuDNN "
        "benchmarking.",
    )
    on_nonfinite: NonFinite = Field(
        default="stop",
        description="What to do on a nan/inf loss: stop the run (stop), skip that optimizer step (skip), or train on "
        "(ignore).",
    )
    strategy: Component = Field(
        default=Component(name="auto"),
        description="How the model is distributed: auto (ddp on several ranks, else single_device), ddp, "
        "single_device, or a class by import path; other keys are its arguments (e.g. ddp's find_unused_parameters).",
    )
    profile: Optional[ProfileSection] = Field(
        default=None,
        description="Profile a window of this run with torch.profiler (trace, flame graphs, FLOPs, MFU, the step's "
        "split, summary.json); null: not profiled.",
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        return check_device(value)

    @model_validator(mode="after")
    def _needs_a_stop(self) -> TrainSection:
        if self.max_epochs is None and self.max_steps is None:
            raise ValueError("set train.max_epochs or train.max_steps (both are null)")
        return self


class ParallelSection(Strict):
    """How the world of ranks is split (torchtitan's names): ``dp_replicate x dp_shard x tp x pp`` ranks.

    It picks the strategy: ``zero_stage`` 0 is plain DDP over ``dp_replicate x dp_shard`` ranks (one process:
    no wrapper); 1, 2 and 3 are FSDP2 (``fsdp``) sharding over ``dp_shard`` ranks, and HSDP (replicas of the
    shards) when ``dp_replicate`` > 1. ``tp`` > 1 adds tensor parallelism to ``fsdp``; ``pp`` > 1 selects the
    ``pipeline`` strategy (its schedule owns the step); ``ep`` > 1 the ``expert_parallel`` strategy (experts
    sharded over the data-parallel ranks). ``train.strategy`` stays the explicit override; both given must agree.
    """

    dp_replicate: PositiveInt = Field(
        default=1, description="Data-parallel replicas (HSDP's replicate dimension): each holds the whole sharded model."
    )
    dp_shard: int = Field(
        default=-1,
        ge=-1,
        description="Data-parallel ranks that shard parameters, gradients and optimizer state between them; -1: "
        "the rest of the world (world / (dp_replicate x tp x pp)).",
    )
    tp: PositiveInt = Field(
        default=1, description="Tensor-parallel degree: each layer's heads and hidden features split over tp ranks "
        "(the model's plan in deepseek.models.parallelize); > 1 needs zero_stage 2 or 3."
    )
    pp: PositiveInt = Field(
        default=1, description="Pipeline-parallel degree: the blocks split into pp stages, one per rank (or "
        "pp_stages_per_rank each); > 1 needs zero_stage 2 or 3."
    )
    pp_schedule: Literal["gpipe", "1f1b", "interleaved_1f1b"] = Field(
        default="1f1b",
        description="Pipeline schedule (torch.distributed.pipelining): gpipe (all forwards, then all backwards), "
        "1f1b (one forward, one backward: at most pp micro-batches in flight), interleaved_1f1b (several stages "
        "per rank, a smaller bubble).",
    )
    pp_microbatches: Optional[PositiveInt] = Field(
        default=None,
        description="Micro-batches each per-rank batch is split into for the pipeline; null: pp. 1f1b needs at "
        "least pp; interleaved_1f1b a multiple of max(1, pp_microbatches // pp).",
    )
    pp_stages_per_rank: PositiveInt = Field(
        default=1, description="Pipeline stages each rank holds: 1 for gpipe and 1f1b, 2 or more for interleaved_1f1b."
    )
    pp_split: Optional[list[PositiveInt]] = Field(
        default=None,
        description="Blocks per pipeline stage, pp x pp_stages_per_rank numbers summing to the model's blocks; "
        "null: an even split (the number of blocks must then divide by pp x pp_stages_per_rank).",
    )
    ep: PositiveInt = Field(
        default=1,
        description="Expert-parallel degree (MoE models): the experts split over ep of the data-parallel ranks, "
        "tokens sent to them by all-to-all; > 1 needs tp 1, pp 1 and zero_stage 0, and must divide the "
        "data-parallel degree.",
    )
    sequence_parallel: bool = Field(
        default=False,
        description="Tensor parallel: norms and the residual stream split along the sequence over the tp ranks "
        "(less activation memory); needs tp > 1 and a sequence length divisible by tp.",
    )
    loss_parallel: bool = Field(
        default=False,
        description="Tensor parallel: the cross-entropy computed on vocabulary-sharded logits (never gathered "
        "whole); needs tp > 1.",
    )
    zero_stage: Literal[0, 1, 2, 3] = Field(
        default=0,
        description="0: plain DDP (all state replicated); 1: optimizer state sharded; 2: also gradients; 3: also "
        "parameters (FSDP2 full sharding).",
    )
    reshard_after_forward: Optional[bool] = Field(
        default=None,
        description="FSDP2: free each block's gathered parameters after its forward (gathered again in backward); "
        "null: true for zero_stage 3, false for 1 and 2.",
    )
    cpu_offload: bool = Field(
        default=False, description="FSDP2: keep the sharded parameters, gradients and optimizer state in host memory."
    )
    meta_init: bool = Field(
        default=False,
        description="Build the model on the meta device, shard it, then give each rank memory for its shards only and "
        "run the model's own init on them (same distribution, not the same values as an eager build); needs "
        "zero_stage 2 or 3.",
    )

    comm: Optional[CommSection] = Field(
        default=None,
        description="How DDP all-reduces gradients (zero_stage 0): topology (ring, tree, hybrid), ranks per node, "
        "compression (fp16, bf16, powersgd, with error feedback); null: DDP's own flat all-reduce.",
    )

    @field_validator("dp_shard")
    @classmethod
    def _not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("must be a positive number of ranks, or -1 for the rest of the world")
        return value

    @model_validator(mode="after")
    def _fits_the_stage(self) -> ParallelSection:
        stage, reshard = self.zero_stage, self.reshard_after_forward
        if reshard is not None and reshard != (stage == 3):  # what fsdp's strategy accepts
            raise ValueError(f"reshard_after_forward: {reshard} contradicts zero_stage: {stage}; allowed: null, or "
                             "true with zero_stage 3 (false is ZeRO-2; ZeRO-0/1 do not shard parameters)")  # fmt: skip
        if self.meta_init and stage <= 1:
            raise ValueError(f"meta_init: true needs zero_stage 2 or 3 (zero_stage {stage} holds the whole model on "
                             "every rank)")  # fmt: skip
        if stage <= 1 and (self.cpu_offload or (stage == 1 and self.dp_replicate != 1)):
            raise ValueError(f"zero_stage: {stage} replicates parameters over the whole data-parallel world; "
                             "allowed: cpu_offload: false and dp_replicate: 1 (HSDP and offload need zero_stage "
                             "2 or 3)")  # fmt: skip
        if problem := model_parallel_problem(self):
            raise ValueError(problem)
        return self



class CheckpointSection(Strict):
    every_steps: Optional[PositiveInt] = Field(
        default=None, description="Save a checkpoint every this many optimizer steps; null: not by step count."
    )
    every_minutes: Optional[PositiveFloat] = Field(
        default=30.0, description="Save a checkpoint once this many minutes have passed since the last; null: never by time."
    )
    keep_last: PositiveInt = Field(
        default=3, description="How many of the newest checkpoints to keep; older ones are deleted, the best one is kept."
    )
    monitor: str = Field(
        default="val/loss", description="The validation value that picks the best checkpoint: `val/loss` or `val/<metric name>`."
    )
    mode: Literal["min", "max"] = Field(default="min", description="min: lower monitor is better; max: higher is better.")
    save_best: bool = Field(
        default=True,
        description="Save a checkpoint whenever the monitored value improves and name it in best.json; false: no best.",
    )
    sharded: Literal["auto", True, False] = Field(
        default="auto",
        description="Write checkpoints sharded, each rank its own shards through torch.distributed.checkpoint: "
        "auto (sharded under fsdp zero_stage 2 or 3), true or false (one file of gathered weights). "
        "Either kind resumes at another world size or strategy.",
    )
    async_save: bool = Field(
        default=False,
        description="Write sharded checkpoints in the background (dcp.async_save) while training goes on; each is "
        "sealed (meta.json, rename) once written, at the next save or the end of the run. Needs sharded checkpoints.",
    )


class LoggingSection(Strict):
    every_steps: PositiveInt = Field(
        default=50, description="Log a training record (train/loss, lr, samples_per_s, ...) every this many optimizer steps."
    )
    tensorboard: bool = Field(
        default=True,
        description="Write TensorBoard events (tb/ in the run directory); false also drops a tensorboard entry of sinks.",
    )
    progress: Literal["auto", "bar", "plain", "off"] = Field(
        default="auto",
        description="Console output: bar (a progress bar), plain (log lines), off (nothing), or auto (bar on a "
        "terminal, else plain); `--progress` overrides it.",
    )
    stats: Optional[StatsSection] = Field(
        default=None,
        description="Per-layer gradient norms and histograms of gradients and activations, recorded every few "
        "steps into stats.jsonl and TensorBoard (`deepseek-viz` shows them); null: none.",
    )
    sinks: Optional[list[Component]] = Field(
        default=None,
        description="Where records and the summary go: jsonl, tensorboard, console or a class by import path "
        "({name: my_mod:Recorder, **kwargs}); null: jsonl, tensorboard (unless tensorboard: false), console.",
    )

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

    model: Component = Field(description="The model to train: a registered model or import path, and its arguments.")
    data: DataSection = Field(description="The dataset and its arguments, plus the data loader settings.")
    optim: Component = Field(
        default=Component(name="adamw"), description="The optimizer and its arguments (lr, weight_decay, ...)."
    )
    scheduler: Optional[Component] = Field(
        default=None,
        description="A learning-rate scheduler stepped after every optimizer step (given the run's total steps "
        "when it takes total_steps); null: none.",
    )
    train: TrainSection = Field(
        default=TrainSection(), description="The training loop: length, precision, validation, loss, metrics, device."
    )
    parallel: Optional[ParallelSection] = Field(
        default=None,
        description="Parallelism degrees and ZeRO stage, which pick the strategy (see `deepseek plan`); null: "
        "train.strategy decides.",
    )
    checkpoint: CheckpointSection = Field(
        default=CheckpointSection(), description="When checkpoints are saved (under `<run_dir>/checkpoints`) and which are kept."
    )
    logging: LoggingSection = Field(
        default=LoggingSection(), description="What is logged during training, how often, and where to."
    )
    callbacks: list[Component] = Field(
        default=[], description="Extra callbacks (registered names or import paths, with arguments) the Trainer calls."
    )

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-safe dict of the resolved config (defaults filled in)."""
        return self.model_dump(mode="json")
