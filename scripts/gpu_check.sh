#!/usr/bin/env bash
# The prepared device check of issue #6 (lock-step on a GPU), one call of the `device` tool:
#
#   run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=560)
#
# .whl/ (git-ignored) holds the wheels the device machine lacks and cannot download (it has torch and CUDA, Python
# 3.12): ale-py, gymnasium, farama-notifications, stable-baselines3; fill it here with
#   pip download --only-binary=:all: --python-version 3.12 --no-deps -d .whl ale-py gymnasium farama-notifications stable-baselines3
# What comes back under $OUT (at most 8 files): gpu_check.log (everything printed, incl. card, driver, imports and
# the lock-step equality tests on cuda), bench_gpu.{json,md} (env agent-steps/s, update ms of reference, scratch,
# zoo, hub, the lock-step update / act ms per agent for K = 1, 8, 32), bench_gpu_compile.md (the same with
# DER(compile=True)), bench_gpu_run.md (DER.learn agent steps/s on the GPU) and lockstep_K<k>.log (real lock-step
# training runs of K agents: steps/s per agent every 10 s).
# Everything is time-boxed so the files come back even if a step hangs. DEVICE=cpu STEPS=2200 KS="2" runs it on a
# CPU machine as a dry run (SKIP_INSTALL=1 with an installed environment first on PATH).
set -u
OUT=${OUT:-/tmp/gpu_check}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-5000}          # per agent, incl. the 1600-step warm-up
KS=${KS:-"8 32"}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1
date
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "no nvidia-smi"
python3 -V; nproc
if [ -z "${SKIP_INSTALL:-}" ]; then
    # wheels into their own folder, no resolver (the image's torch/numpy stay); the package itself from the tree
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        2>&1 | tail -3
    export PYTHONPATH=/tmp/site:$PWD
fi
python3 - <<'PY'
import importlib
for name in ("torch", "ale_py", "gymnasium", "stable_baselines3", "numpy", "yaml", "tqdm", "scipy", "pandas",
             "matplotlib", "tensorboard", "cv2", "rich", "rlzoo_transfer.rl.lockstep"):
    try:
        mod = importlib.import_module(name)
        print(name, getattr(mod, "__version__", "ok"))
    except Exception as e:  # noqa: BLE001
        print(name, "MISSING", type(e).__name__, e)
import torch
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY

echo "== lock-step equality on $DEVICE (K = 2 vs single runs, noise off)"
RLZOO_TEST_DEVICE=$DEVICE timeout 90 python3 -m pytest -q -p no:cacheprovider tests/rl/test_lockstep.py \
    -k "k2_equals or stacked or zoo_lite" 2>&1 | tail -15

# separate bench calls: each writes its files only when it completes, so a slow part cannot take the others with it
echo "== bench: env, update, lockstep"
timeout 140 python3 -m rlzoo_transfer.bench --device "$DEVICE" --repeats 8 --sections env update lockstep \
    --methods zoo hub --lockstep-k ${BENCH_KS:-1 8 32} --out "$OUT/bench_gpu.json" \
    --md "$OUT/bench_gpu.md" || echo "bench (env, update, lockstep) exited $?"

for K in $KS; do
    echo "== lock-step training run, K = $K"
    seeds=$(seq -s " " 0 $((K - 1))); rm -rf "/tmp/lockstep_K$K"
    timeout 75 python3 -m rlzoo_transfer.lockstep --games Alien --methods scratch --seeds $seeds --steps "$STEPS" \
        --eval-freq 100000 --eval-episodes 1 --final-eval-episodes 1 --device "$DEVICE" --no-progress \
        --log-every 10 --log-dir "/tmp/lockstep_K$K" > "$OUT/lockstep_K$K.log" 2>&1 || echo "lockstep K=$K exited $?"
    tail -n 4 "$OUT/lockstep_K$K.log"
done

echo "== bench: run"
timeout 60 python3 -m rlzoo_transfer.bench --device "$DEVICE" --repeats 3 --sections run \
    --md "$OUT/bench_gpu_run.md" || echo "bench (run) exited $?"
echo "== bench: compiled update"
timeout 70 python3 -m rlzoo_transfer.bench --device "$DEVICE" --repeats 6 --sections update --methods \
    --compile --md "$OUT/bench_gpu_compile.md" || echo "bench (compile) exited $?"
date
