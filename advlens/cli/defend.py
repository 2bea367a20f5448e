"""``advlens defend train|eval``: robust training of the small models, and a defense under plain vs adaptive attack.

``train`` fine-tunes ``small_vgg_<data>`` with a recipe of :mod:`advlens.defend.recipes` (resumable with
``--checkpoint``) and writes safetensors weights that ``--model small_vgg_<data> --weights FILE`` loads.
``eval`` puts a model behind an input transform and prints its accuracy on the test split: clean, under
the attack made against the undefended model (transfer), against the defended model (plain), and
against its BPDA/EOT view (adaptive).
"""
from __future__ import annotations

import argparse

from ._args import (common, data_args, load_images_for, load_model_for, natural_float, overwrite_arg, param_pairs, positive_float,
                    positive_int)

__all__ = ["add_parsers"]

RECIPES = ("retrain-fgsm", "retrain-onepixel", "pgd_at", "robust")


def _cmd_train(args: argparse.Namespace) -> None:
    from ..data import load_images
    from ..defend.recipes import adversarial_train, retrain, save_model
    from .._io import check_output_file
    from ..models import load_model

    check_output_file(args.out, inputs=[args.weights, args.checkpoint], overwrite=args.overwrite)
    model = load_model(f"small_vgg_{args.data}", weights=args.weights, device=args.device)
    common = dict(epochs=args.epochs, seed=args.seed, checkpoint=args.checkpoint, progress=not args.quiet)
    extra = param_pairs(args.param)
    if args.recipe.startswith("retrain-"):
        method = args.recipe.split("-", 1)[1]
        if method == "fgsm":
            extra.setdefault("fgsm_form", args.fgsm_form)
        trained, info = retrain(model, args.data, method, n_attack=args.n_attack, **common, **extra)
    else:
        robust = args.recipe == "robust"
        extra.setdefault("objective", args.objective if robust else "pgd_ce")
        trained, info = adversarial_train(model, args.data, eps=args.eps, steps=args.steps,
                                          gamma=args.gamma if robust else 0.0, **common, **extra)
    test = load_images(args.data, n=2500 if args.data == "shapes" else None, split="test").to(model.device)
    acc = float((trained.predict(test.x) == test.y).float().mean())
    path = save_model(trained, args.out, {**info, "test_accuracy": acc})
    print(f"{trained.name}: test accuracy {acc:.2%} after {info['epochs']} epochs ({info['seconds']} s"
          f"{', resumed at epoch ' + str(info['resumed_from']) if info['resumed_from'] else ''}) -> {path}")


def _cmd_eval(args: argparse.Namespace) -> None:
    from ..attacks import attack, budget_params
    from ..defend import wrap

    model = load_model_for(args)
    defended = wrap(model, args.defense, seed=args.seed, **param_pairs(args.defense_param, "--defense-param"))
    batch = load_images_for(args, model, "test")
    x, y = batch.x, batch.y
    if y is None:
        y = model.predict(x)
    params = budget_params(args.attack, args.eps, args.steps, args.alpha)  # unset: the attack's own default
    params.update(param_pairs(args.param, "--param"))
    views = {"transfer": model, "plain": defended, "adaptive": defended.adaptive(args.eot)}

    def acc(m, xs) -> float:
        return float((m.predict(xs) == y).float().mean())

    print(f"{defended.name} on {len(x)} test images of {args.images}; undefended clean accuracy {acc(model, x):.2%}")
    print(f"  clean: {acc(defended, x):.2%}")
    for mode, view in views.items():
        x_adv = attack(view, x, y, args.attack, seed=args.seed, **params).x_adv
        print(f"  {args.attack} {mode:>8}: {acc(defended, x_adv):.2%}")


def add_parsers(sub) -> None:
    """Register ``advlens defend train|eval`` on the main parser's ``sub``."""
    from ..defend.transforms import TRANSFORMS

    p = sub.add_parser("defend", help="robust training and defenses under plain vs adaptive attacks (seeds 001, 004)")
    dsub = p.add_subparsers(dest="defend_command", required=True)

    sp = dsub.add_parser("train", help="adversarially retrain / train a small VGG (resumable) and save its weights")
    common(sp, None)
    sp.add_argument("--data", required=True, choices=["digits", "lfw", "shapes"], help="the small model's data set")
    sp.add_argument("--recipe", default="retrain-fgsm", choices=RECIPES,
                    help="retrain-fgsm / retrain-onepixel (seed 001 'immune' models: retrain on the successful "
                         "adversarial training images), pgd_at (PGD adversarial training), robust (seed 004 "
                         "interpretation-robust training); default retrain-fgsm")
    sp.add_argument("--weights", default=None, help="start from these weights (default: the cached trained model)")
    sp.add_argument("--epochs", type=positive_int, default=5, help="fine-tuning epochs (default 5)")
    sp.add_argument("--n-attack", type=positive_int, default=None, help="retrain: attack only the first N training images")
    sp.add_argument("--eps", type=positive_float, default=0.031, help="pgd_at/robust: PGD L-inf budget (default 0.031)")
    sp.add_argument("--steps", type=positive_int, default=7, help="pgd_at/robust: PGD steps per batch (default 7)")
    sp.add_argument("--gamma", type=natural_float, default=2.0, help="robust: weight of the interpretation difference (2)")
    sp.add_argument("--objective", default="paper", choices=["paper", "pgd_ce"],
                    help="robust: 'paper' = CE on the clean image + gamma x worst-case interpretation difference "
                         "(PGD maximizing it, seed 004 Sec. VI-B; default); 'pgd_ce' = CE and difference at the "
                         "PGD cross-entropy example")
    sp.add_argument("--fgsm-form", default="iterative", choices=["iterative", "single"],
                    help="retrain-fgsm: 'iterative' = seed 001's FGSM with the minimal flipping eps per image "
                         "(steps of 1/255 up to 32/255; default); 'single' = one FGSM step at eps 0.1")
    sp.add_argument("--param", action="append", metavar="KEY=VALUE",
                    help="other recipe parameters, e.g. --param lr=0.001 --param eps=0.05 (repeatable)")
    sp.add_argument("--checkpoint", default=None, help="checkpoint file written every epoch and resumed from")
    sp.add_argument("--out", required=True, help="weights file to write (.safetensors)")
    overwrite_arg(sp)
    sp.set_defaults(fn=_cmd_train)

    sp = dsub.add_parser("eval", help="accuracy of a model behind an input transform: clean, transfer, plain, adaptive")
    common(sp, None)
    data_args(sp)
    sp.add_argument("--defense", required=True, help=f"input transform: {', '.join(TRANSFORMS)}")
    sp.add_argument("--defense-param", action="append", metavar="KEY=VALUE",
                    help="transform parameter, e.g. k=3, bits=3, sigma=1, quality=75 (repeatable)")
    sp.add_argument("--attack", default="pgd", help="attack method (default pgd)")
    sp.add_argument("--eps", type=positive_float, default=0.031, help="L-inf budget of fgsm/pgd (default 0.031)")
    sp.add_argument("--steps", type=positive_int, default=20, help="PGD steps (default 20)")
    sp.add_argument("--alpha", type=positive_float, default=None, help="PGD step (default: the attack's, eps/4)")
    sp.add_argument("--eot", type=positive_int, default=8, help="EOT draws against random transforms (default 8)")
    sp.add_argument("--param", action="append", metavar="KEY=VALUE", help="other attack parameters (repeatable)")
    sp.set_defaults(fn=_cmd_eval)
