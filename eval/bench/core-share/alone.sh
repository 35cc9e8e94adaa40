#!/usr/bin/env bash
# A Gopher scratch run with --threads 2 alone for 240 s, four times, alternating the default OpenMP wait policy and
# OMP_WAIT_POLICY=PASSIVE (default, passive, default, passive).
set -u
cd "$(dirname "$0")/../../.."   # the repository root
stamp() { while IFS= read -r l; do echo "$(date +%s) $l"; done; }
for i in 1 2; do for policy in default passive; do
  out=runs/share_exp/alone-$policy-$i; rm -rf $out; mkdir -p $out
  if [ $policy = passive ]; then export OMP_WAIT_POLICY=PASSIVE; else unset OMP_WAIT_POLICY; fi
  env -u OMP_NUM_THREADS -u MKL_NUM_THREADS .venv/bin/python -u -m rlzoo_transfer.train --game Gopher --seed 0 \
    --eval-freq 100000 --no-progress --threads 2 --log-dir $out 2>&1 | stamp > $out.log &
  sleep 240
  pkill -KILL -f "log-dir $out"
  sleep 2
done; done
