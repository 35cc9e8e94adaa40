#!/usr/bin/env bash
# The device check of developer session 11 (issue #5, "on a GPU when one is available"), one call of the `device`
# tool:
#
#   run(command="bash scripts/gpu_methods_check.sh", carry=[".whl"], timeout_s=540)
#
# .whl/ (git-ignored) holds the wheels the device machine lacks (see scripts/gpu_check.sh for the pip download line).
# Two parts, each time-boxed so that the files come back even if a step hangs:
#
# 1. Every method trains on the GPU: `python -m rlzoo_transfer.train --device cuda` for scratch, finetune:Seaquest,
#    zoo, zoo-lite, hub and kflow on Alien, STEPS agent steps each (learning starts at 1600), the six processes
#    sharing the GPU at once; per method its exit status, wall seconds, final 2-episode score. The run folders
#    come back as methods.tgz (without model.zip / checkpoints: 22-52 MB each with the optimiser). Each
#    CUDA-trained model.zip is then played by `enjoy` with CUDA hidden (a CPU-only user's machine) and on the GPU.
# 2. Does CUDA MPS lift the sweep's aggregate throughput? scripts/gpu_sweep_check.sh's 16 processes x 8 lock-step
#    agents (1386 agent steps/s in session 6, GPU 93 % busy with 16 time-sliced contexts), SECONDS_PER seconds
#    without, then with the MPS control daemon.
#
# Files under $OUT: methods_check.log (everything printed), methods.tgz, throughput_nomps.md, throughput_mps.md,
# sweep_logs.tgz. DEVICE=cpu STEPS=1700 SECONDS_PER=40 CONFIGS="1 1" SKIP_INSTALL=1 is a dry run on a CPU machine.
set -u
OUT=${OUT:-/tmp/gpu_methods_check}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-3000}
SECONDS_PER=${SECONDS_PER:-100}
CONFIGS=${CONFIGS:-"16 8"}
mkdir -p "$OUT"
exec > >(tee "$OUT/methods_check.log") 2>&1
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
date; nproc --all
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "no nvidia-smi"
if [ -z "${SKIP_INSTALL:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        2>&1 | tail -3
    export PYTHONPATH=/tmp/site:$PWD
fi
python3 -c "import torch, stable_baselines3, ale_py, gymnasium; print('torch', torch.__version__, 'sb3',
stable_baselines3.__version__, 'ale-py', ale_py.__version__, 'gymnasium', gymnasium.__version__,
'cuda', torch.cuda.is_available())"

echo "== 1. every method trains on $DEVICE (six processes at once, $STEPS steps each)"
RUNS=/tmp/methods_runs; LOGS=/tmp/methods_logs
rm -rf "$RUNS" "$LOGS"; mkdir -p "$LOGS"
pids=(); names=()
for m in scratch finetune:Seaquest zoo zoo-lite hub kflow; do
    method=${m%%:*}; src=(); [[ "$m" == *:* ]] && src=(--source "${m#*:}")
    name=${m/:/-}; names+=("$name")
    ( start=$(date +%s.%N)
      timeout 300 python3 -m rlzoo_transfer.train --game Alien --method "$method" "${src[@]}" --seed 0 \
          --steps "$STEPS" --eval-freq "$STEPS" --eval-episodes 1 --final-eval-episodes 2 --device "$DEVICE" \
          --threads 1 --no-progress --log-dir "$RUNS" > "$LOGS/$name.log" 2>&1
      rc=$?
      echo "rc=$rc wall_s=$(python3 -c "import time; print(round(time.time() - $start, 1))")" >> "$LOGS/$name.log" ) &
    pids+=($!)
done
wait "${pids[@]}"
echo "| method | exit | wall s | final score (2 episodes) | device in config.yml |"
echo "|---|---|---|---|---|"
for name in "${names[@]}"; do
    tailline=$(tail -n 1 "$LOGS/$name.log")
    rc=$(sed -n 's/^rc=\([0-9]*\).*/\1/p' <<< "$tailline"); wall=$(sed -n 's/.*wall_s=\([0-9.]*\).*/\1/p' <<< "$tailline")
    final="$RUNS/Alien/$name/seed0/final.json"
    score=$([ -f "$final" ] && python3 -c "import json; print(json.load(open('$final'))['mean'])" || echo "-")
    dev=$(grep -m1 -E "^ *device:" "$RUNS/Alien/$name/seed0/config.yml" 2>/dev/null | awk '{print $2}')
    echo "| $name | $rc | $wall | $score | ${dev:--} |"
    [ "$rc" = "0" ] || tail -n 15 "$LOGS/$name.log"
done
echo "-- the CUDA-trained models, played on the CPU (CUDA hidden) and on $DEVICE: 2 episodes, seed 0, each"
echo "| method | returns, cpu | returns, $DEVICE |"
echo "|---|---|---|"
for name in "${names[@]}"; do
    run="$RUNS/Alien/$name/seed0"
    [ -f "$run/model.zip" ] || { echo "| $name | no model.zip | |"; continue; }
    CUDA_VISIBLE_DEVICES="" timeout 120 python3 -m rlzoo_transfer.enjoy "$run" --episodes 2 --threads 1 \
        --out "$LOGS/$name.enjoy_cpu.json" > "$LOGS/$name.enjoy_cpu.log" 2>&1 &
    timeout 120 python3 -m rlzoo_transfer.enjoy "$run" --episodes 2 --threads 1 --device "$DEVICE" \
        --out "$LOGS/$name.enjoy_dev.json" > "$LOGS/$name.enjoy_dev.log" 2>&1 &
done
wait
for name in "${names[@]}"; do
    r() { python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['returns'])" "$1" 2>/dev/null \
          || { echo "failed:"; tail -n 3 "${1%.json}.log"; }; }
    echo "| $name | $(r "$LOGS/$name.enjoy_cpu.json" | tr '\n' ' ') | $(r "$LOGS/$name.enjoy_dev.json" | tr '\n' ' ') |"
done
# model.zip / checkpoint hold the optimiser too (22-52 MB each): over what the device returns
find "$RUNS" \( -name "*.zip" -o -name "replay*" -o -name "rng.pt" \) -delete
tar czf "$OUT/methods.tgz" -C /tmp methods_runs methods_logs

echo "== 2. sweep throughput ($CONFIGS), without and with CUDA MPS"
OUT=/tmp/sw_nomps SECONDS_PER=$SECONDS_PER CONFIGS="$CONFIGS" SKIP_INSTALL=1 DEVICE=$DEVICE \
    timeout $((SECONDS_PER * 2 + 60)) bash scripts/gpu_sweep_check.sh > /dev/null 2>&1
cp /tmp/sw_nomps/sweep_throughput.md "$OUT/throughput_nomps.md" 2>/dev/null && cat "$OUT/throughput_nomps.md"
mkdir -p /tmp/sweep_all; tar xzf /tmp/sw_nomps/sweep_logs.tgz -C /tmp/sweep_all 2>/dev/null
if command -v nvidia-cuda-mps-control > /dev/null; then
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps_pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps_log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    nvidia-cuda-mps-control -d && echo "MPS daemon started"
    if timeout 60 python3 -c "import torch; x = torch.ones(4, device='cuda'); print('MPS client ok', float(x.sum()))"; then
        OUT=/tmp/sw_mps SECONDS_PER=$SECONDS_PER CONFIGS="$CONFIGS" SKIP_INSTALL=1 DEVICE=$DEVICE \
            timeout $((SECONDS_PER * 2 + 60)) bash scripts/gpu_sweep_check.sh > /dev/null 2>&1
        cp /tmp/sw_mps/sweep_throughput.md "$OUT/throughput_mps.md" 2>/dev/null && cat "$OUT/throughput_mps.md"
        mkdir -p /tmp/sweep_all/mps; tar xzf /tmp/sw_mps/sweep_logs.tgz -C /tmp/sweep_all/mps 2>/dev/null
    else
        echo "a CUDA client under MPS failed or hung: no MPS measurement"
    fi
    echo quit | timeout 20 nvidia-cuda-mps-control
    tail -n 20 "$CUDA_MPS_LOG_DIRECTORY/control.log" 2>/dev/null
else
    echo "nvidia-cuda-mps-control is not on this machine: no MPS measurement"
fi
tar czf "$OUT/sweep_logs.tgz" -C /tmp/sweep_all .
date
