#!/usr/bin/env bash
# One-shot GPU job: pretrain the Seaquest and Riverraid sources side by side on one GPU (see README, "Sources").
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
MIN=${MIN:-5}
for g in Seaquest Riverraid; do
  python3 -m rlzoo_transfer.pretrain --game $g --steps 1000000 --n-envs 64 --device cuda --max-minutes $MIN \
    --eval-freq 100000000 --final-eval-episodes 32 --checkpoint-freq 0 --log-dir runs/pretrain \
    --zoo-dir out_zoo/$g --no-progress > pretrain_$g.log 2>&1 &
done
wait
tail -5 pretrain_*.log
tar czf $OUT/pretrain.tgz out_zoo pretrain_*.log runs/pretrain/*/scratch/seed0/{config.yml,evaluations.csv,final.json} 2>/dev/null
cp pretrain_*.log $OUT/ 2>/dev/null
ls -la $OUT
