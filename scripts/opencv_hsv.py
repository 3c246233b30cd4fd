#!/usr/bin/env python3
"""The Aria authors' HSV recipe done by OpenCV itself: the reference for allscan's `aria-hsv`.

Run by scripts/bench-preprocess.sh inside target/venv-opencv (opencv-python-headless, numpy).

  opencv_hsv.py masks   DATA_DIR OUT_DIR   write OpenCV's masks (PNG, 255 = kept) under OUT_DIR,
                                           keeping relative paths, and print images/s as JSON
  opencv_hsv.py time    DATA_DIR         time the recipe only (best of 3 passes), print images/s
  opencv_hsv.py fixture OUT_JSON           OpenCV's HSV and inRange results for every 8-bit
                                           colour, hashed, plus sampled pixels (quirks included)

The recipe, as the authors ran it: imread (BGR order) -> cvtColor(COLOR_RGB2HSV), so red and
blue are swapped before the hue is computed -> inRange((168,50,50), (182,255,255)) ->
bitwise_and(img, img, mask=mask).
"""
import hashlib
import json
import os
import sys
import time

import cv2
import numpy as np

LOWER = np.array([168, 50, 50], dtype=np.uint8)
UPPER = np.array([182, 255, 255], dtype=np.uint8)
REPEAT = 3  # timed passes; the best is reported (same as the Rust bench's --repeat)


def recipe(img_bgr):
    hsv = cv2.cvtColor(img_bgr, cv2.COLOR_RGB2HSV)  # the authors' swap, kept on purpose
    mask = cv2.inRange(hsv, LOWER, UPPER)
    segmented = cv2.bitwise_and(img_bgr, img_bgr, mask=mask)
    return mask, segmented


def list_images(root):
    out = []
    for d, _, files in os.walk(root):
        for f in files:
            if f.lower().endswith((".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")):
                out.append(os.path.relpath(os.path.join(d, f), root))
    out.sort()
    return out


def cmd_time(data_dir):
    """Timing only (no masks written): one round of the bench script's interleaved rounds."""
    rels = list_images(data_dir)
    dt = float("inf")
    n = 0
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        n = 0
        for rel in rels:
            img = cv2.imread(os.path.join(data_dir, rel), cv2.IMREAD_COLOR)
            if img is None:
                continue
            mask, segmented = recipe(img)
            n += 1
        dt = min(dt, time.perf_counter() - t0)
    print(json.dumps({"images": n, "seconds": dt, "images_per_s": n / dt if dt > 0 else 0.0}))


def cmd_masks(data_dir, out_dir):
    rels = list_images(data_dir)
    masks = {}
    kept = 0
    # Time exactly what the Rust side times: read + decode once, convert, threshold, apply;
    # best of REPEAT passes, as the Rust bench does.
    dt = float("inf")
    for _ in range(REPEAT):
        t0 = time.perf_counter()
        for rel in rels:
            img = cv2.imread(os.path.join(data_dir, rel), cv2.IMREAD_COLOR)
            if img is None:
                continue
            mask, segmented = recipe(img)
            kept += int(segmented[0, 0, 0])  # keep the result alive
            masks[rel] = mask
        dt = min(dt, time.perf_counter() - t0)
    for rel, mask in masks.items():
        path = os.path.join(out_dir, os.path.splitext(rel)[0] + ".png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cv2.imwrite(path, mask)
    print(json.dumps({
        "opencv_version": cv2.__version__,
        "images": len(masks),
        "seconds": dt,
        "images_per_s": len(masks) / dt if dt > 0 else 0.0,
        "threads": cv2.getNumThreads(),
        "passes": REPEAT,
    }))


def cube_bgr():
    """Every 8-bit colour once, as a 4096x4096 image; index i = c0 << 16 | c1 << 8 | c2."""
    i = np.arange(1 << 24, dtype=np.uint32)
    cube = np.stack([(i >> 16) & 255, (i >> 8) & 255, i & 255], axis=-1).astype(np.uint8)
    return cube.reshape(4096, 4096, 3)


def cmd_fixture(out_json):
    cube = cube_bgr()
    hsv = cv2.cvtColor(cube, cv2.COLOR_RGB2HSV)
    mask = cv2.inRange(hsv, LOWER, UPPER)
    flat_in = cube.reshape(-1, 3)
    flat_hsv = hsv.reshape(-1, 3)
    flat_mask = mask.reshape(-1)
    # Samples for a readable failure: edge colours (greys, pure hues, the hue wrap at 180,
    # the bounds 50 and 168/182) and random ones.
    rng = np.random.default_rng(20240611)
    idx = set(int(x) for x in rng.integers(0, 1 << 24, 4000))
    for v in range(256):
        for c in [(v, v, v), (v, 0, 0), (0, v, 0), (0, 0, v), (v, 0, v), (v, v // 2, v), (v, 0, v // 7)]:
            idx.add(c[0] << 16 | c[1] << 8 | c[2])
    kept_idx = np.flatnonzero(flat_mask)
    idx.update(int(x) for x in rng.choice(kept_idx, 2000, replace=False))
    # Colours whose hue lands on 180 (the wrap OpenCV leaves unreduced) or on the bounds.
    for target in (167, 168, 179, 180, 182):
        hits = np.flatnonzero(flat_hsv[:, 0] == target)
        if hits.size:
            idx.update(int(x) for x in rng.choice(hits, min(200, hits.size), replace=False))
    for target in (49, 50):
        hits = np.flatnonzero((flat_hsv[:, 1] == target) & (flat_hsv[:, 0] >= 168))
        if hits.size:
            idx.update(int(x) for x in rng.choice(hits, min(200, hits.size), replace=False))
    samples = [
        [int(x) for x in flat_in[i]] + [int(x) for x in flat_hsv[i]] + [int(flat_mask[i] > 0)]
        for i in sorted(idx)
    ]
    out = {
        "about": "OpenCV cvtColor(COLOR_RGB2HSV) + inRange((168,50,50),(182,255,255)) on every "
                 "8-bit colour; input index i = c0<<16 | c1<<8 | c2 with c0 the channel OpenCV "
                 "calls R. Written by scripts/opencv_hsv.py fixture.",
        "opencv_version": cv2.__version__,
        "cube_hsv_sha256": hashlib.sha256(flat_hsv.tobytes()).hexdigest(),
        "cube_mask_sha256": hashlib.sha256((flat_mask > 0).astype(np.uint8).tobytes()).hexdigest(),
        "cube_mask_count": int((flat_mask > 0).sum()),
        "hue_180_count": int((flat_hsv[:, 0] == 180).sum()),
        "samples_columns": ["c0", "c1", "c2", "h", "s", "v", "kept"],
        "samples": samples,
    }
    os.makedirs(os.path.dirname(out_json) or ".", exist_ok=True)
    with open(out_json, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print(json.dumps({k: v for k, v in out.items() if k != "samples"} | {"samples": len(samples)}))


if __name__ == "__main__":
    cv2.setNumThreads(1)  # like the Rust side by default; see bench-preprocess.sh
    if len(sys.argv) == 4 and sys.argv[1] == "masks":
        cmd_masks(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "time":
        cmd_time(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "fixture":
        cmd_fixture(sys.argv[2])
    else:
        sys.exit(__doc__)
