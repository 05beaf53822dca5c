"""Where a shard set's bytes come from: a local directory read in place, or an fsspec URL (or zstd shards)
copied / decompressed into a bounded local cache, checked against the index's sha256.

- Local uncompressed shards are memory-mapped where they lie (``pa.memory_map`` + ``pa.ipc.open_file``).
- URL shards (``s3://``, ``gs://``, ``https://``, ``memory://``...) and ``.arrow.zst`` shards become plain Arrow
  files in ``cache_dir``: written to a temporary name and renamed (atomic), under a per-shard ``fcntl`` lock
  file, so several processes sharing the directory fetch each shard once. A background thread fetches the next
  ``prefetch`` shards of the order ahead of use.
- ``cache_limit`` (bytes): before a fetch, the least recently used cached shards that this process does not
  use are deleted. The cache may exceed the limit only by the shards in use (a window group being read).
- Credentials and endpoints: fsspec ``storage_options`` (e.g. ``{"client_kwargs": {"endpoint_url": ...},
  "key": ..., "secret": ...}`` for s3fs), else the backend's environment (``AWS_ENDPOINT_URL``,
  ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``... for s3).

Checksums: the stored file's sha256 is checked after each download and when a process first opens a shard
(once per process; a shard read in place is hashed once per :class:`ShardStorage` and the DataLoader workers
forked from it, which share a flag page: not again by each new worker of each epoch). Which shards exist is
decided once, at open, from the directory listing (presence and size against the index), so every rank that
sees the same storage computes the same order. With
``on_corrupt="skip"`` the open also reads every shard once to check its sha256, so a flipped byte leaves that
shard out of the order on every rank alike; with ``"error"`` a mismatch found later raises
:class:`CorruptShardError` (never a silently short epoch).
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import threading
import warnings
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa

from deepseek.data.shards.format import INDEX_FILE, ShardIndex, ShardInfo, sha256_file

ON_CORRUPT = ("error", "skip")
_PIECE = 1 << 20
_VERIFIED: set[tuple[str, str]] = set()  # (path, sha256) checked in this process (inherited by forked workers)


class CorruptShardError(RuntimeError):
    """A shard is missing, has the wrong size, or its sha256 differs from the index."""


def default_cache_dir(url: str) -> Path:
    """``$DEEPSEEK_CACHE/shards/<sha of the url>`` (``~/.cache/deepseek`` by default, as the bundled datasets'):
    one directory per shard set."""
    from deepseek.data.bundled import default_cache

    return default_cache() / "shards" / hashlib.sha256(url.encode()).hexdigest()[:16]


def _split_url(url: str, storage_options: dict | None) -> tuple[Any, str, bool]:
    """(fsspec filesystem or None, root path, is local)."""
    if "://" not in url or url.startswith("file://"):
        return None, str(Path(url.removeprefix("file://")).expanduser()), True
    import fsspec

    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, root.rstrip("/"), False


def read_text(url: str, name: str, storage_options: dict | None = None) -> str:
    """The text of file ``name`` of the shard set (or split directory) at ``url``; FileNotFoundError naming both."""
    fs, root, local = _split_url(url, storage_options)
    try:
        if local:
            return (Path(root) / name).read_text()
        return fs.cat_file(f"{root}/{name}").decode()
    except FileNotFoundError:
        raise FileNotFoundError(f"'{url}': no {name} (not a shard set written by `deepseek data shard`)") from None


class ShardStorage:
    """The index and the shard files of one shard set, as local Arrow files ready to map.

    ``open_table(n)`` gives shard ``n``'s table (zero-copy over a memory map) and marks it in use until
    ``release(n)``; ``readable`` lists the shard numbers the order may use; ``fetches`` counts the shards this
    process downloaded or decompressed into the cache.
    """

    def __init__(
        self,
        url: str | Path,
        *,
        cache_dir: str | Path | None = None,
        cache_limit: int | None = None,
        on_corrupt: str = "error",
        storage_options: dict | None = None,
    ) -> None:
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"on_corrupt={on_corrupt!r}: expected one of {', '.join(ON_CORRUPT)}")
        if cache_limit is not None and cache_limit <= 0:
            raise ValueError(f"cache_limit={cache_limit}: expected a positive number of bytes or None")
        self.url, self.on_corrupt, self.cache_limit = str(url), on_corrupt, cache_limit
        self.storage_options = storage_options
        self.fs, self.root, self.local = _split_url(self.url, storage_options)
        self.index = ShardIndex.from_json(self._read_text(INDEX_FILE), f"{self.url}/{INDEX_FILE}")
        needs_cache = not self.local or self.index.compression is not None
        self.cache_dir = Path(cache_dir or default_cache_dir(self.url)) if needs_cache else None
        self.fetches = 0
        self._state_init()
        self._shared_init()
        self.readable = self._check_listing()

    def _shared_init(self) -> None:
        # One byte per shard, 1 once its in-place file's sha256 matched, in an anonymous MAP_SHARED page that
        # forked DataLoader workers share with this process: a shard is hashed once for the loader and all
        # the workers of all its epochs, not once per worker per epoch (a spawned worker starts with zeros).
        self._hashed = mmap.mmap(-1, max(1, len(self.index.shards)))

    # -- process-local state (dropped when pickled into a worker) ------------------------------------------
    def _state_init(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._fetching = threading.Lock()  # one fetch at a time per process: evict-then-write stays under the limit
        self._in_use: dict[int, int] = {}  # shard -> open count
        self._maps: dict[int, pa.MemoryMappedFile] = {}
        self._pending: dict[int, Future] = {}
        self._pool: ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict:
        local = ("_lock", "_fetching", "_in_use", "_maps", "_pending", "_pool", "_hashed")
        state = {k: v for k, v in self.__dict__.items() if k not in local}
        state["fs"] = None  # rebuilt from the URL in the new process (fsspec instances hold sockets)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if not self.local:
            self.fs, _, _ = _split_url(self.url, self.storage_options)
        self._state_init()
        self._shared_init()

    # -- listing ---------------------------------------------------------------------------------------------
    def _read_text(self, name: str) -> str:
        return read_text(self.url, name, self.storage_options)

    def _sizes(self) -> dict[str, int]:
        """Stored file name -> size, from one listing of the set's directory."""
        if self.local:
            return {p.name: p.stat().st_size for p in Path(self.root).iterdir() if p.is_file()}
        try:
            listed = {Path(e["name"]).name: e.get("size") for e in self.fs.ls(self.root, detail=True)}
        except (OSError, NotImplementedError):  # https: a server need not list a directory
            listed = {}
        sizes = {}
        for shard in self.index.shards:
            size = listed.get(shard.file)
            if size is None:  # not listed, or listed without a size (an html index): ask for the file (HEAD)
                try:
                    size = self.fs.size(f"{self.root}/{shard.file}")
                except FileNotFoundError:
                    continue
            if size is not None:
                sizes[shard.file] = int(size)
        return sizes

    def _problem(self, shard: ShardInfo, what: str) -> CorruptShardError:
        return CorruptShardError(f"shard '{shard.file}' of '{self.url}': {what}")

    def _check_listing(self) -> list[int]:
        """The shard numbers present with the indexed size (and, to skip corrupt ones, the indexed sha256)."""
        sizes = self._sizes()
        readable = []
        for number, shard in enumerate(self.index.shards):
            size = sizes.get(shard.file)
            if size is None:
                problem = self._problem(shard, "missing")
            elif size != shard.bytes:
                problem = self._problem(shard, f"size {size} bytes where the index says {shard.bytes}")
            elif self.on_corrupt == "skip" and (got := self._stored_sha256(shard)) != shard.sha256:
                problem = self._problem(shard, f"sha256 mismatch (expected {shard.sha256}, got {got})")
            else:
                readable.append(number)
                if self.on_corrupt == "skip" and self.local and self.cache_dir is None:
                    self._hashed[number] = 1  # just hashed in full: in place, not again
                continue
            if self.on_corrupt == "error":
                raise problem
            warnings.warn(f"{problem}; skipping its {shard.samples} samples", stacklevel=4)  # open_shards' caller
        return readable

    def _stored_sha256(self, shard: ShardInfo) -> str:
        if self.local:
            digest = sha256_file(Path(self.root) / shard.file)
            _VERIFIED.add((str(Path(self.root) / shard.file), shard.sha256))  # read once, need not be read again
            return digest
        digest = hashlib.sha256()
        with self.fs.open(f"{self.root}/{shard.file}", "rb") as f:
            while piece := f.read(_PIECE):
                digest.update(piece)
        return digest.hexdigest()

    # -- fetching into the cache ----------------------------------------------------------------------------
    def _cached_path(self, shard: ShardInfo) -> Path:
        # Named by content: a rewritten shard set never reuses a stale cached file.
        return self.cache_dir / f"{shard.raw_sha256[:16]}-{shard.file.removesuffix('.zst')}"  # type: ignore[operator]

    def local_path(self, number: int) -> Path:
        """Shard ``number`` as a local uncompressed Arrow file (fetched into the cache first if needed)."""
        shard = self.index.shards[number]
        if self.cache_dir is None:
            path = Path(self.root) / shard.file
            if not self._hashed[number]:  # hashed by this process, its parent or another of the loader's workers
                self._verify(shard, path, shard.sha256)
                self._hashed[number] = 1
            return path
        return self._fetch(number)

    def _verify(self, shard: ShardInfo, path: Path, expected: str) -> None:
        """sha256 of ``path`` against ``expected``, once per process and file."""
        if (str(path), expected) in _VERIFIED:
            return
        if not path.is_file():
            raise self._problem(shard, "missing")
        got = sha256_file(path)
        if got != expected:
            raise self._problem(shard, f"sha256 mismatch (expected {expected}, got {got})")
        _VERIFIED.add((str(path), expected))

    def _fetch(self, number: int) -> Path:
        """Download / decompress shard ``number`` into the cache unless another process already did."""
        shard = self.index.shards[number]
        final = self._cached_path(shard)
        self.cache_dir.mkdir(parents=True, exist_ok=True)  # type: ignore[union-attr]
        with self._fetching, open(final.with_name(final.name + ".lock"), "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # held while fetching: other processes wait, then find the file
            try:
                if final.is_file() and final.stat().st_size == shard.raw_bytes:
                    os.utime(final)  # most recently used
                    try:
                        self._verify(shard, final, shard.raw_sha256)
                        return final
                    except CorruptShardError:  # the cached copy went bad (disk, a hand edit): fetch it again
                        final.unlink(missing_ok=True)
                self._evict(need=shard.raw_bytes, keep={number})
                self._download(shard, final)
                with self._lock:
                    self.fetches += 1
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return final

    def _download(self, shard: ShardInfo, final: Path) -> None:
        stored = final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.part")
        source = Path(self.root) / shard.file if self.local else None
        try:
            if source is None:  # remote: copy with the stored file's sha256 computed on the way
                digest = hashlib.sha256()
                with self.fs.open(f"{self.root}/{shard.file}", "rb") as src, open(stored, "wb") as dst:
                    while piece := src.read(_PIECE):
                        digest.update(piece)
                        dst.write(piece)
                got = digest.hexdigest()
                source = stored
            else:
                got = sha256_file(source)
            if got != shard.sha256:
                raise self._problem(shard, f"sha256 mismatch (expected {shard.sha256}, got {got})")
            if self.index.compression == "zstd":
                raw = final.with_name(f".{final.name}.{os.getpid()}.{threading.get_ident()}.raw")
                with pa.CompressedInputStream(pa.OSFile(str(source)), "zstd") as src, open(raw, "wb") as dst:
                    while piece := src.read(_PIECE):
                        dst.write(piece)
                stored.unlink(missing_ok=True)
                stored = raw
            elif source is not stored:
                raise AssertionError("an uncompressed local shard is read in place, never cached")
            self._verify(shard, stored, shard.raw_sha256)
            os.replace(stored, final)  # atomic: readers see the whole file or none
            _VERIFIED.add((str(final), shard.raw_sha256))
        finally:
            stored.unlink(missing_ok=True)

    def cached_bytes(self) -> int:
        """Bytes of complete shards in the cache directory."""
        if self.cache_dir is None or not self.cache_dir.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.cache_dir.glob("*.arrow") if not p.name.startswith("."))

    def _evict(self, need: int, keep: set[int]) -> None:
        """Delete least recently used cached shards not in use here until ``need`` more bytes fit the limit.

        A shard another process still has memory-mapped stays readable to it after the unlink: on Linux the
        file's pages live until its last mapping closes. Shards in use in this process are never deleted."""
        if self.cache_limit is None:
            return
        with self._lock:
            busy = {self._cached_path(self.index.shards[n]).name for n in (set(self._in_use) | keep)}
        files = sorted(
            (p for p in self.cache_dir.glob("*.arrow") if not p.name.startswith(".")),  # type: ignore[union-attr]
            key=lambda p: p.stat().st_mtime,
        )
        total = sum(p.stat().st_size for p in files)
        for path in files:
            if total + need <= self.cache_limit:
                return
            if path.name in busy:
                continue
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            total -= size

    def prefetch(self, numbers: Iterable[int]) -> None:
        """Fetch these shards on the background thread (a no-op for shards read in place). A prefetch never
        evicts: it only fetches what fits under ``cache_limit`` beside what is cached."""
        if self.cache_dir is None:
            return
        if self._pid != os.getpid():  # a forked worker: the parent's thread does not exist here
            self._state_init()
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="shard-prefetch")
            self._pending = {n: f for n, f in self._pending.items() if not f.done()}
            for number in numbers:
                if number not in self._pending and number not in self._in_use:
                    self._pending[number] = self._pool.submit(self._prefetch_one, number)

    def _prefetch_one(self, number: int) -> None:
        shard = self.index.shards[number]
        if self._cached_path(shard).is_file():
            return
        if self.cache_limit is not None and self.cached_bytes() + shard.raw_bytes > self.cache_limit:
            return  # no room without evicting: fetched on demand instead
        try:
            self._fetch(number)
        except CorruptShardError:
            pass  # raised again, in the reading thread, when the shard is opened

    # -- opening ---------------------------------------------------------------------------------------------
    def open_table(self, number: int) -> pa.Table:
        """Shard ``number``'s rows as a table over a memory map; in use until :meth:`release`."""
        if self._pid != os.getpid():
            self._state_init()
        with self._lock:
            pending = self._pending.pop(number, None)
            self._in_use[number] = self._in_use.get(number, 0) + 1  # in use before the fetch: not evictable
        try:
            if pending is not None:
                pending.result()
            with self._lock:
                mm = self._maps.get(number)
            if mm is None:
                try:
                    mm = pa.memory_map(str(self.local_path(number)))
                except FileNotFoundError:  # another process evicted it between our fetch and our map
                    mm = pa.memory_map(str(self.local_path(number)))
                with self._lock:
                    mm = self._maps.setdefault(number, mm)
            return pa.ipc.open_file(mm).read_all()
        except BaseException:
            self.release(number)
            raise

    def release(self, number: int) -> None:
        """One use of shard ``number`` ends; at the last, its memory map is closed (its pages leave RSS)."""
        with self._lock:
            count = self._in_use.get(number, 0) - 1
            if count > 0:
                self._in_use[number] = count
                return
            self._in_use.pop(number, None)
            mm = self._maps.pop(number, None)
        if mm is not None:
            mm.close()

    def close(self) -> None:
        """Close every map and stop the prefetch thread."""
        with self._lock:
            pool, self._pool = self._pool, None
            maps, self._maps = list(self._maps.values()), {}
            self._in_use.clear()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        for mm in maps:
            mm.close()
