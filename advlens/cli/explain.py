"""``advlens models``, ``advlens layers``, ``advlens explain`` and ``advlens train``."""
from __future__ import annotations

import argparse

from ._args import (batch_size_arg, common, data_args, layers_arg, load_model_and_images, load_model_for, model_args,
                    output_dir, overwrite_arg, positive_int, speed_args)

__all__ = ["add_parsers"]


def _cmd_models(args: argparse.Namespace) -> None:
    from ..models import list_models

    for name in list_models(args.pattern):
        print(name)


def _cmd_layers(args: argparse.Namespace) -> None:
    from ..models.discover import layer_table

    model = load_model_for(args, args.ref)
    rows = layer_table(model)
    width = max(len(r["name"]) for r in rows)
    print(f"{model.name}: {len(rows)} explainable layers, input {model.input_size[0]}×{model.input_size[1]}, "
          f"{len(model.labels)} classes")
    for r in rows:
        print(f"  {r['name']:<{width}}  {r['shape']:<16} {r['note']}".rstrip())


def _cmd_explain(args: argparse.Namespace) -> None:
    import json

    from safetensors.torch import save

    from .._io import atomic_write, unique_file_names
    from ..explain import explain
    from ..report import map_grid

    out = output_dir(args, "explain", args.images, args.weights)
    model, batch = load_model_and_images(args)
    maps = explain(model, batch.x, args.method, layers=layers_arg(args.layers), batch_size=args.batch_size,
                   seed=args.seed)
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


def _cmd_train(args: argparse.Namespace) -> None:
    from .._io import check_output_file
    from ..models.small_vgg import train_small_vgg

    if args.out is not None:
        check_output_file(args.out, overwrite=args.overwrite)
    _, info = train_small_vgg(args.data, seed=args.seed, epochs=args.epochs, out=args.out, progress=not args.quiet)
    print(f"small_vgg_{args.data}: test accuracy {info['test_accuracy']:.2%} "
          f"(train {info['train_accuracy']:.2%}, {info['epochs']} epochs, {info['seconds']} s) -> {info['path']}")


def add_parsers(sub) -> None:
    """Register ``models``, ``layers``, ``explain`` and ``train``."""
    from ..explain.api import list_methods

    sp = sub.add_parser("models", help="list the registered models")
    sp.add_argument("pattern", nargs="?", default="*", help="wildcard filter, e.g. 'small_*'")
    sp.set_defaults(fn=_cmd_models)

    sp = sub.add_parser("layers", help="the explainable layers of a model (found automatically for your own) "
                        "with the shape of their maps")
    sp.add_argument("ref", nargs="?", default=None, metavar="MODEL",
                    help="the model (same as --model): a registered name or your own (timm:resnet18, …)")
    model_args(sp)
    sp.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    sp.set_defaults(fn=_cmd_layers)

    sp = sub.add_parser("explain", help="explanation maps at every requested layer (one pass)")
    common(sp, "advlens-explain")
    speed_args(sp, compile=False)
    data_args(sp)
    sp.add_argument("--method", default="gradcam", help=f"explanation method: {', '.join(list_methods())}")
    sp.add_argument("--layers", default="all", help="'all' or comma-separated layer names")
    sp.add_argument("--batch-size", type=batch_size_arg, default=16,
                    help="images per forward/backward, or 'auto' (largest that fits free memory; default 16)")
    sp.set_defaults(fn=_cmd_explain)

    sp = sub.add_parser("train", help="train a small VGG on digits, lfw or shapes (cached)")
    common(sp, None)
    sp.add_argument("--data", required=True, help="digits, lfw or shapes")
    sp.add_argument("--epochs", type=positive_int, default=None, help="training epochs (default: the data set's)")
    sp.add_argument("--out", default=None, help="weights file (default: the advlens cache)")
    overwrite_arg(sp)
    sp.set_defaults(fn=_cmd_train)
