#!/usr/bin/env python3
"""DenseNet parity fixture writer (arXiv:1608.06993; torchvision's implementation is the reference).

Input: nothing (seeded random weights). Output, in OUT_DIR:
  <name>.pth           torchvision state_dict (zip format, current key names)
  <name>_legacy.pth    the same in the legacy pickle format with the 2017 key names
                       (`denselayer1.norm.1.weight`), as in densenet201-c1103571.pth
  tiny_checkpoint.pth  (tiny only) {"epoch": 3, "state_dict": ...}, as training scripts save
  <name>.json          config, shapes and file names
  <name>_input.f32     fixed input, little-endian float32, NCHW
  <name>_logits.f32    eval-mode logits
  <name>_features.f32  eval-mode feature map after norm5 + ReLU

Run with the venv from scripts/bench-densenet.sh (target/venv-torch):
  target/venv-torch/bin/python scripts/densenet_parity.py tiny crates/densenet-burn/tests/fixtures
  target/venv-torch/bin/python scripts/densenet_parity.py densenet201 target/parity-densenet201
The Rust test `crates/densenet-burn/tests/parity.rs` reads these (set DENSENET_PARITY_DIR and
DENSENET_PARITY_NAME=densenet201 for the full network).
"""
import json
import re
import sys
from collections import OrderedDict
from pathlib import Path

import torch
from torchvision.models import DenseNet


def configs(name):
    if name == "tiny":
        # Small enough to commit (< 100 kB) yet exercises every layer type and 4 blocks.
        return dict(growth_rate=8, block_config=[2, 2, 2, 2], num_init_features=16, bn_size=4,
                    num_classes=5), [2, 3, 64, 64]
    blocks = {"densenet121": [6, 12, 24, 16], "densenet169": [6, 12, 32, 32],
              "densenet201": [6, 12, 48, 32]}[name]
    return dict(growth_rate=32, block_config=blocks, num_init_features=64, bn_size=4,
                num_classes=1000), [1, 3, 224, 224]


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    name, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(20240607)
    cfg, input_shape = configs(name)
    model = DenseNet(growth_rate=cfg["growth_rate"], block_config=tuple(cfg["block_config"]),
                     num_init_features=cfg["num_init_features"], bn_size=cfg["bn_size"],
                     num_classes=cfg["num_classes"])
    # Randomise every BatchNorm (affine and running statistics) so that parity checks the
    # eval-mode formula, not the identity a fresh BatchNorm computes.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(100)
            if isinstance(m, torch.nn.Linear):
                m.bias.normal_(0.0, 0.1)
    model.eval()
    x = torch.randn(*input_shape)
    with torch.no_grad():
        features = torch.relu(model.features(x))
        logits = model(x)

    sd = model.state_dict()
    torch.save(sd, out / f"{name}.pth")
    legacy = OrderedDict(
        (re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k), v)
        for k, v in sd.items())
    torch.save(legacy, out / f"{name}_legacy.pth", _use_new_zipfile_serialization=False)
    if name == "tiny":
        # A training checkpoint: the state_dict nested under "state_dict" beside other entries.
        torch.save({"epoch": 3, "state_dict": sd}, out / f"{name}_checkpoint.pth")
    x.numpy().astype("<f4").tofile(out / f"{name}_input.f32")
    logits.numpy().astype("<f4").tofile(out / f"{name}_logits.f32")
    features.numpy().astype("<f4").tofile(out / f"{name}_features.f32")
    meta = dict(config=cfg, input_shape=list(x.shape), logits_shape=list(logits.shape),
                features_shape=list(features.shape), torch=torch.__version__, seed=20240607)
    (out / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {name} fixture to {out}: logits {list(logits.shape)}, "
          f"features {list(features.shape)}")


if __name__ == "__main__":
    main()
