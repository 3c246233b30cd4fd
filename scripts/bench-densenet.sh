#!/usr/bin/env bash
# DenseNet eval-mode forward benchmark: allscan (Burn Flex) against PyTorch/torchvision on the
# same machine, same thread count, same input size; prints images/s, peak RSS and the ratios.
#
# Input: env THREADS (default: nproc), VARIANT (densenet201), BATCHES ("1 8"), ITERS (5),
#        MODES ("fast") — any of fast (BN folded + compiled NHWC plan, what predict uses),
#        folded (BN folded, Burn modules), plain, concat.
# Output: a table on stdout; each side runs in its own process per batch size and reports its
#         own VmHWM from /proc/self/status, so both are measured the same way.
# Creates (or reuses) the PyTorch venv at target/venv-torch (PyPI torch, ~5 GB, ~4 min).
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS="${THREADS:-$(nproc)}"
VARIANT="${VARIANT:-densenet201}"
BATCHES="${BATCHES:-1 8}"
ITERS="${ITERS:-5}"
MODES="${MODES:-fast}"
VENV=target/venv-torch

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import torch, torchvision' 2>/dev/null; then
    echo "creating $VENV (PyTorch from PyPI, several minutes)..." >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet torch torchvision
fi

cargo build --release -p allscan-bench --bin densenet >&2
BURN=target/release/densenet

torch_side() {
    OMP_NUM_THREADS="$THREADS" "$VENV/bin/python" - "$VARIANT" "$1" "$ITERS" "$THREADS" <<'PY'
import json, sys, time
import torch, torchvision
variant, batch, iters, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
model = getattr(torchvision.models, variant)(weights=None).eval()
x = torch.randn(batch, 3, 224, 224)
with torch.inference_mode():
    model(x)  # warm-up
    times = []
    for _ in range(max(iters, 1)):
        t0 = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - t0)
times.sort()
median = times[len(times) // 2]
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps(dict(side="torch", torch=torch.__version__, batch=batch, ms_per_batch=median * 1e3,
                      images_per_s=batch / median, peak_rss_mib=int(hwm.split()[1]) / 1024)))
PY
}

burn_side() {
    RAYON_NUM_THREADS="$THREADS" "$BURN" --variant "$VARIANT" --batch "$1" --iters "$ITERS" --mode "$2"
}


echo "DenseNet eval forward, $VARIANT 224x224, $THREADS threads, median of $ITERS runs, $(date -u +%FT%TZ)"
printf '%-6s %-7s %12s %12s %12s %12s %9s %9s\n' batch mode torch_img/s burn_img/s torch_MiB burn_MiB speed rss
for b in $BATCHES; do
    t=$(torch_side "$b")
    for m in $MODES; do
        r=$(burn_side "$b" "$m")
        "$VENV/bin/python" - "$t" "$r" "$b" "$m" <<'PY'
import json, sys
t, r = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"{sys.argv[3]:<6} {sys.argv[4]:<7} {t['images_per_s']:12.2f} {r['images_per_s']:12.2f} "
      f"{t['peak_rss_mib']:12.0f} {r['peak_rss_mib']:12.0f} "
      f"{r['images_per_s'] / t['images_per_s']:8.2f}x {r['peak_rss_mib'] / t['peak_rss_mib']:8.2f}x")
PY
    done
done
echo "speed = burn images/s / torch images/s (goal >= 1.0); rss = burn peak RSS / torch peak RSS (goal <= 0.5)"
