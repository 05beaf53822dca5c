"""``data.shards`` and ``data.streaming`` (issue 17): accepted values, and bad ones refused with one line naming
the key, the value and what is allowed (exit 2, no traceback)."""

from __future__ import annotations

import pytest

from deepseek.cli.main import main
from deepseek.config import load_config
from tests.conftest import REPO

QUICKSTART = str(REPO / "configs" / "quickstart.yaml")


@pytest.fixture
def shard_dir(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "index.json").write_text("{}")
    return tmp_path / "shards"


def test_a_shard_directory_and_streaming_settings_are_read(shard_dir):
    cfg = load_config(QUICKSTART, [f"data.shards={shard_dir}", "data.streaming.cache_limit=1.5GB",
                                   "data.streaming.on_corrupt=skip", "data.streaming.shuffle_window=8"])  # fmt: skip
    s = cfg.data.streaming
    assert (cfg.data.shards, s.cache_limit, s.on_corrupt, s.shuffle_window, s.prefetch) == (
        str(shard_dir), int(1.5 * 2**30), "skip", 8, 2)  # fmt: skip
    for size in ("512MiB", "512MB", "512mb", str(512 * 2**20)):  # binary units, as `data shard --shard-size`
        assert load_config(QUICKSTART, [f"data.streaming.cache_limit={size}"]).data.streaming.cache_limit == 512 * 2**20
    assert load_config(QUICKSTART, ["data.shards=s3://bucket/prefix"]).data.shards == "s3://bucket/prefix"
    assert load_config(QUICKSTART).data.shards is None  # the default: data.name's splits, as before


# override -> (key named in the message, value shown, what is allowed)
REFUSED = {
    "data.shards=/no/such/dir": ("data.shards", "/no/such/dir", "written by `deepseek data shard`"),
    "data.streaming.cache_limit=lots": ("data.streaming.cache_limit", "lots", "10GB"),
    "data.streaming.cache_limit=0": ("data.streaming.cache_limit", "0", "positive"),
    "data.streaming.cache_limit=10XB": ("data.streaming.cache_limit", "10XB", "10GB"),
    "data.streaming.on_corrupt=maybe": ("data.streaming.on_corrupt", "maybe", "'error' or 'skip'"),
    "data.streaming.shuffle_window=0": ("data.streaming.shuffle_window", "0", "greater than 0"),
    "data.streaming.prefetch=-1": ("data.streaming.prefetch", "-1", "greater than or equal to 0"),
    "data.streaming.cache=1": ("data.streaming.cache", "cache", "cache_dir"),
}


@pytest.mark.parametrize("override", list(REFUSED))
def test_bad_shard_settings_are_refused_with_one_line(capsys, override):
    key, value, allowed = REFUSED[override]
    assert main(["config", "validate", QUICKSTART, override]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert key in lines[0] and value in lines[0] and allowed in lines[0], lines[0]


def test_a_directory_that_is_no_shard_set_is_refused(tmp_path, capsys):
    assert main(["config", "validate", QUICKSTART, f"data.shards={tmp_path}"]) == 2
    assert "holds neither index.json nor splits.json" in capsys.readouterr().err
