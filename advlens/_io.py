"""Atomic writes and safe output folders (private): nothing half-written lands, nothing of the user's is lost.

Every file advlens produces is written to a temporary file in the destination folder and then moved
over the destination with :func:`os.replace`, so a reader never sees a half-written file and a failure
leaves neither a partial file nor a temporary one behind. Output folders (:class:`OutputDir`) are
checked before any work and never lose a file advlens did not write.
"""
from __future__ import annotations

import contextlib
import json
import platform
import shutil
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["atomic_write", "write_parquet", "write_json", "versions", "OutputDir", "check_output_file",
           "unique_file_names", "remove_stale_temporaries", "read_manifest", "written_by_advlens", "MANIFEST"]


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


# ---------------------------------------------------------------------------------------------- output folders
MANIFEST = ".advlens.json"  # in every output folder advlens writes: the command and the files it wrote


def _err(message: str) -> Exception:
    from ._checks import AdvlensError

    return AdvlensError(message)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The ``.advlens.json`` of an output folder (None when absent or unreadable: then it is not ours)."""
    try:
        meta = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), list):
        return None
    return meta


def _existing_ancestor(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path(".")


def check_writable(path: Path, flag: str) -> None:
    """Fail now (before any work) if the folder that will hold ``path`` cannot be written.

    Tries to create and remove a temp folder in the nearest existing ancestor (``os.access`` says yes
    to root even on a read-only file system).
    """
    base = _existing_ancestor(path if path.is_dir() else path.parent)
    if not base.is_dir():
        raise _err(f"{flag} {path}: {base} is not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".advlens-probe.", dir=base))
    except OSError as e:
        raise _err(f"{flag} {path} is not writable ({e.strerror or type(e).__name__} in {base})") from None


def check_not_inside(path: Path, inputs: Sequence[object], flag: str) -> None:
    """Refuse an output equal to, or inside, one of the input folders/files (paths only; names are skipped)."""
    target = path.expanduser().resolve()
    for item in inputs:
        if not isinstance(item, (str, os.PathLike)):
            continue
        src = Path(item).expanduser()
        if not src.exists():
            continue
        src = src.resolve()
        if target == src or (src.is_dir() and src in target.parents):
            raise _err(f"{flag} {path} is {'the' if target == src else 'inside the'} input {src}; "
                       f"choose an output outside the inputs")


def _relative_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink())


class OutputDir:
    """An output folder of one ``advlens`` command: checked before the work, filled at the end.

    The rule: advlens never deletes, moves or overwrites anything it did not write.

    * A new or empty folder is fine. A folder holding the output of the same command (its
      ``.advlens.json`` manifest says so) is updated: files of the new run replace the old run's, files
      the old run wrote and the new one does not are removed, anything else in it is left alone.
    * A non-empty folder that is not such an output is refused, unless ``overwrite``: then the files are
      written beside the user's (still refusing to replace any file advlens did not write).
    * An existing file at ``path``, an output equal to or inside an input, and an unwritable place are
      refused before any work.

    The files are built in a hidden temp folder beside ``path`` (:meth:`writing`) and moved in only when
    everything succeeded, each with :func:`os.replace`; a new folder moves in as a whole.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> out = OutputDir(root / "run", "attack")
        >>> with out.writing() as tmp:
        ...     _ = (tmp / "results.txt").write_text("ok")
        >>> sorted(p.name for p in (root / "run").iterdir())
        ['.advlens.json', 'results.txt']
    """

    def __init__(self, path: str | os.PathLike[str], command: str, *, inputs: Sequence[object] = (),
                 overwrite: bool = False, flag: str = "--out") -> None:
        self.path, self.command, self.overwrite, self.flag = Path(path).expanduser(), command, overwrite, flag
        self.inputs = tuple(inputs)
        self.check()

    def check(self) -> None:
        """Raise AdvlensError (one line naming the flag) if this folder may not be written."""
        p, flag = self.path, self.flag
        if p.exists() and not p.is_dir():
            raise _err(f"{flag} {p} is an existing file, not a folder; choose another {flag}")
        check_not_inside(p, self.inputs, flag)
        if p.is_dir() and any(p.iterdir()):
            meta = read_manifest(p)
            if meta is None and not self.overwrite:
                raise _err(f"{flag} {p} is not empty and is not an advlens output; choose a new or empty folder, "
                           f"or add --overwrite to write beside its files")
            if meta is not None and meta.get("command") != self.command and not self.overwrite:
                raise _err(f"{flag} {p} holds the output of `advlens {meta.get('command')}`, not "
                           f"`advlens {self.command}`; choose another folder, or add --overwrite")
        check_writable(p, flag)

    @contextlib.contextmanager
    def writing(self) -> Iterator[Path]:
        """Yield a temp folder to fill; on success move its files into :attr:`path` (see the class doc)."""
        self.check()
        p = self.path
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent))
        try:
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700: honour the umask like other tools
            yield tmp
            new = _relative_files(tmp)
            manifest = {"command": self.command, "files": new, "versions": versions()}
            if not p.exists():
                write_json(manifest, tmp / MANIFEST)
                os.replace(tmp, p)
                return
            self._merge_into(tmp, new, manifest)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)  # our own temp folder only

    def _merge_into(self, tmp: Path, new: list[str], manifest: dict[str, Any]) -> None:
        p = self.path
        old = set((read_manifest(p) or {}).get("files", []))
        foreign = [f for f in new if (p / f).exists() and f not in old]
        if foreign:
            raise _err(f"{self.flag} {p}: {foreign[0]} exists and was not written by advlens; "
                       f"nothing was written, choose another folder")
        # The manifest lists old and new files while they move, so an interruption never orphans a file.
        write_json({**manifest, "files": sorted(old | set(new))}, p / MANIFEST)
        for f in new:
            (p / f).parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / f, p / f)
        for f in sorted(old - set(new)):  # the previous run's files this run did not write again
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                (p / f).unlink()
        write_json(manifest, p / MANIFEST)


def written_by_advlens(path: Path) -> bool:
    """Whether ``path`` is a file advlens wrote: a ``.safetensors`` whose header metadata has an ``advlens``
    entry (weights, detectors), or the ``.json`` beside such a detector. Reads the header only."""
    import struct

    if path.name.endswith(".safetensors.json"):
        return written_by_advlens(path.with_name(path.name[: -len(".json")]))
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size)) if 0 < size <= 100_000_000 else {}
    except (OSError, ValueError, struct.error):
        return False
    return isinstance(header, dict) and "advlens" in (header.get("__metadata__") or {})


def check_output_file(path: str | os.PathLike[str], *, inputs: Sequence[object] = (), overwrite: bool = False,
                      flag: str = "--out") -> Path:
    """Check a single-file output before the work: not a folder, not an input, writable; an existing file
    only if advlens wrote it (:func:`written_by_advlens`) or with ``overwrite``."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise _err(f"{flag} {p} is a folder; give a file name")
    check_not_inside(p, inputs, flag)
    if p.exists() and not overwrite and not written_by_advlens(p):
        raise _err(f"{flag} {p} exists and was not written by advlens; choose another file name, "
                   f"or add --overwrite to replace it")
    check_writable(p, flag)
    return p


def unique_file_names(names: Sequence[str], taken: set[str] | None = None) -> list[str]:
    """File-safe, unique stems for ``names`` (anything but letters, digits and ``-_#.`` becomes ``_``).

    Names that collide once sanitized get ``-2``, ``-3``… in order, so no output overwrites another.
    ``taken`` (lower-cased stems already used, e.g. by earlier chunks of a stream) is updated in place.

    Example:
        >>> unique_file_names(["a b", "a_b", "a?b", "c"])
        ['a_b', 'a_b-2', 'a_b-3', 'c']
    """
    seen: set[str] = set() if taken is None else taken
    out = []
    for name in names:
        base = "".join(c if c.isalnum() or c in "-_#." else "_" for c in str(name)).lstrip(".") or "image"
        stem, k = base, 1
        while stem.lower() in seen:
            k += 1
            stem = f"{base}-{k}"
        seen.add(stem.lower())
        out.append(stem)
    return out


def remove_stale_temporaries(folder: Path) -> int:
    """Remove the hidden ``.NAME.XXXX.tmp`` files/folders that :func:`atomic_write` and :class:`OutputDir`
    leave when a process is killed mid-write; only inside ``folder`` (an advlens output). Returns the count."""
    count = 0
    for p in sorted(folder.rglob(".*.tmp"), reverse=True):
        with contextlib.suppress(OSError):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            count += 1
    return count
