#!/usr/bin/env bash
# The device check of the threaded replay sampling of lock-step (rl/lockstep.py, `--sample-threads`), one call:
#
#   run(command="bash scripts/gpu_sampling_check.sh", carry=[".whl"], timeout_s=540)
#
# 1. the lock-step equality tests on cuda (K = 2 vs single runs: the threaded sampling and the one-copy-per-field
#    batch path on the GPU); 2. bench's lock-step section (update / act ms per agent, K = 1, 8, 32, and the serial
#    sampling variant of K = 32 beside it, one process); 3. scripts/gpu_sweep_check.sh with CONFIGS (default: 16
#    processes x 8 agents with 1 sampling thread each - the serial sampling measured before - and with the default
#    threads, then 8 x 8 and 4 x 32 with the default).  Files under $OUT: sampling_check.log, bench_lockstep.{json,md},
#    sweep_check.log, sweep_throughput.md, sweep_logs.tgz.
# DEVICE=cpu SKIP_INSTALL=1 CONFIGS="1 2 1;1 2" SECONDS_PER=40 BENCH_KS="1 2" is a dry run on a CPU machine.
set -u
OUT=${OUT:-/tmp/gpu_sampling_check}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
exec > >(tee "$OUT/sampling_check.log") 2>&1
export PYTHONUNBUFFERED=1
date; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 || echo "no nvidia-smi"; nproc --all
if [ -z "${SKIP_INSTALL:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        2>&1 | tail -3
    export PYTHONPATH=/tmp/site:$PWD
fi
echo "== lock-step equality on $DEVICE"
RLZOO_TEST_DEVICE=$DEVICE timeout 80 python3 -m pytest -q -p no:cacheprovider tests/rl/test_lockstep.py \
    -k "k2_equals or stacked or zoo_lite" 2>&1 | tail -6
echo "== bench: lockstep"
timeout 120 python3 -m rlzoo_transfer.bench --device "$DEVICE" --repeats 8 --sections lockstep --methods \
    --lockstep-k ${BENCH_KS:-1 8 32} --out "$OUT/bench_lockstep.json" --md "$OUT/bench_lockstep.md" \
    || echo "bench exited $?"
echo "== sweep throughput"
SKIP_INSTALL=1 CONFIGS=${CONFIGS:-"16 8 1;16 8;8 8;4 32"} SECONDS_PER=${SECONDS_PER:-70} DEVICE=$DEVICE \
    bash scripts/gpu_sweep_check.sh
date
