"""``advlens detect fit|score|eval``: fit a detector on clean images, score images, evaluate on an attack.

Fit uses the ``train`` split of the images, eval the ``test`` split (the fixed stratified 80/20
split of every source), so an evaluation never scores what the detector was fitted on.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .._checks import AdvlensError
from ._args import (common, data_args, eval_attack_args, load_images_for, load_model_for, model_options, output_dir,
                    overwrite_arg, param_pairs, positive_float)

__all__ = ["add_parsers", "model_for"]


def model_for(args: argparse.Namespace, path: str | None = None):
    """``--model`` (+ ``--weights`` and the reference options), or the model a saved detector names in its
    ``.json``: its ``model_source`` (reference, checkpoint, options; flags given now override them), else
    its registered name."""
    import json

    from ..models import load_model

    if path is not None and not Path(path).is_file():
        raise AdvlensError(f"detector file not found: {path}")
    if args.model is not None or path is None:
        return load_model_for(args, args.model or "efficientnet_lite0")
    meta = Path(path).with_name(Path(path).name + ".json")
    try:
        found = json.loads(meta.read_text())
        source = found.get("model_source") or {"model": found["model"]}
        name, weights, options = source["model"], source.get("weights"), dict(source.get("model_options") or {})
        if not isinstance(name, str) or not isinstance(weights, (str, type(None))):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise AdvlensError(f"cannot read the detector metadata {meta}; pass --model") from None
    options.update(model_options(args))
    return load_model(name, weights=args.weights or weights, device=args.device, **options)


def _model_source(args: argparse.Namespace) -> dict[str, object]:
    """How ``detect fit`` loaded its model, for the detector's ``.json`` (paths made absolute)."""
    options = model_options(args)
    if "labels" in options:
        options["labels"] = str(Path(str(options["labels"])).resolve())
    return {"model": args.model or "efficientnet_lite0",
            "weights": str(Path(args.weights).resolve()) if args.weights else None, "model_options": options}


def _cmd_fit(args: argparse.Namespace) -> None:
    from ..detect import DETECTORS, make

    from .._io import check_output_file

    check_output_file(args.out, inputs=[args.images, args.weights], overwrite=args.overwrite)
    check_output_file(args.out + ".json", inputs=[args.images, args.weights], overwrite=args.overwrite)
    params = param_pairs(args.param)
    if "seed" in getattr(DETECTORS.get(args.detector), "params", ()):
        params.setdefault("seed", args.seed)
    det = make(args.detector, **params)
    model = model_for(args)
    batch = load_images_for(args, model, args.split)
    det.fit(model, batch.x)
    path = det.save(args.out, model_source=_model_source(args))
    print(f"fitted {det!r} on {len(batch)} images (threshold {det.threshold:.4g}); wrote {path} and {path}.json")


def _cmd_score(args: argparse.Namespace) -> None:
    import pandas as pd

    from .._io import check_output_file, write_parquet
    from ..detect import load

    if args.out:
        check_output_file(args.out, inputs=[args.images, args.detector_file], overwrite=args.overwrite)
    model = model_for(args, args.detector_file)
    det = load(args.detector_file, model)
    batch = load_images_for(args, model, args.split)
    score = det.score(batch.x).cpu()
    rows = pd.DataFrame({"image": batch.names, "score": score.double().numpy(),
                         "flagged": (score > det.threshold).numpy(),
                         "pred": [model.labels[int(i)] for i in model.predict(batch.x)]})
    print(rows.to_string(index=False))
    if args.out:
        write_parquet(rows, Path(args.out))
        print(f"wrote {args.out}")


def _cmd_eval(args: argparse.Namespace) -> None:
    import pandas as pd

    from .._io import write_json, write_parquet
    from ..attacks import attack, budget_params
    from ..detect import load
    from ..report.detection import roc_plot
    from ..studies.detection import detection_table, strength_inputs

    out = output_dir(args, "detect eval", args.images, args.detector_file, args.weights)
    model = model_for(args, args.detector_file)
    det = load(args.detector_file, model)
    batch = load_images_for(args, model, args.split)
    params = budget_params(args.attack, args.eps, args.steps, args.alpha)  # unset: the attack's own default
    params.update(param_pairs(args.param))
    res = attack(model, batch.x, None, args.attack, seed=args.seed, **params)
    inputs = strength_inputs(batch.x, res.x_adv, args.strengths, args.seed)
    rows = []
    for (cond, s), x in inputs.items():
        score = det.score(x).cpu()
        rows.append(pd.DataFrame({"image": batch.names, "condition": cond, "strength": s,
                                  "score": score.double().numpy(), "flagged": (score > det.threshold).numpy()}))
    label = Path(args.detector_file).name
    results = pd.concat(rows, ignore_index=True).assign(model=model.name, detector=label)
    table = detection_table(results)
    with out.writing() as tmp:
        write_parquet(results, tmp / "results.parquet")
        write_parquet(table, tmp / "summary.parquet")
        write_json({"detector": str(args.detector_file), "attack": args.attack, "params": params,
                    "attack_success": res.success_rate, "images": len(batch)}, tmp / "eval.json")
        at1 = results[results.strength.isin([0.0, 1.0])]
        roc_plot(tmp / "roc.png", at1, title=f"{label} on {model.name}: {args.attack} (1×) vs clean and noise")
    print(table.drop(columns=["model"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"attack success {res.success_rate:.1%} on {len(batch)} held-out images; wrote {args.out}")


def add_parsers(sub) -> None:
    """Register ``advlens detect`` and its three subcommands on the main parser's ``sub``."""
    from ..detect import DETECTORS

    p = sub.add_parser("detect", help="fit, apply and evaluate adversarial-input detectors (seeds 002, 004)")
    dsub = p.add_subparsers(dest="detect_command", required=True)

    def shared(sp: argparse.ArgumentParser, split: str | None, out: str | None) -> None:
        common(sp, out)
        data_args(sp)
        sp.set_defaults(model=None)
        sp.add_argument("--split", default=split, choices=["train", "test", "all"],
                        help=f"which part of the images (default: {split or 'all'}; the 80/20 split)")

    sp = dsub.add_parser("fit", help="fit a detector on clean images (the train split) and save it")
    shared(sp, "train", "advlens-detector.safetensors")
    sp.add_argument("--detector", default="behavior",
                    help=f"{', '.join(DETECTORS)}: behavior and noisecam (seed 002), ensemble (seed 004)")
    sp.add_argument("--param", action="append", metavar="KEY=VALUE",
                    help="detector parameter, e.g. --param copies=50 --param interpreters=grad,cam (repeatable)")
    sp.set_defaults(fn=_cmd_fit)

    sp = dsub.add_parser("score", help="score images with a saved detector (prints and optionally writes Parquet)")
    sp.add_argument("detector_file", help="a detector written by `advlens detect fit`")
    shared(sp, "all", None)
    sp.add_argument("--out", default=None, help="also write the scores to this Parquet file")
    overwrite_arg(sp)
    sp.set_defaults(fn=_cmd_score)

    sp = dsub.add_parser("eval", help="TPR / TNR / ROC-AUC of a saved detector against an attack and matched noise")
    sp.add_argument("detector_file", help="a detector written by `advlens detect fit`")
    shared(sp, "test", "advlens-detect-eval")
    eval_attack_args(sp)
    sp.add_argument("--strengths", type=positive_float, nargs="+", default=[0.25, 0.5, 1.0, 2.0, 4.0],
                    help="perturbation scales (seed 002: 0.25 … 4)")
    sp.add_argument("--param", action="append", metavar="KEY=VALUE", help="other attack parameters (repeatable)")
    sp.set_defaults(fn=_cmd_eval)
