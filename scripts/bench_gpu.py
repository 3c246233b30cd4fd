"""GPU training-step benchmark, PyTorch side (scripts/bench-gpu.sh sets it against allscan's).

The seed's classifier as `allscan-bench --bin train` builds it: torchvision DenseNet (random
init) with the head Linear(C, 256)-ReLU-Dropout(0.5)-Linear(256, 1); one step = forward, BCE
loss, backward, Adam update on the whole network, fp32, on CUDA device 0. Prints one JSON line:
median ms per step, images/s, peak GPU memory.

Usage: python3 scripts/bench_gpu.py VARIANT BATCH SIZE STEPS WARMUP [--strict-fp32]
--strict-fp32 turns off TF32 in cuDNN convolutions (PyTorch's default allows it), so that every
product is a true fp32 one.
"""

import json
import sys
import time


def main(argv):
    strict = "--strict-fp32" in argv
    args = [a for a in argv if a != "--strict-fp32"]
    if len(args) != 5:
        sys.exit("usage: bench_gpu.py VARIANT BATCH SIZE STEPS WARMUP [--strict-fp32]")
    variant, batch, size, steps, warmup = args[0], int(args[1]), int(args[2]), int(args[3]), int(args[4])
    if steps < 1:
        sys.exit("STEPS must be at least 1")

    import torch
    import torchvision

    if not torch.cuda.is_available():
        sys.exit(f"PyTorch {torch.__version__} sees no CUDA device (a CPU-only build, or no driver)")
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = not strict
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda:0")
    torch.manual_seed(0)
    model = getattr(torchvision.models, variant)(weights=None)
    c = model.classifier.in_features
    model.classifier = torch.nn.Sequential(
        torch.nn.Linear(c, 256), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(256, 1)
    )
    model = model.to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, size, size, device=dev)
    y = torch.tensor([float(i % 2) for i in range(batch)], device=dev).unsqueeze(1)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    times = []
    for i in range(warmup + steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    median = times[len(times) // 2]
    print(json.dumps(dict(
        side="torch-strict-fp32" if strict else "torch",
        torch=torch.__version__,
        gpu=torch.cuda.get_device_name(0),
        ms_per_step=median * 1e3,
        images_per_s=batch / median,
        peak_gpu_mib=torch.cuda.max_memory_allocated() / 2**20,
    )))


if __name__ == "__main__":
    main(sys.argv[1:])
