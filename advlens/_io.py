"""Atomic file and folder writes (private): nothing half-written ever lands on disk.

Every file the report package produces is written to a temporary file in the destination folder and
then moved over the destination with :func:`os.replace`, so a reader never sees a half-written file
and a failure leaves neither a partial file nor a temporary one behind.
"""
from __future__ import annotations

import contextlib
import json
import platform
import shutil
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["atomic_write", "atomic_dir", "write_parquet", "write_json", "versions"]


def _umask() -> int:
    """Return the process umask without changing it where the OS lets us read it (Linux)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """Write a file atomically: ``write(f)`` fills a temp file next to ``path``, then it replaces ``path``.

    Args:
        path: destination file; missing parent folders are created.
        write: callable that writes the whole content into the binary file object it is given.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        Whatever ``write`` raises; the temp file is removed first and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build an output folder in a hidden sibling temp folder; move it to ``path`` only on success.

    An existing ``path`` is replaced at the end (kept intact if anything fails), so a failed or
    interrupted run leaves nothing half-written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_parquet(df: Any, path: str | os.PathLike[str]) -> Path:
    """Write a pandas DataFrame to Parquet (pyarrow) atomically."""
    return atomic_write(path, lambda f: df.to_parquet(f, engine="pyarrow", index=False))


def write_json(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, default=str).encode()))


def versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape results (for ``spec.json`` and reports)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("advlens", "torch", "torchvision", "timm", "kornia", "numpy", "scikit-learn", "pandas"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
