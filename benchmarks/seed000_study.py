"""Time a seed-000 layer-shift study slice and project it to 1,000 images.

    python benchmarks/seed000_study.py --device cpu --images 16
    python benchmarks/seed000_study.py --device cuda --model vgg16 --images 256 --batch-size 64

Runs the seed000 preset (DLFuzz, strengths 0.25-4, matched noise, Grad-CAM at every layer, one pass per
batch for all layers) on ``--images`` images (bundled photos plus seeded crops), prints images/s and
the projected time for 1,000 images x 5 strengths x all layers. Issue 4's target: under 5 minutes on
one H100 for VGG-16 at 224x224. VGG-16 runs with random weights (the speed does not depend on them).
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import torch

from advlens.studies.runner import run_study
from advlens.studies.spec import load_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    weights = "random" if args.model != "efficientnet_lite0" else None
    spec = load_spec(preset="seed000", model=args.model, weights=weights, limit=args.images,
                     batch_size=args.batch_size, device=args.device)
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        run_study(spec, out, progress=False)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    per_image = seconds / args.images
    print(f"{args.model} on {args.device}, batch {args.batch_size}: {args.images} images x 5 strengths x "
          f"all layers in {seconds:.1f} s ({args.images / seconds:.2f} images/s, including model load and report)")
    print(f"projected for 1,000 images: {per_image * 1000 / 60:.1f} min")


if __name__ == "__main__":
    main()
