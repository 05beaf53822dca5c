"""A shard set served over plain HTTP (``https://`` is the same fsspec backend): read through the cache, with
sizes asked per file where the server's directory page gives none, and a missing shard named."""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.data.shards.shard_sets import labels, write_set

pytest.importorskip("aiohttp")  # fsspec's http filesystem


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # no request lines in the test output
        pass


@pytest.fixture
def served(tmp_path):
    """``(root directory, base URL)`` of a threaded HTTP server on 127.0.0.1, a port from the OS."""
    root = tmp_path / "www"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_a_shard_set_over_http_streams_every_sample_once(served, tmp_path, compression):
    from deepseek.data.shards.reader import open_shards
    from deepseek.data.shards.stream import StreamingLoader

    root, url = served
    write_set(root / "set", 50, 8, compression=compression)
    shards = open_shards(f"{url}/set", cache_dir=tmp_path / "cache")
    seen = [i for batch in StreamingLoader(shards, 8, seed=3) for i in labels(batch)]
    assert sorted(seen) == list(range(50))
    assert len(list((tmp_path / "cache").glob("*.arrow"))) == len(shards.index.shards)  # fetched into the cache


def test_a_missing_shard_over_http_is_named(served, tmp_path):
    from deepseek.data.shards.reader import open_shards
    from deepseek.data.shards.storage import CorruptShardError

    root, url = served
    write_set(root / "set", 30, 8)
    (root / "set" / "shard-00002.arrow").unlink()
    with pytest.raises(CorruptShardError, match=r"shard 'shard-00002\.arrow' of 'http://127\.0\.0\.1:\d+/set': missing"):
        open_shards(f"{url}/set", cache_dir=tmp_path / "cache")
