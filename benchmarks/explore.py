"""The explorer's speed and memory targets (issue 19), through its HTTP API in-process.

    python benchmarks/explore.py              # digits VGG, EfficientNet-Lite0, 300 requests
    python benchmarks/explore.py --quick      # fewer repeats and 60 requests

Prints, for ``POST /api/run`` (PGD-10, all layers, 3 conditions, K = 8 noise draws, Grad-CAM):
  * small VGG on digits (32×32, 6 layers), a new image each time (nothing cached)   < 0.5 s
  * EfficientNet-Lite0 on the bundled photos (224×224, 18 layers), a new image      < 4 s
  * a repeated request (the cached answer)                                          < 50 ms
  * server memory (RSS) over N requests cycling through many images, strengths and  within ± 50 MB
    explainers after a warm-up (the caches are bounded: memory stays flat)
Times are medians over distinct images, each request timed end to end through the test client (JSON
encoding included). The anchor is the plain library call the explorer wraps: ``al.attack`` + one
``al.explain`` pass over the 2 + K inputs, measured on the same images in the same run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import advlens as al
from advlens.explore import create_app


def rss_mb() -> float:
    """Resident memory of this process (MiB), from /proc, after a garbage collection and glibc's
    ``malloc_trim`` (memory freed but kept by the allocator is not counted)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_times(client, model: str, source: str, images: range, eps: float) -> list[float]:
    out = []
    for i in images:
        body = {"model": model, "source": source, "index": i, "attack": {"method": "pgd", "eps": eps, "steps": 10},
                "method": "gradcam", "k": 8, "strength": 1.0}
        t = time.perf_counter()
        r = client.post("/api/run", json=body)
        out.append(time.perf_counter() - t)
        assert r.status_code == 200, r.text
    return out


def library_time(name: str, source: str, index: int, eps: float) -> float:
    """The anchor: the library calls the explorer makes for one image, without HTTP or encoding."""
    model = al.load_model(name)
    x = al.load_images(source, **model.image_options()).x[index:index + 1]
    t = time.perf_counter()
    res = al.attack(model, x, None, "pgd", eps=eps, steps=10)
    noise = torch.cat([al.matched_noise(x, res.x_adv, 1.0, seed=j) for j in range(8)])
    al.explain(model, torch.cat([x, res.x_adv, noise]), "gradcam", normalize=False)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer images and requests")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from fastapi.testclient import TestClient

    client = TestClient(create_app(model="small_vgg_digits", images="digits"))
    n_img, n_req = (4, 60) if args.quick else (8, 300)
    client.post("/api/run", json={"model": "small_vgg_digits", "index": 100})  # load the model and the source
    vgg = run_times(client, "small_vgg_digits", "digits", range(n_img), 0.1)
    vgg_lib = statistics.median(library_time("small_vgg_digits", "digits", i, 0.1) for i in range(n_img))
    client.post("/api/run", json={"model": "efficientnet_lite0", "source": "samples", "index": 10})
    lite = run_times(client, "efficientnet_lite0", "samples", range(min(n_img, 4)), 2 / 255)
    lite_lib = statistics.median(library_time("efficientnet_lite0", "samples", i, 2 / 255) for i in range(min(n_img, 4)))
    body = {"model": "small_vgg_digits", "source": "digits", "index": 0, "attack": {"method": "pgd", "eps": 0.1, "steps": 10}}
    repeat = []
    for _ in range(20):
        t = time.perf_counter()
        client.post("/api/run", json=body)
        repeat.append(time.perf_counter() - t)
    methods, strengths = ["gradcam", "layercam", "gradcam++"], [0.25, 0.5, 1.0, 2.0, 4.0]

    def cycle(n: int, offset: int) -> None:
        for j in range(n):
            client.post("/api/run", json={**body, "index": (offset + j) % 256, "strength": strengths[j % 5],
                                          "method": methods[j % 3]})

    cycle(60, 0)  # warm-up: fills the bounded caches
    before = rss_mb()
    cycle(n_req, 60)
    after = rss_mb()
    med = statistics.median
    rows = [
        ("digits VGG /api/run (PGD-10, 6 layers, K=8)", med(vgg), f"{med(vgg):.3f} s", "< 0.5 s", med(vgg) < 0.5),
        ("  library calls alone (anchor)", vgg_lib, f"{vgg_lib:.3f} s", f"API/anchor {med(vgg) / vgg_lib:.2f}x", None),
        ("EfficientNet-Lite0 /api/run (18 layers, K=8)", med(lite), f"{med(lite):.3f} s", "< 4 s", med(lite) < 4),
        ("  library calls alone (anchor)", lite_lib, f"{lite_lib:.3f} s", f"API/anchor {med(lite) / lite_lib:.2f}x", None),
        ("repeated request (cached)", med(repeat), f"{1000 * med(repeat):.1f} ms", "< 50 ms", med(repeat) < 0.05),
        (f"RSS change over {n_req} requests", after - before, f"{after - before:+.1f} MB ({before:.0f} -> {after:.0f})",
         "within ±50 MB", abs(after - before) <= 50),
    ]
    print(f"torch {torch.__version__}, {args.threads} threads")
    for what, _, shown, target, ok in rows:
        verdict = "" if ok is None else ("PASS" if ok else "FAIL")
        print(f"{what:<48} {shown:<28} {target:<22} {verdict}")


if __name__ == "__main__":
    main()
