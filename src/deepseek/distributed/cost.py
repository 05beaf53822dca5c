"""Alpha-beta cost model of collectives: ring, tree, hierarchical and compressed, for 2 to 1,024 ranks.

Time of one collective on ``p`` ranks over ``n`` bytes: ``a * alpha + b * beta + c * gamma``, where
``alpha`` is the latency per message (s), ``beta`` the time per byte on the link (s/B) and ``gamma`` the
time per byte reduced (s/B). :func:`coefficients` gives ``(a, b, c)``, so a fit is linear least squares.

Formulas (``L = ceil(log2 p)``; ``share = (p - 1) / p``):

- all_reduce ``ring`` (reduce-scatter + all-gather): ``2(p-1) alpha + 2 share n beta + share n gamma``;
- all_reduce ``tree``: binomial-tree reduce then binomial-tree broadcast, whole buffer per message, not
  pipelined (MPICH's short-message algorithm): ``2L alpha + 2L n beta + L n gamma``;
- all_reduce ``recursive_doubling`` (Thakur, Rabenseifner, Gropp 2005): ``q = floor(log2 p)`` exchanges of
  the whole buffer, plus 2 extra steps when ``p`` is not a power of two;
- all_reduce ``rabenseifner``: recursive-halving reduce-scatter + recursive-doubling all-gather:
  ``2L alpha + 2 share n beta + share n gamma``;
- reduce_scatter / all_gather ``ring``: ``(p-1) alpha + share n beta`` (+ ``share n gamma`` to reduce).

Not a library: torch.distributed runs collectives but has no model of their cost, and NCCL's internal tuner
(``src/graph/tuning.cc``) is not exposed; this module is the arithmetic of the textbook formulas above.

A :class:`Cluster` has ``g`` GPUs per node with an intra-node link each and ``nics`` network ports per node.
Across nodes, ``inter`` is the per-rank share of the node's network (``g`` ranks sending at once):
``inter.beta = nic.beta * g / nics``. A flat ring across nodes is bounded by the slower of the GPU's link and
the node's whole network (NCCL runs one ring per NIC): ``beta = max(intra.beta, nic.beta / nics)``; flat tree
and recursive doubling use ``inter`` (conservative). Hierarchical all-reduce = intra reduce-scatter over ``g``
+ inter all-reduce of ``n/g`` over ``p/g`` nodes + intra all-gather; it equals the ring when ``g = 1`` or
``g = p``. Gamma is 0 in the GPU presets (reductions run at memory speed, inside NCCL's copy kernels).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

OPS = ("all_reduce", "reduce_scatter", "all_gather", "broadcast", "all_to_all")
ALL_REDUCE_ALGORITHMS = ("ring", "tree", "recursive_doubling", "rabenseifner")


@dataclass(frozen=True)
class Link:
    """One link class's constants: ``alpha`` s per message, ``beta`` s per byte sent, ``gamma`` s per byte reduced."""

    alpha: float
    beta: float
    gamma: float = 0.0


def _log2_ceil(p: int) -> int:
    return max(0, math.ceil(math.log2(p)))


def coefficients(op: str, p: int, nbytes: float, algorithm: str = "ring") -> tuple[float, float, float]:
    """``(a, b, c)`` with time = ``a alpha + b beta + c gamma`` for ``op`` on ``p`` ranks of ``nbytes`` each.

    ``nbytes``: the whole buffer (all-reduce, broadcast), the output (all-gather) or the input (reduce-scatter),
    as nccl-tests counts it. Algorithms: see the module docstring.
    """
    if p < 2:
        return 0.0, 0.0, 0.0
    share = (p - 1) / p
    lg = _log2_ceil(p)
    n = float(nbytes)
    if op == "all_reduce":
        if algorithm == "ring":
            return 2.0 * (p - 1), 2.0 * share * n, share * n
        if algorithm == "tree":
            return 2.0 * lg, 2.0 * lg * n, lg * n
        if algorithm == "recursive_doubling":
            steps = int(math.log2(p)) + (0 if p & (p - 1) == 0 else 2)  # fold the extra ranks in, then out
            return float(steps), steps * n, steps * n
        if algorithm == "rabenseifner":
            return 2.0 * lg, 2.0 * share * n, share * n
    if op == "reduce_scatter" and algorithm in ("ring", "recursive_halving"):
        return float(p - 1 if algorithm == "ring" else lg), share * n, share * n
    if op == "all_gather" and algorithm in ("ring", "recursive_doubling"):
        return float(p - 1 if algorithm == "ring" else lg), share * n, 0.0
    if op == "all_to_all" and algorithm == "ring":
        return float(p - 1), share * n, 0.0
    if op == "broadcast" and algorithm == "ring":  # pipelined ring (chain): latency p-1, one pass of the bytes
        return float(p - 1), n, 0.0
    if op == "broadcast" and algorithm == "tree":
        return float(lg), lg * n, 0.0
    raise ValueError(f"op/algorithm: {op}/{algorithm}; allowed: all_reduce/{'|'.join(ALL_REDUCE_ALGORITHMS)}, "
                     "reduce_scatter/ring|recursive_halving, all_gather/ring|recursive_doubling, "
                     "broadcast/ring|tree, all_to_all/ring")  # fmt: skip


def predict(op: str, p: int, nbytes: float, link: Link, algorithm: str = "ring") -> float:
    """Predicted seconds of one collective: :func:`coefficients` dotted with ``link``'s constants."""
    a, b, c = coefficients(op, p, nbytes, algorithm)
    return a * link.alpha + b * link.beta + c * link.gamma


def _check_groups(p: int, g: int) -> int:
    if g < 1 or p < 1 or p % g:
        raise ValueError(f"ranks per node g: {g} for p={p} ranks; allowed: a divisor of p (p = nodes x g)")
    return p // g


def hierarchical_all_reduce(p: int, g: int, nbytes: float, intra: Link, inter: Link,
                            inter_algorithm: str = "ring", inter_ratio: float = 1.0) -> float:  # fmt: skip
    """Seconds of a two-level all-reduce: intra reduce-scatter over ``g`` ranks, inter all-reduce of
    ``n/g`` bytes (times ``inter_ratio``, <1 for compression on the network only) over ``p/g`` nodes, intra
    all-gather. ``inter`` is the per-rank share of the network: the ``g`` inter all-reduces run at once."""
    nodes = _check_groups(p, g)
    return (predict("reduce_scatter", g, nbytes, intra) + predict("all_gather", g, nbytes, intra)
            + predict("all_reduce", nodes, nbytes / g * inter_ratio, inter, inter_algorithm))  # fmt: skip


def hierarchical_reduce_scatter(p: int, g: int, nbytes: float, intra: Link, inter: Link) -> float:
    """FSDP's gradient reduce-scatter in two levels: intra over ``g`` on ``n``, then inter over ``p/g`` on ``n/g``."""
    nodes = _check_groups(p, g)
    return predict("reduce_scatter", g, nbytes, intra) + predict("reduce_scatter", nodes, nbytes / g, inter)


def hierarchical_all_gather(p: int, g: int, nbytes: float, intra: Link, inter: Link) -> float:
    """FSDP's parameter all-gather in two levels: inter over ``p/g`` nodes on ``n/g``, then intra over ``g`` on ``n``."""
    nodes = _check_groups(p, g)
    return predict("all_gather", nodes, nbytes / g, inter) + predict("all_gather", g, nbytes, intra)


def powersgd_bytes(shapes: list[tuple[int, ...]], rank: int, element_size: int = 4,
                   min_compression_rate: float = 2.0) -> tuple[int, int, int]:  # fmt: skip
    """``(p_bytes, q_bytes, uncompressed_bytes)`` PowerSGD all-reduces for gradients of ``shapes``.

    As torch's ``powerSGD_hook``: a tensor of >= 2 dims is viewed as ``(shape[0], rest)`` = ``(m, k)`` and
    compressed to ``P (m, r)`` + ``Q (k, r)`` when ``(m + k) r * min_compression_rate < m k``; 1-D tensors and
    matrices too small to gain stay uncompressed (all-reduced whole).
    """
    if rank < 1:
        raise ValueError(f"powersgd rank: {rank}; allowed: an integer >= 1")
    p_elems = q_elems = plain = 0
    for shape in shapes:
        numel = math.prod(shape)
        if len(shape) >= 2:
            m, k = shape[0], numel // max(shape[0], 1)
            if (m + k) * rank * min_compression_rate < m * k:
                p_elems, q_elems = p_elems + m * rank, q_elems + k * rank
                continue
        plain += numel
    return p_elems * element_size, q_elems * element_size, plain * element_size


@dataclass(frozen=True)
class Cluster:
    """``gpus_per_node`` GPUs on ``intra`` links, ``nics_per_node`` ports of ``nic`` to the network."""

    name: str
    intra: Link
    nic: Link
    gpus_per_node: int
    nics_per_node: int
    source: str

    @property
    def inter(self) -> Link:
        """The per-rank share of the node's network when all ``g`` ranks send at once."""
        return replace(self.nic, beta=self.nic.beta * self.gpus_per_node / self.nics_per_node)

    def ranks_per_node(self, p: int) -> int:
        """``g`` for ``p`` ranks: all of them when they fit one node; else ``p`` must fill whole nodes."""
        if p <= self.gpus_per_node:
            return p
        _check_groups(p, self.gpus_per_node)
        return self.gpus_per_node

    def flat_link(self, p: int, algorithm: str = "ring") -> Link:
        """The link a flat (one-level) collective over ``p`` ranks runs at: see the module docstring."""
        if p <= self.gpus_per_node:
            return self.intra
        beta = max(self.intra.beta, self.nic.beta / self.nics_per_node) if algorithm in ("ring", "rabenseifner") \
            else max(self.intra.beta, self.inter.beta)  # fmt: skip
        return Link(max(self.intra.alpha, self.nic.alpha), beta, max(self.intra.gamma, self.nic.gamma))


def collective_time(cluster: Cluster, op: str, p: int, nbytes: float, algorithm: str = "ring",
                    hierarchical: bool = False, inter_ratio: float = 1.0) -> float:  # fmt: skip
    """Seconds of ``op`` (all_reduce, reduce_scatter, all_gather) on ``p`` ranks of ``cluster``; ``inter_ratio``
    scales the bytes sent between nodes (hierarchical) or all bytes (flat), for fp16/bf16 (0.5) compression."""
    if not hierarchical:
        return predict(op, p, nbytes * inter_ratio, cluster.flat_link(p, algorithm), algorithm)
    g = cluster.ranks_per_node(p)
    if op == "all_reduce":
        return hierarchical_all_reduce(p, g, nbytes, cluster.intra, cluster.inter, algorithm, inter_ratio)
    if op == "reduce_scatter":
        return hierarchical_reduce_scatter(p, g, nbytes, cluster.intra, cluster.inter)
    if op == "all_gather":
        return hierarchical_all_gather(p, g, nbytes, cluster.intra, cluster.inter)
    raise ValueError(f"op: {op}; allowed with hierarchical: all_reduce, reduce_scatter, all_gather")


_NCCL_LAT = "NCCL src/graph/tuning.cc hwLat, Ring/LL128 per-step latency"
# Per GPU (intra) or per port (nic), one direction: (bytes/s, alpha s, source)
LINKS: dict[str, tuple[float, float, str]] = {
    "nvlink3": (300e9, 1.9e-6, "NVIDIA A100 Tensor Core GPU datasheet: NVLink 600 GB/s (both directions); "
                f"alpha {_NCCL_LAT} NVLink 1.9 us"),
    "nvlink4": (450e9, 1.9e-6, "NVIDIA H100 Tensor Core GPU datasheet (SXM): NVLink 900 GB/s (both directions); "
                f"alpha {_NCCL_LAT} NVLink 1.9 us"),
    "pcie4": (31.5e9, 2.5e-6, "PCI-SIG PCI Express Base Specification 4.0: 16 GT/s x16, 128b/130b = 31.5 GB/s "
              f"per direction; alpha {_NCCL_LAT} PCI 2.5 us"),
    "ib-hdr": (25e9, 4.0e-6, "NVIDIA ConnectX-6 VPI adapter product brief: HDR InfiniBand 200 Gb/s per port; "
               f"alpha {_NCCL_LAT} NET 4.0 us"),
    "ib-ndr": (50e9, 4.0e-6, "NVIDIA ConnectX-7 adapter product brief: NDR InfiniBand 400 Gb/s per port; "
               f"alpha {_NCCL_LAT} NET 4.0 us"),
    "roce-100g": (12.5e9, 4.0e-6, f"IEEE 802.3 100GBASE Ethernet, 100 Gb/s (RoCE v2); alpha {_NCCL_LAT} NET 4.0 us"),
    "eth-25g": (3.125e9, 4.0e-6, f"IEEE 802.3by 25GBASE Ethernet, 25 Gb/s; alpha {_NCCL_LAT} NET 4.0 us (RDMA)"),
}
# name: (intra, nic, gpus per node, nics per node, node source)
CLUSTERS: dict[str, tuple[str, str, int, int, str]] = {
    "dgx-a100": ("nvlink3", "ib-hdr", 8, 8, "NVIDIA DGX A100 datasheet/user guide: 8x A100 on NVSwitch, "
                 "8x single-port ConnectX-6 HDR 200 Gb/s for compute"),
    "dgx-h100": ("nvlink4", "ib-ndr", 8, 8, "NVIDIA DGX H100 datasheet/user guide: 8x H100 on NVSwitch, "
                 "8x ConnectX-7 NDR 400 Gb/s for compute"),
    "a100-hdr-1nic": ("nvlink3", "ib-hdr", 8, 1, "8x A100 SXM (NVSwitch) with one HDR 200 Gb/s port per node"),
    "pcie4-roce100": ("pcie4", "roce-100g", 8, 1, "8 PCIe 4.0 GPUs per node, one 100 GbE RoCE port per node"),
    "pcie4-25gbe": ("pcie4", "eth-25g", 8, 1, "8 PCIe 4.0 GPUs per node, one 25 GbE port per node"),
}


def _link(name: str) -> Link:
    bandwidth, alpha, _ = LINKS[name]
    return Link(alpha=alpha, beta=1.0 / bandwidth)


def preset(name: str) -> Cluster:
    """The preset cluster ``name`` (see :data:`CLUSTERS`)."""
    if name not in CLUSTERS:
        raise ValueError(f"interconnect: {name!r}; allowed: {', '.join(CLUSTERS)}, local:ALPHA,BETA[,GAMMA] "
                         "or a JSON file from `deepseek comm bench --json`")  # fmt: skip
    intra, nic, g, nics, source = CLUSTERS[name]
    return Cluster(name, _link(intra), _link(nic), g, nics,
                   f"{source}; intra: {LINKS[intra][2]}; network: {LINKS[nic][2]}")  # fmt: skip


def local_cluster(link: Link, source: str = "fitted constants of this machine") -> Cluster:
    """One link class for every pair of ranks (``g = 1``: every rank its own node, so hierarchical = ring)."""
    for key, value in (("alpha", link.alpha), ("beta", link.beta), ("gamma", link.gamma)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{key}: {value}; allowed: a finite number >= 0")
    return Cluster("local", link, link, 1, 1, source)


def cluster_from_spec(spec: str) -> Cluster:
    """A preset name, ``local:ALPHA,BETA[,GAMMA]`` (seconds, s/B, s/B) or a JSON file (``[local:]PATH``) with keys ``alpha``,
    ``beta``, ``gamma``, ``world``, ``backend`` (what ``deepseek comm bench --json`` writes)."""
    if spec.startswith("local:") and not Path(spec[len("local:"):]).is_file():
        parts = spec[len("local:"):].split(",")
        try:
            values = [float(v) for v in parts]
        except ValueError:
            values = []
        if len(values) not in (2, 3):
            raise ValueError(f"interconnect: {spec!r}; allowed: local:ALPHA,BETA[,GAMMA] with numbers "
                             "(s, s/B, s/B)")  # fmt: skip
        return local_cluster(Link(*values))
    path = Path(spec[len("local:"):] if spec.startswith("local:") else spec)
    if spec.endswith(".json") or path.is_file():
        try:
            data = json.loads(path.read_text())
            link = Link(float(data["alpha"]), float(data["beta"]), float(data.get("gamma", 0.0)))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"interconnect: {spec!r} is not a readable JSON object with alpha, beta, gamma "
                             f"({type(exc).__name__}); allowed: the file `deepseek comm bench --json` writes") from None
        return local_cluster(link, f"fitted on {data.get('world', '?')} ranks, {data.get('backend', '?')} ({spec})")
    return preset(spec)


DDP_FIRST_BUCKET = 1024 * 1024  # torch.distributed's _DEFAULT_FIRST_BUCKET_BYTES
DDP_BUCKET = 25 * 1024 * 1024  # DistributedDataParallel's bucket_cap_mb=25
MODES = ("ring", "tree", "hierarchical", "hierarchical+bf16", "bf16", "powersgd")
HIDDEN_TOLERANCE = 0.01  # "hidden": the exposed communication adds at most 1% to the step


@dataclass(frozen=True)
class CommRow:
    """One mode's step: ``comm_s`` all buckets back to back; ``share`` = comm / (compute + comm) without
    overlap; ``exposed_s`` the communication left after the backward pass with overlap; ``hidden`` when overlap
    hides it: what stays exposed lengthens the step by at most :data:`HIDDEN_TOLERANCE` of the compute."""

    mode: str
    comm_s: float
    share: float
    exposed_s: float
    step_s: float
    hidden: bool


def ddp_buckets(grad_bytes: int, bucket_bytes: int = DDP_BUCKET, first_bytes: int = DDP_FIRST_BUCKET) -> list[int]:
    """DDP's bucket sizes in the order their gradients become ready: a small first bucket, then full ones."""
    if grad_bytes <= 0:
        return []
    sizes = [min(first_bytes, grad_bytes)]
    rest = grad_bytes - sizes[0]
    while rest > 0:
        sizes.append(min(bucket_bytes, rest))
        rest -= sizes[-1]
    return sizes


def overlap(bucket_s: list[float], bucket_bytes: list[int], backward_s: float) -> float:
    """Seconds the communication runs past the end of the backward pass (exposed), one bucket at a time.

    Assumption (DDP): gradients become ready at a constant rate over ``backward_s``; bucket ``i`` is
    all-reduced once its last gradient is ready and the previous bucket is done (one communication stream).
    """
    total, ready, finish = sum(bucket_bytes), 0, 0.0
    for seconds, size in zip(bucket_s, bucket_bytes):
        ready += size
        finish = max(finish, backward_s * ready / total) + seconds
    return max(0.0, finish - backward_s)


def _mode_time(mode: str, cluster: Cluster, p: int, nbytes: float, fraction: float,
               powersgd: tuple[int, int, int] | None) -> float:  # fmt: skip
    if mode in ("ring", "tree"):
        return collective_time(cluster, "all_reduce", p, nbytes, mode)
    if mode == "hierarchical":
        return collective_time(cluster, "all_reduce", p, nbytes, hierarchical=True)
    if mode == "hierarchical+bf16":  # fp32 within the node, bf16 on the network (inter_node_only)
        return collective_time(cluster, "all_reduce", p, nbytes, hierarchical=True, inter_ratio=0.5)
    if mode in ("bf16", "fp16"):
        return collective_time(cluster, "all_reduce", p, nbytes, inter_ratio=0.5)
    if mode == "powersgd":  # three all-reduces per bucket: uncompressed tensors, then P, then Q
        if powersgd is None:
            raise ValueError("mode: powersgd needs the gradient shapes; allowed: pass shapes=[...]")
        return sum(collective_time(cluster, "all_reduce", p, part * fraction) for part in powersgd if part)
    raise ValueError(f"mode: {mode!r}; allowed: {', '.join(MODES)}, fp16")


def comm_report(grad_bytes: int, world: int, cluster: Cluster, compute_s: float, backward_fraction: float = 2 / 3,
                modes: tuple[str, ...] = MODES, shapes: list[tuple[int, ...]] | None = None, powersgd_rank: int = 4,
                bucket_bytes: int = DDP_BUCKET, element_size: int = 4) -> list[CommRow]:  # fmt: skip
    """One :class:`CommRow` per mode for a data-parallel step on ``world`` ranks of ``cluster``.

    ``grad_bytes``: the gradients all-reduced per step; ``compute_s``: forward + backward + optimizer of one
    step on one rank; ``backward_fraction`` of it is the backward pass the all-reduces can overlap with.
    """
    if compute_s < 0 or not 0 <= backward_fraction <= 1:
        raise ValueError(f"compute_s / backward_fraction: {compute_s} / {backward_fraction}; allowed: >= 0 / 0..1")
    cluster.ranks_per_node(world)  # a world that does not fill whole nodes: one line, before any arithmetic
    sizes = ddp_buckets(grad_bytes, bucket_bytes)
    psgd = powersgd_bytes(shapes, powersgd_rank, element_size) if shapes is not None else None
    rows = []
    for mode in modes:
        if mode == "powersgd" and psgd is None:
            continue
        times = [_mode_time(mode, cluster, world, size, size / grad_bytes, psgd) for size in sizes]
        comm = sum(times)
        exposed = overlap(times, sizes, backward_fraction * compute_s)
        total = compute_s + comm
        rows.append(CommRow(mode, comm, comm / total if total > 0 else 0.0, exposed, compute_s + exposed,
                            exposed <= HIDDEN_TOLERANCE * compute_s))  # fmt: skip
    return rows
