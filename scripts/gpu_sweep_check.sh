#!/usr/bin/env bash
# The second device check of issue #6: aggregate training throughput of J lock-step processes x K agents sharing
# one GPU (what `sweep --lockstep K --jobs J -- --device cuda --threads 1` runs), one call of the `device` tool:
#
#   run(command="bash scripts/gpu_sweep_check.sh", carry=[".whl"], timeout_s=420)
#
# Each configuration "J K" starts J `python -m rlzoo_transfer.lockstep` processes of K Alien scratch agents (one
# torch thread each, learning_starts 400, replay 20k, no periodic evaluation), lets them train for SECONDS, then
# stops them; every process logs steps/s per agent every 5 s. An optional third field T, "J K T", gives each process
# --sample-threads T (threads sampling its K replays; default min(K, cores)). Past warm-up, the rate between a process's log lines
# times K, summed over processes, is the aggregate agent steps/s (sweep_throughput.md). GPU utilisation is sampled
# alongside (nvidia-smi). DEVICE=cpu CONFIGS="2 1" SECONDS_PER=40 SKIP_INSTALL=1 is a dry run on a CPU machine.
set -u
OUT=${OUT:-/tmp/gpu_sweep_check}
DEVICE=${DEVICE:-cuda}
CONFIGS=${CONFIGS:-"16 1;16 4;8 8;16 8"}
SECONDS_PER=${SECONDS_PER:-85}
LS=400
LOGS=/tmp/sweep_logs   # (the device returns at most 8 files: the logs come back as one tarball)
rm -rf "$LOGS"
mkdir -p "$OUT"
exec > >(tee "$OUT/sweep_check.log") 2>&1
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
date; nproc --all
if [ -z "${SKIP_INSTALL:-}" ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        2>&1 | tail -3
    export PYTHONPATH=/tmp/site:$PWD
fi
IFS=';' read -ra cfgs <<< "$CONFIGS"
for cfg in "${cfgs[@]}"; do
    read -r J K T <<< "$cfg"
    T=${T:-0}; threads=(); [ "$T" -gt 0 ] && threads=(--sample-threads "$T")
    name=logs_J${J}_K${K}_T${T}
    echo "== J = $J processes x K = $K agents, sample threads ${T/#0/default}"
    rm -rf /tmp/sweep_check; mkdir -p "$LOGS/$name"
    (nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader -l 5 > "$LOGS/$name/gpu.csv" 2>&1 &
     echo $! > /tmp/smi.pid)
    pids=()
    for j in $(seq 0 $((J - 1))); do
        seeds=$(seq -s " " $((j * K)) $((j * K + K - 1)))
        timeout "$SECONDS_PER" python3 -m rlzoo_transfer.lockstep --games Alien --methods scratch --seeds $seeds \
            --steps 100000 --eval-freq 100000 --eval-episodes 1 --final-eval-episodes 1 --device "$DEVICE" \
            --no-progress --threads 1 --log-every 5 --log-dir /tmp/sweep_check \
            "${threads[@]}" -p learning_starts=$LS buffer_size=20000 > "$LOGS/$name/p$j.log" 2>&1 &
        pids+=($!)
    done
    wait "${pids[@]}"
    kill "$(cat /tmp/smi.pid)" 2>/dev/null
    tail -n 2 "$LOGS/$name/p0.log"
done
python3 - "$LOGS" "$LS" <<'PY' | tee "$OUT/sweep_throughput.md"
import os, re, sys
from pathlib import Path
out, ls = Path(sys.argv[1]), int(sys.argv[2])
pat = re.compile(r"step (\d+)/\d+\s+([\d.]+) steps/s per agent.*agents=(\d+)")
print("| J processes | K agents each | sample threads | agents | agent steps/s (sum, past warm-up) | per agent "
      "| GPU util % (median) |")
print("|---|---|---|---|---|---|---|")
for d in sorted(out.glob("logs_J*_K*_T*"), key=lambda p: tuple(int(x) for x in re.findall(r"\d+", p.name))):
    J, K, T = (int(x) for x in re.findall(r"\d+", d.name))
    total, rates = 0.0, []
    for log in sorted(d.glob("p*.log")):
        pts = []
        for line in log.read_text().splitlines():
            m = pat.search(line)
            if m and float(m.group(2)) > 0:
                s, r = int(m.group(1)), float(m.group(2))
                pts.append((s, s / r))            # cumulative rate from step 0 -> elapsed seconds
        pts = [p for p in pts if p[0] > ls + 100]
        if len(pts) >= 2:
            rate = (pts[-1][0] - pts[0][0]) / (pts[-1][1] - pts[0][1])
            rates.append(rate); total += rate * K
    util = []
    gpu = d / "gpu.csv"
    if gpu.exists():
        for line in gpu.read_text().splitlines():
            m = re.match(r"\s*(\d+)\s*%", line)
            if m:
                util.append(int(m.group(1)))
    med = sorted(util)[len(util) // 2] if util else "-"
    per = f"{sum(rates) / len(rates):.1f}" if rates else "-"
    print(f"| {J} | {K} | {T or f'default ({min(K, os.cpu_count())})'} | {J * K} | {total:.0f} ({len(rates)}/{J} processes measured) | {per} | {med} |")
PY
tar czf "$OUT/sweep_logs.tgz" -C "$LOGS" .
date
