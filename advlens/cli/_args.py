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

__all__ = ["Parser", "positive_int", "natural_int", "positive_float", "natural_float", "batch_size_arg", "layers_arg",
           "overwrite_arg", "common", "speed_args", "data_args", "param_pairs", "output_dir", "load_model_and_images",
           "load_images_for", "printable", "one_line"]


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


def data_args(sp: argparse.ArgumentParser) -> None:
    """``--model``, ``--weights``, ``--images``, ``--limit``."""
    sp.add_argument("--model", default="efficientnet_lite0", help="model name (see `advlens models`)")
    sp.add_argument("--weights", default=None, help="state dict file (.pth/.safetensors) for the model")
    sp.add_argument("--images", default="samples", help="samples, digits, lfw, shapes, a folder or a file")
    sp.add_argument("--limit", type=positive_int, default=None, help="use at most N images")


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


def load_model_and_images(args: argparse.Namespace):
    """``--model``/``--weights`` on ``--device`` with the speed flags, and ``--images`` (``--limit``) at its size."""
    from ..data import load_images
    from ..models import load_model

    model = load_model(args.model, weights=args.weights, device=args.device)
    model.set_precision(args.precision, channels_last=args.channels_last)
    if getattr(args, "compile", None) not in (None, "off"):
        model.set_compile(args.compile)
    batch = load_images(args.images, size=model.input_size, n=args.limit, seed=args.seed)
    if args.limit is not None:
        batch = batch[: args.limit]
    return model, batch.to(model.device)


def load_images_for(args: argparse.Namespace, model, split: str | None):
    """``--images`` at the model's size: the ``split`` part (``all``/None = every image), ``--limit`` kept."""
    from ..data import load_images

    batch = load_images(args.images, size=model.input_size, split=None if split == "all" else split, seed=args.seed)
    return (batch[: args.limit] if args.limit is not None else batch).to(model.device)
