"""``advlens attack``: attack a model and save the adversarial images with a results table."""
from __future__ import annotations

import argparse

from .._checks import AdvlensError
from ._args import (batch_size_arg, common, data_args, library_default, load_model_with_speed, output_dir, param_pairs,
                    positive_float, positive_int, speed_args, stream_images_for)

__all__ = ["add_parsers", "attack_params"]


def attack_params(args: argparse.Namespace) -> dict[str, object]:
    """What ``--eps/--steps/--alpha`` mean for each attack (:func:`advlens.attacks.budget_params`), plus
    ``--param KEY=VALUE`` pairs. Unset flags are None: the attack's own default (e.g. PGD's ``alpha = eps / 4``)."""
    from ..attacks import budget_params

    params = budget_params(args.method, args.eps, args.steps, args.alpha, args.base, args.interpreter)
    params.update(param_pairs(args.param))
    return params


def _target(args: argparse.Namespace, model, batch):
    """None (untargeted), one class for all images, or seed 004's random y_t = (y + randint(1, C)) mod C
    (each image's draw from its own generator: the same in any chunk)."""
    from .._rng import random_other_class

    if args.target is None:
        return None
    if args.target != "random":
        try:
            return int(args.target)
        except ValueError:
            raise AdvlensError(f"--target must be a class index or 'random', got {args.target!r}") from None
    y = batch.y if (args.use_labels and batch.y is not None) else model.predict(batch.x)
    return random_other_class(batch.x, y.to(batch.x.device), len(model.labels), args.seed)


def _attack_chunk(args: argparse.Namespace, model, batch, taken: set[str], folder):
    """Attack one chunk, save its adversarial images into ``folder``; its rows, seconds and the attack's
    parameters (its defaults resolved)."""
    import pandas as pd

    from .. import metrics
    from .._io import unique_file_names
    from ..attacks import attack
    from ..data import save_images

    res = attack(model, batch.x, batch.y if args.use_labels else None, method=args.method, seed=args.seed,
                 target=_target(args, model, batch), chunk_size=args.chunk_size, **attack_params(args))
    files = [f"{n}_adv" for n in unique_file_names(batch.names, taken)]
    rows = pd.DataFrame({
        "image": batch.names, "file": [f"images/{f}.png" for f in files], "label": [model.labels[int(i)] for i in res.y],
        "adv_pred": [model.labels[int(i)] for i in res.pred], "success": res.success.cpu().numpy(),
        "confidence": res.confidence.cpu().numpy(), "psnr": metrics.psnr(batch.x, res.x_adv).cpu().numpy(),
    })
    if "eps" in res.extras:  # ifgsm: the smallest eps that flipped each image
        rows["min_eps"] = res.extras["eps"].cpu().numpy()
    save_images(res.x_adv, files, folder)
    return rows, res.time_s, res.params


def _cmd_attack(args: argparse.Namespace) -> None:
    import pandas as pd
    from tqdm.auto import tqdm

    from .._io import write_json, write_parquet

    out = output_dir(args, "attack", args.images, args.weights)
    model = load_model_with_speed(args)
    count, chunks = stream_images_for(args, model)  # a large folder is read one chunk at a time
    frames, seconds, taken, params = [], 0.0, set(), {}
    with out.writing() as tmp, tqdm(total=count, unit="img", disable=True if args.quiet else None) as bar:
        for batch in chunks:
            rows, time_s, params = _attack_chunk(args, model, batch.to(model.device), taken, tmp / "images")
            frames.append(rows)
            seconds += time_s
            bar.update(len(rows))
        if not frames:
            raise AdvlensError(f"no readable image in --images {args.images}")
        rows = pd.concat(frames, ignore_index=True)
        write_parquet(rows, tmp / "results.parquet")
        # what ran, defaults resolved by the attack itself (unset flags are the attack's own defaults)
        plain = {k: v for k, v in params.items() if isinstance(v, (bool, int, float, str, type(None)))}
        write_json({"model": model.name, "images": str(args.images), "count": len(rows), "seed": args.seed,
                    "target": args.target, "use_labels": args.use_labels, "params": plain}, tmp / "attack.json")
    if len(rows) <= 50:
        print(rows.to_string(index=False))
    print(f"success rate {rows.success.mean():.1%} of {len(rows)} images in {seconds:.1f} s; wrote {args.out}")


def add_parsers(sub) -> None:
    """Register ``attack``."""
    from ..attacks import list_attacks
    from ..attacks.pgd import pgd

    sp = sub.add_parser("attack", help="attack a model and save the adversarial images")
    common(sp, "advlens-attack")
    speed_args(sp)
    data_args(sp)
    sp.add_argument("--method", default="pgd", help=f"attack: {', '.join(list_attacks())} (default pgd)")
    sp.add_argument("--eps", type=positive_float, default=None,
                    help="L-inf budget in [0,1] units; for ifgsm the largest eps tried (default: the attack's own, "
                         f"{library_default(pgd, 'eps'):.4g} = 8/255 for pgd and fgsm)")
    sp.add_argument("--steps", type=positive_int, default=None,
                    help="iterations: PGD, C&W, StAdv, ADV²/AdvEdge steps; DLFuzz iterations; one-pixel generations "
                         f"(default: the attack's own, {library_default(pgd, 'steps')} for pgd)")
    sp.add_argument("--alpha", type=positive_float, default=None,
                    help="PGD step (default: the attack's, eps/4 for pgd and 1/255 for adv2/advedge)")
    sp.add_argument("--target", default=None, help="targeted attack: a class index, or 'random' (seed 004's y_t)")
    sp.add_argument("--interpreter", default="cam", help="adv2/advedge/advedge+: grad, cam, gradcam, layercam, mask, rts")
    sp.add_argument("--base", default="pgd", help="adv2/advedge/advedge+: base framework pgd, cw or stadv")
    sp.add_argument("--param", action="append", metavar="KEY=VALUE",
                    help="any other attack parameter, e.g. --param pixels=3 --param lam=20 (repeatable)")
    sp.add_argument("--use-labels", action="store_true", help="attack the data set's labels, not the predictions")
    sp.add_argument("--chunk-size", type=batch_size_arg, default=None,
                    help="attack at most N images at once, or 'auto' (fits free memory); default: all at once")
    sp.set_defaults(fn=_cmd_attack)
