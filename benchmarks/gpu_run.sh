#!/usr/bin/env bash
# One device call: install carried wheels, run the test suite on CUDA, then the engine benchmarks.
# Usage (on the GPU machine, from the repo root): bash benchmarks/gpu_run.sh OUT_DIR
set -u
out=${1:-/tmp/out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MPLBACKEND=Agg HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt"
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name())" >> "$out/gpu.txt"
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout 300 python3 -m pytest -q -x -p no:cacheprovider ${TESTS:-tests/test_kernels.py tests/test_kernel_errors.py tests/test_hf_vmap.py tests/test_projection.py} 2>&1 | tail -15 > "$out/tests.txt"
fi
for m in ${MODELS:-mlp resnet18}; do
  for tf in "" "--tf32"; do
    timeout ${BENCH_TIMEOUT:-200} python3 -W ignore benchmarks/bench_engine.py --model $m --device cuda $tf --json "$out/bench_$m${tf:+_tf32}.json" 2>&1 | tail -12 >> "$out/bench.txt"
  done
done
cat "$out"/*.txt
