"""Published weights into the zoo: ``ds.models.build(name, pretrained=PATH)`` (a config's ``model.pretrained``).

Reads a local Hugging Face, timm or torchvision checkpoint (``.safetensors`` through ``safetensors``, anything
else through ``torch.load(weights_only=True)``, or a directory holding ``model.safetensors`` /
``pytorch_model.bin``), renames its keys to the built model's with one function per family, and checks every
shape. Nothing is ever downloaded. Families: HF GPT-2 -> :class:`GPT2`, HF BERT -> :class:`Bert` (any depth and
width), torchvision / timm ResNet -> :class:`ResNet`, torchvision / timm ViT -> :class:`ViT`.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

from deepseek.models.language import GPT2, Bert
from deepseek.models.vision import ResNet, ViT

# A mapped checkpoint: our key -> (the checkpoint key(s) it came from, for messages; the tensor).
Mapped = dict[str, tuple[str, torch.Tensor]]


class PretrainedWeightsError(ValueError):
    """A checkpoint that does not fit the built model; the one-line message names every offending key."""


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a local checkpoint file or HF-style directory, on the CPU; never downloads."""
    path = Path(path)
    if path.is_dir():
        found = [path / f for f in ("model.safetensors", "pytorch_model.bin") if (path / f).is_file()]
        if not found:
            raise PretrainedWeightsError(f"pretrained: {path} holds no model.safetensors or pytorch_model.bin")
        path = found[0]
    if not path.is_file():
        raise PretrainedWeightsError(
            f"pretrained: no file {path} (give a local .safetensors / .bin / .pt / .pth file or a Hugging Face "
            "model directory; nothing is downloaded)"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):  # training checkpoints nest the weights
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"pretrained: {path} holds a {type(state).__name__}, not a state dict")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``state`` without ``prefix`` on the keys that have it (``transformer.``, ``bert.``, ``module.``)."""
    return {k.removeprefix(prefix): v for k, v in state.items()}


def _rename(state: dict[str, torch.Tensor], rules: list[tuple[str, str]], ignored: str) -> tuple[Mapped, list[str]]:
    """Apply the first matching ``(regex, replacement)`` rule to each key; keys matching ``ignored`` (buffers
    the model recomputes, heads it does not have) are dropped; the rest are returned as unknown."""
    mapped: Mapped = {}
    unknown = []
    for key, value in state.items():
        for pattern, replacement in rules:
            if re.fullmatch(pattern, key):
                mapped[re.sub(pattern, replacement, key)] = (key, value)
                break
        else:
            if not (ignored and re.fullmatch(ignored, key)):
                unknown.append(key)
    return mapped, unknown


def gpt2_keys(state: dict[str, torch.Tensor]) -> tuple[Mapped, list[str]]:
    """HF ``GPT2Model`` / ``GPT2LMHeadModel`` keys; its Conv1D weights are ``(in, out)``, so they are transposed."""
    prefix = "transformer." if any(k.startswith("transformer.") for k in state) else ""
    state = _strip(state, "transformer.")
    rules = [
        (r"wte\.weight", "tok.weight"), (r"wpe\.weight", "pos.weight"), (r"ln_f\.(weight|bias)", r"ln_f.\1"),
        (r"h\.(\d+)\.ln_1\.(weight|bias)", r"blocks.\1.ln1.\2"), (r"h\.(\d+)\.ln_2\.(weight|bias)", r"blocks.\1.ln2.\2"),
        (r"h\.(\d+)\.attn\.c_attn\.(weight|bias)", r"blocks.\1.attn.qkv.\2"),
        (r"h\.(\d+)\.attn\.c_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
        (r"h\.(\d+)\.mlp\.c_fc\.(weight|bias)", r"blocks.\1.mlp.0.\2"),
        (r"h\.(\d+)\.mlp\.c_proj\.(weight|bias)", r"blocks.\1.mlp.2.\2"),
    ]  # fmt: skip
    # attn.bias / masked_bias: causal-mask buffers; lm_head: tied to wte
    mapped, unknown = _rename(state, rules, r"h\.\d+\.attn\.(bias|masked_bias)|lm_head\.weight")
    for ours, (source, value) in mapped.items():
        if re.search(r"\.(qkv|proj|mlp\.\d)\.weight$", ours) and value.dim() == 2:
            mapped[ours] = (source, value.t())
    for ours in [k for k in mapped if re.search(r"\.attn\.qkv\.(weight|bias)$", k)]:
        source, value = mapped.pop(ours)  # c_attn packs q, k, v (rows, once transposed); ours are separate
        for name, part in zip(("q", "k", "v"), value.chunk(3, dim=0)):
            mapped[ours.replace(".qkv.", f".{name}.")] = (source, part)
    return {k: (prefix + s, v) for k, (s, v) in mapped.items()}, [prefix + k for k in unknown]


def bert_keys(state: dict[str, torch.Tensor]) -> tuple[Mapped, list[str]]:
    """HF ``BertModel`` / ``BertFor*`` keys (``bert.`` prefix optional); ``self.query/key/value`` become the
    ``q_proj`` / ``k_proj`` / ``v_proj`` of our :class:`~deepseek.models.blocks.MultiHeadAttention`."""
    renamed = {re.sub(r"\.beta$", ".bias", k): v for k, v in _strip(state, "bert.").items()}  # TF-converted names
    state = {re.sub(r"\.gamma$", ".weight", k): v for k, v in renamed.items()}
    norm = r"LayerNorm\.(weight|bias)"
    rules = [
        (r"embeddings\.word_embeddings\.weight", "word.weight"),
        (r"embeddings\.position_embeddings\.weight", "position.weight"),
        (r"embeddings\.token_type_embeddings\.weight", "segment.weight"),
        (rf"embeddings\.{norm}", r"emb_norm.\1"),
        (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.out_proj.\2"),
        (rf"encoder\.layer\.(\d+)\.attention\.output\.{norm}", r"blocks.\1.ln1.\2"),
        (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", r"blocks.\1.ffn.0.\2"),
        (r"encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", r"blocks.\1.ffn.2.\2"),
        (rf"encoder\.layer\.(\d+)\.output\.{norm}", r"blocks.\1.ln2.\2"),
        (r"pooler\.dense\.(weight|bias)", r"pooler.\1"), (r"classifier\.(weight|bias)", r"classifier.\1"),
        (r"cls\.predictions\.transform\.dense\.(weight|bias)", r"mlm_transform.0.\1"),
        (rf"cls\.predictions\.transform\.{norm}", r"mlm_transform.2.\1"),
        (r"cls\.predictions\.(decoder\.)?bias", "mlm_decoder.bias"),
    ]  # fmt: skip
    qkv = r"encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)"
    # position_ids: a buffer; decoder.weight: tied to the word embedding; seq_relationship: NSP head we lack
    ignored = rf"{qkv}|embeddings\.position_ids|cls\.predictions\.decoder\.weight|cls\.seq_relationship\..*"
    mapped, unknown = _rename(state, rules, ignored)
    for layer in sorted({int(m.group(1)) for k in state if (m := re.fullmatch(qkv, k))}):
        for kind in ("weight", "bias"):
            names = [f"encoder.layer.{layer}.attention.self.{p}.{kind}" for p in ("query", "key", "value")]
            if all(n in state for n in names) and len({state[n].shape[1:] for n in names}) == 1:
                for name, ours in zip(names, ("q_proj", "k_proj", "v_proj")):
                    mapped[f"blocks.{layer}.attn.{ours}.{kind}"] = (name, state[name])
            else:  # incomplete or not stackable: named as unknown, and our q/k/v as missing
                unknown += [f"{n}{tuple(state[n].shape)}" for n in names if n in state]
    return mapped, unknown


def resnet_keys(state: dict[str, torch.Tensor]) -> tuple[Mapped, list[str]]:
    """torchvision / timm ResNet keys (``conv1``, ``bn1``, ``layerN.M``, ``downsample``, ``fc``)."""
    rules = [
        (r"conv1\.weight", "stem.0.weight"), (r"bn1\.(.*)", r"stem.1.\1"), (r"fc\.(weight|bias)", r"head.2.\1"),
        (r"layer([1-4])\.(\d+)\.downsample\.([01])\.(.*)", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.shortcut.{m[3]}.{m[4]}"),
        (r"layer([1-4])\.(\d+)\.((conv|bn)[1-3]\..*)", lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.{m[3]}"),
    ]  # fmt: skip
    return _rename(state, rules, "")  # type: ignore[arg-type]


def vit_keys(state: dict[str, torch.Tensor]) -> tuple[Mapped, list[str]]:
    """torchvision ``VisionTransformer`` keys (``encoder.layers.encoder_layer_N``) or timm's (``blocks.N``)."""
    tv = r"encoder\.layers\.encoder_layer_(\d+)"
    rules = [
        (r"class_token|cls_token", "cls"), (r"encoder\.pos_embedding|pos_embed", "pos"),
        (r"(?:conv_proj|patch_embed\.proj)\.(weight|bias)", r"patchify.\1"),
        (r"(?:encoder\.ln|norm)\.(weight|bias)", r"norm.\1"), (r"(?:heads\.head|head)\.(weight|bias)", r"head.\1"),
        (rf"{tv}\.ln_([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
        (rf"{tv}\.self_attention\.(.*)", r"blocks.\1.attn.\2"),
        (rf"{tv}\.mlp\.(?:linear_1|0)\.(weight|bias)", r"blocks.\1.mlp.0.\2"),
        (rf"{tv}\.mlp\.(?:linear_2|3)\.(weight|bias)", r"blocks.\1.mlp.3.\2"),
        (r"blocks\.(\d+)\.(norm[12]\.(weight|bias))", r"blocks.\1.\2"),
        (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"blocks.\1.attn.in_proj_\2"),  # split below
        (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"blocks.\1.attn.out_proj.\2"),
        (r"blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", r"blocks.\1.mlp.0.\2"),
        (r"blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", r"blocks.\1.mlp.3.\2"),
    ]  # fmt: skip
    mapped, unknown = _rename(state, rules, "")
    for ours in [k for k in mapped if re.search(r"\.attn\.in_proj_(weight|bias)$", k)]:
        source, value = mapped.pop(ours)  # packed q, k, v rows (both layouts); ours are separate
        if value.shape[0] % 3:
            unknown.append(f"{source}{tuple(value.shape)}")
            continue
        for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
            mapped[ours.replace(".in_proj_", f".{name}.")] = (source, part)
    return mapped, unknown


# Per family: the key mapper and our keys a checkpoint may lack (task heads, kept at their initialisation).
FAMILIES: dict[type[nn.Module], tuple[Callable[[dict[str, torch.Tensor]], tuple[Mapped, list[str]]], str]] = {
    GPT2: (gpt2_keys, ""),
    Bert: (bert_keys, r"(pooler|classifier|mlm_transform\.\d|mlm_decoder)\..*"),
    ResNet: (resnet_keys, r"head\.2\..*|.*num_batches_tracked"),
    ViT: (vit_keys, r"head\..*"),
}
SUPPORTED = "gpt2, bert_base, resnet18/34/50, vit_tiny, vit_base_patch16"


def load_pretrained(name: str, model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load the checkpoint at ``path`` into ``model`` (built as ``name``) in place and return it.

    Raises :class:`PretrainedWeightsError` naming every unknown, missing or wrong-shaped key at once.
    """
    family = next((f for f in FAMILIES if isinstance(model, f)), None)
    if family is None:
        raise PretrainedWeightsError(
            f"pretrained: model '{name}' ({type(model).__name__}) has no checkpoint key mapping; supported: {SUPPORTED}"
        )
    mapper, optional = FAMILIES[family]
    mapped, unknown = mapper(_strip(read_checkpoint(path), "module."))
    ours = model.state_dict()
    canonical = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    tied = set(ours) - canonical  # second names of shared weights (GPT-2's head is its token embedding)
    problems = [f"unknown key {k!r}" for k in unknown]
    loadable = {}
    for key, (source, value) in mapped.items():
        if key not in ours:
            if not re.fullmatch(optional, key):  # a head this model does not have (e.g. the pooler of an MLM)
                problems.append(f"{source!r} maps to {key!r}, which '{name}' lacks")
        elif value.shape != ours[key].shape:
            problems.append(f"{source!r}: checkpoint {tuple(value.shape)} vs model {key!r} {tuple(ours[key].shape)}")
        else:
            loadable[key] = value
    missing = [k for k in ours if k not in mapped and k not in tied]
    problems += [f"missing {k!r}" for k in missing if not (optional and re.fullmatch(optional, k))]
    if problems:
        raise PretrainedWeightsError(f"pretrained: {path} does not fit '{name}': " + "; ".join(problems))
    kept = [k for k in missing if k in canonical and not k.endswith("num_batches_tracked")]
    if kept:
        warnings.warn(f"pretrained: {path} has no {', '.join(kept)}; left at their initialisation", stacklevel=3)
    model.load_state_dict(loadable, strict=False)
    return model
