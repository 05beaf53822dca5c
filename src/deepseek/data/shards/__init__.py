"""Sharded on-disk datasets: ``deepseek data shard`` writes them, streaming loaders read them.

Why written by hand: MosaicML Streaming pads ranks with repeated samples and keeps state in shared memory that a
kill -9 leaves behind; LitData and WebDataset have no rank-independent order with exact resume at another world
size; HF datasets' ``split_dataset_by_node`` needs the data local. We take the index + shards layout and the
"decompress into a local cache" idea from MosaicML, Arrow (pyarrow, as HF datasets) as the shard container,
fsspec for storage, and write the ordering by hand.
"""

from deepseek.errors import MissingDependency

try:
    import pyarrow  # noqa: F401
except ModuleNotFoundError as err:  # the data extra: say which install gives it, not a bare import error
    raise MissingDependency("sharded data needs pyarrow and fsspec: pip install 'deepseek-framework[data]'") from err

from deepseek.data.shards.format import (  # noqa: E402
    INDEX_FILE,
    SPLITS_FILE,
    SampleCodec,
    ShardIndex,
    ShardInfo,
    sha256_file,
)
from deepseek.data.shards.writer import write_shards, write_splits  # noqa: E402

__all__ = [
    "INDEX_FILE",
    "SPLITS_FILE",
    "SampleCodec",
    "ShardIndex",
    "ShardInfo",
    "sha256_file",
    "write_shards",
    "write_splits",
]
