#!/usr/bin/env bash
# One optimizer step on GPT-2-small shapes, every optimizer, fp32 and bf16, on the given device.
# Usage: benchmarks/bench_step.sh [cuda|cpu]   (JSON goes to $OUT, else benchmarks/results/)
set -euo pipefail
device=${1:-cuda}
out=${OUT:-benchmarks/results}
mkdir -p "$out"
for dtype in float32 bfloat16; do
  python -m focus_optim.cli bench-step --device "$device" --dtype "$dtype" --optimizers all \
    --json "$out/bench_step_${device}_${dtype}.json"
done
