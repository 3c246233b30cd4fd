#!/usr/bin/env bash
# GPU training benchmark (issue 17), for a machine with an NVIDIA GPU: allscan on Burn's CUDA
# backend against PyTorch CUDA in the same script, same network, batch, input and step count.
#
#   1. step loop: `allscan-bench --bin train --device cuda` runs the `paper` profile's network
#      (DenseNet201 + Linear(1920,256)-ReLU-Dropout-Linear(256,1), random init) at its batch (32)
#      and input (224 px): forward, BCE, backward of the whole network, Adam; the batch in one
#      part (`--shards 1`: the profile's 2 parts are for 2 CPU cores). scripts/bench_gpu.py runs
#      the same step in PyTorch, with its default TF32 convolutions and in strict fp32.
#   2. end to end: `allscan train --profile paper --device cuda` on a synthetic set (STEPS
#      batches per epoch, 2 epochs of stage 2, `--weights none`: no download), wall time.
# Prints images/s of each side and the ratios allscan/torch.
#
# Usage: scripts/bench-gpu.sh [--steps N] [--warmup N] [--batch N] [--size N] [--variant V]
#                             [--backends cuda|wgpu|cuda,wgpu] [--no-e2e]
#   --steps 20, --warmup 5 (the first Burn steps compile and autotune kernels), --batch 32,
#   --size 224, --variant densenet201, --backends cuda (wgpu: Burn's wgpu backend on Vulkan,
#   needs libvulkan; part 2 uses the first one); --no-e2e skips part 2.
# Env: BIN_DIR  use prebuilt `train` (and `allscan`, unless --no-e2e) from there, not building
#               (`cargo build --release --locked -p allscan-cli -p allscan-bench --features cuda`;
#               for wgpu only, a build with `--features wgpu` needs no LLVM)
#      PYTHON   a python with CUDA PyTorch and torchvision; default: python3 when it has them,
#               else a venv at target/venv-torch-gpu (`pip install torch torchvision`)
#      OUT      work folder (default target/bench-gpu)
# Time on an 8-16 core machine (estimated, not yet measured): the first release build with cuda
# ~4-6 min (Burn + CubeCL), then ~1-2 min of runs. That build also fetches the prebuilt LLVM 23
# that cubecl-llvm's build script links (cached under ~/.local/share/tracel): offline, put it
# there first, or build elsewhere and set BIN_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=20 WARMUP=5 BATCH=32 SIZE=224 VARIANT=densenet201 BACKENDS=cuda E2E=1
usage() { sed -n '/^# Usage/,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
need() { if [ $# -lt 2 ] || [ -z "$2" ]; then echo "bench-gpu: $1 needs a value" >&2; exit 2; fi; }
int() { [[ "$2" =~ ^[1-9][0-9]*$ ]] || { echo "bench-gpu: $1 wants a positive integer, got '$2'" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
    case "$1" in
        --steps) need "$@"; int "$1" "$2"; STEPS=$2; shift 2 ;;
        --warmup) need "$@"; [[ "$2" =~ ^[0-9]+$ ]] || { echo "bench-gpu: --warmup wants an integer, got '$2'" >&2; exit 2; }; WARMUP=$2; shift 2 ;;
        --batch) need "$@"; int "$1" "$2"; BATCH=$2; shift 2 ;;
        --size) need "$@"; int "$1" "$2"; SIZE=$2; shift 2 ;;
        --variant) need "$@"; case "$2" in densenet121|densenet169|densenet201) VARIANT=$2 ;;
                       *) echo "bench-gpu: --variant is densenet121, densenet169 or densenet201" >&2; exit 2 ;; esac; shift 2 ;;
        --backends) need "$@"; case "$2" in cuda|wgpu|cuda,wgpu|wgpu,cuda) BACKENDS=$2 ;;
                        *) echo "bench-gpu: --backends is cuda, wgpu or cuda,wgpu" >&2; exit 2 ;; esac; shift 2 ;;
        --no-e2e) E2E=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench-gpu: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

# No GPU, no benchmark: say so before building anything.
if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "bench-gpu: no NVIDIA GPU here (nvidia-smi not found); run this on a machine with an NVIDIA GPU and driver" >&2
    exit 1
fi
if ! gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1) || [ -z "$gpu" ]; then
    echo "bench-gpu: nvidia-smi found no usable NVIDIA GPU: ${gpu:-no device listed}" >&2
    exit 1
fi
gpu=$(head -n1 <<<"$gpu")
OUT="${OUT:-target/bench-gpu}"
mkdir -p "$OUT"

IFS=, read -r -a devices <<<"$BACKENDS"
features=$BACKENDS
if [ -n "${BIN_DIR:-}" ]; then
    bins=(train)
    if [ "$E2E" = 1 ]; then bins+=(allscan); fi
    for b in "${bins[@]}"; do
        [ -x "$BIN_DIR/$b" ] || { echo "bench-gpu: BIN_DIR=$BIN_DIR has no executable '$b'" >&2; exit 1; }
    done
else
    command -v cargo >/dev/null 2>&1 || { echo "bench-gpu: no cargo here; build elsewhere and set BIN_DIR" >&2; exit 1; }
    echo "building allscan and allscan-bench (release, features $features)..." >&2
    t0=$SECONDS
    cargo build --release --locked -p allscan-cli -p allscan-bench --bin allscan --bin train --features "$features" >&2
    echo "build: $((SECONDS - t0)) s" >&2
    BIN_DIR=target/release
fi

has_torch() { "$1" -c 'import torch, torchvision; assert torch.cuda.is_available()' 2>/dev/null; }
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
    VENV=target/venv-torch-gpu
    if has_torch python3; then
        PYTHON=python3
    else
        [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
        if ! has_torch "$VENV/bin/python"; then
            echo "installing torch and torchvision into $VENV (several minutes)..." >&2
            "$VENV/bin/pip" install --quiet torch torchvision
        fi
        PYTHON="$VENV/bin/python"
    fi
fi

echo "timing PyTorch..." >&2
torch=$("$PYTHON" scripts/bench_gpu.py "$VARIANT" "$BATCH" "$SIZE" "$STEPS" "$WARMUP")
torch32=$("$PYTHON" scripts/bench_gpu.py "$VARIANT" "$BATCH" "$SIZE" "$STEPS" "$WARMUP" --strict-fp32)
burns=()
for dev in "${devices[@]}"; do
    echo "timing allscan on $dev..." >&2
    if r=$("$BIN_DIR/train" --device "$dev" --variant "$VARIANT" --batch "$BATCH" --size "$SIZE" \
        --shards 1 --iters "$STEPS" --warmup "$WARMUP"); then
        burns+=("$r")
    else
        echo "bench-gpu: allscan on $dev failed (above)" >&2
        exit 1
    fi
done

e2e_s="" e2e_images=0
if [ "$E2E" = 1 ]; then
    # 4 classes x n fields; the default split keeps ~70% for training: STEPS full batches.
    n=$(( (STEPS * BATCH * 10 / 7 + 3) / 4 + 1 ))
    rm -rf "$OUT/data" "$OUT/run"
    "$BIN_DIR/allscan" demo-data "$OUT/data" --n "$n" --size "$SIZE" >&2
    echo "allscan train --profile paper --device ${devices[0]} (2 epochs of stage 2)..." >&2
    t0=$(date +%s.%N)
    "$BIN_DIR/allscan" train "$OUT/data" --out "$OUT/run" --profile paper --weights none --device "${devices[0]}" \
        --epochs 0,2 --batch-size "$BATCH" --input-size "$SIZE" --set train.shards=1 --quiet >&2
    e2e_s=$(python3 -c "import time; print(time.time() - $t0)")
    e2e_images=$(( n * 4 * 7 * 2 / 10 ))
fi

echo
echo "GPU train step, $VARIANT ${SIZE}x${SIZE}, batch $BATCH, median of $STEPS steps after $WARMUP warm-up, $gpu, $(date -u +%FT%TZ)"
python3 - "$torch" "$torch32" "$e2e_s" "$e2e_images" "${devices[0]}" "${burns[@]}" <<'PY'
import json, sys
t, t32 = json.loads(sys.argv[1]), json.loads(sys.argv[2])
e2e_s, e2e_images = sys.argv[3], int(sys.argv[4])
e2e_dev = sys.argv[5]
burns = [json.loads(a) for a in sys.argv[6:]]
print(f"{'side':<30} {'ms/step':>9} {'img/s':>8}")
print(f"{'PyTorch ' + t['torch'] + ' (TF32 convs)':<30} {t['ms_per_step']:>9.1f} {t['images_per_s']:>8.1f}")
print(f"{'PyTorch (strict fp32)':<30} {t32['ms_per_step']:>9.1f} {t32['images_per_s']:>8.1f}")
for b in burns:
    print(f"{'allscan ' + b['backend']:<30} {b['ms_per_step']:>9.1f} {b['images_per_s']:>8.1f}")
for b in burns:
    print(f"ratio allscan {b['backend']} / PyTorch (images/s): {b['images_per_s'] / t['images_per_s']:.2f}x "
          f"(strict fp32: {b['images_per_s'] / t32['images_per_s']:.2f}x)")
if e2e_s:
    s = float(e2e_s)
    print(f"allscan train --profile paper --device {e2e_dev}, 2 epochs of stage 2 on a synthetic set: {s:.0f} s, "
          f"~{e2e_images / s:.1f} training images/s end to end (decoding, HSV view, validation and saving included; "
          f"stage 2 trains denseblock4 + norm5 only)")
PY
