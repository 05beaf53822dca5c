"""The shard format: index JSON round trip and errors, and SampleCodec round trips where the fast
``decode_batch`` must equal ``default_collate(decode_rows(...))`` exactly."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from torch.utils.data import default_collate

from deepseek.data.shards.format import LANGUAGE_MODEL, SampleCodec, ShardIndex, ShardInfo, sha256_file
from deepseek.data.tasks.text import TokenWindows


def _assert_same(a, b) -> None:
    """Exact equality of nested collated values: same container types, tensor dtypes, shapes and values
    (a numpy leaf of ``b`` decodes to a torch tensor, which is what ``default_collate`` makes of it too)."""
    if isinstance(a, torch.Tensor) and isinstance(b, np.ndarray | np.generic):
        b = torch.as_tensor(b)
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert a == b


def _round_trip(samples: list, rows=None, chunks: int = 1):
    """Encode ``samples`` (in ``chunks`` record batches), check decode_batch == default_collate(decode_rows)."""
    codec = SampleCodec.from_samples(samples)
    pieces = np.array_split(np.arange(len(samples)), chunks)
    table = pa.Table.from_batches([codec.encode([samples[i] for i in p]) for p in pieces], schema=codec.schema)
    rows = np.arange(len(samples))[::-1] if rows is None else np.asarray(rows)
    decoded = codec.decode_rows(table, rows)
    for got, i in zip(decoded, rows):
        _assert_same(got, samples[i])
    _assert_same(codec.decode_batch(table, rows), default_collate(decoded))
    _assert_same(codec.decode_batch(table, rows), default_collate([samples[i] for i in rows]))
    return codec, table


def test_image_label_samples_round_trip_over_several_record_batches() -> None:
    g = torch.Generator().manual_seed(0)
    samples = [(torch.rand(1, 28, 28, generator=g), int(i % 10)) for i in range(23)]
    codec, _ = _round_trip(samples, rows=[5, 22, 0, 11, 11, 7], chunks=3)
    assert codec.columns[0] == {"name": "c0", "kind": "tensor", "dtype": "float32", "shape": [1, 28, 28]}
    assert codec.schema.field("c0").type == pa.binary(28 * 28 * 4)


def test_dict_sample_with_str_float_bool_numpy_and_bfloat16_leaves_round_trips() -> None:
    samples = [
        {
            "text": f"sample {i} é",
            "score": i / 3,
            "flag": i % 2 == 0,
            "pixels": np.full((2, 3), i, dtype=np.uint8),
            "half": torch.full((4,), i, dtype=torch.bfloat16),
            "pair": [torch.tensor(i), (i, float(i))],
        }
        for i in range(9)
    ]
    codec, table = _round_trip(samples)
    decoded = codec.decode_rows(table, np.array([3]))[0]
    assert isinstance(decoded["pixels"], torch.Tensor) and decoded["pixels"].dtype == torch.uint8
    assert isinstance(decoded["pair"][1], tuple) and decoded["pair"][1] == (3, 3.0)


def test_varying_shape_tensors_round_trip_through_decode_rows() -> None:
    samples = [(torch.arange(n, dtype=torch.int16).reshape(1, n), n) for n in (3, 5, 1, 4)]
    codec = SampleCodec.from_samples(samples)
    assert codec.columns[0]["shape"] is None and "c0.shape" in codec.schema.names
    table = pa.Table.from_batches([codec.encode(samples)])
    for got, want in zip(codec.decode_rows(table, np.arange(4)), samples):
        _assert_same(got, want)
    same = [(torch.ones(2, 2), 0), (torch.zeros(2, 2), 1)]
    mixed = SampleCodec.from_samples([(torch.ones(2, 3), 0), (torch.ones(3, 3), 0)])
    table = pa.Table.from_batches([mixed.encode(same)])  # equal shapes in a varying column still stack
    _assert_same(mixed.decode_batch(table, np.array([1, 0])), default_collate(same[::-1]))


def test_language_model_tokens_decode_to_the_token_windows_pairs() -> None:
    ids = torch.randint(0, 259, (200,), generator=torch.Generator().manual_seed(1))
    windows = TokenWindows(ids, seq_len=16, stride=7)
    tokens = [ids[i * 7 : i * 7 + 17].to(torch.int32) for i in range(len(windows))]
    codec = SampleCodec.from_sample(tokens[0], task=LANGUAGE_MODEL)
    table = pa.Table.from_batches([codec.encode(tokens)])
    rows = np.array([4, 0, len(windows) - 1])
    decoded = codec.decode_rows(table, rows)
    for got, i in zip(decoded, rows):
        _assert_same(got, windows[int(i)])
    _assert_same(codec.decode_batch(table, rows), default_collate([windows[int(i)] for i in rows]))
    _assert_same(codec.decode_batch(table, rows), default_collate(decoded))


def test_empty_rows_give_the_structure_with_a_zero_length_batch_axis() -> None:
    samples = [(torch.rand(3, 2), i, f"s{i}") for i in range(4)]
    codec = SampleCodec.from_samples(samples)
    table = pa.Table.from_batches([codec.encode(samples)])
    x, y, s = codec.decode_batch(table, np.array([], dtype=np.int64))
    assert x.shape == (0, 3, 2) and x.dtype == torch.float32
    assert y.shape == (0,) and y.dtype == torch.int64 and s == []


def test_fast_path_reads_a_memory_mapped_arrow_file(tmp_path) -> None:
    samples = [(torch.randn(8), i) for i in range(50)]
    codec = SampleCodec.from_samples(samples)
    path = tmp_path / "shard.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, codec.schema) as writer:
        writer.write_batch(codec.encode(samples[:20]))
        writer.write_batch(codec.encode(samples[20:]))
    with pa.memory_map(str(path)) as source:
        table = pa.ipc.open_file(source).read_all()
        rows = np.array([49, 0, 20, 19])
        _assert_same(codec.decode_batch(table, rows), default_collate([samples[i] for i in rows]))


def test_encode_rejects_a_sample_that_does_not_match_the_structure() -> None:
    codec = SampleCodec.from_sample((torch.zeros(2), 1))
    with pytest.raises(ValueError, match=r"sample 1: expected a tuple of 2"):
        codec.encode([(torch.zeros(2), 1), (torch.zeros(2),)])
    with pytest.raises(ValueError, match=r"column c0: .*float32 \[3\]; expected float32 of shape \[2\]"):
        codec.encode([(torch.zeros(3), 1)])
    with pytest.raises(ValueError, match=r"column c1: expected int, got str"):
        codec.encode([(torch.zeros(2), "a")])
    with pytest.raises(ValueError, match=r"allowed: torch tensor"):
        SampleCodec.from_sample((None, 1))


def _index() -> ShardIndex:
    codec = SampleCodec.from_sample((torch.zeros(2), 1))
    shards = [ShardInfo(f"shard-{k:05d}.arrow", n, first, 10, "ab", 10, "ab", [[0, 8]]) for k, (n, first) in
              enumerate([(4, 0), (0, 4), (3, 4), (2, 7)])]  # fmt: skip
    return ShardIndex(9, codec.structure, codec.columns, None, shards, source="digits", preprocess=[{"a": 1}])


def test_index_json_round_trips_and_locates_global_indices() -> None:
    index = _index()
    again = ShardIndex.from_json(index.to_json(), "x/index.json")
    assert again == index
    assert [index.locate(i) for i in (0, 3, 4, 6, 7, 8)] == [(0, 0), (0, 3), (2, 0), (2, 2), (3, 0), (3, 1)]
    with pytest.raises(IndexError):
        index.locate(9)


def test_a_bad_index_names_the_file_and_the_key() -> None:
    with pytest.raises(ValueError, match=r"^data/index.json: .*invalid JSON"):
        ShardIndex.from_json("{not json", "data/index.json")
    body = json.loads(_index().to_json())
    del body["shards"][2]["sha256"]
    with pytest.raises(ValueError, match=r"^data/index.json: .*missing key 'shards\[2\].sha256'"):
        ShardIndex.from_json(json.dumps(body), "data/index.json")
    body = json.loads(_index().to_json())
    del body["columns"]
    with pytest.raises(ValueError, match=r"missing key 'columns'"):
        ShardIndex.from_json(json.dumps(body), "data/index.json")


def test_sha256_file_matches_hashlib(tmp_path) -> None:
    import hashlib

    data = bytes(range(256)) * 5000
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
