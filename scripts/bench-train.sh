#!/usr/bin/env bash
# Training-step benchmark: allscan (Burn Flex, autodiff) against PyTorch/torchvision in the same
# script, same thread count, batch and input size. One step = forward, loss, backward and the
# optimiser update of the classifier `allscan train` runs:
#   densenet201: the paper profile's (DenseNet201 + Linear(1920,256)-ReLU-Dropout-Linear(256,1),
#                BCE, Adam), the batch in the profile's 2 shards on parallel threads;
#   cpu:         the cpu profile's slim DenseNet (growth 16, blocks 3-6-8-6, 32 stem features,
#                Linear(C,128)-ReLU-Dropout(0.2)-Linear(128,4), cross-entropy, AdamW).
# For each case it prints ms/step, images/s and peak RSS of both sides and the ratio, and the
# achieved GFLOP/s of the step's matrix work (convolutions and linear layers, counted on the
# PyTorch model: 3x the forward's multiply-adds x 2, i.e. the forward and the two backward
# products) against this machine's peaks measured here with a PyTorch gemm loop (fp32 and,
# where the CPU has AMX / AVX512-BF16, bf16).
# Each case runs in every precision of PRECISIONS: fp32, and bf16 (PyTorch: autocast to bf16 on
# CPU; allscan: `--precision bf16`, the convolutions' gemms in bf16 on AMX with fp32
# accumulation; the row says "fp32" where the CPU lacks AMX). bf16 rows are set against the
# bf16 peak.
#
# Input: env THREADS (default: nproc), CASES (default "densenet201:8:224 densenet201:32:224
# cpu:32:112"; VARIANT:BATCH:SIZE), PRECISIONS (default "fp32 bf16"), ITERS (3), SHARDS
# (allscan's shard count; default: the profile's). Creates (or reuses) the PyTorch venv at target/venv-torch (PyPI torch, minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS="${THREADS:-$(nproc)}"
CASES="${CASES:-densenet201:8:224 densenet201:32:224 cpu:32:112}"
ITERS="${ITERS:-3}"
PRECISIONS="${PRECISIONS:-fp32 bf16}"
VENV=target/venv-torch

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import torch, torchvision' 2>/dev/null; then
    echo "creating $VENV (PyTorch from PyPI, several minutes)..." >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet torch torchvision
fi
cargo build --release -p allscan-bench --bin train >&2

torch_step() { # VARIANT BATCH SIZE PRECISION -> one JSON line
    OMP_NUM_THREADS="$THREADS" "$VENV/bin/python" - "$1" "$2" "$3" "$ITERS" "$THREADS" "$4" <<'PY'
import contextlib, json, sys, time
import torch, torchvision
variant, batch, size, iters, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
precision = sys.argv[6]
cast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
torch.set_num_threads(threads)
torch.manual_seed(0)
if variant == "cpu":
    net = torchvision.models.DenseNet(growth_rate=16, block_config=(3, 6, 8, 6), num_init_features=32, bn_size=4)
    hidden, dropout, classes = 128, 0.2, 4
else:
    net = getattr(torchvision.models, variant)(weights=None)
    hidden, dropout, classes = 256, 0.5, 1
c = net.classifier.in_features
net.classifier = torch.nn.Sequential(torch.nn.Linear(c, hidden), torch.nn.ReLU(), torch.nn.Dropout(dropout), torch.nn.Linear(hidden, classes))
model = net.train()
# Multiply-adds of one forward pass: convolutions and linear layers.
macs = 0
def count(m, inp, out):
    global macs
    w = m.weight
    macs += out.numel() * (w[0].numel() if isinstance(m, torch.nn.Conv2d) else w.shape[1])
hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
x = torch.randn(batch, 3, size, size)
with torch.no_grad():
    model(x)
for h in hooks:
    h.remove()
if classes == 1:
    y = torch.tensor([float(i % 2) for i in range(batch)]).unsqueeze(1)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
else:
    y = torch.tensor([i % classes for i in range(batch)])
    loss_fn = torch.nn.CrossEntropyLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
times = []
for i in range(iters + 1):
    t0 = time.perf_counter()
    opt.zero_grad()
    with cast():
        loss = loss_fn(model(x).float(), y)
    loss.backward()
    opt.step()
    if i > 0:
        times.append(time.perf_counter() - t0)
times.sort()
median = times[len(times) // 2]
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps(dict(side="torch", precision=precision, torch=torch.__version__, ms_per_step=median * 1e3, images_per_s=batch / median,
                      peak_rss_mib=int(hwm.split()[1]) / 1024, step_gflop=6 * macs / 1e9)))
PY
}

peaks=$(OMP_NUM_THREADS="$THREADS" "$VENV/bin/python" - "$THREADS" <<'PY'
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))
flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
def gemm(dtype, n=2048, k=10):
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(k):
        a @ b
    return 2 * n**3 * k / (time.perf_counter() - t) / 1e9
out = dict(fp32=gemm(torch.float32), isa=[f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags])
if "amx_bf16" in flags or "avx512_bf16" in flags:
    out["bf16"] = gemm(torch.bfloat16)
print(json.dumps(out))
PY
)

results=()
for case in $CASES; do
    IFS=: read -r variant batch size <<<"$case"
    for precision in $PRECISIONS; do
        t=$(torch_step "$variant" "$batch" "$size" "$precision")
        b=$(RAYON_NUM_THREADS="$THREADS" target/release/train --variant "$variant" --batch "$batch" --size "$size" \
            --iters "$ITERS" --precision "$precision" ${SHARDS:+--shards "$SHARDS"})
        results+=("$case" "$t" "$b")
    done
done

echo "Training step, $THREADS threads, median of $ITERS steps, $(date -u +%FT%TZ)"
python3 - "$peaks" "${results[@]}" <<'PY'
import json, sys
peaks = json.loads(sys.argv[1])
line = f"measured gemm peak (PyTorch, 2048^3): fp32 {peaks['fp32']:.0f} GFLOP/s"
if "bf16" in peaks:
    line += f", bf16 {peaks['bf16']:.0f} GFLOP/s"
print(line + f"; CPU flags: {' '.join(peaks['isa']) or 'none of avx2/fma/avx512/amx'}")
print(f"{'case':<20} {'side':<11} {'ms/step':>9} {'img/s':>8} {'GFLOP/s':>8} {'% of peak':>10} {'peak MiB':>9}")
rest = sys.argv[2:]
for i in range(0, len(rest), 3):
    case, t, b = rest[i], json.loads(rest[i + 1]), json.loads(rest[i + 2])
    gflop = t["step_gflop"]
    for s in (t, b):
        # Each side's row names the arithmetic it ran and is set against that peak.
        p = s.get("precision", "fp32")
        peak = peaks.get(p, peaks["fp32"])
        rate = gflop / (s["ms_per_step"] / 1e3)
        print(
            f"{case:<20} {s['side'] + ' ' + p:<11} {s['ms_per_step']:>9.0f} {s['images_per_s']:>8.2f} {rate:>8.1f} {100 * rate / peak:>9.0f}% {s['peak_rss_mib']:>9.0f}")
    print(f"{case:<20} ratio burn/torch ({t.get('precision', 'fp32')}): images/s {b['images_per_s'] / t['images_per_s']:.2f}x, "
          f"peak RSS {b['peak_rss_mib'] / t['peak_rss_mib']:.2f}x ({gflop:.1f} GFLOP of gemm work per step)")
PY
