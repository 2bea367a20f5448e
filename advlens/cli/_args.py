"""Argument helpers every ``advlens`` command shares: one-line parse errors, typed numbers, the common
flags (device, seed, output folder, model and images), ``--param KEY=VALUE`` pairs and loading.

Defaults of the science (attack steps, detector settings, …) are the library's: a flag left unset is
passed as ``None``, which the library reads as "its own default".
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

from .._checks import AdvlensError

__all__ = ["Parser", "library_default", "positive_int", "natural_int", "positive_float", "natural_float", "batch_size_arg", "layers_arg",
           "overwrite_arg", "eval_attack_args", "common", "speed_args", "data_args", "model_args", "model_options", "param_pairs", "output_dir",
           "load_model_for", "load_model_with_speed", "stream_images_for", "load_model_and_images", "load_images_for", "printable", "one_line"]


def printable(text: str) -> str:
    """``text`` with control characters (newlines, ``\\x1e``… that a terminal would break lines on) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def one_line(e: BaseException) -> str:
    """An exception's message on one printable line of at most 400 characters."""
    text = printable(" ".join(str(e).split()))  # newlines and other separators become single spaces
    return text if len(text) <= 400 else text[:397] + "..."


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``advlens attack: error: argument --limit: ...`` and exit code 2
    (the usage block is left to ``--help``). Subcommand parsers inherit the class."""

    def error(self, message: str):  # type: ignore[override]
        print(f"{self.prog}: error: {printable(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an int >= ``minimum`` (``--limit 0``: "must be an integer >= 1, got '0'")."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    parse.__doc__ = f"argparse type: an integer >= {minimum}, else one line naming the flag."
    return parse


def _float_above(minimum: float, strict: bool) -> Callable[[str], float]:
    """argparse type: a finite float > ``minimum`` (``strict``) or >= it."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not math.isfinite(value) or value < minimum or (strict and value == minimum):
            raise argparse.ArgumentTypeError(f"must be a number {'>' if strict else '>='} {minimum:g}, got {text!r}")
        return value

    bound = f"{'>' if strict else '>='} {minimum:g}"
    parse.__doc__ = f"argparse type: a finite number {bound}, else one line naming the flag."
    return parse


positive_int, natural_int = _int_at_least(1), _int_at_least(0)
positive_float, natural_float = _float_above(0.0, strict=True), _float_above(0.0, strict=False)


def batch_size_arg(text: str) -> int | str:
    """``--batch-size`` / ``--chunk-size``: a positive integer or ``auto``."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {text!r}")
    return value


def layers_arg(value: str) -> str | list[str]:
    """``--layers``: ``all`` or comma-separated layer names."""
    return "all" if value == "all" else [v for v in value.split(",") if v]


def overwrite_arg(sp: argparse.ArgumentParser) -> None:
    """``--overwrite``: the user's consent to write beside / replace (see :class:`advlens._io.OutputDir`)."""
    sp.add_argument("--overwrite", action="store_true",
                    help="write into a non-empty --out folder beside its files (never replacing a file advlens did "
                    "not write), or replace an existing --out file")


def library_default(fn: object, name: str) -> object:
    """The default of ``fn``'s parameter ``name``: help texts quote the library's defaults, never keep their own."""
    import inspect

    return inspect.signature(fn).parameters[name].default


def eval_attack_args(sp: argparse.ArgumentParser) -> None:
    """``--attack/--eps/--steps/--alpha`` of the evaluation commands (``detect eval``, ``defend eval``): by
    default the evaluations' PGD (:data:`advlens.attacks.pgd.EVAL_PGD`) with the attack's own step."""
    from ..attacks.pgd import EVAL_PGD

    sp.add_argument("--attack", default="pgd", help="attack method (default pgd)")
    sp.add_argument("--eps", type=positive_float, default=EVAL_PGD["eps"],
                    help=f"L-inf budget of fgsm/pgd (default {EVAL_PGD['eps']}, the evaluations' PGD)")
    sp.add_argument("--steps", type=positive_int, default=EVAL_PGD["steps"],
                    help=f"PGD steps (default {EVAL_PGD['steps']})")
    sp.add_argument("--alpha", type=positive_float, default=None,
                    help="PGD step (default: the attack's, eps/4; the presets use eps/8)")


def common(sp: argparse.ArgumentParser, out: str | None) -> None:
    """``--device``, ``--seed``, ``--quiet`` and, with a default ``out``, ``--out`` + ``--overwrite``."""
    sp.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    sp.add_argument("--seed", type=natural_int, default=0, help="random seed (default: 0)")
    sp.add_argument("--quiet", action="store_true", help="no progress bars")
    if out is not None:
        sp.add_argument("--out", default=out, help=f"output (default: {out}); never replaces what advlens did not write")
        overwrite_arg(sp)


def speed_args(sp: argparse.ArgumentParser, unset: bool = False, compile: bool = True) -> None:
    """``--precision``, ``--channels-last`` and (``compile``) ``--compile``; ``unset``: defaults None
    (a study spec's own values apply)."""
    sp.add_argument("--precision", default=None if unset else "fp32", choices=["fp32", "bf16"],
                    help="run the network in bf16 autocast (faster on recent GPUs; maps and decisions agree "
                    "with fp32 within the documented tolerances)")
    sp.add_argument("--channels-last", action="store_true", default=None if unset else False,
                    help="channels_last memory format (faster convolutions on GPUs)")
    if compile:  # explanations hook the network: they always run eagerly
        from ..models.wrapper import COMPILE_MODES

        sp.add_argument("--compile", nargs="?", const="default", default=None, metavar="MODE",
                        choices=["off", *COMPILE_MODES],
                        help="torch.compile the network for the attacks' forwards (MODE: default, "
                        "reduce-overhead, max-autotune); pays on GPUs, compiling takes a while")


def _floats3(text: str) -> tuple[float, float, float]:
    """``--mean``/``--std``: three comma-separated numbers (R,G,B)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"must be three comma-separated numbers R,G,B, got {text!r}")
    return values  # type: ignore[return-value]


def _input_size(text: str) -> int | tuple[int, int]:
    """``--input-size``: ``224`` or ``HxW`` (e.g. ``240x320``)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values, default=0) < 8:
        raise argparse.ArgumentTypeError(f"must be an integer >= 8 or HxW such as 240x320, got {text!r}")
    return values[0] if len(values) == 1 else (values[0], values[1])


def model_args(sp: argparse.ArgumentParser, default: str | None = "efficientnet_lite0") -> None:
    """``--model`` (a registered name or a reference), ``--weights`` and the reference options."""
    from ..models.refs import REFERENCE_FORMS

    shown = f" (default: {default})" if default else ""
    sp.add_argument("--model", default=default, help=f"a registered model (see `advlens models`) or your own: "
                    f"{REFERENCE_FORMS}{shown}")
    sp.add_argument("--weights", default=None, help="checkpoint (.pth/.pt/.safetensors; a plain state dict or a "
                    "training checkpoint holding one, DDP/Lightning prefixes fitted; no pickle ever runs)")
    sp.add_argument("--num-classes", type=positive_int, default=None, help="classes of your model's head")
    sp.add_argument("--labels", default=None, metavar="FILE", help="class names: .txt (one per line) or .json")
    sp.add_argument("--mean", type=_floats3, default=None, metavar="R,G,B", help="input normalization mean "
                    "(default: the model's configuration)")
    sp.add_argument("--std", type=_floats3, default=None, metavar="R,G,B", help="input normalization std")
    sp.add_argument("--input-size", type=_input_size, default=None, metavar="N|HxW",
                    help="input size of your model (default: its configuration's)")


def model_options(args: argparse.Namespace) -> dict[str, object]:
    """The reference options given on the command line (unset ones left out)."""
    keys = ("num_classes", "labels", "mean", "std", "input_size")
    found = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in found.items()}  # as a study spec holds them


def data_args(sp: argparse.ArgumentParser) -> None:
    """:func:`model_args`, ``--images``, ``--limit`` and ``--skip-bad``."""
    model_args(sp)
    sp.add_argument("--images", default="samples", help="samples, digits, lfw, shapes, a folder (flat, one "
                    "subfolder per class, or ImageNet's wnid folders), a .csv/.parquet of path,label, or a file")
    sp.add_argument("--limit", type=positive_int, default=None, help="use at most N images")
    sp.add_argument("--skip-bad", action="store_true", help="skip unreadable image files (each named in a warning) "
                    "instead of stopping")


def _parse_value(text: str) -> object:
    if "," in text:  # a list, e.g. interpreters=grad,cam
        return [_parse_value(t.strip()) for t in text.split(",") if t.strip()]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def param_pairs(items: list[str] | None, flag: str = "--param") -> dict[str, object]:
    """``--param KEY=VALUE`` pairs as a dict (numbers, true/false and comma lists parsed)."""
    params: dict[str, object] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise AdvlensError(f"{flag} takes KEY=VALUE, got {item!r}")
        params[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return params


def output_dir(args: argparse.Namespace, command: str, *inputs: object):
    """The command's ``--out`` folder, checked before any work (:class:`advlens._io.OutputDir`)."""
    from .._io import OutputDir

    return OutputDir(args.out, command, inputs=inputs, overwrite=args.overwrite)


def load_model_for(args: argparse.Namespace, name: str | None = None):
    """``--model`` (or ``name``) with ``--weights`` and the reference options on ``--device``."""
    from ..models import load_model

    return load_model(name or args.model, weights=args.weights, device=args.device, **model_options(args))


def load_model_with_speed(args: argparse.Namespace):
    """:func:`load_model_for` with ``--precision``, ``--channels-last`` and ``--compile`` applied."""
    model = load_model_for(args)
    model.set_precision(args.precision, channels_last=args.channels_last)
    if getattr(args, "compile", None) not in (None, "off"):
        model.set_compile(args.compile)
    return model


#: images per chunk when a command streams its ``--images`` (one chunk in memory at a time)
STREAM_CHUNK = 256


def stream_images_for(args: argparse.Namespace, model):
    """``--images`` (``--limit``) prepared for ``model`` as chunks of at most :data:`STREAM_CHUNK` images, each
    read when it is reached (:func:`advlens.data.iter_images`); returns ``(count, chunks)``, checked before
    any read."""
    from ..data import count_images, iter_images

    chunks = iter_images(args.images, chunk_size=STREAM_CHUNK, n=args.limit, seed=args.seed, skip_bad=args.skip_bad, **model.image_options())
    count = count_images(args.images)
    return (count if args.limit is None else min(count, args.limit)), chunks


def load_model_and_images(args: argparse.Namespace):
    """``--model``/``--weights`` on ``--device`` with the speed flags, and ``--images`` (``--limit``) prepared
    as the model expects (its size, eval crop, interpolation; class folders mapped to its labels)."""
    from ..data import load_images

    model = load_model_with_speed(args)
    batch = load_images(args.images, n=args.limit, seed=args.seed, skip_bad=args.skip_bad, **model.image_options())
    if args.limit is not None:
        batch = batch[: args.limit]
    return model, batch.to(model.device)


def load_images_for(args: argparse.Namespace, model, split: str | None):
    """``--images`` prepared for ``model``: the ``split`` part (``all``/None = every image), ``--limit`` kept."""
    from ..data import load_images

    batch = load_images(args.images, split=None if split == "all" else split, seed=args.seed,
                        skip_bad=getattr(args, "skip_bad", False), **model.image_options())
    return (batch[: args.limit] if args.limit is not None else batch).to(model.device)
