#!/usr/bin/env bash
# One device call: install carried wheels, run the CUDA tests, then the benchmarks with --device cuda.
# Usage (on the GPU machine, from the repo root): bash benchmarks/gpu_run.sh OUT_DIR
# Environment: SKIP_TESTS=1, TESTS="...", MODELS="mlp resnet18" (bench_engine), SPEED_MODELS,
# BENCH_TIMEOUT (seconds per benchmark command; SPEED_TIMEOUT for the speed section).
set -u
out=${1:-${OUT:-/tmp/out}}
mkdir -p "$out"
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MPLBACKEND=Agg HF_HUB_OFFLINE=1
t=${BENCH_TIMEOUT:-200}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt"
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name())" >> "$out/gpu.txt"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout 300 python3 -m pytest -q -x -p no:cacheprovider ${TESTS:-tests/test_kernels.py tests/test_kernel_errors.py tests/test_hf_vmap.py tests/test_projection.py} 2>&1 | tail -15 > "$out/tests.txt"
fi
# projected features: examples/s per model, kernel and projection against plain vmap + dense randn
# and TRAK's BasicProjector, K = 10240
timeout "${SPEED_TIMEOUT:-400}" python3 -W ignore benchmarks/bench_projections.py --sections speed --device cuda \
  --models "${SPEED_MODELS:-mlp,resnet,minilm}" > "$out/speed.txt" 2>&1
# exact trNTK0: MLP at N = 512 (with the plain way) and 2048, ResNet-18 at N = 2048 (Gram engine)
timeout "$t" python3 -W ignore benchmarks/bench_exact.py --device cuda --n-resnet 2048 \
  --jacobian-max-n 64 --repeat 1 > "$out/exact.txt" 2>&1
for m in ${MODELS:-mlp resnet18}; do
  for tf in "" "--tf32"; do
    timeout "$t" python3 -W ignore benchmarks/bench_engine.py --model $m --device cuda $tf --json "$out/bench_$m${tf:+_tf32}.json" 2>&1 | tail -12 >> "$out/bench.txt"
  done
done
cat "$out"/*.txt
