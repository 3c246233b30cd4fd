#!/usr/bin/env bash
# Preprocessing benchmark + OpenCV parity, both sides in this one script, single-threaded each:
#   1. a venv under target/venv-opencv with opencv-python-headless and numpy (created once);
#   2. OpenCV-Python runs the Aria authors' recipe (imread -> COLOR_RGB2HSV -> inRange ->
#      bitwise_and) on every image, timed, and writes its masks to target/opencv-masks/;
#   3. the all-colour fixture for the CI parity test is regenerated into target/ and compared
#      with the committed one (crates/allscan-preprocess/tests/fixtures/opencv_hsv.json);
#   4. the Rust bench times `aria-hsv` and `nucleus` on the same images, prints images/s and
#      the ratio to OpenCV, and the mask agreement with OpenCV's masks and with Segmented/.
# Usage: scripts/bench-preprocess.sh [DATA_DIR]   (default ../shared/data/aria)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="${1:-../shared/data/aria}"
VENV=target/venv-opencv
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet opencv-python-headless numpy
fi
cargo build --release --quiet -p allscan-bench --bin preprocess
echo "== OpenCV-Python: the authors' recipe"
CV_JSON=$("$VENV/bin/python" scripts/opencv_hsv.py masks "$DATA/Original" target/opencv-masks)
echo "$CV_JSON"
CV_RATE=$("$VENV/bin/python" -c 'import json,sys; print(json.loads(sys.argv[1])["images_per_s"])' "$CV_JSON")
echo "== OpenCV all-colour fixture vs the committed one"
"$VENV/bin/python" scripts/opencv_hsv.py fixture target/opencv_hsv_fixture.json > /dev/null
"$VENV/bin/python" - <<'PY'
import json
new = json.load(open("target/opencv_hsv_fixture.json"))
old = json.load(open("crates/allscan-preprocess/tests/fixtures/opencv_hsv.json"))
same = all(new[k] == old[k] for k in ("cube_hsv_sha256", "cube_mask_sha256", "cube_mask_count"))
print(f"OpenCV {new['opencv_version']} vs fixture from {old['opencv_version']}: "
      + ("identical on all 2^24 colours" if same else "DIFFERENT: regenerate and check the Rust side"))
PY
echo "== allscan (Rust), same images"
target/release/preprocess --data "$DATA" --opencv-masks target/opencv-masks --opencv-rate "$CV_RATE" \
    --json target/bench-preprocess.json
