"""``advlens demo``, ``advlens study`` and ``advlens report``."""
from __future__ import annotations

import argparse

from .._checks import AdvlensError
from ._args import batch_size_arg, common, data_args, model_options, natural_int, positive_int, speed_args

__all__ = ["add_parsers"]


def _cmd_demo(args: argparse.Namespace) -> None:
    from ..studies.runner import run_study
    from ..studies.spec import load_spec

    spec = load_spec(study="demo", model=args.model, weights=args.weights, model_options=model_options(args),
                     data=args.images, limit=args.limit, seed=args.seed, device=args.device, skip_bad=args.skip_bad)
    path = run_study(spec, args.out, progress=not args.quiet)
    print(f"wrote {path}, {args.out}/results.parquet, {args.out}/figures/")


def _cmd_study(args: argparse.Namespace) -> None:
    from ..studies.runner import run_study
    from ..studies.spec import list_presets, load_spec

    if args.spec is None and args.preset is None:
        raise AdvlensError(f"give a spec file (advlens study SPEC.toml) or --preset NAME ({', '.join(list_presets())})")
    spec = load_spec(args.spec, args.preset, limit=args.limit, seed=args.seed, device=args.device,
                     batch_size=args.batch_size, precision=args.precision, channels_last=args.channels_last,
                     compile=args.compile)
    path = run_study(spec, args.out, progress=not args.quiet, backend=args.backend)
    print(f"wrote {path} and {args.out}/results.parquet")


def _cmd_report(args: argparse.Namespace) -> None:
    from ..studies.runner import report_folder

    print(f"wrote {report_folder(args.dir)}")


def add_parsers(sub) -> None:
    """Register ``demo``, ``study`` and ``report``."""
    sp = sub.add_parser("demo", help="FGSM/PGD + Grad-CAM at every layer on bundled photos, with a report "
                        "(a study: resumable, `advlens report` rebuilds it)")
    common(sp, None)
    sp.add_argument("--out", default="advlens-demo", help="a new or empty folder, or a previous demo's to resume "
                    "(default: advlens-demo)")
    data_args(sp)
    sp.set_defaults(fn=_cmd_demo)

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
    sp.add_argument("--batch-size", type=batch_size_arg, default=None,
                    help="images per resumable chunk, or 'auto' (fits the device's free memory; fixed at the first run)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    speed_args(sp, unset=True)
    sp.add_argument("--out", default="advlens-study", help="output folder (default: advlens-study)")
    sp.set_defaults(fn=_cmd_study)

    sp = sub.add_parser("report", help="rebuild figures and report.html of a study folder from its results")
    sp.add_argument("dir", help="a study output folder")
    sp.set_defaults(fn=_cmd_report)
