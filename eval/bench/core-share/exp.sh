#!/usr/bin/env bash
# A (threads as $1: "" = unchosen, or "--threads 2") alone for 150 s, then B (unchosen) beside it for 240 s.
set -u
cd "$(dirname "$0")/../../.."   # the repository root
tag=$1; shift
out=runs/share_exp/$tag; rm -rf $out; mkdir -p $out
stamp() { while IFS= read -r l; do echo "$(date +%s) $l"; done; }
env -u OMP_NUM_THREADS -u MKL_NUM_THREADS .venv/bin/python -u -m rlzoo_transfer.train --game Gopher --seed 0 \
  --eval-freq 100000 --no-progress --log-dir $out/a "$@" 2>&1 | stamp > $out/a.log &
sleep 150
env -u OMP_NUM_THREADS -u MKL_NUM_THREADS .venv/bin/python -u -m rlzoo_transfer.train --game Gopher --seed 1 \
  --eval-freq 100000 --no-progress --log-dir $out/b 2>&1 | stamp > $out/b.log &
sleep 250
pkill -KILL -f "log-dir $out/"
sleep 2
