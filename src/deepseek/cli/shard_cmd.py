"""``deepseek data shard SOURCE --out DIR``: write a dataset as shards (see :mod:`deepseek.data.shards`).

SOURCE: a config YAML (its ``data.name``, ``data.kwargs`` and ``data.preprocess``, seeded by ``train.seed``),
a registered dataset name, an image or WAV folder, a .csv/.parquet table, a .jsonl file, or with ``--tokenize``
a .txt/.jsonl text corpus cut into language-model windows.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from deepseek.cli.errors import UsageError
from deepseek.errors import ConfigError

SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
CONFIG_SUFFIXES = (".yaml", ".yml")


def parse_size(flag: str, text: str) -> int:
    """``64KB``, ``128MB``, ``1GB``, ``1.5GB`` or a plain byte count -> bytes (binary units); UsageError otherwise."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?)B?", text.strip().upper())
    size = int(float(match.group(1)) * SIZE_UNITS[match.group(2)]) if match else 0
    if size < 1:
        raise UsageError(f"{flag} '{text}': allowed: a positive size such as 64KB, 128MB, 1GB (or a byte count)")
    return size


def positive_int(flag: str, text: str | None) -> int | None:
    """A flag's positive integer (None when not given); UsageError naming the flag and value otherwise."""
    if text is None:
        return None
    if not text.strip().isdigit() or int(text) < 1:
        raise UsageError(f"{flag} '{text}': allowed: a positive integer")
    return int(text)


def _config_source(path: Path) -> Any:
    """The shard source of a config: its ``data`` section with ``train.seed`` as plain arguments."""
    from deepseek.config import load_config
    from deepseek.data.shards.sources import dataset_source

    cfg = load_config(str(path))
    d = cfg.data
    return dataset_source(d.name, dict(d.kwargs), list(d.preprocess), cfg.train.seed, source=str(path))


def cmd_data_shard(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from deepseek.data.shards.sources import open_source
    from deepseek.data.shards.writer import write_splits

    shard_size = parse_size("--shard-size", args.shard_size)
    workers, seq_len, stride = (positive_int(f, v) for f, v in
                                (("--workers", args.workers), ("--seq-len", args.seq_len), ("--stride", args.stride)))
    if args.compression not in (None, "zstd"):
        raise UsageError(f"--compression '{args.compression}': allowed: zstd (or no --compression)")
    if args.tokenize is not None and args.tokenize != "bytes" and not Path(args.tokenize).is_file():
        raise UsageError(f"--tokenize '{args.tokenize}': allowed: 'bytes' or an existing tokenizer.json file")
    if args.tokenize is None and (seq_len is not None or stride is not None):
        raise UsageError(f"--seq-len/--stride {seq_len}/{stride}: allowed only with --tokenize")
    out = Path(args.out)
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix=".shard-scratch-", dir=out.parent if out.parent.is_dir() else None) as tmp:
            source = Path(args.source)
            if source.suffix.lower() in CONFIG_SUFFIXES and args.tokenize is None:
                what = _config_source(source)
            else:
                what = open_source(args.source, Path(tmp), tokenize=args.tokenize, seq_len=seq_len,
                                   stride=stride)  # fmt: skip
            written = write_splits(
                what.splits, out, shard_size=shard_size, workers=workers or 1, compression=args.compression,
                source=what.source, preprocess=what.preprocess, task=what.task, overwrite=args.overwrite,
            )  # fmt: skip
    except ConfigError:  # a bad config: one line per problem, printed by the dispatcher
        raise
    except ValueError as exc:  # bad input: the source, its samples or the output directory (one line each)
        raise UsageError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    seconds = time.perf_counter() - started
    table = Table(title=f"data shard {args.source} -> {out}")
    for col in ("split", "samples", "shards", "bytes", "seconds"):
        table.add_column(col, justify="left" if col == "split" else "right")
    totals = [0, 0, 0]
    for split, index in written.items():  # the splits are written one after the other: one time for all
        row = [index.samples, len(index.shards), sum(s.bytes for s in index.shards)]
        totals = [t + v for t, v in zip(totals, row)]
        table.add_row(split, *(f"{v:,}" for v in row), "")
    table.add_row("all", *(f"{v:,}" for v in totals), f"{seconds:.1f}")
    Console().print(table)
    return 0


def add_parser(sub: Any) -> None:
    """Add ``shard`` to the ``deepseek data`` subcommands (``sub``: the top-level subparsers)."""
    data = sub.choices["data"]
    actions = next(a for a in data._actions if isinstance(a, argparse._SubParsersAction))
    p = actions.add_parser("shard", help="write a dataset as sharded Arrow files with an index (resumable)")
    p.add_argument("source", help="config .yaml, dataset name, image/WAV folder, .csv/.parquet, .jsonl or .txt")
    p.add_argument("--out", required=True, help="output directory (train/, val/, splits.json)")
    p.add_argument("--shard-size", default="128MB", help="target bytes per shard, e.g. 64KB, 128MB, 1GB")
    p.add_argument("--workers", default="1", help="processes writing shards in parallel")
    p.add_argument("--compression", default=None, help="'zstd': compress each shard file with zstd")
    p.add_argument("--tokenize", help="'bytes' or PATH/tokenizer.json: cut a .txt/.jsonl corpus into LM windows")
    p.add_argument("--seq-len", help="tokens per language-model window (with --tokenize)")
    p.add_argument("--stride", help="tokens between window starts (default: --seq-len)")
    p.add_argument("--overwrite", action="store_true", help="replace shards of another plan in --out")
    p.set_defaults(fn=cmd_data_shard)
