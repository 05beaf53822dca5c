"""DDP communication hooks: follow a :class:`~deepseek.distributed.topology.Topology`, compress, time and count.

``CommHook(topology, compression, ...)``, installed with :meth:`CommHook.install` (``ddp.register_comm_hook``),
averages each gradient bucket over the ranks (sum / world):

- ``compression="none"``: ring mode is an async ``dist.all_reduce`` (DDP overlaps it with backward as with its
  built-in path); tree and hybrid run :meth:`Topology.all_reduce` (blocking, see there).
- ``"fp16"`` / ``"bf16"``: the bucket (already divided by the world) plus this rank's *residual* is cast, the
  cast's rounding error becomes the next residual (error feedback), the cast buffer is all-reduced and cast
  back. Written here because torch's ``fp16_compress_hook``/``bf16_compress_hook`` have no error feedback.
- ``"powersgd"``: torch's ``PowerSGDState`` + ``powerSGD_hook`` (error feedback and warm start on), rank
  ``powersgd_rank``, plain all-reduce for the first ``start_iter`` iterations (torch's ``start_powerSGD_iter``).
  Its all-reduces of P, Q and the uncompressed tensors are flat over the topology's group. The hook waits for
  torch's future (see ``_wait_into``), so PowerSGD's communication does not overlap the rest of backward.
- ``inter_node_only=True`` (hybrid only): the legs inside a node stay fp32, only the inter-node leg is compressed.
  fp16/bf16: the reduce-scattered shard is compressed (residual per shard) before the tree across nodes.
  PowerSGD: reduce to each node's leader (fp32), the leaders run torch's hook over the leaders' group on the
  node's sum divided by ``ring_size`` (so torch's division by the node count gives the world mean), broadcast
  inside the node; only leaders send across nodes, and only P, Q and the uncompressed tensors.

Accounting (:meth:`CommHook.pop_step_stats`): ``seconds`` = length of the union of every bucket's
[hook called, result ready] interval (wall time with gradient communication in flight); ``bytes`` = bytes this
rank sent, by :meth:`Topology.bytes_sent` applied to what each leg actually carries; ``bytes_uncompressed`` =
the same for fp32 buckets without compression; ``bytes_inter`` (and its uncompressed twin): the part of them sent
to a rank on another node.

State (:meth:`CommHook.state_dict`): residuals, PowerSGD's ``error_dict``/``p_memory_dict``/``q_memory_dict``
(per parameter, see :mod:`deepseek.distributed.compression`: bucket layouts differ between an uninterrupted and
a resumed run), PowerSGD's ``iter`` and numpy RNG; plain tensors/ints/floats/str so that
``torch.load(weights_only=True)`` reads it. Every rank saves its own (residuals differ per rank). With
``inter_node_only`` fp16/bf16 a rank's residual covers only its shard, and which rank owns an element changes with
the bucket layout, so whenever per-bucket residuals become per-parameter ones (layout change, ``state_dict``) they
are summed over the node (the shards are disjoint: the union); ``state_dict`` is then a collective in the node.
"""

from __future__ import annotations

import threading
import time
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

from deepseek.distributed.compression import (
    BucketStates,
    Layout,
    flat_pieces,
    powersgd_pieces,
    rng_state,
    set_rng_state,
)
from deepseek.distributed.counts import CommCounts
from deepseek.distributed.topology import Topology

COMPRESSIONS = ("none", "fp16", "bf16", "powersgd")
_FOLD_AT = 1024  # intervals kept before the oldest are folded into a running total
_CAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


class CommHook:
    """A DDP communication hook (see the module docstring). One instance per DDP model and rank; constructing it
    runs ``topology.setup()`` (a collective on every rank) if that has not run yet."""

    def __init__(self, topology: Topology | None = None, compression: str = "none", powersgd_rank: int = 2,
                 inter_node_only: bool = False, start_iter: int = 2, min_compression_rate: float = 2.0,
                 seed: int = 0) -> None:
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression: {compression!r}; allowed: {', '.join(COMPRESSIONS)}")
        if isinstance(powersgd_rank, bool) or not isinstance(powersgd_rank, int) or powersgd_rank < 1:
            raise ValueError(f"powersgd_rank: {powersgd_rank!r}; allowed: an integer >= 1")
        if compression == "powersgd" and (isinstance(start_iter, bool) or not isinstance(start_iter, int)
                                          or start_iter < 2):
            raise ValueError(f"start_iter: {start_iter!r}; allowed: an integer >= 2 (PowerSGD's error feedback and "
                             "warm start need DDP's first iterations uncompressed)")
        self.topology = (topology or Topology("ring")).setup()
        if inter_node_only and (self.topology.mode != "hybrid" or compression == "none"):
            raise ValueError(f"inter_node_only: True with mode {self.topology.mode!r} and compression "
                             f"{compression!r}; allowed: only with mode 'hybrid' and a compression")
        self.compression, self.inter_node_only = compression, inter_node_only
        self.residuals: dict[int, torch.Tensor] = {}
        fields: dict[str, Any] = {"residual": (self.residuals, flat_pieces)}
        self.powersgd: psgd.PowerSGDState | None = None
        if compression == "powersgd":
            t = self.topology
            group = t.inter_group if inter_node_only else t.group
            self.powersgd = psgd.PowerSGDState(process_group=group, matrix_approximation_rank=powersgd_rank,
                                               start_powerSGD_iter=start_iter, min_compression_rate=min_compression_rate,
                                               use_error_feedback=True, warm_start=True, random_seed=seed)
            s = self.powersgd
            fields = {"error": (s.error_dict, flat_pieces),
                      "p": (s.p_memory_dict, partial(powersgd_pieces, rank=powersgd_rank,
                                                     min_compression_rate=min_compression_rate, which="p")),
                      "q": (s.q_memory_dict, partial(powersgd_pieces, rank=powersgd_rank,
                                                     min_compression_rate=min_compression_rate, which="q"))}
        # inter_node_only fp16/bf16: a rank's residual covers only its shard, and which rank holds an element's shard
        # changes with the bucket layout; the stored (per-parameter) residuals are therefore the node's union
        self.states = BucketStates(fields, self._node_union if inter_node_only and compression != "powersgd" else None)
        self._names: dict[int, str] = {}
        self._lock = threading.Lock()
        self._intervals: list[tuple[float, float]] = []
        self._folded_s, self._reach = 0.0, float("-inf")  # union length so far and its end (see _fold)
        self._counts = CommCounts()

    # ---- installation and the hook -------------------------------------------------------------------------
    def install(self, ddp_module: torch.nn.parallel.DistributedDataParallel) -> CommHook:
        """Register this hook on ``ddp_module`` (once, before its first backward)."""
        self._names = {id(p): name for name, p in ddp_module.module.named_parameters()}
        ddp_module.register_comm_hook(self, _comm_hook)
        return self

    def __call__(self, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
        start = time.perf_counter()
        buf = bucket.buffer()
        plain = self.topology.bytes_sent(buf.numel() * 4)
        if self.compression == "none":
            fut, sent = self._plain(buf), plain
        elif self.compression == "powersgd":
            fut, sent = self._powersgd(bucket)
        else:
            fut, sent = self._cast(bucket)
        return fut.then(partial(self._finished, start, sent, plain))

    def _finished(self, start: float, sent: dict[str, int], plain: dict[str, int],
                  fut: torch.futures.Future) -> torch.Tensor:  # fmt: skip
        end = time.perf_counter()
        with self._lock:
            self._intervals.append((start, end))
            if len(self._intervals) > _FOLD_AT:  # a rank that never pops (not the main one) stays bounded
                self._fold(keep=_FOLD_AT // 2)
            self._counts.add(sent, plain)
        return fut.value()

    def _plain(self, buf: torch.Tensor) -> torch.futures.Future:
        buf.div_(self.topology.world)
        if self.topology.mode == "ring":
            return dist.all_reduce(buf, group=self.topology.group, async_op=True).get_future().then(
                lambda f: f.value()[0])
        return _done(self.topology.all_reduce(buf))

    def _layout(self, bucket: dist.GradBucket) -> Layout:
        params = bucket.parameters()
        return tuple(self._names.get(id(p), f"#{id(p)}") for p in params), tuple(p.shape for p in params)

    # ---- fp16 / bf16 with error feedback ---------------------------------------------------------------------
    def _cast(self, bucket: dist.GradBucket) -> tuple[torch.futures.Future, dict[str, int]]:
        t, dtype, buf = self.topology, _CAST[self.compression], bucket.buffer()
        index, n = bucket.index(), buf.numel()
        buf.div_(t.world)
        if self.inter_node_only:
            shard, padded = t.reduce_scatter_intra(buf)
            assembled = self.states.prepare(index, self._layout(bucket), {"residual": padded.numel()})
            at = t.local_rank * shard.numel()
            whole = self._residual(index, padded.numel(), buf)
            if assembled:  # from the node's union: keep only this rank's shard
                whole[:at].zero_()
                whole[at + shard.numel():].zero_()
            residual = whole[at:at + shard.numel()]
            low = _compress(shard, residual, dtype)
            t.tree_all_reduce(low)
            t.all_gather_intra(low.to(buf.dtype), padded, buf)
            fp32, half = t.bytes_sent(n * 4), t.bytes_sent(n * low.element_size(), low.element_size())
            return _done(buf), {"intra": fp32["intra"], "inter": half["inter"]}
        self.states.prepare(index, self._layout(bucket))
        low = _compress(buf, self._residual(index, n, buf), dtype)
        sent = t.bytes_sent(n * low.element_size(), low.element_size())
        if t.mode == "ring":
            fut = dist.all_reduce(low, group=t.group, async_op=True).get_future()
            return fut.then(lambda f: buf.copy_(f.value()[0])), sent
        t.all_reduce(low)
        return _done(buf.copy_(low)), sent

    def _residual(self, index: int, length: int, like: torch.Tensor) -> torch.Tensor:
        if index not in self.residuals:
            self.residuals[index] = torch.zeros(length, dtype=like.dtype, device=like.device)
        return self.residuals[index]

    # ---- PowerSGD ------------------------------------------------------------------------------------------------
    def _powersgd(self, bucket: dist.GradBucket) -> tuple[torch.futures.Future, dict[str, int]]:
        t, state, buf = self.topology, self.powersgd, bucket.buffer()
        assert state is not None
        n = buf.numel()
        if not self.inter_node_only:
            layout = self._layout(bucket)
            self.states.prepare(bucket.index(), layout)
            group_world = t.world
            sent = _ring_bytes(self._powersgd_numel(layout, n) * 4, group_world)
            across = t.nodes > 1 and t.local_rank == t.ring_size - 1
            _wait_into(buf, psgd.powerSGD_hook(state, bucket))
            return _done(buf), {"intra": 0 if across else sent, "inter": sent if across else 0}
        t.reduce_to_leader(buf)
        inter = 0
        if t.is_leader:
            buf.div_(t.ring_size)
            layout = self._layout(bucket)
            self.states.prepare(bucket.index(), layout)
            inter = _ring_bytes(self._powersgd_numel(layout, n) * 4, t.nodes)
            _wait_into(buf, psgd.powerSGD_hook(state, bucket))
        t.broadcast_from_leader(buf)
        intra = (t.ring_size - 1) * n * 4 if t.is_leader else n * 4
        return _done(buf), {"intra": intra, "inter": inter}

    def _powersgd_numel(self, layout: Layout, n: int) -> int:
        """Elements PowerSGD all-reduces for this bucket now: the whole bucket before ``start_iter``, else the
        uncompressed gradients plus P and Q."""
        state = self.powersgd
        assert state is not None
        if state.iter < state.start_powerSGD_iter:
            return n
        rank, rate = state.matrix_approximation_rank, state.min_compression_rate
        p = powersgd_pieces(layout, rank, rate, "p")
        q = powersgd_pieces(layout, rank, rate, "q")
        compressed = {name for name, _ in p}
        uncompressed = sum(s.numel() for name, s in zip(*layout) if name not in compressed)
        return uncompressed + sum(k for _, k in p) + sum(k for _, k in q)

    # ---- accounting and state --------------------------------------------------------------------------------
    def pop_step_stats(self) -> dict[str, float | int]:
        """``{"seconds", "bytes", "bytes_uncompressed", "bytes_inter", "bytes_inter_uncompressed", "calls"}`` since
        the last pop (see the module docstring; ``bytes_inter``: the part sent to another node)."""
        with self._lock:
            self._fold(keep=0)
            seconds, self._folded_s = self._folded_s, 0.0
            return self._counts.pop(seconds)

    def _fold(self, keep: int) -> None:
        """Add the length of the union of all but the newest ``keep`` intervals to ``_folded_s`` and drop them
        (under the lock). ``_reach``, the end of the union so far, keeps a later overlapping interval from
        counting its overlap twice."""
        self._intervals.sort()
        cut = len(self._intervals) - keep
        for start, end in self._intervals[:cut]:
            if end > self._reach:
                self._folded_s += end - max(start, self._reach)
                self._reach = end
        del self._intervals[:cut]

    def _node_union(self, pieces: dict[str, torch.Tensor]) -> None:
        """Sum each piece over the node (in place): the ranks' shard residuals are disjoint, so this is their union.
        A collective over the intra-node group: it runs at the same bucket on every rank (same layouts)."""
        names = sorted(pieces)
        flat = torch.cat([pieces[n].reshape(-1) for n in names])
        dist.all_reduce(flat, group=self.topology.intra_group)
        at = 0
        for n in names:
            pieces[n] = flat[at:at + pieces[n].numel()]
            at += pieces[n].numel()

    def state_dict(self) -> dict[str, Any]:
        """This rank's hook state as tensors/ints/floats/str, keyed per parameter name. With inter_node_only and
        fp16/bf16 a collective over the node (every rank calls it): the residuals saved are the node's union."""
        if self.states.merge is not None:
            self.states.flush()
        out: dict[str, Any] = {"compression": self.compression, "inter_node_only": int(self.inter_node_only),
                               **self.states.per_parameter()}
        if self.powersgd is not None:
            out["iter"] = int(self.powersgd.iter)
            out["rng"] = rng_state(self.powersgd.rng)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (same compression and inter_node_only, else ValueError)."""
        mine = (self.compression, int(self.inter_node_only))
        theirs = (state.get("compression"), state.get("inter_node_only"))
        if theirs != mine:
            raise ValueError(f"hook state: compression/inter_node_only {theirs}; allowed: {mine} (this hook's)")
        self.states.load({k: v for k, v in state.items() if isinstance(v, dict) and k != "rng"})
        if self.powersgd is not None:
            self.powersgd.iter = int(state["iter"])
            set_rng_state(self.powersgd.rng, state["rng"])


def _comm_hook(hook, bucket):  # noqa: ANN001, ANN202 - DDP checks annotations by value; strings (PEP 563) fail
    return hook(bucket)


def _compress(values: torch.Tensor, residual: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``values + residual`` cast to ``dtype``; ``residual`` becomes the cast's error (in place)."""
    corrected = values + residual
    low = corrected.to(dtype)
    residual.copy_(corrected - low.to(corrected.dtype))
    return low


def _wait_into(buf: torch.Tensor, fut: torch.futures.Future) -> None:
    """Wait for torch's PowerSGD future here, in the hook: its callbacks issue the P and Q all-reduces, and with
    the next bucket's collectives issued meanwhile from the backward thread the ranks' orders would differ."""
    result = fut.wait()
    if result is not buf:
        buf.copy_(result)


def _done(tensor: torch.Tensor) -> torch.futures.Future:
    fut: torch.futures.Future = torch.futures.Future()
    fut.set_result(tensor)
    return fut


def _ring_bytes(nbytes: int, p: int) -> int:
    return -(-2 * (p - 1) * nbytes // p) if p > 1 else 0
