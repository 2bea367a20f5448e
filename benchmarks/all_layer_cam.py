"""All-layer Grad-CAM and PGD throughput, side by side with the anchor libraries, in one run.

    python benchmarks/all_layer_cam.py --device cpu --batch-size 4
    python benchmarks/all_layer_cam.py --device cuda --batch-size 64

Prints images/s on VGG-16 at 224x224 (random init: speed does not depend on the weights) for
  * advlens: Grad-CAM at all 13 conv layers, one forward + one backward;
  * pytorch-grad-cam: the same 13 maps, one GradCAM call per layer (its documented usage);
  * the floor: one plain forward + backward to the input;
  * PGD-10 (eps 8/255, alpha 2/255, no random start): advlens vs torchattacks;
and the ratios, plus peak GPU memory of advlens vs the floor on CUDA.
Targets (issue 3): >= 15x pytorch-grad-cam on CPU, >= 150x on a GPU, >= 0.85x the floor,
PGD >= 1.0x torchattacks, peak GPU memory <= 1.3x the floor.
"""
from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

import advlens as al


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def peak_memory(fn, device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 4 on CPU, 64 on CUDA")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--skip-anchor", action="store_true", help="skip pytorch-grad-cam (slow on CPU)")
    ap.add_argument("--anchor-frozen", action="store_true",
                    help="give pytorch-grad-cam frozen weights too (default: weights require grad, as a "
                         "freshly built torchvision model has, so its backward also computes weight grads)")
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    args = ap.parse_args()
    device = torch.device(args.device)
    bs = args.batch_size or (64 if device.type == "cuda" else 4)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = al.load_model("vgg16", weights="random", device=device)
    x = torch.rand(bs, 3, args.size, args.size, device=device)
    y = torch.randint(0, 1000, (bs,), device=device)
    layers = list(model.layers)
    res: dict[str, float | None] = {}

    def ours():
        al.explain(model, x, "gradcam", layers="all", target=y)

    def floor():
        xi = x.detach().requires_grad_(True)
        torch.autograd.grad(model(xi).gather(1, y[:, None]).sum(), xi)

    res["advlens_s"] = timed(ours, device, args.repeats)
    res["floor_s"] = timed(floor, device, args.repeats)
    res["advlens_mem_mb"] = peak_memory(ours, device)
    res["floor_mem_mb"] = peak_memory(floor, device)
    if not args.skip_anchor:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        targets = [ClassifierOutputTarget(int(t)) for t in y]
        for prm in model.parameters():
            prm.requires_grad_(not args.anchor_frozen)

        def anchor():
            for name in layers:
                with GradCAM(model=model, target_layers=[model.layers[name]]) as cam:
                    cam(input_tensor=x.detach().requires_grad_(True), targets=targets)

        res["pytorch_grad_cam_s"] = timed(anchor, device, max(1, args.repeats // 2))
        for prm in model.parameters():
            prm.requires_grad_(False)

    import torchattacks

    ta = torchattacks.PGD(model, eps=8 / 255, alpha=2 / 255, steps=10, random_start=False)
    res["pgd_advlens_s"] = timed(
        lambda: al.attack(model, x, y, method="pgd", eps=8 / 255, alpha=2 / 255, steps=10, random_start=False),
        device, args.repeats,
    )
    res["pgd_torchattacks_s"] = timed(lambda: ta(x, y), device, args.repeats)

    ips = lambda s: bs / s  # noqa: E731
    print(f"device={device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), "
          f"torch {torch.__version__}, VGG-16 {args.size}x{args.size}, batch {bs}, 13 layers")
    print(f"{'':34s}{'images/s':>12s}")
    print(f"{'advlens all-layer Grad-CAM':34s}{ips(res['advlens_s']):12.2f}")
    if "pytorch_grad_cam_s" in res:
        how = "frozen weights" if args.anchor_frozen else "weights require grad"
        print(f"{'pytorch-grad-cam (13 calls)':34s}{ips(res['pytorch_grad_cam_s']):12.2f}   ({how})")
    print(f"{'floor: forward + backward':34s}{ips(res['floor_s']):12.2f}")
    print(f"{'advlens PGD-10':34s}{ips(res['pgd_advlens_s']):12.2f}")
    print(f"{'torchattacks PGD-10':34s}{ips(res['pgd_torchattacks_s']):12.2f}")
    print("ratios:")
    if "pytorch_grad_cam_s" in res:
        print(f"  advlens / pytorch-grad-cam   {res['pytorch_grad_cam_s'] / res['advlens_s']:8.2f}x")
    print(f"  advlens / floor              {res['floor_s'] / res['advlens_s']:8.2f}x")
    print(f"  PGD advlens / torchattacks   {res['pgd_torchattacks_s'] / res['pgd_advlens_s']:8.2f}x")
    if res["advlens_mem_mb"] is not None:
        print(f"  peak memory advlens / floor  {res['advlens_mem_mb'] / res['floor_mem_mb']:8.2f}x "
              f"({res['advlens_mem_mb']:.0f} MiB vs {res['floor_mem_mb']:.0f} MiB)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "batch_size": bs, "torch": torch.__version__, **res}, f, indent=2)


if __name__ == "__main__":
    main()
