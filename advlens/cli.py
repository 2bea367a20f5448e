"""``advlens`` command line. Exit code 0 on success, 2 on bad input (one line on stderr)."""
from __future__ import annotations

import argparse
import logging
import sys

from ._checks import AdvlensError

__all__ = ["main"]


def _layers(value: str) -> str | list[str]:
    return "all" if value == "all" else [v for v in value.split(",") if v]


def _cmd_models(args: argparse.Namespace) -> None:
    from .models import list_models

    for name in list_models(args.pattern):
        print(name)


def _cmd_demo(args: argparse.Namespace) -> None:
    from .studies.demo import DemoConfig, run_demo

    cfg = DemoConfig(images=args.images, limit=args.limit, seed=args.seed, device=args.device, model=args.model)
    out = run_demo(cfg, args.out, progress=not args.quiet)
    print(f"wrote {out}/report.html, {out}/results.parquet, {out}/figures/")


def _load(args: argparse.Namespace):
    from .data import load_images
    from .models import load_model

    model = load_model(args.model, weights=args.weights, device=args.device)
    batch = load_images(args.images, size=model.input_size, n=args.limit, seed=args.seed)
    if args.limit is not None:
        batch = batch[: args.limit]
    return model, batch.to(model.device)


def _cmd_explain(args: argparse.Namespace) -> None:
    from safetensors.torch import save

    from ._io import atomic_dir, atomic_write
    from .explain import explain
    from .report import map_grid

    model, batch = _load(args)
    maps = explain(model, batch.x, args.method, layers=_layers(args.layers), batch_size=args.batch_size, seed=args.seed)
    with atomic_dir(args.out) as tmp:
        tensors = {k: v.detach().cpu().contiguous() for k, v in maps.items()}
        tensors["images"] = batch.x.cpu().contiguous()
        atomic_write(tmp / "maps.safetensors", lambda f: f.write(save(tensors)))
        shown = list(maps)[:: max(1, len(maps) // 6)][:6]
        for i in range(min(len(batch), 4)):
            map_grid(tmp / f"{batch.names[i].replace('/', '_')}.png", {"image": batch.x},
                     {"image": maps}, shown, index=i, title=f"{args.method} on {model.name}")
    print(f"wrote {len(maps)} layer maps for {len(batch)} images to {args.out}/maps.safetensors")


def _cmd_attack(args: argparse.Namespace) -> None:
    import pandas as pd

    from . import metrics
    from ._io import atomic_dir, write_parquet
    from .attacks import attack
    from .data import save_images

    model, batch = _load(args)
    params = {  # what --eps/--steps/--alpha mean for each attack
        "fgsm": {"eps": args.eps},
        "ifgsm": {"max_eps": args.eps, "eps_step": min(1 / 255, args.eps)},
        "pgd": {"eps": args.eps, "steps": args.steps, "alpha": args.alpha or args.eps / 4},
        "dlfuzz": {"iterations": args.steps},
    }.get(args.method, {})
    res = attack(model, batch.x, batch.y if args.use_labels else None, method=args.method, seed=args.seed, **params)
    rows = pd.DataFrame({
        "image": batch.names, "label": [model.labels[int(i)] for i in res.y],
        "adv_pred": [model.labels[int(i)] for i in res.pred], "success": res.success.cpu().numpy(),
        "confidence": res.confidence.cpu().numpy(), "psnr": metrics.psnr(batch.x, res.x_adv).cpu().numpy(),
    })
    if "eps" in res.extras:  # ifgsm: the smallest eps that flipped each image
        rows["min_eps"] = res.extras["eps"].cpu().numpy()
    with atomic_dir(args.out) as tmp:
        save_images(res.x_adv, [f"{n}_adv" for n in batch.names], tmp / "images")
        write_parquet(rows, tmp / "results.parquet")
    print(rows.to_string(index=False))
    print(f"success rate {res.success_rate:.1%} in {res.time_s:.1f} s; wrote {args.out}")


def _cmd_study(args: argparse.Namespace) -> None:
    from .studies.runner import run_study
    from .studies.spec import load_spec

    if args.spec is None and args.preset is None:
        raise AdvlensError("give a spec file (advlens study SPEC.toml) or --preset NAME (seed000, seed003)")
    spec = load_spec(args.spec, args.preset, limit=args.limit, seed=args.seed, device=args.device,
                     batch_size=args.batch_size)
    path = run_study(spec, args.out, progress=not args.quiet)
    print(f"wrote {path} and {args.out}/results.parquet")


def _cmd_report(args: argparse.Namespace) -> None:
    from .studies.runner import build_report

    print(f"wrote {build_report(args.dir)}")


def _cmd_train(args: argparse.Namespace) -> None:
    from .models.small_vgg import train_small_vgg

    _, info = train_small_vgg(args.data, seed=args.seed, epochs=args.epochs, out=args.out, progress=not args.quiet)
    print(f"small_vgg_{args.data}: test accuracy {info['test_accuracy']:.2%} "
          f"(train {info['train_accuracy']:.2%}, {info['epochs']} epochs, {info['seconds']} s) -> {info['path']}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="advlens", description="Adversarial attacks on image classifiers, seen through their explanations.")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, out: str | None) -> None:
        sp.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
        sp.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
        sp.add_argument("--quiet", action="store_true", help="no progress bars")
        if out is not None:
            sp.add_argument("--out", default=out, help=f"output folder (default: {out})")

    def data_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", default="efficientnet_lite0", help="model name (see `advlens models`)")
        sp.add_argument("--weights", default=None, help="state dict file (.pth/.safetensors) for the model")
        sp.add_argument("--images", default="samples", help="samples, digits, lfw, shapes, a folder or a file")
        sp.add_argument("--limit", type=int, default=None, help="use at most N images")

    sp = sub.add_parser("models", help="list the registered models")
    sp.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. 'small_*'")
    sp.set_defaults(fn=_cmd_models)

    sp = sub.add_parser("demo", help="FGSM/PGD + Grad-CAM at every layer on bundled photos, with a report")
    common(sp, "advlens-demo")
    sp.add_argument("--model", default="efficientnet_lite0", help="model name (default: efficientnet_lite0)")
    sp.add_argument("--images", default="samples", help="image source (default: samples)")
    sp.add_argument("--limit", type=int, default=None, help="use at most N images")
    sp.set_defaults(fn=_cmd_demo)

    sp = sub.add_parser("explain", help="explanation maps at every requested layer (one pass)")
    common(sp, "advlens-explain")
    data_args(sp)
    sp.add_argument("--method", default="gradcam", help="gradcam, gradcam++, layercam, noisecam, cam, saliency, smoothgrad")
    sp.add_argument("--layers", default="all", help="'all' or comma-separated layer names")
    sp.add_argument("--batch-size", type=int, default=16)
    sp.set_defaults(fn=_cmd_explain)

    sp = sub.add_parser("attack", help="attack a model and save the adversarial images")
    common(sp, "advlens-attack")
    data_args(sp)
    sp.add_argument("--method", default="pgd", help="fgsm, ifgsm, pgd, dlfuzz")
    sp.add_argument("--eps", type=float, default=8 / 255,
                    help="L-inf budget in [0,1] units (default 8/255); for ifgsm the largest eps tried")
    sp.add_argument("--steps", type=int, default=10, help="PGD / DLFuzz iterations")
    sp.add_argument("--alpha", type=float, default=None, help="PGD step (default eps/4)")
    sp.add_argument("--use-labels", action="store_true", help="attack the data set's labels, not the predictions")
    sp.set_defaults(fn=_cmd_attack)

    sp = sub.add_parser("study", help="run or resume a study (a TOML spec or a preset) into --out")
    sp.add_argument("spec", nargs="?", default=None, help="study spec (TOML)")
    sp.add_argument("--preset", default=None, help="seed000 (layer shift, DLFuzz) or seed003 (MOD/VID, FGSM)")
    sp.add_argument("--device", default=None, help="torch device (default: the spec's, cpu)")
    sp.add_argument("--seed", type=int, default=None, help="random seed (default: the spec's, 0)")
    sp.add_argument("--limit", type=int, default=None, help="at most N images per data set")
    sp.add_argument("--batch-size", type=int, default=None, help="images per resumable chunk")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.add_argument("--out", default="advlens-study", help="output folder (default: advlens-study)")
    sp.set_defaults(fn=_cmd_study)

    sp = sub.add_parser("report", help="rebuild figures and report.html of a study folder from its results")
    sp.add_argument("dir", help="a study output folder")
    sp.set_defaults(fn=_cmd_report)

    sp = sub.add_parser("train", help="train a small VGG on digits, lfw or shapes (cached)")
    common(sp, None)
    sp.add_argument("--data", required=True, help="digits, lfw or shapes")
    sp.add_argument("--epochs", type=int, default=None)
    sp.add_argument("--out", default=None, help="weights file (default: the advlens cache)")
    sp.set_defaults(fn=_cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``advlens`` command."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        args.fn(args)
    except AdvlensError as e:
        print(f"advlens: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("advlens: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
