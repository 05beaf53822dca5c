"""Pipeline and Compose as documents 003 and 004 write them; errors; workers; signal correctness."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from deepseek.data import Pipeline
from deepseek.data.augment import Compose
from deepseek.data.graph import Graph, collate_graphs
from deepseek.data.transforms import (
    AddSelfLoops,
    CutMix,
    FarthestPointSample,
    FeatureExtract,
    NormalizeAdjacency,
    Resample,
    SpecAugment,
    TransformError,
    train_tokenizer,
)  # fmt: skip
from deepseek.data.transforms.audio_ops import resample


def test_document_003_audio_pipeline_runs_as_written():
    data_pipeline = Pipeline(
        [Resample(target_sr=16000), SpecAugment(freq_mask=10, time_mask=20), FeatureExtract(type="mfcc", n_mels=80)]
    )
    t = torch.arange(44100) / 44100
    out = data_pipeline({"waveform": torch.sin(2 * math.pi * 440 * t)[None], "sample_rate": 44100})
    assert out["sample_rate"] == 16000 and out["waveform"].shape == (1, 16000)
    assert out["features"].shape == (1, 40, 101)  # 40 MFCCs, 16000 / 160 + 1 frames


def test_document_004_compose_runs_as_written():
    transform = Compose([
        {"type": "RandomRotation", "params": {"degrees": (-30, 30)}},
        {"type": "ColorJitter", "params": {"brightness": 0.2}},
        {"type": "GaussianNoise", "params": {"sigma": 0.05}},
    ])  # fmt: skip
    img = torch.rand(3, 32, 32)
    out = transform(img)
    assert out.shape == img.shape and not torch.equal(out, img)
    again = Compose(
        [
            {"type": "RandomRotation", "params": {"degrees": (-30, 30)}},
            {"type": "ColorJitter", "params": {"brightness": 0.2}},
            {"type": "GaussianNoise", "params": {"sigma": 0.05}},
        ]
    )
    assert torch.equal(again(img), out)  # same seed (0) -> same augmentation


def test_steps_may_be_names_callables_and_specs():
    p = Pipeline(["Standardize", lambda x: x * 2, {"type": "Jitter", "params": {"sigma": 0.0}}])
    x = torch.randn(2, 50)
    assert torch.allclose(p(x), 2 * (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-8))


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"type": "RandomRotaton"}, "did you mean 'RandomRotation'"),
        (
            {"type": "GaussianNoise", "params": {"sigmaa": 0.1}},
            "GaussianNoise.*sigmaa.*parameters of GaussianNoise: mean, p, sigma",
        ),
        ({"type": "GaussianNoise", "params": {"sigma": "big"}}, "GaussianNoise.*sigma.*valid number"),
        ({"type": "FeatureExtract", "params": {"type": "mfcc", "n_mfcc": 90}}, "n_mfcc .90. cannot exceed n_mels"),
        ({"kind": "Jitter"}, "a pipeline step must be"),
    ],
)
def test_clear_errors_name_the_transform_and_what_is_allowed(spec, message):
    with pytest.raises(TransformError, match=message):
        Compose([spec])


class Images(Dataset):
    def __init__(self, pipeline):
        self.pipeline = pipeline

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return self.pipeline(torch.full((3, 8, 8), float(i)), seed=i)  # per-sample seed: worker-independent


def test_pipeline_pickles_and_gives_the_same_samples_in_workers():
    p = Pipeline(
        [{"type": "RandomRotation", "params": {"degrees": 45.0}}, {"type": "GaussianNoise", "params": {"sigma": 0.1}}]
    )
    assert pickle.loads(pickle.dumps(p))(torch.ones(3, 4, 4), seed=1).shape == (3, 4, 4)
    in_process = torch.cat(list(DataLoader(Images(p), batch_size=4)))
    in_workers = torch.cat(list(DataLoader(Images(p), batch_size=4, num_workers=2)))
    assert torch.equal(in_process, in_workers)


def test_resample_keeps_a_tone_at_its_frequency():
    t = torch.arange(44100, dtype=torch.float64) / 44100
    out = resample(torch.sin(2 * math.pi * 440 * t), 44100, 16000)
    assert out.shape == (16000,)
    assert int(torch.fft.rfft(out).abs().argmax()) == 440  # 1 s at 16 kHz: bin k is k Hz
    ref = torch.sin(2 * math.pi * 440 * torch.arange(16000, dtype=torch.float64) / 16000)
    assert (out[200:-200] - ref[200:-200]).abs().max() < 0.01


def test_spec_augment_zeroes_bands_of_features():
    feats = torch.ones(1, 80, 100)
    out = SpecAugment(freq_mask=10, time_mask=20)(feats, torch.Generator().manual_seed(0))
    zero_rows = (out[0] == 0).all(dim=1).sum()
    zero_cols = (out[0] == 0).all(dim=0).sum()
    assert 0 < zero_rows <= 10 or 0 < zero_cols <= 20


def test_gcn_normalisation_matches_the_dense_formula():
    g = AddSelfLoops()(Graph(torch.randn(4, 2), torch.tensor([[0, 1, 1, 2, 2, 3], [1, 0, 2, 1, 3, 2]])))
    g = NormalizeAdjacency()(g)
    a = torch.zeros(4, 4)
    a[g.edge_index[0], g.edge_index[1]] = 1.0
    d = a.sum(0).rsqrt()
    dense = d[:, None] * a * d[None, :]
    assert torch.allclose(dense[g.edge_index[0], g.edge_index[1]], g.edge_weight)
    batch = collate_graphs([g, g])
    assert batch.num_nodes == 8 and batch.edge_index.max() == 7 and batch.batch.tolist() == [0] * 4 + [1] * 4


def test_farthest_point_sampling_spreads_points():
    pts = torch.cat([torch.zeros(100, 3), torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])])
    out = FarthestPointSample(num_points=4)(pts, torch.Generator().manual_seed(0))
    assert {tuple(p) for p in out.tolist()} >= {(1.0, 0, 0), (0, 1.0, 0), (0, 0, 1.0)}


def test_cutmix_mixes_labels_by_the_pasted_area():
    x = torch.stack([torch.zeros(1, 10, 10), torch.ones(1, 10, 10)])
    out, soft = CutMix(num_classes=2, alpha=1.0)((x, torch.tensor([0, 1])), torch.Generator().manual_seed(3))
    pasted = (out[0] == 1).float().mean()
    assert soft.shape == (2, 2) and torch.allclose(soft.sum(1), torch.ones(2))
    assert soft[0, 1] == pytest.approx(float(pasted)) or soft[0, 0] == 1.0


def test_trained_and_shipped_tokenizers(tmp_path):
    tok = train_tokenizer(
        ["the cat sat on the mat", "the dog sat on the log"] * 20,
        kind="wordpiece",
        vocab_size=60,
        path=tmp_path / "t.json",
    )
    assert tok.encode("the cat").tokens[:2] == ["the", "cat"]
    out = Pipeline(
        [
            {"type": "Tokenize", "params": {"tokenizer": str(tmp_path / "t.json")}},
            {"type": "TruncatePad", "params": {"max_length": 8}},
        ]
    )("The cat")
    assert out["input_ids"].shape == (8,) and out["attention_mask"].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    minilm = Pipeline(["Tokenize"])("Hello world")
    assert minilm["input_ids"].tolist() == [101, 7592, 2088, 102]  # BERT uncased vocabulary ids
