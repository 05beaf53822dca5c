"""write_shards / write_splits and the shard sources: what is written reads back as the source's samples, in
order; shard files do not depend on the number of workers; a rerun keeps good shards and redoes bad ones."""

from __future__ import annotations

import json
import os
import wave
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import TensorDataset

from deepseek.data.datasets import build_dataset
from deepseek.data.distributed import dataset_from_path, sample_seed
from deepseek.data.folders import table
from deepseek.data.shards.format import INDEX_FILE, SPLITS_FILE, SampleCodec, ShardIndex, sha256_file
from deepseek.data.shards.sources import dataset_source, open_source, table_source, tokenized_source
from deepseek.data.shards.writer import ShardPlanError, write_shards, write_splits
from deepseek.data.tasks.text import TokenWindows, encode_bytes
from deepseek.data.transforms import Pipeline
from tests.data.shards.test_format import _assert_same


def read_back(out: Path) -> tuple[ShardIndex, list]:
    """Every sample of the shard set in ``out``, read shard by shard with the codec (checksums checked)."""
    index = ShardIndex.from_json((out / INDEX_FILE).read_text(), str(out / INDEX_FILE))
    codec = SampleCodec.from_index(index)
    samples = []
    for shard in index.shards:
        path = out / shard.file
        assert sha256_file(path) == shard.sha256 and path.stat().st_size == shard.bytes
        stream = pa.CompressedInputStream(pa.OSFile(str(path)), "zstd") if index.compression else pa.OSFile(str(path))
        raw = stream.read()
        assert len(raw) == shard.raw_bytes
        reader = pa.ipc.open_file(pa.py_buffer(raw))
        assert reader.num_record_batches == len(shard.blocks)
        for number, (row, offset) in enumerate(shard.blocks):  # the recorded offsets point at the batches
            batch = pa.ipc.read_record_batch(pa.ipc.read_message(pa.py_buffer(raw[offset:])), reader.schema)
            assert batch.equals(reader.get_batch(number)) and row == sum(len(reader.get_batch(i)) for i in range(number))
        samples += codec.decode_rows(reader.read_all(), np.arange(shard.samples))
    assert len(samples) == index.samples
    return index, samples


def _assert_dataset(samples: list, dataset) -> None:
    assert len(samples) == len(dataset)
    for i, got in enumerate(samples):
        _assert_same(got, dataset[i])


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_digits_with_val_split_read_back_in_order(tmp_path, compression) -> None:
    splits = build_dataset("digits")
    written = write_splits(splits, tmp_path, shard_size=8 << 10, compression=compression, source="digits")
    meta = json.loads((tmp_path / SPLITS_FILE).read_text())
    assert meta == {"splits": ["train", "val"], "num_classes": 10, "input_shape": [1, 8, 8], "info": splits.info}
    for name, dataset in (("train", splits.train), ("val", splits.val)):
        index, samples = read_back(tmp_path / name)
        assert index == written[name] and len(index.shards) > 1 and index.source == "digits"
        assert [s.first for s in index.shards] == list(np.cumsum([0] + [s.samples for s in index.shards[:-1]]))
        _assert_dataset(samples, dataset)


def test_image_folder_wav_folder_and_jsonl_read_back(tmp_path) -> None:
    from PIL import Image

    for label in ("cat", "dog"):
        (tmp_path / "img" / label).mkdir(parents=True)
        (tmp_path / "wav" / label).mkdir(parents=True)
        for i in range(3):
            pixels = np.random.default_rng(i).integers(0, 255, (10, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "img" / label / f"{i}.png")
            with wave.open(str(tmp_path / "wav" / label / f"{i}.wav"), "wb") as w:
                w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
                w.writeframes((np.arange(4000 + 500 * i) % 300 * 50).astype(np.int16).tobytes())
    lines = [json.dumps({"text": f"text number {i}", "label": "ab"[i % 2]}) for i in range(7)]
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    for source in ("img", "wav", "t.jsonl"):
        what = open_source(str(tmp_path / source), tmp_path / "scratch")
        write_shards(what.splits.train, tmp_path / f"out-{source}", shard_size=64 << 10, source=what.source)
        _, samples = read_back(tmp_path / f"out-{source}")
        _assert_dataset(samples, dataset_from_path(tmp_path / source).train)


def test_csv_and_parquet_tables_are_streamed_to_the_same_samples_as_the_table_dataset(tmp_path) -> None:
    rng = np.random.default_rng(0)
    frame = {"a": rng.normal(size=50), "b": rng.integers(0, 9, 50), "label": rng.choice(["x", "y", "z"], 50)}
    pa_table = pa.table(frame)
    pq.write_table(pa_table, tmp_path / "t.parquet", row_group_size=7)  # several row groups to page through
    pacsv.write_csv(pa_table, tmp_path / "t.csv")
    for name in ("t.parquet", "t.csv"):
        splits = table_source(tmp_path / name, tmp_path / "scratch")
        reference = table(str(tmp_path / name), target="label", val_fraction=0.0)
        assert (splits.num_classes, splits.input_shape, splits.info) == (3, (2,), reference.info)
        write_shards(splits.train, tmp_path / f"out-{name}", shard_size=400, source=name)
        index, samples = read_back(tmp_path / f"out-{name}")
        assert len(index.shards) > 1
        _assert_dataset(samples, reference.train)


def test_tokenized_text_gives_the_windows_of_token_windows(tmp_path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    text = "the quick brown fox jumps over the lazy dog. " * 12
    (tmp_path / "c.txt").write_text(text)
    what = tokenized_source(tmp_path / "c.txt", "bytes", seq_len=16, stride=5)
    index = write_shards(what.splits.train, tmp_path / "bytes", shard_size=300, task=what.task)
    assert index.task == "language_model" and index.columns[0]["dtype"] == "int32" and len(index.shards) > 1
    _, samples = read_back(tmp_path / "bytes")
    _assert_dataset(samples, TokenWindows(torch.tensor(encode_bytes(text)), 16, 5))

    vocab = {w: i for i, w in enumerate(["[UNK]", *sorted(set(text.replace(".", " ").split())), "."])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(tmp_path / "tokenizer.json"))
    lines = [json.dumps({"text": t}) for t in text.split(". ")[:8]]
    (tmp_path / "c.jsonl").write_text("\n".join(lines))
    what = tokenized_source(tmp_path / "c.jsonl", str(tmp_path / "tokenizer.json"), seq_len=4, stride=None)
    write_shards(what.splits.train, tmp_path / "tok", shard_size=10**6, task=what.task)
    ids = tok.encode("\n\n".join(json.loads(line)["text"] for line in lines)).ids
    _assert_dataset(read_back(tmp_path / "tok")[1], TokenWindows(torch.tensor(ids), 4, 4))


def test_a_dataset_of_token_windows_is_stored_as_tokens(tmp_path) -> None:
    windows = TokenWindows(torch.arange(100) % 259, seq_len=8, stride=3)
    index = write_shards(windows, tmp_path, shard_size=1000, task="language_model")
    assert index.columns == [{"name": "tokens", "kind": "tensor", "dtype": "int64", "shape": [9]}]
    _assert_dataset(read_back(tmp_path)[1], windows)


def test_preprocess_is_applied_once_per_sample_seeded_by_its_index(tmp_path) -> None:
    steps = [{"type": "GaussianNoise", "params": {"sigma": 0.5}}]
    what = dataset_source("digits", {}, steps, seed=3)
    write_shards(what.splits.train, tmp_path, shard_size=16 << 10, preprocess=what.preprocess)
    index, samples = read_back(tmp_path)
    assert index.preprocess == steps
    plain, noise = build_dataset("digits").train, Pipeline(steps, seed=3)
    for i in (0, 1, 700, len(plain) - 1):
        x, y = plain[i]
        _assert_same(samples[i], (noise(x, seed=sample_seed(3, 0, i)), y))
    assert not torch.equal(samples[0][0], plain[0][0])


def test_shard_files_are_byte_identical_whatever_the_number_of_workers(tmp_path) -> None:
    data = TensorDataset(torch.randn(300, 5, 3), torch.arange(300))
    for compression in (None, "zstd"):
        one = write_shards(data, tmp_path / f"1{compression}", shard_size=1000, workers=1, compression=compression)
        two = write_shards(data, tmp_path / f"2{compression}", shard_size=1000, workers=2, compression=compression)
        assert one == two and len(one.shards) >= 4
        for shard in one.shards:
            assert (tmp_path / f"1{compression}" / shard.file).read_bytes() == (tmp_path / f"2{compression}" / shard.file).read_bytes()


def test_a_rerun_keeps_good_shards_and_redoes_a_corrupt_or_missing_one(tmp_path) -> None:
    data = TensorDataset(torch.randn(200, 4), torch.arange(200))
    first = write_shards(data, tmp_path, shard_size=600, workers=2)
    files = [tmp_path / s.file for s in first.shards]
    before = {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files}
    blob = bytearray(files[1].read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # a flipped byte in the middle of shard 1
    files[1].write_bytes(bytes(blob))
    files[3].unlink()
    (tmp_path / ".shard-00004.arrow.tmp-999").write_bytes(b"partial")  # a killed run's leftover
    again = write_shards(data, tmp_path, shard_size=600, workers=2)
    assert again == first
    after = {f.name: (f.stat().st_ino, f.stat().st_mtime_ns) for f in files}
    redone = {name for name in before if before[name] != after[name]}
    assert redone == {files[1].name, files[3].name}
    assert not list(tmp_path.glob(".*tmp*"))
    _assert_dataset(read_back(tmp_path)[1], data)


def test_another_plan_in_the_directory_is_refused_unless_overwrite(tmp_path) -> None:
    data = TensorDataset(torch.randn(40, 4), torch.arange(40))
    write_shards(data, tmp_path, shard_size=200)
    with pytest.raises(ShardPlanError, match=r"another plan \(differs in samples_per_shard.*--overwrite"):
        write_shards(data, tmp_path, shard_size=400)
    (tmp_path.parent / "other").mkdir()
    (tmp_path.parent / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ShardPlanError, match=r"is not empty.*--overwrite"):
        write_shards(data, tmp_path.parent / "other", shard_size=400)
    index = write_shards(data, tmp_path, shard_size=400, overwrite=True)
    assert sorted(p.name for p in tmp_path.glob("shard-*.arrow")) == [s.file for s in index.shards]
    _assert_dataset(read_back(tmp_path)[1], data)
    assert os.path.exists(tmp_path.parent / "other" / "notes.txt")


def test_a_sample_unlike_the_first_ones_is_a_one_line_error_naming_its_range(tmp_path) -> None:
    samples = [(torch.zeros(3), i) for i in range(20)] + [(torch.zeros(4), 20)]
    with pytest.raises(ValueError, match=r"^samples 20\.\.20: column c0: .*float32 \[4\]; expected float32 of shape \[3\]"):
        write_shards(samples, tmp_path, shard_size=100, block_rows=1)
