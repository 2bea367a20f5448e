"""One-pixel attack: advlens' batched differential evolution vs scipy's, per image, in one run.

    python benchmarks/onepixel.py --device cpu --n 8 --iterations 20 --repeats 3
    python benchmarks/onepixel.py --device cuda --n 64

Both run Su et al.'s DE/rand/1 (population 400, up to 100 generations, F = 0.5, no crossover,
early stop on success) on the small VGG trained on digits (32x32 RGB, trained and cached on
first use) and the first ``n`` test images:
  * advlens: ``attack(model, x, y, method="onepixel")`` — every generation of every still-active
    image is one tensor, evaluated in chunks of ``--batch-size`` on the device;
  * scipy: ``scipy.optimize.differential_evolution`` once per image, as users run it: vectorized
    (one model call per generation, numpy <-> torch round trip), ``strategy="rand1bin"`` with
    ``recombination=1.0`` (= no crossover), ``mutation=F``, ``polish=False``, ``atol=-1`` (no
    convergence stop), the same Su-style initial population size, and a callback that stops on the
    first successful candidate.
Prints images/s, success rate and mean model queries for both, and the speed ratio.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from scipy.optimize import differential_evolution

import advlens as al
from advlens.attacks.onepixel import apply_pixels, init_population


def scipy_onepixel(model, x1: torch.Tensor, y1: int, pixels: int, popsize: int, iterations: int,
                   f: float, seed: int) -> tuple[bool, int]:
    """scipy DE on one image ``x1`` ``[1,3,H,W]`` (untargeted); returns (success, model queries)."""
    h, w = x1.shape[-2:]
    bounds = [(0, h), (0, w), (0, 1), (0, 1), (0, 1)] * pixels
    gen = torch.Generator(device=x1.device).manual_seed(seed)
    init = init_population(1, popsize, pixels, (h, w), gen, x1.device)[0].cpu().double().numpy()
    hit = {"ok": False, "queries": 0}

    def fitness(v: np.ndarray) -> np.ndarray:  # v [D, S] (vectorized) -> p_y [S]
        genes = torch.as_tensor(v.T, dtype=x1.dtype, device=x1.device)
        with torch.no_grad():
            prob = model(apply_pixels(x1, genes)).softmax(1)
        hit["queries"] += len(genes)
        hit["ok"] = hit["ok"] or bool((prob.argmax(1) != y1).any())
        return prob[:, y1].double().cpu().numpy()

    differential_evolution(
        fitness, bounds, maxiter=iterations, init=init, mutation=f, recombination=1.0, strategy="rand1bin",
        polish=False, tol=0.0, atol=-1.0, rng=seed, vectorized=True, updating="deferred",
        callback=lambda intermediate_result: hit["ok"],
    )
    return hit["ok"], hit["queries"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=32, help="test images attacked")
    ap.add_argument("--pixels", type=int, default=1)
    ap.add_argument("--popsize", type=int, default=400)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--f", type=float, default=0.5)
    ap.add_argument("--batch-size", type=int, default=None, help="advlens chunk; default 256 on CPU, 4096 on CUDA")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1,
                    help="time both methods this many times, interleaved, and report the medians")
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    args = ap.parse_args()
    device = torch.device(args.device)
    bs = args.batch_size or (4096 if device.type == "cuda" else 256)
    model = al.load_model("small_vgg_digits", device=device)
    data = al.load_images("digits", split="test")
    x, y = data.x[: args.n].to(device), data.y[: args.n].to(device)
    kw = {"pixels": args.pixels, "popsize": args.popsize, "iterations": args.iterations, "f": args.f}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    al.attack(model, x[:1], y[:1], method="onepixel", **{**kw, "iterations": 1}, batch_size=bs)  # warm-up
    sync()
    ours_t, sp_t = [], []
    for _ in range(args.repeats):  # interleaved, so a change in machine load hits both alike
        t = time.perf_counter()
        res = al.attack(model, x, y, method="onepixel", seed=args.seed, batch_size=bs, **kw)
        sync()
        ours_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        runs = [scipy_onepixel(model, x[i:i + 1], int(y[i]), seed=args.seed + i, **kw) for i in range(len(x))]
        sync()
        sp_t.append(time.perf_counter() - t)
    ours_s, sp_s = float(np.median(ours_t)), float(np.median(sp_t))
    ours = {"s": ours_s, "success": res.success_rate, "queries": float(res.extras["queries"].float().mean())}
    sp = {"s": sp_s, "success": float(np.mean([ok for ok, _ in runs])), "queries": float(np.mean([q for _, q in runs]))}

    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device={device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"small_vgg_digits 32x32, n={len(x)}, pixels={args.pixels}, popsize={args.popsize}, "
          f"iterations={args.iterations}, F={args.f}, advlens batch {bs}, median of {args.repeats}")
    print(f"{'':28s}{'images/s':>10s}{'seconds':>10s}{'success':>10s}{'queries':>10s}{'queries/s':>12s}")
    for label, r in (("advlens batched DE", ours), ("scipy DE per image", sp)):
        print(f"{label:28s}{len(x) / r['s']:10.3f}{r['s']:10.1f}{r['success']:10.2f}{r['queries']:10.0f}"
              f"{r['queries'] * len(x) / r['s']:12.0f}")
    print(f"ratio advlens / scipy: images/s {sp_s / ours_s:.2f}x, "
          f"queries/s {(ours['queries'] / ours_s) / (sp['queries'] / sp_s):.2f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": str(device), "n": len(x), "batch_size": bs, **kw, "advlens": ours, "scipy": sp,
                       "advlens_runs_s": ours_t, "scipy_runs_s": sp_t}, fh, indent=2)


if __name__ == "__main__":
    main()
