"""Peak FLOP/s of a device for a dtype: the denominator of MFU (model FLOPs utilisation).

A declared peak always wins. CUDA: dense (no 2:4 sparsity) tensor-core / CUDA-core throughputs from the vendor
datasheets, looked up by device name. CPU: ``cores x SIMD lanes x FMA units x 2 x clock``, from the flags in
``/proc/cpuinfo`` and the maximum clock; every factor is spelled out in :attr:`Peak.how`. No library offers
such a table (torch does not), so it is kept here by hand.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

T = 1e12
# Dense TFLOP/s by dtype key: fp32 (CUDA cores), tf32, bf16, fp16 (tensor cores, fp32 accumulate). Sources: NVIDIA
# datasheets: A100 (2021), H100 (SXM / PCIe / NVL, 2023; the sheets print sparse numbers, halved here), H200 (2024,
# same compute as H100 SXM; NVL as H100 NVL), L4 (2023), L40S (2023), A10 (2021), V100 (2020, no bf16/tf32),
# T4 (2019, fp16 "mixed precision"), Ada whitepaper for the RTX 4090 (fp16/bf16 with fp32 accumulate), Ampere GA102
# whitepaper for the RTX 3090. First matching pattern wins: more specific names first.
GPU_PEAKS: list[tuple[str, dict[str, float]]] = [
    (r"H200 NVL", {"fp32": 60, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5}),
    (r"H200", {"fp32": 67, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}),
    (r"H100 NVL", {"fp32": 60, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5}),
    (r"H100 PCIe", {"fp32": 51, "tf32": 378, "bf16": 756, "fp16": 756}),
    (r"H100", {"fp32": 67, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}),  # SXM5 (e.g. "H100 80GB HBM3")
    (r"A100", {"fp32": 19.5, "tf32": 156, "bf16": 312, "fp16": 312}),
    (r"L40S", {"fp32": 91.6, "tf32": 183, "bf16": 362.05, "fp16": 362.05}),
    (r"\bL4\b", {"fp32": 30.3, "tf32": 60, "bf16": 121, "fp16": 121}),
    (r"\bA10\b", {"fp32": 31.2, "tf32": 62.5, "bf16": 125, "fp16": 125}),
    (r"V100.*PCIE|V100S?-PCIE", {"fp32": 14, "fp16": 112}),
    (r"V100", {"fp32": 15.7, "fp16": 125}),  # SXM2
    (r"\bT4\b", {"fp32": 8.1, "fp16": 65}),
    (r"RTX 4090", {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2, "fp16": 165.2}),
    (r"RTX 3090", {"fp32": 35.6, "tf32": 35.6, "bf16": 71, "fp16": 71}),
]
_DTYPE_KEYS = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class Peak:
    """``flops_per_s`` None when unknown; ``how`` says where the number comes from, with the arithmetic."""

    flops_per_s: float | None
    device: str
    dtype: str
    how: str


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def gpu_peak(name: str, dtype: torch.dtype, *, tf32: bool = False) -> Peak:
    """Table lookup for a CUDA device called ``name``; ``tf32`` (fp32 matmuls on tensor cores) for fp32."""
    key = _DTYPE_KEYS.get(dtype)
    if key == "fp32" and tf32:
        key = "tf32"
    for pattern, peaks in GPU_PEAKS:
        if re.search(pattern, name, flags=re.IGNORECASE):
            if key is None or key not in peaks:
                return Peak(None, name, _dtype_name(dtype), f"{name} has no {key or _dtype_name(dtype)} peak in the "
                            "table: pass --peak-tflops")  # fmt: skip
            return Peak(peaks[key] * T, name, _dtype_name(dtype), f"{name} {key} dense peak {peaks[key]} TFLOP/s "
                        f"(vendor datasheet, matched {pattern!r})")  # fmt: skip
    return Peak(None, name, _dtype_name(dtype), f"unknown GPU {name}: pass --peak-tflops")


def parse_cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first processor in ``/proc/cpuinfo`` text ("flags" on x86, "Features" on Arm)."""
    match = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", cpuinfo, flags=re.MULTILINE)
    return set(match.group(1).split()) if match else set()


def parse_cpu_mhz(cpuinfo: str) -> float | None:
    """The first "cpu MHz" of ``/proc/cpuinfo`` text (the current clock: a fallback for the maximum)."""
    match = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", cpuinfo, flags=re.MULTILINE)
    return float(match.group(1)) if match else None


def is_zen4(cpuinfo: str) -> bool:
    """AMD family 25 (Zen 3/Zen 4): Zen 4 runs AVX-512 on 256-bit units, two cycles per 512-bit instruction."""
    vendor = re.search(r"^vendor_id\s*:\s*(\S+)", cpuinfo, flags=re.MULTILINE)
    family = re.search(r"^cpu family\s*:\s*(\d+)", cpuinfo, flags=re.MULTILINE)
    return bool(vendor and family and vendor.group(1) == "AuthenticAMD" and int(family.group(1)) == 25)


def cpu_peak_from(
    flags: set[str], *, cores: int, mhz: float, clock_source: str, dtype: torch.dtype, zen4: bool = False
) -> Peak:
    """``cores x flops per cycle per core x clock``; flops per cycle from the SIMD flags (see module docstring).
    ``zen4``: AVX-512 at the 256-bit rate (8 fp32 lanes per cycle)."""
    name = _dtype_name(dtype)
    if {"avx512f"} <= flags and zen4:
        lanes, isa = 8, "AVX-512 on Zen 4's 256-bit units (8 fp32 lanes per cycle)"
    elif {"avx512f"} <= flags:
        lanes, isa = 16, "AVX-512 (512-bit: 16 fp32 lanes)"
    elif {"avx2", "fma"} <= flags:
        lanes, isa = 8, "AVX2+FMA (256-bit: 8 fp32 lanes)"
    else:
        lanes, isa = 4, "128-bit SIMD (SSE/NEON: 4 fp32 lanes)"
    # Two FMA pipes per core is the common x86 design since Haswell/Zen (some Xeon Bronze/Silver have one
    # AVX-512 FMA unit): assumed, and stated. Without FMA flags: one pipe, counted as a multiply-add anyway.
    units = 2 if lanes >= 8 else 1
    per_cycle = lanes * units * 2
    rate = f"{lanes} lanes x {units} FMA units x 2 flops"
    if dtype == torch.float64:
        per_cycle, rate = per_cycle // 2, f"{lanes // 2} fp64 lanes x {units} FMA units x 2 flops"
    elif dtype in (torch.bfloat16, torch.float16):
        amx, dot = ("amx_bf16", "avx512_bf16") if dtype == torch.bfloat16 else ("amx_fp16", "avx512_fp16")
        if amx in flags:  # Intel AMX TMUL: 1024 bf16/fp16 FLOPs per cycle per core (Intel's figure)
            per_cycle, rate = 1024, f"{amx}: 1024 flops (AMX tile multiply)"
        elif dot in flags:  # VDPBF16PS / FP16 FMA: twice the fp32 element rate
            per_cycle, rate = per_cycle * 2, f"{dot}: 2 x ({rate})"
        else:
            rate = f"no {dot}/{amx}: the fp32 rate ({rate}), {name} is converted"
    peak = cores * per_cycle * mhz * 1e6
    how = (f"CPU {isa}: {cores} core{'s' if cores != 1 else ''} (torch threads) x {per_cycle} flops/cycle/core [{rate}] x {mhz:.0f} MHz "
           f"({clock_source}) = {peak / 1e9:.1f} GFLOP/s")  # fmt: skip
    return Peak(peak, "cpu", name, how)


def _max_mhz(cpuinfo: str) -> tuple[float | None, str]:
    freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    try:
        return int(freq.read_text()) / 1000, str(freq)
    except (OSError, ValueError):
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5, check=False).stdout
        match = re.search(r"^CPU max MHz:\s*([0-9.]+)", out, flags=re.MULTILINE)
        if match:
            return float(match.group(1)), "lscpu CPU max MHz"
    except (OSError, subprocess.SubprocessError):
        pass
    return parse_cpu_mhz(cpuinfo), ("/proc/cpuinfo cpu MHz (current clock: no max frequency exposed, so a boosting CPU can exceed this "
                                   "peak and MFU can read above 100%: pass --peak-tflops)")


def peak_flops(device: torch.device | str, dtype: torch.dtype, declared: float | None = None) -> Peak:
    """Peak FLOP/s of ``device`` for ``dtype``; ``declared`` (FLOP/s) wins when given."""
    device = torch.device(device)
    if declared is not None:
        if declared <= 0:
            raise ValueError(f"declared peak {declared!r} FLOP/s: expected a positive number")
        return Peak(float(declared), str(device), _dtype_name(dtype), "declared")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        tf32 = dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest"
        return gpu_peak(name, dtype, tf32=tf32)
    if device.type != "cpu":
        return Peak(None, str(device), _dtype_name(dtype), f"no peak table for {device.type}: pass --peak-tflops")
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    mhz, source = _max_mhz(cpuinfo)
    if mhz is None:
        return Peak(None, "cpu", _dtype_name(dtype), "CPU clock unknown (no cpufreq, lscpu or cpuinfo): pass "
                    "--peak-tflops")  # fmt: skip
    return cpu_peak_from(parse_cpu_flags(cpuinfo), cores=torch.get_num_threads(), mhz=mhz, clock_source=source,
                         dtype=dtype, zen4=is_zen4(cpuinfo))  # fmt: skip
