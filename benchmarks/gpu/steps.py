"""The suite's own measurement steps: each takes the suite's config dict and returns a JSON-ready dict
``{"rows": [...], "metrics": {...}, "batch": ...}`` (rows feed the markdown table, metrics the targets).

The timing, memory and precision helpers are the existing benchmarks' (``all_layer_cam.timed_alternating``,
``peak_memory``, ``precision``, ``PGD_ARGS``; ``memory.memory_mb``); this module only arranges them into
the issue-20 measurements that no single script makes (bf16 floor, compile on/off for the all-layer pass,
PGD-10 in fp32 and bf16 alternating with torchattacks, VGG-16 memory over 1,000 batches, a seed-000 study
slice timed per image). Random inputs come from a ``torch.Generator`` seeded with ``cfg["seed"]``.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import platform
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

import advlens as al
from all_layer_cam import PGD_ARGS, peak_memory, precision, timed_alternating
from memory import memory_mb

Result = dict[str, Any]
#: (key tag, precision) of every precision-swept measurement; bf16 always runs with channels_last.
PRECISIONS = (("fp32", "fp32"), ("bf16", "bf16"))
#: packages whose versions the env step records.
PACKAGES = ("advlens", "torch", "torchvision", "grad-cam", "torchattacks", "scipy", "numpy", "kornia", "triton")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(cfg: dict, name: str | None = None) -> al.ClassifierModel:
    """The config's model (random weights unless ``cfg["weights"]`` says otherwise), in eval mode, frozen."""
    torch.manual_seed(cfg["seed"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return al.load_model(name or cfg["model"], weights=cfg["weights"], device=cfg["device"])


def _batch(model: al.ClassifierModel, cfg: dict, key: str = "batch") -> int:
    """``cfg[key]``, or for ``"auto"`` advlens' own pick (``auto_batch_size``, capped by ``cfg["max_batch"]``)."""
    if cfg[key] != "auto":
        return int(cfg[key])
    from advlens.explain.batching import auto_batch_size

    return auto_batch_size(model, size=(cfg["size"], cfg["size"]), max_batch=cfg["max_batch"])


def _inputs(n: int, cfg: dict, device: torch.device, offset: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random images ``[n,3,S,S]`` in [0,1] and labels ``[n]`` on ``device`` (never zeros)."""
    gen = torch.Generator(device=device).manual_seed(cfg["seed"] + offset)
    x = torch.rand(n, 3, cfg["size"], cfg["size"], generator=gen, device=device)
    y = torch.randint(0, 10, (n,), generator=gen, device=device)
    return x, y


@contextmanager
def _compiling(model: al.ClassifierModel, cfg: dict) -> Iterator[None]:
    """The body runs with ``model.set_compile(cfg["compile_mode"], cfg["compile_backend"])``; off afterwards."""
    model.set_compile(cfg["compile_mode"], backend=cfg["compile_backend"])
    try:
        yield
    finally:
        model.set_compile(None)


def _pgd_args(cfg: dict) -> dict[str, Any]:
    """``all_layer_cam.PGD_ARGS`` (PGD-10, eps 8/255, alpha 2/255, no random start) with ``cfg["pgd_steps"]``."""
    return {**PGD_ARGS, "steps": int(cfg["pgd_steps"])}


def _row(label: str, n: int, seconds: float | None, anchor_s: float | None = None, mem: float | None = None) -> dict:
    """One table row: images/s of ``n`` images in ``seconds``, × the anchor's time, peak MiB."""
    return {"label": label, "images_per_s": None if not seconds else n / seconds,
            "vs_anchor": None if not (seconds and anchor_s) else anchor_s / seconds, "peak_mib": mem}


def env(cfg: dict) -> Result:
    """Device, driver, torch/CUDA/cuDNN and package versions, date (UTC), threads and TF32 settings."""
    cuda = torch.cuda.is_available() and cfg["device"].startswith("cuda")
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    info: Result = {
        "device": cfg["device"], "device_name": torch.cuda.get_device_name(cfg["device"]) if cuda else "cpu",
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
        "python": platform.python_version(), "versions": versions, "torch_threads": torch.get_num_threads(),
        "cudnn_tf32": torch.backends.cudnn.allow_tf32, "matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if cuda:
        p = torch.cuda.get_device_properties(cfg["device"])
        info.update(capability=f"{p.major}.{p.minor}", sm_count=p.multi_processor_count,
                    memory_gib=round(p.total_memory / 2**30, 1))
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.sm,clocks.mem",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
            info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except (OSError, subprocess.SubprocessError) as e:
            info["nvidia_smi"] = f"unavailable: {e}"
    return {"rows": [], "metrics": info}


def gradcam_anchor(model: al.ClassifierModel, x: torch.Tensor, y: torch.Tensor) -> None:
    """pytorch-grad-cam's documented usage for the same maps: one ``GradCAM`` call per layer on ``x``
    ``[N,3,H,W]`` with ``ClassifierOutputTarget(y_i)`` (13 forward + backward passes on VGG-16)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = [ClassifierOutputTarget(int(t)) for t in y]
    for layer in model.layers.values():
        with GradCAM(model=model, target_layers=[layer]) as cam:
            cam(input_tensor=x.detach().requires_grad_(True), targets=targets)


def gradcam(cfg: dict) -> Result:
    """All-layer Grad-CAM vs the plain forward + backward floor (alternating, fp32 and bf16 + channels_last,
    with ``set_compile`` off and on), peak memory of both, and pytorch-grad-cam in fp32 on ``anchor_batch``
    images with weights requiring grad (as a freshly built torchvision model has), per image scaled."""
    device = torch.device(cfg["device"])
    model = _model(cfg)
    bs = _batch(model, cfg)
    x, y = _inputs(bs, cfg, device)
    n_layers = len(model.layers)

    def ours() -> None:
        al.explain(model, x, "gradcam", layers="all", target=y)

    def floor() -> None:
        xi = x.detach().requires_grad_(True)
        torch.autograd.grad(model(xi).gather(1, y[:, None]).sum(), xi)

    m: Result = {"batch": bs, "layers": n_layers, "size": cfg["size"]}
    for tag, prec in PRECISIONS:
        with precision(model, prec):
            t = timed_alternating({"ours": ours, "floor": floor}, device, cfg["repeats"])
            m[f"advlens_{tag}_s"], m[f"floor_{tag}_s"] = t["ours"], t["floor"]
            m[f"advlens_{tag}_mem_mib"] = peak_memory(ours, device)
            m[f"floor_{tag}_mem_mib"] = peak_memory(floor, device)
            with _compiling(model, cfg):  # explanations hook the network, so they run eager by design
                m[f"advlens_{tag}_compile_s"] = timed_alternating({"c": ours}, device, cfg["repeats"])["c"]
    n = min(bs, cfg["anchor_batch"])
    model.requires_grad_(True)
    try:
        m["pytorch_grad_cam_s"] = timed_alternating(
            {"a": lambda: gradcam_anchor(model, x[:n], y[:n])}, device, cfg["anchor_repeats"])["a"] * bs / n
    finally:
        model.requires_grad_(False)
    m["pytorch_grad_cam_batch"] = n
    anchor = m["pytorch_grad_cam_s"]
    rows = [
        _row("all-layer Grad-CAM fp32", bs, m["advlens_fp32_s"], anchor, m["advlens_fp32_mem_mib"]),
        _row("all-layer Grad-CAM bf16 + channels_last", bs, m["advlens_bf16_s"], anchor, m["advlens_bf16_mem_mib"]),
        _row("all-layer Grad-CAM fp32, set_compile on (maps run eager)", bs, m["advlens_fp32_compile_s"], anchor),
        _row("all-layer Grad-CAM bf16 + CL, set_compile on", bs, m["advlens_bf16_compile_s"], anchor),
        _row("floor: forward + backward to the input, fp32", bs, m["floor_fp32_s"], None, m["floor_fp32_mem_mib"]),
        _row("floor: forward + backward, bf16 + CL", bs, m["floor_bf16_s"], None, m["floor_bf16_mem_mib"]),
        _row(f"pytorch-grad-cam, {n_layers} GradCAM calls, fp32 (batch {n})", bs, anchor),
    ]
    return {"rows": rows, "metrics": m, "batch": bs}


def pgd(cfg: dict) -> Result:
    """PGD-10 (eps 8/255, alpha 2/255, no random start): advlens vs torchattacks, each in fp32 and in
    bf16 + channels_last, all four timed in alternating order in one process."""
    import torchattacks

    device = torch.device(cfg["device"])
    model = _model(cfg)
    bs = _batch(model, cfg, "pgd_batch")
    x, y = _inputs(bs, cfg, device, offset=1)
    ta = torchattacks.PGD(model, **_pgd_args(cfg))

    def in_precision(fn: Callable[[], object], prec: str) -> Callable[[], None]:
        def run() -> None:
            with precision(model, prec):
                fn()
        return run

    fns = {}
    for tag, prec in PRECISIONS:
        fns[f"advlens_{tag}"] = in_precision(lambda: al.attack(model, x, y, method="pgd", **_pgd_args(cfg)), prec)
        fns[f"torchattacks_{tag}"] = in_precision(lambda: ta(x, y), prec)
    m = {f"{k}_s": v for k, v in timed_alternating(fns, device, cfg["repeats"]).items()}
    m["batch"] = bs
    ta32 = m["torchattacks_fp32_s"]
    rows = [_row(f"PGD-{cfg['pgd_steps']} advlens fp32", bs, m["advlens_fp32_s"], ta32),
            _row(f"PGD-{cfg['pgd_steps']} advlens bf16 + CL (x torchattacks fp32)", bs, m["advlens_bf16_s"], ta32),
            _row(f"PGD-{cfg['pgd_steps']} torchattacks fp32", bs, ta32),
            _row(f"PGD-{cfg['pgd_steps']} torchattacks, same model in bf16 + CL", bs, m["torchattacks_bf16_s"], ta32)]
    return {"rows": rows, "metrics": m, "batch": bs}


def pgd_compile(cfg: dict) -> Result:
    """PGD-10 with ``model.set_compile`` (torch.compile of the hook-free forwards) in fp32 and bf16 + CL,
    alternating after an un-timed compile call each (its wall time recorded), against torchattacks fp32
    timed in the same process before compiling is switched on."""
    import torchattacks

    device = torch.device(cfg["device"])
    model = _model(cfg)
    bs = _batch(model, cfg, "pgd_batch")
    x, y = _inputs(bs, cfg, device, offset=1)
    ta = torchattacks.PGD(model, **_pgd_args(cfg))
    m: Result = {"batch": bs, "compile_mode": cfg["compile_mode"], "compile_backend": cfg["compile_backend"]}
    m["torchattacks_fp32_s"] = timed_alternating({"t": lambda: ta(x, y)}, device, cfg["repeats"])["t"]
    fns = {}
    with _compiling(model, cfg):
        for tag, prec in PRECISIONS:
            def run(prec: str = prec) -> None:
                with precision(model, prec):
                    al.attack(model, x, y, method="pgd", **_pgd_args(cfg))
            start = time.perf_counter()
            run()
            _sync(device)
            m[f"compile_{tag}_first_call_s"] = time.perf_counter() - start
            fns[f"advlens_{tag}_compiled"] = run
        m.update({f"{k}_s": v for k, v in timed_alternating(fns, device, cfg["repeats"]).items()})
    ta32 = m["torchattacks_fp32_s"]
    rows = [_row(f"PGD-{cfg['pgd_steps']} advlens fp32, compiled", bs, m["advlens_fp32_compiled_s"], ta32),
            _row(f"PGD-{cfg['pgd_steps']} advlens bf16 + CL, compiled", bs, m["advlens_bf16_compiled_s"], ta32)]
    return {"rows": rows, "metrics": m, "batch": bs}


def memory(cfg: dict) -> Result:
    """``mem_batches`` batches of fresh random images through all-layer Grad-CAM (PGD-5 on every
    ``mem_attack_every``-th), memory (``memory.memory_mb``: CUDA allocated + peak, or the CPU's resident set)
    read after the warm-up, in the middle and at the end; ``growth`` = max(final / warm-up) of the two."""
    device = torch.device(cfg["device"])
    model = _model(cfg)
    bs, n = int(cfg["mem_batch"]), int(cfg["mem_batches"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    gen = torch.Generator(device=device).manual_seed(cfg["seed"])
    warm = max(1, min(10, n // 4))
    marks = {warm: "warmup", n // 2: "middle", n: "final"}
    m: Result = {"batch": bs, "batches": n}
    start = time.perf_counter()
    for b in range(1, n + 1):
        x = torch.rand(bs, 3, cfg["size"], cfg["size"], generator=gen, device=device)
        maps = al.explain(model, x, "gradcam", layers="all")
        if b % cfg["mem_attack_every"] == 0:
            al.attack(model, x, model.predict(x), "pgd", eps=8 / 255, alpha=2 / 255, steps=5)
        del maps
        if b in marks:
            _sync(device)
            m[f"{marks[b]}_mib"], m[f"{marks[b]}_peak_mib"] = memory_mb(device)
    m["seconds"] = time.perf_counter() - start
    m["growth"] = max(m["final_mib"] / m["warmup_mib"], m["final_peak_mib"] / m["warmup_peak_mib"])
    rows = [_row(f"all-layer Grad-CAM over {n} batches (+ PGD-5 every {cfg['mem_attack_every']})", n * bs,
                 m["seconds"], None, m["final_peak_mib"])]
    return {"rows": rows, "metrics": m, "batch": bs}


def study(cfg: dict) -> Result:
    """The seed-000 preset (DLFuzz, strengths 0.25-4, matched noise, Grad-CAM at every layer) on
    ``study_images`` images, timed from ``run_study`` call to report (model load and report included), and
    projected linearly to 1,000 images x 5 strengths (an upper bound: the fixed costs are counted per image)."""
    from advlens.studies.runner import run_study
    from advlens.studies.spec import load_spec

    device = torch.device(cfg["device"])
    n = int(cfg["study_images"])
    prec = cfg["study_precision"]
    spec = load_spec(preset="seed000", model=cfg["study_model"], weights=cfg["weights"], limit=n,
                     batch_size=cfg["study_batch"], device=cfg["device"], precision=prec,
                     channels_last=prec == "bf16")
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        run_study(spec, out, progress=False)
        _sync(device)
        seconds = time.perf_counter() - start
    m = {"images": n, "seconds": seconds, "per_image_s": seconds / n, "projected_1000_min": seconds / n * 1000 / 60,
         "model": cfg["study_model"], "precision": prec}
    label = f"seed-000 study, {cfg['study_model']} {prec}, 5 strengths x all layers"
    return {"rows": [_row(label, n, seconds)], "metrics": m, "batch": cfg["study_batch"]}


#: the suite's own steps by name (the script steps, onepixel and detect, are in ``gpu_suite.STEPS``).
FUNCTIONS: dict[str, Callable[[dict], Result]] = {
    "env": env, "gradcam": gradcam, "pgd": pgd, "pgd_compile": pgd_compile, "memory": memory, "study": study,
}
