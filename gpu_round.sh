#!/bin/bash
set -u
export PYTHONUNBUFFERED=1
run() { echo "== $*"; timeout 150 python bench/attribution_overhead.py "$@" --device cuda 2>&1 | tail -4; }
run --model gpt2-small --steps 10 --warmup 3
run --model gpt2-small --steps 10 --warmup 3 --target-every 2
run --model text-transformer --steps 10
