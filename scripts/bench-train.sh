#!/usr/bin/env bash
# DenseNet training-step benchmark: allscan (Burn Flex, autodiff) against PyTorch/torchvision in
# the same script, same thread count, same batch and input size. One step = forward of the
# seed's classifier (DenseNet201 + Linear(1920,256)-ReLU-Dropout-Linear(256,1)), BCE loss,
# backward, Adam update. allscan runs the step as `allscan train --profile paper` does: the batch
# in `train.shards` parts (2) on parallel threads, gradients summed (env SHARDS overrides).
# Prints images/s of each side and the ratio burn/torch.
#
# Input: env THREADS (default: nproc), VARIANT (densenet201), BATCH (8), SIZE (224), ITERS (3).
# Creates (or reuses) the PyTorch venv at target/venv-torch (PyPI torch, several minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS="${THREADS:-$(nproc)}"
VARIANT="${VARIANT:-densenet201}"
BATCH="${BATCH:-8}"
SIZE="${SIZE:-224}"
ITERS="${ITERS:-3}"
VENV=target/venv-torch

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import torch, torchvision' 2>/dev/null; then
    echo "creating $VENV (PyTorch from PyPI, several minutes)..." >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet torch torchvision
fi
cargo build --release -p allscan-bench --bin train >&2

torch=$(OMP_NUM_THREADS="$THREADS" "$VENV/bin/python" - "$VARIANT" "$BATCH" "$SIZE" "$ITERS" "$THREADS" <<'PY'
import json, sys, time
import torch, torchvision
variant, batch, size, iters, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.set_num_threads(threads)
torch.manual_seed(0)
backbone = getattr(torchvision.models, variant)(weights=None)
c = backbone.classifier.in_features
backbone.classifier = torch.nn.Sequential(torch.nn.Linear(c, 256), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(256, 1))
model = backbone.train()
opt = torch.optim.Adam(model.parameters(), lr=1e-4)
x = torch.randn(batch, 3, size, size)
y = torch.tensor([float(i % 2) for i in range(batch)]).unsqueeze(1)
loss_fn = torch.nn.BCEWithLogitsLoss()
times = []
for i in range(iters + 1):
    t0 = time.perf_counter()
    opt.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    if i > 0:
        times.append(time.perf_counter() - t0)
times.sort()
median = times[len(times) // 2]
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps(dict(side="torch", torch=torch.__version__, ms_per_step=median * 1e3,
                      images_per_s=batch / median, peak_rss_mib=int(hwm.split()[1]) / 1024)))
PY
)
burn=$(RAYON_NUM_THREADS="$THREADS" target/release/train --variant "$VARIANT" --batch "$BATCH" --size "$SIZE" --iters "$ITERS" ${SHARDS:+--shards "$SHARDS"})

echo "DenseNet train step, $VARIANT ${SIZE}x${SIZE}, batch $BATCH, $THREADS threads, median of $ITERS steps, $(date -u +%FT%TZ)"
python3 - "$torch" "$burn" <<'PY'
import json, sys
t, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"{'side':<8} {'ms/step':>10} {'img/s':>8} {'peak MiB':>9}")
for s in (t, b):
    print(f"{s['side']:<8} {s['ms_per_step']:>10.0f} {s['images_per_s']:>8.2f} {s['peak_rss_mib']:>9.0f}")
print(f"ratio burn/torch (images/s): {b['images_per_s'] / t['images_per_s']:.2f}x")
PY
