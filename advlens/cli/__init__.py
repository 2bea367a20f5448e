"""``advlens`` command line. Exit code 0 on success, 2 on bad input (one line on stderr), 1 on an
unexpected failure (one line; ``-v`` shows the traceback), 130 when interrupted.

One module per command group (:mod:`.explain`: models, explain, train; :mod:`.attack`; :mod:`.study`:
demo, study, report; :mod:`.detect`; :mod:`.defend`; :mod:`.explore`) over the shared argument helpers of :mod:`._args`;
the command modules import only ``_args`` and the library, never each other.
"""
from __future__ import annotations

import argparse
import logging
import sys
import warnings

from .._checks import AdvlensError
from . import attack, defend, detect, explain, explore, study
from ._args import Parser, one_line, printable

__all__ = ["main"]

_GROUPS = (explain, study, attack, detect, defend, explore)  # each registers its commands with add_parsers(sub)


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="advlens", description="Adversarial attacks on image classifiers, seen through their explanations.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)
    for group in _GROUPS:
        group.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``advlens`` command."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a one-line usage error (2): a code, like every other outcome
        return e.code if isinstance(e.code, int) else 2
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    warnings.formatwarning = lambda message, category, *rest, **kw: f"advlens: warning: {printable(str(message))}\n"
    try:
        args.fn(args)
    except AdvlensError as e:
        print(f"advlens: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("advlens: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug or the environment (disk full, out of memory): one line, -v shows the traceback
        if args.verbose:
            raise
        kind = "out of memory" if "OutOfMemory" in type(e).__name__ else (
            "system error" if isinstance(e, OSError) else "internal error (please report it)")
        print(f"advlens: {kind}: {type(e).__name__}: {one_line(e)} (run with -v for the traceback)", file=sys.stderr)
        return 1
    return 0
