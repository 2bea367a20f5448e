"""The GPU suite's targets (PASS/FAIL, from ratios measured in the same run) and its markdown table.

A step record is ``{"status": "ok" | "failed" | "timeout" | "skipped", "seconds", "cap_s", "error",
"result": {"rows": [...], "metrics": {...}, "batch": ...}}``; a target whose step did not finish reads
``n/a (<step> <status>)``. The issue's targets are GPU targets: on the CPU (``--smoke``) they read
``n/a (GPU target)`` with their values still shown (``all_layer_cam.Target`` does the judging).
"""
from __future__ import annotations

from typing import Any

from all_layer_cam import Target, ratio

Steps = dict[str, dict[str, Any]]


def metrics(steps: Steps, name: str) -> dict[str, Any]:
    """The metrics of step ``name`` (empty when it did not finish)."""
    rec = steps.get(name) or {}
    return (rec.get("result") or {}).get("metrics") or {}


def _why(steps: Steps, name: str) -> str | None:
    """Why step ``name``'s targets cannot be judged: ``"<name> <status>"``, or None when it finished."""
    status = (steps.get(name) or {}).get("status", "not run")
    return None if status == "ok" else f"{name} {status}"


def targets(steps: Steps, cfg: dict[str, Any]) -> list[Target]:
    """The issue-20 targets, each from ratios of seconds / MiB measured in the same step (same process)."""
    g, p, o, mem, st = (metrics(steps, k) for k in ("gradcam", "pgd", "onepixel", "memory", "study"))
    bf16_ips = None if g.get("advlens_bf16_s") is None else g["batch"] / g["advlens_bf16_s"]
    vgg224 = None if (cfg["model"], cfg["size"]) == ("vgg16", 224) else "target is VGG-16 at 224x224"
    gpu = {"gpu_only": True}
    return [
        Target("all-layer Grad-CAM fp32 / fp32 floor", ratio(g, "floor_fp32_s", "advlens_fp32_s"), 0.85,
               na=_why(steps, "gradcam"), **gpu),
        Target("all-layer Grad-CAM / pytorch-grad-cam (fp32)", ratio(g, "pytorch_grad_cam_s", "advlens_fp32_s"),
               150.0, na=_why(steps, "gradcam"), **gpu),
        Target("all-layer Grad-CAM bf16 + channels_last", bf16_ips, 3000.0, unit=" img/s",
               na=_why(steps, "gradcam") or vgg224, **gpu),
        Target("PGD-10 advlens fp32 / torchattacks fp32", ratio(p, "torchattacks_fp32_s", "advlens_fp32_s"), 1.0,
               na=_why(steps, "pgd"), **gpu),
        Target("PGD-10 advlens bf16 + CL / torchattacks fp32", ratio(p, "torchattacks_fp32_s", "advlens_bf16_s"),
               1.8, na=_why(steps, "pgd"), **gpu),
        Target("one-pixel DE advlens / scipy", ratio(o, "scipy_s", "advlens_s"), 20.0, na=_why(steps, "onepixel"),
               **gpu),
        Target("peak memory all-layer pass / floor (fp32)", ratio(g, "advlens_fp32_mem_mib", "floor_fp32_mem_mib"),
               1.3, at_least=False, na=_why(steps, "gradcam"), **gpu),
        Target(f"memory final / after warm-up, {mem.get('batches', cfg['mem_batches'])} batches", mem.get("growth"),
               1.01, at_least=False, na=_why(steps, "memory"), **gpu),
        Target("seed-000 study, 1,000 images x 5 strengths", st.get("projected_1000_min"), 5.0, at_least=False,
               unit=" min", na=_why(steps, "study") or (None if cfg["study_model"] == "vgg16" else "target is VGG-16"),
               **gpu),
    ]


def summarize_onepixel(raw: dict[str, Any]) -> dict[str, Any]:
    """Rows and metrics from ``benchmarks/onepixel.py --json``: advlens' batched DE vs scipy per image."""
    n, ours, sp = raw["n"], raw["advlens"], raw["scipy"]
    m = {"n": n, "advlens_s": ours["s"], "scipy_s": sp["s"], "advlens_success": ours["success"],
         "scipy_success": sp["success"], "advlens_queries": ours["queries"], "scipy_queries": sp["queries"],
         "popsize": raw["popsize"], "iterations": raw["iterations"], "batch": raw["batch_size"]}
    setting = f"digits VGG, pop {raw['popsize']}, <= {raw['iterations']} generations"
    rows = [{"label": f"one-pixel DE advlens batched ({setting})", "images_per_s": n / ours["s"],
             "vs_anchor": sp["s"] / ours["s"], "peak_mib": None},
            {"label": "one-pixel scipy differential_evolution, per image", "images_per_s": n / sp["s"],
             "vs_anchor": None, "peak_mib": None}]
    return {"rows": rows, "metrics": m, "batch": raw["batch_size"]}


#: detect.py's result keys and the labels of their rows.
DETECTORS = {"behavior": "BehaviorDeviation score", "noisecam": "NoiseCAMDetector score (x 2-pass anchor)",
             "noisecam_exact": "NoiseCAMDetector score (x exact anchor)", "ensemble": "EnsembleDetector score"}


def summarize_detect(raw: dict[str, Any]) -> dict[str, Any]:
    """Rows and metrics from ``benchmarks/detect.py --json``: each detector's images/s vs its anchor."""
    rows, m = [], {"n": raw["n"], "n_anchor": raw["n_anchor"], "model": raw["model"], "batch": raw["batch_size"]}
    for key, label in DETECTORS.items():
        r = raw.get(key)
        if r is None:
            continue
        a = r.get("anchor_ips")
        rows.append({"label": f"{label}, {raw['model']}", "images_per_s": r["ours_ips"],
                     "vs_anchor": None if not a else r["ours_ips"] / a, "peak_mib": None})
        m.update({f"{key}_ips": r["ours_ips"], f"{key}_anchor_ips": a, f"{key}_fit_s": r.get("fit_s")})
    return {"rows": rows, "metrics": m, "batch": raw["batch_size"]}


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def markdown(suite: dict[str, Any], steps: Steps, rows: list[Target], cuda: bool) -> str:
    """The suite's result as markdown, ready to paste into the README: header (device, versions, date,
    batch sizes), measurements, targets with PASS/FAIL, and one line per step with its status and time."""
    env, cfg = metrics(steps, "env"), suite["config"]
    v = env.get("versions") or {}
    batches = []
    for name, label in (("gradcam", "all-layer Grad-CAM"), ("pgd", "PGD-10"), ("memory", "memory"),
                        ("study", "study"), ("onepixel", "one-pixel chunk"), ("detect", "detectors")):
        b = ((steps.get(name) or {}).get("result") or {}).get("batch")
        if b is not None:
            batches.append(f"{label} {b}")
    g = metrics(steps, "gradcam")
    if g.get("pytorch_grad_cam_batch"):
        batches.append(f"pytorch-grad-cam {g['pytorch_grad_cam_batch']} (per image, scaled)")
    lines = [
        f"GPU suite (`bash benchmarks/gpu_suite.sh{' --smoke' if suite['mode'] == 'smoke' else ''}`), "
        f"{env.get('device_name', '?')}"
        + (f" ({env['memory_gib']} GiB, compute {env['capability']}, driver/clocks {env.get('nvidia_smi')})"
           if env.get("capability") else ""),
        f"torch {v.get('torch')} (CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}), advlens {v.get('advlens')}, "
        f"grad-cam {v.get('grad-cam')}, torchattacks {v.get('torchattacks')}, scipy {v.get('scipy')}, "
        f"python {env.get('python')}; {env.get('date_utc', suite['started_utc'])}",
        f"{cfg['model']} {cfg['size']}x{cfg['size']} (random init), batch sizes: {', '.join(batches) or '-'} "
        f"(all-layer batch {'auto' if cfg['batch'] == 'auto' else 'fixed'}); medians of {cfg['repeats']} run(s), "
        f"the contenders of a step timed in alternating order; step caps {'enforced' if suite['isolated'] else 'off'}",
        "",
        "| measurement | images/s | x anchor | peak MiB |",
        "|---|---|---|---|",
    ]
    for name in steps:
        for r in ((steps[name].get("result") or {}).get("rows") or []):
            lines.append(f"| {r['label']} | {_num(r['images_per_s'], '.1f')} | "
                         f"{_num(r['vs_anchor'], '.2f') + ('x' if r['vs_anchor'] is not None else '')} | "
                         f"{_num(r['peak_mib'], '.0f')} |")
    lines += ["", "| target | measured | goal | status |", "|---|---|---|---|"]
    lines += [f"| {t.name} | {t.fmt(t.value)} | {t.goal_text()} | {t.status(cuda)} |" for t in rows]
    lines += ["", "| step | status | seconds | cap s | note |", "|---|---|---|---|---|"]
    for name, rec in steps.items():
        note = (rec.get("error") or "").strip().splitlines()[-1:] or [""]
        lines.append(f"| {name} | {rec['status']} | {_num(rec.get('seconds'), '.1f')} | "
                     f"{_num(rec.get('cap_s'), '.0f')} | {note[0][:160].replace('|', '/')} |")
    return "\n".join(lines) + "\n"
