"""Shard sets on object storage: an S3-compatible server (moto, in a thread on 127.0.0.1, port from the OS) serves
a set written by the writer; read through s3fs with a cold cache, a warm cache and a cache smaller than the set.

Why moto: pure Python on PyPI, it serves the S3 API in-process; MinIO is a Go binary on neither PyPI nor Debian.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from deepseek.data.shards.reader import ShardSet, open_shards
from deepseek.data.shards.storage import CorruptShardError
from deepseek.data.shards.stream import StreamingLoader
from tests.data.shards.shard_sets import write_set

moto_server = pytest.importorskip("moto.server", reason="moto[server] is a dev dependency (the S3 test server)")
s3fs = pytest.importorskip("s3fs", reason="s3fs is the s3 extra")

N, PER_SHARD = 60, 7  # 9 shards
CREDENTIALS = {"key": "testing", "secret": "testing"}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def bucket(endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Plain and zstd sets, written locally and uploaded to s3://shards/<name>; returns the local copies."""
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint, "region_name": "us-east-1"}, **CREDENTIALS)
    import boto3  # moto's own dependency; s3fs's mkdir sends a location constraint moto rejects for us-east-1

    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_bucket(Bucket="shards")
    local = {}
    for name, compression in (("plain", None), ("zstd", "zstd")):
        local[name] = write_set(tmp_path_factory.mktemp(name) / "set", N, PER_SHARD, compression=compression)
        fs.put(str(local[name]) + "/", f"shards/{name}/", recursive=True)
    return local


def _options(endpoint: str) -> dict:
    return {"client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}, **CREDENTIALS}


def _epoch(shards: ShardSet, sizes: list[int] | None = None, **kw: object) -> list[list[torch.Tensor]]:
    loader = StreamingLoader(shards, 8, seed=1, **kw)
    out = []
    for batch in loader:
        out.append(batch)
        if sizes is not None:
            sizes.append(shards.storage.cached_bytes())
    return out


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for p, q in zip(a, b) for x, y in zip(p, q))


@pytest.mark.parametrize("name", ["plain", "zstd"])
def test_cold_then_warm_cache_reads_what_the_local_set_holds(
    endpoint: str, bucket: dict[str, Path], tmp_path: Path, name: str
) -> None:
    expected = _epoch(open_shards(bucket["plain"]))
    cold = open_shards(f"s3://shards/{name}", cache_dir=tmp_path / "cache", storage_options=_options(endpoint))
    assert _same(_epoch(cold), expected)
    assert cold.storage.fetches == len(cold.index.shards)  # everything downloaded, each shard once
    warm = open_shards(f"s3://shards/{name}", cache_dir=tmp_path / "cache", storage_options=_options(endpoint))
    assert _same(_epoch(warm), expected)
    assert warm.storage.fetches == 0  # nothing downloaded again


def test_endpoint_and_credentials_from_the_environment(
    endpoint: str, bucket: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in (("AWS_ENDPOINT_URL", endpoint), ("AWS_ACCESS_KEY_ID", "testing"),
                       ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):  # fmt: skip
        monkeypatch.setenv(key, value)
    shards = open_shards("s3://shards/plain", cache_dir=tmp_path / "cache")
    assert _same(_epoch(shards), _epoch(open_shards(bucket["plain"])))


def test_a_cache_smaller_than_the_set_stays_bounded_and_the_epoch_complete(
    endpoint: str, bucket: dict[str, Path], tmp_path: Path
) -> None:
    shards = open_shards(
        "s3://shards/zstd", cache_dir=tmp_path / "cache", storage_options=_options(endpoint), cache_limit=1
    )
    shard_bytes = max(s.raw_bytes for s in shards.index.shards)
    limit = 3 * shard_bytes
    shards = open_shards(
        "s3://shards/zstd", cache_dir=tmp_path / "cache", storage_options=_options(endpoint), cache_limit=limit
    )
    total = sum(s.raw_bytes for s in shards.index.shards)
    assert total > 2 * limit
    sizes: list[int] = []
    batches = _epoch(shards, sizes, shuffle_window=1, prefetch=1)
    assert sorted(i for b in batches for i in b[1].tolist()) == list(range(N))
    assert max(sizes) <= limit + shard_bytes  # never over the limit by more than the shard in use
    assert shards.storage.fetches >= len(shards.index.shards)


def test_a_flipped_byte_on_the_server_is_named_with_the_url(
    endpoint: str, bucket: dict[str, Path], tmp_path: Path
) -> None:
    fs = s3fs.S3FileSystem(**_options(endpoint))
    fs.put(str(bucket["plain"]) + "/", "shards/bad/", recursive=True)
    data = bytearray(fs.cat_file("shards/bad/shard-00003.arrow"))
    data[len(data) // 2] ^= 0xFF
    fs.pipe_file("shards/bad/shard-00003.arrow", bytes(data))
    shards = open_shards("s3://shards/bad", cache_dir=tmp_path / "cache", storage_options=_options(endpoint))
    with pytest.raises(CorruptShardError, match=r"shard 'shard-00003.arrow' of 's3://shards/bad': sha256 mismatch"):
        _epoch(shards)
    assert not list((tmp_path / "cache").glob("*shard-00003*.arrow"))  # nothing bad left in the cache
