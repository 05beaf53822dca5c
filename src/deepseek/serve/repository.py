"""Find and load the models of a ``--model_dir``.

A model directory is one of:

- a run directory written by ``deepseek train`` (``config.yaml`` + ``final/model.safetensors``): its
  model is served as ``default`` and under the run's name, version ``1``; ONNX files beside it
  (``model.onnx``, ``model.int8.onnx`` from ``deepseek export --quantize int8``) are further versions
  (``onnx``, ``int8``) with the same pre/post-processing, and so are OpenVINO IRs beside it
  (``model.openvino.xml``, ``model.int8.openvino.xml`` from ``deepseek export --format openvino``, each
  with its ``.bin``: versions ``openvino``, ``int8-openvino``);
- a folder of such run directories, ``.onnx`` files, ``.pt2`` programs and OpenVINO IRs (``.xml`` + ``.bin``),
  each served under its file name;
- a folder with a ``serve.yaml`` manifest naming each model, its version, and what the files cannot
  tell: input spec, label names, tokenizer, batching limits (see :class:`Entry`).

A run's input spec and label names come from ``RUN/input_spec.json``, which ``deepseek train`` writes
from one validation sample (see :mod:`deepseek.data.sample_spec`); text pre-processing comes from the
config's ``data.preprocess``. A run without that file (trained by an older release, or whose config was
edited since) builds its dataset once to read one sample, and saves the file for later starts.

A model directory is data, like its safetensors weights: code its ``config.yaml`` or ``serve.yaml`` names
by import path (``my_models:Probe``) is refused unless the operator trusts it (``trust_code=True``,
``deepseek-serve --trust-code``); see :mod:`deepseek.config.trust`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deepseek.config import ConfigError
from deepseek.config.load import explain_error
from deepseek.config.trust import DIRECTORY_CODE, directory_code
from deepseek.data.sample_spec import SPEC_FILE, describe_sample, read_input_spec, write_input_spec
from deepseek.serve.model import ServedModel, text_encoder
from deepseek.serve.spec import InputSpec, SpecError, TensorSpec, spec_from_json

log = logging.getLogger("deepseek.serve")
MANIFEST = "serve.yaml"
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class ModelDirError(ValueError):
    """A model directory or manifest the server cannot load (the CLI prints it and exits with code 2)."""


class Entry(BaseModel):
    """One model in ``serve.yaml``."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME)
    path: str
    version: str = Field("1", pattern=NAME)
    model: dict[str, Any] | None = None  # registry name + kwargs, for a bare .safetensors file
    inputs: dict[str, Any] | None = None
    labels: list[str] | None = None
    tokenizer: str | None = None  # "minilm" or a tokenizer.json path: text in and out of a decoder
    max_instances: int = Field(64, ge=1)
    max_new_tokens: int = Field(256, ge=1)
    max_batch_size: int | None = Field(None, ge=1)
    max_delay_ms: float | None = Field(None, ge=0)
    max_queue: int | None = Field(None, ge=1)
    timeout_s: float | None = Field(None, gt=0)
    max_job_attempts: int | None = Field(None, ge=1)  # jobs that crashed the server this often fail
    continuous_batching: bool | None = None  # decoders: streams share one running batch (default on)


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: list[Entry] = Field(min_length=1)


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() and (path / "final" / "model.safetensors").is_file()


def discover(model_dir: str | Path, *, trust_code: bool = False) -> list[ServedModel]:
    """Every model in ``model_dir`` (several names may share one loaded model). Without ``trust_code`` a
    component its configs name by import path is refused before anything is imported."""
    root = Path(model_dir)
    if not root.is_dir():
        raise ModelDirError(f"--model_dir '{root}': no such directory")
    with directory_code(trust_code):
        return _discover(root, trust_code)


def _discover(root: Path, trust_code: bool) -> list[ServedModel]:
    if (root / MANIFEST).is_file():
        return load_manifest(root / MANIFEST, trust_code=trust_code)
    if is_run_dir(root):
        return load_run_versions(root, ["default", _safe(root.resolve().name)], trust_code=trust_code)
    found: list[ServedModel] = []
    for child in sorted(root.iterdir()):
        if child.is_dir() and is_run_dir(child):
            found += load_run_versions(child, [_safe(child.name)], trust_code=trust_code)
        elif (child.suffix in (".onnx", ".pt2") or is_openvino_ir(child)) and child.is_file():
            found.append(load_file(child, _safe(child.name.removesuffix(child.suffix)), "1"))
    if not found:
        raise ModelDirError(f"--model_dir '{root}': no {MANIFEST}, run directory (config.yaml + final/model.safetensors), "
                            ".onnx, .pt2 or OpenVINO .xml file in it")  # fmt: skip
    return found


def load_manifest(path: Path, *, trust_code: bool = False) -> list[ServedModel]:
    """The models a ``serve.yaml`` lists. It is part of its model directory: without ``trust_code`` a
    ``model.name`` import path is refused (one line per entry, naming the key and ``--trust-code``)."""
    try:
        manifest = Manifest.model_validate(yaml.safe_load(path.read_text()) or {})
    except yaml.YAMLError as exc:
        raise ModelDirError(f"{path}: not valid YAML: {exc}") from None
    except ValidationError as exc:  # one "error:" line per problem, as for training configs (exit code 2)
        raise ConfigError([explain_error(str(path), e, Manifest) for e in exc.errors()]) from None
    if not trust_code:
        _refuse_manifest_code(manifest, path)
    out = []
    for i, e in enumerate(manifest.models):
        where = f"{path.name}: models[{i}] ({e.name})"
        try:
            out.append(load_entry(e, path.parent, trust_code=trust_code))
        except (SpecError, FileNotFoundError, KeyError, ValueError) as exc:
            raise ModelDirError(f"{where}: {exc}") from None
    seen: set[tuple[str, str]] = set()
    for m in out:
        if (m.name, m.version) in seen:
            raise ModelDirError(f"{path.name}: model '{m.name}' version '{m.version}' is listed twice")
        seen.add((m.name, m.version))
    return out


def _refuse_manifest_code(manifest: Manifest, path: Path) -> None:
    """A ``model.name`` import path in an untrusted ``serve.yaml``: one ConfigError line per entry."""
    from deepseek.registry import is_import_path
    from deepseek.registry import models as model_registry

    problems = []
    for i, e in enumerate(manifest.models):
        name = (e.model or {}).get("name")
        if isinstance(name, str) and is_import_path(name) and name not in model_registry:
            problems.append(f"{path}: models[{i}].model.name {name!r} is an import path; {DIRECTORY_CODE}")
    if problems:
        raise ConfigError(problems)


def load_entry(e: Entry, root: Path, *, trust_code: bool = False) -> ServedModel:
    path = (root / e.path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"path '{e.path}': no such file or directory under {root}")
    if path.is_dir():
        if not is_run_dir(path):
            raise ValueError(f"path '{e.path}': a directory must be a run (config.yaml + final/model.safetensors)")
        m = load_run(path, e.name, e.version, trust_code=trust_code)
    elif path.suffix == ".safetensors":
        if not e.model or "name" not in e.model:
            raise ValueError("a .safetensors path needs `model: {name: <registered model>, ...kwargs}`")
        from deepseek import models
        from deepseek.components import ComponentErrors, validate_kwargs
        from deepseek.runs import load_weights

        kwargs = {k: v for k, v in e.model.items() if k != "name"}
        with directory_code(trust_code):  # an import path in model.name: only when the operator trusts it
            try:  # checked as built: the model's template first, as ds.models.build and configs do
                template = models.template_kwargs(e.model["name"])
                kwargs = validate_kwargs(models.registry, e.model["name"], {**template, **kwargs})
            except ComponentErrors as exc:
                raise ValueError("; ".join(_component_problem(p, exc.allowed) for p in exc.errors)) from None
            module = models.build(e.model["name"], **kwargs)
        load_weights(module, path)
        decoder = callable(getattr(module, "stream", None))
        if not decoder and e.inputs is None:
            raise ValueError("a model that is not a decoder needs `inputs: {name: {shape: [...], dtype: ...}}`")
        spec = _decoder_spec(module) if decoder else InputSpec({})  # `inputs` is applied below, for every kind
        m = ServedModel(e.name, e.version, module.eval(), spec, str(path))
    else:
        m = load_file(path, e.name, e.version)
    if e.tokenizer is not None:
        from deepseek.data.transforms.text import load_tokenizer

        m.tokenizer = load_tokenizer(e.tokenizer)
        if m.generative:
            m.spec.text, m.spec.preprocess = True, text_encoder(m.tokenizer)
    if e.inputs is not None:
        m.spec.tensors = spec_from_json(e.inputs, "inputs")
    m.labels = e.labels or m.labels
    m.spec.max_instances, m.max_new_tokens = e.max_instances, e.max_new_tokens
    limits = ("max_batch_size", "max_delay_ms", "max_queue", "timeout_s", "max_job_attempts", "continuous_batching")
    m.settings = {k: v for k in limits if (v := getattr(e, k)) is not None}
    return m


def is_openvino_ir(path: Path) -> bool:
    """An OpenVINO IR: an ``.xml`` graph with its ``.bin`` weights beside it."""
    return path.suffix == ".xml" and path.with_suffix(".bin").is_file()


def load_run_versions(run_dir: Path, names: list[str], *, trust_code: bool = False) -> list[ServedModel]:
    """The run's torch model as version ``1``, and each ONNX file and OpenVINO IR beside it as a version of
    its own (the first listed, ``1``, answers requests that name no version)."""
    base = load_run(run_dir, names[0], "1", trust_code=trust_code)
    variants = [base]
    for onnx in sorted(run_dir.glob("*.onnx")):
        label = _safe(onnx.name.removesuffix(".onnx").removeprefix("model.").replace("model", "onnx"))
        variants.append(_onnx_like(base, onnx, label))
    for ir in sorted(p for p in run_dir.glob("*.xml") if is_openvino_ir(p)):
        # model.openvino.xml -> openvino, model.int8.openvino.xml -> int8-openvino, other.xml -> other-openvino
        core = ir.name.removesuffix(".xml").removesuffix(".openvino").removeprefix("model").lstrip(".")
        variants.append(_onnx_like(base, ir, _safe(f"{core}-openvino" if core else "openvino")))
    for v in variants:  # deepseek export's fp32 files reproduce the run's model (checked within --atol when written)
        if Path(v.source).name in ("model.onnx", "model.openvino.xml"):
            v.fp32_of = base.version
    out = []
    for name in names:
        for v in variants:
            out.append(v if name == names[0] else ServedModel(**{**v.__dict__, "name": name}))
    return out


def load_run(run_dir: Path, name: str, version: str, *, trust_code: bool = False) -> ServedModel:
    """The run's model; without ``trust_code`` its ``config.yaml`` may name registered components only."""
    with directory_code(trust_code):  # the model, its dataset (no input_spec.json yet) and preprocess
        return _load_run(run_dir, name, version, trust_code)


def _load_run(run_dir: Path, name: str, version: str, trust_code: bool) -> ServedModel:
    from deepseek.data import Pipeline
    from deepseek.runs import read_run

    cfg, module = read_run(run_dir, trust_code=trust_code)
    if callable(getattr(module, "stream", None)):
        return ServedModel(name, version, module, _decoder_spec(module), str(run_dir))
    prep = Pipeline(cfg.data.preprocess, seed=0) if cfg.data.preprocess else None
    saved = read_input_spec(run_dir)
    if saved is None:  # a run trained before input_spec.json existed, or whose config was edited
        saved = _spec_from_one_sample(run_dir, cfg, prep)
        write_input_spec(run_dir, saved)
    tensors = spec_from_json(saved["inputs"], str(run_dir / SPEC_FILE))
    spec = InputSpec(tensors, text=saved["text"], preprocess=prep if saved["text"] else None)
    return ServedModel(name, version, module, spec, str(run_dir), labels=saved["labels"])


def _spec_from_one_sample(run_dir: Path, cfg: Any, prep: Any) -> dict[str, Any]:
    """``{"inputs", "text", "labels"}`` from one sample of the run's dataset (built for it)."""
    from deepseek.data.datasets import build_dataset

    try:
        return describe_sample(build_dataset(cfg.data.name, **cfg.data.kwargs), prep)
    except (ValueError, TypeError) as exc:
        raise ModelDirError(f"{run_dir}: {exc}; describe its inputs in a {MANIFEST}") from None


def load_file(path: Path, name: str, version: str) -> ServedModel:
    """An ``.onnx`` file (ONNX Runtime), a ``.pt2`` program or an OpenVINO IR ``.xml`` (OpenVINO's CPU plugin,
    fp32 inference); the spec comes from the graph's inputs."""
    if path.suffix == ".onnx":
        from deepseek.export import OnnxModule

        module = OnnxModule(path)
        inputs = module.session.get_inputs()
        tensors = {i.name: TensorSpec([d if isinstance(d, int) else None for d in i.shape[1:]], _ort_dtype(i.type))
                   for i in inputs}  # fmt: skip
        first = inputs[0].shape[0] if inputs else None
        fixed = first if isinstance(first, int) else None
        return ServedModel(name, version, module, InputSpec(tensors), str(path), "onnxruntime", fixed_batch=fixed)
    if path.suffix == ".pt2":
        from deepseek.compress.quiet import quiet_third_party_noise

        quiet_third_party_noise()  # torchao's "Failed to load ..." lines say nothing about this server
        try:
            import torchao.quantization.pt2e  # noqa: F401  (registers the int8 ops a quantized program uses)
        except ImportError:
            pass
        program = torch.export.load(str(path))
        names = [s.arg.name for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
        vals = {n.name: n.meta["val"] for n in program.graph.nodes if n.op == "placeholder" and n.name in names}
        tensors = {n: TensorSpec([d if isinstance(d, int) else None for d in vals[n].shape[1:]],
                                 str(vals[n].dtype).removeprefix("torch.")) for n in names}  # fmt: skip
        first = vals[names[0]].shape[0] if names else None
        fixed = first if isinstance(first, int) else None
        return ServedModel(
            name, version, program.module(), InputSpec(tensors), str(path), "torch.export", fixed_batch=fixed
        )
    if is_openvino_ir(path):
        return _load_openvino(path, name, version)
    raise ValueError(f"'{path.name}': serve a run directory, an .onnx file, a .pt2 program or an OpenVINO .xml IR "
                     "(with its .bin)")  # fmt: skip


def _load_openvino(path: Path, name: str, version: str) -> ServedModel:
    try:
        from deepseek.export.openvino import OpenVINOModule

        module = OpenVINOModule(path)
    except ImportError as exc:
        raise ModelDirError(f"'{path.name}': {exc}") from None
    ports = module.compiled.inputs
    shapes = {p.get_any_name(): [d.get_length() if d.is_static else None for d in p.get_partial_shape()] for p in ports}
    tensors = {n: TensorSpec(s[1:], str(p.get_element_type().to_dtype())) for (n, s), p in zip(shapes.items(), ports)}
    first = next(iter(shapes.values()))[0] if shapes else None
    return ServedModel(name, version, module, InputSpec(tensors), str(path), "openvino", fixed_batch=first)


def _onnx_like(base: ServedModel, path: Path, version: str) -> ServedModel:
    """An ONNX file or OpenVINO IR of a run: the run's spec and labels, the runtime's session."""
    m = load_file(path, base.name, version)
    return ServedModel(base.name, version, m.module, base.spec, str(path), m.backend, base.labels,
                       fixed_batch=m.fixed_batch)  # fmt: skip


def _decoder_spec(module: Any) -> InputSpec:
    limit = int(getattr(module, "max_positions", 1024))
    return InputSpec({"ids": TensorSpec([None], "int64", max_dim=limit)}, max_instances=8)


def _ort_dtype(onnx_type: str) -> str:
    table = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
             "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool"}  # fmt: skip
    if onnx_type not in table:
        raise ValueError(f"ONNX input type {onnx_type} is not supported")
    return table[onnx_type]


def _safe(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", name).strip("-.") or "model"
    return name if re.match(NAME, name) else f"m-{name}"


def _component_problem(p: Any, allowed: list[str]) -> str:
    where = ".".join(str(x) for x in ("model", *p.path))
    if p.kind == "extra_forbidden":
        return f"{where}: unknown argument of the builder; it takes {', '.join(allowed)}"
    return f"{where}: {p.message} (got {p.value!r})"
