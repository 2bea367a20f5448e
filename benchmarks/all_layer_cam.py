"""Every speed target of the "speed and scale" issue, side by side with its anchor, in one run.

    python benchmarks/all_layer_cam.py --device cpu --batch-size 4
    python benchmarks/all_layer_cam.py --device cuda --batch-size 64
    python benchmarks/all_layer_cam.py --device cuda --auto-batch --compile --json h100.json

Prints images/s on VGG-16 at 224x224 (random init: speed does not depend on the weights) for
  * advlens: Grad-CAM at all 13 conv layers, one forward + one backward, in fp32 and in
    bf16 autocast + channels_last (``model.set_precision("bf16", channels_last=True)``);
  * pytorch-grad-cam (anchor): the same 13 maps, one GradCAM call per layer (its documented usage), fp32;
  * the floor: one plain forward + backward to the input, fp32;
  * PGD-10 (eps 8/255, alpha 2/255, no random start): advlens in fp32 and in bf16 + channels_last
    (with ``--compile`` also through ``torch.compile``, after one un-timed warm-up call), vs
    torchattacks (anchor) in fp32, alone and followed by the one evaluation forward that gives the
    adversarial predictions (advlens' attack returns them: pred, confidence, success; its PGD-10 runs
    11 forwards and 10 backwards, torchattacks' 10 and 10);
and, on CUDA, the peak GPU memory of advlens vs the floor. The model is back in plain fp32 before
any anchor runs (``--skip-bf16`` leaves the bf16 runs out: CPUs without native bf16 run
them tens of times slower than fp32). ``--auto-batch`` picks the batch with ``advlens.explain.batching.auto_batch_size``
(capped by ``--max-batch``).

Then a targets table, one line per target with the measured value and PASS/FAIL:
  * all-layer Grad-CAM / pytorch-grad-cam        >= 150x on a GPU (>= 15x on the CPU)
  * all-layer Grad-CAM fp32 / fp32 floor         >= 0.85x
  * bf16 all-layer Grad-CAM images/s             >= 3000 on VGG-16 224x224 (GPU only)
  * PGD-10 fp32 advlens / torchattacks fp32      >= 1.0x
  * PGD-10 bf16 advlens / torchattacks fp32      >= 1.8x (GPU only)
  * peak GPU memory advlens / floor              <= 1.3x (GPU only)
GPU-only targets read "n/a (GPU target)" on the CPU (their value is still shown when measured).
"""
from __future__ import annotations

import argparse
import datetime
import json
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

import advlens as al

#: PGD-10 settings shared by advlens and torchattacks.
PGD_ARGS = {"eps": 8 / 255, "alpha": 2 / 255, "steps": 10, "random_start": False}
#: (key suffix, precision) of the advlens runs; bf16 always with channels_last.
PRECISIONS = (("", "fp32"), ("_bf16", "bf16"))


def timed_alternating(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds of each function, run in alternating order (a, b, c, then c, b, a, …) after one
    warm-up each, so slow drifts of the machine (clock, cache, other load) hit every contender alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        for k in list(fns) if r % 2 == 0 else list(reversed(fns)):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fns[k]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    return timed_alternating({"fn": fn}, device, repeats)["fn"]


def peak_memory(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak GPU memory (MiB) ``fn()`` allocates above what was already allocated; None off CUDA."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


@contextmanager
def precision(model: al.ClassifierModel, name: str) -> Iterator[None]:
    """The body runs with ``model`` in ``name`` ("bf16" with channels_last); plain fp32 afterwards."""
    model.set_precision(name, channels_last=name == "bf16")
    try:
        yield
    finally:
        model.set_precision("fp32", channels_last=False)


@contextmanager
def compiled(model: al.ClassifierModel, mode: str) -> Iterator[None]:
    """The body runs with ``model``'s hook-free forwards through ``torch.compile``; off afterwards."""
    model.set_compile(mode)
    try:
        yield
    finally:
        model.set_compile(None)


def ratio(res: dict[str, float | None], num: str, den: str) -> float | None:
    """``res[num] / res[den]``, or None when either is missing."""
    a, b = res.get(num), res.get(den)
    return None if a is None or b is None else a / b


@dataclass
class Target:
    """One issue target: ``value`` must be ``>= goal`` (``at_least``) or ``<= goal``."""

    name: str
    value: float | None
    goal: float
    at_least: bool = True
    gpu_only: bool = False
    unit: str = "x"
    na: str | None = None  # why the target cannot be judged in this run, beyond being GPU-only

    def status(self, cuda: bool) -> str:
        if self.gpu_only and not cuda:
            return "n/a (GPU target)"
        if self.na:
            return f"n/a ({self.na})"
        if self.value is None:
            return "n/a (not measured)"
        return "PASS" if (self.value >= self.goal if self.at_least else self.value <= self.goal) else "FAIL"

    def fmt(self, v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}{self.unit}" if self.unit == "x" else f"{v:.1f}{self.unit}"

    def goal_text(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.fmt(self.goal)}"


def targets(res: dict[str, float | None], bs: int, cuda: bool, size: int, skipped_anchor: bool) -> list[Target]:
    """The issue's speed targets from the measured seconds / MiB in ``res``."""
    no_anchor = "--skip-anchor" if skipped_anchor else None
    bf16_ips = None if res.get("advlens_bf16_s") is None else bs / res["advlens_bf16_s"]
    return [
        Target("all-layer Grad-CAM / pytorch-grad-cam", ratio(res, "pytorch_grad_cam_s", "advlens_s"),
               150.0 if cuda else 15.0, na=no_anchor),
        Target("all-layer Grad-CAM fp32 / fp32 floor", ratio(res, "floor_s", "advlens_s"), 0.85),
        Target("bf16 all-layer Grad-CAM images/s", bf16_ips, 3000.0, gpu_only=True, unit=" img/s",
               na=None if size == 224 else "target is at --size 224"),
        Target("PGD-10 fp32 advlens / torchattacks fp32", ratio(res, "pgd_torchattacks_s", "pgd_advlens_s"), 1.0),
        Target("  same, anchor + its eval forward", ratio(res, "pgd_torchattacks_eval_s", "pgd_advlens_s"), 1.0),
        Target("PGD-10 bf16 advlens / torchattacks fp32",
               ratio(res, "pgd_torchattacks_s", "pgd_advlens_bf16_s"), 1.8, gpu_only=True),
        Target("peak GPU memory advlens / floor", ratio(res, "advlens_mem_mb", "floor_mem_mb"), 1.3,
               at_least=False, gpu_only=True),
    ]


#: (label, seconds key, memory key, anchor seconds key) of the throughput table.
ROWS = (
    ("advlens all-layer Grad-CAM fp32", "advlens_s", "advlens_mem_mb", "pytorch_grad_cam_s"),
    ("advlens all-layer Grad-CAM bf16+CL", "advlens_bf16_s", "advlens_bf16_mem_mb", "pytorch_grad_cam_s"),
    ("pytorch-grad-cam (13 calls) fp32", "pytorch_grad_cam_s", None, None),
    ("floor: forward + backward fp32", "floor_s", "floor_mem_mb", None),
    ("advlens PGD-10 fp32", "pgd_advlens_s", None, "pgd_torchattacks_s"),
    ("advlens PGD-10 bf16+CL", "pgd_advlens_bf16_s", None, "pgd_torchattacks_s"),
    ("advlens PGD-10 fp32 compiled", "pgd_advlens_compile_s", None, "pgd_torchattacks_s"),
    ("advlens PGD-10 bf16+CL compiled", "pgd_advlens_bf16_compile_s", None, "pgd_torchattacks_s"),
    ("torchattacks PGD-10 fp32", "pgd_torchattacks_s", None, None),
    ("torchattacks PGD-10 fp32 + eval fwd", "pgd_torchattacks_eval_s", None, None),
)


def print_throughput(res: dict[str, float | None], bs: int, anchor_note: str) -> None:
    print(f"{'':36s}{'images/s':>12s}{'x anchor':>10s}{'peak MiB':>10s}")
    for label, key, mem, anchor in ROWS:
        if res.get(key) is None:
            continue
        r = ratio(res, anchor, key) if anchor else None
        m = res.get(mem) if mem else None
        line = f"{label:36s}{bs / res[key]:12.2f}{'-' if r is None else f'{r:.2f}x':>10s}"
        line += f"{'-' if m is None else f'{m:.0f}':>10s}"
        if key == "pytorch_grad_cam_s":
            line += f"   ({anchor_note})"
        print(line)


def print_targets(rows: list[Target], cuda: bool) -> None:
    print("targets:")
    print(f"  {'target':42s}{'measured':>14s}{'goal':>16s}  status")
    for t in rows:
        print(f"  {t.name:42s}{t.fmt(t.value):>14s}{t.goal_text():>16s}  {t.status(cuda)}")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    batch = ap.add_mutually_exclusive_group()
    batch.add_argument("--batch-size", type=int, default=None, help="default: 4 on CPU, 64 on CUDA")
    batch.add_argument("--auto-batch", action="store_true",
                       help="largest power of two that fits free memory (advlens auto_batch_size)")
    ap.add_argument("--max-batch", type=int, default=256, help="cap for --auto-batch (default 256)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--skip-anchor", action="store_true", help="skip pytorch-grad-cam (slow on CPU)")
    ap.add_argument("--anchor-frozen", action="store_true",
                    help="give pytorch-grad-cam frozen weights too (default: weights require grad, as a "
                         "freshly built torchvision model has, so its backward also computes weight grads)")
    ap.add_argument("--skip-bf16", action="store_true",
                    help="skip the bf16 + channels_last runs (slow on CPUs without native bf16)")
    ap.add_argument("--compile", action="store_true",
                    help="also time advlens PGD-10 with model.set_compile('default') (torch.compile)")
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = al.load_model("vgg16", weights="random", device=device)
    if args.auto_batch:
        from advlens.explain.batching import auto_batch_size

        bs = auto_batch_size(model, size=(args.size, args.size), max_batch=args.max_batch)
    else:
        bs = args.batch_size or (64 if device.type == "cuda" else 4)
    x = torch.rand(bs, 3, args.size, args.size, device=device)
    y = torch.randint(0, 1000, (bs,), device=device)
    layers = list(model.layers)
    res: dict[str, float | None] = {}

    def ours() -> None:
        al.explain(model, x, "gradcam", layers="all", target=y)

    def floor() -> None:
        xi = x.detach().requires_grad_(True)
        torch.autograd.grad(model(xi).gather(1, y[:, None]).sum(), xi)

    def pgd() -> None:
        al.attack(model, x, y, method="pgd", **PGD_ARGS)

    for tag, prec in PRECISIONS:
        if args.skip_bf16 and prec == "bf16":
            continue
        with precision(model, prec):
            res[f"advlens{tag}_s"] = timed(ours, device, args.repeats)
            res[f"advlens{tag}_mem_mb"] = peak_memory(ours, device)
            if prec != "fp32":  # fp32 PGD is timed below, alternating with torchattacks
                res[f"pgd_advlens{tag}_s"] = timed(pgd, device, args.repeats)
            if args.compile:
                with compiled(model, "default"):
                    res[f"pgd_advlens{tag}_compile_s"] = timed(pgd, device, args.repeats)

    # everything below runs on the plain fp32 model
    res["floor_s"] = timed(floor, device, args.repeats)
    res["floor_mem_mb"] = peak_memory(floor, device)
    if not args.skip_anchor:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cam_targets = [ClassifierOutputTarget(int(t)) for t in y]
        for prm in model.parameters():
            prm.requires_grad_(not args.anchor_frozen)

        def anchor(n: int) -> None:
            for name in layers:
                with GradCAM(model=model, target_layers=[model.layers[name]]) as cam:
                    cam(input_tensor=x[:n].detach().requires_grad_(True), targets=cam_targets[:n])

        n = bs  # pytorch-grad-cam also keeps weight gradients: at an --auto-batch size it may not fit
        while True:
            try:
                res["pytorch_grad_cam_s"] = timed(lambda: anchor(n), device, max(1, args.repeats // 2)) * bs / n
                break
            except torch.OutOfMemoryError:
                if n == 1:
                    raise
                n //= 2
                torch.cuda.empty_cache()
        res["pytorch_grad_cam_batch"] = n
        for prm in model.parameters():
            prm.requires_grad_(False)

    import torchattacks

    ta = torchattacks.PGD(model, **PGD_ARGS)

    def ta_evaluated() -> None:  # what advlens returns too: the adversarial prediction, confidence and success
        xa = ta(x, y)
        with torch.no_grad():
            (model(xa).argmax(1) != y).float().mean().item()

    res.update(timed_alternating({"pgd_advlens_s": pgd, "pgd_torchattacks_s": lambda: ta(x, y),
                                  "pgd_torchattacks_eval_s": ta_evaluated}, device, args.repeats))

    cuda = device.type == "cuda"
    header = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "advlens": getattr(al, "__version__", "unknown"),
        "batch_size": bs,
        "auto_batch": args.auto_batch,
        "size": args.size,
        "compile": args.compile,
        "date_utc": datetime.datetime.now(datetime.UTC).date().isoformat(),
    }
    print(f"device={device} ({header['device_name']}), torch {header['torch']}, advlens {header['advlens']}, "
          f"VGG-16 {args.size}x{args.size}, batch {bs}{' (auto)' if args.auto_batch else ''}, "
          f"{len(layers)} layers, {header['date_utc']} UTC")
    note = "frozen weights" if args.anchor_frozen else "weights require grad"
    if res.get("pytorch_grad_cam_batch", bs) != bs:
        note += f"; run at batch {res['pytorch_grad_cam_batch']} (out of memory at {bs}), scaled"
    print_throughput(res, bs, note)
    rows = targets(res, bs, cuda, args.size, args.skip_anchor)
    print_targets(rows, cuda)
    if args.json:
        out = {**header, **res, "images_per_s": {k[:-2]: bs / v for k, v in res.items() if k.endswith("_s") and v},
               "targets": [{"name": t.name, "value": t.value, "goal": t.goal_text(), "status": t.status(cuda)}
                           for t in rows]}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
