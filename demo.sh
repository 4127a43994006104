#!/usr/bin/env bash
# Set up .venv, then the whole pipeline on the CPU, end to end:
#   train OATS on scikit-learn digits -> evaluate SA and worst-case RA under an attack ensemble,
#   with gradient-masking checks -> export a bundle (calibrated, with baked hot modes) -> verify it
#   -> a robot perception loop switching modes -> latency benchmark.
# Everything lands in demo_out/ (override with OUT=dir), with the time of each step in
# demo_out/timings.json.
set -euo pipefail
cd "$(dirname "$0")"
START=$SECONDS
. scripts/setup_env.sh
SETUP_S=$((SECONDS - START))
OUT=${OUT:-demo_out}
THREADS=${THREADS:-2}
mkdir -p "$OUT"
STEP_TIMES=""
LAST=$SECONDS
step() {
  [ -n "${CURRENT:-}" ] && STEP_TIMES="$STEP_TIMES\"$CURRENT\": $((SECONDS - LAST)), "
  CURRENT=${1%%:*}; LAST=$SECONDS
  printf '\n\033[1m== %s\033[0m\n' "$*"
}

step "1/6 train: OATS on digits, widths 0.5 0.75 1.0 (+ a small PGD-AT model to transfer attacks from)"
oat-edge train --dataset digits --method oats --widths 0.5 0.75 1.0 --threads "$THREADS" --out "$OUT/ckpt.pt"
oat-edge train --dataset digits --method pgd-at --epochs 10 --seed 1 --threads "$THREADS" --out "$OUT/surrogate.pt"

step "2/6 evaluate: SA, RA per attack and the worst case (PGD-7, APGD-CE, APGD-DLR, Square) per (λ, width), masking checks"
oat-edge eval "$OUT/ckpt.pt" --threads "$THREADS" --json "$OUT/eval.json" --plots "$OUT/plots" \
  --surrogate "$OUT/surrogate.pt"

step "3/6 export: 6 ONNX paths + FiLM tables + baked hot modes, parity-gated, calibrated"
# Calibrating the training λ set keeps the demo short; the default adds the paper's unseen λ (S3).
oat-edge export "$OUT/ckpt.pt" --widths 0.5 0.75 1.0 -o "$OUT/bundle" --calibrate --calib-lambdas 0 0.2 0.4 0.6 0.8 1 \
  --bake-lambdas 0 1 --force

step "4/6 inspect + verify the bundle (what a Jetson user runs after copying it)"
oat-edge inspect "$OUT/bundle"
oat-edge verify "$OUT/bundle"

step "5/6 runtime: a 30 Hz perception loop, the control thread switching (λ, width) on threat;"
echo "    attack episodes feed inputs the attack ensemble precomputed against the mode the loop is in"
python examples/attack_frames.py --checkpoint "$OUT/ckpt.pt" --bundle "$OUT/bundle" --frames 300 --fps 30 \
  --threads "$THREADS" --out "$OUT/attack_frames.npz"
python examples/robot_loop.py --bundle "$OUT/bundle" --frames 300 --fps 30 --attack-frames "$OUT/attack_frames.npz" \
  --log "$OUT/robot_log.jsonl"

step "6/6 benchmark: latency per mode, switch cost, baselines, trade-off report"
oat-edge bench "$OUT/bundle" --checkpoint "$OUT/ckpt.pt" --batch 1 8 32 --threads "$THREADS" \
  --duration 0.5 --rounds 3 --json "$OUT/bench.json" --report "$OUT/bench"

step "done"
printf '{"setup_s": %d, "steps_s": {%s}, "total_s": %d, "threads": %d}\n' "$SETUP_S" "${STEP_TIMES%, }" \
  $((SECONDS - START)) "$THREADS" > "$OUT/timings.json"
echo "took $(( (SECONDS - START) / 60 )) min $(( (SECONDS - START) % 60 )) s (setup included): $OUT/timings.json"
echo "results in $OUT/: ckpt.pt, eval.json, plots/, bundle/, attack_frames.npz, robot_log.jsonl, bench/ (report.md + PNGs)"
