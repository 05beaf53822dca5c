"""The six modality front ends preprocess raw inputs, batch them and embed them; mixed batches collate."""

from __future__ import annotations

import pytest
import torch

from deepseek.data.graph import Graph
from deepseek.multimodal import (
    AudioExtractor,
    GraphTransformer,
    MultimodalCollate,
    PointCloud3D,
    TextProcessor,
    TimeSeriesNet,
    VisionEncoder,
)  # fmt: skip

D = 16


def raw_samples() -> dict[str, list]:
    g = torch.Generator().manual_seed(0)
    return {
        "text": ["a short sentence", "another, longer sentence about data"],
        "vision": [
            torch.randint(0, 256, (3, 40, 30), dtype=torch.uint8, generator=g),
            torch.rand(3, 20, 20, generator=g),
        ],
        "audio": [
            {"waveform": torch.randn(1, 22050, generator=g), "sample_rate": 22050},
            torch.randn(12000, generator=g),
        ],
        "timeseries": [torch.randn(2, 300, generator=g), torch.randn(2, 50, generator=g)],
        "graph": [
            Graph(torch.randn(4, 8, generator=g), torch.tensor([[0, 1, 2], [1, 2, 3]])),
            Graph(torch.randn(3, 8, generator=g), torch.tensor([[0, 1], [1, 2]])),
        ],
        "pointcloud": [torch.randn(500, 3, generator=g), torch.randn(100, 6, generator=g)],
    }


def processors() -> dict:
    return {
        "text": TextProcessor(max_length=12, embed_dim=D), "vision": VisionEncoder(size=24, embed_dim=D),
        "audio": AudioExtractor(n_mels=20, embed_dim=D), "timeseries": TimeSeriesNet(channels=2, length=64, embed_dim=D),
        "graph": GraphTransformer(in_features=8, embed_dim=D), "pointcloud": PointCloud3D(num_points=64, embed_dim=D),
    }  # fmt: skip


def test_each_processor_turns_raw_inputs_into_embeddings():
    raws, procs = raw_samples(), processors()
    shapes = {"vision": (2, 3, 24, 24), "audio": (2, 1, 20, 101), "timeseries": (2, 2, 64), "pointcloud": (2, 64, 3)}
    for key, proc in procs.items():
        batch = proc.collate([proc.preprocess(r) for r in raws[key]])
        if key in shapes:
            assert batch.shape == shapes[key], key
        emb = proc(batch)
        assert emb.shape == (2, D) and torch.isfinite(emb).all(), key
        emb.sum().backward()  # the encoders train


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_each_encoder_runs_and_trains_under_autocast(dtype):
    raws, procs = raw_samples(), processors()
    for key, proc in procs.items():
        batch = proc.collate([proc.preprocess(r) for r in raws[key]])
        with torch.autocast("cpu", dtype=dtype):
            emb = proc(batch)
        assert emb.shape == (2, D) and torch.isfinite(emb).all(), key
        emb.float().sum().backward()
        assert all(p.grad is not None for p in proc.parameters()), key


def test_graph_pooling_keeps_graphs_apart():
    proc = GraphTransformer(in_features=8, embed_dim=D)
    g = raw_samples()["graph"][0]
    alone = proc(proc.collate([proc.preprocess(g)]))
    together = proc(proc.collate([proc.preprocess(g), proc.preprocess(raw_samples()["graph"][1])]))
    assert torch.allclose(alone[0], together[0], atol=1e-5)


def test_mixed_modality_batch():
    raws = raw_samples()
    collate = MultimodalCollate(processors())
    samples = [
        {"text": raws["text"][0], "vision": raws["vision"][0], "label": 0},
        {"text": raws["text"][1], "audio": raws["audio"][0], "label": 1},
        {"vision": raws["vision"][1], "graph": raws["graph"][0], "label": 2},
    ]
    batch = collate(samples)
    assert batch["present"]["text"].tolist() == [True, True, False] and batch["text"]["input_ids"].shape == (2, 12)
    assert batch["vision"].shape == (2, 3, 24, 24) and batch["audio"].shape[0] == 1 and batch["graph"].num_nodes == 4
    assert "timeseries" not in batch and batch["label"].tolist() == [0, 1, 2]
    fused = torch.zeros(3, D)
    for key in ("text", "vision", "audio", "graph"):
        fused[batch["present"][key]] += collate.processors[key](batch[key])
    assert torch.isfinite(fused).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_graph_encoder_with_low_precision_weights_returns_their_dtype(dtype):
    """``proc.to(dtype)`` (the compress fp16/bf16 levels): the fp32 attention pooling is cast back, so the
    embedding is in the encoder's dtype like every other modality's and fuses with them."""
    torch.manual_seed(0)
    proc = GraphTransformer(in_features=8, embed_dim=D).eval()
    batch = proc.collate([proc.preprocess(g) for g in raw_samples()["graph"]])
    with torch.no_grad():
        expected = proc(batch)
        low = proc.to(dtype)(batch.replace(x=batch.x.to(dtype), edge_weight=batch.edge_weight.to(dtype)))
    assert low.shape == (2, D) and low.dtype == dtype
    torch.testing.assert_close(low.float(), expected, rtol=0.05, atol=0.05)


def test_the_data_layer_defines_no_nn_module() -> None:
    # data holds feature steps; encoders are models (deepseek.models.multimodal), front ends sit above both
    import importlib
    import inspect
    import pkgutil

    import deepseek.data

    modules = [importlib.import_module(m.name) for m in pkgutil.walk_packages(deepseek.data.__path__, "deepseek.data.")]
    defined = [
        f"{module.__name__}.{name}"
        for module in modules
        for name, obj in vars(module).items()
        if inspect.isclass(obj) and obj.__module__ == module.__name__ and issubclass(obj, torch.nn.Module)
    ]
    assert defined == []


def test_the_front_ends_keep_their_names_and_features_alone_batch_the_same() -> None:
    import deepseek.data as data

    raws = raw_samples()
    front_ends = processors()
    features = {"text": data.TextFeatures(max_length=12), "vision": data.VisionFeatures(size=24),
                "audio": data.AudioFeatures(n_mels=20), "timeseries": data.TimeSeriesFeatures(length=64),
                "graph": data.GraphFeatures(), "pointcloud": data.PointCloudFeatures(num_points=64)}  # fmt: skip
    for key, step in features.items():
        assert not isinstance(step, torch.nn.Module)
        alone = step.collate([step.preprocess(r) for r in raws[key]])
        paired = front_ends[key].collate([front_ends[key].preprocess(r) for r in raws[key]])
        flat_a = torch.utils._pytree.tree_leaves(alone if key != "graph" else alone.x)
        flat_b = torch.utils._pytree.tree_leaves(paired if key != "graph" else paired.x)
        assert all(torch.equal(a, b) for a, b in zip(flat_a, flat_b, strict=True)), key
        assert front_ends[key].modality == step.modality == key


def test_weights_saved_before_the_encoders_moved_still_load() -> None:
    """Front-end weights saved when the encoder's layers sat on the front end itself (no ``encoder.`` prefix)."""
    for key, proc in processors().items():
        new = proc.state_dict()
        assert new and all(k.startswith("encoder.") for k in new), key
        old_layout = {k.removeprefix("encoder."): torch.randn_like(v) if v.is_floating_point() else v
                      for k, v in new.items()}  # fmt: skip
        fresh = processors()[key]
        fresh.load_state_dict(old_layout)  # strict
        for k, v in old_layout.items():
            assert torch.equal(fresh.state_dict()["encoder." + k], v), (key, k)
