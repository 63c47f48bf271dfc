#!/bin/bash
# One prepared device round: overhead benches on the GPU (figures for issue #15).
set -u
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__)"
run() { echo "== $*"; timeout 150 python bench/attribution_overhead.py "$@" --device cuda 2>&1 | tail -6; }
run --model gpt2-small --steps 10 --warmup 3
run --model gpt2-small --steps 10 --warmup 3 --target-every 4
run --model text-transformer --compare-adamw
run --model image-cnn
run --model gpt2-small --steps 10 --warmup 3 --targets 1
