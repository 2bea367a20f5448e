"""Validation helpers shared by the whole package.

Every user-facing problem raises :class:`AdvlensError` with a one-line message that names the
problem and, where possible, the fix. The CLI turns it into exit code 2.
"""
from __future__ import annotations

import difflib
import os
import stat
from collections.abc import Iterable
from pathlib import Path

import torch

__all__ = [
    "AdvlensError",
    "check_images",
    "unknown_name",
    "check_int",
    "check_path",
    "check_file",
    "file_kind",
    "check_device",
    "check_memory",
    "first_line",
    "check_bool",
    "check_callable",
    "check_choice",
    "check_labels",
    "check_layers",
    "check_number",
]


class AdvlensError(ValueError):
    """A problem with the user's input (name, file, tensor, parameter). Message is one line."""


def unknown_name(kind: str, name: object, options: Iterable[str]) -> AdvlensError:
    """Build the error for an unknown ``kind`` (model, layer, method…), suggesting close matches.

    Example:
        >>> str(unknown_name("method", "gradkam", ["gradcam", "layercam"]))
        "unknown method 'gradkam'; did you mean 'gradcam'? (choose from: gradcam, layercam)"
    """
    options = list(options)
    close = difflib.get_close_matches(str(name), options, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    shown = ", ".join(options[:20]) + (", …" if len(options) > 20 else "")
    return AdvlensError(f"unknown {kind} {name!r}{hint} (choose from: {shown})")


def check_images(x: object, name: str = "x", channels: int | None = 3) -> torch.Tensor:
    """Check that ``x`` is a float image batch ``[N, C, H, W]`` with finite values in [0, 1].

    Args:
        x: the tensor to check.
        name: how to call it in the error message.
        channels: required channel count (``None`` accepts any).

    Returns:
        ``x`` unchanged.

    Raises:
        AdvlensError: wrong type, shape, dtype, NaN/inf, or values outside [0, 1].
    """
    if not isinstance(x, torch.Tensor):
        raise AdvlensError(f"{name} must be a torch.Tensor of shape [N,3,H,W], got {type(x).__name__}")
    if x.ndim != 4:
        raise AdvlensError(
            f"{name} must have shape [N,C,H,W], got {list(x.shape)}"
            + ("; add a batch dimension with x[None]" if x.ndim == 3 else "")
        )
    if channels is not None and x.shape[1] != channels:
        raise AdvlensError(f"{name} must have {channels} channels, got shape {list(x.shape)}")
    if x.shape[0] == 0:
        raise AdvlensError(f"{name} is an empty batch")
    if not x.is_floating_point():
        raise AdvlensError(f"{name} must be a float tensor in [0,1], got dtype {x.dtype}")
    with torch.no_grad():
        if not torch.isfinite(x).all():
            raise AdvlensError(f"{name} contains NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise AdvlensError(
            f"{name} must be in [0,1] (normalization happens inside the model), got range [{lo:.3g}, {hi:.3g}]"
        )
    return x


# --------------------------------------------------------------------------- scalars, paths, devices, memory
def first_line(text: object, limit: int = 200) -> str:
    """The first non-empty line of ``text`` (an exception's message, a decoder's warning), cut at ``limit``."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    line = lines[0] if lines else (type(text).__name__ if isinstance(text, BaseException) else "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def check_int(value: object, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int`` (Python or numpy integer, never a bool or a float) within ``[minimum, maximum]``.

    Example:
        >>> check_int(3, "epochs", 1)
        3
    """
    import numbers

    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum):  # type: ignore[operator]
        return int(value)  # type: ignore[call-overload]
    if minimum is not None and maximum is not None:
        want = f"an int in [{minimum}, {maximum}]"
    elif minimum is not None:
        want = f"an int >= {minimum}"
    elif maximum is not None:
        want = f"an int <= {maximum}"
    else:
        want = "an int"
    got = first_line(repr(value), 80)
    if not isinstance(value, (numbers.Number, str)):
        got = f"{type(value).__name__} {got}"
    raise AdvlensError(f"{name} must be {want}, got {got}")


def check_path(value: object, name: str) -> Path:
    """``value`` (a ``str`` or ``os.PathLike``, not empty) as a :class:`~pathlib.Path`, ``~`` expanded."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise AdvlensError(f"{name} must be a file path (str or os.PathLike), got {type(value).__name__} "
                           f"{first_line(repr(value), 60)}")
    if not value.strip():
        raise AdvlensError(f"{name} must be a file path, got an empty string")
    return Path(value).expanduser()


def file_kind(path: str | os.PathLike[str]) -> str:
    """What ``path`` is, for messages: ``"a regular file"``, ``"a folder"``, ``"a named pipe (FIFO)"``,
    ``"a character device"``, ``"a block device"``, ``"a socket"``, ``"a broken symbolic link"`` or ``"missing"``.
    Never opens the path (so a FIFO cannot block)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.islink(path) else "missing"
    except OSError as e:
        return f"unreadable ({first_line(e.strerror or e, 60)})"
    for test, kind in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def check_file(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` if it is a regular file (or a link to one); else one line naming ``what`` and the path.

    Checked with ``stat`` before anything opens the file, so a FIFO, ``/dev/zero`` or a socket is refused
    instead of blocking or being read forever.
    """
    kind = file_kind(path)
    if kind == "missing":
        raise AdvlensError(f"{what} not found: {path}")
    if kind != "a regular file":
        raise AdvlensError(f"{what} {path} is {kind}, not a regular file")
    return Path(path)


def check_device(device: object, name: str = "device") -> torch.device:
    """``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, an index or a ``torch.device``) as a
    :class:`torch.device` that exists on this machine."""
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str) or (isinstance(device, int) and not isinstance(device, bool)):
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError, ValueError):
            raise AdvlensError(f"{name} must be a device such as 'cpu', 'cuda' or 'cuda:1', got {device!r}") from None
    else:
        raise AdvlensError(f"{name} must be a device name such as 'cpu' or 'cuda', got {type(device).__name__}")
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise AdvlensError(f"{name}={device!r} asks for CUDA, which is not available here (no GPU or driver); "
                               "use 'cpu'")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise AdvlensError(f"{name}={device!r}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
        return dev
    if dev.type == "mps":
        available = torch.backends.mps.is_available()
    else:
        backend = getattr(torch, dev.type, None)
        available = bool(getattr(backend, "is_available", lambda: False)())
    if not available:
        raise AdvlensError(f"{name}={device!r}: the {dev.type} backend is not available here; use 'cpu'")
    return dev


def free_memory(device: torch.device | str) -> int:
    """Bytes a new batch can use on ``device``: CUDA free memory plus the caching allocator's unused
    reserve; on the CPU the kernel's ``MemAvailable`` (``/proc/meminfo``, else free physical pages),
    capped by the container's cgroup-v2 memory limit."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    free = None
    try:
        with open("/proc/meminfo") as f:
            free = next((int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")), None)
    except OSError:
        pass
    if free is None:
        free = int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    try:  # a container's cgroup (v2) limit, when tighter than the machine's free memory
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            free = min(free, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return max(0, free)


def check_memory(nbytes: int, what: str, fix: str, device: torch.device | str = "cpu") -> None:
    """Refuse (one line) to allocate ``nbytes`` for ``what`` when they exceed the free memory of ``device``
    (CPU: ``MemAvailable`` capped by the cgroup limit, see :func:`free_memory`)."""
    free = free_memory(device)
    if nbytes > free:
        gib = 2.0**30
        raise AdvlensError(f"{what} would take {nbytes / gib:,.1f} GiB but only {free / gib:,.1f} GiB of memory "
                           f"is available; {fix}")


# --------------------------------------------------------------------------- parameters (attacks, explainers, defenses)
def _got(value: object) -> str:
    """How a rejected value is shown: its repr (first line, cut), with the type unless it is a plain number."""
    import math
    import numbers

    shown = first_line(repr(value), 80)
    if isinstance(value, bool) or not isinstance(value, numbers.Number):
        return f"{shown} ({type(value).__name__})"
    if isinstance(value, numbers.Real) and not math.isfinite(value):
        return f"{shown} (not finite)"
    return shown


def _wanted(low: float | None, high: float | None, strict: bool) -> str:
    if low is None:
        return "a finite number" if high is None else f"a number <= {high:g}"
    if low == 0:
        kind = "a positive number" if strict else "a non-negative number"
        return kind if high is None else f"{kind} <= {high:g}"
    if high is None:
        return f"a number {'>' if strict else '>='} {low:g}"
    return f"a number in {'(' if strict else '['}{low:g}, {high:g}]"


def check_number(value: object, name: str, low: float | None = None, high: float | None = None,
                 strict: bool = True) -> float:
    """``value`` as a ``float``: a finite real (Python or numpy; never a bool, a string or a tensor) with
    ``value > low`` (``>= low`` when not ``strict``) and ``value <= high``; ``None`` bounds are open.

    Example:
        >>> check_number(0.1, "eps", 0, 1)
        0.1
        >>> check_number(2, "eps", 0, 1)
        Traceback (most recent call last):
        advlens._checks.AdvlensError: eps must be a positive number <= 1, got 2
    """
    import math
    import numbers

    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        v = float(value)
        if (low is None or (v > low if strict else v >= low)) and (high is None or v <= high):
            return v
    raise AdvlensError(f"{name} must be {_wanted(low, high, strict)}, got {_got(value)}")


def check_bool(value: object, name: str) -> bool:
    """``value`` if it is ``True`` or ``False`` (a numpy bool too); never a string, a number or None."""
    import numpy as np

    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise AdvlensError(f"{name} must be True or False, got {_got(value)}")


def check_choice(value: object, name: str, options: Iterable[object]) -> object:
    """``value`` if it is one of ``options`` (same kind: ``True`` is not ``1``, ``"1"`` is not ``1``),
    else one line listing them, with the closest names for a misspelt string."""
    import numbers

    options = list(options)
    for o in options:
        if value is o:
            return o
        same_kind = (isinstance(value, str) and isinstance(o, str)) or all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (value, o))
        if same_kind and value == o:
            return o
    close = []
    if isinstance(value, str):
        close = difflib.get_close_matches(value, [o for o in options if isinstance(o, str)], n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise AdvlensError(f"{name} must be one of {', '.join(repr(o) for o in options)}, got {_got(value)}{hint}")


def check_callable(value: object, name: str, what: str = "", hint: str = "") -> object:
    """``value`` if it is callable, else one line; ``what`` says what the callable takes and returns,
    ``hint`` (appended after the value) how to fix it."""
    if callable(value):
        return value
    raise AdvlensError(f"{name} must be a callable{' ' + what if what else ''}, got {_got(value)}{hint}")


def check_layers(value: object, name: str = "layers") -> str | list[str]:
    """``"all"``, one layer name or a non-empty list/tuple of names (the names are resolved by the model)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise AdvlensError(f"{name} must be 'all', a layer name or a non-empty list of layer names, got {_got(value)}")


def check_labels(y: object, name: str, n: int, classes: int, device: torch.device | str | None = None,
                 scalar: bool = False) -> torch.Tensor:
    """Class indices ``[n]`` in ``[0, classes)`` as a long tensor on ``device``.

    Integer tensors, lists and numpy arrays are accepted; floats (``0.5`` would silently become class 0),
    bools and strings are refused. With ``scalar`` one int (or a 0-dim integer tensor) stands for all ``n``.
    """
    import numbers

    want = f"integer class indices in [0, {classes - 1}]"
    if isinstance(y, bool) or isinstance(y, str):
        raise AdvlensError(f"{name} must hold {want}, got {_got(y)}")
    if isinstance(y, numbers.Real) and not isinstance(y, numbers.Integral):
        raise AdvlensError(f"{name} must hold {want}, got {_got(y)}")
    try:
        t = torch.as_tensor(y, device=device)
    except (TypeError, ValueError, RuntimeError):
        raise AdvlensError(f"{name} must hold {want} (a tensor of shape [{n}]), got {_got(y)}") from None
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise AdvlensError(f"{name} must hold {want}, got dtype {t.dtype}")
    if t.ndim == 0 and scalar:
        t = t.expand(n)
    if t.shape != (n,):
        raise AdvlensError(f"{name} must have shape [{n}], got {list(t.shape)}")
    t = t.long()
    if ((t < 0) | (t >= classes)).any():
        raise AdvlensError(f"{name} holds a class outside [0, {classes - 1}]: {t.tolist()[:8]}")
    return t


