#!/usr/bin/env bash
# #15's GPU figures in one short run on a lent GPU machine (torch and numpy only; nothing installed):
#   bash scripts/device_check.sh [OUT_DIR]     (on the device: OUT_DIR=$OUT)
# Each bench prints one JSON line; the lines are collected in OUT_DIR/device_check.jsonl. Sizes are the
# issue's (gpt2-small: 12 layers, d=768, T=1024, batch 16, 8 targets, AdamW, bf16); every run has a
# timeout, 10 minutes in all at most. The target rows ride in the batch's pass by default
# (activations for 16 + 8 rows: the peak-memory goal of 1.3x needs --target-pass separate, measured
# second); the third run never forms examples' gradients, to check PASS_COST["cuda"] (an estimate).
set -u
out="${1:-.}"
mkdir -p "$out"
log="$out/device_check.jsonl"
: > "$log"
run() {  # run SECONDS ARGS...: one bench, its last (JSON) line appended to the log
    local limit="$1"; shift
    echo "== attribution_overhead $*" >&2
    timeout "$limit" python bench/attribution_overhead.py "$@" 2>&1 | tee "$out/last.txt" >&2
    tail -n 1 "$out/last.txt" | grep '^{' >> "$log" || echo "{\"failed\": \"$*\"}" >> "$log"
}
python -c 'import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))' >&2
run 150 --model gpt2-small --device auto --steps 10 --warmup 3
run 120 --model gpt2-small --device auto --steps 10 --warmup 3 --target-pass separate
run 120 --model gpt2-small --device auto --steps 10 --warmup 3 --pass-cost 1000000  # rows never formed
run 150 --model gpt2-small --device auto --steps 10 --warmup 3 --target-every 2 --fidelity-epochs 1
run 60 --model text-transformer --device auto --compare-adamw
cat "$log"
