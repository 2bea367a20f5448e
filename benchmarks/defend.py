"""Input-transform defenses: advlens' batched on-device transforms vs the reference libraries, in one run.

    python benchmarks/defend.py --device cpu --n 64 --size 224
    python benchmarks/defend.py --device cuda --n 256 --size 224

For a batch of ``n`` real photos (skimage / sklearn / matplotlib samples, random crops) at ``size``:
  * advlens: ``advlens.defend.transforms.<name>(x)`` on the whole batch, on the device (kornia median and
    Gaussian filters, torchvision JPEG — nvjpeg on CUDA);
  * reference: what a user writes with the reference libraries — a loop over images and channels with
    ``scipy.ndimage.median_filter`` / ``gaussian_filter`` (mode "mirror"), PIL's JPEG save + reload, numpy's
    rint for bit squeezing — with the tensor ↔ numpy round trip included.
Prints images/s for both, the speed ratio and the largest difference of the outputs (they agree: the
transforms are tested to match exactly, or to 3e-7 for blur).
"""
from __future__ import annotations

import argparse
import io
import time

import numpy as np
import scipy.ndimage as ndi
import torch
from PIL import Image

import advlens as al
from advlens.defend import transforms as T


def reference(name: str, x: torch.Tensor) -> torch.Tensor:
    """The reference library's transform, image by image, via numpy."""
    arr = x.detach().cpu().numpy()
    out = np.empty_like(arr)
    for i, img in enumerate(arr):
        if name == "jpeg":
            buf = io.BytesIO()
            Image.fromarray(np.rint(img.transpose(1, 2, 0) * 255).astype(np.uint8)).save(buf, "JPEG", quality=75)
            out[i] = np.asarray(Image.open(buf), dtype=np.float32).transpose(2, 0, 1) / 255
        elif name == "squeeze":
            out[i] = np.rint(img * 15) / 15
        else:
            for c, ch in enumerate(img):
                out[i, c] = (ndi.median_filter(ch, size=3, mode="mirror") if name == "median"
                             else ndi.gaussian_filter(ch, 1.0, mode="mirror", truncate=3))
    return torch.from_numpy(out).to(x.device)


OURS = {"median": lambda x: T.median(x, 3), "blur": lambda x: T.blur(x, 1.0), "jpeg": lambda x: T.jpeg(x, 75),
        "squeeze": lambda x: T.squeeze(x, 4)}


def timed(fn, x: torch.Tensor, repeats: int) -> tuple[float, torch.Tensor]:
    out = fn(x)  # warm-up
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    x = al.load_images("samples", size=(args.size, args.size), n=args.n, seed=0).x.to(args.device)
    print(f"{args.n} photos at {args.size}x{args.size} on {args.device}, {torch.get_num_threads()} threads")
    for name, fn in OURS.items():
        t_ours, ours = timed(fn, x, args.repeats)
        t_ref, ref = timed(lambda v, n=name: reference(n, v), x, 1)
        diff = float((ours - ref).abs().max())
        print(f"{name:8s} advlens {args.n / t_ours:9.1f} img/s   reference {args.n / t_ref:8.1f} img/s   "
              f"ratio {t_ref / t_ours:6.1f}x   max |diff| {diff:.1e}")


if __name__ == "__main__":
    main()
