#!/usr/bin/env bash
# Browser test of `allscan serve`'s page: starts the real server (tiny random model, loopback,
# any free port) and drives the page in headless chromium: one synthetic smear through the
# single-image tool (prediction and Grad-CAM overlay), then 3 synthetic fields as one slide
# (gallery, one cell re-classified by click and one by keyboard, JSON and CSV export checked).
# Screenshots and exports: target/browser-test/{page,slide,slide-reviewed}.png, export.{json,csv}.
# Needs /usr/bin/chromium (Debian: apt-get install -y chromium) and npm (playwright-core is
# installed under target/browser-test/, never globally; its own browser download is not used).
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/browser-test
mkdir -p "$out"
if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  echo "browser test skipped: ${CHROMIUM:-/usr/bin/chromium} not found (apt-get install -y chromium)"; exit 0
fi
if [ ! -d "$out/node_modules/playwright-core" ]; then
  (cd "$out" && [ -f package.json ] || echo '{"private":true}' > package.json; \
   PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --silent playwright-core@1.65.1)
fi
cp scripts/browser-test.mjs "$out/browser-test.mjs"
cargo build -q -p allscan-server --example tiny_server
cargo build -q --workspace --bin allscan
# Three synthetic fields of different classes for the slide.
rm -rf "$out/fields"
target/debug/allscan demo-data "$out/fields" --n 1 --size 256 > /dev/null
mapfile -t slide < <(find "$out/fields/Original" -name '*.png' | sort | head -n 3)
log="$out/server.log"
target/debug/examples/tiny_server 127.0.0.1:0 --sample "$out/sample.png" > "$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
url=""
for _ in $(seq 1 100); do
  url=$(grep -o 'http://127.0.0.1:[0-9]*/' "$log" || true)
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "server did not start:"; cat "$log"; exit 1; }
node "$out/browser-test.mjs" "$url" "$out/sample.png" "$out" "${slide[@]}"
echo "screenshots: $out/page.png $out/slide.png $out/slide-reviewed.png; exports: $out/export.json $out/export.csv"
