#!/usr/bin/env bash
# The GPU measurements the open issues still need, in device calls of <= 10 minutes each.
#
# Run from the repository root on a GPU machine, carrying .data/mnist (copied from
# ../shared/data/mnist), with the package importable (PYTHONPATH=src). Each part writes JSON under
# $OUT (else runs/gpu-followups) and prints a compact table; quote the numbers in BENCHMARKS.md.
#
#   benchmarks/gpu_followups.sh tests          # every @pytest.mark.gpu test (landscape, mnist, optim incl.
#                                              # FSDP2 on CUDA, lm)
#   benchmarks/gpu_followups.sh toy-diagnose   # where the toy's time goes: stack samples of a cold 2a
#                                              # (toy_first_use.py) and per-kernel times of a 100-D and a
#                                              # 2-D chunk against their bytes (toy_profile.py), ~2 min
#   benchmarks/gpu_followups.sh toy-fused      # the paper toy suite on the one-launch step (the valley
#                                              # kernel applying the optimizer's update, 100 steps a
#                                              # launch, theta and state in registers): its 100-D and
#                                              # 2-D chunks profiled under tile/warp variants, then the
#                                              # suite with its checks and 2a as a fresh process, ~4 min
#   benchmarks/gpu_followups.sh toy-kernels    # the paper toy suite on the Triton step, its GPU checks,
#                                              # 2a as a fresh CLI process, traj-steps/s beside the
#                                              # scalar loop and the host work per step (~5 min)
#   benchmarks/gpu_followups.sh toy            # the paper toy suite compiled (Inductor), as above (~6-7 min)
#   benchmarks/gpu_followups.sh toy-variants   # 6r with free-order sums; traj-steps/s vs the scalar loop
#   benchmarks/gpu_followups.sh toy-unroll     # 2a and 6r with TOY_STEPS_PER_CALL (4) steps per compiled call
#   benchmarks/gpu_followups.sh mnist-eval     # the test pass: cuBLAS bf16 (whole, in chunks) vs the fused
#                                              # Triton kernel under tile/warp/stage variants (~1 min)
#   benchmarks/gpu_followups.sh mnist-profile  # where a batch-4096 and a batch-2 cell's device time goes
#                                              # (CUDA-graph cells, fused test pass), then seconds per
#                                              # cell per mode
#   benchmarks/gpu_followups.sh mnist-modes    # seconds per cell: eager, fused, graphs, compiled
#   benchmarks/gpu_followups.sh mnist-scan     # the full paper scan; default: CUDA-graph cells with the
#                                              # fused optimizer step and the fused test pass, 2 workers,
#                                              # fp32 training (MNIST_GRAPHS=, MNIST_FUSED=,
#                                              # MNIST_FUSED_EVAL=, MNIST_COMPILE=default, MNIST_WORKERS,
#                                              # MNIST_TRAIN_PRECISION=tf32 to vary)
#   benchmarks/gpu_followups.sh lm             # GPT-2 124M tokens/s: the measured best vs max-autotune
#   benchmarks/gpu_followups.sh step           # the fused optimizer steps on GPT-2 shapes (bench-step)
#
# Measured 2026-11-23 (BENCHMARKS.md): toy suite on the Triton step 107.7-110.3 s (2a 31-35 s
# as the first figure of a process but 3.1-3.3 s warm; 6r 63.6-66.2 s, its valley kernel at 0.79
# TB/s of its bytes vs the optimizer kernels' 2.8 TB/s); MNIST paper scan 134.8 s (CUDA graphs +
# fused step + test-pass GEMMs padded to multiples of 8, 2 workers; 173.4 s unpadded, 179.2 s
# eager + fused with 8 workers). Changed since, untimed on a GPU: the first figure's ~28 s was
# Python validating 9.6M per-trajectory lrs one by one (now tensor ops; found on a CPU with
# toy_first_use.py --stub-kernels); the Triton step is the CUDA default; the valley kernel runs
# 8 elements a thread (2048 x 8, ~63 registers; 4096 x 4 needed 232 at 100-D, see
# toy_registers.py); --kernels fused runs 100 steps a launch with theta and state in registers.
# MNIST, changed since 134.8 s (modelled with mnist_step_costs.py, no GPU: the scan's device time
# as a roofline lower bound, 60.8 s for the code timed then): the input layer's BN is folded into
# its GEMM above batch 256 (55.6 s modelled; 1.36-1.57x faster forward + backward at batch 4096
# on a CPU); --fused-eval runs the bf16 test pass as one Triton kernel with the activations on chip
# (35.2 s modelled: it was 27 s of the 55.6). Neither is timed on a GPU yet. Toy: Box-Muller's
# sine and cosine are the hardware's approximate ones (triton_valley.FAST_SINCOS): the fused
# kernel's 100-D loop runs ~300 SASS instructions instead of ~410 (Triton 3.6; toy_registers.py --sass);
# toy-fused times both (the ':precise' configs).
# With 30 device-minutes per session (each machine start costs 1-2; a machine idle for 30 s is
# given back, so chain the calls), run in this order: tests (~3 min), toy-fused (~4 min),
# toy-kernels (~5 min; the default path, first figure included), mnist-eval (~1 min), mnist-scan
# (~2.5 min each: the default, then MNIST_FUSED_EVAL= to compare, or MNIST_WORKERS=1 / 4),
# lm (~9 min; issue 5), step (~1 min); toy-diagnose only if the first figure is still slow.
#
# Targets still missed: issue 3, the whole paper toy suite <= 60 s; issue 4, the paper scan
# <= 120 s; issue 5, >= 550K tokens/s (was 503K). The lm part carries .data/corpus and
# .data/tokenizers as well as .data/mnist.
set -euo pipefail
part=${1:?usage: gpu_followups.sh tests|step|toy-diagnose|toy-fused|toy-kernels|toy|toy-variants|toy-unroll|mnist-eval|mnist-profile|mnist-modes|mnist-scan|lm}
out=${OUT:-runs/gpu-followups}
mkdir -p "$out"
export PYTHONPATH=${PYTHONPATH:-src}
case "$part" in
  tests)
    python -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tail -25
    ;;
  step)
    python -m focus_optim.cli bench-step --device cuda --dtype float32 --optimizers focus signum AdamW \
      --json "$out/bench_step_cuda_float32.json"
    ;;
  toy-diagnose)
    OUT="$out" python benchmarks/toy_first_use.py
    OUT="$out" python benchmarks/toy_profile.py --dim 100 --rows 1342177 --configs 2048x8 4096x4 2048x16 1024x8 4096x16
    OUT="$out" python benchmarks/toy_profile.py --dim 2 --rows 9600000
    ;;
  toy-fused)
    OUT="$out" python benchmarks/toy_profile.py --dim 100 --rows 1342177 --fuse-update --steps 200 \
      --fused-configs 1024x8 1024x8:precise 2048x16 1024x4 2048x8 512x4
    OUT="$out" python benchmarks/toy_profile.py --dim 2 --rows 9600000 --fuse-update --steps 200 \
      --fused-configs 1024x8 1024x8:precise 2048x8 512x4 2048x16
    OUT="$out/toy-fused" python benchmarks/toy_gpu_suite.py --kernels fused --store "$out/toy-store-fused" \
      --no-plots --fresh-process --steps-per-launch "${TOY_STEPS_PER_LAUNCH:-100}"
    ;;
  toy-kernels)
    OUT="$out/toy-kernels" python benchmarks/toy_gpu_suite.py --kernels --store "$out/toy-store-kernels" \
      --fresh-process
    mkdir -p "$out/toy-kernels-throughput"
    OUT="$out/toy-kernels-throughput" python benchmarks/toy_throughput.py --device cuda --skip-cpu
    OUT="$out/toy-kernels-throughput" python benchmarks/toy_throughput.py --device cuda --host-overhead
    ;;
  toy)
    OUT="$out/toy" python benchmarks/toy_gpu_suite.py --store "$out/toy-store" --fresh-process
    ;;
  toy-variants)
    OUT="$out/toy-free-order" python benchmarks/toy_gpu_suite.py --figures 6r --free-order \
      --no-warm --no-plots --store "$out/toy-store-free"
    OUT="$out" python benchmarks/toy_throughput.py --device cuda --skip-cpu
    ;;
  toy-unroll)
    OUT="$out/toy-unroll" python benchmarks/toy_gpu_suite.py --figures 2a 6r --free-order \
      --steps-per-call "${TOY_STEPS_PER_CALL:-4}" --no-warm --no-plots --store "$out/toy-store-unroll"
    ;;
  mnist-eval)
    OUT="$out" python benchmarks/mnist_eval_kernel.py
    ;;
  mnist-profile)
    OUT="$out" python benchmarks/mnist_cell_modes.py --profile 4096 --modes graphs-eval --steps 40
    # a small cell: the 36 cells of batch <= 256 took ~60 s of the 134.8 s scan, ~4x their device
    # roofline (mnist_step_costs.py): its wall vs device time per step says whether the host is why
    OUT="$out" python benchmarks/mnist_cell_modes.py --profile 2 --modes graphs-eval --steps 100
    OUT="$out" python benchmarks/mnist_cell_modes.py --modes graphs graphs-eval --batch-sizes 2 256 4096 --steps 100
    ;;
  mnist-modes)
    OUT="$out" python benchmarks/mnist_cell_modes.py
    OUT="$out" python benchmarks/mnist_cell_modes.py --overhead
    ;;
  mnist-scan)
    fused=${MNIST_FUSED-1}  # fused unless MNIST_FUSED is set empty
    graphs=${MNIST_GRAPHS-1}  # CUDA-graph cells unless MNIST_GRAPHS is set empty
    fused_eval=${MNIST_FUSED_EVAL-1}  # the fused test pass unless MNIST_FUSED_EVAL is set empty
    OUT="$out" python benchmarks/mnist_gpu.py --out "$out/mnist-paper" --compile "${MNIST_COMPILE-}" \
      --workers "${MNIST_WORKERS:-2}" --train-precision "${MNIST_TRAIN_PRECISION:-fp32}" --no-check \
      ${fused:+--fused} ${graphs:+--cuda-graphs} ${fused_eval:+--fused-eval}
    ;;
  lm)
    OUT="$out" python benchmarks/lm_throughput.py --variants b64-chunkce,b64-chunkce-cdt,b64-chunkce-autotune --time-budget 540
    ;;
  *)
    echo "unknown part: $part (tests|step|toy-diagnose|toy-fused|toy-kernels|toy|toy-variants|toy-unroll|mnist-eval|mnist-profile|mnist-modes|mnist-scan|lm)" >&2
    exit 2
    ;;
esac
