#!/usr/bin/env bash
# The prepared device check of issue #6 (lock-step on a GPU), one call of the `device` tool:
#
#   run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=560)
#
# .whl/ (git-ignored) holds the wheels the device machine lacks and cannot download (it has torch and CUDA, Python
# 3.12): ale-py, gymnasium, farama-notifications, stable-baselines3; fill it here with
#   pip download --only-binary=:all: --python-version 3.12 --no-deps -d .whl ale-py gymnasium farama-notifications stable-baselines3
# What comes back under $OUT: gpu.txt (card, driver), imports.txt, bench_gpu.{json,md} (update ms of scratch, zoo,
# hub, the lock-step update / act ms per agent for K = 1, 8, 32, the compiled update), bench_gpu_run.{json,md}
# (DER.learn agent steps/s on the GPU) and
# lockstep_K<k>.log (a real lock-step training run of K agents: steps/s per agent from its log lines).
# Everything is time-boxed so the files come back even if a step hangs. DEVICE=cpu STEPS=2200 KS="2" runs it on a
# CPU machine as a dry run (SKIP_INSTALL=1 with an installed environment first on PATH).
set -u
OUT=${OUT:-/tmp/gpu_check}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-6000}          # per agent, incl. the 1600-step warm-up: ~4400 updates each
KS=${KS:-"8 32"}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
date
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "no nvidia-smi"; python -V; } > "$OUT/gpu.txt"
cat "$OUT/gpu.txt"
if [ -z "${SKIP_INSTALL:-}" ]; then
    if [ -d .whl ]; then
        python -m pip install -q --no-index --find-links .whl ale-py gymnasium stable-baselines3 2>&1 | tail -3
    fi
    python -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3
fi
python - > "$OUT/imports.txt" 2>&1 <<'PY'
import importlib
for name in ("torch", "ale_py", "gymnasium", "stable_baselines3", "numpy", "yaml", "tqdm", "scipy", "pandas",
             "matplotlib", "tensorboard", "cv2", "rlzoo_transfer.rl.lockstep"):
    try:
        mod = importlib.import_module(name)
        print(name, getattr(mod, "__version__", "ok"))
    except Exception as e:  # noqa: BLE001
        print(name, "MISSING", type(e).__name__, e)
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
cat "$OUT/imports.txt"

# two bench calls: each writes its files only when it completes, so a slow part cannot take the other with it
timeout 200 python -m rlzoo_transfer.bench --device "$DEVICE" --repeats 10 --sections update lockstep \
    --methods zoo hub --lockstep-k ${BENCH_KS:-1 8 32} ${COMPILE---compile} --out "$OUT/bench_gpu.json" \
    --md "$OUT/bench_gpu.md" || echo "bench (update, lockstep) exited $?"
timeout 90 python -m rlzoo_transfer.bench --device "$DEVICE" --repeats 6 --sections run \
    --out "$OUT/bench_gpu_run.json" --md "$OUT/bench_gpu_run.md" || echo "bench (run) exited $?"

for K in $KS; do
    seeds=$(seq -s " " 0 $((K - 1)))
    timeout 100 python -m rlzoo_transfer.lockstep --games Alien --methods scratch --seeds $seeds --steps "$STEPS" \
        --eval-freq 100000 --eval-episodes 1 --final-eval-episodes 1 --device "$DEVICE" --no-progress \
        --log-dir "/tmp/lockstep_K$K" > "$OUT/lockstep_K$K.log" 2>&1 || echo "lockstep K=$K exited $?"
    tail -n 3 "$OUT/lockstep_K$K.log"
done
date
