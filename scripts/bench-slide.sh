#!/usr/bin/env bash
# Slide benchmark (not a timed test): 20 synthetic 1712x1368 smear fields (JPEG, ~48 white cells
# each) through `allscan report` (release build), against `allscan predict` on the same fields in
# the same script (the per-cell pipeline alone), so the figure is a ratio as well as seconds.
# Usage: scripts/bench-slide.sh [RUN] [FIELDS] (RUN defaults to target/smoke/run1, a cell-profile
# run; any trained bundle works). Threads: RAYON_NUM_THREADS / taskset as you like (2 cores: the
# goal is <= 20 s for 20 fields).
# Then, when chromium and npm are at hand (as for scripts/browser-test.sh; PAGE=0 skips it), the
# same fields through the web page: `allscan serve RUN` on loopback, the fields uploaded as one
# slide in headless chromium (scripts/browser-test.mjs --bench), timed until every cell is in the
# gallery, with the page's longest main-thread block, its long tasks and its longest frame gap
# while it works (target/bench-slide/page/bench-page.json, bench-page.png).
set -euo pipefail
cd "$(dirname "$0")/.."
run=${1:-target/smoke/run1}
n=${2:-20}
out=target/bench-slide
[ -f "$run/metadata.json" ] || { echo "no run bundle at $run: pass one (allscan train ... --profile cell)"; exit 1; }
# PROFILE=debug uses the dev build (dependencies at opt-level 3, our crates at 1): slower, an upper bound.
profile=${PROFILE:-release}
if [ "$profile" = release ]; then cargo build -q --release -p allscan-cli --bin allscan --example slide_fields
else cargo build -q --workspace --bin allscan --example slide_fields; profile=debug; fi
bin=target/$profile
rm -rf "$out"
"$bin/examples/slide_fields" "$out/fields" "$n" 1712 1368 7
secs() { local t0 t1; t0=$(date +%s.%N); "$@" > /dev/null; t1=$(date +%s.%N); echo "$t1 - $t0" | bc -l; }
predict=$(secs "$bin/allscan" predict "$run" "$out/fields" --format json)
report=$(secs "$bin/allscan" report "$run" "$out/fields" --out "$out/report")
cells=$(grep -o '"cells_found": [0-9]*' "$out/report/slide.json" | head -n1 | grep -o '[0-9]*$')
printf '%s build: slide of %s fields (1712x1368), %s cells, %s core(s): allscan report %.1f s (%.2f s/field), allscan predict %.1f s; report/predict %.2f\n' \
  "$profile" "$n" "$cells" "$(nproc)" "$report" "$(echo "$report / $n" | bc -l)" "$predict" "$(echo "$report / $predict" | bc -l)"
chromium=${CHROMIUM:-/usr/bin/chromium}
if [ "${PAGE:-1}" = 0 ] || [ ! -x "$chromium" ] || ! command -v npm > /dev/null; then
  echo "page: skipped (PAGE=0, or no $chromium / npm)"; exit 0
fi
bt=target/browser-test
mkdir -p "$bt" "$out/page"
if [ ! -d "$bt/node_modules/playwright-core" ]; then
  (cd "$bt" && [ -f package.json ] || echo '{"private":true}' > package.json; \
   PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --silent playwright-core@1.65.1)
fi
cp scripts/browser-test.mjs "$bt/browser-test.mjs"
log="$out/page/server.log"
"$bin/allscan" serve "$run" --addr 127.0.0.1:0 > "$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
url=""
for _ in $(seq 1 300); do
  url=$(grep -o 'http://127.0.0.1:[0-9]*/' "$log" || true)
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "server did not start:"; cat "$log"; exit 1; }
mapfile -t fields < <(find "$out/fields" -name '*.jpg' | sort)
node "$bt/browser-test.mjs" --bench "$url" "$(realpath "$out/page")" "${fields[@]}"
