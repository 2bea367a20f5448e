"""Bounded memory: all-layer Grad-CAM + PGD over many batches, printing peak and final memory.

    python benchmarks/memory.py --device cpu --batches 1000 --batch-size 8
    python benchmarks/memory.py --device cuda --batches 1000 --batch-size 64 --precision bf16

Runs ``--batches`` batches of the digits test images (small VGG, 32x32) through ``al.explain`` (Grad-CAM at
every layer) and every ``--attack-every``-th batch through PGD-5, and records memory after warm-up, at the
middle and at the end: on CUDA ``torch.cuda.memory_allocated`` and the peak ``max_memory_allocated``; on the
CPU the process's resident set (``/proc/self/statm``) and its peak (``ru_maxrss``). A leak (maps, hooks or
graphs kept alive) shows as final memory growing with the batch count; bounded memory keeps final ≈ warm-up.
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

import advlens as al


def memory_mb(device: torch.device) -> tuple[float, float]:
    """(current, peak) memory in MiB: CUDA allocations, or the CPU process's resident set."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20, torch.cuda.max_memory_allocated(device) / 2**20
    with open("/proc/self/statm") as f:
        rss_pages = int(f.read().split()[1])
    return rss_pages * resource.getpagesize() / 2**20, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--attack-every", type=int, default=10)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = p.parse_args()
    device = torch.device(args.device)
    model = al.load_model("small_vgg_digits", device=device).set_precision(args.precision)
    data = al.load_images("digits", split="test")
    x_all, y_all = data.x.to(device), data.y.to(device)
    marks = {10: "warm-up", args.batches // 2: "middle", args.batches: "final"}
    start = time.perf_counter()
    for b in range(1, args.batches + 1):
        i = (b * args.batch_size) % (len(x_all) - args.batch_size)
        x, y = x_all[i : i + args.batch_size], y_all[i : i + args.batch_size]
        maps = al.explain(model, x, "gradcam", layers="all")
        if b % args.attack_every == 0:
            al.attack(model, x, y, "pgd", eps=0.031, alpha=0.01, steps=5)
        del maps
        if b in marks:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            now, peak = memory_mb(device)
            print(f"after {b:5d} batches ({marks[b]:7s}): memory {now:8.1f} MiB, peak {peak:8.1f} MiB, "
                  f"{b * args.batch_size / (time.perf_counter() - start):7.1f} images/s")


if __name__ == "__main__":
    main()
