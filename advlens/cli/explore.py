"""``advlens explore``: the interactive explorer in the browser (live mode, or a finished study folder)."""
from __future__ import annotations

import argparse
import ipaddress
import logging
import socket

from .._checks import AdvlensError
from ._args import model_args, model_options, positive_int

__all__ = ["add_parsers"]

log = logging.getLogger(__name__)


def _check_port(host: str, port: int) -> None:
    """Refuse, before anything loads, a port another program holds (one line naming --port)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise AdvlensError(f"--port {port} on --host {host} cannot be used ({e.strerror}); choose another") from None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _cmd_explore(args: argparse.Namespace) -> None:
    import threading
    import webbrowser

    import uvicorn

    from ..explore import create_app

    if args.port > 65535:
        raise AdvlensError(f"--port must be at most 65535, got {args.port}")
    _check_port(args.host, args.port)
    app = create_app(model=args.model, images=args.images, weights=args.weights, run_dir=args.run_dir,
                     model_options=model_options(args), device=args.device)
    if not _is_loopback(args.host):
        log.warning("the explorer listens on %s: anyone who can reach this machine can use it (and its CPU/GPU)",
                    args.host)
    url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}/"
    print(f"advlens explorer on {url} ({'study ' + args.run_dir if args.run_dir else 'live mode'}); Ctrl-C stops it")
    if not args.no_browser:
        threading.Timer(1.0, webbrowser.open, [url]).start()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


def add_parsers(sub) -> None:
    """Register ``explore``."""
    sp = sub.add_parser("explore", help="interactive explorer in the browser: attack an image, slide the strength, "
                        "scrub the maps layer by layer, or browse a finished study (RUN_DIR)")
    sp.add_argument("run_dir", nargs="?", default=None, metavar="RUN_DIR",
                    help="a finished study or demo folder to browse (study mode); without it: live mode")
    model_args(sp, default=None)
    sp.add_argument("--images", default=None, help="an image source offered first (a folder, a .csv/.parquet, a "
                    "file, or a built-in source); default: the built-in sources")
    sp.add_argument("--port", type=positive_int, default=8765, help="port (default: 8765)")
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine "
                    "only; anything else is reachable from the network and warns)")
    sp.add_argument("--no-browser", action="store_true", help="do not open the browser")
    sp.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    sp.set_defaults(fn=_cmd_explore)
