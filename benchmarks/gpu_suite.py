"""GPU benchmark suite (issue 20): every speed and memory target in one run, each measurement its own step.

    bash benchmarks/gpu_suite.sh                             # on the GPU machine (its header has the call)
    python benchmarks/gpu_suite.py --out DIR                 # the same, without the wheel install
    python benchmarks/gpu_suite.py --smoke --out DIR         # tiny sizes on the CPU, steps in this process
    python benchmarks/gpu_suite.py --plan                    # the steps, their caps and the config

Steps, in order (each in its own process with its own time cap; a failure or timeout is recorded and the
next step runs; results are written after every step, so a run cut short keeps what it measured):
  env          device, driver, torch / CUDA / cuDNN and package versions, date
  gradcam      all-layer Grad-CAM on VGG-16 224² vs the forward + backward floor (alternating), fp32 and
               bf16 + channels_last, set_compile off and on, auto batch; peak memory; pytorch-grad-cam fp32
  pgd          PGD-10 advlens vs torchattacks, fp32 and bf16 + channels_last, all four alternating
  onepixel     ``benchmarks/onepixel.py``: batched DE vs scipy's differential_evolution per image
  memory       1,000 batches of all-layer Grad-CAM (+ PGD-5 every 10th): memory after warm-up / middle / end
  study        the seed-000 layer study (1 slice, 5 strengths, all layers), time per image -> 1,000 images
  detect       ``benchmarks/detect.py``: the detectors' throughput vs their pytorch-grad-cam anchors
  pgd_compile  PGD-10 through torch.compile (inductor), fp32 and bf16 + CL, vs torchattacks fp32

Writes ``gpu_suite.json`` (config, every step's status / seconds / cap / error / numbers, targets) and
``gpu_suite.md`` (header with device, versions, date and batch sizes; measurements; targets with PASS/FAIL;
steps) into ``--out`` (default ``$OUT``). The suite stops starting steps when ``--budget`` seconds are spent.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the suite's modules and the benchmarks it reuses live beside this file
    sys.path.insert(0, str(HERE))

#: the device run: VGG-16 224² (random init), sized so that every step fits the 8-minute run.
FULL: dict[str, Any] = {
    "device": "cuda", "seed": 0, "model": "vgg16", "weights": "random", "size": 224, "batch": "auto",
    "max_batch": 256, "repeats": 5, "anchor_batch": 64, "anchor_repeats": 2, "compile_mode": "default",
    "compile_backend": "inductor", "pgd_batch": 128, "pgd_steps": 10, "mem_batch": 32, "mem_batches": 1000,
    "mem_attack_every": 10,
    "study_model": "vgg16", "study_images": 200, "study_batch": 64, "study_precision": "fp32",
    "onepixel_args": ["--n", "64", "--repeats", "2"], "detect_args": ["--n", "256", "--n-anchor", "128"],
}
#: ``--smoke``: the same steps on the CPU with a tiny random small VGG, 1-2 iterations, ``eager`` compile.
SMOKE: dict[str, Any] = {
    **FULL, "device": "cpu", "model": "small_vgg_digits", "size": 16, "batch": 2, "max_batch": 4, "repeats": 1,
    "anchor_batch": 2, "anchor_repeats": 1, "compile_backend": "eager", "pgd_batch": 2, "pgd_steps": 2,
    "mem_batch": 2, "mem_batches": 8, "mem_attack_every": 4, "study_model": "small_vgg_digits", "study_images": 2,
    "study_batch": 2,
    "onepixel_args": ["--n", "2", "--repeats", "1", "--iterations", "2", "--popsize", "16", "--batch-size", "64"],
    "detect_args": ["--n", "4", "--n-anchor", "2", "--fit", "8", "--copies", "3", "--repeats", "1",
                    "--batch-size", "8"],
}
#: device budget: the steps get at most this many seconds together (the install and report take the rest of 8 min).
BUDGET_S = 420.0
#: a step is not started with less than this left of the budget (it is recorded as skipped).
MIN_STEP_S = 20.0


@dataclass(frozen=True)
class Step:
    """One measurement: a function of :mod:`gpu.steps`, or an existing benchmark ``script`` run with
    ``args(cfg)`` and ``--json`` whose output ``summarize`` (a :mod:`gpu.report` function name) reads."""

    name: str
    cap_s: float
    script: str | None = None
    args: Callable[[dict], list[str]] = field(default=lambda cfg: [])
    summarize: str | None = None


STEPS: tuple[Step, ...] = (
    Step("env", 60),
    Step("gradcam", 150),
    Step("pgd", 120),
    Step("onepixel", 120, "onepixel.py", lambda c: ["--device", c["device"], "--seed", str(c["seed"]),
                                                    *c["onepixel_args"]], "summarize_onepixel"),
    Step("memory", 120),
    Step("study", 150),
    Step("detect", 150, "detect.py", lambda c: ["--device", c["device"], "--seed", str(c["seed"]), *c["detect_args"]],
         "summarize_detect"),
    Step("pgd_compile", 180),
)


def _dump(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str))


def run_isolated(argv: list[str], cap_s: float, log: Path) -> tuple[str, int | None]:
    """Run ``argv`` in its own process group, output to ``log``; kill the group after ``cap_s`` seconds.
    Returns (``"ok"`` | ``"failed"`` | ``"timeout"``, exit code or None)."""
    with open(log, "w") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=HERE.parent)
        try:
            rc = proc.wait(timeout=cap_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return "timeout", None
    return ("ok" if rc == 0 else "failed"), rc


def _summarize(step: Step, raw_path: Path) -> dict[str, Any]:
    from gpu import report

    return getattr(report, step.summarize)(json.loads(raw_path.read_text()))


def run_step(step: Step, cfg: dict, cap_s: float | None, work: Path, isolate: bool) -> dict[str, Any]:
    """Run one step; its record: status, seconds, cap, error (output tail) and result (rows, metrics)."""
    res_path, log = work / f"{step.name}.result.json", work / f"{step.name}.log"
    start = time.perf_counter()
    rec: dict[str, Any] = {"status": "ok", "cap_s": cap_s, "error": None, "result": None}
    if isolate:
        if step.script:
            argv = [sys.executable, str(HERE / step.script), *step.args(cfg), "--json", str(res_path)]
        else:
            cfg_path = work / "config.json"
            _dump(cfg, cfg_path)
            argv = [sys.executable, __file__, "--step", step.name, "--config", str(cfg_path), "--result", str(res_path)]
        rec["status"], rec["exit_code"] = run_isolated(argv, cap_s, log)
        out = log.read_text(errors="replace")
        print(f"----- {step.name} output -----\n{out}", flush=True)
        if rec["status"] != "ok":
            rec["error"] = out[-2000:] if rec["status"] == "failed" else f"killed after the {cap_s:.0f} s cap"
    else:  # smoke: same code in this process (no cap is enforced)
        rec["cap_s"] = None
        buf = io.StringIO()
        try:
            if step.script:
                argv = [str(HERE / step.script), *step.args(cfg), "--json", str(res_path)]
                with _argv(argv), contextlib.redirect_stdout(buf):
                    runpy.run_path(argv[0], run_name="__main__")
            else:
                from gpu import steps

                _dump(steps.FUNCTIONS[step.name](cfg), res_path)
        except BaseException as e:  # a step's failure, SystemExit from argparse included, is recorded
            if isinstance(e, KeyboardInterrupt):
                raise
            rec["status"], rec["error"] = "failed", traceback.format_exc()[-2000:]
        if buf.getvalue():
            print(f"----- {step.name} output -----\n{buf.getvalue()}", flush=True)
    if rec["status"] == "ok":
        try:
            rec["result"] = _summarize(step, res_path) if step.summarize else json.loads(res_path.read_text())
        except Exception:  # missing or unreadable result: the step did not deliver
            rec["status"], rec["error"] = "failed", traceback.format_exc()[-2000:]
    rec["seconds"] = time.perf_counter() - start
    return rec


@contextlib.contextmanager
def _argv(argv: list[str]):
    old = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = old


def write_outputs(out: Path, suite: dict[str, Any], steps: dict[str, dict[str, Any]]) -> str:
    """Write ``gpu_suite.json`` and ``gpu_suite.md`` into ``out``; return the markdown."""
    from gpu import report

    cuda = str(suite["config"]["device"]).startswith("cuda")
    rows = report.targets(steps, suite["config"])
    md = report.markdown(suite, steps, rows, cuda)
    _dump({"suite": suite, "env": report.metrics(steps, "env"), "steps": steps,
           "targets": [{"name": t.name, "value": t.value, "goal": t.goal_text(), "status": t.status(cuda)}
                       for t in rows]}, out / "gpu_suite.json")
    (out / "gpu_suite.md").write_text(md)
    return md


def run_suite(cfg: dict, out: Path, budget_s: float, isolate: bool, only: list[str] | None = None,
              mode: str = "full") -> dict[str, dict[str, Any]]:
    """Run every step (or ``only`` these) within ``budget_s`` seconds, writing the outputs after each."""
    out.mkdir(parents=True, exist_ok=True)
    suite = {"mode": mode, "config": cfg, "budget_s": budget_s, "isolated": isolate,
             "started_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
    deadline = time.perf_counter() + budget_s
    records: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as tmp:
        for step in STEPS:
            if only and step.name not in only:
                continue
            left = deadline - time.perf_counter()
            cap = min(step.cap_s, left)
            if isolate and cap < min(MIN_STEP_S, step.cap_s):
                records[step.name] = {"status": "skipped", "cap_s": cap, "seconds": 0.0, "result": None,
                                      "error": f"suite budget of {budget_s:.0f} s spent"}
            else:
                records[step.name] = run_step(step, cfg, cap, Path(tmp), isolate)
            r = records[step.name]
            print(f"[gpu_suite] {step.name}: {r['status']} in {r['seconds']:.1f} s"
                  + (f" (cap {cap:.0f} s)" if isolate else ""), flush=True)
            write_outputs(out, suite, records)
    print(write_outputs(out, suite, records), flush=True)
    return records


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "build/gpu-suite-out"),
                    help="output folder (default $OUT, else build/gpu-suite-out)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, steps in this process")
    ap.add_argument("--budget", type=float, default=None, help=f"seconds for all steps (default {BUDGET_S:.0f})")
    ap.add_argument("--only", default=None, help="comma-separated step names (default: all)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config key (JSON value or string), e.g. --set study_images=1000")
    iso = ap.add_mutually_exclusive_group()
    iso.add_argument("--isolate", dest="isolate", action="store_true", default=None,
                     help="each step in its own process with its cap (default, except with --smoke)")
    iso.add_argument("--in-process", dest="isolate", action="store_false", help="steps in this process, no caps")
    ap.add_argument("--plan", action="store_true", help="print the steps, caps and config; run nothing")
    ap.add_argument("--step", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]] | None:
    args = parse_args(argv)
    if args.step:  # one step, inside its isolated process
        from gpu import steps

        _dump(steps.FUNCTIONS[args.step](json.loads(Path(args.config).read_text())), Path(args.result))
        return None
    cfg = dict(SMOKE if args.smoke else FULL)
    for kv in args.set:
        key, sep, val = kv.partition("=")
        if not sep or key not in cfg:
            sys.exit(f"--set takes KEY=VALUE with KEY one of {', '.join(cfg)}; got {kv!r}")
        cfg[key] = _value(val)
    only = args.only.split(",") if args.only else None
    unknown = sorted(set(only or ()) - {s.name for s in STEPS})
    if unknown:
        sys.exit(f"unknown step(s) {', '.join(unknown)}; steps: {', '.join(s.name for s in STEPS)}")
    budget = args.budget if args.budget is not None else BUDGET_S
    isolate = (not args.smoke) if args.isolate is None else args.isolate
    if args.plan:
        for s in STEPS:
            print(f"{s.name:12s} cap {s.cap_s:5.0f} s  {s.script or 'gpu/steps.py'}")
        print(f"budget {budget:.0f} s for all steps (isolated: {isolate}); config: {json.dumps(cfg)}")
        return None
    return run_suite(cfg, Path(args.out), budget, isolate, only, "smoke" if args.smoke else "full")


if __name__ == "__main__":
    main()
