"""What bringing your own model costs: loading + layer discovery, and all-layer Grad-CAM on a ViT.

    python benchmarks/byo_model.py --quick
    python benchmarks/byo_model.py --threads 16 --batch-size 8
    python benchmarks/byo_model.py --device cuda --batch-size 64

Prints
  * (a) for ``timm:resnet50``, ``torchvision:resnet50`` and ``timm:vit_small_patch16_224`` (random weights):
    the median time of ``al.load_model(ref, weights="random")`` and of building the bare module the same
    way (``timm.create_model`` / ``torchvision.models.get_model``); their difference is what advlens adds
    (probe forwards for layer discovery and the CAM check, wrapping, freezing);
  * (b) all-layer Grad-CAM (12 blocks, tokens reshaped to 14x14 grids inside the hook) on ViT-S/16 at
    224x224 vs the floor: one forward of the bare timm model (normalization outside, no hooks) and one
    backward of the target logits' sum to the input, timed alternately (``all_layer_cam.timed_alternating``);
    Grad-CAM needs no gradient below ``blocks.0`` (patch embedding), so it may beat this floor;
then a targets table in the style of ``all_layer_cam.py``:
  * load + discovery overhead per model       <= 1 s
  * ViT-S/16 all-layer Grad-CAM / floor        >= 0.85x   (printed as floor time / our time)
"""
from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable

import torch

import advlens as al
from all_layer_cam import Target, print_targets, timed_alternating

#: (advlens reference, how a user builds the same bare module)
MODELS: tuple[tuple[str, Callable[[], torch.nn.Module]], ...] = (
    ("timm:resnet50", lambda: __import__("timm").create_model("resnet50", pretrained=False)),
    ("torchvision:resnet50", lambda: __import__("torchvision").models.get_model("resnet50", weights=None)),
    ("timm:vit_small_patch16_224", lambda: __import__("timm").create_model("vit_small_patch16_224", pretrained=False)),
)
VIT = "timm:vit_small_patch16_224"


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs (no warm-up: building is what is timed)."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def load_overheads(repeats: int, device: torch.device) -> dict[str, tuple[float, float, int]]:
    """``{ref: (load_model seconds, bare build seconds, layers found)}``, medians, bare build first each round."""
    out = {}
    for ref, bare in MODELS:
        bare()  # imports and first-call caches out of the timings
        model = al.load_model(ref, weights="random", device=device)
        t_bare = median_seconds(lambda: bare().to(device).eval(), repeats)
        t_ours = median_seconds(lambda: al.load_model(ref, weights="random", device=device), repeats)
        out[ref] = (t_ours, t_bare, len(model.layers))
    return out


def vit_gradcam(batch: int, repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of all-layer Grad-CAM on ViT-S/16 224x224 and of the forward + backward floor."""
    model = al.load_model(VIT, weights="random", device=device)
    net = model.net  # the bare timm module, same weights, frozen as in the model
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 224, 224, generator=gen).to(device)
    y = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    mean, std = model.mean, model.std

    def ours() -> None:
        al.explain(model, x, "gradcam", layers="all", target=y)

    def floor() -> None:
        xi = x.detach().requires_grad_(True)
        torch.autograd.grad(net((xi - mean) / std).gather(1, y[:, None]).sum(), xi)

    res = timed_alternating({"advlens_s": ours, "floor_s": floor}, device, repeats)
    res["layers"] = len(model.layers)
    return res


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--batch-size", type=int, default=None, help="ViT Grad-CAM batch (default 8, 4 with --quick)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5, 3 with --quick)")
    ap.add_argument("--quick", action="store_true", help="a small run: batch 4, 3 repeats")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("advlens").setLevel(logging.ERROR)  # "random weights" warnings
    device = torch.device(args.device)
    bs = args.batch_size or (4 if args.quick else 8)
    repeats = args.repeats or (3 if args.quick else 5)
    print(f"device={device}, threads={torch.get_num_threads()}, torch {torch.__version__}, repeats {repeats}")

    loads = load_overheads(repeats, device)
    print(f"{'load + discover (random weights)':36s}{'load_model s':>14s}{'bare s':>10s}{'advlens adds s':>16s}"
          f"{'layers':>8s}")
    for ref, (t_ours, t_bare, n) in loads.items():
        print(f"{ref:36s}{t_ours:14.3f}{t_bare:10.3f}{t_ours - t_bare:16.3f}{n:8d}")

    cam = vit_gradcam(bs, repeats, device)
    print(f"ViT-S/16 224x224, batch {bs}, Grad-CAM at all {cam['layers']} blocks:")
    print(f"{'':36s}{'images/s':>12s}{'x floor':>10s}")
    print(f"{'advlens all-layer Grad-CAM':36s}{bs / cam['advlens_s']:12.2f}{cam['floor_s'] / cam['advlens_s']:9.2f}x")
    print(f"{'floor: forward + backward':36s}{bs / cam['floor_s']:12.2f}{'-':>10s}")

    rows = [Target(f"load overhead {ref}", t_ours - t_bare, 1.0, at_least=False, unit=" s")
            for ref, (t_ours, t_bare, _) in loads.items()]
    rows.append(Target("ViT-S all-layer Grad-CAM: floor / ours", cam["floor_s"] / cam["advlens_s"], 0.85))
    print_targets(rows, device.type == "cuda")


if __name__ == "__main__":
    main()
