"""``advlens defend train|eval``: robust training of the small models, and a defense under plain vs adaptive attack.

``train`` fine-tunes ``small_vgg_<data>`` with a recipe of :mod:`advlens.defend.recipes` (resumable with
``--checkpoint``) and writes safetensors weights that ``--model small_vgg_<data> --weights FILE`` loads.
``eval`` puts a model behind an input transform and prints its accuracy on the test split: clean, under
the attack made against the undefended model (transfer), against the defended model (plain), and
against its BPDA/EOT view (adaptive).
"""
from __future__ import annotations

import argparse

from ._args import (common, data_args, eval_attack_args, library_default, load_images_for, load_model_for,
                    natural_float, overwrite_arg, param_pairs, positive_float, positive_int)

__all__ = ["add_parsers"]


def _cmd_train(args: argparse.Namespace) -> None:
    from ..defend.recipes import TRAINING_RECIPES, retrain, save_model, training_data
    from .._io import check_output_file
    from ..models import load_model

    check_output_file(args.out, inputs=[args.weights, args.checkpoint], overwrite=args.overwrite)
    model = load_model(f"small_vgg_{args.data}", weights=args.weights, device=args.device)
    recipe, fixed = TRAINING_RECIPES[args.recipe]
    given = {"epochs": args.epochs, "seed": args.seed, "checkpoint": args.checkpoint, "progress": not args.quiet}
    if recipe is retrain:
        given.update(n_attack=args.n_attack, fgsm_form=args.fgsm_form if fixed["method"] == "fgsm" else None)
    else:
        given.update(eps=args.eps, steps=args.steps)
        if args.recipe == "robust":
            given.update(gamma=args.gamma, objective=args.objective)
    # flags left unset take the recipe's own defaults; --param overrides both
    kwargs = {**fixed, **{k: v for k, v in given.items() if v is not None}, **param_pairs(args.param)}
    trained, info = recipe(model, args.data, **kwargs)
    x_test, y_test = (t.to(model.device) for t in training_data(args.data, split="test"))
    acc = float((trained.predict(x_test) == y_test).float().mean())
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
    from ..defend.recipes import FGSM_FORMS, OBJECTIVES, ROBUST_GAMMA, TRAINING_RECIPES, adversarial_train
    from ..defend.transforms import TRANSFORMS
    from ..models.small_vgg import TRAINABLE_DATA

    p = sub.add_parser("defend", help="robust training and defenses under plain vs adaptive attacks (seeds 001, 004)")
    dsub = p.add_subparsers(dest="defend_command", required=True)

    sp = dsub.add_parser("train", help="adversarially retrain / train a small VGG (resumable) and save its weights")
    common(sp, None)
    sp.add_argument("--data", required=True, choices=TRAINABLE_DATA, help="the small model's data set")
    sp.add_argument("--recipe", default="retrain-fgsm", choices=list(TRAINING_RECIPES),
                    help="retrain-fgsm / retrain-onepixel (seed 001 'immune' models: retrain on the successful "
                         "adversarial training images), pgd_at (PGD adversarial training), robust (seed 004 "
                         "interpretation-robust training); default retrain-fgsm")
    sp.add_argument("--weights", default=None, help="start from these weights (default: the cached trained model)")
    sp.add_argument("--epochs", type=positive_int, default=None,
                    help=f"fine-tuning epochs (default {library_default(adversarial_train, 'epochs')})")
    sp.add_argument("--n-attack", type=positive_int, default=None, help="retrain: attack only the first N training images")
    sp.add_argument("--eps", type=positive_float, default=None,
                    help=f"pgd_at/robust: PGD L-inf budget (default {library_default(adversarial_train, 'eps')})")
    sp.add_argument("--steps", type=positive_int, default=None,
                    help=f"pgd_at/robust: PGD steps per batch (default {library_default(adversarial_train, 'steps')})")
    sp.add_argument("--gamma", type=natural_float, default=None,
                    help=f"robust: weight of the interpretation difference (default {ROBUST_GAMMA})")
    sp.add_argument("--objective", default=None, choices=OBJECTIVES,
                    help="robust: 'paper' = CE on the clean image + gamma x worst-case interpretation difference "
                         "(PGD maximizing it, seed 004 Sec. VI-B; default); 'pgd_ce' = CE and difference at the "
                         "PGD cross-entropy example")
    sp.add_argument("--fgsm-form", default=None, choices=list(FGSM_FORMS),
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
    eval_attack_args(sp)
    sp.add_argument("--eot", type=positive_int, default=8, help="EOT draws against random transforms (default 8)")
    sp.add_argument("--param", action="append", metavar="KEY=VALUE", help="other attack parameters (repeatable)")
    sp.set_defaults(fn=_cmd_eval)
