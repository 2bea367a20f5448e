"""Detector throughput: advlens' detectors vs the same detectors glued from pytorch-grad-cam, in one run.

    python benchmarks/detect.py --device cpu --threads 1
    python benchmarks/detect.py --device cuda --n 256
    python benchmarks/detect.py --model efficientnet_lite0 --n 4 --fit 16

Fits each detector on clean train images (digits train split; for ``efficientnet_lite0`` bundled photos
plus seeded crops) and scores ``--n`` other images (digits test split / later crops): the first half clean, the
second half PGD-10 adversarial (eps 8/255), so the scores spread and the agreement checks mean something
(the speed does not depend on it). Prints images/s of ``score`` for
  * ``BehaviorDeviation(copies=50)`` (seed 002 steps 1-5) vs the anchor: sklearn PCA
    ``transform``/``inverse_transform`` on numpy, then per image one pytorch-grad-cam ``GradCAM`` call on
    its (1 cleaned + 1 original + 50 copies) images with ``ClassifierOutputTarget``, cosines in numpy —
    the same score ``(mean(D_g) - D_o) / std(D_g)``, with the same Gaussian draws as ours (we regenerate
    the detector's noise tensor), so the scores are compared image by image (Spearman, max |diff|);
  * ``NoiseCAMDetector()`` vs the anchor: pytorch-grad-cam ``GradCAMPlusPlus`` and ``LayerCAM`` at the
    same layer (two passes), noise map = ReLU(difference), min-max normalized, then the same
    ``count_clusters`` DBSCAN (an approximation of NoiseCAM, see ``anchor_noisecam``); and, as a check
    that the gap is the approximation's, an exact one-pass variant built from pytorch-grad-cam's internals
    (``anchor_noisecam_exact``);
  * ``EnsembleDetector()`` (grad + cam, pixel features, gradient boosting): no library does this; images/s
    only.
and the ratio ours/anchor; fit times separately (not in images/s). Timing: ``--repeats`` rounds, each
running ours and the anchors in turn (a change in machine load hits all alike), medians, after one
warm-up (ours on the full batch, the anchors on 4 images). The anchors get advlens' ClassifierModel as is
(frozen weights, so the input is given ``requires_grad`` for pytorch-grad-cam to see gradients) and run on
``--n-anchor`` images (default: all ``--n``); with fewer, their images/s is extrapolated linearly (exact
for the per-image BehaviorDeviation anchor; the NoiseCAM anchors batch ``--batch-size`` images per call,
so a sample smaller than that understates them a little).
"""
from __future__ import annotations

import argparse
import datetime
import json
import time
import warnings

import numpy as np
import torch
from scipy.stats import spearmanr

import advlens as al
from advlens.detect.behavior import BehaviorDeviation
from advlens.detect.ensemble import EnsembleDetector
from advlens.detect.noisecam import NoiseCAMDetector, count_clusters


def interleaved(fns: dict, device: torch.device, repeats: int, warmups: dict) -> dict[str, tuple[float, object]]:
    """Median seconds and last result of each ``fns[k]()`` over ``repeats`` rounds, the callables run in turn
    within each round (so a change in machine load hits all alike), after one call of each ``warmups[k]``."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for fn in warmups.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    outs: dict[str, object] = {}
    for _ in range(repeats):
        for k, fn in fns.items():
            sync()
            t = time.perf_counter()
            outs[k] = fn()
            sync()
            times[k].append(time.perf_counter() - t)
    return {k: (sorted(v)[len(v) // 2], outs[k]) for k, v in times.items()}


def np_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of map ``a`` ``[D]`` with each row of ``b`` ``[M,D]``; advlens' convention for all-zero maps
    (both zero -> 1, one zero -> 0), else a zero Grad-CAM map would give NaN."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b, axis=1)
    den = na * nb
    cos = (b @ a) / np.where(den > 0, den, 1.0)
    return np.where((na == 0) & (nb == 0), 1.0, cos)


def anchor_behavior(model, layer, pca, x: torch.Tensor, eps: torch.Tensor) -> np.ndarray:
    """Seed 002's behaviour-deviation score as a user glues it from sklearn + pytorch-grad-cam.

    ``eps`` ``[copies, N, 3, H, W]``: the standard-normal draws (the very tensor the detector draws).
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    xo = x.cpu().numpy()
    xc = pca.inverse_transform(pca.transform(xo.reshape(len(xo), -1).astype(np.float64)))
    xc = xc.reshape(xo.shape).clip(0, 1).astype(np.float32)
    noise = xo - xc
    mu = noise.mean(axis=(1, 2, 3))
    sd = noise.std(axis=(1, 2, 3), ddof=1)
    eps = eps.cpu().numpy()
    dev = model.device
    with torch.no_grad():
        cls = model(torch.from_numpy(xc).to(dev)).argmax(1).tolist()
    scores = []
    with GradCAM(model=model, target_layers=[layer]) as cam:
        for i in range(len(xo)):
            copies = (xc[i] + mu[i] + sd[i] * eps[:, i]).clip(0, 1)
            batch = np.concatenate([xc[i : i + 1], xo[i : i + 1], copies])
            inp = torch.from_numpy(batch).to(dev).requires_grad_(True)
            maps = cam(input_tensor=inp, targets=[ClassifierOutputTarget(cls[i])] * len(batch))
            maps = maps.reshape(len(batch), -1).astype(np.float64)
            d = np_cosine(maps[0], maps[1:])
            d_o, d_g = d[0], d[1:]
            scores.append((d_g.mean() - d_o) / max(d_g.std(ddof=1), 1e-6))
    return np.array(scores)


def anchor_noisecam(model, layer, x: torch.Tensor, det: NoiseCAMDetector, batch_size: int) -> np.ndarray:
    """NoiseCAM clusters from pytorch-grad-cam's Grad-CAM++ and LayerCAM maps (two passes).

    Approximation, not the same map: advlens computes ``ReLU(sum_k (w_k - ReLU(g_ij^k)) A^k)`` from the raw
    Grad-CAM++ and LayerCAM sums (alpha denominator offset 0), upsampled then min-max normalized;
    pytorch-grad-cam only returns each map already ReLU'd, min-max normalized per image, then resized
    (and adds 1e-6 to the Grad-CAM++ denominator), so the difference of its two outputs weighs the two
    terms by each map's own maximum instead of 1:1. We take ReLU(GradCAM++ - LayerCAM) of the outputs,
    min-max normalize it, and cluster it with the same ``count_clusters``.
    """
    from pytorch_grad_cam import GradCAMPlusPlus, LayerCAM

    counts = []
    with GradCAMPlusPlus(model=model, target_layers=[layer]) as pp, LayerCAM(model=model, target_layers=[layer]) as lc:
        for i in range(0, len(x), batch_size):
            inp = x[i : i + batch_size].detach().requires_grad_(True)
            m = np.maximum(pp(input_tensor=inp, targets=None) - lc(input_tensor=inp, targets=None), 0)
            lo = m.min(axis=(1, 2), keepdims=True)
            rng = m.max(axis=(1, 2), keepdims=True) - lo
            m = (m - lo) / np.where(rng > 0, rng, 1.0)
            counts.append(count_clusters(torch.from_numpy(m), det.salient, det.eps, det.min_samples).numpy())
    return np.concatenate(counts)


def anchor_noisecam_exact(model, layer, x: torch.Tensor, det: NoiseCAMDetector, batch_size: int) -> np.ndarray:
    """NoiseCAM clusters from ONE pytorch-grad-cam ``GradCAMPlusPlus`` pass per batch, reading the layer's
    activations and gradients it kept (``activations_and_grads``, not its documented output) and its
    ``get_cam_weights``: ``ReLU(sum_k (w_k - ReLU(g)) A^k)`` is then advlens' NoiseCAM map up to
    pytorch-grad-cam's 1e-6 alpha offset and its normalize-then-resize order (``scale_cam_image``)."""
    from pytorch_grad_cam import GradCAMPlusPlus
    from pytorch_grad_cam.utils.image import scale_cam_image

    counts = []
    with GradCAMPlusPlus(model=model, target_layers=[layer]) as pp:
        for i in range(0, len(x), batch_size):
            inp = x[i : i + batch_size].detach().requires_grad_(True)
            pp(input_tensor=inp, targets=None)
            a = pp.activations_and_grads.activations[0].numpy()
            g = pp.activations_and_grads.gradients[0].numpy()
            w = pp.get_cam_weights(inp, [layer], None, a, g)
            raw = np.maximum(((w[:, :, None, None] - np.maximum(g, 0)) * a).sum(1), 0)
            m = scale_cam_image(scale_cam_image(raw, (x.shape[-1], x.shape[-2])))
            counts.append(count_clusters(torch.from_numpy(m), det.salient, det.eps, det.min_samples).numpy())
    return np.concatenate(counts)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model", default="small_vgg_digits", choices=["small_vgg_digits", "efficientnet_lite0"])
    ap.add_argument("--n", type=int, default=None, help="images scored; default 128 (digits) / 4 (224x224)")
    ap.add_argument("--n-anchor", type=int, default=None, help="images the anchors score (default: --n)")
    ap.add_argument("--fit", type=int, default=None, help="clean fit images; default 200 (digits) / 16 (224x224)")
    ap.add_argument("--copies", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="explanation batch; default 256 for digits, 16 at 224x224 (what the detectors pick on a CPU)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed rounds, ours and the anchors interleaved in each; medians (after a warm-up)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-anchor", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    small = args.model == "small_vgg_digits"
    n = args.n or (128 if small else 4)
    n_anchor = min(args.n_anchor or n, n)
    n_fit = args.fit or (200 if small else 16)
    bs = args.batch_size or (256 if small else 16)
    torch.manual_seed(args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = al.load_model(args.model, device=device)
    if small:
        x_fit = al.load_images("digits", split="train", n=n_fit, seed=args.seed).x
        x = al.load_images("digits", split="test", n=n, seed=args.seed).x
    else:
        # one list, split: the 11 bundled photos and their first crops fit, later crops are scored (loading
        # fit and scored sets separately would start both with the same 11 photos, which the PCA then
        # reconstructs perfectly: BehaviorDeviation's noise copies collapse and its scores are rounding)
        photos = al.load_images("samples", size=model.input_size, n=n_fit + n, seed=args.seed).x
        x_fit, x = photos[:n_fit], photos[n_fit:]
    x_fit, x = x_fit.to(device), x.to(device)
    n_adv = n // 2
    if n_adv:
        tail = x[n - n_adv :]
        adv = al.attack(model, tail, model.predict(tail), method="pgd", eps=8 / 255, alpha=2 / 255, steps=10,
                        random_start=False)
        x = torch.cat([x[: n - n_adv], adv.x_adv.detach()])
    res: dict[str, dict[str, float | None]] = {}
    xa, xw = x[:n_anchor], x[: min(4, n_anchor)]  # the anchors' images, and their warm-up slice

    def fit(det) -> float:
        t = time.perf_counter()
        det.fit(model, x_fit)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    def ours(det) -> np.ndarray:
        return det.score(x).detach().cpu().numpy()

    # ------------------------------------------------------------------ BehaviorDeviation
    beh = BehaviorDeviation(copies=args.copies, batch_size=bs, seed=args.seed)
    res["behavior"] = {"fit_s": fit(beh)}
    fns, warm = {"ours": lambda: ours(beh)}, {"ours": lambda: ours(beh)}
    if not args.skip_anchor:
        from sklearn.decomposition import PCA

        t = time.perf_counter()  # the anchor's own PCA, fitted exactly like the detector's (on its first 75 %)
        n_pca = (3 * n_fit) // 4
        pca = PCA(n_components=beh.variance, svd_solver="full").fit(x_fit[:n_pca].flatten(1).cpu().double().numpy())
        res["behavior"]["anchor_fit_s"] = time.perf_counter() - t
        # the detector's draws: torch.randn((copies, N, 3, H, W)) from a generator seeded with `seed`,
        # drawn for the whole scored batch; the anchor's images are its first n_anchor columns
        gen = torch.Generator(device=device).manual_seed(beh.seed)
        eps = torch.randn((beh.copies, *x.shape), generator=gen, device=device, dtype=x.dtype)[:, :n_anchor]
        layer = model.layers[beh.layer]
        fns["anchor"] = lambda: anchor_behavior(model, layer, pca, xa, eps)
        warm["anchor"] = lambda: anchor_behavior(model, layer, pca, xw, eps[:, : len(xw)])
    t = interleaved(fns, device, args.repeats, warm)
    beh_scores = t["ours"][1]
    res["behavior"].update(ours_s=t["ours"][0], ours_ips=n / t["ours"][0])
    if "anchor" in t:
        (s, a_scores), ours_b = t["anchor"], beh_scores[:n_anchor]
        diff = np.abs(a_scores - ours_b)
        res["behavior"].update(anchor_s=s, anchor_ips=n_anchor / s, spearman=spearman(ours_b, a_scores),
                               max_abs_diff=float(diff.max()), median_abs_diff=float(np.median(diff)),
                               score_range=float(np.ptp(ours_b)))

    # ------------------------------------------------------------------ NoiseCAMDetector
    nc = NoiseCAMDetector(batch_size=bs)
    res["noisecam"] = {"fit_s": fit(nc)}
    fns, warm = {"ours": lambda: ours(nc)}, {"ours": lambda: ours(nc)}
    if not args.skip_anchor:
        layer = model.layers[nc.layer]
        fns["anchor"] = lambda: anchor_noisecam(model, layer, xa, nc, bs)
        fns["exact"] = lambda: anchor_noisecam_exact(model, layer, xa, nc, bs)
        warm["anchor"] = lambda: anchor_noisecam(model, layer, xw, nc, bs)
        warm["exact"] = lambda: anchor_noisecam_exact(model, layer, xw, nc, bs)
    t = interleaved(fns, device, args.repeats, warm)
    res["noisecam"].update(ours_s=t["ours"][0], ours_ips=n / t["ours"][0])
    if "anchor" in t:
        ours_c = t["ours"][1][:n_anchor]
        (s, a_counts), (s_exact, e_counts) = t["anchor"], t["exact"]
        res["noisecam"].update(anchor_s=s, anchor_ips=n_anchor / s, spearman=spearman(ours_c, a_counts),
                               same_count=float(np.mean(ours_c == a_counts)),
                               mean_abs_diff=float(np.abs(ours_c - a_counts).mean()),
                               ours_mean_count=float(ours_c.mean()), anchor_mean_count=float(a_counts.mean()),
                               same_flag=float(np.mean((ours_c > nc.threshold) == (a_counts > nc.threshold))))
        # the exact anchor reproduces advlens' map only up to Grad-CAM++'s alpha offset (pytorch-grad-cam 1e-6,
        # the detector 0), which matters where gradients are small (ImageNet nets: |g| ~ 1e-4, g^2 << 1e-6)
        m6 = al.explain(model, xa, "noisecam", layers=[nc.layer], eps=1e-6, batch_size=bs)[nc.layer]
        c6 = count_clusters(m6, nc.salient, nc.eps, nc.min_samples).cpu().numpy()
        res["noisecam_exact"] = {"same_count_eps1e-6": float(np.mean(c6 == e_counts)),"fit_s": res["noisecam"]["fit_s"], "ours_s": t["ours"][0],
                                 "ours_ips": res["noisecam"]["ours_ips"], "anchor_s": s_exact,
                                 "anchor_ips": n_anchor / s_exact, "same_count": float(np.mean(ours_c == e_counts)),
                                 "spearman": spearman(ours_c, e_counts),
                                 "mean_abs_diff": float(np.abs(ours_c - e_counts).mean())}

    # ------------------------------------------------------------------ EnsembleDetector
    ens = EnsembleDetector(batch_size=min(bs, 64), seed=args.seed)
    res["ensemble"] = {"fit_s": fit(ens)}
    t = interleaved({"ours": lambda: ours(ens)}, device, args.repeats, {"ours": lambda: ours(ens)})
    res["ensemble"].update(ours_s=t["ours"][0], ours_ips=n / t["ours"][0])

    # ------------------------------------------------------------------ report
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    hw = "x".join(map(str, model.input_size))
    print(f"device={device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{datetime.datetime.now().isoformat(timespec='seconds')}, {args.model} {hw}, scored n={n} "
          f"({n - n_adv} clean + {n_adv} PGD-10), anchors on {n_anchor}, fit on {n_fit} clean, advlens batch {bs}, "
          f"median of {args.repeats} interleaved rounds")
    labels = {"behavior": f"BehaviorDeviation(copies={args.copies})", "noisecam": "NoiseCAMDetector()",
              "noisecam_exact": "NoiseCAMDetector() (same)", "ensemble": "EnsembleDetector()"}
    anchors = {"behavior": "sklearn PCA + GradCAM/image", "noisecam": "GradCAM++ - LayerCAM (2 pass)",
               "noisecam_exact": "GradCAM++ internals (exact)", "ensemble": "-"}
    print(f"| {'detector':30s} | {'advlens img/s':>13s} | {'anchor':29s} | {'anchor img/s':>12s} | "
          f"{'ours/anchor':>11s} | {'fit s':>7s} |")
    print(f"|{'-' * 32}|{'-' * 15}|{'-' * 31}|{'-' * 14}|{'-' * 13}|{'-' * 9}|")
    for k, r in res.items():
        a = r.get("anchor_ips")
        a_ips, ratio = ("-", "-") if a is None else (f"{a:.2f}", f"{r['ours_ips'] / a:.2f}x")
        print(f"| {labels[k]:30s} | {r['ours_ips']:13.2f} | {anchors[k]:29s} | {a_ips:>12s} | {ratio:>11s} | "
              f"{r['fit_s']:7.1f} |")
    if not args.skip_anchor:
        b, c = res["behavior"], res["noisecam"]
        print(f"agreement, BehaviorDeviation vs anchor on {n_anchor} images (same noise draws): Spearman "
              f"{b['spearman']:.4f}, max |diff| {b['max_abs_diff']:.3g}, median |diff| {b['median_abs_diff']:.3g} "
              f"(our scores span {b['score_range']:.3g}); anchor PCA fit {b['anchor_fit_s']:.2f} s")
        print(f"agreement, NoiseCAM clusters vs anchor (approximate map): same count {c['same_count']:.0%}, "
              f"same flag (> {nc.max_clusters}) {c['same_flag']:.0%}, Spearman {c['spearman']:.3f}, "
              f"mean |diff| {c['mean_abs_diff']:.2f}, mean count ours {c['ours_mean_count']:.2f} vs "
              f"anchor {c['anchor_mean_count']:.2f}")
        e = res["noisecam_exact"]
        print(f"agreement, NoiseCAM clusters vs exact anchor (pytorch-grad-cam internals): same count "
              f"{e['same_count']:.0%}, Spearman {e['spearman']:.3f}, mean |diff| {e['mean_abs_diff']:.2f}; same count "
              f"as advlens' NoiseCAM at pytorch-grad-cam's Grad-CAM++ eps 1e-6: {e['same_count_eps1e-6']:.0%}")
        if n_anchor < n:
            print(f"note: the anchors ran on {n_anchor} of {n} images; their images/s is per image, extrapolated")
    print("fit s: BehaviorDeviation = PCA + scoring 25 % held-out images to calibrate; "
          "EnsembleDetector = PGD-20 on the fit images + maps + gradient boosting")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": str(device), "torch": torch.__version__, "model": args.model, "n": n,
                       "n_anchor": n_anchor, "fit": n_fit, "batch_size": bs, **res}, fh, indent=2)


if __name__ == "__main__":
    main()
