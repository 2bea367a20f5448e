"""``advlens`` command line. Exit code 0 on success, 2 on bad input (one line on stderr)."""
from __future__ import annotations

import argparse
import logging
import sys
import warnings

from ._checks import AdvlensError

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``advlens attack: error: argument --limit: ...`` and exit code 2
    (the usage block is left to ``--help``). Subcommand parsers inherit the class."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {_printable(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _int_at_least(minimum: int):
    """argparse type: an int >= ``minimum`` (``--limit 0``: "must be an integer >= 1, got '0'")."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    return parse


def _float_above(minimum: float, strict: bool):
    """argparse type: a finite float > ``minimum`` (``strict``) or >= it."""
    import math

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"must be a number {'>' if strict else '>='} {minimum:g}, got {text!r}")
        return value

    return parse


positive_int, natural_int = _int_at_least(1), _int_at_least(0)
positive_float, natural_float = _float_above(0.0, strict=True), _float_above(0.0, strict=False)


def overwrite_arg(sp: argparse.ArgumentParser) -> None:
    """``--overwrite``: the user's consent to write beside / replace (see :class:`advlens._io.OutputDir`)."""
    sp.add_argument("--overwrite", action="store_true",
                    help="write into a non-empty --out folder beside its files (never replacing a file advlens did "
                    "not write), or replace an existing --out file")


def _layers(value: str) -> str | list[str]:
    return "all" if value == "all" else [v for v in value.split(",") if v]


def _cmd_models(args: argparse.Namespace) -> None:
    from .models import list_models

    for name in list_models(args.pattern):
        print(name)


def _cmd_demo(args: argparse.Namespace) -> None:
    from .studies.demo import DemoConfig, run_demo

    cfg = DemoConfig(images=args.images, limit=args.limit, seed=args.seed, device=args.device, model=args.model)
    out = run_demo(cfg, args.out, progress=not args.quiet, overwrite=args.overwrite)
    print(f"wrote {out}/report.html, {out}/results.parquet, {out}/figures/")


def _load(args: argparse.Namespace):
    from .data import load_images
    from .models import load_model

    model = load_model(args.model, weights=args.weights, device=args.device)
    model.set_precision(args.precision, channels_last=args.channels_last)
    if getattr(args, "compile", None) not in (None, "off"):
        model.set_compile(args.compile)
    batch = load_images(args.images, size=model.input_size, n=args.limit, seed=args.seed)
    if args.limit is not None:
        batch = batch[: args.limit]
    return model, batch.to(model.device)


def output_dir(args: argparse.Namespace, command: str, *inputs: object):
    """The command's ``--out`` folder, checked before any work (:class:`advlens._io.OutputDir`)."""
    from ._io import OutputDir

    return OutputDir(args.out, command, inputs=inputs, overwrite=args.overwrite)


def _cmd_explain(args: argparse.Namespace) -> None:
    import json

    from safetensors.torch import save

    from ._io import atomic_write, unique_file_names
    from .explain import explain
    from .report import map_grid

    out = output_dir(args, "explain", args.images, args.weights)
    model, batch = _load(args)
    maps = explain(model, batch.x, args.method, layers=_layers(args.layers), batch_size=args.batch_size, seed=args.seed)
    files = unique_file_names(batch.names)
    with out.writing() as tmp:
        tensors = {k: v.detach().cpu().contiguous() for k, v in maps.items()}
        tensors["images"] = batch.x.cpu().contiguous()
        meta = {"images": json.dumps(list(batch.names)), "method": args.method, "model": model.name}
        atomic_write(tmp / "maps.safetensors", lambda f: f.write(save(tensors, metadata=meta)))
        shown = list(maps)[:: max(1, len(maps) // 6)][:6]
        for i in range(min(len(batch), 4)):
            map_grid(tmp / f"{files[i]}.png", {"image": batch.x},
                     {"image": maps}, shown, index=i, title=f"{args.method} on {model.name}")
    print(f"wrote {len(maps)} layer maps for {len(batch)} images to {args.out}/maps.safetensors")


_INTERPRETATION_ATTACKS = ("adv2", "advedge", "advedge+")


def _parse_value(text: str) -> object:
    if "," in text:  # a list, e.g. interpreters=grad,cam
        return [_parse_value(t.strip()) for t in text.split(",") if t.strip()]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _attack_params(args: argparse.Namespace) -> dict[str, object]:
    """What --eps/--steps/--alpha mean for each attack, plus --param KEY=VALUE pairs."""
    m, steps = args.method, args.steps
    pgd_like = {"eps": args.eps, "steps": steps, "alpha": args.alpha or args.eps / 4}
    params: dict[str, object] = {
        "fgsm": {"eps": args.eps},
        "ifgsm": {"max_eps": args.eps, "eps_step": min(1 / 255, args.eps)},
        "pgd": pgd_like,
        "dlfuzz": {"iterations": steps},
        "onepixel": {"iterations": steps},
        "cw": {"steps": steps},
        "stadv": {"steps": steps},
    }.get(m, {})
    if m in _INTERPRETATION_ATTACKS:
        params = {"steps": steps, "base": args.base, "interpreter": args.interpreter}
        if args.base == "pgd":
            params.update(eps=args.eps, alpha=args.alpha or 1 / 255)
    params.update(_param_pairs(args.param))
    return params


def _param_pairs(items: list[str] | None) -> dict[str, object]:
    """``--param KEY=VALUE`` pairs as a dict (numbers, true/false and comma lists parsed)."""
    params: dict[str, object] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise AdvlensError(f"--param takes KEY=VALUE, got {item!r}")
        params[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return params


def _target(args: argparse.Namespace, model, batch):
    """None (untargeted), one class for all images, or seed 004's random y_t = (y + randint(1, C)) mod C."""
    import torch

    if args.target is None:
        return None
    if args.target != "random":
        try:
            return int(args.target)
        except ValueError:
            raise AdvlensError(f"--target must be a class index or 'random', got {args.target!r}") from None
    with torch.no_grad():
        y = batch.y if (args.use_labels and batch.y is not None) else model.predict(batch.x)
    gen = torch.Generator().manual_seed(args.seed)
    c = len(model.labels)
    return ((y.cpu() + torch.randint(1, c, (len(y),), generator=gen)) % c).to(batch.x.device)


def _cmd_attack(args: argparse.Namespace) -> None:
    import pandas as pd

    from . import metrics
    from ._io import unique_file_names, write_parquet
    from .attacks import attack
    from .data import save_images

    out = output_dir(args, "attack", args.images, args.weights)
    model, batch = _load(args)
    res = attack(model, batch.x, batch.y if args.use_labels else None, method=args.method, seed=args.seed,
                 target=_target(args, model, batch), chunk_size=args.chunk_size, **_attack_params(args))
    files = [f"{n}_adv" for n in unique_file_names(batch.names)]
    rows = pd.DataFrame({
        "image": batch.names, "file": [f"images/{f}.png" for f in files], "label": [model.labels[int(i)] for i in res.y],
        "adv_pred": [model.labels[int(i)] for i in res.pred], "success": res.success.cpu().numpy(),
        "confidence": res.confidence.cpu().numpy(), "psnr": metrics.psnr(batch.x, res.x_adv).cpu().numpy(),
    })
    if "eps" in res.extras:  # ifgsm: the smallest eps that flipped each image
        rows["min_eps"] = res.extras["eps"].cpu().numpy()
    with out.writing() as tmp:
        save_images(res.x_adv, files, tmp / "images")
        write_parquet(rows, tmp / "results.parquet")
    print(rows.to_string(index=False))
    print(f"success rate {res.success_rate:.1%} in {res.time_s:.1f} s; wrote {args.out}")


def _cmd_study(args: argparse.Namespace) -> None:
    from .studies.runner import run_study
    from .studies.spec import load_spec

    if args.spec is None and args.preset is None:
        raise AdvlensError("give a spec file (advlens study SPEC.toml) or --preset NAME (seed000, seed001, seed002, seed003, seed004, defenses)")
    spec = load_spec(args.spec, args.preset, limit=args.limit, seed=args.seed, device=args.device,
                     batch_size=args.batch_size, precision=args.precision, channels_last=args.channels_last,
                     compile=args.compile)
    path = run_study(spec, args.out, progress=not args.quiet, backend=args.backend)
    print(f"wrote {path} and {args.out}/results.parquet")


def _cmd_report(args: argparse.Namespace) -> None:
    from .studies.runner import report_folder

    print(f"wrote {report_folder(args.dir)}")


def _cmd_train(args: argparse.Namespace) -> None:
    from ._io import check_output_file
    from .models.small_vgg import train_small_vgg

    if args.out is not None:
        check_output_file(args.out, overwrite=args.overwrite)

    _, info = train_small_vgg(args.data, seed=args.seed, epochs=args.epochs, out=args.out, progress=not args.quiet)
    print(f"small_vgg_{args.data}: test accuracy {info['test_accuracy']:.2%} "
          f"(train {info['train_accuracy']:.2%}, {info['epochs']} epochs, {info['seconds']} s) -> {info['path']}")


def _batch_size(text: str) -> int | str:
    """``--batch-size``: a positive integer or ``auto``."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="advlens", description="Adversarial attacks on image classifiers, seen through their explanations.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, out: str | None) -> None:
        sp.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
        sp.add_argument("--seed", type=natural_int, default=0, help="random seed (default: 0)")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")
        if out is not None:
            sp.add_argument("--out", default=out, help=f"output (default: {out}); never replaces what advlens did not write")
            overwrite_arg(sp)

    def speed_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--precision", default=None if sp.prog.endswith("study") else "fp32", choices=["fp32", "bf16"],
                        help="run the network in bf16 autocast (faster on recent GPUs; maps and decisions agree "
                        "with fp32 within the README's tolerances)")
        sp.add_argument("--channels-last", action="store_true", default=None if sp.prog.endswith("study") else False,
                        help="channels_last memory format (faster convolutions on GPUs)")
        if not sp.prog.endswith("explain"):  # explanations hook the network: they always run eagerly
            from .models.wrapper import COMPILE_MODES

            sp.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                            choices=["off", *COMPILE_MODES],
                            help="torch.compile the network for the attacks' forwards (MODE: default, "
                            "reduce-overhead, max-autotune); pays on GPUs, compiling takes a while")

    def data_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", default="efficientnet_lite0", help="model name (see `advlens models`)")
        sp.add_argument("--weights", default=None, help="state dict file (.pth/.safetensors) for the model")
        sp.add_argument("--images", default="samples", help="samples, digits, lfw, shapes, a folder or a file")
        sp.add_argument("--limit", type=positive_int, default=None, help="use at most N images")

    sp = sub.add_parser("models", help="list the registered models")
    sp.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. 'small_*'")
    sp.set_defaults(fn=_cmd_models)

    sp = sub.add_parser("demo", help="FGSM/PGD + Grad-CAM at every layer on bundled photos, with a report")
    common(sp, "advlens-demo")
    sp.add_argument("--model", default="efficientnet_lite0", help="model name (default: efficientnet_lite0)")
    sp.add_argument("--images", default="samples", help="image source (default: samples)")
    sp.add_argument("--limit", type=positive_int, default=None, help="use at most N images")
    sp.set_defaults(fn=_cmd_demo)

    sp = sub.add_parser("explain", help="explanation maps at every requested layer (one pass)")
    common(sp, "advlens-explain")
    speed_args(sp)
    data_args(sp)
    sp.add_argument("--method", default="gradcam", help="gradcam, gradcam++, layercam, noisecam, cam, saliency, smoothgrad, grad, lrp, mask, rts")
    sp.add_argument("--layers", default="all", help="'all' or comma-separated layer names")
    sp.add_argument("--batch-size", type=_batch_size, default=16,
                    help="images per forward/backward, or 'auto' (largest that fits free memory; default 16)")
    sp.set_defaults(fn=_cmd_explain)

    sp = sub.add_parser("attack", help="attack a model and save the adversarial images")
    common(sp, "advlens-attack")
    speed_args(sp)
    data_args(sp)
    sp.add_argument("--method", default="pgd",
                    help="fgsm, ifgsm, pgd, dlfuzz, cw, stadv, onepixel, adv2, advedge, advedge+")
    sp.add_argument("--eps", type=positive_float, default=8 / 255,
                    help="L-inf budget in [0,1] units (default 8/255); for ifgsm the largest eps tried")
    sp.add_argument("--steps", type=positive_int, default=10,
                    help="iterations: PGD, C&W, StAdv, ADV²/AdvEdge steps; DLFuzz iterations; one-pixel generations")
    sp.add_argument("--alpha", type=positive_float, default=None, help="PGD step (default eps/4; 1/255 for adv2/advedge)")
    sp.add_argument("--target", default=None, help="targeted attack: a class index, or 'random' (seed 004's y_t)")
    sp.add_argument("--interpreter", default="cam", help="adv2/advedge/advedge+: grad, cam, gradcam, layercam, mask, rts")
    sp.add_argument("--base", default="pgd", help="adv2/advedge/advedge+: base framework pgd, cw or stadv")
    sp.add_argument("--param", action="append", metavar="KEY=VALUE",
                    help="any other attack parameter, e.g. --param pixels=3 --param lam=20 (repeatable)")
    sp.add_argument("--use-labels", action="store_true", help="attack the data set's labels, not the predictions")
    sp.add_argument("--chunk-size", type=_batch_size, default=None,
                    help="attack at most N images at once, or 'auto' (fits free memory); default: all at once")
    sp.set_defaults(fn=_cmd_attack)

    sp = sub.add_parser("study", help="run or resume a study (a TOML spec or a preset) into --out")
    sp.add_argument("spec", nargs="?", default=None, help="study spec (TOML)")
    sp.add_argument("--preset", default=None, help="seed000 (layer shift, DLFuzz), seed001 (LRP signatures, FGSM + "
                    "one-pixel), seed002 (detectors vs strength), seed003 (MOD/VID, FGSM) or seed004 (ADV²/AdvEdge vs "
                    "interpreters) or defenses (transforms and robust training under plain and adaptive attacks)")
    sp.add_argument("--backend", default="local", choices=["local", "ray"],
                    help="local (default) or ray: chunks run as Ray tasks on $RAY_ADDRESS or a local Ray cluster")
    sp.add_argument("--device", default=None, help="torch device (default: the spec's, cpu)")
    sp.add_argument("--seed", type=natural_int, default=None, help="random seed (default: the spec's, 0)")
    sp.add_argument("--limit", type=positive_int, default=None, help="at most N images per data set")
    sp.add_argument("--batch-size", type=_batch_size, default=None,
                    help="images per resumable chunk, or 'auto' (fits the device's free memory; fixed at the first run)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    speed_args(sp)
    sp.add_argument("--out", default="advlens-study", help="output folder (default: advlens-study)")
    sp.set_defaults(fn=_cmd_study)

    from .cli_detect import add_parser as add_detect_parser

    add_detect_parser(sub, common, data_args)
    from .cli_defend import add_parser as add_defend_parser

    add_defend_parser(sub, common, data_args)

    sp = sub.add_parser("report", help="rebuild figures and report.html of a study folder from its results")
    sp.add_argument("dir", help="a study output folder")
    sp.set_defaults(fn=_cmd_report)

    sp = sub.add_parser("train", help="train a small VGG on digits, lfw or shapes (cached)")
    common(sp, None)
    sp.add_argument("--data", required=True, help="digits, lfw or shapes")
    sp.add_argument("--epochs", type=positive_int, default=None, help="training epochs (default: the data set's)")
    sp.add_argument("--out", default=None, help="weights file (default: the advlens cache)")
    overwrite_arg(sp)
    sp.set_defaults(fn=_cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``advlens`` command."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a one-line usage error (2): a code, like every other outcome
        return e.code if isinstance(e.code, int) else 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    warnings.formatwarning = lambda message, category, *rest, **kw: f"advlens: warning: {_printable(str(message))}\n"
    try:
        args.fn(args)
    except AdvlensError as e:
        print(f"advlens: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("advlens: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug or the environment (disk full, out of memory): one line, -v shows the traceback
        if args.verbose:
            raise
        kind = "out of memory" if "OutOfMemory" in type(e).__name__ else (
            "system error" if isinstance(e, OSError) else "internal error (please report it)")
        print(f"advlens: {kind}: {type(e).__name__}: {_one_line(e)} (run with -v for the traceback)", file=sys.stderr)
        return 1
    return 0


def _printable(text: str) -> str:
    """``text`` with control characters (newlines, ``\x1e``… that a terminal would break lines on) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _one_line(e: BaseException) -> str:
    text = _printable(" ".join(str(e).split()))  # newlines and other separators become single spaces
    return text if len(text) <= 400 else text[:397] + "..."


if __name__ == "__main__":
    sys.exit(main())
