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
  timeout 240 python3 -m pytest -q -x -p no:cacheprovider tests/test_kernels.py tests/test_kernel_errors.py tests/test_hf_vmap.py ${EXTRA_TESTS:-} 2>&1 | tail -15 > "$out/tests.txt"
fi
for m in mlp resnet18; do
  timeout 200 python3 benchmarks/bench_engine.py --model $m --device cuda --json "$out/bench_$m.json" 2>&1 | tail -15 >> "$out/bench.txt"
done
cat "$out"/*.txt
