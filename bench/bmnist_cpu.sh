#!/usr/bin/env bash
# The binarized-MNIST table (docs/results.md) on a small CPU machine: every bmnist_* row trained for about
# the same time on one core (its epochs set by its measured cost, about 15 minutes each; SCALE multiplies
# them), two rows at a time, then evaluated by evaluate.py at k=5000 on the full binarized test set.
# Epoch counts, not a time limit: a paused run (kill -STOP) keeps its budget. With a GPU, run the published
# schedule instead: python train.py -m experiment=bmnist_vae_k1,bmnist_vae_k5,... trainer=gpu
# `bash bench/bmnist_cpu.sh cpu` instead trains the two CPU-recipe rows (bmnist_vae_k1_cpu and
# bmnist_cvae_iwae_k1_cpu: batch 100, compiled, at most 2 hours each) one after the other, each with both
# cores, into logs/bmnist_cpu; then `python bench/bmnist_table.py --cpu`.
# Usage: [SCALE=1] [OUT=logs/bmnist] bash bench/bmnist_cpu.sh [cpu]
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-1}
RECIPE=${1:-}
OUT=${OUT:-logs/bmnist${RECIPE:+_$RECIPE}}
EVERY=${EVERY:-3}
PY=${PY:-.venv/bin/python}
# two processes side by side, one core each; the CPU recipe's rows one at a time on all cores
[ "$RECIPE" = cpu ] || export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

# a row another invocation is still training or evaluating is waited for, not started twice
wait_for() { while pgrep -f "$1" > /dev/null; do sleep 10; done; }

# row NAME [EPOCHS]: without EPOCHS the experiment's own epochs and curve points
row() {
  local name=$1 dir=$OUT/$1 extra=()
  [ -n "${2:-}" ] && extra=(trainer.max_epochs=$(( $2 * SCALE )) callbacks.test_nll.every_n_epochs="$EVERY")
  wait_for "hydra.run.dir=$dir "
  # a row killed part-way continues from its last checkpoint
  [ -f "$dir/checkpoints/last.ckpt" ] && extra+=(ckpt_path=last)
  if [ ! -f "$dir/results.json" ]; then
    $PY train.py experiment=bmnist_$name "${extra[@]}" hydra.run.dir="$dir" >> "$OUT/$name.train.log" 2>&1
  fi
  wait_for "out_dir=$dir "
  if [ ! -f "$dir/metrics.json" ]; then
    /usr/bin/time -f "%e s" -o "$OUT/$name.eval.seconds" \
      $PY evaluate.py ckpt_path="$dir/checkpoints/last.ckpt" out_dir="$dir" \
      callbacks.log_likelihood.k=5000 callbacks.log_likelihood.compile=true "eval.temperatures=[1.0]" \
      > "$OUT/$name.eval.log" 2>&1
  fi
  echo "$(date -u +%FT%TZ) done $name"
}

mkdir -p "$OUT"
if [ "$RECIPE" = cpu ]; then
  row vae_k1_cpu
  row cvae_iwae_k1_cpu
  exit
fi
# epochs per row as run for docs/results.md (2026-12-02): the first three rows got about 10-15 CPU minutes;
# the rest were cut to about half to fit the session, on one core of a 2-core EPYC (15 s an epoch at k=1,
# 25 s at k=5, 90 s at k=50)
(row vae_k1 36; row vae_k50 6; row iwae_k5 12; row cvae_iwae_k5 12) &
(row vae_k5 24; row iwae_k50 10; row cvae_iwae_k1 18; row cvae_iwae_k50 6) &
wait
