#!/usr/bin/env bash
# Preprocessing benchmark + OpenCV parity, both sides in this one script, single-threaded each:
#   1. a venv under target/venv-opencv with opencv-python-headless and numpy (created once);
#   2. OpenCV-Python runs the Aria authors' recipe (imread -> COLOR_RGB2HSV -> inRange ->
#      bitwise_and) on every image, timed, and writes its masks to target/opencv-masks/;
#   3. the all-colour fixture for the CI parity test is regenerated into target/ and compared
#      with the committed one (crates/allscan-preprocess/tests/fixtures/opencv_hsv.json);
#   4. ROUNDS interleaved rounds (OpenCV, then allscan, each best of 3 passes) time `aria-hsv`;
#      each side's best round is reported. Why interleaved: on a shared machine the load moves
#      between a phase of one side and a phase of the other; measured one after the other, the
#      ratio swung from 0.86x to 1.7x between runs minutes apart;
#   5. the Rust bench times `nucleus` on the same images, prints images/s and the ratio to
#      OpenCV, and the mask agreement with OpenCV's masks and with Segmented/.
# Usage: [ROUNDS=3] scripts/bench-preprocess.sh [DATA_DIR]   (default ../shared/data/aria)
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
echo "== aria-hsv speed: ${ROUNDS:=3} interleaved rounds, 1 thread each side, decode included"
# Only the rounds count for the ratio (the masks step above ran at another moment).
CV_RATE=0
RS_RATE=0
for round in $(seq "$ROUNDS"); do
    CV=$("$VENV/bin/python" scripts/opencv_hsv.py time "$DATA/Original")
    CV=$("$VENV/bin/python" -c 'import json,sys; print(json.loads(sys.argv[1])["images_per_s"])' "$CV")
    RS=$(target/release/preprocess --data "$DATA" --hsv-only)
    printf 'round %s: OpenCV %.0f images/s, allscan %.0f images/s -> %.2fx (load %s)\n' "$round" "$CV" "$RS" \
        "$("$VENV/bin/python" -c 'import sys; print(float(sys.argv[2]) / float(sys.argv[1]))' "$CV" "$RS")" \
        "$(cut -d' ' -f1 /proc/loadavg)"
    CV_RATE=$("$VENV/bin/python" -c 'import sys; print(max(map(float, sys.argv[1:])))' "$CV_RATE" "$CV")
    RS_RATE=$("$VENV/bin/python" -c 'import sys; print(max(map(float, sys.argv[1:])))' "$RS_RATE" "$RS")
done
echo "== allscan (Rust), same images"
target/release/preprocess --data "$DATA" --opencv-masks target/opencv-masks --opencv-rate "$CV_RATE" \
    --aria-hsv-rate "$RS_RATE" --json target/bench-preprocess.json
