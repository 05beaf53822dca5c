"""The task datasets (LM, seq2seq, CTC, segmentation, reconstruction, captions, points, graphs, series):
offline, seeded, with the sample shapes their docstrings promise and batches their models take."""

from __future__ import annotations

import inspect
import shutil

import pytest
import torch
from torch.utils.data import DataLoader

from deepseek.config import ConfigError
from deepseek.data import build_dataset
from deepseek.data.bundled import DIGITS
from deepseek.data.graph import Graph
from deepseek.data.tasks.series import mackey_glass_series
from deepseek.data.tasks.speech import ALPHABET, decode_chars
from deepseek.data.tasks.text import BOS, BYTE_VOCAB, EOS, chatterbot_conversations, decode_bytes
from deepseek.data.tasks.vision import CAPTION_WORDS
from deepseek.registry import datasets

NEEDS_TOOLS = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("sox") is None,
    reason="spoken_digit_sequences needs espeak-ng and sox (CI installs them: apt-get install espeak-ng sox)",
)
TASKS = ["chatterbot_lm", "chatterbot_pairs", "spoken_digit_sequences", "digit_segmentation", "image_reconstruction",
         "digit_captions", "digit_point_clouds", "digit_graphs", "mackey_glass"]  # fmt: skip
COVERED = [*TASKS, "subset"]  # the datasets this file tests (test_datasets.py checks every registered one is)


def test_every_task_dataset_is_registered_and_documents_its_samples():
    for name in TASKS:
        assert name in datasets and "(" in inspect.getdoc(datasets.get(name)), name  # shapes in the docstring


def test_chatterbot_lm_targets_are_the_next_bytes_and_splits_are_by_conversation():
    splits = build_dataset("chatterbot_lm", seq_len=32, val_fraction=0.2, seed=3)
    x, y = splits.train[5]
    assert x.shape == y.shape == (32,) and x.dtype == torch.long
    assert torch.equal(x[1:], y[:-1]) and int(x.max()) < BYTE_VOCAB
    assert torch.equal(splits.train[6][0][0:1], y[-1:])  # windows tile the text
    train_text = decode_bytes(torch.cat([splits.train[i][0] for i in range(len(splits.train))]))
    val_text = decode_bytes(torch.cat([splits.val[i][0] for i in range(len(splits.val))]))
    lines = [line for c in chatterbot_conversations() for line in c]
    once = {line for line in lines if len(line) > 40 and lines.count(line) == 1}
    in_val = [line for line in once if line in val_text]
    assert len(in_val) > 10 and not any(line in train_text for line in in_val)  # no conversation in both
    again = build_dataset("chatterbot_lm", seq_len=32, val_fraction=0.2, seed=3)
    assert torch.equal(again.val[0][0], splits.val[0][0])
    assert not torch.equal(build_dataset("chatterbot_lm", seq_len=32, val_fraction=0.2, seed=4).val[0][0], splits.val[0][0])


def test_chatterbot_pairs_teacher_forcing_layout():
    splits = build_dataset("chatterbot_pairs", max_length=48)
    pairs = {(c[k], c[k + 1]) for c in chatterbot_conversations() for k in range(len(c) - 1)}
    (src, tgt_in), tgt_out = splits.train[0]
    assert src.shape == tgt_in.shape == tgt_out.shape == (48,)
    n = int((tgt_out != -100).sum())
    assert tgt_in[0] == BOS and tgt_out[n - 1] == EOS and torch.equal(tgt_in[1:n], tgt_out[: n - 1])
    line, reply = decode_bytes(src), decode_bytes(tgt_out)
    assert any(a.startswith(line) and b.startswith(reply) for a, b in pairs)
    assert len(splits.train) + len(splits.val) == 2306 == sum(len(c) - 1 for c in chatterbot_conversations())


@NEEDS_TOOLS
def test_spoken_digit_sequences_have_transcripts_of_their_words():
    splits = build_dataset("spoken_digit_sequences", max_digits=3, train_size=8, val_size=4)
    assert (len(splits.train), len(splits.val)) == (8, 4) and splits.info["blank"] == len(ALPHABET)
    for i in range(4):
        wave, (labels, length) = splits.train[i]
        text = decode_chars(labels)
        assert wave.shape == (1, int(16000 * 0.8 * 3)) and len(text) == int(length)
        assert 1 <= len(text.split()) <= 3 and all(w in DIGITS for w in text.split())
        assert (labels[int(length) :] == -1).all() and wave.abs().max() > 0.05
    assert torch.equal(splits.train[2][0], splits.train[2][0])  # a sample is the same every epoch
    batch = next(iter(DataLoader(splits.train, batch_size=4)))
    assert batch[0].shape == (4, 1, 38400) and batch[1][0].shape == (4, 17) and batch[1][1].shape == (4,)


def test_digit_segmentation_masks_mark_the_ink_with_its_digit():
    splits = build_dataset("digit_segmentation", source="digits", size=12)
    image, mask = splits.train[0]
    digit = splits.train.images[0][1]
    assert image.shape == (1, 12, 12) and mask.shape == (12, 12) and mask.dtype == torch.long
    assert set(mask.unique().tolist()) == {0, int(digit) + 1} and torch.equal(mask > 0, image[0] > 0.5)
    assert splits.num_classes == 11 and build_dataset("digit_segmentation", source="digits", per_digit=False).num_classes == 2
    with pytest.raises(ConfigError, match="data.size"):
        build_dataset("digit_segmentation", size=16)  # smaller than a 28x28 MNIST digit


def test_image_reconstruction_targets_are_the_inputs():
    x, y = build_dataset("image_reconstruction", source="digits").train[3]
    assert x.shape == (1, 8, 8) and x is y


def test_digit_captions_name_the_digit_of_their_image():
    splits = build_dataset("digit_captions", source="digits")
    (image, ids), digit = splits.train[7]
    words = [CAPTION_WORDS[i] for i in ids.tolist() if i]
    assert image.shape == (1, 8, 8) and ids.shape == (6,) and DIGITS[digit] in words
    assert splits.info["vocab_size"] == len(CAPTION_WORDS) == 20


def test_digit_point_clouds_sample_the_ink_the_same_way_every_epoch():
    splits = build_dataset("digit_point_clouds", source="digits", num_points=64)
    points, digit = splits.train[0]
    assert points.shape == (64, 3) and 0 <= digit < 10
    assert points[:, :2].abs().max() <= 1.0 + 1e-6 and (points[:, 2] > 0).float().mean() > 0.95  # on the ink
    assert torch.equal(points, splits.train[0][0]) and not torch.equal(points, splits.train[1][0])


def test_digit_graphs_connect_ink_pixels_and_batch_as_one_graph():
    splits = build_dataset("digit_graphs")
    graph, digit = splits.train[0]
    assert isinstance(graph, Graph) and graph.x.shape[1] == 3 and 0 <= digit < 10
    assert (graph.x[:, 0] > 0).all() and int(graph.edge_index.max()) < graph.num_nodes
    src, dst = graph.edge_index
    step = (graph.x[src, 1:] - graph.x[dst, 1:]).abs().amax(-1)  # neighbours are one pixel apart (scale 1/4)
    assert torch.allclose(step, torch.full_like(step, 0.25))
    batch, labels = next(iter(DataLoader(splits.train, batch_size=3)))  # the default collate knows graphs
    assert isinstance(batch, Graph) and labels.shape == (3,) and int(batch.batch.max()) == 2
    assert batch.num_nodes == sum(splits.train[i][0].num_nodes for i in range(3))


def test_mackey_glass_windows_continue_the_series_and_validation_comes_later():
    splits = build_dataset("mackey_glass", length=600, window=32, horizon=3, val_fraction=0.25)
    x0, y0 = splits.train[0]
    x1, _ = splits.train[1]
    assert x0.shape == (1, 32) and y0.shape == (3,) and torch.equal(x1[0, -1:], y0[:1])
    assert len(splits.train) == 450 - 35 + 1 and len(splits.val) == 150 - 35 + 1
    raw = torch.tensor(mackey_glass_series(600), dtype=torch.float32)
    standardised = splits.val[0][0][0] * splits.info["std"] + splits.info["mean"]
    torch.testing.assert_close(standardised, raw[450:482])
    assert raw.min() > 0.2 and raw.max() < 1.5 and raw.std() > 0.1  # the attractor's range: it oscillates


def test_subset_keeps_a_seeded_fixed_handful_and_reports_bad_keys_as_config_errors():
    full = build_dataset("digits", val_fraction=0.1)
    small = build_dataset("subset", dataset="digits", train_size=16, val_size=8, val_fraction=0.1)
    assert (len(small.train), len(small.val), small.num_classes) == (16, 8, 10)
    picked = small.train.indices
    assert picked == sorted(picked) and torch.equal(small.train[0][0], full.train[picked[0]][0])
    again = build_dataset("subset", dataset="digits", train_size=16, val_size=8, val_fraction=0.1)
    assert again.train.indices == picked
    assert len(build_dataset("subset", dataset="digits", train_size=10_000).train) == len(build_dataset("digits").train)
    with pytest.raises(ConfigError, match=r"data.val_fractio: unknown key for dataset 'digits'.*val_fraction"):
        build_dataset("subset", dataset="digits", train_size=4, val_fractio=0.1)
