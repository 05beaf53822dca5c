"""Peak FLOP/s: declared wins, the GPU table by device name and dtype, the CPU product from cpuinfo flags."""

from __future__ import annotations

import pytest
import torch

from deepseek.profiler.peaks import cpu_peak_from, gpu_peak, is_zen4, parse_cpu_flags, parse_cpu_mhz, peak_flops

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
cpu MHz\t\t: 2000.000
flags\t\t: fpu sse sse2 avx fma avx2 avx512f avx512_bf16 amx_bf16 amx_tile
processor\t: 1
flags\t\t: fpu sse sse2
"""


def test_cpuinfo_parsing_reads_the_first_processor():
    assert parse_cpu_flags(CPUINFO) == {"fpu", "sse", "sse2", "avx", "fma", "avx2", "avx512f", "avx512_bf16",
                                        "amx_bf16", "amx_tile"}  # fmt: skip
    assert parse_cpu_mhz(CPUINFO) == 2000.0
    assert parse_cpu_flags("processor : 0\nFeatures : fp asimd evtstrm\n") == {"fp", "asimd", "evtstrm"}
    assert parse_cpu_mhz("no clock here") is None
    assert not is_zen4(CPUINFO) and is_zen4("vendor_id\t: AuthenticAMD\ncpu family\t: 25\n")
    assert not is_zen4("vendor_id\t: AuthenticAMD\ncpu family\t: 26\n")  # Zen 5: full 512-bit units


@pytest.mark.parametrize(
    ("flags", "dtype", "per_cycle"),
    [
        ({"avx512f", "avx2", "fma"}, torch.float32, 16 * 2 * 2),
        ({"avx2", "fma"}, torch.float32, 8 * 2 * 2),
        ({"sse2"}, torch.float32, 4 * 1 * 2),
        ({"avx512f"}, torch.float64, 8 * 2 * 2),
        ({"avx512f", "avx512_bf16"}, torch.bfloat16, 2 * 16 * 2 * 2),
        ({"avx512f"}, torch.bfloat16, 16 * 2 * 2),  # no bf16 instructions: the fp32 rate
        ({"avx512f", "avx512_bf16", "amx_bf16"}, torch.bfloat16, 1024),
    ],
)
def test_cpu_peak_is_cores_times_flops_per_cycle_times_clock(flags, dtype, per_cycle):
    peak = cpu_peak_from(flags, cores=3, mhz=2500.0, clock_source="test", dtype=dtype)
    assert peak.flops_per_s == 3 * per_cycle * 2500e6
    assert f"3 cores (torch threads) x {per_cycle} flops/cycle/core" in peak.how and "2500 MHz (test)" in peak.how


def test_zen4_runs_avx512_at_the_256_bit_rate():
    peak = cpu_peak_from(
        {"avx512f", "avx2", "fma"}, cores=1, mhz=1000.0, clock_source="t", dtype=torch.float32, zen4=True
    )
    assert peak.flops_per_s == 8 * 2 * 2 * 1e9 and "Zen 4" in peak.how


def test_gpu_table_by_name_and_dtype():
    h100 = gpu_peak("NVIDIA H100 80GB HBM3", torch.bfloat16)
    assert h100.flops_per_s == 989.4e12 and "bf16" in h100.how
    assert gpu_peak("NVIDIA H100 PCIe", torch.bfloat16).flops_per_s == 756e12  # the more specific row first
    assert gpu_peak("NVIDIA A100-SXM4-80GB", torch.float32).flops_per_s == 19.5e12
    assert gpu_peak("NVIDIA A100-SXM4-80GB", torch.float32, tf32=True).flops_per_s == 156e12
    assert gpu_peak("NVIDIA L40S", torch.float16).flops_per_s == 362.05e12  # not the L4 row
    assert gpu_peak("NVIDIA L4", torch.float16).flops_per_s == 121e12
    assert gpu_peak("Tesla V100-SXM2-16GB", torch.bfloat16).flops_per_s is None  # Volta has no bf16
    unknown = gpu_peak("NVIDIA Imaginary X1", torch.bfloat16)
    assert unknown.flops_per_s is None and unknown.how == "unknown GPU NVIDIA Imaginary X1: pass --peak-tflops"


def test_declared_peak_wins_and_must_be_positive():
    assert peak_flops("cpu", torch.float32, declared=5e12).flops_per_s == 5e12
    assert peak_flops("cpu", torch.float32, declared=5e12).how == "declared"
    with pytest.raises(ValueError, match="declared peak -1"):
        peak_flops("cpu", torch.float32, declared=-1)


def test_this_machines_cpu_peak_states_its_product():
    peak = peak_flops("cpu", torch.float32)
    assert peak.flops_per_s is not None and peak.flops_per_s > 0
    assert f"{torch.get_num_threads()} core" in peak.how and "(torch threads)" in peak.how and "GFLOP/s" in peak.how
